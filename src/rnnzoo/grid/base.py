"""The 2-D layer contract, next to the 1-D one (docs/design.md section 2, docs/2d.md):

    y, state = layer2d(x, state=None, *, mode="auto")
    x: (batch, height, width, d_model) -> y: (batch, height, width, d_model)

`state` is a tensor or a tuple of tensors (each layer documents its own; kept in float32,
float64 for float64 input); `mode="auto"` picks the layer's fastest mode and every mode is
tested against the reference mode, "sequential" (a plain loop written for clarity). Bad
input raises one ValueError / TypeError naming the argument, what it got and what it needs.

Register a 2-D layer with `register_grid(name, paper=..., tiny=...)`; the registry
(`rnnzoo.registry.GRID_LAYERS`) imports every public module of rnnzoo.grid when first read.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.checks import positive_int
from rnnzoo.layers.base import owned_state
from rnnzoo.registry import GRID_LAYERS, Info


def register_grid(name: str, *, paper: str, tiny: dict | None = None):
    """Class decorator: register a `GridLayer` subclass as `name` in GRID_LAYERS."""
    def decorate(cls):
        GRID_LAYERS.add(Info(name, cls, family="grid", paper=paper, modes=tuple(cls.modes),
                             tiny=dict(tiny or {})))
        cls.name = name
        return cls
    return decorate


def create_grid(name: str, d_model: int, **options) -> "GridLayer":
    """The 2-D layer registered as `name`, for inputs of width `d_model`."""
    return GRID_LAYERS[name].cls(d_model=d_model, **options)


class GridLayer(nn.Module):
    """Base class: subclasses set `modes` (reference first) and implement `_forward`."""

    modes: tuple[str, ...] = ("sequential",)
    name = "?"

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = positive_int("d_model", d_model)

    def _forward(self, x: torch.Tensor, state, mode: str):
        raise NotImplementedError

    def init_state(self, batch_size, height, width, device=None, dtype=None):
        """The initial (left, top) border state of a (height, width) grid; None for a layer
        that takes no state."""
        return None

    def _check_state(self, state, x: torch.Tensor):
        """The state a layer accepts (None: its initial state): `init_state`'s shapes, moved
        to x's device and the state dtype."""
        B, X, Y, _ = x.shape
        init = self.init_state(B, X, Y, device=x.device, dtype=x.dtype)
        if init is None:
            if state is not None:
                raise ValueError(f"2-D layer {self.name!r} takes no initial state, got "
                                 f"{type(state).__name__}")
            return None
        if state is None:
            return init
        if not isinstance(state, (tuple, list)) or len(state) != 2 or \
                any(not isinstance(s, torch.Tensor) or s.shape != e.shape
                    for s, e in zip(state, init)):
            got = [tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
                   for s in state] if isinstance(state, (tuple, list)) else type(state).__name__
            raise ValueError(f"state must be (left, top) of shapes {tuple(init[0].shape)} and "
                             f"{tuple(init[1].shape)}, got {got}")
        return tuple(s.to(device=x.device, dtype=e.dtype) for s, e in zip(state, init))

    def auto_mode(self, x: torch.Tensor) -> str:
        return self.modes[1] if len(self.modes) > 1 else self.modes[0]

    def forward(self, x: torch.Tensor, state=None, *, mode: str = "auto"):
        """x: (batch, height, width, d_model) -> y of the same shape, final state."""
        expected = f"(batch, height, width, d_model={self.d_model})"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape {expected}, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if x.dim() != 4 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape {expected}, got shape {tuple(x.shape)}")
        if x.shape[1] == 0 or x.shape[2] == 0:
            raise ValueError(f"x must have height and width >= 1, got shape {tuple(x.shape)}")
        for p in self.parameters():
            if p.is_floating_point() and p.dtype != x.dtype:
                raise TypeError(f"x has dtype {x.dtype} but the layer's parameters are {p.dtype}; "
                                f"cast one to the other")
            break
        if mode == "auto":
            mode = self.auto_mode(x)
        elif mode not in self.modes:
            raise ValueError(f"mode must be 'auto' or one of {self.modes} for 2-D layer "
                             f"{self.name!r}, got {mode!r}")
        y, state = self._forward(x, self._check_state(state, x), mode)
        return y, owned_state(state, x)
