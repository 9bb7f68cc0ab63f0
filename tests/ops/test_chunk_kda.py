"""ops.chunk.kda: the chunkwise KDA equals its recurrence (values, states, gradients, steep
decays, any chunking), equals flash-linear-attention's naive KDA, runs on `meta`, and keeps
non-finite inputs causal."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnnzoo.ops.chunk.kda import kda, kda_recurrent


def tensors(B=2, T=23, H=3, K=5, V=4, dtype=torch.float64, steep=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, v = r(B, T, H, K), F.normalize(r(B, T, H, K), dim=-1), r(B, T, H, V)
    logdecay = -steep * torch.rand(B, T, H, K, generator=g, dtype=torch.float64)
    beta = 2 * torch.rand(B, T, H, generator=g, dtype=torch.float64)  # negative eigenvalues too
    S0 = r(B, H, K, V)
    return [t.to(dtype) for t in (q, k, v, logdecay, beta)], S0.to(dtype)


@pytest.mark.parametrize("chunk,sub", [(4, 4), (8, 4), (16, 2), (64, 16), (12, 4)])
def test_chunk_equals_recurrent_float64(chunk, sub):
    args, S0 = tensors()
    o_ref, s_ref = kda_recurrent(*args, initial_state=S0)
    o, s = kda(*args, initial_state=S0, chunk_size=chunk, subchunk_size=sub)
    assert (o - o_ref).abs().max() < 1e-12 and (s - s_ref).abs().max() < 1e-12


def test_steep_per_channel_decay_stays_finite_and_exact():
    """Log-decays down to -500 a step (exp underflows within a step): every exponent of the
    chunk form is <= 0, so float32 neither overflows nor loses the exact answer."""
    args, S0 = tensors(steep=500.0)
    o_ref, s_ref = kda_recurrent(*args, initial_state=S0)
    o, s = kda(*(t.float() for t in args), initial_state=S0.float(), chunk_size=16,
               subchunk_size=4)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    assert (o.double() - o_ref).abs().max() < 1e-4 * o_ref.abs().max()
    assert (s.double() - s_ref).abs().max() < 1e-4 * s_ref.abs().max()


def test_gradients_equal_recurrent():
    args, S0 = tensors(T=9, H=1, K=3, V=2)
    args = [t.requires_grad_() for t in args]
    S0.requires_grad_()
    w = torch.randn(1, dtype=torch.float64)

    def grads(f, **kw):
        o, s = f(*args, initial_state=S0, **kw)
        loss = (o * o.detach().sin()).sum() + w * (s * s.detach().cos()).sum()
        return torch.autograd.grad(loss, [*args, S0])

    for a, b in zip(grads(kda_recurrent), grads(kda, chunk_size=4, subchunk_size=2)):
        assert (a - b).abs().max() < 1e-10


def test_runs_on_meta():
    args, S0 = tensors()
    o, s = kda(*(t.to("meta") for t in args), initial_state=S0.to("meta"), chunk_size=8,
               subchunk_size=4)
    assert o.device.type == "meta" and o.shape == (2, 23, 3, 4) and s.shape == (2, 3, 5, 4)


@pytest.mark.parametrize("which", [1, 2, 3, 4])
def test_nonfinite_step_reaches_no_earlier_output(which):
    """A NaN in k, v, g or beta at step t: outputs before t equal the clean run's (in the
    same chunk too), outputs from t on and the final state are NaN, as in the recurrence."""
    args, S0 = tensors()
    t = 6
    bad = [a.clone() for a in args]
    bad[which][0, t] = float("nan")
    for f in (kda_recurrent, lambda *a, **kw: kda(*a, chunk_size=8, subchunk_size=4, **kw)):
        o_clean, _ = f(*args, initial_state=S0)
        o, s = f(*bad, initial_state=S0)
        assert (o[0, :t] - o_clean[0, :t]).abs().max() < 1e-12
        assert (o[1] - o_clean[1]).abs().max() < 1e-12
        assert o[0, t:].isnan().all() and s[0].isnan().all() and not s[1].isnan().any()


def test_nonfinite_query_touches_its_own_output_only():
    args, S0 = tensors()
    bad = [a.clone() for a in args]
    bad[0][0, 6] = float("inf")
    o_clean, s_clean = kda(*args, initial_state=S0, chunk_size=8, subchunk_size=4)
    o, s = kda(*bad, initial_state=S0, chunk_size=8, subchunk_size=4)
    keep = torch.ones(23, dtype=torch.bool)
    keep[6] = False
    assert (o[0, keep] - o_clean[0, keep]).abs().max() < 1e-12 and not torch.isfinite(o[0, 6]).any()
    assert (s - s_clean).abs().max() < 1e-12


def test_bad_shapes_raise():
    args, S0 = tensors()
    with pytest.raises(ValueError, match=r"kda: g must have shape \(2, 23, 3, 5\)"):
        kda(*args[:3], args[3][..., 0], args[4])
    with pytest.raises(ValueError, match="kda: initial_state must have shape"):
        kda_recurrent(*args, initial_state=S0[:, :1])


# -- flash-linear-attention's naive KDA (fla-core 0.6.0), float32 on CPU ------------------------
def test_equals_fla_naive_kda():
    naive = pytest.importorskip("fla.ops.kda.naive",
                                reason="fla-core 0.6.0 is the oracle (see .ci/install-peers)")
    (q, k, v, g, beta), S0 = tensors(T=32, dtype=torch.float32)
    o_fla, s_fla = naive.naive_recurrent_kda(q, k, v, g, beta, initial_state=S0.clone(),
                                             output_final_state=True)
    o_fc, s_fc = naive.naive_chunk_kda(q, k, v, g, beta, initial_state=S0.clone(),
                                       output_final_state=True, chunk_size=8)
    close = lambda a, b: (a - b).abs().max() < 2e-5 * (1 + b.abs().max())  # noqa: E731
    assert close(o_fc, o_fla) and close(s_fc, s_fla)       # fla's own two forms agree
    for o, s in (kda_recurrent(q, k, v, g, beta, initial_state=S0),
                 kda(q, k, v, g, beta, initial_state=S0, chunk_size=16, subchunk_size=4)):
        assert close(o, o_fla) and close(s, s_fla)


@pytest.mark.parametrize("steep", [0.05, 4.0, 40.0])
def test_every_score_path_equals_recurrent_float32(steep):
    """The three ways `_decayed_scores` builds a chunk's scores on the CPU, chosen by the decay
    span read from the values: one factorised product a chunk (small spans), sub-chunks with
    factorised diagonal blocks (a chunk's span past the limit, a sub-chunk's not), and exact
    diagonal blocks (a sub-chunk's span past it). Each equals the float64 recurrence."""
    args, S0 = tensors(T=70, steep=steep)
    o_ref, s_ref = kda_recurrent(*args, initial_state=S0)
    o, s = kda(*(t.float() for t in args), initial_state=S0.float(), chunk_size=32,
               subchunk_size=8)
    assert (o.double() - o_ref).abs().max() < 1e-4 * (1 + o_ref.abs().max())
    assert (s.double() - s_ref).abs().max() < 1e-4 * (1 + s_ref.abs().max())


@pytest.mark.parametrize("W", [3, 8, 24])
def test_unit_lower_solve_is_the_inverse_times_r_at_any_width(W):
    """ops.chunk._common.unit_lower_solve: (I + A)^{-1} R for a strictly lower A, by a direct
    solve (W <= C) or the inverse times R (W > C), the same values and gradients either way;
    A's diagonal is never read (a unit diagonal is assumed)."""
    from rnnzoo.ops.chunk._common import unit_lower_solve
    g = torch.Generator().manual_seed(1)
    C = 8
    A = (0.3 * torch.randn(2, 3, C, C, generator=g, dtype=torch.float64)).tril(-1)
    R = torch.randn(2, 3, C, W, generator=g, dtype=torch.float64)
    want = torch.linalg.inv(torch.eye(C, dtype=torch.float64) + A) @ R
    garbage = A + torch.diag_embed(torch.full((2, 3, C), 5.0, dtype=torch.float64))
    for a in (A, garbage):
        assert (unit_lower_solve(a, R) - want).abs().max() < 1e-12
    A.requires_grad_(), R.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, r: unit_lower_solve(a.tril(-1), r), (A, R))
