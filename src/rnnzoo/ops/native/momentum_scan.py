"""The momentum delta rule (ops.momentum_delta) as its recurrence in C (momentum_scan.c),
forward and backward: the (K, V) states S and M of one (batch row, head) in cache, one pass
over them a step forward, rebuilt backward from every 64th step. The chunk form runs (C, C)
products, two solves and a (2K, 2K) map per chunk, more than the recurrence's O(T K V) work
costs on a CPU.

    e_t = S_{t-1}^T p_t - v_t,  M_t = exp(lm_t) M_{t-1} + eta_t k_t e_t^T,
    S_t = exp(la_t) S_{t-1} - beta_t M_t,   o_t = scale S_t^T q_t

q, k, p: (B, T, H, K); v: (B, T, H, V); la, lm, beta, eta: (B, T, H); S0, M0: (B, H, K, V);
all one dtype (float32 or float64) on the CPU (`ops.backend.use_native`;
ops.momentum_delta.momentum_delta calls it there). Returns o (B, T, H, V), S_T and M_T,
differentiable in all ten. Threads split the (batch row, head) pairs. The caller handles
non-finite inputs (ops.finite); `momentum`'s osum, the sum of each pair's outputs, lets it
check q, k, v and p without a pass over them.

`gates`: Momentum DeltaNet's gates (log_alpha, log_mu, beta, eta) from its gate projection,
one C pass each way (momentum_scan.c's momentum_gates_fwd / _bwd; threads split the rows).
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import first_order, flop_count, native

CK = 64  # the C file's checkpoint interval


def flops(pairs: int, tokens: int, K: int, V: int) -> tuple[int, int]:
    """(forward, backward) FLOPs of momentum_fwd / momentum_bwd over `pairs` (batch, head)
    pairs of `tokens` steps, 2 a multiply-add (as the counter books a product), per entry of
    the (K, V) states; the products only (rank-one terms, reads, row sums and dot products),
    not the scalings alpha S, beta M, mu M. Forward a step: eta k e^T, the read S^T q and the
    next step's error S^T p (3), and e_0 = S_0^T p_0 once. Backward a step: the rebuild's
    k e^T (1); D's p de^T and q do^T, the row sums of dq, dp (the step after's) and dk, the
    dot products of dbeta, dla and dlm, and de = E^T k (9); a checkpoint block's first step
    its own dp and p de^T (2). Booked while counting (ops.flop_count: Momentum DeltaNet takes
    this path there, as the CPU timing does)."""
    kv = pairs * K * V
    return 2 * kv * (3 * tokens + (tokens > 0)), 2 * kv * (10 * tokens + 2 * -(-tokens // CK))


def load():
    return native.load("momentum_scan")


def _kernels(lib, dtype):
    P, L = ctypes.c_void_p, ctypes.c_long
    F = ctypes.c_double if dtype == torch.float64 else ctypes.c_float
    return (native.kernel(lib, "momentum_fwd", dtype, [P] * 17 + [F] + [L] * 6),
            native.kernel(lib, "momentum_bwd", dtype, [P] * 24 + [F] + [L] * 7))


class _NativeMomentum(first_order.Function):
    @staticmethod
    def forward(ctx, lib, q, k, v, p, la, lm, beta, eta, S0, M0, scale, corr, osum=None,
                plain=None):
        pk = p is k  # one tensor: the kernel sums its two gradients
        orig = (q, k, v, p, la, lm, beta, eta, S0, M0, corr)  # for `twice` (no copies)
        q, k, v, la, lm, beta, eta, S0, M0 = (
            t.contiguous() for t in (q, k, v, la, lm, beta, eta, S0, M0))
        p = k if pk else p.contiguous()
        corr = None if corr is None else corr.contiguous()
        B, Tn, H, K = q.shape
        V = v.shape[-1]
        fwd, _ = _kernels(lib, q.dtype)
        o, e = torch.empty_like(v), torch.empty_like(v)
        ST, MT = torch.empty_like(S0), torch.empty_like(M0)
        grad = any(ctx.needs_input_grad)
        ck = q.new_empty(B, H, -(-Tn // CK), 2 * K * native.tile_pad(V)) if grad else None
        ins = [native.ptr(t) for t in (q, k, v, p, la, lm, beta, eta, S0, M0)]
        outs = [native.ptr(t) for t in (o, e, ST, MT, ck, corr, osum)]
        native.run(fwd, [(*ins, *outs, scale, Tn, H, K, V, p0, p1)
                         for p0, p1 in native.rows(B * H)])
        flop_count.add(flops(B * H, Tn, K, V)[0])
        if grad:
            ctx.save_for_backward(q, k, p, la, lm, beta, eta, e, ck, corr, *orig)
        ctx.lib, ctx.scale, ctx.V, ctx.pk, ctx.plain = lib, scale, V, pk, plain
        return o, ST, MT

    @staticmethod
    def twice(ctx, do, dST, dMT):  # under create_graph: autograd through the caller's plain form
        plain, need = ctx.plain, ctx.needs_input_grad
        need = (*need[1:11], need[12])  # q .. M0, corr
        if ctx.pk and plain:  # p is k: k's gradient holds both uses, p's slot none (as backward's)
            def plain(q, k, v, p, *rest, fn=ctx.plain):
                return fn(q, k, v, k, *rest)
            need = (*need[:3], False, *need[4:])
        g = first_order.replay(plain, ctx.saved_tensors[10:], (do, dST, dMT), need)
        return (None, *g[:10], None, g[10], None, None)

    @staticmethod
    def backward(ctx, do, dST, dMT):
        q, k, p, la, lm, beta, eta, e, ck, corr = ctx.saved_tensors[:10]
        B, Tn, H, K = q.shape
        V = ctx.V
        _, bwd = _kernels(ctx.lib, q.dtype)
        do = e.new_zeros(B, Tn, H, V) if do is None else do.contiguous()
        dST, dMT = (None if t is None else t.contiguous() for t in (dST, dMT))
        dq, dk, dp = (torch.empty_like(t) for t in (q, k, p))
        dv = torch.empty_like(e)
        dla, dlm, dbeta, deta = (torch.empty_like(t) for t in (la, lm, beta, eta))
        dS0, dM0 = q.new_empty(B, H, K, V), q.new_empty(B, H, K, V)
        dcorr = None if corr is None else q.new_empty(B, H)
        args = [native.ptr(t) for t in (q, k, p, la, lm, beta, eta, e, ck, dST, dMT, do, dq, dk,
                                        dv, dp, dla, dlm, dbeta, deta, dS0, dM0, corr, dcorr)]
        native.run(bwd, [(*args, ctx.scale, Tn, H, K, V, int(ctx.pk), p0, p1)
                         for p0, p1 in native.rows(B * H)])
        flop_count.add(flops(B * H, Tn, K, V)[1])
        return (None, dq, dk, dv, None if ctx.pk else dp, dla, dlm, dbeta, deta, dS0, dM0, None,
                None if dcorr is None else dcorr.sum(0), None, None)


def momentum(lib, q, k, v, p, la, lm, beta, eta, S0, M0, scale, corr=None, osum=None,
             plain=None):
    """(o (B, T, H, V), S_T, M_T (B, H, K, V)); `lib` = load(). corr (H,) or None: the read
    at q - corr k (Momentum DeltaNet's output correction) instead of q, in the kernel (no
    (B, T, H, K) pass each way for it). p may be k itself (Momentum DeltaNet): its two
    gradients are then summed in the kernel. osum (B H,) contiguous, in q's dtype, or None:
    written with the sum of each (batch row, head) pair's outputs o[b, :, h, :], not finite
    when some entry of o is not (a non-finite entry of q, k, v or p at a step makes that
    step's o non-finite: the kernel's products never drop one). plain(q, k, v, p, la, lm,
    beta, eta, S0, M0, corr) -> (o, S_T, M_T): the same op in PyTorch (ops.momentum_delta's
    chunk form), which the node's `twice` differentiates under create_graph (None: it
    raises there)."""
    return _NativeMomentum.apply(lib, q, k, v, p, la, lm, beta, eta, S0, M0, scale, corr, osum,
                                 plain)


def _gate_kernels(lib, dtype):
    P, L = ctypes.c_void_p, ctypes.c_long
    F = ctypes.c_double if dtype == torch.float64 else ctypes.c_float
    return (native.kernel(lib, "momentum_gates_fwd", dtype, [P] * 10 + [F] * 2 + [L] * 4),
            native.kernel(lib, "momentum_gates_bwd", dtype, [P] * 12 + [F] * 2 + [L] * 4))


def _torch_gates(g, A_log, Mu_log, dt_bias, mu_bias, log_factor, tau, neg, floor):
    """gates in PyTorch (layers.momentum_deltanet's _gates, with gates's forms of the angle):
    the form _NativeGates's `twice` differentiates."""
    a, b, m, e = g.chunk(4, -1)
    eta = torch.tanh(e / tau) + 1
    u2 = (eta * log_factor.exp()).square()
    beta = u2 / (1 + u2) * torch.sigmoid(b) * (2 if neg else 1)
    log_alpha = -torch.log1p(u2) - A_log.exp() * torch.nn.functional.softplus(a + dt_bias)
    log_mu = (-Mu_log.exp() * torch.nn.functional.softplus(m + mu_bias)).clamp(min=floor)
    return log_alpha, log_mu, beta, eta


