"""A classic cell's whole sequence in C, forward and backward: the native form of
`cells.manual.manual_scan`, with the same conventions (module docstring of cells/manual.py):

    forward:   state_t, y_t = step(xp_t, state_{t-1})   t = 1..T, one C call per thread
    backward:  d xp_t, d state_{t-1}, g_t = back(d state_t + d y_t, saved_t)   t = T..1
               dW_j = g_j^T r_j  (one torch product per matrix, after the loop)

A cell opts in with `manual_native() -> NativeStep | None` beside its manual_params /
manual_step / manual_back; the C file `<file>.c` (beside this module) defines
`<fn>_fwd_f32/_f64` and `<fn>_bwd_f32/_f64` on the shared driver cell_loop.h (its header
comment gives the calling convention). `scan` runs it, or returns None (the caller then runs
the Python loop) when the cell names no kernel or the kernel cannot be built.

    scan(cell, xp (B, T, P), state (tuple of (B, n_i)), matrices ((G_j, K_j), ...),
         vectors (...), keep, plain) -> (outputs (B, T, output_size), final state) | None

    scan_projected(cell, x (B, T, I), w_in (P, I), state, matrices, vectors, plain)
        -> the same | None

`scan` with the input projection xp = x w_in^T inside (a cell whose first matrix's gradient
is the whole of d xp: NativeStep.g_is_dxp; nas): the projection and d x = d xp w_in in the C
loop itself, each step's rows before the recurrent product (x_t w_in^T, then += h W^T: the
same sums as a whole-sequence product first), and d x_t from the step's d xp_t rows (the
(B, T, P) projection is never written and read back: nas 0.956x of a separate projection,
1 thread; cell_loop.h's x / w_in / dx); the weight gradients, w_in's and the matrices', by
ops.native.linear's `weight_grad` (in float32 where torch runs AVX-512 wgrad.c's kernel on
the buffers as they are: ~100 GFLOP/s where oneDNN's product on g's transposed view runs ~75
at nas' (8192, 1024) x (8192, 128); on AVX2 torch's matmul on g's transposed view).

All tensors one dtype, float32 or float64, on the CPU (`ops.backend.use_native`); threads
split the batch rows (torch.get_num_threads() of them, one C call each). Differentiable in
xp (x and w_in), the state, the matrices and the vectors; under create_graph its `twice`
replays the cell's plain step loop (`plain`, the caller's cells.manual.manual_plain with the
cell bound; after x w_in^T with `proj`) through autograd over the node's original inputs, so that it differentiates again.
"""

from __future__ import annotations

import ctypes
import struct
from typing import NamedTuple

import torch

from rnnzoo.ops import backend, first_order, native
from rnnzoo.ops.native.linear import weight_grad

__all__ = ["NativeStep", "scan", "scan_projected"]


class NativeStep(NamedTuple):
    """What a cell's `manual_native` names: the C file (without .c), the function prefix,
    floats saved per batch row and step, int options passed to the C step, the output
    width when the output is not state[0] (0: it is state[0]), float options (passed as
    doubles), and whether the gradient at the first matrix's product is the whole of d xp
    (pre = xp_t + r W_0^T, W_0 (P, K): then the backward's g_0 and d xp are one buffer)."""

    file: str
    fn: str
    saved: int
    ints: tuple = ()
    out: int = 0
    floats: tuple = ()
    g_is_dxp: bool = False


def _kernels(lib, fn, dtype):
    # p and d (_call's arrays) as plain addresses: ops.native.team passes c_void_p, not POINTER
    # types, so the two ranges go to torch's OpenMP team at 2 threads, not a pool thread
    args = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long, ctypes.c_long]
    return native.kernel(lib, f"{fn}_fwd", dtype, args), native.kernel(lib, f"{fn}_bwd", dtype, args)


