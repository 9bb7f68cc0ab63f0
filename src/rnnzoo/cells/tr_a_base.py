"""Shared pieces of the torchrecurrent-catalogue cells (first half).

On CPU at the sizes these cells are used at, a step costs about the number of
tensor operations it launches (each one also records an autograd node), not
its arithmetic. `HoistedCell` lets a step launch only what depends on the
state: constants derived from the parameters are computed once per sequence,
and the input projection arrives already split into its pieces.
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
    """A cell that hoists out of its step whatever does not change from step to step.

    - `recurrent_weights(batch_size)` -> tuple: tensors derived from the parameters
      only, computed once per sequence (`loop`) instead of once per step. Vector
      and scalar parameters that multiply the state are expanded to (B, H) here:
      autograd then sums their gradient over the batch once per sequence, not
      once per step.
    - `xp_sizes`: the widths of the pieces of the input projection (default: one
      piece); `loop` splits the projection of the whole sequence once, so a step
      receives its pieces without slicing.

        w = cell.recurrent_weights(batch_size)
        state = cell.recur_with(xp_parts_t, state, w)   # xp_parts_t: tuple of (B, n_i)

    `recur(xp_t, state)` (the `Cell` protocol) splits xp_t and calls `recur_with`
    with `recurrent_weights()`, so the reference loop and a single step run the
    same maths.
    """

    xp_sizes: tuple[int, ...] | None = None

    def recurrent_weights(self, batch_size: int) -> tuple:
        return ()

    def recur_with(self, xp_parts: tuple, state: tuple, w: tuple) -> tuple:
        raise NotImplementedError

    def _split(self, xp: torch.Tensor) -> tuple:
        return (xp,) if self.xp_sizes is None else xp.split(self.xp_sizes, -1)

    def recur(self, xp_t, state):
        return self.recur_with(self._split(xp_t), state, self.recurrent_weights(xp_t.shape[0]))

    def loop(self, x, state):
        w = self.recurrent_weights(x.shape[0])
        outputs = []
        steps = zip(*(part.unbind(1) for part in self._split(self.project(x))))
        for xp_parts in steps:
            state = self.recur_with(xp_parts, state, w)
            outputs.append(self.output(state))
        return torch.stack(outputs, 1), state


def linear(x: torch.Tensor, weight: torch.Tensor, *biases) -> torch.Tensor:
    """x W^T plus the sum of the biases that are not None (b_ih + b_hh folded in once)."""
    xp = x @ weight.T
    biases = [b for b in biases if b is not None]
    return xp + sum(biases[1:], biases[0]) if biases else xp


def maybe_bias(size: int, bias: bool) -> nn.Parameter | None:
    return nn.Parameter(torch.zeros(size)) if bias else None
