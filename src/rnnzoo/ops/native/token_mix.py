"""RWKV's token-shift mixes x_m = x + mu_m o step (step = x_{t-1} - x_t), forward and
backward in C (token_mix.c): one pass over the rows each way, where six torch addcmuls
cost one pass each forward and about five each backward (dx, dstep, dmu per mix).

x, step: (..., D), one dtype (float32 or float64) on the CPU (`ops.backend.use_native`);
mu: (n, D). Returns the n mixes (..., D), differentiable in x, step and mu. Threads split
the rows.

RWKV-7's keys (`rwkv7_keys`: w, k~, -kappa, kappa o a from the pre-sigmoids) and its output
head before the projection (`bonus_gate`: the head group norm, the bonus term and the gate)
are here too, one C pass each way each.
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import first_order, native


def load():
    return native.load("token_mix")


def _kernels(lib, dtype):
    P, L = ctypes.c_void_p, ctypes.c_long
    return (native.kernel(lib, "tmix_fwd", dtype, [P] * 4 + [L] * 5),
            native.kernel(lib, "tmix_bwd", dtype, [P] * 6 + [L] * 4))


def _torch_token_mix(x, step, mu):
    """token_mix in PyTorch: the form _TokenMix's `twice` differentiates."""
    return tuple(x + m * step for m in mu.unbind(0))


def _torch_shift(x, x_last, mu):
    """shift_mix in PyTorch: the form _Shift's `twice` differentiates."""
    step = torch.cat([x_last[:, None], x[:, :-1]], 1) - x
    return step, x + step * mu


def _torch_bonus(x, nw, nb, eps, r, k, v, g, rk):
    """bonus_gate in PyTorch (layers.rwkv7's form): the form _Bonus's `twice` differentiates."""
    y = torch.nn.functional.layer_norm(x, x.shape[-1:], eps=eps) * nw + nb
    return (y + (r * k * rk).sum(-1, keepdim=True) * v) * g


def _torch_keys(k, ap, wp, kk, ka, wc, eps, H):
    """rwkv7_keys in PyTorch (layers.rwkv7's form): the form _Keys's `twice` differentiates."""
    a = torch.sigmoid(ap)
    nk = (k * -kk).unflatten(-1, (H, -1))
    nk = (nk / torch.linalg.vector_norm(nk, dim=-1, keepdim=True).clamp_min(eps)).flatten(-2)
    return wc * torch.sigmoid(wp), k * torch.addcmul(1 - ka, a, ka), nk, -nk * a


