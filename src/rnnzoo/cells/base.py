"""The cell protocol: one step h_t = f(h_{t-1}, x_t) of a nonlinear RNN.

A cell splits its step into the part that depends on the input only, computed
for all steps in one matrix product, and the recurrence proper:

    xp = cell.project(x)                 # (B, T, input_size) -> (B, T, P), all steps at once
    state = cell.recur(xp[:, t], state)  # one step; state is a tuple of (B, n_i) tensors
    h_t = cell.output(state)             # (B, output_size), by default state[0]

`loop(x, state)` runs the whole sequence with the plain loop (the reference);
`forward(x, state, fused=False)` dispatches to `loop`, `fused` or `step` (2-D x).
A cell that has a whole-sequence kernel (torch's fused LSTM/GRU/RNN) defines
`fused(x, state) -> (outputs, state)`; its layer then gets a `fused` mode.
`jacobian_structure` ("dense", "diag" or ("block", k)) describes d state_t / d
state_{t-1} for the parallel-in-time solver.

Cells register themselves in `registry.CELLS` with the `cell` decorator;
`layers/classic.py` turns every entry into a registered layer.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.registry import CELLS


def cell(name: str, *, paper: str, tiny: dict | None = None, tolerances: dict | None = None):
    """Class decorator: add a `Cell` subclass to `registry.CELLS` under `name`."""
    return CELLS.register(name, paper=paper, family="classic", tiny=dict(tiny or {}),
                          tolerances=dict(tolerances or {}))


class Cell(nn.Module):
    """Base class of the nonlinear cells. Subclasses set `state_sizes` in __init__
    and implement `project` and `recur` (and `output` if the output is not state[0])."""

    jacobian_structure: str | tuple = "dense"

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        for arg, v in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{arg} must be a positive int, got {v!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.state_sizes: tuple[int, ...] = (hidden_size,)

    @property
    def output_size(self) -> int:
        return self.state_sizes[0]

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> tuple:
        return tuple(torch.zeros(batch_size, n, device=device, dtype=dtype)
                     for n in self.state_sizes)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def recur(self, xp_t: torch.Tensor, state: tuple) -> tuple:
        raise NotImplementedError

    def output(self, state: tuple) -> torch.Tensor:
        return state[0]

    def forward(self, x: torch.Tensor, state: tuple, fused: bool = False
                ) -> tuple[torch.Tensor, tuple]:
        """x: (B, T, input_size) -> outputs (B, T, output_size), state: the reference loop,
        or `fused` (the whole-sequence kernel). x: (B, input_size): one `step`."""
        if x.dim() == 2:
            return self.step(x, state)
        if fused:
            return self.fused(x, state)
        return self.loop(x, state)

    def loop(self, x: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        """The reference loop. x: (B, T, input_size) -> outputs (B, T, output_size), state."""
        outputs = []
        for xp_t in self.project(x).unbind(1):
            state = self.recur(xp_t, state)
            outputs.append(self.output(state))
        return torch.stack(outputs, 1), state

    def step(self, x_t: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        """x_t: (B, input_size) -> output (B, output_size), next state."""
        state = self.recur(self.project(x_t), state)
        return self.output(state), state
