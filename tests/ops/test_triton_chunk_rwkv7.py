"""The Triton RWKV-7 kernels (forward and backward) against the PyTorch recurrent reference computed in float64: output, final state and every
gradient; on CPU under TRITON_INTERPRET=1, and compiled on CUDA when a GPU is present.

Triton reads TRITON_INTERPRET when `@triton.jit` decorates a function, and its own
`tl.sum`, `tl.cumsum`, ... are decorated when triton is first imported. So the interpreted
tests run only in a process started with TRITON_INTERPRET=1; in any other process, one test
re-runs this file in a child process with the flag set."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")

from _triton_interp import CUDA, DEVICE, INTERPRETED, needs_kernels, rerun_in_child  # noqa: E402

from rnnzoo.ops.chunk.delta import rwkv7_recurrent  # noqa: E402

if not (INTERPRETED or CUDA):
    test_interpreted_in_a_child_process = rerun_in_child(__file__)


@pytest.fixture(scope="module")
def tl_rwkv7():
    from rnnzoo.ops.triton import chunk_rwkv7
    return chunk_rwkv7


B, H = 2, 2
NAMES = ["r", "w", "k", "v", "a", "b", "initial_state"]


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def inputs(T, K, V, h0=True, steep=1.0):
    """As the RWKV-7 layer makes them: w = -e^{-1/2} sigmoid(.) (times `steep`), a = -kappa^,
    b = kappa^ * alpha with alpha in (0, 1) and kappa^ unit-norm."""
    r, k, v = rand(B, T, H, K, seed=0), rand(B, T, H, K, seed=1), rand(B, T, H, V, seed=2)
    w = -steep * math.exp(-0.5) * torch.sigmoid(rand(B, T, H, K, seed=3))
    kappa = torch.nn.functional.normalize(rand(B, T, H, K, seed=4), dim=-1)
    alpha = torch.sigmoid(rand(B, T, H, K, seed=5))
    S0 = rand(B, H, K, V, seed=6) if h0 else None
    return [x.to(DEVICE) if x is not None else None for x in (r, w, k, v, -kappa, kappa * alpha,
                                                               S0)]


def compare(op, T, K, V, h0=True, steep=1.0, chunk_size=16, scale=1.0, tol=1e-4):
    xs = inputs(T, K, V, h0, steep)
    leaves = [x.requires_grad_() if x is not None else None for x in xs]
    o, s = op(*leaves[:6], initial_state=leaves[6], scale=scale, chunk_size=chunk_size)
    assert o.dtype == torch.float32 and s.dtype == torch.float32
    refs = [x.detach().cpu().double().requires_grad_() if x is not None else None for x in xs]
    o_ref, s_ref = rwkv7_recurrent(*refs[:6], initial_state=refs[6], scale=scale)
    ws = [rand(*x.shape, seed=10 + i) for i, x in enumerate((o, s))]
    live = [i for i, x in enumerate(leaves) if x is not None]
    grads = torch.autograd.grad(sum((x * w.to(DEVICE)).sum() for x, w in zip((o, s), ws)),
                                [leaves[i] for i in live])
    grads_ref = torch.autograd.grad(sum((x * w.double()).sum() for x, w in zip((o_ref, s_ref), ws)),
                                    [refs[i] for i in live])
    pairs = {"o": (o, o_ref), "state": (s, s_ref)}
    pairs.update({"d" + NAMES[i]: p for i, *p in zip(live, grads, grads_ref)})
    rel = {n: ((x.cpu() - y).abs().max() / y.abs().max().clamp(min=1e-2)).item()
           for n, (x, y) in pairs.items()}
    print(" ".join(f"{n} {r:.1e}" for n, r in rel.items()))
    assert all(r < tol for r in rel.values()), rel


@needs_kernels
def test_forward_and_gradients_three_chunks(tl_rwkv7):
    """T = 33 over chunks of 16: two full chunks and a ragged one; initial and final state."""
    compare(tl_rwkv7.rwkv7, 33, 16, 32)


@needs_kernels
@pytest.mark.parametrize("T,chunk_size", [(1, 16), (15, 64)])
def test_short_sequences_without_initial_state(tl_rwkv7, T, chunk_size):
    compare(tl_rwkv7.rwkv7, T, 32, 16, h0=False, chunk_size=chunk_size)


@needs_kernels
def test_steep_decay_takes_the_exact_path(tl_rwkv7):
    """About -8 per step and channel: a chunk's span exceeds the factorisation limit, so the
    scores are built column by column from log-space factors; nothing overflows."""
    compare(tl_rwkv7.rwkv7, 20, 16, 16, steep=20.0)


@needs_kernels
def test_several_value_blocks_odd_head_sizes_and_scale(tl_rwkv7, monkeypatch):
    """K = 20, V = 24 (padded tiles) in value blocks of 16; a custom scale."""
    config = tl_rwkv7._config
    monkeypatch.setattr(tl_rwkv7, "_config", lambda K, V, c: (*config(K, V, c)[:2], 16))
    compare(tl_rwkv7.rwkv7, 21, 20, 24, scale=0.5)


@needs_kernels
@pytest.mark.parametrize("use", ["output", "state"])
def test_gradients_of_the_output_alone_and_of_the_state_alone(tl_rwkv7, use):
    """A loss of o only (no state cotangent reaches the kernel) or of the final state only
    (no output cotangent): every gradient as the reference's."""
    xs = inputs(17, 16, 16)
    leaves = [x.requires_grad_() for x in xs]
    refs = [x.detach().double().requires_grad_() for x in xs]
    pick = 0 if use == "output" else 1
    got = tl_rwkv7.rwkv7(*leaves[:6], initial_state=leaves[6], chunk_size=16)[pick]
    ref = rwkv7_recurrent(*refs[:6], initial_state=refs[6])[pick]
    wt = rand(*got.shape, seed=20).to(DEVICE)
    grads = torch.autograd.grad((got * wt).sum(), leaves)
    grads_ref = torch.autograd.grad((ref * wt.double()).sum(), refs, allow_unused=True)
    for name, g, r in zip(NAMES, grads, grads_ref):
        if r is None:  # the final state does not depend on r
            assert not g.any(), name
            continue
        err = (g.double() - r).abs().max() / r.abs().max().clamp(min=1e-2)
        assert err < 1e-4, (name, err.item())