class _TokenMix(first_order.Function):
    @staticmethod
    def forward(ctx, lib, x, step, mu):
        orig = (x, step, mu)  # for `twice` (the copies below have no autograd history)
        x, step, mu = x.contiguous(), step.contiguous(), mu.contiguous()
        n, D = mu.shape
        rows = x.numel() // D
        fwd, _ = _kernels(lib, x.dtype)
        out = x.new_empty(n, *x.shape)
        P = native.ptr
        native.run(fwd, [(P(x), P(step), P(mu), P(out), n, rows, D, r0, r1)
                         for r0, r1 in native.rows(rows)])
        ctx.save_for_backward(step, mu, *orig)
        ctx.lib = lib
        return tuple(out.unbind(0))

    @staticmethod
    def twice(ctx, *gs):
        return (None, *first_order.replay(_torch_token_mix, ctx.saved_tensors[2:], gs,
                                     ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, *gs):
        step, mu = ctx.saved_tensors[:2]
        n, D = mu.shape
        rows = step.numel() // D
        _, bwd = _kernels(ctx.lib, step.dtype)
        gs = [None if g is None else g.contiguous() for g in gs]
        ptrs = (ctypes.c_void_p * n)(*[None if g is None else g.data_ptr() for g in gs])
        dx, dstep = torch.empty_like(step), torch.empty_like(step)
        parts = native.rows(rows)
        dmu = mu.new_empty(len(parts), n, D)
        P = native.ptr
        native.run(bwd, [(ctypes.cast(ptrs, ctypes.c_void_p), P(step), P(mu), P(dx), P(dstep), P(dmu[i]), n, D, r0, r1)
                         for i, (r0, r1) in enumerate(parts)])
        return None, dx, dstep, dmu.sum(0)


def _mix_kernels(lib, dtype):
    P, L = ctypes.c_void_p, ctypes.c_long
    return (native.kernel(lib, "mixp_fwd", dtype, [P] * 9 + [L] * 7),
            native.kernel(lib, "mixp_bwd", dtype, [P] * 13 + [L] * 7))


def ddlerp_mixes(lib, x, step, low, up, mu, W=None):
    """RWKV-6's mixes x + step o c_m, c_m = low[:, m] up_m + mu_m: x, step (N, D), low
    (N, n, R), up (n, R, D), mu (n, D), contiguous, one dtype -> (mixes (n, N, D), c
    (n, N, D)); with W (np, D, D) ([out, in], np <= n) also the last np mixes' projections
    proj_j = mixes[n - np + j] W_j^T (np, N, D), in the same blocks of rows. No autograd
    (`ddlerp_grads` is its backward)."""
    (N, D), (n, R) = x.shape, low.shape[1:]
    fwd, _ = _mix_kernels(lib, x.dtype)
    out, c = x.new_empty(n, N, D), x.new_empty(n, N, D)
    np_ = 0 if W is None else W.shape[0]
    WT = None if W is None else W.transpose(1, 2).contiguous()
    proj = None if W is None else x.new_empty(np_, N, D)
    P = native.ptr
    native.run(fwd, [(P(x), P(step), P(low), P(up), P(mu), P(c), P(out), P(WT), P(proj), np_,
                      n, N, D, R, r0, r1) for r0, r1 in native.rows(N)])
    return (out, c) if W is None else (out, c, proj)


def ddlerp_grads(lib, g, c, step, low, up, W=None, mixes=None):
    """The backward of `ddlerp_mixes` from the mixes' gradients g (n tensors (N, D),
    contiguous) and its c: -> dx, dstep (N, D), dlow (N, n, R), dup (n, R, D), dmu (n, D).
    With W (np, D, D) and the forward's mixes (n, N, D), the last np of g are the projections'
    gradients gp_j (the mixes' gradients gp_j W_j, a block of rows at a time, never stored),
    and W's gradient (np, D, D) = gp_j^T mixes[n - np + j] is returned last."""
    (N, D), (n, R) = step.shape, low.shape[1:]
    _, bwd = _mix_kernels(lib, step.dtype)
    arr = (ctypes.c_void_p * n)(*[t.data_ptr() for t in g])
    upT = up.transpose(1, 2).contiguous()
    W = None if W is None else W.contiguous()
    np_ = 0 if W is None else W.shape[0]
    dx, dstep, dlow = torch.empty_like(step), torch.empty_like(step), low.new_empty(N, n, R)
    parts = native.rows(N)
    dup, dmu = up.new_empty(len(parts), n, R, D), up.new_empty(len(parts), n, D)
    dW = None if W is None else W.new_empty(len(parts), *W.shape)
    P = native.ptr
    native.run(bwd, [(ctypes.cast(arr, ctypes.c_void_p), P(c), P(step), P(low), P(upT), P(W),
                      P(mixes), None if W is None else P(dW[i]), P(dx), P(dstep), P(dlow),
                      P(dup[i]), P(dmu[i]), np_, n, N, D, R, r0, r1)
                     for i, (r0, r1) in enumerate(parts)])
    grads = dx, dstep, dlow, dup.sum(0), dmu.sum(0)
    return grads if W is None else (*grads, dW.sum(0))


class _Shift(first_order.Function):
    @staticmethod
    def forward(ctx, lib, x, x_last, mu):
        orig = (x, x_last, mu)  # for `twice`
        x, x_last, mu = x.contiguous(), x_last.contiguous(), mu.contiguous()
        B, T, D = x.shape
        P, L = ctypes.c_void_p, ctypes.c_long
        fwd = native.kernel(lib, "shift_fwd", x.dtype, [P] * 5 + [L] * 4)
        step, xx = torch.empty_like(x), torch.empty_like(x)
        native.run(fwd, [(native.ptr(x), native.ptr(x_last), native.ptr(mu), native.ptr(step),
                          native.ptr(xx), T, D, b0, b1) for b0, b1 in native.rows(B)])
        ctx.save_for_backward(step, mu, *orig)
        ctx.lib = lib
        return step, xx

    @staticmethod
    def twice(ctx, gstep, gxx):
        return (None, *first_order.replay(_torch_shift, ctx.saved_tensors[2:], (gstep, gxx),
                                     ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, gstep, gxx):
        step, mu = ctx.saved_tensors[:2]
        B, T, D = step.shape
        gstep = torch.zeros_like(step) if gstep is None else gstep.contiguous()
        gxx = torch.zeros_like(step) if gxx is None else gxx.contiguous()
        P, L = ctypes.c_void_p, ctypes.c_long
        bwd = native.kernel(ctx.lib, "shift_bwd", step.dtype, [P] * 7 + [L] * 4)
        dx, dx_last = torch.empty_like(step), step.new_empty(B, D)
        parts = native.rows(B)
        dmu = step.new_empty(len(parts), D)
        native.run(bwd, [(native.ptr(gstep), native.ptr(gxx), native.ptr(step), native.ptr(mu),
                          native.ptr(dx), native.ptr(dx_last), native.ptr(dmu[i]), T, D, b0, b1)
                         for i, (b0, b1) in enumerate(parts)])
        return None, dx, dx_last, dmu.sum(0)


def shift_mix(lib, x, x_last, mu):
    """RWKV-6's token shift and first mix: x (B, T, D), x_last (B, D) (the input before x),
    mu (D,) -> step = x_{t-1} - x_t and x + step o mu, each (B, T, D); differentiable in x,
    x_last and mu."""
    return _Shift.apply(lib, x, x_last, mu)


def token_mix(lib, x, step, mu):
    """The n mixes x + mu_m o step, m = 0..n-1, as a tuple; `lib` = load()."""
    return _TokenMix.apply(lib, x, step, mu)


class _Bonus(first_order.Function):
    @staticmethod
    def forward(ctx, lib, x, nw, nb, eps, r, k, v, g, rk):
        orig = (x, nw, nb, r, k, v, g, rk)  # for `twice`
        x, nw, nb, r, k, v, g, rk = (t.contiguous() for t in (x, nw, nb, r, k, v, g, rk))
        N, H, K = r.shape
        V = v.shape[-1]
        P, L = ctypes.c_void_p, ctypes.c_long
        F = ctypes.c_double if x.dtype == torch.float64 else ctypes.c_float
        fwd = native.kernel(lib, "bonus_fwd", x.dtype, [P] * 9 + [F] + [L] * 5)
        y = torch.empty_like(v)
        P = native.ptr
        native.run(fwd, [(P(x), P(nw), P(nb), P(r), P(k), P(v), P(g), P(rk), P(y), eps, H, K, V,
                          r0, r1) for r0, r1 in native.rows(N)])
        ctx.save_for_backward(x, nw, nb, r, k, v, g, rk, *orig)
        ctx.lib, ctx.eps = lib, eps
        return y

    @staticmethod
    def twice(ctx, dy):
        x, nw, nb, r, k, v, g, rk = ctx.saved_tensors[8:]
        return (None, *first_order.replay(_torch_bonus, (x, nw, nb, ctx.eps, r, k, v, g, rk), (dy,),
                                     ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, dy):
        x, nw, nb, r, k, v, g, rk = ctx.saved_tensors[:8]
        N, H, K = r.shape
        V = v.shape[-1]
        dy = dy.contiguous()
        P, L = ctypes.c_void_p, ctypes.c_long
        F = ctypes.c_double if x.dtype == torch.float64 else ctypes.c_float
        bwd = native.kernel(ctx.lib, "bonus_bwd", x.dtype, [P] * 17 + [F] + [L] * 5)
        dx, dr, dk, dv, dg = (torch.empty_like(t) for t in (x, r, k, v, g))
        parts = native.rows(N)
        drk, dnw, dnb = (t.new_empty(len(parts), *t.shape) for t in (rk, nw, nb))
        P = native.ptr
        native.run(bwd, [(P(dy), P(x), P(nw), P(nb), P(r), P(k), P(v), P(g), P(rk), P(dx), P(dr),
                          P(dk), P(dv), P(dg), P(drk[i]), P(dnw[i]), P(dnb[i]), ctx.eps, H, K, V,
                          r0, r1) for i, (r0, r1) in enumerate(parts)])
        return None, dx, dnw.sum(0), dnb.sum(0), None, dr, dk, dv, dg, drk.sum(0)


def bonus_gate(lib, x, nw, nb, eps, r, k, v, g, rk):
    """RWKV-7's (GroupNorm_H(x) + (sum_i r_i k_i rk_i) v) o g per token and head: x, v, g
    (N, H, V); nw, nb (H, V) the norm's weight and bias, eps its epsilon; r, k (N, H, K);
    rk (H, K); one dtype on the CPU -> (N, H, V), differentiable in all tensors
    (token_mix.c's bonus_fwd / bonus_bwd: one pass each way where torch's group norm and
    the elementwise form take ~7 passes forward and ~14 backward)."""
    return _Bonus.apply(lib, x, nw, nb, float(eps), r, k, v, g, rk)


class _Keys(first_order.Function):
    @staticmethod
    def forward(ctx, lib, k, ap, wp, kk, ka, wc, eps, H):
        orig = (k, ap, wp, kk, ka)  # for `twice`
        k, ap, wp, kk, ka = (t.contiguous() for t in (k, ap, wp, kk, ka))
        N, D = k.shape
        P, L = ctypes.c_void_p, ctypes.c_long
        F = ctypes.c_double if k.dtype == torch.float64 else ctypes.c_float
        fwd = native.kernel(lib, "keys_fwd", k.dtype, [P] * 9 + [F] * 2 + [L] * 4)
        w, kt, nk, b = (torch.empty_like(k) for _ in range(4))
        P = native.ptr
        native.run(fwd, [(P(k), P(ap), P(wp), P(kk), P(ka), P(w), P(kt), P(nk), P(b), wc, eps,
                          H, D // H, r0, r1) for r0, r1 in native.rows(N)])
        ctx.save_for_backward(k, ap, wp, kk, ka, *orig)
        ctx.lib, ctx.wc, ctx.eps, ctx.H = lib, wc, eps, H
        return w, kt, nk, b

    @staticmethod
    def twice(ctx, dw, dkt, dnk, db):
        return (None, *first_order.replay(_torch_keys, (*ctx.saved_tensors[5:], ctx.wc, ctx.eps, ctx.H),
                                     (dw, dkt, dnk, db), ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, dw, dkt, dnk, db):
        k, ap, wp, kk, ka = ctx.saved_tensors[:5]
        N, D = k.shape
        dw, dkt, dnk, db = (torch.zeros_like(k) if t is None else t.contiguous()
                            for t in (dw, dkt, dnk, db))
        P, L = ctypes.c_void_p, ctypes.c_long
        F = ctypes.c_double if k.dtype == torch.float64 else ctypes.c_float
        bwd = native.kernel(ctx.lib, "keys_bwd", k.dtype, [P] * 14 + [F] * 2 + [L] * 4)
        dk, dap, dwp = (torch.empty_like(k) for _ in range(3))
        parts = native.rows(N)
        dkk, dka = k.new_empty(len(parts), D), k.new_empty(len(parts), D)
        P = native.ptr
        native.run(bwd, [(P(dw), P(dkt), P(dnk), P(db), P(k), P(ap), P(wp), P(kk), P(ka), P(dk),
                          P(dap), P(dwp), P(dkk[i]), P(dka[i]), ctx.wc, ctx.eps, ctx.H, D // ctx.H,
                          r0, r1) for i, (r0, r1) in enumerate(parts)])
        return None, dk, dap, dwp, dkk.sum(0), dka.sum(0), None, None, None


def rwkv7_keys(lib, k, ap, wp, kk, ka, wc, eps, H):
    """RWKV-7's keys per token and head in one C pass each way (token_mix.c keys_fwd /
    keys_bwd): k, ap, wp (N, H K) (the key, the learning rate's and the decay's
    pre-sigmoids), kk, ka (H K,) -> (w = wc sigmoid(wp), k o (1 - ka + a ka), nk =
    normalize(-k o kk) per head (floor eps), -nk o a), each (N, H K), with a = sigmoid(ap);
    differentiable in k, ap, wp, kk, ka. Replaces ~12 torch passes forward, ~25 backward."""
    return _Keys.apply(lib, k, ap, wp, kk, ka, float(wc), float(eps), H)


class _Pointwise(first_order.Transformable):
    """y = f(x) by the kernel `name`; backward dy f'(x) from y alone: tanh's ATen
    tanh_backward (dy (1 - y^2), differentiable again), -exp's dy y."""

    @staticmethod
    def forward(ctx, lib, name, x):
        x = x.contiguous()
        y = torch.empty_like(x)
        native.elementwise(lib, name, x, y)
        ctx.save_for_backward(y)
        ctx.name = name
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        dx = torch.ops.aten.tanh_backward(dy, y) if ctx.name == "tanh_fwd" else dy * y
        return None, None, dx


def tanh(lib, x):
    """tanh(x) elementwise in C (token_mix.c tanh_fwd: exp.h's tanh, about an ulp relative),
    any shape; backward dy (1 - y^2) (ATen's tanh_backward, twice differentiable). ATen's
    float32 tanh costs ~3.5 ms on (8192, 160) at 1 thread, this ~0.8."""
    return _Pointwise.apply(lib, "tanh_fwd", x)


def negexp(lib, x):
    """-exp(x) elementwise in C (token_mix.c negexp_fwd, exp.h: -inf past the largest finite
    exp; the smallest normal where torch gives a subnormal or 0), any shape; backward dy y.
    (8192, 128) at 1 thread: torch.exp(x).neg_() ~1.0 ms, this ~0.3."""
    return _Pointwise.apply(lib, "negexp_fwd", x)
