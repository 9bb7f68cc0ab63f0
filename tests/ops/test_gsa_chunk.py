"""ops.gsa: the chunk form of gated slot attention equals its two recurrent loops, both on
its shared-product first pass (small decay spans) and on the per-slot fallback (spans past
the factorising limit), with an initial state, gradients included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnnzoo.ops.gsa import gated_slot_attention


def tensors(steep, B=2, T=37, H=2, K=3, M=4, V=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    log_alpha = F.logsigmoid(r(B, T, H, M)) * steep
    state = (r(B, H, K, M), r(B, H, M, V))
    return (r(B, T, H, K), r(B, T, H, K), r(B, T, H, V), -torch.expm1(log_alpha), log_alpha), state


@pytest.mark.parametrize("steep", [0.1, 400.0])
@pytest.mark.parametrize("chunk", [8, 64])
def test_chunk_equals_sequential(steep, chunk):
    args, state = tensors(steep)
    o_ref, (hk_ref, hv_ref) = gated_slot_attention(*args, initial_state=state, mode="sequential")
    o, (hk, hv) = gated_slot_attention(*args, initial_state=state, chunk_size=chunk)
    for a, b in ((o, o_ref), (hk, hk_ref), (hv, hv_ref)):
        assert a.shape == b.shape and (a - b).abs().max() < 1e-10


def test_gradients_equal_sequential():
    args, state = tensors(0.1, T=11)
    args = [t.requires_grad_() for t in args]
    grads = []
    for mode in ("sequential", "chunk"):
        o, (hk, hv) = gated_slot_attention(*args, initial_state=state, mode=mode, chunk_size=4)
        grads.append(torch.autograd.grad((o.sin().sum() + hk.sum() + hv.cos().sum()), args))
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 1e-10
