"""ops.native.titans_scan.mac_attention (Titans-MAC's attention over one segment
[p, h_1, x_1, ..., h_n, x_n] at the x rows, in one autograd node) against the same attention
written out in PyTorch: the h keys turned by their rotary angles (GPT-NeoX's pairs over the
first R channels), the interleave, a causal softmax with zero queries at p and the h's.
Outputs (the x rows, the keys and values) and the gradients of every input, with and
without gradients arriving at the keys and values; float64 tight, float32 loose; odd sizes
(one token, B = 1, one head, R < Dh, persistent tokens), 1 and 2 threads."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, outputs_and_grads, threads

from rnnzoo.ops.native import attention as native_attention
from rnnzoo.ops.native import titans_scan


def _rope(x, cos, sin):
    """x (B, n, H, Dh) turned on its first R = 2 cos.shape[-1] channels, pairs (a, a + R/2)."""
    r = cos.shape[-1]
    c, s = cos[:, :, None], sin[:, :, None]
    a, b, rest = x[..., :r], x[..., r:2 * r], x[..., 2 * r:]
    return torch.cat([a * c - b * s, b * c + a * s, rest], -1)


def _reference(kv, qx, kx, vx, kp, vp, cos, sin):
    B, n = kv.shape[:2]
    H, Dh, P = qx.shape[1], qx.shape[3], kp.shape[2]
    kh, vh = kv.view(B, n, 2, H, Dh).unbind(2)
    kh, vh = _rope(kh, cos, sin).transpose(1, 2), vh.transpose(1, 2)
    ks, vs, qs = (torch.cat([p, torch.stack([h, t], 3).flatten(2, 3)], 2) for p, h, t in (
        (kp, kh, kx), (vp, vh, vx), (torch.zeros_like(kp), torch.zeros_like(qx), qx)))
    T = P + 2 * n
    s = qs @ ks.transpose(-1, -2)
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    o = torch.softmax(s, -1) @ vs
    return o[:, :, P + 1::2].transpose(1, 2).reshape(B, n, H * Dh), ks, vs


def _inputs(B, H, n, Dh, P, R, dtype):
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    ins = [r(B, n, 2 * H * Dh), 0.5 * r(B, H, n, Dh), r(B, H, n, Dh), r(B, H, n, Dh),
           r(B, H, P, Dh), r(B, H, P, Dh)]
    ang = r(B, n, R // 2)
    return [t.requires_grad_() for t in ins], ang.cos(), ang.sin()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("B,H,n,Dh,P,R", [(2, 3, 5, 4, 0, 4), (1, 1, 1, 8, 2, 8),
                                          (3, 2, 16, 32, 1, 16), (2, 4, 7, 32, 0, 32)])
@pytest.mark.parametrize("keys_read", [True, False])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_mac_attention_equals_pytorch(dtype, tol, B, H, n, Dh, P, R, keys_read, n_threads):
    ins, cos, sin = _inputs(B, H, n, Dh, P, R, dtype)
    lib = native_attention.load()
    assert lib is not None
    with threads(n_threads):
        got = titans_scan.mac_attention(lib, *ins, cos, sin)
    want = _reference(*ins, cos, sin)
    if not keys_read:   # only the x rows' output read: no gradient arrives at ks, vs
        got, want = got[:1], want[:1]
    with threads(n_threads):
        got = outputs_and_grads(got, ins)
    want = outputs_and_grads(want, ins)
    names = ["a", "ks", "vs"][:len(got) - 6] + "dkv dqx dkx dvx dkp dvp".split()
    assert_close(got, want, names, tol)


def _retrieve_reference(qT, W0, P0, g, nw, eps, w, b):
    B, H, n, K = qT.shape
    u = (qT @ (W0 + P0)).transpose(1, 2)                          # (B, n, H, K)
    z = torch.nn.functional.rms_norm(u, (K,), eps=eps) * nw * torch.sigmoid(g).view(B, n, H, K)
    return torch.nn.functional.linear(z.flatten(2), w, b)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("B,H,n,K,D", [(2, 3, 5, 4, 6), (1, 1, 1, 8, 16), (3, 4, 16, 32, 256)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_mac_retrieve_equals_pytorch(dtype, tol, B, H, n, K, D, bias, n_threads):
    """titans_scan.mac_retrieve (the segment memory's read, RMS norm times the gate, W_{k,v}
    W_o in one node) against the same written out: the output and every input's gradient."""
    from rnnzoo.ops.native import gated_norm

    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    qT = torch.nn.functional.normalize(r(B, H, n, K), dim=-1)
    ins = [t.requires_grad_() for t in (qT, 0.5 * r(H, K, K), 0.3 * r(B, H, K, K),
                                        r(B, n, H * K), 1 + 0.1 * r(H, K), r(D, H * K) / K,
                                        r(D))]
    b = ins[6] if bias else None
    lib = gated_norm.load()
    assert lib is not None
    with threads(n_threads):
        got = outputs_and_grads([titans_scan.mac_retrieve(lib, *ins[:5], 1e-6, ins[5], b)],
                                ins[:6 + bias])
    want = outputs_and_grads([_retrieve_reference(*ins[:5], 1e-6, ins[5], b)], ins[:6 + bias])
    assert_close(got, want, "kv dq dW0 dP0 dg dnw dw db".split(), tol)