class _NativeGates(first_order.Function):
    @staticmethod
    def forward(ctx, lib, g, A_log, Mu_log, dt_bias, mu_bias, log_factor, tau, neg, floor):
        orig = (g, A_log, Mu_log, dt_bias, mu_bias, log_factor)  # for `twice`
        g = g.contiguous()
        params = [t.contiguous() for t in (A_log, Mu_log, dt_bias, mu_bias, log_factor)]
        B, Tn, H4 = g.shape
        H = H4 // 4
        la, lm, beta, eta = (g.new_empty(B, Tn, H) for _ in range(4))
        fwd, _ = _gate_kernels(lib, g.dtype)
        args = [native.ptr(t) for t in (g, *params, la, lm, beta, eta)]
        native.run(fwd, [(*args, tau, floor, H, int(neg), r0, r1)
                         for r0, r1 in native.rows(B * Tn)])
        ctx.save_for_backward(g, *params, *orig)
        ctx.lib, ctx.tau, ctx.neg, ctx.floor = lib, tau, neg, floor
        return la, lm, beta, eta

    @staticmethod
    def twice(ctx, dla, dlm, dbeta, deta):
        return (None, *first_order.replay(_torch_gates, (*ctx.saved_tensors[6:], ctx.tau, ctx.neg,
                                                    ctx.floor), (dla, dlm, dbeta, deta),
                                     ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, dla, dlm, dbeta, deta):
        g, *params = ctx.saved_tensors[:6]
        B, Tn, H4 = g.shape
        H = H4 // 4
        _, bwd = _gate_kernels(ctx.lib, g.dtype)
        grads = [None if t is None else t.contiguous() for t in (dla, dlm, dbeta, deta)]
        dg = torch.empty_like(g)
        ranges = native.rows(B * Tn)
        dpar = g.new_empty(len(ranges), 5, H)
        args = [native.ptr(t) for t in (g, *params, *grads, dg)]
        native.run(bwd, [(*args, native.ptr(dpar[i]), ctx.tau, ctx.floor, H, int(ctx.neg), r0,
                          r1) for i, (r0, r1) in enumerate(ranges)])
        dpar = dpar.sum(0) if len(ranges) > 1 else dpar[0]
        return (None, dg, *dpar.unbind(0), None, None, None)


def gates(lib, g, A_log, Mu_log, dt_bias, mu_bias, log_factor, tau, neg=False, floor=None):
    """Momentum DeltaNet's gates (layers/momentum_deltanet.py) in one C pass each way:
    (log_alpha, log_mu, beta, eta), each (B, T, H), from g (B, T, 4H) = W_{a,b,m,e} x (a, b,
    m, e the four column blocks of H) and the per-head parameters (H,) A_log, Mu_log,
    dt_bias, mu_bias, log_factor; tau the eta temperature, neg: beta doubled
    (allow_neg_eigval), floor: log_mu's minimum (None: none). `lib` = load(); all one dtype
    (float32 or float64) on the CPU. Differentiable in g and the five parameters. It forms
    2 log cos(atan u) as -log1p(u^2) and sin^2(atan u) as u^2 / (1 + u^2) (u = eta
    exp(log_factor)): the same functions, without the angle."""
    floor = -float("inf") if floor is None else floor
    return _NativeGates.apply(lib, g, A_log, Mu_log, dt_bias, mu_bias, log_factor, tau, neg,
                              floor)
