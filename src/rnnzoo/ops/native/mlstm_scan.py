"""The stabilised mLSTM recurrence on the CPU: its memory C is Mamba-2's SSD
(`ops.native.ssd_scan`, log-decay g_t = log f_t and key i_t k_t), and one C pass a step
(mlstm_scan.c) gives the max-stabiliser m, those g_t and i_t k_t, the normaliser n with
s_t = q_t . n_t, and q_t / den_t with den_t = max(|s_t|, exp(-m_t)) + eps, the query the SSD
reads (h_t = C_t^T q_t / den_t: the division rides on q, no (B, T, H, V) pass). Both C passes
carry their exact backward (the max-stabiliser's included, as autograd's through
`ops.chunk.linear.mlstm_recurrent`), so state gradients (C, n, m) pass both ways.

q (already scaled), k: (B, T, H, K); v: (B, T, H, V); log_i, log_f: (B, T, H); the state
(C (B, H, K, V), n (B, H, K), m (B, H)); all one dtype (float32 or float64) on the CPU
(`ops.backend.use_native`). Returns h (B, T, H, V) and (C, n, m) at T, differentiable in
everything. Threads split the (batch row, head) pairs.
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import first_order, native
from rnnzoo.ops.native import blockdiag, ssd_scan


def load():
    """mlstm_scan.c's library, None unless ssd_scan.c's builds too."""
    lib = native.load("mlstm_scan")
    return lib if lib is not None and ssd_scan.load() is not None else None


def _kernels(lib, dtype):
    P, L, D = ctypes.c_void_p, ctypes.c_long, ctypes.c_double
    return (native.kernel(lib, "mlstm_gates_fwd", dtype, [P] * 13 + [D] + [L] * 5),
            native.kernel(lib, "mlstm_gates_bwd", dtype, [P] * 20 + [D] + [L] * 5))


class _Gates(first_order.Function):
    """(q, k, li, lf, n0, m0) -> (g, kp, qs, n_T, m_T), the names of mlstm_scan.c."""

    @staticmethod
    def forward(ctx, lib, q, k, li, lf, n0, m0, eps, plain):
        orig = (q, k, li, lf, n0, m0)  # for `twice` (the copies have no autograd history)
        q, k, li, lf, n0, m0 = (t.contiguous() for t in (q, k, li, lf, n0, m0))
        B, T, H, K = q.shape
        g, m, s = (torch.empty_like(li) for _ in range(3))
        kp, qs = torch.empty_like(k), torch.empty_like(q)
        nT, mT = torch.empty_like(n0), torch.empty_like(m0)
        fwd, _ = _kernels(lib, q.dtype)
        native.run(fwd, [tuple(native.ptr(t) for t in (q, k, li, lf, n0, m0, g, kp, qs, m, s, nT, mT))
                         + (eps, T, H, K, *p) for p in native.rows(B * H)])
        ctx.save_for_backward(q, k, li, lf, n0, m0, g, m, s, *orig)
        ctx.lib, ctx.eps, ctx.plain = lib, eps, plain
        return g, kp, qs, nT, mT

    @staticmethod
    def twice(ctx, dg, dkp, dqs, dnT, dmT):
        return (None, *first_order.replay(_needs(ctx.plain, "_Gates"),
                                          (*ctx.saved_tensors[9:], ctx.eps),
                                          (dg, dkp, dqs, dnT, dmT), ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, dg, dkp, dqs, dnT, dmT):
        q, k, li, lf, n0, m0, g, m, s = ctx.saved_tensors[:9]
        B, T, H, K = q.shape
        dg, dkp, dqs, dnT, dmT = (t.contiguous() for t in (dg, dkp, dqs, dnT, dmT))
        dq, dk = torch.empty_like(q), torch.empty_like(k)
        dli, dlf, dn0, dm0 = (torch.empty_like(t) for t in (li, lf, n0, m0))
        _, bwd = _kernels(ctx.lib, q.dtype)
        native.run(bwd, [tuple(native.ptr(t) for t in (q, k, li, lf, n0, m0, g, m, s, dg, dkp, dqs,
                                                       dnT, dmT, dq, dk, dli, dlf, dn0, dm0))
                         + (ctx.eps, T, H, K, *p) for p in native.rows(B * H)])
        return None, dq, dk, dli, dlf, dn0, dm0, None, None


def _needs(plain, node):
    first_order.plain_given(plain, node)
    return plain


def _qk_plain(gates, x, Wq, Wk, Gc, gm, n0, m0, eps, exp_gate):
    """_QKGates's outputs in PyTorch (blockdiag's products, the gates' pre-activations, then
    `gates`: the gates pass's plain form, ops.chunk.linear's loop): the form its `twice`
    differentiates (total: None, not differentiable)."""
    H = n0.shape[1]
    q, k = (blockdiag._torch_blockdiag(x, W).unflatten(-1, (H, -1)) for W in (Wq, Wk))
    li, f = (x @ Gc.t() + gm).split(H, -1)
    lf = f if exp_gate else torch.nn.functional.logsigmoid(f)
    return (*gates(q, k, li, lf, n0, m0, eps), None, x.view_as(x))


def _qk_kernels(lib, dtype):
    P, L, D = ctypes.c_void_p, ctypes.c_long, ctypes.c_double
    return (native.kernel(lib, "mlstm_qk_fwd", dtype, [P] * 17 + [D] + [L] * 9),
            native.kernel(lib, "mlstm_qk_bwd", dtype, [P] * 25 + [D] + [L] * 2))


# steps a block of mlstm_qk_fwd / _bwd (the forward keeps n at each block's start)
QK_BLOCK = 16


class _QKGates(first_order.Function):
    """(x, Wq, Wk, Gc, gm, n0, m0) -> (g, kp, qs, n_T, m_T, total, x'): mlstm_scan.c's
    mlstm_qk_fwd / _bwd (total, one entry per thread's rows, not differentiable; x' is x, a
    view, for the caller's other uses: its gradient is added to x's in the backward's pass)."""

    @staticmethod
    def forward(ctx, lib, x, Wq, Wk, Gc, gm, n0, m0, eps, exp_gate, plain):
        orig = (x, Wq, Wk, Gc, gm, n0, m0)  # for `twice`
        x2 = blockdiag._rows(x)
        Wq, Wk, Gc, gm, n0, m0 = (t.contiguous() for t in (Wq, Wk, Gc, gm, n0, m0))
        B, T, dim = x.shape
        H = n0.shape[1]
        K, bs = dim // H, Wq.shape[-1]
        aux = gm.new_empty(B, T, 3 * H)  # [log i~ | log f | sigmoid(-f~)], for the backward
        g, m, s = (x.new_empty(B, T, H) for _ in range(3))
        kp, qs = (x.new_empty(B, T, H, K) for _ in range(2))
        nT, mT = torch.empty_like(n0), torch.empty_like(m0)
        nck = x.new_empty(B, -(-T // QK_BLOCK), dim)
        parts = native.rows(B)
        total = x.new_zeros(max(1, len(parts)))
        fwd, _ = _qk_kernels(lib, x.dtype)
        native.run(fwd, [tuple(native.ptr(t) for t in (x2, Wq, Wk, Gc, gm, n0, m0, aux, g, kp, qs,
                                                       m, s, nT, mT, nck, total[i]))
                         + (eps, int(exp_gate), x2.stride(0), bs, QK_BLOCK, T, H, K, *p)
                         for i, p in enumerate(parts)])
        ctx.save_for_backward(x2, Wq, Wk, Gc, aux, n0, m0, nck, g, m, s, *orig)
        ctx.lib, ctx.eps, ctx.exp_gate, ctx.shape = lib, eps, exp_gate, x.shape
        ctx.plain = plain
        ctx.mark_non_differentiable(total)
        ctx.set_materialize_grads(False)
        return g, kp, qs, nT, mT, total, x.view_as(x)

    @staticmethod
    def twice(ctx, dg, dkp, dqs, dnT, dmT, _, dthrough):
        gates = _needs(ctx.plain, "_QKGates")
        return (None, *first_order.replay(
            lambda *a: _qk_plain(gates, *a), (*ctx.saved_tensors[11:], ctx.eps, ctx.exp_gate),
            (dg, dkp, dqs, dnT, dmT, None, dthrough), ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, dg, dkp, dqs, dnT, dmT, _, dthrough):
        x2, Wq, Wk, Gc, aux, n0, m0, nck, g, m, s = ctx.saved_tensors[:11]
        B, T, dim = ctx.shape
        H = n0.shape[1]
        K, bs = dim // H, Wq.shape[-1]
        dg, dkp, dqs = ((torch.zeros_like(r) if d is None else d.contiguous())
                        for d, r in ((dg, g), (dkp, x2.new_empty(B, T, H, K)),
                                     (dqs, x2.new_empty(B, T, H, K))))
        dnT, dmT, dx0 = (None if d is None else d.contiguous() for d in (dnT, dmT, dthrough))
        parts = native.rows(B)
        dx, dpre = x2.new_empty(B, T, dim), x2.new_empty(B, T, 2 * H)
        dn0, dm0 = torch.empty_like(n0), torch.empty_like(m0)
        dWq, dWk, dGc = (w.new_empty(len(parts), *w.shape) for w in (Wq, Wk, Gc))
        _, bwd = _qk_kernels(ctx.lib, x2.dtype)
        # the sizes in one int64 array: 27 integer-class arguments, within team.c's 32
        z = torch.tensor([int(ctx.exp_gate), x2.stride(0), bs, QK_BLOCK, T, H, K],
                         dtype=torch.int64)
        native.run(bwd, [tuple(native.ptr(t) for t in (x2, Wq, Wk, Gc, aux, n0, m0, nck, g, m, s,
                                                       dg, dkp, dqs, dnT, dmT, dx0, dx, dWq[i],
                                                       dWk[i], dGc[i], dpre, dn0, dm0, z))
                         + (ctx.eps, *p)
                         for i, p in enumerate(parts)])
        return (None, dx, dWq.sum(0), dWk.sum(0), dGc.sum(0), dpre, dn0, dm0, None, None, None)


def qk_gates(lib, x, Wq, Wk, Gc, gm, v, state, exp_gate, eps=1e-6, check=None, plain=None):
    """mLSTM from the layer's conv output (layers.mlstm, chunk mode): q = x BDq^T (its
    1/sqrt(K) in Wq), k = x BDk^T, the gates [log i~ | f~] = x Gc^T + gm, log f = log
    sigmoid(f~) (f~ itself when exp_gate), then `mlstm`'s recurrence, with q and k never
    written (mlstm_qk_fwd / _bwd: blockdiag.c's gated rows and mlstm_gates' pass in one).

    x (B, T, H K) (rows may be strided); Wq, Wk (H K / bs, bs, bs); Gc (2 H, H K); gm
    (B, T, 2 H); v (B, T, H, V); state (C0, n0, m0); `lib` = load(); all one dtype.
    -> (h, (C, n, m), x') (x' is x, a view, for the caller's other uses of x: their gradient
    is added inside the backward's pass), or None when some of q, k, the gates or `check` (a
    0-dim sum of the caller's other inputs) is not finite: the caller then takes the checked
    path (ops.chunk.linear.mlstm, which marks non-finite steps). plain: as `mlstm`'s."""
    C0, n0, m0 = state
    gates, memory = plain or (None, None)
    g, kp, qs, nT, mT, total, xt = _QKGates.apply(lib, x, Wq, Wk, Gc, gm, n0, m0, eps, exp_gate,
                                                  gates)
    with torch.no_grad():
        t = total.sum() + gm.sum()
        if not bool(torch.isfinite(t if check is None else t + check)):
            return None
    h, CT = ssd_scan.ssd(ssd_scan.load(), qs, kp, v, g, C0, None, memory)
    return h, (CT, nT, mT), xt


def mlstm(lib, q, k, v, log_i, log_f, state, eps, plain=None):
    """(h, (C, n, m)); `lib` = load(); state = (C0, n0, m0). plain: (the gates pass in
    PyTorch (q, k, log_i, log_f, n0, m0, eps) -> (g, kp, qs, n_T, m_T), ssd_scan.ssd's plain
    form), ops.chunk.linear's loops, which the nodes' `twice` differentiate (None:
    create_graph=True through them raises)."""
    C0, n0, m0 = state
    gates, memory = plain or (None, None)
    g, kp, qs, nT, mT = _Gates.apply(lib, q, k, log_i, log_f, n0, m0, eps, gates)
    h, CT = ssd_scan.ssd(ssd_scan.load(), qs, kp, v, g, C0, None, memory)
    return h, (CT, nT, mT)
