"""Titans-MAC's segment nodes in ops.native.titans_scan against the same written out:
mac_attention (the attention over [p, h_1, x_1, ..., h_n, x_n] at the x rows and the product
that follows, against PyTorch's rotary keys (GPT-NeoX's pairs over the first R channels),
interleave, causal softmax with zero queries at p and the h's, and F.linear), mac_retrieve
(the read, RMS norm times the gate, W_{k,v} W_o), mac_memory (the short conv and
titans_segment, against their own nodes). Outputs and the gradients of every input, float64
tight, float32 loose, odd sizes (one token, B = 1, one head, R < Dh, persistent tokens,
n < the conv's state), 1 and 2 threads; the segment products both ways (`titans_scan._onednn`:
ops.native.linear's oneDNN / wgrad.c, or torch's matmul), whichever this CPU takes."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, outputs_and_grads, threads

from rnnzoo.ops import backend
from rnnzoo.ops.native import attention as native_attention
from rnnzoo.ops.native import titans_scan
from rnnzoo.ops.native.linear import _LP

# the segment products' two paths, each forced on whatever CPU runs the tests
PRODUCTS = {"linear": lambda a, w: _LP is not None and a.dtype == torch.float32
            and backend.use_native(a, w), "matmul": lambda a, w: False}


def _rope(x, cos, sin):
    """x (B, n, H, Dh) turned on its first R = 2 cos.shape[-1] channels, pairs (a, a + R/2)."""
    r = cos.shape[-1]
    c, s = cos[:, :, None], sin[:, :, None]
    a, b, rest = x[..., :r], x[..., r:2 * r], x[..., 2 * r:]
    return torch.cat([a * c - b * s, b * c + a * s, rest], -1)


def _reference(kv, qx, kx, vx, kp, vp, cos, sin, w, b):
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
    a = o[:, :, P + 1::2].transpose(1, 2).reshape(B, n, H * Dh)
    return a, torch.nn.functional.linear(a, w, b), ks, vs


def _inputs(B, H, n, Dh, P, R, dtype):
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    ins = [r(B, n, 2 * H * Dh), 0.5 * r(B, H, n, Dh), r(B, H, n, Dh), r(B, H, n, Dh),
           r(B, H, P, Dh), r(B, H, P, Dh), r(3, H * Dh), r(3)]
    ang = r(B, n, R // 2)
    return [t.requires_grad_() for t in ins], ang.cos(), ang.sin()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("B,H,n,Dh,P,R", [(2, 3, 5, 4, 0, 4), (1, 1, 1, 8, 2, 8),
                                          (2, 1, 5, 8, 1, 8), (3, 2, 16, 32, 1, 16),
                                          (2, 4, 7, 32, 0, 32)])
@pytest.mark.parametrize("keys_read", [True, False])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("products", sorted(PRODUCTS))
def test_mac_attention_equals_pytorch(dtype, tol, B, H, n, Dh, P, R, keys_read, n_threads,
                                      products, monkeypatch):
    monkeypatch.setattr(titans_scan, "_onednn", PRODUCTS[products])
    ins, cos, sin = _inputs(B, H, n, Dh, P, R, dtype)
    lib = native_attention.load()
    assert lib is not None
    with threads(n_threads):
        got = titans_scan.mac_attention(lib, *ins[:6], cos, sin, *ins[6:])
    want = _reference(*ins[:6], cos, sin, *ins[6:])
    if not keys_read:   # only the outputs read: no gradient arrives at ks, vs
        got, want = got[:2], want[:2]
    with threads(n_threads):
        got = outputs_and_grads(got, ins)
    want = outputs_and_grads(want, ins)
    names = ["a", "proj", "ks", "vs"][:len(got) - 8] + "dkv dqx dkx dvx dkp dvp dw db".split()
    assert_close(got, want, names, tol)


def _retrieve_reference(q, W0, P0, g, nw, eps, w, b):
    B, n, H, K = q.shape
    u = (q.transpose(1, 2) @ (W0 + P0)).transpose(1, 2)           # (B, n, H, K)
    z = torch.nn.functional.rms_norm(u, (K,), eps=eps) * nw * torch.sigmoid(g).view(B, n, H, K)
    return torch.nn.functional.linear(z.flatten(2), w, b)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("B,H,n,K,D", [(2, 3, 5, 4, 6), (1, 1, 1, 8, 16), (3, 4, 16, 32, 256)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("products", sorted(PRODUCTS))
def test_mac_retrieve_equals_pytorch(dtype, tol, B, H, n, K, D, bias, n_threads, products,
                                     monkeypatch):
    """titans_scan.mac_retrieve (the segment memory's read, RMS norm times the gate, W_{k,v}
    W_o in one node) against the same written out: the output and every input's gradient."""
    from rnnzoo.ops.native import gated_norm

    monkeypatch.setattr(titans_scan, "_onednn", PRODUCTS[products])
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    # q: a segment's rows of a longer sequence's queries (batch and step strides, as the
    # layer's split gives them)
    seq = torch.nn.functional.normalize(r(B, n + 3, H, K), dim=-1).requires_grad_()
    ins = [seq[:, 2:n + 2], *(t.requires_grad_() for t in (
        0.5 * r(H, K, K), 0.3 * r(B, H, K, K), r(B, n, H * K), 1 + 0.1 * r(H, K),
        r(D, H * K) / K, r(D)))]
    b = ins[6] if bias else None
    lib = gated_norm.load()
    assert lib is not None
    leaves = [seq, *ins[1:6 + bias]]
    with threads(n_threads):
        got = outputs_and_grads([titans_scan.mac_retrieve(lib, titans_scan.load(), *ins[:5],
                                                          1e-6, ins[5], b)], leaves)
    want = outputs_and_grads([_retrieve_reference(*ins[:5], 1e-6, ins[5], b)], leaves)
    assert_close(got, want, "kv dq dW0 dP0 dg dnw dw db".split(), tol)


