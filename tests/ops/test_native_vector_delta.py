"""ops.native.vector_delta (the delta rule with a decay per key channel in C) behind kda,
erase_delta (after and before the decay, vector and scalar decays) and rwkv7 on the CPU:
outputs, final state and every gradient equal the reference loops, in float64 and float32,
on one and two threads, with T across several checkpoint blocks; the chunk forms
(RNNZOO_NATIVE=0) against the same loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _native_check import assert_close, counter, outputs_and_grads, threads

from rnnzoo.ops.chunk.delta import rwkv7, rwkv7_recurrent
from rnnzoo.ops.chunk.kda import kda, kda_recurrent
from rnnzoo.ops.erase_delta import erase_delta, erase_delta_recurrent
from rnnzoo.ops.native import vector_delta

B, T, H, K, V = 2, 37, 3, 5, 4     # T: two checkpoint blocks (CK = 32), the second partial


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _inputs(case, K=K, V=V):
    q, k, v = _rand(B, T, H, K, seed=1), F.normalize(_rand(B, T, H, K, seed=2), dim=-1), \
        _rand(B, T, H, V, seed=3)
    g_vec = -F.softplus(_rand(B, T, H, K, seed=4))
    gate = torch.sigmoid(_rand(B, T, H, K, seed=5))
    S0 = _rand(B, H, K, V, seed=6)
    if case == "kda":
        return (q, k, v, g_vec, 2 * gate[..., 0]), S0
    if case == "rwkv7":
        kappa = F.normalize(_rand(B, T, H, K, seed=7), dim=-1)
        return (q, -0.6 * torch.sigmoid(g_vec), k, v, -kappa, kappa * gate), S0
    g = g_vec if case == "erase_vector" else g_vec[..., 0]
    return (q, k, v, g, gate * k), S0


CASES = {
    "kda": (kda, kda_recurrent, {}),
    "erase_vector": (erase_delta, erase_delta_recurrent, {}),
    "erase_scalar": (erase_delta, erase_delta_recurrent, {}),
    "erase_before": (erase_delta, erase_delta_recurrent, {"before_decay": True}),
    "rwkv7": (rwkv7, rwkv7_recurrent, {}),
}


@pytest.mark.parametrize("path", ["native", "chunks"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(CASES))
# V = 21: one column tile of 32 (wide.h) whose second half is partly filled; V = 56: two,
# the second 24 wide (its second 16-float half partly filled)
@pytest.mark.parametrize("K,V", [(K, V), (9, 21), (9, 56)])
def test_equals_the_loop(case, dtype, path, K, V, monkeypatch):
    fast, loop, kw = CASES[case]
    if path == "chunks":
        monkeypatch.setenv("RNNZOO_NATIVE", "0")
    calls = counter(monkeypatch, vector_delta, "vector_delta")
    args, S0 = _inputs(case, K, V)
    args = [t.to(dtype).requires_grad_() for t in (*args, S0)]
    kw = dict(kw, chunk_size=8)
    with threads(2):
        got = outputs_and_grads(fast(*args[:-1], initial_state=args[-1], **kw), args)
    want = outputs_and_grads(loop(*args[:-1], initial_state=args[-1],
                                  **{n: x for n, x in kw.items() if n != "chunk_size"}), args)
    assert calls[0] == (path == "native")
    names = ["o", "S", *(f"d{i}" for i in range(len(args)))]
    assert_close(got, want, names, 1e-11 if dtype == torch.float64 else 2e-5)


@pytest.mark.parametrize("used", ["o", "S"])
def test_one_output_unused(used):
    """The kernel's backward with no gradient for the final state, or none for the outputs."""
    (q, k, v, g, p), S0 = _inputs("erase_vector")
    args = [t.clone().requires_grad_() for t in (q, k, v, g, p, S0)]
    lib = vector_delta.load()
    a = args[4] * args[3].exp()
    o, S = vector_delta.vector_delta(lib, args[0], args[3], args[1], args[2], a, None, args[5], 0.5)
    o_ref, S_ref = erase_delta_recurrent(*args[:5], scale=0.5, initial_state=args[5])
    want = torch.autograd.grad((o_ref if used == "o" else S_ref).sum(), args, materialize_grads=True)
    got = torch.autograd.grad((o if used == "o" else S).sum(), args, materialize_grads=True)
    assert_close(got, want, [f"d{i}" for i in range(6)], 1e-11)


def test_a_huge_negative_log_decay_erases_its_channel_exactly():
    """exp(-1000) is 0 in the kernel as in torch (not exp.h's clamped smallest normal)."""
    (q, k, v, g, p), S0 = _inputs("erase_vector")
    zero = torch.zeros_like
    g = g.clone()
    g[..., 0] = -1e3
    for dtype in (torch.float64, torch.float32):
        _, S = erase_delta(*(t.to(dtype) for t in (q, zero(k), zero(v), g, zero(p))),
                           initial_state=S0.to(dtype))
        assert (S[:, :, 0] == 0).all() and (S[:, :, 1:] != 0).all()
