"""A cell's whole sequence with a hand-written backward pass: `manual_loop`.

The reference loop (cells/base.py) lets autograd record every small operation of every
step; at the sizes cells run at on a CPU (B = 16, H = 128), that bookkeeping and the
per-step products for the recurrent matrices' gradients cost more than the arithmetic.
A cell that writes the derivative of its step by hand gets a `fused` form that runs

    forward:   xp = project(x)                  (autograd as usual, all steps at once)
               state_t, y_t = step(xp_t, state_{t-1})  for t = 1..T, under no_grad,
               keeping per step only what the backward reads
    backward:  for t = T..1: d xp_t, d state_{t-1} = back(d state_t + d y_t, saved_t)
               dW_j = sum_t g_{j,t}^T r_{j,t}, one (G_j, B*T) x (B*T, K_j) product per matrix

where every recurrent matrix W_j (G_j, K_j) enters the step only as a product r_j W_j^T
and g_j is the gradient at that product's output. A cell opts in with three methods:

    manual_params() -> (matrices, vectors)
        the tensors the step reads, derived from the parameters with autograd once per
        sequence: matrices (G_j, K_j), and any other tensors (vectors, scalars)
    manual_step(xp_t, state, wt, vectors) -> (state, y, rs, saved)
        one step without autograd; wt[j] = matrices[j].T; y the output (B, output_size),
        or None when it is state[0]; rs the products' left operands r_j (B, K_j) in
        matrices' order; saved what `manual_back` reads
    manual_back(d_state, saved, matrices, vectors) -> (d_xp_t, d_state_prev, gs, d_vectors)
        d_state: the gradient of the step's new state (its output's included when y is
        None); d_y is added by the cell itself otherwise (it gets (d_state, d_y)); gs the
        gradients at the products' outputs (B, G_j); d_vectors one entry per vector (None
        where zero), any shape that sums to the vector's (a (B, n) contribution is summed
        over the batch after the loop)
    manual_project(x) -> xp   (optional) the projection the step reads, where it is not
        `project`'s (nas: without the biases, which its step adds as a vector)

Equal to the reference loop (the conformance suite checks outputs, states and gradients,
float64 gradcheck included). The backward runs without autograd; under create_graph its
`twice` replays `manual_step` through autograd (`manual_plain`), so it differentiates twice.
Under torch.compile it is the reference loop.

A cell may also name a C form of the same step (`manual_native() -> ops.native.cells.
NativeStep`): then on CPU float32/float64 tensors (`ops.backend.use_native`) the whole loop,
forward and backward, runs in C (`ops.native.cells.scan`); on any other device, with
RNNZOO_NATIVE=0, or when the C file cannot be built, this module's Python loop runs.
"""

from __future__ import annotations

import functools

import torch

from rnnzoo.ops import backend, first_order
from rnnzoo.ops.native.linear import weight_grad

__all__ = ["manual_loop", "manual_scan", "sigmoid_back", "tanh_back", "relu_back", "lstm_cell_back",
           "layer_norm", "layer_norm_back"]


