"""Multi-directional scans: any registered 1-D layer run over a grid read as sequences.

    row      x[b, i, j]  in the order (0,0), (0,1), ..., (0,W-1), (1,0), ...   (row-major)
    col      x[b, i, j]  in the order (0,0), (1,0), ..., (H-1,0), (0,1), ...   (column-major)
    row_rev, col_rev     the same sequences read backwards
    y_d      = unflatten_d(layer_d(flatten_d(x)))        one 1-D layer per direction d
    y        = merge(y_d for d in directions)

Merges, as the vision papers use them:
- "sum": the directions' outputs added. ViG (Liao et al. 2024, arXiv:2405.18425) runs
  gated linear attention forwards and backwards over the row-major sequence and adds the
  two outputs (its BiGLA; "direction-wise gating": each direction has its own gates,
  here `share=False`, its own layer).
- "mean": the average (pLSTM's layer averages its orientations the same way).
- "concat": concatenated along features and projected back to d_model by one linear map.
ViR (Hatamizadeh et al. 2023, arXiv:2310.19731) is the single direction
`directions=("row",)` (retention over the row-major sequence; no merge).

`share=True` runs one layer (one set of weights) in every direction. State: a tuple with
one entry per direction, the 1-D layer's final state after its sequence (the last cell it
read); an input `state` is the same tuple, each entry the 1-D layer's initial state.
Modes: the 1-D layer's (passed through; "sequential" the reference).
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.checks import choice, flag
from rnnzoo.grid.base import GridLayer, register_grid
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import LAYERS, create

DIRECTIONS = ("row", "row_rev", "col", "col_rev")
MERGES = ("sum", "mean", "concat")


def flatten(x: torch.Tensor, direction: str) -> torch.Tensor:
    """(B, H, W, D) -> (B, H W, D) in the order of `direction`."""
    B, H, W, D = x.shape
    seq = x.reshape(B, H * W, D) if direction.startswith("row") else \
        x.transpose(1, 2).reshape(B, W * H, D)
    return seq.flip(1) if direction.endswith("_rev") else seq


def unflatten(y: torch.Tensor, direction: str, height: int, width: int) -> torch.Tensor:
    """The inverse of `flatten`: (B, H W, D) -> (B, H, W, D)."""
    if direction.endswith("_rev"):
        y = y.flip(1)
    B, _, D = y.shape
    if direction.startswith("row"):
        return y.reshape(B, height, width, D)
    return y.reshape(B, width, height, D).transpose(1, 2)


@register_grid("scan2d", paper="ViG: Liao et al. 2024, arXiv:2405.18425; ViR: Hatamizadeh "
               "et al. 2023, arXiv:2310.19731",
               tiny=dict(d_model=4, layer="mingru", directions=("row", "col_rev")))
class MultiScan(GridLayer):
    """x: (B, H, W, d_model) -> y; state: tuple of the 1-D layers' final states.
    `modes` (an instance's): the wrapped layer's; the registry lists the reference only."""

    def __init__(self, d_model: int, layer: str = "gla", directions=("row", "row_rev"),
                 merge: str = "sum", share: bool = False, **options):
        super().__init__(d_model)
        if layer not in LAYERS:
            raise ValueError(f"layer must be a registered 1-D layer, got {layer!r}; "
                             f"`rnnzoo list` shows them")
        directions = (directions,) if isinstance(directions, str) else tuple(directions)
        if not directions or len(set(directions)) != len(directions):
            raise ValueError(f"directions must be distinct entries of {DIRECTIONS}, "
                             f"got {directions!r}")
        for d in directions:
            choice("directions entry", d, DIRECTIONS)
        self.directions = directions
        self.merge = choice("merge", merge, MERGES)
        self.share = flag("share", share)
        self.layer_name = layer
        n = 1 if share else len(directions)
        self.layers = nn.ModuleList([create(layer, d_model, **options) for _ in range(n)])
        self.modes = tuple(self.layers[0].modes)
        self.proj = Linear(len(directions) * d_model, d_model, bias=False) \
            if merge == "concat" else None

    def auto_mode(self, x):
        return "auto"

    def layer_for(self, i: int):
        """The 1-D layer that reads direction `directions[i]`."""
        return self.layers[0 if self.share else i]

    def _check_state(self, state, x):
        if state is None:
            return (None,) * len(self.directions)
        if not isinstance(state, (tuple, list)) or len(state) != len(self.directions):
            raise ValueError(f"state must be a tuple of {len(self.directions)} 1-D states (one "
                             f"a direction: {self.directions}), got {type(state).__name__}"
                             + (f" of length {len(state)}" if isinstance(state, (tuple, list))
                                else ""))
        return tuple(state)

    def _forward(self, x, state, mode):
        B, H, W, _ = x.shape
        ys, finals = [], []
        for i, d in enumerate(self.directions):
            y, final = self.layer_for(i)(flatten(x, d), state[i], mode=mode)
            ys.append(unflatten(y, d, H, W))
            finals.append(final)
        if self.merge == "concat":
            y = self.proj(torch.cat(ys, dim=-1))
        else:
            y = torch.stack(ys).sum(0)
            if self.merge == "mean":
                y = y / len(ys)
        return y, tuple(finals)
