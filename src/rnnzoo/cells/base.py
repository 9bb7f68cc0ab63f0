"""The cell protocol: one step h_t = f(h_{t-1}, x_t) of a nonlinear RNN.

A cell splits its step into the part that depends on the input only, computed
for all steps in one matrix product, and the recurrence proper:

    xp = cell.project(x)                 # (B, T, input_size) -> (B, T, P), all steps at once
    state = cell.recur(xp[:, t], state)  # one step; state is a tuple of (B, n_i) tensors
    h_t = cell.output(state)             # (B, output_size), by default state[0]

On CPU at the sizes cells are used at, a step costs about the number of tensor
operations it launches (each also records an autograd node), not its
arithmetic. So a cell may write its step as `transition` instead of `recur`,
with what does not change from step to step taken out of the loop:

    w = cell.weights(batch_size)                 # tensors derived from the parameters,
                                                 # once per sequence (transposed matrices,
                                                 # vectors expanded to (B, H), ...)
    parts = xp_t.split(cell.pieces(), -1)        # the projection's pieces, split once for
                                                 # all steps (pieces() None: one piece)
    state = cell.transition(parts, state, w)
    h_t = cell.output(state, w)

A cell defines `recur` or `transition`; each defaults to the other, so the
reference loop, a single `step` and `ops.newton` run the same maths either way.

`loop(x, state)` runs the whole sequence (the reference); `forward(x, state,
fused=False)` dispatches to `loop`, `fused` or `step` (2-D x). A cell that has a
faster whole-sequence form defines `fused(x, state) -> (outputs, state)`; its
layer then gets a `fused` mode. `fused_loop` below is one such form, shared by
the cells whose recurrent matrix enters their step as a `RecurrentMatrix`;
`cells.manual.manual_loop` is the other, for cells that write their step's derivative by
hand (the loop without autograd, every recurrent matrix's gradient in one product).
`jacobian_structure` ("dense", "diag" or ("block", k)) describes d state_t /
d state_{t-1} for the parallel-in-time solver.

Cells register themselves in `registry.CELLS` with the `cell` decorator;
`layers/classic.py` turns every entry into a registered layer.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo import checks
from rnnzoo.ops import backend, first_order
from rnnzoo.ops.native.linear import weight_grad
from rnnzoo.registry import CELLS


def cell(name: str, *, paper: str, tiny: dict | None = None, tolerances: dict | None = None):
    """Class decorator: add a `Cell` subclass to `registry.CELLS` under `name`."""
    return CELLS.register(name, paper=paper, family="classic", tiny=dict(tiny or {}),
                          tolerances=dict(tolerances or {}))


class Cell(nn.Module):
    """Base class of the nonlinear cells. Subclasses set `state_sizes` in __init__ and
    implement `project` and either `recur` or `transition` (with `weights` and `pieces`);
    `output` too if the output is not state[0]."""

    jacobian_structure: str | tuple = "dense"

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size = checks.positive_int("input_size", input_size)
        self.hidden_size = checks.positive_int("hidden_size", hidden_size)
        self.state_sizes: tuple[int, ...] = (hidden_size,)

    @property
    def output_size(self) -> int:
        return self.state_sizes[0]

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> tuple:
        return tuple(torch.zeros(batch_size, n, device=device, dtype=dtype)
                     for n in self.state_sizes)

    # -- the protocol ----------------------------------------------------------------------
    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(..., input_size) -> (..., P): everything that depends on the input only."""
        raise NotImplementedError

    def recur(self, xp_t: torch.Tensor, state: tuple) -> tuple:
        """One step: xp_t (B, P), state -> next state."""
        return self.transition(self._split(xp_t), state, self.weights(xp_t.shape[0]))

    def output(self, state: tuple, w: tuple | None = None) -> torch.Tensor:
        """The step's output (B, output_size); `w` is `weights()` when the loop has it."""
        return state[0]

    # -- the hoisting hook -----------------------------------------------------------------
    def weights(self, batch_size: int) -> tuple:
        """What `transition` reads from the parameters, computed once per sequence."""
        return ()

    def pieces(self) -> tuple[int, ...] | None:
        """The widths of `project`'s pieces, in order (None: one piece)."""
        return None

    def transition(self, parts: tuple, state: tuple, w: tuple) -> tuple:
        """One step from the projection's pieces (B, n_i) and `weights()` -> next state."""
        return self.recur(parts[0] if len(parts) == 1 else torch.cat(parts, -1), state)

    def _split(self, xp: torch.Tensor) -> tuple:
        pieces = self.pieces()
        return (xp,) if pieces is None else xp.split(pieces, -1)

    # -- running ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, state: tuple, fused: bool = False
                ) -> tuple[torch.Tensor, tuple]:
        """x: (B, T, input_size) -> outputs (B, T, output_size), state: the reference loop,
        or `fused` (the whole-sequence form). x: (B, input_size): one `step`."""
        if x.dim() == 2:
            return self.step(x, state)
        # under torch.func the loop: torch's fused RNN kernels have no batching rule
        if fused and not backend.transforming():
            return self.fused(x, state)
        return self.loop(x, state)

    def loop(self, x: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        """The reference loop. x: (B, T, input_size) -> outputs (B, T, output_size), state."""
        return self._run(self.project(x), state, self.weights(x.shape[0]))

    def _run(self, xp: torch.Tensor, state: tuple, w: tuple) -> tuple[torch.Tensor, tuple]:
        outputs = []
        for parts in zip(*(piece.unbind(1) for piece in self._split(xp))):
            state = self.transition(parts, state, w)
            outputs.append(self.output(state, w))
        return torch.stack(outputs, 1), state

    def step(self, x_t: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        """x_t: (B, input_size) -> output (B, output_size), next state."""
        state = self.recur(self.project(x_t), state)
        return self.output(state), state


# -- the fused mode of cells with one recurrent matrix ---------------------------------------
class RecurrentMatrix:
    """`mm(r, xp) = xp + r W^T` for a recurrent matrix W (G, K), W^T taken once per sequence.

    A cell whose matrix enters its step only this way, added to the whole of the step's
    projection, puts one first in its `weights()`; `fused_loop` then runs the same step
    with W's gradient deferred."""

    def __init__(self, matrix: torch.Tensor):
        self.matrix, self.transposed = matrix, matrix.T

    def __call__(self, r: torch.Tensor, xp: torch.Tensor) -> torch.Tensor:
        return torch.addmm(xp, r, self.transposed)


class _RecordedMatrix(RecurrentMatrix):
    """xp + r W^T with W detached, remembering each r for `_DeferredWeightGrad`."""

    def __init__(self, matrix: torch.Tensor):
        self.matrix, self.transposed, self.inputs = matrix, matrix.detach().T, []

    def __call__(self, r, xp):
        self.inputs.append(r)
        return torch.addmm(xp, r, self.transposed)


class _Loop(nn.Module):
    """cell._run over xp with the recurrent matrix W (G, K) given as a tensor: the form a
    fused loop's `twice` differentiates (through torch.func.functional_call, the cell's
    parameters as the node's inputs)."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, xp, W, state):
        w = self.cell.weights(xp.shape[0])
        y, state = self.cell._run(xp, state, (RecurrentMatrix(W), *w[1:]))
        return y, *state


class _DeferredWeightGrad(first_order.Function):
    """The loop of `fused_loop` as one node: cell._run on the projections xp (B, T, G) and
    the state, with the recurrent matrix W (G, K) detached inside (pre_t = xp_t + r_t W^T, r_t
    recorded by the loop), its graph built in forward on detached inputs and run back in
    backward, where W's gradient comes as one matrix product after it, dW = sum_t dxp_t^T r_t,
    instead of one per step (torch's fused RNNs do the same). The cell's parameters are
    inputs too (those its step reads directly get their gradients from the loop's graph).
    Under create_graph its `twice` replays the cell's loop with W itself (`_Loop`, the
    parameters swapped in by torch.func.functional_call)."""

    @staticmethod
    def forward(ctx, cell, mm, w_rest, n_state, xp, W, *rest):
        state, params = rest[:n_state], rest[n_state:]
        with torch.enable_grad():
            xl = xp.detach().requires_grad_()
            sl = [s.detach().requires_grad_(n)
                  for s, n in zip(state, ctx.needs_input_grad[6:6 + n_state])]
            y, st = cell._run(xl, tuple(sl), (mm, *w_rest))
        ctx.inner = (y, st, xl, sl, mm)
        ctx.cell, ctx.n_state = cell, n_state
        ctx.save_for_backward(xp, W, *state, *params)
        return (y.detach(), *(t.detach() for t in st))

    @staticmethod
    def twice(ctx, *grads):
        cell, n = ctx.cell, ctx.n_state
        names = [name for name, _ in cell.named_parameters()]

        def loop(xp, W, *rest):
            swapped = {f"cell.{k}": p for k, p in zip(names, rest[n:])}
            return torch.func.functional_call(_Loop(cell), swapped, (xp, W, tuple(rest[:n])))

        return (None,) * 4 + first_order.replay(loop, ctx.saved_tensors, grads,
                                                 ctx.needs_input_grad[4:])

    @staticmethod
    def backward(ctx, dy, *dstate):
        y, st, xl, sl, mm = ctx.inner
        n = ctx.n_state
        params = ctx.saved_tensors[2 + n:]
        need_s = ctx.needs_input_grad[6:6 + n]
        need_p = ctx.needs_input_grad[6 + n:]
        wrt = [xl, *(s for s, k in zip(sl, need_s) if k), *(p for p, k in zip(params, need_p) if k)]
        # retained: a backward run again (retain_graph, gradcheck) runs it again
        got = iter(torch.autograd.grad([y, *st], wrt, [dy, *dstate], allow_unused=True,
                                       retain_graph=True))
        dxp = next(got)
        ds = [next(got) if k else None for k in need_s]
        dp = [next(got) if k else None for k in need_p]
        dW = weight_grad(dxp, torch.stack(mm.inputs, -2)) if ctx.needs_input_grad[5] else None
        return (None, None, None, None, dxp if ctx.needs_input_grad[4] else None, dW, *ds, *dp)


def fused_loop(cell: Cell, x: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
    """`cell.loop` with the gradient of its recurrent matrix deferred to one matrix product.

    The cell's `weights()` must start with a `RecurrentMatrix` and `pieces()` be None (the
    matrix's product is added to the whole projection). Equal to `cell.loop` (the
    conformance suite checks it, gradients included), with one matrix product per step
    less in the backward pass. Under torch.compile it is `cell.loop`: the recorded inputs
    reach the backward through a side channel that a traced graph cannot hold."""
    if torch.compiler.is_compiling():
        return cell.loop(x, state)
    w = cell.weights(x.shape[0])
    mm = _RecordedMatrix(w[0].matrix)
    xp = cell.project(x)
    if torch.is_grad_enabled() and mm.matrix.requires_grad:
        y, *state = _DeferredWeightGrad.apply(cell, mm, tuple(w[1:]), len(state), xp, mm.matrix,
                                              *state, *cell.parameters())
        return y, tuple(state)
    return cell._run(xp, state, (mm,) + tuple(w[1:]))
