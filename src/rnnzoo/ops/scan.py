"""Diagonal linear recurrences h_t = a_t * h_{t-1} + b_t along dim 1.

`linear_scan` is the parallel form every diagonal layer is built on;
`sequential_scan` is the plain loop it is tested against.

The parallel form is a work-efficient chunked scan: cut T into ~sqrt(T/2)
chunks, run one loop over the positions inside a chunk for all chunks at once,
link the chunk-end states with the same scan one level down, and add each
chunk's incoming state times its running product of a. About 3*sqrt(T) whole-
tensor operations and ~3x the sequential memory traffic, no division and no
logarithm, so it is exact wherever the loop is (a in {-1, +1}, integer b) and as
accurate as the loop in floating point. (Measured on a 2-core CPU it beat an
odd-even-reduction tree 3-5x: the tree's log2(T) full-size strided passes are
memory-bound; Hillis-Steele does T log T work.)
The backward pass is another linear scan, in the other direction:

    lambda_t = g_t + conj(a_{t+1}) lambda_{t+1}
    grad b_t = lambda_t,  grad a_t = lambda_t conj(h_{t-1}),  grad h0 = conj(a_0) lambda_0
"""

from __future__ import annotations

import math

import torch

from rnnzoo.ops import backend, first_order, sequence_parallel


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, *,
                reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve h_t = a_t * h_{t-1} + b_t for all t at once.

    a: (B, T, *S) or broadcastable to b's shape (any dim of size 1, time included).
    b: (B, T, *S), real or complex.
    h0: (B, *S) or None (zeros): the state before step 0 (after step T-1 if reverse).
    reverse: run from t = T-1 down to 0, h_t = a_t * h_{t+1} + b_t.
    Returns (h, h_last): h is (B, T, *S); h_last is h[:, -1] (h[:, 0] if reverse).
    On CUDA (when triton imports; `ops.backend`) the Triton kernel `ops.triton.scan` runs.
    """
    if sequence_parallel.active():  # this rank's time slice: LASP-2 (ops/sequence_parallel.py)
        a, b, h0 = _check(a, b, h0)
        return sequence_parallel.scan_lasp2(linear_scan, a, b, h0, reverse=reverse)
    if backend.use_triton(a, b, h0):
        from rnnzoo.ops.triton import scan as triton_scan
        return triton_scan.linear_scan(a, b, h0, reverse=reverse, plain=sequential_scan)
    a, b, h0 = _check(a, b, h0)
    a = a.expand(a.shape[0], b.shape[1], *a.shape[2:])  # a constant in time: a view
    h = _LinearScan.apply(a, b, h0, reverse)
    return h, (h[:, 0] if reverse else h[:, -1])


def sequential_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, *,
                    reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference loop for `linear_scan`, same arguments and returns, plain autograd."""
    a, b, h0 = _check(a, b, h0)
    T = b.shape[1]
    a_t, b_t = a.unbind(1), b.unbind(1)  # unbind, not a[:, t]: its backward is one stack
    h = torch.zeros_like(b_t[0]) if h0 is None else h0
    out = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        h = a_t[min(t, len(a_t) - 1)] * h + b_t[t]
        out[t] = h
    hs = torch.stack(out, dim=1)
    return hs, h


def _check(a, b, h0):
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"linear_scan: {name} must be a tensor, got {type(t).__name__}")
        if not (t.is_floating_point() or t.is_complex()):
            raise TypeError(f"linear_scan: {name} must be real or complex floating point, got {t.dtype}")
    if b.dim() < 2:
        raise ValueError(f"linear_scan: b must be (batch, time, ...), got shape {tuple(b.shape)}")
    if a.dim() != b.dim() or any(sa not in (1, sb) for sa, sb in zip(a.shape, b.shape)):
        raise ValueError(f"linear_scan: a must have b's number of dims and each dim 1 or b's "
                         f"size; got a {tuple(a.shape)} for b {tuple(b.shape)}")
    if a.is_complex() and not b.is_complex():
        b = b.to(a.dtype)
    if a.dtype != b.dtype:
        if a.is_complex() == b.is_complex():
            raise TypeError(f"linear_scan: a and b must share a dtype, got {a.dtype} and {b.dtype}")
    if h0 is not None:
        if not isinstance(h0, torch.Tensor):
            raise TypeError(f"linear_scan: h0 must be a tensor or None, got {type(h0).__name__}")
        want = (b.shape[0],) + tuple(b.shape[2:])
        if tuple(h0.shape) != want:
            raise ValueError(f"linear_scan: h0 must have shape {want}, got {tuple(h0.shape)}")
        h0 = h0.to(b.dtype)
    return a, b, h0


