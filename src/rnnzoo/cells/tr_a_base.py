"""Shared pieces of the torchrecurrent-catalogue cells (first half).

`HoistedCell` is a `Cell` whose step needs tensors derived from the parameters
only (an antisymmetric matrix A = W - W^T - gamma I, sigmoid(alpha), ...). It
computes them once per sequence in `loop` instead of once per step:

    w = cell.recurrent_weights()            # parameters -> per-sequence constants
    state = cell.recur_with(xp_t, state, w)  # one step

`recur(xp_t, state)` (the `Cell` protocol) is `recur_with(xp_t, state,
recurrent_weights())`, so both paths run the same maths.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rnnzoo.cells.base import Cell

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid,
               "identity": lambda t: t}


def activation(arg: str, value: str, allowed=tuple(ACTIVATIONS)):
    """The elementwise function named `value` (an option called `arg`)."""
    if value not in allowed:
        raise ValueError(f"{arg} must be one of {list(allowed)}, got {value!r}")
    return ACTIVATIONS[value]


def check_positive(arg: str, value, allow_zero: bool = False) -> float:
    """A finite float > 0 (or >= 0), else ValueError naming `arg`."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{arg} must be a finite number {'>= 0' if allow_zero else '> 0'}, "
                         f"got {value!r}")
    return float(value)


def uniform_(t: torch.Tensor, fan: int) -> torch.Tensor:
    """torch.nn.RNN's default: U(-1/sqrt(fan), 1/sqrt(fan))."""
    bound = 1 / math.sqrt(fan)
    return nn.init.uniform_(t, -bound, bound)


class HoistedCell(Cell):
    """A cell whose per-sequence constants are computed once per `loop`."""

    def recurrent_weights(self) -> tuple:
        return ()

    def recur_with(self, xp_t: torch.Tensor, state: tuple, w: tuple) -> tuple:
        raise NotImplementedError

    def recur(self, xp_t, state):
        return self.recur_with(xp_t, state, self.recurrent_weights())

    def loop(self, x, state):
        w = self.recurrent_weights()
        outputs = []
        for xp_t in self.project(x).unbind(1):
            state = self.recur_with(xp_t, state, w)
            outputs.append(self.output(state))
        return torch.stack(outputs, 1), state


def linear(x: torch.Tensor, weight: torch.Tensor, *biases) -> torch.Tensor:
    """x W^T plus the sum of the biases that are not None (b_ih + b_hh folded in once)."""
    xp = x @ weight.T
    biases = [b for b in biases if b is not None]
    return xp + sum(biases[1:], biases[0]) if biases else xp


def maybe_bias(size: int, bias: bool) -> nn.Parameter | None:
    return nn.Parameter(torch.zeros(size)) if bias else None
