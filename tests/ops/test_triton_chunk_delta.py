"""The Triton delta-rule kernels (and DeltaProduct through them) against the PyTorch
recurrent reference computed in float64: forward, final state and every gradient; on CPU
under TRITON_INTERPRET=1, and compiled on CUDA when a GPU is present.

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

from rnnzoo.ops.chunk.delta import (  # noqa: E402
    _product_as_delta,
    delta_product_recurrent,
    delta_rule_recurrent,
)

if not (INTERPRETED or CUDA):
    test_interpreted_in_a_child_process = rerun_in_child(__file__)


@pytest.fixture(scope="module")
def tl_delta():
    from rnnzoo.ops.triton import chunk_delta
    return chunk_delta


B, H = 2, 2


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def uniform(*shape, seed):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def inputs(T, K, V, gate, h0=True):
    """Unit-norm keys, beta in (0, 2) (negative eigenvalues), log gates in (-1, 0)."""
    q, v = rand(B, T, H, K, seed=0), rand(B, T, H, V, seed=2)
    k = torch.nn.functional.normalize(rand(B, T, H, K, seed=1), dim=-1)
    beta = 2 * uniform(B, T, H, seed=3)
    g = -uniform(B, T, H, seed=4) if gate else None
    S0 = rand(B, H, K, V, seed=5) if h0 else None
    return [x.to(DEVICE) if x is not None else None for x in (q, k, v, beta, g, S0)]


def check(out, ref, leaves, refs, tol=1e-4):
    """Outputs and the gradients of a random functional of them, relative to each reference
    tensor's largest entry (at least 0.01)."""
    ws = [rand(*o.shape, seed=6 + i).to(DEVICE) for i, o in enumerate(out)]
    live = [i for i, x in enumerate(leaves) if x is not None]
    grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(out, ws)),
                                [leaves[i] for i in live])
    grads_ref = torch.autograd.grad(sum((o * w.cpu().double()).sum() for o, w in zip(ref, ws)),
                                    [refs[i] for i in live])
    pairs = {"o": (out[0], ref[0]), "state": (out[1], ref[1])}
    names = ["q", "k", "v", "beta", "g", "initial_state"]
    pairs.update({"d" + names[i]: p for i, *p in zip(live, grads, grads_ref)})
    rel = {n: ((a.cpu() - b).abs().max() / b.abs().max().clamp(min=1e-2)).item()
           for n, (a, b) in pairs.items()}
    print(" ".join(f"{n} {r:.1e}" for n, r in rel.items()))
    assert all(r < tol for r in rel.values()), rel


def compare(op, T, K, V, gate, h0=True, chunk_size=16, scale=None):
    xs = inputs(T, K, V, gate, h0)
    leaves = [x.requires_grad_() if x is not None else None for x in xs]
    o, s = op(*leaves[:5], initial_state=leaves[5], scale=scale, chunk_size=chunk_size)
    assert o.dtype == torch.float32 and s.dtype == torch.float32
    refs = [x.detach().cpu().double().requires_grad_() if x is not None else None for x in xs]
    o_ref, s_ref = delta_rule_recurrent(*refs[:5], initial_state=refs[5], scale=scale)
    check((o, s), (o_ref, s_ref), leaves, refs)


@needs_kernels
@pytest.mark.parametrize("gate", [False, True])
def test_forward_and_gradients_three_chunks(tl_delta, gate):
    """T = 33 over chunks of 16: two full chunks and a ragged one; initial and final state."""
    compare(tl_delta.delta_rule, 33, 16, 32, gate)


@needs_kernels
@pytest.mark.parametrize("T,chunk_size", [(1, 16), (15, 64)])
def test_short_sequences_without_initial_state(tl_delta, T, chunk_size):
    compare(tl_delta.delta_rule, T, 32, 16, True, h0=False, chunk_size=chunk_size)


