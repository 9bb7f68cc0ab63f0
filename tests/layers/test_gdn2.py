"""GDN-2: fla's naive GDN-2 (recurrent and chunk) on the layer's own tensors; with b = w = beta
the recurrence is KDA's (ops.chunk.kda); decoupled gates: an erase without a write clears one
orthonormal key's value and keeps the others exactly."""

from __future__ import annotations

import pytest
import torch

import rnnzoo
from rnnzoo.ops.chunk.kda import kda
from rnnzoo.ops.erase_delta import erase_delta, erase_delta_recurrent

OPS = [erase_delta_recurrent, lambda *a, **kw: erase_delta(*a, chunk_size=4, subchunk_size=2, **kw)]


def test_layer_equals_fla_naive_gdn2():
    naive = pytest.importorskip("fla.ops.gdn2.naive",
                                reason="fla-core 0.6.0 is the oracle (see .ci/install-peers)")
    torch.manual_seed(0)
    layer = rnnzoo.create("gdn2", d_model=16, num_heads=2, head_dim=8, chunk_size=8,
                          subchunk_size=4, allow_neg_eigval=True)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 24, 16)
    S, conv = layer.init_state(2)
    S = torch.randn_like(S)
    q, k, v, g, b, w, _ = layer.op_inputs(x, conv)
    with torch.no_grad():
        refs = [naive.naive_recurrent_gdn2(q, k, v, g, b, w, initial_state=S,
                                           output_final_state=True),
                naive.naive_chunk_gdn2(q, k, v, g, b, w, initial_state=S,
                                       output_final_state=True, chunk_size=8)]
        for mode in layer.modes:
            y, (S_ours, _) = layer(x, (S, conv), mode=mode)
            for o_ref, S_ref in refs:
                y_ref = layer.op_output(o_ref, x)
                assert (y - y_ref).abs().max() < 1e-5 * y_ref.abs().max()
                assert (S_ours - S_ref).abs().max() < 1e-5 * S_ref.abs().max()


def test_equal_scalar_gates_are_kda():
    """b = w = beta (the same scalar on every channel of a head): KDA on the same tensors."""
    torch.manual_seed(0)
    B, T, H, K, V = 2, 13, 2, 4, 3
    f64 = torch.float64
    q, k = (torch.nn.functional.normalize(torch.randn(B, T, H, K, dtype=f64), dim=-1)
            for _ in range(2))
    v = torch.randn(B, T, H, V, dtype=f64)
    g = -torch.rand(B, T, H, K, dtype=f64)
    beta = 2 * torch.rand(B, T, H, dtype=f64)
    S0 = torch.randn(B, H, K, V, dtype=f64)
    o_kda, S_kda = kda(q, k, v, g, beta, initial_state=S0, chunk_size=4, subchunk_size=2)
    for op in OPS:
        o, S = op(q, k, beta[..., None] * v, g, beta[..., None] * k, initial_state=S0)
        assert (o - o_kda).abs().max() < 1e-12 and (S - S_kda).abs().max() < 1e-12


@pytest.mark.parametrize("op", OPS, ids=["recurrent", "chunk"])
def test_erase_without_write_clears_one_key_and_keeps_the_rest(op):
    """Orthonormal keys, no decay. Writes with b = 1 store S^T k_i = w_i o v_i exactly; then
    one step at key k_0 with b = 1 and w = 0 (erase, no write) clears what k_0 reads and
    leaves every other key's value untouched, a step KDA's single beta (erase = write) takes
    only with a zero value."""
    torch.manual_seed(0)
    d, V = 5, 3
    f64 = torch.float64
    keys = torch.linalg.qr(torch.randn(d, d, dtype=f64))[0].T
    k = torch.cat([keys, keys[:1], keys])[None, :, None]          # writes, erase k_0, reads
    n = 2 * d + 1
    v = torch.randn(1, n, 1, V, dtype=f64)
    w = torch.rand(1, n, 1, V, dtype=f64)
    w[0, d] = 0
    b = torch.ones(1, n, 1, d, dtype=f64)
    b[0, d + 1:] = 0                                              # reads change nothing
    w[0, d + 1:] = 0
    g = torch.zeros(1, n, 1, d, dtype=f64)
    S0 = torch.randn(1, 1, d, V, dtype=f64)
    o, _ = op(k, k, w * v, g, b * k, scale=1.0, initial_state=S0)
    stored = (w * v)[0, :d, 0]
    read = o[0, d + 1:, 0]
    assert read[0].abs().max() < 1e-12
    assert (read[1:] - stored[1:]).abs().max() < 1e-12


def test_options_checked():
    with pytest.raises(ValueError, match="subchunk_size must divide chunk_size=8"):
        rnnzoo.create("gdn2", d_model=8, chunk_size=8, subchunk_size=3)
    with pytest.raises(TypeError, match="allow_neg_eigval must be a bool"):
        rnnzoo.create("gdn2", d_model=8, allow_neg_eigval=1)
