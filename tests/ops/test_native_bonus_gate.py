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


def _keys_torch(k, ap, wp, kk, ka, wc, eps, H):
    N, D = k.shape
    a = torch.sigmoid(ap)
    kap = (k * -kk).view(N, H, D // H)
    nk = (kap / kap.norm(dim=-1, keepdim=True).clamp(min=eps)).view(N, D)
    return wc * torch.sigmoid(wp), k * (1 - ka + a * ka), nk, -nk * a


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("N,H,K", [(1, 1, 3), (37, 4, 32), (70, 2, 7)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("used", ["all", "nk_b", "w_kt"])
def test_rwkv7_keys(dtype, tol, N, H, K, threads, used):
    """token_mix.rwkv7_keys against the torch form (F.normalize's clamp), values and the five
    input gradients, with some outputs unused (their gradients None); a zero key row tests
    the norm's floor."""
    lib = token_mix.load()
    if lib is None:
        pytest.skip("no C compiler")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g0 = torch.Generator().manual_seed(N * 5 + K)
        D = H * K
        shapes = [(N, D), (N, D), (N, D), (D,), (D,)]
        ins = [(3 * torch.randn(*s, generator=g0, dtype=dtype)) for s in shapes]
        ins[0][0, :K] = 0  # the floor
        ins = [t.requires_grad_() for t in ins]
        outs = token_mix.rwkv7_keys(lib, *ins, -0.6, 1e-12, H)
        refs = _keys_torch(*ins, -0.6, 1e-12, H)
        keep = {"all": (0, 1, 2, 3), "nk_b": (2, 3), "w_kt": (0, 1)}[used]
        dys = [torch.randn(N, D, generator=g0, dtype=dtype) for _ in range(4)]
        loss = sum((outs[i] * dys[i]).sum() for i in keep)
        ref_loss = sum((refs[i] * dys[i]).sum() for i in keep)
        grads = torch.autograd.grad(loss, ins, allow_unused=True)
        ref_grads = torch.autograd.grad(ref_loss, ins, allow_unused=True)
        for a, b in zip(outs, refs):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)
        for a, b in zip(grads, ref_grads):
            b = torch.zeros_like(ins[0] if a is None else a) if b is None else b
            a = torch.zeros_like(b) if a is None else a
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    finally:
        torch.set_num_threads(old)
