"""The Triton mLSTM kernels against the PyTorch recurrent reference computed in float64:
output, final state (C, n, m) and every gradient (inputs and initial state); on CPU under
TRITON_INTERPRET=1, and compiled on CUDA when a GPU is present.

Triton reads TRITON_INTERPRET when `@triton.jit` decorates a function, and its own
`tl.sum`, `tl.cumsum`, ... are decorated when triton is first imported. So the interpreted
tests run only in a process started with TRITON_INTERPRET=1; in any other process, one test
re-runs this file in a child process with the flag set."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from _triton_interp import CUDA, DEVICE, INTERPRETED, needs_kernels, rerun_in_child  # noqa: E402

from rnnzoo.ops.chunk.linear import mlstm_recurrent  # noqa: E402

if not (INTERPRETED or CUDA):
    test_interpreted_in_a_child_process = rerun_in_child(__file__)


@pytest.fixture(scope="module")
def tl_mlstm():
    from rnnzoo.ops.triton import chunk_mlstm
    return chunk_mlstm


B, H = 2, 2
NAMES = ["q", "k", "v", "log_i", "log_f", "C0", "n0", "m0"]


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def inputs(T, K, V, h0=True, exp_forget=False):
    """Input gates 3 * N(0, 1) (the stabiliser moves often), forget gates log-sigmoid or
    exponential (log f of either sign); a random initial (C, n, m)."""
    q, k, v = rand(B, T, H, K, seed=0), rand(B, T, H, K, seed=1), rand(B, T, H, V, seed=2)
    log_i, f = 3 * rand(B, T, H, seed=3), 3 * rand(B, T, H, seed=4)
    log_f = f if exp_forget else F.logsigmoid(f)
    state = ([rand(B, H, K, V, seed=5), rand(B, H, K, seed=6), rand(B, H, seed=7)] if h0
             else [None] * 3)
    return [x.to(DEVICE) if x is not None else None for x in (q, k, v, log_i, log_f, *state)]


def compare(op, T, K, V, h0=True, exp_forget=False, chunk_size=16, scale=None, eps=1e-6,
            tol=1e-4):
    """h, (C, n, m) and the gradients of a random functional of all four, against the
    float64 loop; errors relative to each reference tensor's largest entry (at least 0.01)."""
    xs = inputs(T, K, V, h0, exp_forget)
    leaves = [x.requires_grad_() if x is not None else None for x in xs]
    state = tuple(leaves[5:]) if h0 else None
    h, s = op(*leaves[:5], initial_state=state, scale=scale, eps=eps, chunk_size=chunk_size)
    assert h.dtype == torch.float32 and all(x.dtype == torch.float32 for x in s)
    refs = [x.detach().cpu().double().requires_grad_() if x is not None else None for x in xs]
    h_ref, s_ref = mlstm_recurrent(*refs[:5], initial_state=tuple(refs[5:]) if h0 else None,
                                   scale=scale, eps=eps)
    out, ref = (h, *s), (h_ref, *s_ref)
    ws = [rand(*o.shape, seed=10 + i) for i, o in enumerate(out)]
    live = [i for i, x in enumerate(leaves) if x is not None]
    grads = torch.autograd.grad(sum((o * w.to(DEVICE)).sum() for o, w in zip(out, ws)),
                                [leaves[i] for i in live])
    grads_ref = torch.autograd.grad(sum((o * w.double()).sum() for o, w in zip(ref, ws)),
                                    [refs[i] for i in live])
    pairs = dict(zip(["h", "C", "n", "m"], zip(out, ref)))
    pairs.update({"d" + NAMES[i]: p for i, *p in zip(live, grads, grads_ref)})
    rel = {n: ((a.cpu() - b).abs().max() / b.abs().max().clamp(min=1e-2)).item()
           for n, (a, b) in pairs.items()}
    print(" ".join(f"{n} {r:.1e}" for n, r in rel.items()))
    assert all(r < tol for r in rel.values()), rel
    return rel


@needs_kernels
@pytest.mark.parametrize("exp_forget", [False, True])
def test_forward_and_gradients_three_chunks(tl_mlstm, exp_forget):
    """T = 33 over chunks of 16: two full chunks and a ragged one; initial and final state.
    With exponential forget gates some denominators come near their floor: the errors reach
    ~5e-5 here, as the PyTorch op's do in float32 (3.8e-5 at the same inputs)."""
    compare(tl_mlstm.mlstm, 33, 16, 32, exp_forget=exp_forget)


@needs_kernels
@pytest.mark.parametrize("T,chunk_size", [(1, 16), (15, 64)])
def test_short_sequences_without_initial_state(tl_mlstm, T, chunk_size):
    compare(tl_mlstm.mlstm, T, 32, 16, h0=False, chunk_size=chunk_size)


@needs_kernels
def test_several_value_blocks_odd_head_sizes_scale_and_eps(tl_mlstm, monkeypatch):
    """K = 20, V = 24 (padded tiles) in value blocks of 16: partial dq, dk, dgates, dn0, dm0
    summed over blocks; a custom scale; a large eps, so that the stabiliser's gradient
    (h depends on m only through eps and the e^{-m} floor) is not negligible."""
    config = tl_mlstm._config
    monkeypatch.setattr(tl_mlstm, "_config", lambda K, V, c: (*config(K, V, c)[:2], 16))
    compare(tl_mlstm.mlstm, 21, 20, 24, scale=0.5, eps=0.3)


@needs_kernels
def test_bfloat16_inputs(tl_mlstm):
    q, k, v, li, lf, *state = inputs(19, 16, 16)
    half = [x.bfloat16() for x in (q, k, v, li, lf)]
    h, s = tl_mlstm.mlstm(*half, initial_state=state, chunk_size=16)
    h_ref, s_ref = mlstm_recurrent(*half, initial_state=state)
    assert h.dtype == torch.bfloat16 and all(x.dtype == torch.float32 for x in s)
    assert (h.float() - h_ref.float().to(DEVICE)).abs().max() < 3e-2 * h_ref.float().abs().max()
    for a, b in zip(s, s_ref):
        assert (a - b.to(DEVICE)).abs().max() < 1e-3 * b.abs().max()


@needs_kernels
def test_rejects_float64_and_bad_shapes(tl_mlstm):
    q, k, v, li, lf, *_ = inputs(5, 16, 16, h0=False)
    with pytest.raises(TypeError, match="float64"):
        tl_mlstm.mlstm(q.double(), k.double(), v.double(), li.double(), lf.double())
    with pytest.raises(ValueError, match="log_f"):
        tl_mlstm.mlstm(q, k, v, li, lf[..., :1])


@needs_kernels
def test_nonfinite_input_never_reaches_earlier_outputs(tl_mlstm):
    """A NaN in k or the forget gate mid-chunk leaves earlier outputs as the clean run's, as
    in the PyTorch op (ops.finite); the kernel's chunk products would spread it."""
    from _nonfinite import check_causal
    q, k, v, log_i, log_f, *state = inputs(40, 16, 16)
    check_causal(tl_mlstm.mlstm, [q, k, v, log_i, log_f], [1, 4], (20,),
                 kwargs=dict(initial_state=state, chunk_size=16), tol=1e-5,
                 fills=(float("nan"),))
