"""vector_delta.gated_inputs (GDN-2's erase key bs sigmoid(z_b) o k and value sigmoid(z_w) o v
in C) against the torch form: values and the gradients of z, k, v, with either output unused;
float64 tight, float32 loose; 1 and 2 threads."""

import pytest
import torch

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
