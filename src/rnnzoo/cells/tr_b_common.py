"""Shared pieces of the second half of the torchrecurrent catalogue (files `tr_b_*`).

`glorot_init_` gives the default initialisation of these cells when their paper
names none: Glorot/Xavier-uniform for every weight matrix (Glorot & Bengio 2010),
zeros for every bias. `activation` turns an option such as `nonlinearity="tanh"`
into its function, with a clear error for an unknown name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.cells.base import Cell


def identity(t: torch.Tensor) -> torch.Tensor:
    return t


ACTIVATIONS = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "identity": identity,
    "hard_sigmoid": F.hardsigmoid,  # torch's relu6(x + 3) / 6
    "softplus": F.softplus,
}


def activation(option: str, name: str, allowed: tuple[str, ...] | None = None):
    """The function named `name` for constructor option `option`."""
    allowed = allowed or tuple(ACTIVATIONS)
    if name not in allowed:
        raise ValueError(f"{option} must be one of {allowed}, got {name!r}")
    return ACTIVATIONS[name]


def glorot_init_(module: nn.Module) -> None:
    """Xavier-uniform for every 2-D `weight*`, zeros for every `bias*` parameter."""
    for name, p in module.named_parameters(recurse=False):
        if name.startswith("weight") and p.dim() == 2:
            nn.init.xavier_uniform_(p)
        elif name.startswith("bias"):
            nn.init.zeros_(p)


def check_real(option: str, value, lo: float | None = None, hi: float | None = None) -> float:
    """A float option within [lo, hi] (bounds inclusive), else ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{option} must be a real number, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{option} must lie in [{lo}, {hi}], got {value!r}")
    return float(value)


def bias_param(size: int, bias: bool) -> nn.Parameter | None:
    """A zero bias of `size` entries, or None when the cell has no biases."""
    return nn.Parameter(torch.zeros(size)) if bias else None


def add_bias(t: torch.Tensor, *bs) -> torch.Tensor:
    """t plus every bias in `bs` that is not None."""
    for b in bs:
        if b is not None:
            t = t + b
    return t


class SplitCell(Cell):
    """A cell whose projected input comes in pieces and whose recurrent weights are
    prepared once per sequence, so that the time loop holds no slicing or transposing
    of parameters (each would add an autograd node, and a full-size zero-filled
    gradient, per step).

    Subclasses define `pieces()` (the widths of project's output, in order),
    `weights()` (a tuple of the tensors the step reads, e.g. transposed matrices)
    and `transition(parts, state, w)`; `out(state, w)` if the output is not state[0].
    `recur` and `output` (the protocol's one-step form) call the same `transition`/`out`.
    """

    def pieces(self) -> list[int]:
        raise NotImplementedError

    def weights(self) -> tuple:
        raise NotImplementedError

    def transition(self, parts: tuple, state: tuple, w: tuple) -> tuple:
        raise NotImplementedError

    def out(self, state: tuple, w: tuple) -> torch.Tensor:
        return state[0]

    def recur(self, xp_t, state):
        return self.transition(xp_t.split(self.pieces(), -1), state, self.weights())

    def output(self, state):
        return self.out(state, self.weights())

    def loop(self, x, state):
        w = self.weights()
        columns = [p.unbind(1) for p in self.project(x).split(self.pieces(), -1)]
        outputs = []
        for parts in zip(*columns):
            state = self.transition(parts, state, w)
            outputs.append(self.out(state, w))
        return torch.stack(outputs, 1), state