@needs_kernels
def test_gradient_through_one_output_only(tl_delta):
    """The backward kernel with no adjoint for the final state (o only), then none for o
    (state only)."""
    xs = inputs(18, 16, 16, True)
    refs = [x.double().requires_grad_() for x in xs]
    o_ref, s_ref = delta_rule_recurrent(*refs[:5], initial_state=refs[5])
    for pick in (0, 1):
        leaves = [x.clone().requires_grad_() for x in xs]
        out = tl_delta.delta_rule(*leaves[:5], initial_state=leaves[5], chunk_size=16)
        grads = torch.autograd.grad(out[pick].square().sum(), leaves)
        ref = (o_ref, s_ref)[pick].square().sum()
        grads_ref = torch.autograd.grad(ref, refs, retain_graph=True, allow_unused=True)
        for a, b, x in zip(grads, grads_ref, refs):
            b = torch.zeros_like(x) if b is None else b  # q does not reach the state
            assert (a.double() - b).abs().max() < 1e-4 * b.abs().max().clamp(min=1e-2)


@needs_kernels
def test_several_value_blocks_odd_head_sizes_and_scale(tl_delta, monkeypatch):
    """K = 20, V = 24 (padded tiles) in value blocks of 16; a custom scale."""
    config = tl_delta._config
    monkeypatch.setattr(tl_delta, "_config", lambda K, V, c: (*config(K, V, c)[:2], 16))
    compare(tl_delta.delta_rule, 21, 20, 24, True, scale=0.5)


@needs_kernels
def test_delta_product_through_the_flattened_delta_rule(tl_delta):
    """DeltaProduct (n_h = 2 Householder steps per token, gated) is the delta rule over
    T * n_h steps (`_product_as_delta`): the kernel gives it with its gradients."""
    T, n_h, K, V = 9, 2, 16, 16
    q = rand(B, T, H, K, seed=0)
    k = torch.nn.functional.normalize(rand(B, T, n_h, H, K, seed=1), dim=-1)
    v, beta = rand(B, T, n_h, H, V, seed=2), 2 * uniform(B, T, n_h, H, seed=3)
    g, S0 = -uniform(B, T, H, seed=4), rand(B, H, K, V, seed=5)
    xs = [x.to(DEVICE) for x in (q, k, v, beta, g, S0)]
    leaves = [x.requires_grad_() for x in xs]
    flat = _product_as_delta(*leaves[:5])
    o, s = tl_delta.delta_rule(*flat, initial_state=leaves[5], chunk_size=16)
    o = o.reshape(B, T, n_h, H, V)[:, :, -1]
    refs = [x.detach().cpu().double().requires_grad_() for x in xs]
    o_ref, s_ref = delta_product_recurrent(*refs[:5], initial_state=refs[5])
    check((o, s), (o_ref, s_ref), leaves, refs)


@needs_kernels
def test_bfloat16_inputs(tl_delta):
    q, k, v, beta, g, S0 = inputs(19, 16, 16, True)
    half = [x.bfloat16() for x in (q, k, v, beta, g)]
    o, s = tl_delta.delta_rule(*half, initial_state=S0, chunk_size=16)
    o_ref, s_ref = delta_rule_recurrent(*half, initial_state=S0)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert (o.float() - o_ref.float()).abs().max() < 2e-2 * o_ref.float().abs().max()
    assert (s - s_ref).abs().max() < 1e-3 * s_ref.abs().max()


@needs_kernels
def test_rejects_float64_and_bad_shapes(tl_delta):
    q, k, v, beta, g, _ = inputs(5, 16, 16, True)
    with pytest.raises(TypeError, match="float64"):
        tl_delta.delta_rule(q.double(), k.double(), v.double(), beta.double())
    with pytest.raises(ValueError, match="beta"):
        tl_delta.delta_rule(q, k, v, beta[..., :1], g)


@needs_kernels
def test_nonfinite_input_never_reaches_earlier_outputs(tl_delta):
    """A NaN in k or the gate mid-chunk leaves earlier outputs as the clean run's, as in the
    PyTorch op (ops.finite); the kernel's chunk products would spread it over the chunk."""
    from _nonfinite import check_causal
    q, k, v, beta, g, S0 = inputs(40, 16, 16, True)
    check_causal(tl_delta.delta_rule, [q, k, v, beta, g], [1, 4], (20,),
                 kwargs=dict(initial_state=S0, chunk_size=16), tol=1e-5, fills=(float("nan"),))
