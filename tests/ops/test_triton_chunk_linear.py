"""The Triton gated linear attention kernels against the PyTorch recurrent reference
computed in float64: forward, final state and every gradient; on CPU under TRITON_INTERPRET=1,
and compiled on CUDA when a GPU is present.

Triton reads TRITON_INTERPRET when `@triton.jit` decorates a function, and its own
`tl.sum`, `tl.cumsum`, ... are decorated when triton is first imported. So the interpreted
tests run only in a process started with TRITON_INTERPRET=1; in any other process (where
fla or a GPU test may already have imported triton compiled), one test re-runs this file in
a child process with the flag set."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from _triton_interp import CUDA, DEVICE, INTERPRETED, needs_kernels, rerun_in_child  # noqa: E402

from rnnzoo.ops.chunk.linear import gated_linear_attention_recurrent  # noqa: E402

if not (INTERPRETED or CUDA):
    test_interpreted_in_a_child_process = rerun_in_child(__file__)


@pytest.fixture(scope="module")
def tl_gla():
    from rnnzoo.ops.triton import chunk_linear
    return chunk_linear


B, H = 2, 2


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def inputs(T, K, V, kind, bonus, h0=True, strength=1.0):
    q, k, v = rand(B, T, H, K, seed=0), rand(B, T, H, K, seed=1), rand(B, T, H, V, seed=2)
    g = None
    if kind != "none":
        shape = (B, T, H) if kind == "scalar" else (B, T, H, K)
        g = -strength * torch.rand(*shape, generator=torch.Generator().manual_seed(3))
    S0 = rand(B, H, K, V, seed=4) if h0 else None
    u = rand(H, K, seed=5) if bonus else None
    return [x.to(DEVICE) if x is not None else None for x in (q, k, v, g, S0, u)]


def compare(op, T, K, V, kind, bonus, h0=True, strength=1.0, chunk_size=16, scale=None,
            tol=1e-4):
    """Forward, final state and the gradients of a random functional of both, against the
    float64 loop; errors relative to each reference tensor's largest entry (at least 0.01:
    with no initial state and T = 1 the exact log-decay gradient is 0)."""
    xs = inputs(T, K, V, kind, bonus, h0, strength)
    leaves = [x.requires_grad_() if x is not None else None for x in xs]
    o, s = op(*leaves[:4], initial_state=leaves[4], bonus=leaves[5], scale=scale,
              chunk_size=chunk_size)
    refs = [x.detach().cpu().double().requires_grad_() if x is not None else None for x in xs]
    o_ref, s_ref = gated_linear_attention_recurrent(*refs[:4], initial_state=refs[4],
                                                    bonus=refs[5], scale=scale)
    assert o.dtype == torch.float32 and s.dtype == torch.float32 and o.shape == o_ref.shape
    wo, ws = rand(*o.shape, seed=6).to(DEVICE), rand(*s.shape, seed=7).to(DEVICE)
    live = [i for i, x in enumerate(leaves) if x is not None]
    grads = torch.autograd.grad((o * wo).sum() + (s * ws).sum(), [leaves[i] for i in live])
    grads_ref = torch.autograd.grad((o_ref * wo.cpu().double()).sum() + (s_ref * ws.cpu().double()).sum(),
                                    [refs[i] for i in live])
    names = ["q", "k", "v", "log_decay", "initial_state", "bonus"]
    errors = {"o": o.cpu() - o_ref, "state": s.cpu() - s_ref}
    scales = {"o": o_ref.abs().max(), "state": s_ref.abs().max()}
    for i, a, b in zip(live, grads, grads_ref):
        errors["d" + names[i]] = a.cpu() - b
        scales["d" + names[i]] = b.abs().max()
    rel = {n: (e.abs().max() / scales[n].clamp(min=1e-2)).item() for n, e in errors.items()}
    print(" ".join(f"{n} {r:.1e}" for n, r in rel.items()))
    assert all(r < tol for r in rel.values()), rel
    return rel


@needs_kernels
@pytest.mark.parametrize("kind", ["none", "scalar", "vector"])
@pytest.mark.parametrize("bonus", [False, True])
def test_forward_and_gradients_three_chunks(tl_gla, kind, bonus):
    """T = 33 over chunks of 16: two full chunks and a ragged one, initial and final state."""
    compare(tl_gla.gated_linear_attention, 33, 16, 32, kind, bonus)


@needs_kernels
@pytest.mark.parametrize("T,kind", [(1, "scalar"), (15, "vector")])
def test_short_sequences_without_initial_state(tl_gla, T, kind):
    compare(tl_gla.gated_linear_attention, T, 32, 16, kind, False, h0=False)


@needs_kernels
@pytest.mark.parametrize("bonus", [False, True])
def test_steep_vector_decay_takes_the_exact_path(tl_gla, bonus):
    """About -15 per step: a chunk's span exceeds the factorisation limit, so the scores are
    built from the log-space factors column by column; nothing overflows."""
    compare(tl_gla.gated_linear_attention, 33, 16, 16, "vector", bonus, strength=30.0)


@needs_kernels
def test_several_value_blocks_odd_head_sizes_and_scale(tl_gla, monkeypatch):
    """K = 20, V = 24 (padded tiles) in value blocks of 16: two programs per head whose
    partial dq, dk, dg, du are summed; a custom scale."""
    config = tl_gla._config
    monkeypatch.setattr(tl_gla, "_config", lambda K, V, c: (*config(K, V, c)[:2], 16))
    for kind in ("scalar", "vector"):
        compare(tl_gla.gated_linear_attention, 21, 20, 24, kind, True, scale=0.3)


@needs_kernels
def test_bfloat16_inputs(tl_gla):
    q, k, v, g, S0, _ = inputs(19, 16, 16, "vector", False)
    o, s = tl_gla.gated_linear_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), g.bfloat16(),
                                         initial_state=S0, chunk_size=16)
    o_ref, s_ref = gated_linear_attention_recurrent(q.bfloat16(), k.bfloat16(), v.bfloat16(),
                                                    g.bfloat16(), initial_state=S0)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert (o.float() - o_ref.float().to(DEVICE)).abs().max() < 2e-2 * o_ref.float().abs().max()
    # the interpreter's dots are exact float32; an H200's bf16 tensor-core dots gave 2.6e-4
    tol = 1e-4 if INTERPRETED else 1e-3
    assert (s - s_ref.to(DEVICE)).abs().max() < tol * s_ref.abs().max()


@needs_kernels
def test_rejects_float64_and_bad_shapes(tl_gla):
    q, k, v, g, _, _ = inputs(5, 16, 16, "scalar", False)
    with pytest.raises(TypeError, match="float64"):
        tl_gla.gated_linear_attention(q.double(), k.double(), v.double())
    with pytest.raises(ValueError, match="log_decay"):
        tl_gla.gated_linear_attention(q, k, v, g[..., :1])


@needs_kernels
@pytest.mark.parametrize("kind", ["scalar", "vector"])
def test_nonfinite_input_never_reaches_earlier_outputs(tl_gla, kind):
    """A NaN in k or the decay mid-chunk leaves earlier outputs as the clean run's, as in the
    PyTorch op (ops.finite); the kernel's chunk products would spread it over the chunk."""
    from _nonfinite import check_causal
    q, k, v, g, S0, _ = inputs(40, 16, 16, kind, False)
    check_causal(tl_gla.gated_linear_attention, [q, k, v, g], [1, 3], (20,),
                 kwargs=dict(initial_state=S0, chunk_size=16), tol=1e-5, fills=(float("nan"),))
