"""ops.native.deltaformer_attn: DeltaFormer's attention of a fresh sequence in C, row by row,
against the layer's PyTorch form (softmax matrices and a triangular solve, under
backend.force("torch")): outputs, the residues written to the cache and the gradients of the
input and every parameter (with a gradient on the residues too), 1 and 2 threads; a
non-finite input marks the same outputs; a cache (a second block) keeps the PyTorch form."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, counter
from _native_check import threads as threads_
from _second_order import second_order

import rnnzoo
from rnnzoo.ops import backend
from rnnzoo.ops.native import deltaformer_attn


@pytest.fixture
def calls(monkeypatch):
    return counter(monkeypatch, deltaformer_attn, "attend")


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("T,threads,d_model,heads", [(37, 1, 12, 3), (1, 2, 12, 3),
                                                     (20, 2, 12, 3), (61, 1, 70, 2)])
def test_native_deltaformer_matches_torch(calls, dtype, tol, T, threads, d_model, heads):
    # rows in blocks of 24 (the last one partial), head dims 4 and 35 (one register tile of
    # the block products and a packed tail)
    torch.manual_seed(0)
    layer = rnnzoo.create("deltaformer", d_model=d_model, num_heads=heads, max_len=64).to(dtype)
    x = torch.randn(2, T, d_model, dtype=dtype, requires_grad=True)
    gen = torch.Generator().manual_seed(1)
    wy = torch.randn(2, T, d_model, generator=gen, dtype=dtype)
    wu = torch.randn(2, heads, 64, d_model // heads, generator=gen, dtype=dtype)
    ins = [x, *layer.parameters()]

    def run():
        y, (_, u_cache, _) = layer(x, mode="parallel")
        u = u_cache[:, :, :T]
        loss = (y * wy).sum() + (u * wu[:, :, :T]).sum()
        return [y, u, *torch.autograd.grad(loss, ins)]

    with threads_(threads):
        got = run()
    assert calls[0] == 1
    with backend.force("torch"):
        want = run()
    assert_close(got, want, ["y", "u", "x"] + [n for n, _ in layer.named_parameters()], tol)


def test_native_deltaformer_nonfinite_and_cache(calls):
    torch.manual_seed(2)
    layer = rnnzoo.create("deltaformer", d_model=8, num_heads=2, max_len=32).double()
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    x[1, 6, 3] = float("nan")
    y, s = layer(x)
    assert calls[0] == 1
    with backend.force("torch"):
        y_ref, _ = layer(x)
    assert torch.equal(y.isnan(), y_ref.isnan()) and y[1, 6:].isnan().all()
    assert (y - y_ref).nan_to_num().abs().max() < 1e-12
    layer(x[:1, :4], layer(x[:1, :3])[1])  # the second block reads a cache: PyTorch form
    assert calls[0] == 2


def test_native_deltaformer_second_derivative():
    """Under create_graph=True _NativeDeltaFormer's `twice` (the PyTorch form replayed over the
    saved inputs) gives the second derivative of o and u in q, k, v and beta, float64,
    against a central difference and the PyTorch form's own double backward; the inputs
    transposed views as the layer passes them."""
    lib = deltaformer_attn.load()
    if lib is None:
        pytest.skip("deltaformer_attn does not build")
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 6, 2, 4, dtype=torch.float64, generator=g).requires_grad_()
               for _ in range(3))
    beta = torch.rand(2, 6, 2, dtype=torch.float64, generator=g).requires_grad_()

    def run(f):
        return lambda q, k, v, beta: f(*(t.transpose(1, 2) for t in (q, k, v, beta)))

    native = run(lambda *t: deltaformer_attn.attend(lib, *t, 0.5))
    plain = run(lambda *t: deltaformer_attn._torch_attend(0.5, *t))
    for a, b in zip(native(q, k, v, beta), plain(q, k, v, beta)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with threads_(2):
        second_order(native, [q, k, v, beta], plain)
