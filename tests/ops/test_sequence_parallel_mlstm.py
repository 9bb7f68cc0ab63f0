"""The mLSTM state fold of sequence parallelism (ops/sequence_parallel.py): summaries of
the slices of a sequence, folded in order from the initial state, give the state the
mLSTM loop reaches after the whole sequence, stabiliser m included."""

from __future__ import annotations

import pytest
import torch

from rnnzoo.ops.chunk.linear import mlstm, mlstm_recurrent
from rnnzoo.ops.sequence_parallel import mlstm_fold, mlstm_summary


def _inputs(T, seed=0, B=2, H=3, K=4, V=5):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, H, V)
    log_i = 2 * r(B, T, H)
    log_f = torch.nn.functional.logsigmoid(r(B, T, H) + 1)
    state = (r(B, H, K, V), r(B, H, K), r(B, H))
    return q, k, v, log_i, log_f, state


@pytest.mark.parametrize("cuts", [(5,), (1, 6, 13), (3, 4, 11, 12)])
def test_folding_slice_summaries_gives_the_whole_sequence_state(cuts):
    T = 16
    q, k, v, log_i, log_f, state = _inputs(T)
    _, want = mlstm_recurrent(q, k, v, log_i, log_f, initial_state=state)
    got = state
    bounds = (0, *cuts, T)
    for a, b in zip(bounds[:-1], bounds[1:]):
        got = mlstm_fold(got, mlstm_summary(k[:, a:b], v[:, a:b], log_i[:, a:b], log_f[:, a:b]))
    err = max((x - y).abs().max().item() for x, y in zip(got, want))
    print(f"mlstm fold over slices {bounds}: max state error {err:.3g}")
    assert err < 1e-12


def test_the_summary_is_the_state_from_an_empty_memory():
    """m = -inf, C = n = 0 entering: the loop's final state is the summary's (C, n, m)."""
    q, k, v, log_i, log_f, (C, n, m) = _inputs(7, seed=1)
    empty = (torch.zeros_like(C), torch.zeros_like(n), torch.full_like(m, float("-inf")))
    _, want = mlstm_recurrent(q, k, v, log_i, log_f, initial_state=empty)
    C_loc, n_loc, m_loc, F = mlstm_summary(k, v, log_i, log_f)
    assert max((x - y).abs().max().item() for x, y in zip((C_loc, n_loc, m_loc), want)) < 1e-12
    assert (F - log_f.sum(1)).abs().max().item() < 1e-12


def test_a_slice_run_from_the_folded_state_continues_the_sequence():
    """The rank's work: the chunk op on the second slice, entered with the fold of the
    first, gives the whole loop's outputs on those steps."""
    T, cut = 13, 6
    q, k, v, log_i, log_f, state = _inputs(T, seed=2)
    h_ref, _ = mlstm_recurrent(q, k, v, log_i, log_f, initial_state=state)
    entering = mlstm_fold(state, mlstm_summary(k[:, :cut], v[:, :cut], log_i[:, :cut],
                                               log_f[:, :cut]))
    h, _ = mlstm(*(t[:, cut:] for t in (q, k, v, log_i, log_f)), initial_state=entering,
                 chunk_size=4)
    assert (h - h_ref[:, cut:]).abs().max().item() < 1e-12