def _call(kernel, tensors, sizes, batch):
    """kernel(p, d, b0, b1) on each thread's rows; p the tensors' data pointers (NULL for None)."""
    parts = native.rows(batch)
    if not parts:  # an empty batch
        return
    p = (ctypes.c_void_p * len(tensors))(*(None if t is None else t.data_ptr() for t in tensors))
    d = (ctypes.c_long * len(sizes))(*sizes)
    native.run(kernel, [(p, d, b0, b1) for b0, b1 in parts])


class _NativeLoop(first_order.Function):
    """(xp, *state, *matrices, *vectors) -> (outputs (B, T, out), *final state); with `proj`
    the first argument is x (B, T, I) and a last one w_in (P, I): xp = x w_in^T."""

    @staticmethod
    def forward(ctx, plain, lib, spec, H, keep, n_state, n_mat, proj, xp, *tensors):
        originals = (xp, *tensors)  # the inputs as given, saved for `twice`
        tensors = [t.contiguous() for t in tensors]
        ctx.x = x = None
        if proj:  # xp = x w_in^T, each step's rows in the C loop
            x, w_in = xp.contiguous(), tensors.pop()
            ctx.x, ctx.w_in = x, w_in
            B, T, _ = x.shape
            P, xp = w_in.shape[0], None
        else:
            xp = xp.contiguous()
            B, T, P = xp.shape
        state, mats, vecs = (tensors[:n_state], tensors[n_state:n_state + n_mat],
                             tensors[n_state + n_mat:])
        like = x if proj else xp
        out = spec.out or state[0].shape[1]
        wt = [w.t().contiguous() for w in mats]
        kept = T if keep else 1
        y = like.new_empty(B, T, out)
        final = [torch.empty_like(s) for s in state]
        saved = like.new_empty(B, kept, spec.saved)
        rs = [like.new_empty(B, kept, w.shape[1]) for w in mats]
        sizes = [T, B, H, P, out, spec.saved, int(keep), int(spec.out == 0), n_state, n_mat,
                 len(vecs), len(spec.ints), *(s.shape[1] for s in state),
                 *(n for w in mats for n in w.shape), *(v.numel() for v in vecs), *spec.ints,
                 x.shape[2] if proj else 0,
                 *(struct.unpack("q", struct.pack("d", f))[0] for f in spec.floats)]
        fwd, _ = _kernels(lib, spec.fn, like.dtype)
        _call(fwd, [xp, y, saved, None, *final, *state, *mats, *wt, *vecs, *rs,
                    *([None] * len(vecs)), x, w_in.t().contiguous() if proj else None, None],
              sizes, B)
        ctx.lib, ctx.spec, ctx.sizes, ctx.n_state, ctx.n_mat = lib, spec, sizes, n_state, n_mat
        ctx.saved, ctx.rs, ctx.wt = saved, rs, wt
        ctx.xp_shape = (B, T, P)
        ctx.plain, ctx.proj, ctx.n_par = plain, proj, len(mats) + len(vecs)
        # the contiguous params for the C backward (the same tensors where already so) and
        # the original inputs for `twice` (references, no copies)
        ctx.save_for_backward(*mats, *vecs, *originals)
        return (y, *final)

    @staticmethod
    def twice(ctx, *grads):  # under create_graph: autograd through the plain step loop
        plain, n_state, n_mat = ctx.plain, ctx.n_state, ctx.n_mat
        if ctx.proj:
            def fn(x, *rest):
                return plain(n_state, n_mat, x @ rest[-1].T, *rest[:-1])
        else:
            def fn(*args):
                return plain(n_state, n_mat, *args)
        return (None,) * 8 + first_order.replay(fn, ctx.saved_tensors[ctx.n_par:], grads,
                                                ctx.needs_input_grad[8:])

    @staticmethod
    def backward(ctx, d_out, *d_final):
        params = ctx.saved_tensors[:ctx.n_par]
        mats, vecs = params[:ctx.n_mat], params[ctx.n_mat:]
        d_out = d_out.contiguous()
        B = d_out.shape[0]
        d_final = [d.contiguous() for d in d_final]
        d_state = [torch.empty_like(d) for d in d_final]
        d_xp = d_out.new_empty(ctx.xp_shape)
        shared = ctx.spec.g_is_dxp and mats[0].shape[0] == ctx.xp_shape[2]
        gs = [d_xp if j == 0 and shared else d_out.new_empty(B, ctx.xp_shape[1], w.shape[0])
              for j, w in enumerate(mats)]
        d_vecs = [d_out.new_empty(B, v.numel()) for v in vecs]
        d_x = None
        if ctx.x is not None and ctx.needs_input_grad[8]:  # d x = d xp w_in, in the loop
            d_x = d_out.new_empty(ctx.x.shape)
        _, bwd = _kernels(ctx.lib, ctx.spec.fn, d_out.dtype)
        _call(bwd, [None, d_out, ctx.saved, d_xp, *d_state, *d_final, *mats, *ctx.wt, *vecs,
                    *gs, *d_vecs, None, None if d_x is None else ctx.w_in, d_x], ctx.sizes, B)
        needs = ctx.needs_input_grad[9 + ctx.n_state:]
        d_mats = [weight_grad(g, r) if need else None for g, r, need in zip(gs, ctx.rs, needs)]
        d_vecs = [d.sum(0).view(v.shape) if need else None
                  for d, v, need in zip(d_vecs, vecs, needs[ctx.n_mat:len(vecs) + ctx.n_mat])]
        if ctx.x is None:
            return (None,) * 8 + (d_xp, *d_state, *d_mats, *d_vecs)
        d_w = weight_grad(d_xp, ctx.x) if ctx.needs_input_grad[-1] else None
        return (None,) * 8 + (d_x, *d_state, *d_mats, *d_vecs, d_w)


