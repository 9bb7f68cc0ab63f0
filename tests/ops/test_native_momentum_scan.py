"""ops.native.momentum_scan, the momentum delta rule's C recurrence (momentum_delta's CPU
path), against the reference loop (ops.momentum_delta.momentum_delta_recurrent): outputs,
final (S, M) and the gradients of all ten inputs (with gradients on the final states too),
T not a multiple of the 64-step checkpoint, 1 and 2 threads; and momentum_delta proven to
take it on CPU float32/64 (and not under force("torch"))."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _native_check import assert_close, counter, outputs_and_grads, threads

from rnnzoo.ops import backend
from rnnzoo.ops.momentum_delta import momentum_delta, momentum_delta_recurrent
from rnnzoo.ops.native import momentum_scan


def _inputs(B, T, H, K, V, dtype):
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=gen, dtype=dtype)  # noqa: E731
    q, k, p = (F.normalize(r(B, T, H, K), dim=-1) for _ in range(3))
    gates = (-0.4 * u(B, T, H), -0.8 * u(B, T, H), u(B, T, H), 2 * u(B, T, H))
    return [t.requires_grad_() for t in (q, k, r(B, T, H, V), p, *gates,
                                         r(B, H, K, V), r(B, H, K, V))]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("B,T,H,K,V", [(2, 70, 3, 5, 6), (1, 1, 1, 2, 3),
                                     (1, 37, 2, 9, 21),  # two 256-bit tiles, the 2nd narrow
                                     (1, 37, 2, 9, 40)])  # two column tiles (32 floats, 16 doubles), the 2nd narrow
@pytest.mark.parametrize("n_threads", [1, 2])
def test_native_momentum_matches_the_loop(dtype, tol, B, T, H, K, V, n_threads):
    ins = _inputs(B, T, H, K, V, dtype)
    lib = momentum_scan.load()
    assert lib is not None
    with threads(n_threads):
        got = outputs_and_grads(momentum_scan.momentum(lib, *ins, 0.7), ins)
    o, (S, M) = momentum_delta_recurrent(*ins[:8], scale=0.7, initial_state=tuple(ins[8:]))
    want = outputs_and_grads((o, S, M), ins)
    assert_close(got, want, [f"out{i}" for i in range(len(want))], tol)


def test_momentum_delta_runs_the_kernel_on_the_cpu(monkeypatch):
    ran = counter(monkeypatch, momentum_scan, "momentum")
    ins = _inputs(1, 9, 2, 3, 4, torch.float32)
    o, _ = momentum_delta(*ins[:8], initial_state=tuple(ins[8:]))
    assert ran[0] == 1
    with backend.force("torch"):
        o_torch, _ = momentum_delta(*ins[:8], initial_state=tuple(ins[8:]))
    assert ran[0] == 1
    assert (o - o_torch).abs().max() < 1e-5


def test_momentum_delta_nonfinite_input_never_reaches_earlier_outputs():
    """A NaN / inf at step t in any of the eight timed inputs, on the C path (which skips the
    finite copies when every step is finite): outputs before t are the clean run's, the other
    sequence's outputs and final state too."""
    from _nonfinite import check_causal
    ins = [t.detach() for t in _inputs(2, 12, 2, 3, 4, torch.float64)]

    def op(*args):
        o, (S, M) = momentum_delta(*args, initial_state=tuple(ins[8:]))
        return o, torch.cat([S, M], -1)

    check_causal(op, ins[:8], range(8), (5, 10))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B,T,H,K,V", [(2, 70, 3, 5, 6), (1, 37, 2, 9, 40)])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_native_momentum_osum_is_the_sum_of_each_pairs_outputs(dtype, B, T, H, K, V, n_threads):
    """osum[b H + h] = sum of o[b, :, h, :] (the columns past V of a narrow tile not in it)."""
    ins = [t.detach() for t in _inputs(B, T, H, K, V, dtype)]
    lib = momentum_scan.load()
    osum = torch.full((B * H,), float("nan"), dtype=dtype)
    with threads(n_threads):
        o, _, _ = momentum_scan.momentum(lib, *ins, 0.7, torch.rand(H, dtype=dtype), osum=osum)
    want = o.sum((1, 3)).flatten()
    assert (osum - want).abs().max() <= 1e-5 * (1 + want.abs().max())


@pytest.mark.parametrize("pk", [True, False])
def test_momentum_delta_nonfinite_input_marks_as_the_marking_path(pk):
    """The C path checks q, k, v, p by the kernel's sum of o (the gates by their sums): with
    one NaN / inf entry at step t of any input it gives finite_inputs' marks, as the PyTorch
    chunk form does: NaN exactly where that form has NaN (inf and -inf in log_alpha among
    them: exp(-inf) = 0 alone would hide it), equal elsewhere; the kernel ran."""
    ins = [t.detach() for t in _inputs(2, 12, 2, 3, 4, torch.float64)]
    corr = torch.tensor([0.3, 0.0], dtype=torch.float64)
    for i in range(8):
        if pk and i == 3:
            continue
        for fill in (float("nan"), float("inf"), float("-inf")):
            bad = list(ins)
            bad[i] = ins[i].clone()
            bad[i][0, 5].view(-1)[0] = fill
            if pk:
                bad[3] = bad[1]
            got = momentum_delta(*bad[:8], initial_state=tuple(bad[8:]), correction=corr)
            with backend.force("torch"):
                want = momentum_delta(*bad[:8], initial_state=tuple(bad[8:]), correction=corr)
            for g, w in zip((got[0], *got[1]), (want[0], *want[1])):
                assert torch.equal(g.isnan(), w.isnan()), (i, fill)
                assert bool(w.isnan()[0, 5:].all()) or i == 0, (i, fill)
                ok = ~w.isnan()
                assert (g[ok] - w[ok]).abs().max() <= 1e-9, (i, fill)
