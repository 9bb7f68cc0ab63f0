"""Every cell of `rnnzoo.cells` as a registered token mixer (family `classic`).

A `CellLayer` runs its cell over the sequence: the input projection for all
steps in one matrix product, then the recurrence. Modes: `sequential` (the
cell's loop, the reference), `fused` where the cell has a whole-sequence
kernel (either may run as a compiled step or CUDA graphs: cells/steps.py, chosen by
ops.backend.step_runner), and `newton` / `quasi` (all steps solved at once by `ops.newton`) for
cells with diagonal or block Jacobians and for the dense cells that declare
them (lstm, gru, rnn_tanh); `ops.newton.parallel_rnn` takes any cell. The
recurrence always runs in float32 (float64 for float64 input), whatever the
parameters' dtype; a linear map takes the cell's output back to d_model when
the widths differ.

    x: (B, T, d_model) -> y: (B, T, d_model), state: the cell's

The layers are made here, one per cell of `registry.CELLS`, when the registry
imports this module (its first read of `LAYERS`); they live only in the registry.
"""

from __future__ import annotations

from torch import nn
from torch.func import functional_call

from rnnzoo.cells import steps
from rnnzoo.cells.base import Cell
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.ops.backend import step_runner
from rnnzoo.ops.native.linear import Linear
from rnnzoo.ops.newton import call_cell, parallel_rnn
from rnnzoo.registry import CELLS, register

PARALLEL_MODES = ("newton", "quasi")
NEWTON_READS = ("the solver's convergence test reads the residual on the host after each "
                "iteration (it stops, or falls back to the loop, by that value)")


class CellLayer(RecurrentLayer):
    """x: (B, T, d_model) -> y: (B, T, d_model). The state is the cell's: one tensor
    (B, hidden) or a tuple of them (LSTM: (h, c)). Options go to the cell."""

    cell_cls: type[Cell]
    parallel_options: dict | None = None  # extra `parallel_rnn` options (max_iter, atol, ...)
    solve_info = None  # the last newton/quasi run's `SolveInfo`

    def __init__(self, d_model: int, hidden_size: int | None = None, **cell_options):
        super().__init__(d_model)
        self.cell = self.cell_cls(d_model, hidden_size or d_model, **cell_options)
        self.hidden_size = self.cell.output_size
        self.out_proj = Linear(self.hidden_size, d_model) if self.hidden_size != d_model \
            else nn.Identity()

    def init_state(self, batch_size, device=None, dtype=None):
        s = self.cell.init_state(batch_size, device=device, dtype=state_dtype(dtype))
        return s[0] if len(s) == 1 else s

    def _call_cell(self, x, state, fused=False, method=None):
        """Run the cell in the compute dtype, casting its parameters if they differ."""
        cd = compute_dtype(x)
        state = state if isinstance(state, tuple) else (state,)
        params = dict(self.cell.named_parameters())
        if method is not None:  # all steps at once: newton / quasi
            cast = None if all(p.dtype == cd for p in params.values()) else \
                {k: v.to(cd) for k, v in params.items()}
            traj, self.solve_info = parallel_rnn(self.cell, x.to(cd), state, method=method,
                                                 params=cast, **(self.parallel_options or {}))
            out = call_cell(self.cell, "output", tuple(s.flatten(0, 1) for s in traj),
                            params=cast).unflatten(0, x.shape[:2])
            new = tuple(s[:, -1] for s in traj)
        elif all(p.dtype == cd for p in params.values()):  # the loop, compiled or graphed
            out, new = steps.run(self.cell, x.to(cd), state, fused,
                                 how=step_runner(self.name, x))
        else:
            cast = {k: v.to(cd) for k, v in params.items()}
            out, new = functional_call(self.cell, cast, (x.to(cd), state, fused))
        new = tuple(new)
        return self.out_proj(out.to(x.dtype)), (new[0] if len(new) == 1 else new)

    def _forward(self, x, state, mode):
        if mode in PARALLEL_MODES:
            return self._call_cell(x, state, method=mode)
        return self._call_cell(x, state, fused=mode == "fused")

    def auto_mode(self, x):
        """fused where the cell has it; newton for diagonal/block cells on long sequences
        on an accelerator (on CPU the loop measured faster: benchmarks/newton.py)."""
        if "fused" in self.modes:
            return "fused"
        if "newton" in self.modes and self.cell.jacobian_structure != "dense" \
                and x.device.type != "cpu" and x.shape[1] >= 256:
            return "newton"
        return "sequential"

    def _step(self, x_t, state):
        return self._call_cell(x_t, state)


def _parallel_modes(cls) -> tuple[str, ...]:
    """A cell's own `parallel_modes`, else newton/quasi for diagonal and block-diagonal
    Jacobians (a dense cell opts in by declaring them: each Newton step costs k JVPs and
    k x k products per step, which on CPU measured slower than the loop)."""
    if hasattr(cls, "parallel_modes"):
        return tuple(cls.parallel_modes)
    return PARALLEL_MODES if cls.jacobian_structure != "dense" else ()


def _layer_class(info) -> type[CellLayer]:
    """The `CellLayer` subclass that runs the cell `info.cls` (its modes from the cell)."""
    modes = ("sequential",) + (("fused",) if hasattr(info.cls, "fused") else ()) \
        + _parallel_modes(info.cls)
    doc = f"{info.cls.__name__} cell as a token mixer.\n\n{info.cls.__doc__ or ''}"
    reads = {m: NEWTON_READS for m in modes if m in PARALLEL_MODES}
    return type(f"{info.cls.__name__}Layer", (CellLayer,),
                {"cell_cls": info.cls, "modes": modes, "__doc__": doc,
                 "host_reads": {**CellLayer.host_reads, **reads}, "__module__": __name__})


def _register_cells() -> None:
    """One registered layer per cell (the registry imports this module when it first
    reads `LAYERS`)."""
    for info in CELLS.values():
        cls = _layer_class(info)
        register(info.name, family="classic", paper=info.paper,
                 tiny={"d_model": 6, **info.tiny}, tolerances=info.tolerances)(cls)
        # a module attribute, so that pickle (torch.save of a whole model, spawned workers)
        # finds the class by its module and name
        globals()[cls.__name__] = cls


_register_cells()

__all__ = ["CellLayer"]
