"""vector_delta.gated_inputs (GDN-2's erase key bs sigmoid(z_b) o k and value sigmoid(z_w) o v
in C) against the torch form: values and the gradients of z, k, v, with either output unused;
float64 tight, float32 loose; 1 and 2 threads."""

import pytest
import torch
from _second_order import second_order

from rnnzoo.ops.native import vector_delta


def _torch(z, k, v, bs):
    A = k.shape[-1]
    return bs * torch.sigmoid(z[:, :A]) * k, torch.sigmoid(z[:, A:]) * v


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("N,A,C", [(1, 3, 5), (37, 128, 128), (70, 8, 24)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("bs,used", [(1.0, "both"), (2.0, "both"), (1.0, "p"), (2.0, "u")])
def test_gated_inputs(dtype, tol, N, A, C, threads, bs, used):
    lib = vector_delta.load()
    if lib is None:
        pytest.skip("no C compiler")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g0 = torch.Generator().manual_seed(N + A + C)
        ins = [(3 * torch.randn(*s, generator=g0, dtype=dtype)).requires_grad_()
               for s in ((N, A + C), (N, A), (N, C))]
        out = vector_delta.gated_inputs(lib, *ins, bs)
        ref = _torch(*ins, bs)
        keep = {"both": (0, 1), "p": (0,), "u": (1,)}[used]
        dys = [torch.randn(N, A, generator=g0, dtype=dtype), torch.randn(N, C, generator=g0, dtype=dtype)]
        grads = torch.autograd.grad(sum((out[i] * dys[i]).sum() for i in keep), ins, allow_unused=True)
        refs = torch.autograd.grad(sum((ref[i] * dys[i]).sum() for i in keep), ins, allow_unused=True)
        for a, b in zip(out, ref):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)
        for a, b, x in zip(grads, refs, ins):
            a = torch.zeros_like(x) if a is None else a
            b = torch.zeros_like(x) if b is None else b
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    finally:
        torch.set_num_threads(old)


def _leaves2(*shapes, positive=()):
    g = torch.Generator().manual_seed(3)
    return [(torch.rand(s, dtype=torch.float64, generator=g) + 0.2 if i in positive else
             torch.randn(s, dtype=torch.float64, generator=g)).requires_grad_()
            for i, s in enumerate(shapes)]


def test_gated_inputs_second_derivative():
    """Under create_graph=True _Gates's `twice` (its PyTorch form replayed over the saved
    inputs) gives the second derivative in z, k and v, float64, against a central difference
    and the PyTorch form's own double backward; z a transposed view."""
    lib = vector_delta.load()
    if lib is None:
        pytest.skip("vector_delta does not build")
    zt, k, v = _leaves2((7, 5), (5, 3), (5, 4))

    def native(zt, k, v):
        return vector_delta.gated_inputs(lib, zt.t(), k, v, 0.7)

    def plain(zt, k, v):
        return vector_delta._torch_gates(zt.t(), k, v, 0.7)

    for a, b in zip(native(zt, k, v), plain(zt, k, v)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    second_order(native, [zt, k, v], plain)
