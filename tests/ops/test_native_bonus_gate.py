"""token_mix.bonus_gate (RWKV-7's head group norm, bonus term and output gate in C) against the torch form,
values and all six input gradients; float64 tight, float32 loose; 1 and 2 threads."""

import pytest
import torch

from rnnzoo.ops.native import token_mix


def _torch(x, nw, nb, eps, r, k, v, g, rk):
    N, H, V = x.shape
    n = torch.nn.functional.group_norm(x.reshape(N, H * V), H, nw.flatten(), nb.flatten(), eps)
    return (n.view(N, H, V) + (r * k * rk).sum(-1, keepdim=True) * v) * g


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("N,H,K,V", [(1, 1, 3, 5), (37, 4, 32, 32), (70, 2, 7, 16)])
@pytest.mark.parametrize("threads", [1, 2])
def test_bonus_gate(dtype, tol, N, H, K, V, threads):
    lib = token_mix.load()
    if lib is None:
        pytest.skip("no C compiler")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g0 = torch.Generator().manual_seed(N * 7 + K)
        shapes = [(N, H, V), (H, V), (H, V), (N, H, K), (N, H, K), (N, H, V), (N, H, V), (H, K)]
        ins = [torch.randn(*s, generator=g0, dtype=dtype).requires_grad_() for s in shapes]
        dy = torch.randn(N, H, V, generator=g0, dtype=dtype)
        args = ins[:3] + [V * 1e-5] + ins[3:]
        y = token_mix.bonus_gate(lib, *args)
        grads = torch.autograd.grad(y, ins, dy)
        ref = _torch(*args)
        ref_grads = torch.autograd.grad(ref, ins, dy)
        torch.testing.assert_close(y, ref, rtol=tol, atol=tol)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    finally:
        torch.set_num_threads(old)
