"""Comba (arXiv:2506.02475): fla's naive chunk Comba and its Triton recurrent kernel (under
TRITON_INTERPRET=1) on the layer's own tensors; the closed-loop write recalls exactly under
its erase key when beta p.k matches the decay; without the inner decay or the decay, the
recurrence is the delta rule's."""

from __future__ import annotations

import os

import pytest
import torch

import rnnzoo
from rnnzoo.ops.chunk.delta import delta_rule
from rnnzoo.ops.erase_delta import erase_delta, erase_delta_recurrent

OPS = [erase_delta_recurrent, lambda *a, **kw: erase_delta(*a, chunk_size=4, **kw)]


def _layer(**options):
    torch.manual_seed(0)
    layer = rnnzoo.create("comba", d_model=16, num_heads=2, head_dim=8, chunk_size=8, **options)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def _tensors(T=24):
    layer = _layer()
    x = torch.randn(2, T, 16)
    S, conv = layer.init_state(2)
    S = torch.randn_like(S)
    return layer, x, S, conv, layer.op_inputs(x, conv)


def _check_modes(layer, x, S, conv, o_ref, S_ref):
    y_ref = layer.op_output(o_ref, x)
    for mode in layer.modes:
        y, (S_ours, _) = layer(x, (S, conv), mode=mode)
        assert (y - y_ref).abs().max() < 1e-5 * y_ref.abs().max()
        assert (S_ours - S_ref).abs().max() < 1e-5 * S_ref.abs().max()


def test_layer_equals_fla_naive_chunk_comba():
    """The block's q, k, p, v, g, beta through fla-core 0.6.0's naive chunk Comba (the SPLR
    form of its kernels), then the block's output: equal to every mode of the layer. (fla's
    naive *recurrent* Comba erases after the decay, so it differs from its own chunk form
    and kernel whenever g != 0.)"""
    naive = pytest.importorskip("fla.ops.comba.naive",
                                reason="fla-core 0.6.0 is the oracle (see .ci/install-peers)")
    layer, x, S, conv, (q, k, p, v, g, beta, _) = _tensors()
    with torch.no_grad():
        o, S_ref = naive.naive_chunk_comba(q, k, v, p, g, beta, initial_state=S,
                                           output_final_state=True, chunk_size=8)
        _check_modes(layer, x, S, conv, o, S_ref)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="fla's Triton kernel runs on the CPU only under TRITON_INTERPRET=1")
def test_layer_equals_fla_triton_fused_recurrent_comba():
    """fla's fused recurrent Comba kernel (Triton, interpreted on the CPU) on the same tensors."""
    fused = pytest.importorskip("fla.ops.comba.fused_recurrent",
                                reason="fla-core 0.6.0 is the oracle (see .ci/install-peers)")
    layer, x, S, conv, (q, k, p, v, g, beta, _) = _tensors(T=9)
    with torch.no_grad():
        o, S_ref = fused.fused_recurrent_comba(q=q, k=k, p=p, v=v, g=g, beta=beta,
                                               initial_state=S.clone(), output_final_state=True)
        _check_modes(layer, x, S, conv, o, S_ref)


@pytest.mark.parametrize("op", OPS, ids=["recurrent", "chunk"])
def test_closed_loop_write_recalls_exactly_under_its_erase_key(op):
    """The state feedback: S_t^T p_t = (e^g - beta p.k) S_{t-1}^T p_t + beta (p.k) v_t, so a
    write with beta_t p_t.k_t = e^{g_t} erases the old content under p_t completely and reads
    back e^{g_t} v_t exactly, whatever the state held (random) and whatever the decay; p = d k
    (the inner decay d < 1). Gated DeltaNet's rule beta p.k = 1 (right only without decay)
    leaves a residue of the old value."""
    torch.manual_seed(0)
    T, K, V = 6, 4, 3
    f64 = torch.float64
    k = torch.nn.functional.normalize(torch.randn(1, T, 1, K, dtype=f64), dim=-1)
    d = 0.7
    p = d * k
    v = torch.randn(1, T, 1, V, dtype=f64)
    g = -torch.rand(1, T, 1, dtype=f64) - 0.1
    S0 = torch.randn(1, 1, K, V, dtype=f64)
    for beta, exact in ((g.exp()[..., None] / d, True), (1 / d, False)):
        o, _ = op(p, k, beta * v, g, beta * p, scale=1.0, initial_state=S0, before_decay=True)
        err = (o - g.exp()[..., None] * v).abs().max()  # o_t = S_t^T q_t with q = p
        assert (err < 1e-12) if exact else (err > 1e-2)


def test_inner_decay_off_is_the_delta_rule_and_decay_off_is_gated_deltanet():
    """p = k: with g = 0 the SPLR transition is the delta rule's I - beta k k^T (ops.chunk.delta
    on the same tensors). With the decay, (e^g I - beta k k^T) = e^g (I - beta' k k^T) with
    beta' = beta e^{-g}: Gated DeltaNet with that beta' and the value v beta / beta' (so that
    its write beta' k v'^T is Comba's beta k v^T) gives the same outputs."""
    layer = _layer(inner_decay=False, output_correction=False).double()
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    S, conv = layer.init_state(2, dtype=torch.float64)
    q, k, p, v, g, beta, _ = layer.op_inputs(x, conv)
    assert torch.equal(p, k)
    b = beta[..., None]
    o_dn, _ = delta_rule(q, k, v, beta, None, chunk_size=4)
    beta_gdn = beta * (-g).exp()                         # e^g beta' = beta
    o_gdn, _ = delta_rule(q, k, v * (b / beta_gdn[..., None]), beta_gdn, g, chunk_size=4)
    for op in OPS:
        o, _ = op(q, k, b * v, torch.zeros_like(g), b * p, before_decay=True)
        assert (o - o_dn).abs().max() < 1e-12
        o, _ = op(q, k, b * v, g, b * p, before_decay=True)
        assert (o - o_gdn).abs().max() < 1e-10 * o_gdn.abs().max()


def test_options_checked():
    with pytest.raises(TypeError, match="inner_decay must be a bool"):
        rnnzoo.create("comba", d_model=8, inner_decay=1)
    with pytest.raises(ValueError, match="correction_factor must be a finite real"):
        rnnzoo.create("comba", d_model=8, correction_factor=float("nan"))
    z = torch.zeros(1, 2, 1, 3)
    with pytest.raises(ValueError, match="before_decay needs a scalar decay g"):
        erase_delta(z, z, z, z, z, before_decay=True)
