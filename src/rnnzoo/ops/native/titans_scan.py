"""Titans' linear weight-only memory in its chunk form (ops.memory._titans_linear_chunks) in C
(titans_scan.c), forward and backward: the chunk loop and every read of a chunk, one
(batch row, head) pair at a time with its (K, K) memory M and surprise S in cache, instead of
batches of small (C, K) x (K, K) products over all chunks and their stacked states.

    G = k (P + W0) + R,   o_t = q_t W0 + A_t q_t M + f_t q_t S - sum_{s<=t} att_ts G_s,
    M <- A_T M + f_T S - sum_s cl_s k_s G_s^T,   S <- E_T S - sum_s re_s k_s G_s^T

(P: the state's M' for the first chunk, the chunk's starting M after it; W0 the initial
memory, R = b_0 - v.) q, k, R (B, H, N, C, K); att (B, H, N, C, C) (read on and below its
diagonal only: its gradient is zero above); ga (A), gf (f), cl, re (B, H, N, C); gE (E_T)
(B, H, N); P0, M0, S0 (B, H, K, K); W0 (H, K, K); all one dtype (float32 or float64) on the
CPU (`ops.backend.use_native`). Returns o (B, H, N, C, K) and every chunk's starting (M, S),
Ms and Ss (B, H, N + 1, K, K) (the last the final state), differentiable in all thirteen
inputs. Threads split the (batch row, head) pairs.

Titans-MAC's aligned segments run as three autograd nodes each (layers.titans._mac_aligned):
mac_retrieve (the read of the segment's memory up to the attention's keys and values),
mac_attention (the attention at the x rows and the memory's input projection), mac_memory
(the short conv and titans_segment); each calls the kernels' Functions (gated_norm, linear,
attention, conv, this module's) forward and backward inside it through a `_Saved` ctx.
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import backend, first_order, flop_count, native


def flops(chunks: int, C: int, K: int) -> tuple[int, int]:
    """(forward, backward) FLOPs of the kernels over `chunks` (pair, chunk)s, 2 a
    multiply-add. Forward: G (C K^2), the reads q M, q S (2 C K^2) and att G (C (C+1) / 2 K),
    the update (2 C K^2). Backward: G again, the update's dG and gM G, gS G (4 C K^2), the
    reads' M do, S do, W0 do (3 C K^2), datt (C^2 K) and att^T do (C (C+1) / 2 K), the
    gradients of M, S, W0 (3 C K^2), dk and dP (2 C K^2), the update's scalars (3 K^2). The
    read through W0 (q W0) is one C K^2 more forward."""
    CKK, tri = C * K * K, C * (C + 1) // 2 * K
    return 2 * chunks * (6 * CKK + tri), 2 * chunks * (13 * CKK + C * C * K + tri + 3 * K * K)


def gate_flops(chunks: int, C: int, K: int) -> tuple[int, int]:
    """(forward, backward) FLOPs of the gate kernels over `chunks` (pair, chunk)s: q k^T
    (C^2 K) and the recurrence (2 C (C + 2)), backward q k^T again, dq and dk (C^2 K) and
    the recurrence run back (5 C (C + 2))."""
    rec = C * (C + 2)
    return 2 * chunks * (C * C * K + 2 * rec), 2 * chunks * (2 * C * C * K + 5 * rec)


def load():
    return native.load("titans_scan")


def _kernels(lib, dtype):
    P, L = ctypes.c_void_p, ctypes.c_long
    return (native.kernel(lib, "titans_fwd", dtype, [P] * 16 + [L] * 5),
            native.kernel(lib, "titans_bwd", dtype, [P] * 30 + [L] * 2),
            native.kernel(lib, "titans_gates_fwd", dtype, [P] * 12 + [L] * 5),
            native.kernel(lib, "titans_gates_bwd", dtype, [P] * 18 + [L] * 5))


class _NativeTitans(first_order.Function):
    @staticmethod
    def forward(ctx, lib, plain, q, k, R, att, ga, gf, cl, re, gE, P0, M0, S0, W0, tail):
        orig = (q, k, R, att, ga, gf, cl, re, gE, P0, M0, S0, W0)  # for `twice` (no copies)
        B, H, N, C, K = q.shape
        W0 = W0.expand(B, H, K, K)          # per pair (each writes its own dW0, summed after)
        ins = [t.contiguous() for t in (q, k, R, att, ga, gf, cl, re, gE, P0, M0, S0, W0)]
        fwd = _kernels(lib, q.dtype)[0]
        o = torch.empty_like(ins[0])
        Ms, Ss = (q.new_empty(B, H, N + 1, K, K) for _ in range(2))
        native.run(fwd, [(*map(native.ptr, ins), *map(native.ptr, (o, Ms, Ss)), N, C, K, p0, p1)
                         for p0, p1 in native.rows(B * H)])
        ctx.save_for_backward(*ins[:10], Ms, Ss, ins[12], *orig)
        ctx.lib, ctx.lo, ctx.plain, ctx.tail = lib, N + 1 - tail, plain, tail
        flop_count.add(flops(B * H * N, C, K)[0])
        if tail == N + 1:
            return o, Ms, Ss
        return o, Ms[:, :, ctx.lo:].clone(), Ss[:, :, ctx.lo:].clone()

    @staticmethod
    def twice(ctx, *douts):  # under create_graph: autograd through the PyTorch chunk loop
        first_order.plain_given(ctx.plain, "_NativeTitans")
        return (None, None, *first_order.replay(ctx.plain, (*ctx.saved_tensors[13:], ctx.tail),
                                                douts, ctx.needs_input_grad[2:]))

    @staticmethod
    def backward(ctx, do, dMs, dSs):
        *ins, Ms, Ss, W0 = ctx.saved_tensors[:13]
        q, P0 = ins[0], ins[9]
        B, H, N, C, K = q.shape
        bwd = _kernels(ctx.lib, q.dtype)[1]
        do = torch.zeros_like(q) if do is None else do.contiguous()
        dMs, dSs = (None if t is None else t.contiguous() for t in (dMs, dSs))
        grads = [torch.empty_like(t) for t in ins[:9]]
        dP0 = torch.zeros_like(P0)
        dM0, dS0, dW0 = (torch.empty_like(P0) for _ in range(3))
        args = [native.ptr(t) for t in (*ins, Ms, Ss, W0, do, dMs, dSs, *grads, dP0, dM0, dS0,
                                        dW0)]
        # the sizes in one long array: 32 integer arguments, so run() gives the ranges to
        # torch's OpenMP team (team.c passes at most 32)
        sizes = (ctypes.c_long * 4)(N, ctx.lo, C, K)
        native.run(bwd, [(*args, sizes, p0, p1) for p0, p1 in native.rows(B * H)])
        flop_count.add(flops(B * H * N, C, K)[1])
        return None, None, *grads, dP0, dM0, dS0, dW0.sum(0), None


def titans_linear(lib, q, k, R, att, ga, gf, cl, re, gE, P0, M0, S0, W0, tail=None, plain=None):
    """(o, Ms, Ss) as the module docstring says; `lib` = load(). `tail`: Ms, Ss hold only
    the last `tail` states (a caller that reads only those: no gradient of the whole size
    for the others, nor a pass over it). plain: the same function of (q, ..., W0, tail) in
    PyTorch (ops.memory's), which the node's `twice` differentiates (None: first order
    only)."""
    tail = q.shape[2] + 1 if tail is None else tail
    return _NativeTitans.apply(lib, plain, q, k, R, att, ga, gf, cl, re, gE, P0, M0, S0, W0,
                               tail)


class _NativeGates(first_order.Function):
    @staticmethod
    def forward(ctx, lib, plain, q, k, a, e, m, th):
        orig = (q, k, a, e, m, th)  # for `twice` (copies carry no history)
        ins = [t.contiguous() for t in orig]
        B, H, N, C, K = q.shape
        fwd = _kernels(lib, q.dtype)[2]
        att = q.new_empty(B, H, N, C, C)
        ga, gf, cl, re = (torch.empty_like(ins[2]) for _ in range(4))
        gE = q.new_empty(B, H, N)
        out = (att, ga, gf, cl, re, gE)
        native.run(fwd, [(*map(native.ptr, ins), *map(native.ptr, out), N, C, K, p0, p1)
                         for p0, p1 in native.rows(B * H)])
        ctx.save_for_backward(*ins, *orig)
        ctx.lib, ctx.plain = lib, plain
        flop_count.add(gate_flops(B * H * N, C, K)[0])
        return out

    @staticmethod
    def twice(ctx, *douts):  # under create_graph: autograd through ops.memory's coefficients
        first_order.plain_given(ctx.plain, "_NativeGates")
        return (None, None, *first_order.replay(ctx.plain, ctx.saved_tensors[6:], douts,
                                                ctx.needs_input_grad[2:]))

    @staticmethod
    def backward(ctx, *douts):
        ins = ctx.saved_tensors[:6]
        B, H, N, C, K = ins[0].shape
        bwd = _kernels(ctx.lib, ins[0].dtype)[3]
        shapes = [(B, H, N, C, C)] + [(B, H, N, C)] * 4 + [(B, H, N)]
        douts = [ins[0].new_zeros(n) if d is None else d.contiguous()
                 for d, n in zip(douts, shapes)]
        grads = [torch.empty_like(t) for t in ins]
        native.run(bwd, [(*map(native.ptr, (*ins, *douts, *grads)), N, C, K, p0, p1)
                         for p0, p1 in native.rows(B * H)])
        flop_count.add(gate_flops(B * H * N, C, K)[1])
        return None, None, *grads


def titans_gates(lib, q, k, a, e, m, th, plain=None):
    """The gate coefficients of ops.memory's chunk form in C, each chunk one recurrence
    (titans_scan.c, coef): q, k (B, H, N, C, K); a, e, m, th (B, H, N, C), the steps'
    1 - alpha, E's and S's factors and theta (1, 1, 0, 0 off the sequence). Returns
    (att, ga, gf, cl, re, gE) as titans_linear takes them: att = Cm o q k^T (B, H, N, C, C),
    zero above the diagonal; A, f, Cm's last row, RE's last row times theta (B, H, N, C); E_T
    (B, H, N). Differentiable in all six inputs; `lib` = load(); plain: the same function of
    (q, k, a, e, m, th) in PyTorch (ops.memory's), which the node's `twice` differentiates
    (None: first order only)."""
    return _NativeGates.apply(lib, plain, q, k, a, e, m, th)


def _seg_kernels(lib, dtype):
    P, L, D = ctypes.c_void_p, ctypes.c_long, ctypes.c_double
    return (native.kernel(lib, "titans_seg_fwd", dtype, [P] * 12 + [D] + [L] * 7),
            native.kernel(lib, "titans_seg_bwd", dtype, [P] * 20 + [D] + [L] * 7))


class _NativeSegment(first_order.Function):
    """titans_gates then titans_linear on one chunk (N = 1) as one autograd node and one C
    call each way (titans_seg_fwd / titans_seg_bwd), on the tokens' layout: each pair's rows
    gathered, the gates' sigmoids, 1 - alpha, R = -v and the kernels' states inside the call
    (no transposes, gate splits, coefficient tensors nor state slices in PyTorch)."""

    @staticmethod
    def forward(ctx, lib, q, k, v, g, W0, P0, M0, S0, lr, plain=None):
        orig = (q, k, v, g, W0, P0, M0, S0)  # for `twice` (copies carry no history)
        q, k, v = (t.contiguous() for t in (q, k, v))
        g = g if g.stride(-1) == 1 else g.contiguous()
        B, n, H, K = q.shape
        W0, P0, M0, S0 = (t.contiguous() for t in (W0, P0, M0, S0))
        fwd = _seg_kernels(lib, q.dtype)[0]
        z = torch.empty_like(q)
        M, S = torch.empty_like(P0), torch.empty_like(P0)
        work = q.new_empty(B * H, n * n + 4 * n + 1)
        args = [native.ptr(t) for t in (q, k, v, g, W0, P0, M0, S0, z, M, S, work)]
        native.run(fwd, [(*args, lr, g.stride(0), g.stride(1), H, n, K, p0, p1)
                         for p0, p1 in native.rows(B * H)])
        ctx.save_for_backward(q, k, v, g, W0, P0, M0, S0, work, *orig)
        ctx.lib, ctx.lr, ctx.plain = lib, lr, plain
        flop_count.add(flops(B * H, n, K)[0] + gate_flops(B * H, n, K)[0])
        return z, M, S

    @staticmethod
    def twice(ctx, *douts):  # under create_graph: autograd through ops.memory's PyTorch form
        first_order.plain_given(ctx.plain, "_NativeSegment")
        return (None, *first_order.replay(ctx.plain, (*ctx.saved_tensors[9:], ctx.lr), douts,
                                          ctx.needs_input_grad[1:]), None)

    @staticmethod
    def backward(ctx, dz, dM, dS):
        q, k, v, g, W0, P0, M0, S0, work = ctx.saved_tensors[:9]
        B, n, H, K = q.shape
        bwd = _seg_kernels(ctx.lib, q.dtype)[1]
        dz = torch.zeros_like(q) if dz is None else dz.contiguous()
        dM, dS = (None if t is None else t.contiguous() for t in (dM, dS))
        dq, dk, dv = (torch.empty_like(q) for _ in range(3))
        dg = q.new_empty(B, n, g.shape[-1])
        dW = q.new_empty(B, H, K, K)
        dP0, dM0, dS0 = (torch.empty_like(P0) for _ in range(3))
        args = [native.ptr(t) for t in (q, k, v, g, W0, P0, M0, S0, work, dz, dM, dS, dq, dk,
                                        dv, dg, dW, dP0, dM0, dS0)]
        native.run(bwd, [(*args, ctx.lr, g.stride(0), g.stride(1), H, n, K, p0, p1)
                         for p0, p1 in native.rows(B * H)])
        flop_count.add(flops(B * H, n, K)[1] + gate_flops(B * H, n, K)[1])
        return None, dq, dk, dv, dg, dW.sum(0), dP0, dM0, dS0, None, None


def titans_segment(lib, q, k, v, g, W0, P0, M0, S0, lr=1.0, plain=None):
    """One chunk that every sequence opens and ends inside (ops.memory.titans_segment's C
    path): titans_gates(q, k, 1 - alpha, eta, eta, theta) and titans_linear(q, k, -v, ...)
    over a single chunk as one differentiable call, on the tokens' layout: q, k, v (B, n, H,
    K) (any strides), g (B, n, 3 H) the gates' logits (theta's H heads, alpha's, eta's;
    theta = lr sigmoid(.), alpha, eta = sigmoid(.)); W0 (H, K, K); P0, M0, S0 (B, H, K, K).
    Returns z (B, n, H, K) and the final M, S (B, H, K, K); `lib` = load(); plain: the same
    function of (q, k, v, g, W0, P0, M0, S0, lr) in PyTorch (ops.memory's), which the node's
    `twice` differentiates (None: first order only)."""
    return _NativeSegment.apply(lib, q, k, v, g, W0, P0, M0, S0, float(lr), plain)


def _onednn(a, w) -> bool:
    """Whether a segment's products (MAC's nodes: B n rows, 256 at the #17 size) take
    ops.native.linear's paths (oneDNN, wgrad.c): float32 on the CPU where torch runs
    AVX-512. Elsewhere torch's matmul (MKL), which on an AVX2 AMD EPYC at these sizes is as
    fast at 1 thread (256 x 128 -> 396: forward 343 against 385 us, a @ w 313 / 365, the
    weight gradient g^T a 342 / 396) and gains from a second thread where oneDNN's weight
    gradient on transposed views does not (167-193 against 323-399 us)."""
    from rnnzoo.ops.native.linear import _AVX512, _LP

    return _LP is not None and _AVX512 and a.dtype == torch.float32 and backend.use_native(a, w)


def _product(a, w, b):
    """a w^T + b (b None: none) for a (N, I), w (O, I): a segment's forward product."""
    from rnnzoo.ops.native.linear import product

    if _onednn(a, w):
        return product(a, w, b)
    return a @ w.T if b is None else torch.addmm(b, a, w.T)


def _times(g, w):
    """g w for g (N, O), w (O, I): a linear's input gradient, through oneDNN on w's
    transposed view where linear's backward takes it (no transposing copy of w; `_onednn`),
    else a matmul."""
    from rnnzoo.ops.native.linear import _mm

    return _mm(g, w.t()) if _onednn(g, w) else g @ w


def _weight_grads(g, r, bias):
    """(g^T r, g.sum(0) or None) for g (N, O), r (N, I): a segment product's weight (and
    bias) gradient, as ops.native.linear's _weight_grads (`_onednn`), else a matmul (the
    caller sums the bias's gradient when None)."""
    from rnnzoo.ops.native import linear

    return linear._weight_grads(g, r, bias) if _onednn(g, r) else (g.T @ r, None)


class _Saved:
    """A stand-in for an autograd ctx where a Function's forward and backward run inside
    another's (save_for_backward keeps the tensors, attributes as set)."""

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors


def _torch_mac_attention(kv, qx, kx, vx, kp, vp, cos, sin, w, b):
    """mac_attention in PyTorch (ops.native.attention's _torch_rope and _torch_causal, the
    interleave by stack, F.linear): the form _MacAttention's `twice` differentiates."""
    from rnnzoo.ops.native.attention import _torch_causal, _torch_rope

    B, n = kv.shape[:2]
    H, Dh, P = qx.shape[1], qx.shape[3], kp.shape[2]
    kh, vh = kv.view(B, n, 2, H, Dh).unbind(2)
    kh, vh = _torch_rope(kh, cos, sin).transpose(1, 2), vh.transpose(1, 2)
    ks, vs, qs = (torch.stack([h, t], 3).flatten(2, 3) for h, t in (
        (kh, kx), (vh, vx), (torch.zeros_like(qx), qx)))
    ks, vs = torch.cat([kp, ks], 2), torch.cat([vp, vs], 2)
    qs = torch.cat([qx.new_zeros(B, H, P, Dh), qs], 2)
    a = _torch_causal(qs, ks, vs, None)[:, :, P + 1::2].transpose(1, 2).reshape(B, n, H * Dh)
    return a, torch.nn.functional.linear(a, w, b), ks, vs


class _MacAttention(first_order.Function):
    @staticmethod
    def forward(ctx, lib, kv, qx, kx, vx, kp, vp, cos, sin, w, b):
        from rnnzoo.ops.native import attention as na

        orig = (kv, qx, kx, vx, kp, vp, cos, sin, w, b)  # for `twice`

        B, n = kv.shape[:2]
        H, Dh, P = qx.shape[1], qx.shape[3], kp.shape[2]
        T = P + 2 * n
        kvv = kv.view(B, n, 2, H, Dh)
        ks, vs = kv.new_empty(B, H, T, Dh), kv.new_empty(B, H, T, Dh)
        qs = kv.new_zeros(B, H, T, Dh)
        if P:
            ks[:, :, :P], vs[:, :, :P] = kp, vp
        # the h's keys turned by their angles straight into their (even) rows
        na._rope(lib, kvv[:, :, 0] if kvv.stride(-1) == 1 else kvv[:, :, 0].contiguous(),
                 ks[:, :, P::2].transpose(1, 2), cos, sin, 1)
        vs[:, :, P::2] = kvv[:, :, 1].transpose(1, 2)
        ks[:, :, P + 1::2], vs[:, :, P + 1::2], qs[:, :, P + 1::2] = kx, vx, qx
        sub = _Saved()
        o = na._CausalHeads.forward(sub, lib, qs, ks, vs, None)
        # (one head: the reshape of the strided rows is a view)
        a = o[:, :, P + 1::2].transpose(1, 2).reshape(B, n, H * Dh).contiguous()
        ctx.sub, ctx.lib, ctx.dims, ctx.bias = sub, lib, (B, n, H, Dh, P), b is not None
        # ks, vs are read only after the last segment: None, not zeros filled and added,
        # for the others' gradients (backward takes None for any output)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(cos, sin, a, w, *orig)
        return a, _product(a.view(B * n, H * Dh), w, b).view(B, n, -1), ks, vs

    @staticmethod
    def twice(ctx, *douts):  # under create_graph: autograd through the PyTorch forms
        return (None, *first_order.replay(_torch_mac_attention, ctx.saved_tensors[4:], douts,
                                          ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, da, dproj, dks, dvs):
        from rnnzoo.ops.native import attention as na

        cos, sin, a, w = ctx.saved_tensors[:4]
        B, n, H, Dh, P = ctx.dims
        T = P + 2 * n
        dw = db = None
        if dproj is not None:   # proj = a w^T + b
            g2 = dproj.reshape(B * n, -1).contiguous()
            dw, db = _weight_grads(g2, a.view(B * n, H * Dh), ctx.bias)
            if ctx.bias and db is None:
                db = g2.sum(0)
            ga = _times(g2, w).view(B, n, H * Dh)
            da = ga if da is None else da + ga
        do = cos.new_zeros(B, H, T, Dh)
        if da is not None:
            do[:, :, P + 1::2] = da.view(B, n, H, Dh).transpose(1, 2)
        _, dq, dk, dv, _ = na._CausalHeads.backward(ctx.sub, do)
        ctx.sub = None
        if dks is not None:
            dk = dk + dks
        if dvs is not None:
            dv = dv + dvs
        dkv = dk.new_empty(B, n, 2, H, Dh)
        na._rope(ctx.lib, dk[:, :, P::2].transpose(1, 2), dkv[:, :, 0], cos, sin, -1)
        dkv[:, :, 1] = dv[:, :, P::2].transpose(1, 2)
        odd = slice(P + 1, None, 2)
        return (None, dkv.view(B, n, 2 * H * Dh), dq[:, :, odd], dk[:, :, odd], dv[:, :, odd],
                dk[:, :, :P], dv[:, :, :P], None, None, dw, db)


def _one_dtype(op: str, *tensors) -> None:
    """The kernels read every buffer at one element size: a mixed call would read past them."""
    dtypes = {t.dtype for t in tensors if t is not None}
    if len(dtypes) != 1:
        raise TypeError(f"{op}: its tensors must share one dtype, got {sorted(map(str, dtypes))}")


def mac_attention(lib, kv, qx, kx, vx, kp, vp, cos, sin, w, b=None):
    """Titans-MAC's attention over one segment, [p, h_1, x_1, ..., h_n, x_n], at the x's,
    as one autograd node (the h's keys' rotary positions, the interleave, the causal kernel
    and the x rows' output): kv (B, n, 2 H Dh) the h's keys and values ([k | v], each head's
    Dh channels together, the keys not yet turned); qx (scaled), kx (turned), vx (B, H, n,
    Dh) the x's; kp, vp (B, H, P, Dh) the persistent tokens' (P >= 0); cos, sin (B, n, R/2)
    the h's angles (contiguous); w (O, H Dh), b (O,) or None the product that follows (the
    memory's inputs, [W_qkv; W_gates] W_out). Returns the x rows' outputs a (B, n, H Dh),
    a w^T + b (B, n, O) and the keys and values ks, vs (B, H, P + 2 n, Dh); differentiable
    in kv, qx, kx, vx, kp, vp, w, b. Equal to ops.native.attention's rope, the interleave by
    stack, causal_softmax_attention and F.linear up to rounding; `lib` =
    ops.native.attention.load()."""
    _one_dtype("mac_attention", kv, qx, kx, vx, kp, vp, cos, sin, w, b)
    return _MacAttention.apply(lib, kv, qx, kx, vx, kp, vp, cos, sin, w, b)


def _read_kernels(lib, dtype):
    P, L = ctypes.c_void_p, ctypes.c_long
    return (native.kernel(lib, "mac_read_fwd", dtype, [P] * 4 + [L] * 7),
            native.kernel(lib, "mac_read_bwd", dtype, [P] * 6 + [L] * 7))


def _torch_mac_retrieve(q, W0, P0, g, nw, eps, w, b):
    """mac_retrieve in PyTorch (ops.native.gated_norm's _torch_rms_gate, F.linear): the
    form _MacRetrieve's `twice` differentiates."""
    from rnnzoo.ops.native import gated_norm

    B, n, H, K = q.shape
    u = (q.transpose(1, 2) @ (W0 + P0)).transpose(1, 2).reshape(B, n, H * K)
    z = gated_norm._torch_rms_gate(u, None, None, g, nw, K, eps, gated_norm.ACTS["sigmoid"],
                                   0, True)
    return torch.nn.functional.linear(z, w, b)


class _MacRetrieve(first_order.Function):
    @staticmethod
    def forward(ctx, glib, tlib, q, W0, P0, g, nw, eps, w, b):
        from rnnzoo.ops.native import gated_norm

        orig = (q, W0, P0, g, nw, w, b)  # for `twice` (copies carry no history)

        if q.stride(-1) != 1 or q.stride(2) != q.shape[3]:
            q = q.contiguous()
        B, n, H, K = q.shape
        W0, P0 = W0.contiguous(), P0.contiguous()
        u = q.new_empty(B, n, H * K)
        args = [native.ptr(t) for t in (q, W0, P0, u)]
        native.run(_read_kernels(tlib, q.dtype)[0],
                   [(*args, q.stride(0), q.stride(1), H, n, K, p0, p1)
                    for p0, p1 in native.rows(B * H)])
        sub = _Saved()
        z = gated_norm._RMSGate.forward(sub, glib, u, None, None, g, nw, K, eps,
                                        gated_norm.ACTS["sigmoid"], 0, True)
        z2 = z.view(B * n, H * K)
        ctx.save_for_backward(q, W0, P0, z2, w, *orig)
        ctx.sub, ctx.bias, ctx.tlib, ctx.eps = sub, b is not None, tlib, eps
        return _product(z2, w, b).view(B, n, -1)

    @staticmethod
    def twice(ctx, dkv):  # under create_graph: autograd through the PyTorch forms
        q, W0, P0, g, nw, w, b = ctx.saved_tensors[5:]
        grads = first_order.replay(_torch_mac_retrieve, (q, W0, P0, g, nw, ctx.eps, w, b),
                                   (dkv,), ctx.needs_input_grad[2:])
        return (None, None, *grads)

    @staticmethod
    def backward(ctx, dkv):
        from rnnzoo.ops.native import gated_norm

        q, W0, P0, z2, w = ctx.saved_tensors[:5]
        B, n, H, K = q.shape
        g2 = dkv.reshape(-1, dkv.shape[-1]).contiguous()
        dw, db = _weight_grads(g2, z2, ctx.bias)
        if ctx.bias and db is None:
            db = g2.sum(0)
        dz = _times(g2, w).view(B, n, H * K)
        _, du, _, _, dg, dnw, *_ = gated_norm._RMSGate.backward(ctx.sub, dz)
        ctx.sub = None
        du = du.contiguous()
        dq, dP = q.new_empty(B, n, H, K), torch.empty_like(P0)
        args = [native.ptr(t) for t in (q, W0, P0, du, dq, dP)]
        native.run(_read_kernels(ctx.tlib, q.dtype)[1],
                   [(*args, q.stride(0), q.stride(1), H, n, K, p0, p1)
                    for p0, p1 in native.rows(B * H)])
        return None, None, dq, dP.sum(0), dP, dg, dnw, None, dw, db


def mac_retrieve(glib, tlib, q, W0, P0, g, nw, eps, w, b=None):
    """Titans-MAC's retrieval of one segment up to its keys and values, as one autograd
    node: the read u = q (W0 + P0) of the memory the segment starts with (C:
    mac_read_fwd / mac_read_bwd, on the tokens' layout), its RMS norm per head times nw and
    sigmoid(g) (ops.native.gated_norm's rms_gate), then (.) w^T + b (the composed W_{k,v}
    W_o). q (B, n, H, K) the queries (unit rows; any batch and step strides, a step's heads
    side by side); W0 (H, K, K) the initial memory, P0 (B, H, K, K) the segment's memory; g
    (B, n, H K) the gate's logits; nw (H, K) the norm's weight; w (O, H K), b (O,) or None.
    Returns (B, n, O); differentiable in q, W0, P0, g, nw, w, b. `glib` =
    ops.native.gated_norm.load(), `tlib` = load()."""
    _one_dtype("mac_retrieve", q, W0, P0, g, nw, w, b)
    return _MacRetrieve.apply(glib, tlib, q, W0, P0, g, nw, float(eps), w, b)


def _torch_mac_memory(segment, proj, cw, state, silu, W0, P0, M0, S0, lr):
    """mac_memory in PyTorch: ops.native.conv's _torch_conv, then `segment` (titans_segment's
    PyTorch form, ops.memory's, given by the caller): the form _MacMemory's `twice`
    differentiates."""
    from rnnzoo.ops.native.conv import _torch_conv

    B, n, _ = proj.shape
    H, K, d = W0.shape[0], W0.shape[1], state.shape[1]
    qkv, g = proj[..., :3 * H * K], proj[..., 3 * H * K:]
    q, k, v = _torch_conv(qkv, cw, None, state, silu, 2 * H, K, False, (H * K,) * 3)
    z, M, S = segment(*(t.view(B, n, H, K) for t in (q, k, v)), g, W0, P0, M0, S0, lr)
    xp = torch.cat([state, qkv], 1) if n < d else qkv
    return z, M, S, xp[:, xp.shape[1] - d:]


class _MacMemory(first_order.Function):
    @staticmethod
    def forward(ctx, clib, tlib, proj, cw, state, silu, W0, P0, M0, S0, lr, plain=None):
        from rnnzoo.ops.native import conv as native_conv

        ctx.save_for_backward(proj, cw, state, W0, P0, M0, S0)  # for `twice`
        ctx.silu, ctx.lr, ctx.plain = silu, lr, plain

        B, n, _ = proj.shape
        H, K, d = W0.shape[0], W0.shape[1], state.shape[1]
        HK = H * K
        qkv, g = proj[..., :3 * HK], proj[..., 3 * HK:]
        conv = _Saved()
        q, k, v = native_conv._NativeConv.forward(conv, clib, qkv, cw, None, state, silu,
                                                  2 * H, K, False, (HK,) * 3)
        seg = _Saved()
        z, M, S = _NativeSegment.forward(seg, tlib, *(t.view(B, n, H, K) for t in (q, k, v)), g,
                                         W0, P0, M0, S0, lr)
        xp = torch.cat([state, qkv], 1) if n < d else qkv   # the conv's new state
        ctx.subs, ctx.dims = (conv, seg), (B, n, HK, d)
        ctx.set_materialize_grads(False)   # an unread M, S or conv state: None, not zeros
        return z, M, S, xp[:, xp.shape[1] - d:].contiguous()

    @staticmethod
    def twice(ctx, *douts):  # under create_graph: autograd through the PyTorch forms
        first_order.plain_given(ctx.plain, "_MacMemory")
        proj, cw, state, W0, P0, M0, S0 = ctx.saved_tensors
        grads = first_order.replay(
            lambda *t: _torch_mac_memory(ctx.plain, *t),
            (proj, cw, state, ctx.silu, W0, P0, M0, S0, ctx.lr), douts,
            ctx.needs_input_grad[2:11])
        return (None, None, *grads, None)

    @staticmethod
    def backward(ctx, dz, dM, dS, dnew):
        from rnnzoo.ops.native import conv as native_conv

        conv, seg = ctx.subs
        ctx.subs = None
        B, n, HK, d = ctx.dims
        _, dq, dk, dv, dg, dW0, dP0, dM0, dS0, *_ = _NativeSegment.backward(seg, dz, dM, dS)
        _, dqkv, dcw, _, dstate, *_ = native_conv._NativeConv.backward(
            conv, *(t.reshape(B, n, HK) for t in (dq, dk, dv)))
        if dnew is not None:   # the new state: the last d rows of [state, qkv]
            if n >= d:
                dqkv[:, n - d:] += dnew
            else:
                dqkv += dnew[:, d - n:]
                dstate[:, n:] += dnew[:, :d - n]
        return (None, None, torch.cat([dqkv, dg], -1), dcw, dstate, None, dW0, dP0, dM0, dS0,
                None, None)


def mac_memory(clib, tlib, proj, cw, state, silu, W0, P0, M0, S0, lr, plain=None):
    """Titans-MAC's memory over one aligned segment as one autograd node: proj (B, n, 3 H K
    + 3 H) the memory's inputs (finite) [q | k | v | the gates' logits], the short
    convolution (weight cw (3 H K, d + 1) without bias, state (B, d, 3 H K), SiLU if silu,
    q and k L2-normalised per head: ops.native.conv's kernel) then titans_segment (W0, P0,
    M0, S0, lr as it takes them). Returns z (B, n, H, K), M, S (B, H, K, K) and the conv's
    new state (B, d, 3 H K); differentiable in proj, cw, state, W0, P0, M0, S0. `clib` =
    ops.native.conv.load(), `tlib` = load(); plain: titans_segment's PyTorch form (ops.memory's),
    which the node's `twice` replays after the conv's (None: first order only)."""
    _one_dtype("mac_memory", proj, cw, state, W0, P0, M0, S0)
    return _MacMemory.apply(clib, tlib, proj, cw, state, silu, W0, P0, M0, S0, float(lr), plain)