@needs_kernels
def test_bfloat16_inputs(tl_rwkv7):
    *xs, S0 = inputs(19, 16, 16)
    half = [x.bfloat16() for x in xs]
    o, s = tl_rwkv7.rwkv7(*half, initial_state=S0, chunk_size=16)
    o_ref, s_ref = rwkv7_recurrent(*half, initial_state=S0)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert (o.float() - o_ref.float()).abs().max() < 2e-2 * o_ref.float().abs().max()
    assert (s - s_ref).abs().max() < 1e-3 * s_ref.abs().max()


@needs_kernels
def test_rejects_float64_and_bad_shapes(tl_rwkv7):
    r, w, k, v, a, b, _ = inputs(5, 16, 16, h0=False)
    with pytest.raises(TypeError, match="float64"):
        tl_rwkv7.rwkv7(*(x.double() for x in (r, w, k, v, a, b)))
    with pytest.raises(ValueError, match="w"):
        tl_rwkv7.rwkv7(r, w[..., :1], k, v, a, b)


@needs_kernels
def test_nonfinite_input_never_reaches_earlier_outputs(tl_rwkv7):
    """A NaN in k or the decay mid-chunk leaves earlier outputs as the clean run's, as in the
    PyTorch op (ops.finite); the kernel's chunk products would spread it over the chunk."""
    from _nonfinite import check_causal
    *args, S0 = inputs(40, 16, 16)
    check_causal(tl_rwkv7.rwkv7, args, [1, 2], (20,),
                 kwargs=dict(initial_state=S0, chunk_size=16), tol=1e-5, fills=(float("nan"),))
