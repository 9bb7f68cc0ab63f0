"""mLSTM block (Beck et al. 2024): the block around xLSTM's own native mLSTM backend."""

import pytest
import torch
import torch.nn.functional as F

import rnnzoo


def test_block_equals_xlstm_native_chunkwise_cell():
    xb = pytest.importorskip("xlstm.blocks.mlstm.backends",
                             reason="xlstm 2.0.6 (.ci/install-peers) is the mLSTM oracle")
    torch.manual_seed(0)
    d, H = 8, 2
    layer = rnnzoo.create("mlstm", d_model=d, num_heads=H, chunk_size=4).double()
    with torch.no_grad():  # gates that depend on the input (they start at zero weight)
        layer.gates.weight.normal_(0, 0.3)
    x = torch.randn(2, 16, d, dtype=torch.float64)
    E, D = layer.inner, layer.head_dim
    x_m, z = layer.up_proj(x).chunk(2, -1)
    w = layer.conv.weight[:, None]  # depthwise conv1d's (channels, 1, d_conv)
    conv = lambda t: F.conv1d(t, w, layer.conv.bias, groups=w.shape[0])  # noqa: E731
    x_c = F.silu(conv(F.pad(x_m.transpose(1, 2), (3, 0))).transpose(1, 2))
    q, k, v = layer.q(x_c), layer.k(x_c), layer.v(x_m)
    i_pre, f_pre = layer.gates(torch.cat([q, k, v], -1)).chunk(2, -1)
    heads = lambda t: t.view(2, 16, H, D).transpose(1, 2)  # noqa: E731
    h = xb.chunkwise_simple(heads(q), heads(k), heads(v), i_pre.transpose(1, 2),
                            f_pre.transpose(1, 2), chunk_size=8).transpose(1, 2)
    h = F.layer_norm(h, (D,), eps=1e-5) * layer.norm.weight + layer.norm.bias
    want = layer.down_proj((h.reshape(2, 16, E) + layer.skip * x_c) * F.silu(z))
    for mode in layer.modes:
        assert (layer(x, mode=mode)[0] - want).abs().max() < 1e-10


def test_exponential_forget_gate_option():
    layer = rnnzoo.create("mlstm", d_model=4, num_heads=2, forget_gate="exp", chunk_size=4).double()
    x = torch.randn(1, 9, 4, dtype=torch.float64)
    assert (layer(x, mode="chunk")[0] - layer(x, mode="sequential")[0]).abs().max() < 1e-12
    with pytest.raises(ValueError, match="forget_gate must be"):
        rnnzoo.create("mlstm", d_model=4, forget_gate="tanh")


def test_long_sequence_float32_is_finite():
    layer = rnnzoo.create("mlstm", d_model=4, num_heads=2)
    with torch.no_grad():
        y, state = layer(torch.randn(1, 65536, 4), mode="chunk")
    assert torch.isfinite(y).all() and all(torch.isfinite(s).all() for s in state)


@pytest.mark.parametrize("dim,blocksize,per_group", [(256, 4, 8), (24, 3, 8), (40, 8, 1),
                                                     (12, 4, 3)])
def test_block_diagonal_groups_equal_the_blockwise_map(dim, blocksize, per_group):
    from rnnzoo.layers.mlstm import BlockDiagonalLinear
    torch.manual_seed(0)
    layer = BlockDiagonalLinear(dim, blocksize).double()
    assert layer.per_group == per_group  # blocks gathered into maps of up to 32 channels
    x = torch.randn(2, 5, dim, dtype=torch.float64, requires_grad=True)
    want = torch.einsum("...bi,boi->...bo", x.unflatten(-1, (dim // blocksize, blocksize)),
                        layer.weight).flatten(-2)
    assert (layer(x) - want).abs().max() < 1e-12
    w = torch.randn_like(want)
    got = torch.autograd.grad((layer(x) * w).sum(), (x, layer.weight))
    for a, b in zip(got, torch.autograd.grad((want * w).sum(), (x, layer.weight))):
        assert (a - b).abs().max() < 1e-12


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_native_path_matches_the_torch_path(dtype, tol):
    """The CPU's C path (the up-projection's halves, q's scale in its blocks, q, k, v and the
    gates from ops.native.blockdiag.blockdiag_gated) against the PyTorch path: outputs, state
    and every gradient."""
    from rnnzoo.ops import backend
    torch.manual_seed(0)
    layer = rnnzoo.create("mlstm", d_model=12, num_heads=3, chunk_size=4).to(dtype)
    with torch.no_grad():  # gates that depend on the input (they start at zero weight)
        layer.gates.weight.normal_(0, 0.3)
    x = torch.randn(2, 9, 12, dtype=dtype, requires_grad=True)
    params = [x, *layer.parameters()]

    def run():
        y, state = layer(x, mode="chunk")
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=dtype).view_as(y)).sum()
        return [y, *state[:3], *torch.autograd.grad(loss, params)]

    got = run()
    with backend.force("torch"):
        want = run()
    for i, (a, b) in enumerate(zip(got, want)):
        assert (a - b).abs().max() <= tol * b.abs().max().clamp(min=1), i
