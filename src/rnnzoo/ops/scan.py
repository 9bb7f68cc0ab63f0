"""Diagonal linear recurrences h_t = a_t * h_{t-1} + b_t along dim 1.

`linear_scan` is the parallel form every diagonal layer is built on;
`sequential_scan` is the plain loop it is tested against.

The parallel form is odd-even reduction (the work-efficient Blelloch-style
tree): combine neighbouring pairs, (a1, b1) o (a0, b0) = (a1 a0, a1 b0 + b1),
scan the half-length sequence recursively, then fill in the other half with one
more step. That is ~log2(T) levels of whole-tensor operations and 2x the
sequential work, with no division and no logarithm, so it is exact wherever the
loop is (a in {-1, +1}, integer b) and as accurate as the loop in floating point.
The backward pass is another linear scan, in the other direction:

    lambda_t = g_t + conj(a_{t+1}) lambda_{t+1}
    grad b_t = lambda_t,  grad a_t = lambda_t conj(h_{t-1}),  grad h0 = conj(a_0) lambda_0
"""

from __future__ import annotations

import torch


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, *,
                reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve h_t = a_t * h_{t-1} + b_t for all t at once.

    a: (B, T, *S) or broadcastable to b's shape (any dim of size 1, time included).
    b: (B, T, *S), real or complex.
    h0: (B, *S) or None (zeros): the state before step 0 (after step T-1 if reverse).
    reverse: run from t = T-1 down to 0, h_t = a_t * h_{t+1} + b_t.
    Returns (h, h_last): h is (B, T, *S); h_last is h[:, -1] (h[:, 0] if reverse).
    """
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


def _tree_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Forward scan h_t = a_t h_{t-1} + b_t, h_{-1} = 0, by odd-even reduction."""
    T = b.shape[1]
    if T == 1:
        return b.clone()
    n = T // 2  # pairs (2i, 2i+1)
    a_even, a_odd = a[:, 0:2 * n:2], a[:, 1:2 * n:2]
    b_even, b_odd = b[:, 0:2 * n:2], b[:, 1:2 * n:2]
    # The pair's combined step maps h_{2i-1} to h_{2i+1}; scanning the pairs gives the odd h.
    h_odd = _tree_scan(a_odd * a_even, torch.addcmul(b_odd, a_odd, b_even))
    h = torch.empty(b.shape, dtype=h_odd.dtype, device=b.device)
    h[:, 1::2] = h_odd
    h[:, 0] = b[:, 0]
    # Even positions 2i >= 2 take one step from the odd position before them.
    m = (T - 1) // 2
    if m:
        h[:, 2::2] = torch.addcmul(b[:, 2::2], a[:, 2::2], h_odd[:, :m])
    return h


def _scan(a, b, h0, reverse):
    """Parallel scan without autograd bookkeeping; h0 is folded into the first step."""
    if reverse:
        a, b = a.flip(1), b.flip(1)
    if h0 is not None:
        b = b.clone()
        b[:, 0] = torch.addcmul(b[:, 0], a[:, 0], h0)
    h = _tree_scan(a, b)
    return h.flip(1) if reverse else h


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0, reverse):
        with torch.no_grad():
            h = _scan(a, b, h0, reverse)
        ctx.reverse = reverse
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    def backward(ctx, g):
        a, h, h0 = ctx.saved_tensors
        reverse = ctx.reverse
        conj = torch.is_complex(a) or torch.is_complex(h)
        a_c = a.conj() if conj else a
        # lambda_t = g_t + a_{t+1} lambda_{t+1}: a scan in the other direction with a shifted.
        shifted = torch.ones_like(a_c)
        if reverse:
            shifted[:, 1:] = a_c[:, :-1]
        else:
            shifted[:, :-1] = a_c[:, 1:]
        lam = _scan(shifted, g.to(h.dtype), None, not reverse)
        grad_a = grad_b = grad_h0 = None
        if ctx.needs_input_grad[0]:
            if reverse:
                prev = torch.cat([h[:, 1:], _zeros_or(h0, h)], dim=1)
            else:
                prev = torch.cat([_zeros_or(h0, h), h[:, :-1]], dim=1)
            grad_a = lam * (prev.conj() if conj else prev)
            if not torch.is_complex(a) and torch.is_complex(grad_a):
                grad_a = grad_a.real
            grad_a = grad_a.sum_to_size(a.shape)
        if ctx.needs_input_grad[1]:
            grad_b = lam
        if h0 is not None and ctx.needs_input_grad[2]:
            first = 0 if not reverse else -1
            grad_h0 = lam[:, first] * a_c[:, first]
        return grad_a, grad_b, grad_h0, None


def _zeros_or(h0, h):
    if h0 is None:
        return torch.zeros_like(h[:, :1])
    return h0.unsqueeze(1).to(h.dtype)
