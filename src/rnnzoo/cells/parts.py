"""The parts every cell file is built from: activations by name, biases, initialisations.

    self._phi = activation("nonlinearity", nonlinearity, ("tanh", "relu"))
    self.bias_ih = bias_param(3 * H, bias)          # zeros, or None when bias=False
    xp = affine(x, self.weight_ih, self.bias_ih, self.bias_hh)
    uniform_init_(self, H)                          # torch.nn.RNN's U(-1/sqrt(H), 1/sqrt(H))
    glorot_init_(self)                              # Xavier-uniform matrices, zero biases

and `StackedGates`, the torch.nn.LSTM-style layout of weights most cells share.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo import checks
from rnnzoo.cells.base import Cell
from rnnzoo.ops.native.linear import linear


def identity(t: torch.Tensor) -> torch.Tensor:
    return t


_SIXTH = float(torch.tensor(1 / 6, dtype=torch.float32))  # torch's float 1/6, as a double


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """F.hardsigmoid (relu6(x + 3) / 6), differentiable twice in plain ops (torch.func
    included): its values, plus s - s.detach() (exactly 0) for s = x 1/6 on -3 < x < 3, whose
    gradient is aten.hardsigmoid_backward's product bit for bit and whose own derivative is
    0; torch does not implement hardsigmoid_backward's derivative. Saturates at +-inf as
    F.hardsigmoid does (1, 0), grad mode or not."""
    y = F.hardsigmoid(x)
    if not (torch.is_grad_enabled() and x.requires_grad):
        return y
    # x masked by where (not times a 0/1 mask: inf * 0 is NaN, and y + NaN would turn
    # hardsigmoid(+-inf) = 1 / 0 into NaN whenever x requires grad)
    s = torch.where((x > -3) & (x < 3), x, 0) * _SIXTH
    return y.detach() + (s - s.detach())


ACTIVATIONS = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "identity": identity,
    "hard_sigmoid": hard_sigmoid,  # torch's relu6(x + 3) / 6, differentiable twice
    "softplus": F.softplus,
}


def activation(option: str, name: str, allowed: tuple[str, ...] | None = None):
    """The function named `name` for constructor option `option` (one of `allowed`)."""
    return ACTIVATIONS[checks.choice(option, name, allowed or tuple(ACTIVATIONS))]


def bias_param(size: int, bias: bool) -> nn.Parameter | None:
    """A zero bias of `size` entries, or None when the cell has no biases (`bias` False)."""
    return nn.Parameter(torch.zeros(size)) if checks.flag("bias", bias) else None


def add_bias(t: torch.Tensor, *biases) -> torch.Tensor:
    """t plus the biases that are not None, summed first (b_ih + b_hh: one full-size add)."""
    biases = [b for b in biases if b is not None]
    return t + sum(biases[1:], biases[0]) if biases else t


def affine(x: torch.Tensor, weight: torch.Tensor, *biases) -> torch.Tensor:
    """x (..., I) W^T (W (G, I)) plus the biases that are not None (each (G,)), summed first:
    one `ops.native.linear` product with the bias added in place -> (..., G)."""
    biases = [b for b in biases if b is not None]
    return linear(x, weight, sum(biases[1:], biases[0]) if biases else None)


def uniform_init_(target: nn.Module | torch.Tensor, fan: int):
    """torch.nn.RNN's initialisation, U(-1/sqrt(fan), 1/sqrt(fan)), on a tensor or on every
    parameter of a module (in registration order); returns `target`."""
    bound = 1 / math.sqrt(fan)
    for p in target.parameters() if isinstance(target, nn.Module) else (target,):
        nn.init.uniform_(p, -bound, bound)
    return target


def glorot_init_(module: nn.Module) -> None:
    """Xavier-uniform (Glorot & Bengio 2010) for every 2-D `weight*` of the module itself,
    zeros for every `bias*`: the cells' default when their paper names none."""
    for name, p in module.named_parameters(recurse=False):
        if name.startswith("weight") and p.dim() == 2:
            nn.init.xavier_uniform_(p)
        elif name.startswith("bias"):
            nn.init.zeros_(p)


class StackedGates(Cell):
    """torch.nn.RNN/LSTM/GRU's parameter layout: the gates' maps stacked in one matrix.

    weight_ih (G*H, input_size), bias_ih (G*H,), G = `num_gates`; weight_hh (R*H,
    recurrent_size or H), bias_hh (R*H,), R = `recurrent_gates` (None: G); biases None
    without `bias`. `project` = W_ih x + b_ih + b_hh (R = G). The subclass initialises them."""

    num_gates = 1
    recurrent_gates: int | None = None

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 recurrent_size: int | None = None):
        super().__init__(input_size, hidden_size)
        G = self.num_gates * hidden_size
        R = (self.recurrent_gates or self.num_gates) * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(G, input_size))
        self.weight_hh = nn.Parameter(torch.empty(R, recurrent_size or hidden_size))
        self.bias_ih = bias_param(G, bias)
        self.bias_hh = bias_param(R, bias)

    def project(self, x):
        """(..., input_size) -> (..., G*H): W_ih x + b_ih + b_hh, every step at once."""
        return affine(x, self.weight_ih, self.bias_ih, self.bias_hh)