def into(op, *args, out: torch.Tensor) -> torch.Tensor:
    """op(*args, out=out): the result written into `out`, which may be a strided view.
    While torch.compile traces (it refuses `out=` into a non-contiguous view) the same
    as out.copy_(op(*args)), which its code generator fuses back into one loop."""
    if torch.compiler.is_compiling():
        return out.copy_(op(*args))
    return op(*args, out=out)


def chunked_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, reverse: bool,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t (h_{t+1} if reverse) by a two-level chunked scan, no autograd.
    a: (B, T, *S) (expanded to b's shape), b: (B, T, *S), h0: (B, *S) or None -> h: (B, T, *S).

    The steps are cut into NC chunks of C ~ sqrt(T/2). One loop of C steps runs every
    chunk at once from a zero state (the first chunk from h0), keeping the running
    products P of a; the NC chunk-end states are then linked by the same scan, one level
    down (recursively), and each chunk adds P times the state entering it. Steps beyond
    NC * C are done last, one by one. h0 (None: zero) is the state before the first
    processed step; the result is written into `out` (which may be a strided view).
    """
    T = b.shape[1]
    h = torch.empty(b.shape, dtype=torch.promote_types(a.dtype, b.dtype), device=b.device) \
        if out is None else out
    C = T if T <= 16 else int(math.sqrt(T / 2))  # short: one pass, the plain loop
    NC, R = divmod(T, C)
    main = slice(R, T) if reverse else slice(0, NC * C)
    av, bv, hv = (t[:, main].unflatten(1, (NC, C)) for t in (a, b, h))
    P = torch.empty(av.shape, dtype=a.dtype, device=a.device) if NC > 1 else None
    edge = NC - 1 if reverse else 0  # the chunk that starts from h0
    prev = None
    for j in (range(C - 1, -1, -1) if reverse else range(C)):
        a_j, b_j = av[:, :, j], bv[:, :, j]
        if prev is None:
            hv[:, :, j] = b_j
            if h0 is not None:
                hv[:, edge, j] += a_j[:, edge] * h0
            if P is not None:
                P[:, :, j] = a_j
        else:
            into(torch.addcmul, b_j, a_j, hv[:, :, prev], out=hv[:, :, j])
            if P is not None:
                into(torch.mul, a_j, P[:, :, prev], out=P[:, :, j])
        prev = j
    if NC > 1:  # state entering each chunk = the chunk-level scan of (P, local end state)
        ends = chunked_scan(P[:, :, prev], hv[:, :, prev], None, reverse)
        if reverse:
            into(torch.addcmul, hv[:, :-1], P[:, :-1], ends[:, 1:].unsqueeze(2), out=hv[:, :-1])
        else:
            into(torch.addcmul, hv[:, 1:], P[:, 1:], ends[:, :-1].unsqueeze(2), out=hv[:, 1:])
    last = R if reverse else NC * C - 1
    for t in (range(R - 1, -1, -1) if reverse else range(NC * C, T)):
        into(torch.addcmul, b[:, t], a[:, t], h[:, last], out=h[:, t])
        last = t
    return h


class _LinearScan(first_order.Function):
    """linear_scan's node: the chunked scan each way, in place (`into`). Under create_graph
    (`twice`) the same backward in out-of-place ops, its reverse scan this node again: every
    order of derivative, at the scan's cost."""

    @staticmethod
    def forward(ctx, a, b, h0, reverse):
        with torch.no_grad():
            h = chunked_scan(a, b, h0, reverse)
        ctx.reverse = reverse
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    def plain(a, b, h0, reverse):  # torch.func: the reference loop
        return sequential_scan(a, b, h0, reverse=reverse)[0]

    @staticmethod
    def backward(ctx, g):
        a, h, h0 = ctx.saved_tensors
        reverse, T = ctx.reverse, h.shape[1]
        conj = a.is_complex() or h.is_complex()
        a_c, h_c = (a.conj(), h.conj()) if conj else (a, h)
        g = g.to(h.dtype)
        # lambda_t = g_t + conj(a_{t+1}) lambda_{t+1}: a scan the other way, a shifted by one.
        lam = torch.empty_like(h)
        last, rest = (0, slice(1, None)) if reverse else (T - 1, slice(0, T - 1))
        lam[:, last] = g[:, last]
        if T > 1:
            coeff = a_c[:, :-1] if reverse else a_c[:, 1:]
            chunked_scan(coeff, g[:, rest], lam[:, last], not reverse, out=lam[:, rest])
        grad_a = grad_h0 = None
        first = T - 1 if reverse else 0
        if ctx.needs_input_grad[0]:  # grad a_t = lambda_t conj(h_prev(t))
            grad_a = torch.empty_like(lam)
            if T > 1:
                now, prev = (slice(0, T - 1), slice(1, None)) if reverse else \
                    (slice(1, None), slice(0, T - 1))
                into(torch.mul, lam[:, now], h_c[:, prev], out=grad_a[:, now])
            if h0 is None:
                grad_a[:, first] = 0
            else:
                grad_a[:, first] = lam[:, first] * (h0.conj() if conj else h0)
            if not a.is_complex() and grad_a.is_complex():
                grad_a = grad_a.real
            grad_a = grad_a.sum_to_size(a.shape)
        if h0 is not None and ctx.needs_input_grad[2]:
            grad_h0 = (lam[:, first] * a_c[:, first]).sum_to_size(h0.shape)
        return grad_a, lam if ctx.needs_input_grad[1] else None, grad_h0, None

    @staticmethod
    def twice(ctx, g):  # backward's formulas without out=: differentiable again
        a, h, h0 = ctx.saved_tensors
        reverse, T = ctx.reverse, h.shape[1]
        need = ctx.needs_input_grad
        conj = a.is_complex() or h.is_complex()
        a_c, h_c = (a.conj(), h.conj()) if conj else (a, h)
        g = g.to(h.dtype)
        last, first = (0, T - 1) if reverse else (T - 1, 0)
        lam = g
        if T > 1:  # lambda_t = g_t + conj(a_{t+1}) lambda_{t+1}, from lambda_last = g_last
            coeff, rest = (a_c[:, :-1], g[:, 1:]) if reverse else (a_c[:, 1:], g[:, :-1])
            lam_rest = _LinearScan.apply(coeff, rest, g[:, last], not reverse)
            ends = g[:, last:last + 1]
            lam = torch.cat([ends, lam_rest] if reverse else [lam_rest, ends], 1)
        grad_a = grad_h0 = None
        if need[0]:  # grad a_t = lambda_t conj(h_prev(t))
            start = torch.zeros_like(h_c[:, :1]) if h0 is None else \
                (h0.conj() if conj else h0).unsqueeze(1).to(h_c.dtype)
            prev = torch.cat([h_c[:, 1:], start] if reverse else [start, h_c[:, :-1]], 1)
            grad_a = lam * prev
            if not a.is_complex() and grad_a.is_complex():
                grad_a = grad_a.real
            grad_a = grad_a.sum_to_size(a.shape)
        if h0 is not None and need[2]:
            grad_h0 = (lam[:, first] * a_c[:, first]).sum_to_size(h0.shape)
        return grad_a, lam if need[1] else None, grad_h0, None
