"""x W^T + b on the CPU through oneDNN's matrix product (torch.ops.mkldnn._linear_pointwise,
the library nn.LSTM's CPU kernel runs on), forward and backward; F.linear elsewhere.

    linear(x, weight, bias=None)   as F.linear: x (..., in), weight (out, in), bias (out,)
    Linear(in_features, out_features, bias=True, ...)   nn.Linear whose product is `linear`
    linear_pieces(x, weight, sizes)  F.linear(x, weight).split(sizes, -1), each piece dense

Why: on this project's CPUs torch's F.linear goes to MKL's sgemm, which takes its AVX2 code
on AMD processors (~90 GFLOP/s on one Zen 5 core), while oneDNN runs AVX-512 (~200 for
the products x W^T and dy W of a (8192, 128) x (128, 644) projection, ~110 for the weight
gradient dy^T x, which wgrad.c's register tiles run ~15% faster: see weight_grad). Same
float32 arithmetic, no lower precision (differences are rounding order). Taken when ops.backend.use_native holds (CPU, eager, not forced to torch), the
tensors are float32 and torch has the op; float64, other devices, torch.compile and
backend.force("torch") (FLOP counting) keep F.linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.ops import backend, first_order
from rnnzoo.ops.native import wgrad as _wgrad


def _op():
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        return torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):
        return None


_LP = _op()
# y = x W^T + other in one product (the sum inside oneDNN's, not a pass over y after it)
_LP_ADD = getattr(torch.ops.mkldnn._linear_pointwise, "binary", None) if _LP is not None else None
_AVX512 = torch.backends.cpu.get_cpu_capability() == "AVX512"
_AVX2 = torch.backends.cpu.get_cpu_capability() == "AVX2"


def _mm(a, b):
    """a (M, k) @ b (N, k)^T -> (M, N) through oneDNN."""
    return _LP(a, b, None, "none", [], "")


class _Linear(first_order.Transformable):
    @staticmethod
    def forward(ctx, x, weight, bias):
        # dense operands: oneDNN takes any dense strides (the transposed views below), but an
        # expanded or sliced tensor sends it to a reference loop ~1000x slower
        x2, weight = x.reshape(-1, x.shape[-1]).contiguous(), weight.contiguous()
        # the bias added inside oneDNN's product (a separate y += bias passed over y again:
        # 128 -> 644 15.4 against 14.5 ms)
        y = _LP(x2, weight, None if bias is None else bias.contiguous(), "none", [], "")
        ctx.save_for_backward(x2, weight)
        ctx.has_bias, ctx.shape = bias is not None, x.shape
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, g):
        x2, weight = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1]).contiguous()  # `.sum().backward()`'s is expanded
        if torch.is_grad_enabled():  # create_graph: differentiable products (oneDNN's op has
            # no derivative of its own, autograd would take it as constant)
            dx = (g2 @ weight).view(ctx.shape) if ctx.needs_input_grad[0] else None
            dw = g2.t() @ x2 if ctx.needs_input_grad[1] else None
            db = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
            return dx, dw, db
        dx = _mm(g2, weight.t()).view(ctx.shape) if ctx.needs_input_grad[0] else None
        want_db = ctx.has_bias and ctx.needs_input_grad[2]
        dw, db = _weight_grads(g2, x2, want_db) if ctx.needs_input_grad[1] else (None, None)
        if want_db and db is None:
            db = g2.sum(0)
        return dx, dw, db


def _add(a, b, c):
    """a b^T + c, as _mm (the add inside oneDNN's product where torch has its binary form)."""
    return _LP_ADD(a, c, b, None, "add") if _LP_ADD is not None else _mm(a, b).add_(c)


class _Pieces(first_order.Transformable):
    """x W^T as the column pieces of W's row blocks (`sizes`), each its own oneDNN product
    into its own dense tensor; backward dx = sum_i g_i W_i (the sums inside oneDNN's products,
    its binary add), dW = the pieces' g_i^T x stacked (each by `_weight_grads`)."""

    @staticmethod
    def forward(ctx, x, weight, sizes):
        x2, weight = x.reshape(-1, x.shape[-1]).contiguous(), weight.contiguous()
        ys = tuple(_mm(x2, w).view(*x.shape[:-1], w.shape[0]) for w in weight.split(sizes))
        ctx.save_for_backward(x2, weight)
        ctx.sizes, ctx.shape = sizes, x.shape
        return ys

    @staticmethod
    def backward(ctx, *gs):  # an unused piece's gradient comes as zeros (materialized)
        x2, weight = ctx.saved_tensors
        ws = weight.split(ctx.sizes)
        gs = [g.reshape(-1, g.shape[-1]).contiguous() for g in gs]
        if torch.is_grad_enabled():  # create_graph: differentiable products (as _Linear's)
            dx = sum(g @ w for g, w in zip(gs, ws)).view(ctx.shape) \
                if ctx.needs_input_grad[0] else None
            dw = torch.cat([g.t() @ x2 for g in gs]) if ctx.needs_input_grad[1] else None
            return dx, dw, None
        dx = dw = None
        if ctx.needs_input_grad[0]:  # w.t(): oneDNN reads the (in, n) view as it is
            dx = _mm(gs[0], ws[0].t())
            for g, w in zip(gs[1:], ws[1:]):
                dx = _add(g, w.t(), dx)
            dx = dx.view(ctx.shape)
        if ctx.needs_input_grad[1]:  # each piece's as a Linear's (`_weight_grads`)
            dw = torch.cat([_weight_grads(g, x2, False)[0] for g in gs])
        return dx, dw, None


def linear_pieces(x: torch.Tensor, weight: torch.Tensor, sizes) -> tuple:
    """F.linear(x, weight).split(sizes, -1) (no bias): x (..., in), weight (out, in), sizes
    summing to out -> the pieces (..., sizes[i]), each its own dense tensor on the CPU in
    float32 (`_Pieces`: one oneDNN product a piece, no split slices read with the whole row's
    stride, no cat of their gradients backward); elsewhere the split of one product."""
    sizes = [int(n) for n in sizes]
    if (_LP is not None and x.dtype == torch.float32 and x.shape[-1] > 0 and x.numel()
            and backend.use_native(x, weight)):
        return _Pieces.apply(x, weight, sizes)
    return tuple(F.linear(x, weight).split(sizes, -1))


def product(a: torch.Tensor, b: torch.Tensor, bias=None) -> torch.Tensor:
    """a b^T (+ bias): a (N, k), b (M, k) -> (N, M). On the CPU in float32 outside autograd
    (a hand-written backward's products), oneDNN's product with the bias added in it; else
    (and under create_graph: oneDNN's op has no derivative) a matmul."""
    if (_LP is not None and a.dtype == torch.float32 and not torch.is_grad_enabled()
            and backend.use_native(a, b)):
        return _LP(a.contiguous(), b.contiguous(), bias, "none", [], "")
    return torch.addmm(bias, a, b.T) if bias is not None else a @ b.T


def weight_grad(g: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """sum over rows of g^T r: g (..., G), r (..., K) -> (G, K), the gradient of a matrix W
    used as r W^T. On the CPU in float32 outside autograd: where torch runs AVX-512 and K (or
    else G) is a multiple of 16, wgrad.c's register tiles on the dense operands as they are
    (1.1-1.7x oneDNN at the layers' shapes, N = 8192, K = 128, G = 4 .. 1664: oneDNN copies
    its transposed first operand each call; not at K >= 256 with G < 64, 768 -> 8 and
    256 -> 40, where they tie); where it runs AVX2, torch's matmul (MKL) on g's transposed
    view (`_weight_grads`); else oneDNN's product on the transposed views, the wider side as
    the product's output rows (the faster order: 7 against 11 ms at G = 4K = 512); else (and
    under create_graph, as `product`) g^T r."""
    g, r = g.reshape(-1, g.shape[-1]).contiguous(), r.reshape(-1, r.shape[-1]).contiguous()
    return _weight_grads(g, r, False)[0]


def _weight_grads(g, r, bias):
    """weight_grad's (g^T r, g.sum(0)) on dense g (N, G), r (N, K); the second only with
    bias where wgrad.c sums it while it reads g (a bias's gradient: torch's g.sum(0) reads an
    (8192, 644) g from memory again, ~2 ms), else None.

    On AVX2 (no AVX-512) MKL's g.T @ r at every shape: at N = 8192 on a Zen 3 core, 1 thread,
    0.63-0.90 of wgrad.c's 256-bit tiles and 0.6-0.85 of oneDNN's product (G x K = 4 .. 896
    x 128, 128 x 256); inside the layers the weight gradients 0.70-0.84 of wgrad.c's at 1
    thread (s24-mag in docs/cpu-speed.md)."""
    if (_LP is not None and g.dtype == torch.float32 and g.numel() and r.numel()
            and not torch.is_grad_enabled() and backend.use_native(g, r)):
        if _AVX2:
            return g.T @ r, None
        if (_AVX512 and (r.shape[1] % 16 == 0 or g.shape[1] % 16 == 0)
                and not (r.shape[1] >= 256 and g.shape[1] < 64)):
            if r.shape[1] % 16 == 0:
                out = _wgrad.weight_grad(g, r, bias)
                if out is not None:
                    return out if bias else (out, None)
            else:
                out = _wgrad.weight_grad(r, g)
                if out is not None:
                    return out.T, None
        return (_mm(r.T, g.T).T if g.shape[1] > r.shape[1] else _mm(g.T, r.T)), None
    return g.T @ r, None


def linear(x, weight, bias=None):
    """F.linear(x, weight, bias), through oneDNN on the CPU in float32 (module docstring)."""
    if (_LP is not None and x.dtype == torch.float32 and x.shape[-1] > 0 and x.numel()
            and backend.use_native(x, weight, bias)):
        return _Linear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """torch.nn.Linear whose product runs through `linear` (oneDNN on the CPU in float32,
    F.linear elsewhere): the same parameters, initialisation and state dict. x: (..., in)
    -> (..., out). The layers build their projections from it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