def sigmoid_back(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """grad * out * (1 - out): the gradient through out = sigmoid(a), one kernel."""
    return torch.ops.aten.sigmoid_backward(grad, out)


def tanh_back(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """grad * (1 - out^2): the gradient through out = tanh(a), one kernel."""
    return torch.ops.aten.tanh_backward(grad, out)


def relu_back(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """grad where out = relu(a) > 0, else 0 (as autograd's relu)."""
    return torch.ops.aten.threshold_backward(grad, out, 0)


def layer_norm(x: torch.Tensor, norm, weight=None, bias=None) -> tuple[torch.Tensor, tuple]:
    """`norm` (an nn.LayerNorm over x's last dimension) applied to x, and the statistics
    (mean, 1/std) that `layer_norm_back` reads; weight, bias: tensors standing in for the
    norm's own (a step's `vectors`, so that `manual_plain` differentiates in them)."""
    out, mean, rstd = torch.native_layer_norm(
        x, norm.normalized_shape, norm.weight if weight is None else weight,
        norm.bias if bias is None else bias, norm.eps)
    return out, (mean, rstd)


def layer_norm_back(grad: torch.Tensor, x: torch.Tensor, stats: tuple, norm, weight=None,
                    bias=None) -> tuple[torch.Tensor, ...]:
    """The gradients of `layer_norm(x, norm, weight, bias)`: (dx, d weight, d bias), the last
    two summed over the batch."""
    return torch.ops.aten.native_layer_norm_backward(
        grad, x, norm.normalized_shape, *stats, norm.weight if weight is None else weight,
        norm.bias if bias is None else bias, [True, True, True])


def lstm_cell_back(dc: torch.Tensor, i, f, g, c_prev) -> tuple[torch.Tensor, ...]:
    """The gradients through c_t = f * c_{t-1} + i * g with i, f = sigmoid(.), g = tanh(.)
    (the LSTM's cell update, shared by its variants): dc (B, H), the activated gates and
    c_{t-1} -> (d a_i, d a_f, d a_g, d c_{t-1}) at the pre-activations."""
    return (sigmoid_back(dc * g, i), sigmoid_back(dc * c_prev, f), tanh_back(dc * i, g),
            dc * f)


def manual_plain(cell, n_state: int, n_mat: int, xp: torch.Tensor, *tensors):
    """`manual_scan`'s forward in plain differentiable ops (`cell.manual_step` step by step,
    recorded by autograd): xp (B, T, P), *state, *matrices, *vectors -> (outputs (B, T, out),
    *final state). The `twice` of the hand-written loops (`_ManualLoop`; the C loops of
    ops.native.cells can replay it too: their `manual_step` is the same step)."""
    state, mats, vecs = (tuple(tensors[:n_state]), tensors[n_state:n_state + n_mat],
                         tuple(tensors[n_state + n_mat:]))
    wt, outs = tuple(w.T for w in mats), []
    for xp_t in xp.unbind(1):
        state, y, _, _ = cell.manual_step(xp_t, state, wt, vecs)
        outs.append(state[0] if y is None else y)
    return (torch.stack(outs, 1), *state)


class _ManualLoop(first_order.Function):
    """(xp (B, T, P), *state, *matrices, *vectors) -> (outputs (B, T, out), *final state)."""

    @staticmethod
    def forward(ctx, cell, keep, n_state, n_mat, xp, *tensors):
        state, mats, vecs = (tensors[:n_state], tensors[n_state:n_state + n_mat],
                             tensors[n_state + n_mat:])
        wt = tuple(w.T for w in mats)
        outs, rs, saved = [], [[] for _ in mats], []
        y = None
        for xp_t in xp.unbind(1):
            state, y, r, s = cell.manual_step(xp_t, state, wt, vecs)
            outs.append(state[0] if y is None else y)
            if keep:  # no gradient wanted: nothing kept, memory O(1) in T
                for acc, r_j in zip(rs, r):
                    acc.append(r_j)
                saved.append(s)
        ctx.cell, ctx.n_state, ctx.saved = cell, n_state, saved
        ctx.rs = rs
        ctx.own_output = y is None
        ctx.save_for_backward(*mats, *vecs, xp, *tensors[:n_state])  # xp, state: for `twice`
        ctx.n_mat, ctx.n_vec = n_mat, len(vecs)
        return (torch.stack(outs, 1), *(s.clone() for s in state))

    @staticmethod
    def twice(ctx, *grads):  # under create_graph: autograd through the step loop
        n = ctx.n_mat + ctx.n_vec
        params, (xp, *state) = ctx.saved_tensors[:n], ctx.saved_tensors[n:]
        args = tuple(t if t is None else t.view_as(t) for t in (xp, *state, *params))  # aliases:
        # each input's own use only (first_order.replay through fn)
        return (None,) * 4 + first_order.replay(
            lambda *a: manual_plain(ctx.cell, ctx.n_state, ctx.n_mat, *a), args, grads,
            ctx.needs_input_grad[4:])

    @staticmethod
    def backward(ctx, d_out, *d_final):
        cell, saved = ctx.cell, ctx.saved
        params = ctx.saved_tensors[:ctx.n_mat + ctx.n_vec]
        mats, vecs = params[:ctx.n_mat], params[ctx.n_mat:]
        d_state = tuple(d_final)
        d_xp, gs = [], [[] for _ in mats]
        d_vecs: list = [None] * len(vecs)
        for t in range(len(saved) - 1, -1, -1):
            d_y = d_out[:, t]
            if ctx.own_output:
                d_state = (d_state[0] + d_y,) + d_state[1:]
                d_in = d_state
            else:
                d_in = (d_state, d_y)
            d_xp_t, d_state, g, dv = cell.manual_back(d_in, saved[t], mats, vecs)
            d_xp.append(d_xp_t)
            for acc, g_j in zip(gs, g):
                acc.append(g_j)
            for k, d in enumerate(dv):
                if d is not None:
                    d_vecs[k] = d if d_vecs[k] is None else d_vecs[k] + d
        d_xp.reverse()
        needs = ctx.needs_input_grad[5 + ctx.n_state:]
        d_mats = []
        for j, (w, g_j, r_j) in enumerate(zip(mats, gs, ctx.rs)):
            if not needs[j]:
                d_mats.append(None)
                continue
            g_j.reverse()
            d_mats.append(weight_grad(torch.stack(g_j), torch.stack(r_j)))
        d_vecs = [None if d is None or not need else d.sum_to_size(v.shape)
                  for d, v, need in zip(d_vecs, vecs, needs[len(mats):])]
        return (None, None, None, None, torch.stack(d_xp, 1), *d_state, *d_mats, *d_vecs)


def manual_loop(cell, x: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
    """The cell's loop with its hand-written backward. x: (B, T, input_size), state: tuple
    of (B, n_i) -> outputs (B, T, output_size), final state (see the module docstring)."""
    if torch.compiler.is_compiling():
        return cell.loop(x, state)
    mats, vecs = cell.manual_params()
    return manual_scan(cell, getattr(cell, "manual_project", cell.project)(x), state, mats, vecs)


def manual_scan(cell, xp: torch.Tensor, state: tuple, matrices: tuple, vectors: tuple
                ) -> tuple[torch.Tensor, tuple]:
    """`cell.manual_step` over the projections xp (B, T, P) from `state`, with its
    hand-written backward: for a cell that computes its own xp, matrices and vectors
    (`manual_loop` is this with `project` and `manual_params`)."""
    tensors = (xp, *state, *matrices, *vectors)
    keep = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if hasattr(cell, "manual_native") and backend.use_native(*tensors):
        from rnnzoo.ops.native import cells as native_cells
        done = native_cells.scan(cell, xp, state, matrices, vectors, keep,
                                 functools.partial(manual_plain, cell))
        if done is not None:
            return done
    out, *new = _ManualLoop.apply(cell, keep, len(state), len(matrices), *tensors)
    return out, tuple(new)
