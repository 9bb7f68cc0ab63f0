"""A cell's step loop with fewer kernel launches: a compiled step, or the loop as CUDA graphs.

The reference loop (cells/base.py) runs h_t = f(h_{t-1}, x_t) one step at a time from
Python; on a GPU each step's handful of small kernels is launched separately (and again in
the backward pass), so a classic cell without a fused kernel is bound by launches, not
arithmetic (issue 12 measured mgu 725 ms against cuDNN LSTM's 69 ms at B=8, T=2048, H=512).
Two remedies, for any registered cell, with the loop's numbers:

    run(cell, x, state, fused=False, how="loop") -> (outputs (B, T, out), state)

"compiled": `torch.compile` of one step, state_t = transition(parts_t, state_{t-1}, w) and
its output, so each step is one compiled graph (on CUDA, inductor fuses the step's pointwise
work into a kernel or two); the loop stays in Python, the projection and `weights()` are
computed once as in the reference. Compiled once per cell (per input shape and dtype, by
dynamo's guards). If compiling fails (no C++ compiler for the CPU backend, an operation
dynamo cannot trace...), the step falls back to eager with one warning per cell class.
Each call's first step also runs eagerly (without gradient) and the compiled one must agree
with it to sqrt(eps) of the dtype, relative to the state's scale; a step that compiled to
other values is dropped the same way (on an H200 inductor compiled ln_lstm's step to wrong
values, docs/gpu.md). The cell's `fused` form is not compiled: compiled always means the
reference loop.

"graph": the whole call `cell(x, state, fused)`, forward and backward, captured as two CUDA
graphs (torch.cuda.make_graphed_callables; forward only when no gradient is needed) once
per (shapes, dtypes, which inputs need gradients, grad mode, train/eval) and replayed: T
steps cost one graph launch each way. The inputs are copied into static buffers
(`static_args`) and the outputs copied out. A graph's backward reads the activations of
its latest replay, so a second forward of the same cell at the same shapes before the
first one's backward makes that backward raise (one forward per backward, as in training
loops; `how="loop"` for anything else). CUDA only: other tensors are refused.

The choice is `rnnzoo.ops.backend.step_runner` (force_steps, RNNZOO_STEPS, AUTO_STEPS);
`layers/classic.py` asks it for the reference ("sequential") and fused modes.
"""

from __future__ import annotations

import warnings
import weakref

import torch
from torch import nn

from rnnzoo.cells.base import Cell
from rnnzoo.ops import first_order
from rnnzoo.ops.backend import STEPS

__all__ = ["run", "compiled_loop", "graph_loop", "static_args", "graph_key"]


def run(cell: Cell, x: torch.Tensor, state: tuple, fused: bool = False, how: str = "loop"
        ) -> tuple[torch.Tensor, tuple]:
    """`cell(x, state, fused)` run the way `how` says (see the module docstring)."""
    if how not in STEPS:
        raise ValueError(f"steps: how must be one of {STEPS}, got {how!r}")
    if x.dim() == 2 or how == "loop" or (how == "compiled" and fused):
        return cell(x, state, fused)
    if how == "compiled":
        return compiled_loop(cell, x, state)
    return graph_loop(cell, x, state, fused)


# -- a compiled step ---------------------------------------------------------------------
COMPILE_OPTIONS: dict = {"dynamic": False}  # torch.compile's options (the tests pick a backend)
_compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # cell -> compiled step
_failed: set[type] = set()  # cell classes whose step did not compile (warned once each)


def _step(cell: Cell):
    def step(parts, state, w):
        state = cell.transition(parts, state, w)
        return state, cell.output(state, w)
    return step


def compiled_loop(cell: Cell, x: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
    """`cell.loop(x, state)` with each step a torch.compile'd graph (eager on failure).
    x: (B, T, input_size), state: tuple of (B, n_i) -> outputs (B, T, output_size), state."""
    eager = _step(cell)
    step = eager if type(cell) in _failed else _compiled.get(cell)
    if step is None:
        step = _compiled[cell] = torch.compile(eager, **COMPILE_OPTIONS)
    w = cell.weights(x.shape[0])
    outputs = []
    for t, parts in enumerate(zip(*(piece.unbind(1) for piece in cell._split(cell.project(x))))):
        if step is not eager:
            try:
                new, y = step(parts, state, w)
                if t == 0:
                    _check_first_step(eager, parts, state, w, (*new, y))
                state = new
                outputs.append(y)
                continue
            except Exception as e:  # compile failure or wrong values: warn once, go eagerly
                _failed.add(type(cell))
                _compiled.pop(cell, None)
                warnings.warn(f"steps: the {type(cell).__name__} step did not compile "
                              f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200]}); "
                              "running it eagerly", RuntimeWarning, stacklevel=2)
                step = eager
        state, y = eager(parts, state, w)  # an error of the cell itself surfaces here
        outputs.append(y)
    return torch.stack(outputs, 1), state


