"""Mamba-2 (Dao & Gu 2024): the block by hand around mamba_ssm's own SSD reference."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _twice import check_twice

import rnnzoo
from rnnzoo.layers.mamba2 import _GatedRMSNorm


def ssd_minimal_discrete():
    """mamba_ssm's reference, loaded from its file alone (the package needs its CUDA build)."""
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None:
        pytest.importorskip("mamba_ssm", reason="mamba-ssm 2.3.2.post1 (.ci/install-peers, "
                                                "no CUDA build) holds the SSD oracle")
    pytest.importorskip("einops", reason="ssd_minimal.py needs einops")
    path = Path(spec.submodule_search_locations[0]) / "modules" / "ssd_minimal.py"
    source = path.read_text().replace(
        "from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined", "")
    namespace: dict = {}
    exec(compile(source, str(path), "exec"), namespace)
    return namespace["ssd_minimal_discrete"]


def test_block_equals_conv_ssd_minimal_and_gated_rmsnorm():
    ssd = ssd_minimal_discrete()
    torch.manual_seed(0)
    d, N, P = 8, 4, 4
    layer = rnnzoo.create("mamba2", d_model=d, d_state=N, head_dim=P, chunk_size=4).double()
    H, E = layer.num_heads, layer.d_inner
    x = torch.randn(2, 16, d, dtype=torch.float64)
    z, xBC, dt = layer.in_proj(x).split([E, E + 2 * N, H], -1)
    w = layer.conv.weight[:, None]  # depthwise conv1d's (channels, 1, d_conv)
    conv = lambda t: F.conv1d(t, w, layer.conv.bias, groups=w.shape[0])  # noqa: E731
    xBC = F.silu(conv(F.pad(xBC.transpose(1, 2), (3, 0))).transpose(1, 2))  # causal conv1d
    xs, Bm, Cm = xBC.split([E, N, N], -1)
    xs = xs.view(2, 16, H, P)
    dt = F.softplus(dt + layer.dt_bias)
    A = -layer.A_log.exp()
    Y, S = ssd(xs * dt[..., None], dt * A, *(t[:, :, None].expand(2, 16, H, N) for t in (Bm, Cm)),
               block_len=8)
    y = (Y + layer.D[:, None] * xs).reshape(2, 16, E) * F.silu(z)
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-5) * layer.norm_weight
    want = layer.out_proj(y)
    for mode in layer.modes:
        out, (S_, conv_state) = layer(x, mode=mode)
        assert (out - want).abs().max() < 1e-12
        assert (S_ - S.transpose(-1, -2)).abs().max() < 1e-12


def test_long_sequence_float32_is_finite():
    layer = rnnzoo.create("mamba2", d_model=8, d_state=4, head_dim=4)
    with torch.no_grad():
        y, (s, c) = layer(torch.randn(1, 65536, 8), mode="chunk")
    assert torch.isfinite(y).all() and torch.isfinite(s).all()


def test_gated_rms_norm_function_equals_autograd_composition():
    from rnnzoo.layers.mamba2 import _GatedRMSNorm
    g = torch.Generator().manual_seed(0)
    y, z = (torch.randn(2, 3, 8, generator=g, dtype=torch.float64, requires_grad=True)
            for _ in range(2))
    w = torch.randn(8, generator=g, dtype=torch.float64, requires_grad=True)
    run = lambda y, z, w: _GatedRMSNorm.apply(y, z, w, 4, 1e-5)  # noqa: E731
    want = F.rms_norm((y * F.silu(z)).unflatten(-1, (2, 4)), (4,), eps=1e-5).flatten(-2) * w
    assert (run(y, z, w) - want).abs().max() < 1e-14
    assert torch.autograd.gradcheck(run, (y, z, w))



def test_gated_rms_norm_second_derivative():
    """create_graph runs `_GatedRMSNorm.twice` (r is saved without history: the plain form)."""
    g = torch.Generator().manual_seed(0)
    y, z, w = (torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()
               for s in ((2, 3, 8), (2, 3, 8), (8,)))
    check_twice(lambda y, z, w: _GatedRMSNorm.apply(y, z, w, 4, 1e-5), (y, z, w))