def scan(cell, xp: torch.Tensor, state: tuple, matrices: tuple, vectors: tuple, keep: bool,
         plain) -> tuple[torch.Tensor, tuple] | None:
    """The cell's C loop over xp from `state` (see the module docstring); keep: whether a
    gradient is wanted (else nothing per step is kept); plain(n_state, n_mat, xp, *state,
    *matrices, *vectors) -> (outputs, *final state): the same loop in autograd's ops
    (cells.manual.manual_plain with the cell bound), which `twice` replays. None when the
    cell names no kernel or it cannot be built."""
    spec = cell.manual_native()
    if spec is None:
        return None
    lib = native.load(spec.file)
    if lib is None:
        return None
    out, *new = _NativeLoop.apply(plain, lib, spec, cell.hidden_size, keep, len(state), len(matrices),
                                  False, xp, *state, *matrices, *vectors)
    return out, tuple(new)


def scan_projected(cell, x: torch.Tensor, w_in: torch.Tensor, state: tuple, matrices: tuple,
                   vectors: tuple, plain) -> tuple[torch.Tensor, tuple] | None:
    """`scan` over xp = x w_in^T (x (B, T, I), w_in (P, I)), the projection inside the loop's
    autograd node (module docstring), for a cell whose NativeStep has g_is_dxp and whose first
    matrix's output is P wide. None where the C loop does not run (not native tensors, no
    kernel, or it cannot be built): the caller then runs its own projection and loop."""
    tensors = (x, w_in, *state, *matrices, *vectors)
    if not backend.use_native(*tensors) or not x.numel():
        return None
    spec = cell.manual_native()
    if spec is None or not spec.g_is_dxp or matrices[0].shape[0] != w_in.shape[0]:
        return None
    lib = native.load(spec.file)
    if lib is None:
        return None
    keep = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    out, *new = _NativeLoop.apply(plain, lib, spec, cell.hidden_size, keep, len(state), len(matrices),
                                  True, x, *state, *matrices, *vectors, w_in)
    return out, tuple(new)