class MiscompiledStep(RuntimeError):
    """The compiled step's values differ from the eager step's."""


def _check_first_step(eager, parts, state, w, got) -> None:
    """Raises MiscompiledStep unless `got` (the compiled step's new state and output) equals
    the eager step's to sqrt(eps) of its dtype, relative to 1 + its largest magnitude."""
    with torch.no_grad():
        new, y = eager(parts, state, w)
    for a, b in zip(got, (*new, y)):
        tol = torch.finfo(b.dtype).eps ** 0.5 if b.is_floating_point() else 0.0
        err = (a.detach() - b).abs().max()
        if not bool(err <= tol * (1 + b.abs().max())):
            raise MiscompiledStep(f"the compiled step's values differ from the eager step's "
                                  f"by {err.item():.3g} at the first step")


# -- the loop as CUDA graphs ---------------------------------------------------------------
class _Call(nn.Module):
    """(x, *state) -> (outputs, *state) of `cell(x, state, fused)`: the captured callable
    (its parameters are the cell's, so the graphed backward returns their gradients)."""

    def __init__(self, cell: Cell, fused: bool):
        super().__init__()
        self.cell, self.fused = cell, fused

    def forward(self, x, *state):
        out, new = self.cell(x, tuple(state), self.fused)
        return (out, *new)


def _needs_grad(cell: Cell, tensors) -> bool:
    return torch.is_grad_enabled() and (any(t.requires_grad for t in tensors)
                                        or any(p.requires_grad for p in cell.parameters()))


def graph_key(cell: Cell, x: torch.Tensor, state: tuple, fused: bool) -> tuple:
    """What a captured graph is specific to: every input's shape, dtype, device and
    requires_grad, which parameters need gradients, grad mode, train/eval, fused."""
    ins = (x, *state)
    return (tuple((tuple(t.shape), t.dtype, str(t.device), t.requires_grad) for t in ins),
            tuple(p.requires_grad for p in cell.parameters()), _needs_grad(cell, ins),
            cell.training, bool(fused))


def static_args(tensors) -> tuple[torch.Tensor, ...]:
    """The capture's static input buffers: a fresh contiguous copy of each tensor (same
    shape, dtype, device, values), detached, requiring grad where the input does."""
    return tuple(t.detach().clone(memory_format=torch.contiguous_format)
                 .requires_grad_(t.requires_grad) for t in tensors)


class _Entry:
    """One capture: `call(*inputs) -> outputs` and how many replays it has run."""

    def __init__(self, call, grad: bool):
        self.call, self.grad, self.generation = call, grad, 0


class _Fresh(first_order.Function):
    """Copies the graph's outputs out of its static buffers; in the backward, refuses when
    the graph was replayed again since (its saved activations are no longer this call's).
    First order only: the captured backward replays a recorded graph (create_graph raises)."""

    @staticmethod
    def forward(ctx, entry, generation, *outs):
        ctx.entry, ctx.generation = entry, generation
        return tuple(o.clone() for o in outs)

    @staticmethod
    def backward(ctx, *grads):
        if ctx.entry.generation != ctx.generation:
            raise RuntimeError("steps 'graph': this cell was run again at the same shapes before "
                               "the backward of an earlier call; one forward per backward, or "
                               "use the 'loop' runner")
        return (None, None, *grads)


_graphs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # cell -> {key: _Entry}


def _capture_forward(module: nn.Module, static: tuple):
    """Forward-only capture (no gradient needed): warm up on a side stream, capture once."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            module(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = module(*static)

    def call(*inputs):
        for buf, t in zip(static, inputs):
            buf.copy_(t)
        graph.replay()
        return outs
    return call


def _check_cuda(x: torch.Tensor, state: tuple) -> None:
    bad = [t.device for t in (x, *state) if t.device.type != "cuda"]
    if bad:
        raise ValueError(f"steps 'graph': CUDA graphs need CUDA tensors, got a tensor on "
                         f"{bad[0]} (use the 'loop' or 'compiled' runner there)")


def graph_loop(cell: Cell, x: torch.Tensor, state: tuple, fused: bool = False
               ) -> tuple[torch.Tensor, tuple]:
    """`cell(x, state, fused)` replayed from CUDA graphs captured for these shapes.
    x: (B, T, input_size) on CUDA, state: tuple of (B, n_i) on CUDA."""
    _check_cuda(x, state)
    state = tuple(state)
    key = graph_key(cell, x, state, fused)
    entries = _graphs.setdefault(cell, {})
    entry = entries.get(key)
    if entry is None:
        module, static = _Call(cell, fused), static_args((x, *state))
        if key[2]:
            call = torch.cuda.make_graphed_callables(module, static, allow_unused_input=True)
        else:
            call = _capture_forward(module, static)
        entry = entries[key] = _Entry(call, key[2])
    outs = entry.call(x, *state)
    entry.generation += 1
    outs = _Fresh.apply(entry, entry.generation, *outs)
    return outs[0], tuple(outs[1:])
