"""TTT-Linear's (and TTT-MLP's: mlp_loop) mini-batch loop in C (ttt_loop.c), a (batch x head) row at a time over all
its mini-batches, forward and backward:

    loop(lib, W, c, A0, a0, k, v, lr, w, b, tok, eps) -> (P, pc, Gl, S, s)

W (B, H, K, K), c (B, H, K): the weights at the loop's start; A0, a0 the same shapes: the sums
the state brought (added to the first mini-batch's); k, v (B, H, NT, M, K), lr (B, H, NT, M):
the mini-batches' inputs and rates, at any strides with unit columns (a layer's (B, T, H, K)
tensors viewed as mini-batches: no copies; their gradients come back in that layout); w, b (H, K) the inner norm (None, None: no norm); tok (M,)
(its last entry is the weights' step). Returns each mini-batch's start weights P (B, H, NT, K,
K), pc (B, H, NT, K), its lr-weighted gradients Gl (B, H, NT, M, K) and its sums S (B, H, NT,
K, K), s (B, H, NT, K) (the first with A0, a0): ops.memory's loop, equal to rounding.
Differentiable in all inputs, once. float32 or float64 on the CPU (`ops.backend.use_native`
decides); threads split the rows.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from rnnzoo.ops import first_order, native


def load():
    return native.load("ttt_loop")


def _call(lib, name, tensors, eps, n):
    P, L = ctypes.c_void_p, ctypes.c_long
    fn = native.kernel(lib, name, tensors[0].dtype, [P] * len(tensors) + [ctypes.c_double, L, L])
    ptrs = [native.ptr(t) for t in tensors]
    native.run(fn, [(*ptrs, eps, *p) for p in native.rows(n) or [(0, 0)]])


def _grad_like(t):
    """t's gradient: t's layout if contiguous, else that of a layer's (B, T, H, ...) tensor
    of which t (B, H, NT, M, ...) is a view (no copies either way)."""
    if t.is_contiguous():
        return torch.empty_like(t)
    B, H, NT, M, *rest = t.shape
    return t.new_empty(B, NT, M, H, *rest).permute(0, 3, 1, 2, *range(4, t.dim()))


def _strides(dims, *ts):
    """The linear kernels' st: each tensor's (B, H, NT, M) strides, then dims (NT, M, K, H,
    norm)."""
    return torch.tensor([x for t in ts for x in t.stride()[:4]] + list(dims), dtype=torch.long)


class _Loop(first_order.Function):
    @staticmethod
    def forward(ctx, lib, eps, plain, W, c, A0, a0, k, v, lr, w, b, tok):
        orig = (W, c, A0, a0, k, v, lr, w, b, tok)  # for `twice` (copies carry no history)
        W, c, A0, a0, tok = (t.contiguous() for t in (W, c, A0, a0, tok))
        # k, v, lr at their strides (a layer's tensors viewed as mini-batches), unit columns
        k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (k, v))
        w, b = (None if t is None else t.contiguous() for t in (w, b))
        B, H, NT, M, K = k.shape
        P = k.new_empty(B, H, NT, K, K)
        S = torch.empty_like(P)
        pc, s = (k.new_empty(B, H, NT, K) for _ in range(2))
        Gl = k.new_empty(B, H, NT, M, K)
        dims = (NT, M, K, H, int(w is not None))
        _call(lib, "ttt_loop_fwd", (W, c, A0, a0, k, v, lr, w, b, tok, P, pc, Gl, S, s,
                                    _strides(dims, k, v, lr)), eps, B * H)
        ctx.save_for_backward(P, pc, k, v, lr, w, b, tok, S, s, *orig)
        ctx.lib, ctx.eps, ctx.dims, ctx.plain = lib, eps, dims, plain
        ctx.set_materialize_grads(False)  # S, s without a gradient: NULL, not a zero tensor
        return P, pc, Gl, S, s

    @staticmethod
    def twice(ctx, *grads):  # under create_graph: autograd through the PyTorch loop
        first_order.plain_given(ctx.plain, "_Loop")
        return (None,) * 3 + first_order.replay(functools.partial(ctx.plain, ctx.eps),
                                                 ctx.saved_tensors[10:], grads,
                                                 ctx.needs_input_grad[3:])

    @staticmethod
    def backward(ctx, dP, dpc, dGl, dS, ds):
        P, pc, k, v, lr, w, b, tok, S, s = ctx.saved_tensors[:10]
        B, H, NT, M, K = k.shape
        dW, dA0 = (k.new_empty(B, H, K, K) for _ in range(2))
        dc, da0, dnw, dnb = (k.new_empty(B, H, K) for _ in range(4))
        dk, dv, dlr = _grad_like(k), _grad_like(v), _grad_like(lr)
        dtau = k.new_empty(B, H)
        # the kernel takes dS, ds as NULL (zero): an unused final state's sums cost no
        # (B, H, NT, K, K) zero tensor
        grads = [torch.zeros_like(x) if g is None else g.contiguous()
                 for g, x in ((dP, P), (dpc, pc))]
        grads.append(k.new_zeros(B, H, NT, M, K) if dGl is None else dGl.contiguous())
        grads += [None if g is None else g.contiguous() for g in (dS, ds)]
        _call(ctx.lib, "ttt_loop_bwd", (P, pc, k, v, lr, w, b, tok, S, s, *grads, dW, dc, dA0,
                                        da0, dk, dv, dlr, dnw, dnb, dtau,
                                        _strides(ctx.dims, k, v, lr, dk, dv, dlr)), ctx.eps,
              B * H)
        dtok = torch.zeros_like(tok)
        dtok[-1] = dtau.sum()
        norm = w is not None
        return (None, None, None, dW, dc, dA0, da0, dk, dv, dlr, dnw.sum(0) if norm else None,
                dnb.sum(0) if norm else None, dtok)


def loop(lib, W, c, A0, a0, k, v, lr, w, b, tok, eps: float, plain=None):
    """(P, pc, Gl, S, s); `lib` = load(); plain: the same function of (eps, W, c, A0, a0, k,
    v, lr, w, b, tok) in PyTorch (ops.memory's loop), which the node's `twice`
    differentiates (None: first order only)."""
    return _Loop.apply(lib, float(eps), plain, W, c, A0, a0, k, v, lr, w, b, tok)


def _call_mlp(lib, name, tensors, dims, eps, n):
    P = ctypes.c_void_p
    fn = native.kernel(lib, name, tensors[0].dtype, [P] * (len(tensors) + 1)
                       + [ctypes.c_double, ctypes.c_long, ctypes.c_long])
    ptrs = [native.ptr(t) for t in (*tensors, dims)]
    native.run(fn, [(*ptrs, eps, *p) for p in native.rows(n) or [(0, 0)]])


class _MLPLoop(first_order.Function):
    @staticmethod
    def forward(ctx, lib, eps, plain, F, Ws, A, k, v, lr, w, b, tok, last):
        orig = (Ws, A, k, v, lr, w, b, tok, last)  # for `twice` (copies carry no history)
        Ws, A, k, v, lr, tok, last = (t.contiguous() for t in (Ws, A, k, v, lr, tok, last))
        w, b = (None if t is None else t.contiguous() for t in (w, b))
        B, H, NT, M, K = k.shape
        P1, P2 = k.new_empty(B, H, NT, K, F), k.new_empty(B, H, NT, F, K)
        pb1, pb2 = k.new_empty(B, H, NT, F), k.new_empty(B, H, NT, K)
        X2, Gl1, Gl2 = k.new_empty(B, H, NT, M, F), k.new_empty(B, H, NT, M, F), torch.empty_like(k)
        Fin = k.new_empty(B, H, 2 * Ws.shape[-1])
        dims = torch.tensor([NT, M, K, F, H, int(w is not None)], dtype=torch.long)
        _call_mlp(lib, "ttt_mlp_fwd", (Ws, A, k, v, lr, w, b, tok, last, P1, pb1, P2, pb2, X2,
                                       Gl1, Gl2, Fin), dims, eps, B * H)
        ctx.save_for_backward(P1, pb1, P2, pb2, A, k, v, lr, w, b, tok, last, *orig)
        ctx.lib, ctx.eps, ctx.dims, ctx.plain, ctx.F = lib, eps, dims, plain, F
        return P1, pb1, P2, pb2, X2, Gl1, Gl2, Fin

    @staticmethod
    def twice(ctx, *grads):  # under create_graph: autograd through the PyTorch loop
        first_order.plain_given(ctx.plain, "_MLPLoop")
        return (None,) * 4 + first_order.replay(functools.partial(ctx.plain, ctx.eps, ctx.F),
                                                 ctx.saved_tensors[12:], grads,
                                                 ctx.needs_input_grad[4:])

    @staticmethod
    def backward(ctx, *grads):
        P1, pb1, P2, pb2, A, k, v, lr, w, b, tok, last = ctx.saved_tensors[:12]
        B, H = k.shape[:2]
        dWs, dA = torch.empty_like(A), torch.empty_like(A)
        dk, dv, dlr = torch.empty_like(k), torch.empty_like(v), torch.empty_like(lr)
        dn, dtau = k.new_empty(B, H, 2, k.shape[-1]), k.new_empty(B, H)
        _call_mlp(ctx.lib, "ttt_mlp_bwd", (P1, pb1, P2, pb2, A, k, v, lr, w, b, tok, last,
                                           *(g.contiguous() for g in grads), dWs, dA, dk, dv,
                                           dlr, dn, dtau), ctx.dims, ctx.eps, B * H)
        dtok = torch.zeros_like(tok)
        dtok[-1] = dtau.sum()
        norm = w is not None
        dn = dn.sum(0)
        return (None, None, None, None, dWs, dA, dk, dv, dlr, dn[:, 0] if norm else None,
                dn[:, 1] if norm else None, dtok, None)


def mlp_loop(lib, W, A, k, v, lr, w, b, tok, last, eps: float, plain=None):
    """TTT-MLP's loop: W, A the start weights (W_1, b_1, W_2, b_2) and the state's sums
    (A_1, Ab_1, A_2, Ab_2), each (B, H, I, O) or (B, H, O), W_1 (K, F); k, v (B, H, NT, M,
    K), lr (B, H, NT, M); last (B,) each element's last mini-batch. Returns (P1, pb1, P2, pb2,
    X2, Gl1, Gl2, final): each mini-batch's start weights, its second layer's inputs X2 (B, H,
    NT, M, F) and lr-weighted gradients Gl1 (B, H, NT, M, F), Gl2 (B, H, NT, M, K), and the
    weights and sums of each element's last mini-batch (8 tensors, W's shapes). plain: the
    node's function of (eps, F, flat W, flat A, k, v, lr, w, b, tok, last) in PyTorch
    (ops.memory's loop), which its `twice` differentiates (None: first order only)."""
    B, H = k.shape[:2]
    F = W[0].shape[-1]
    flat = lambda ts: torch.cat([t.reshape(B, H, -1) for t in ts], -1)  # noqa: E731
    *out, Fin = _MLPLoop.apply(lib, float(eps), plain, F, flat(W), flat(A), k, v, lr, w, b, tok,
                               last)
    sizes = [t[0, 0].numel() for t in W] * 2
    final = [t.view(B, H, *s.shape[2:]) for t, s in zip(Fin.split(sizes, -1), [*W, *W])]
    return (*out, final)