def _mac_inputs(dtype, B, H, n, K, d):
    """mac_memory's leaves (proj, w, state, W0, P0, M0, S0), seeded, requiring grad."""
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    HK = H * K
    return [t.requires_grad_() for t in (r(B, n, 3 * HK + 3 * H), r(3 * HK, d + 1) / d,
                                         r(B, d, 3 * HK), 0.5 * r(H, K, K), 0.3 * r(B, H, K, K),
                                         0.3 * r(B, H, K, K), 0.3 * r(B, H, K, K))]


def _two_nodes(clib, tlib, ins, H, K):
    """(z, M, S, the conv's new state) from the conv's and the segment's own nodes on proj's
    split: what mac_memory does in one node."""
    from rnnzoo.ops.memory import titans_segment
    from rnnzoo.ops.native import conv as native_conv

    proj, w, state, W0, P0, M0, S0 = ins
    B, n, HK = proj.shape[0], proj.shape[1], H * K
    qkv, g = proj.split([3 * HK, 3 * H], -1)
    (q, k, v), new = native_conv.short_conv(clib, qkv, w, None, state, True, 2 * H, K, False,
                                            (HK,) * 3)
    z, M, S = titans_segment(tlib, *(t.view(B, n, H, K) for t in (q, k, v)), g, W0, P0, M0, S0,
                             0.5)
    return z, M, S, new


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("B,H,n,K,d", [(2, 3, 5, 4, 3), (1, 1, 2, 8, 3), (3, 2, 16, 32, 3),
                                       (2, 2, 1, 4, 1)])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_mac_memory_equals_two_nodes(dtype, tol, B, H, n, K, d, n_threads):
    """titans_scan.mac_memory (the short conv with its q, k norms, then titans_segment, in
    one node) against the conv's and the segment's own nodes on proj's split: z, M, S, the
    conv's new state (n < d: part of it the old state's rows) and every input's gradient."""
    from rnnzoo.ops.native import conv as native_conv

    ins = _mac_inputs(dtype, B, H, n, K, d)
    proj, w, state, W0, P0, M0, S0 = ins
    clib, tlib = native_conv.load(), titans_scan.load()
    assert clib is not None and tlib is not None
    with threads(n_threads):
        got = outputs_and_grads(titans_scan.mac_memory(clib, tlib, proj, w, state, True, W0, P0,
                                                       M0, S0, 0.5), ins)
        want = outputs_and_grads(_two_nodes(clib, tlib, ins, H, K), ins)
    assert_close(got, want, "z M S state dproj dw dstate dW0 dP0 dM0 dS0".split(), tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("read", [(0,), (1, 2), (2,), (0, 3)])
def test_mac_memory_with_outputs_unread(dtype, tol, read):
    """mac_memory's backward given None (not zeros) for the outputs a loss does not read (the
    node does not materialise them): the read z alone, the state M and S, S alone, z and the
    conv's new state; the gradients against the conv's and the segment's own nodes reading
    the same outputs."""
    from rnnzoo.ops.native import conv as native_conv

    B, H, n, K, d = 2, 2, 5, 4, 3
    ins = _mac_inputs(dtype, B, H, n, K, d)
    proj, w, state, W0, P0, M0, S0 = ins
    clib, tlib = native_conv.load(), titans_scan.load()
    out = titans_scan.mac_memory(clib, tlib, proj, w, state, True, W0, P0, M0, S0, 0.5)
    got = outputs_and_grads([out[i] for i in read], ins)
    ref = _two_nodes(clib, tlib, ins, H, K)
    want = outputs_and_grads([ref[i] for i in read], ins)
    names = [f"out{i}" for i in read] + "dproj dw dstate dW0 dP0 dM0 dS0".split()
    assert_close(got, want, names, tol)


def test_mixed_dtypes_are_refused():
    """The kernels read every buffer at one element size: a bfloat16 kv beside float32
    tensors (once handed over under CPU autocast) read past its buffers; now one TypeError."""
    ins, cos, sin = _inputs(1, 1, 3, 4, 0, 4, torch.float32)
    lib = native_attention.load()
    with pytest.raises(TypeError, match="mac_attention: its tensors must share one dtype"):
        titans_scan.mac_attention(lib, ins[0].detach().bfloat16(), *ins[1:6], cos, sin, *ins[6:])
