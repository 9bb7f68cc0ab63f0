"""Chimera: a 2-D state space over time x variates (Behrouz, Santacatterina & Zabih 2024,
"Chimera: Effectively Modeling Multivariate Time Series with 2-Dimensional State Space
Models", NeurIPS, arXiv:2406.04320), in the Roesser form the paper builds on.

x (B, T, V, d_model): time along the grid's rows, variates along its columns. Each cell
(t, v) holds two diagonal states per channel, h1 carried along time and h2 along the
variates, each (d_model, d_state); with input-dependent steps (selective, as Mamba), a
time step D1 and a variate step D2 per channel, D1, D2 = softplus(W_dt x + dt_bias):

    h1(t, v) = exp(D1 A1) h1(t-m, v) + exp(D1 A2) h2(t, v-1) + Bbar1 x
    h2(t, v) = exp(D2 A3) h1(t-m, v) + exp(D2 A4) h2(t, v-1) + Bbar2 x
    y(t, v)  = C1(x) . h1(t, v) + C2(x) . h2(t, v)

A1..A4 = -exp(A_log) (d_model, d_state); B1, B2, C1, C2 linear in x (d_state each).
Discretisation by zero-order hold on each axis: Abar = exp(D A), and the input through
Bbar = (D A)^-1 (exp(D A) - 1) D B = expm1(D A) / A * B (diagonal A), per axis.

Two heads, each such a 2-D SSM with its own parameters (`heads`):
- "trend" (m = 1): the state carried from one step to the next, the long-term progression;
- "seasonal" (m = `season`): the time edge skips `season` steps, h1(t, v) reads
  h1(t - season, v), so a state carries one phase of the period from season to season
  (the seasonal series: `season` interleaved trend heads, one per phase).
Variates have no natural order: with `bidirectional` (default) every head also runs over
the variates reversed (its own parameters) and the directions are summed, so y(t, v) reads
every variate at every time t' <= t; time stays causal. The heads' and directions' outputs
are summed with a skip D x, gated by a data-dependent SiLU gate (`gate`), and projected:

    y = W_out((sum_paths y_path + D x) * silu(W_g x))

The cross terms A2, A3 start with fast decay (the number of time-variate paths grows
combinatorially; exp(D A) with A < 0 keeps every transition below one). This is the grid
recurrence of grid/dag.py with h1 on the downward edges and h2 on the rightward ones; the
seasonal head runs it on the grid re-laid as `season` phase grids (times p, p+m, p+2m, ...).

Modes: "sequential" (the loop over cells, the reference) and "wavefront" (the
anti-diagonals in turn, every cell of one at once). State: one (right, bottom) pair per
path (head x direction, in the order of `paths`): right (B, T, d_model, d_state) the h2
leaving the grid's last variate (the first, for a backward path), bottom (B, m, V, d_model,
d_state) the h1 leaving the last m time steps (variates in input order). An input state is
(left, top) of the same shapes, so the series continues in time with (zeros, bottom).

`VariateForecaster` / `ChimeraForecaster` shape a stack of these for the `forecast` task
(and the per-step dynamics tasks): (B, T, C) windows -> the grid (B, T, C, d_model) -> the
task's (B, T, horizon * C); `rnnzoo train --model chimera` trains one (docs/2d.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import flag, int_in, positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.grid.base import GridLayer, register_grid
from rnnzoo.grid.dag import grid_dag
from rnnzoo.layers._softplus import inverse_softplus
from rnnzoo.ops.native.linear import Linear

HEADS = ("trend", "seasonal")


class _Path(nn.Module):
    """The parameters of one 2-D SSM (a head in one variate direction)."""

    def __init__(self, d_model: int, d_state: int, lag: int, backward: bool):
        super().__init__()
        D, N = d_model, d_state
        self.lag, self.backward = lag, backward
        self.dt_proj = Linear(D, 2 * D)
        self.bc_proj = Linear(D, 4 * N, bias=False)
        decay = torch.arange(1, N + 1, dtype=torch.float32).log().expand(4, D, N).clone()
        decay[1:3] += math.log(8.0)                     # the cross terms A2, A3 decay fast
        self.A_log = nn.Parameter(decay)
        with torch.no_grad():
            dt = torch.empty(2 * D).uniform_(math.log(1e-2), math.log(1e-1)).exp()
            self.dt_proj.bias.copy_(inverse_softplus(dt))


@register_grid("chimera", paper="Behrouz et al. 2024, arXiv:2406.04320 (Chimera)",
               tiny=dict(d_model=4, d_state=2, season=2))
class Chimera(GridLayer):
    """x: (B, T, V, d_model) -> y; state: one (right (B, T, d_model, N),
    bottom (B, m, V, d_model, N)) pair per path (`self.paths`)."""

    modes = ("sequential", "wavefront")

    def __init__(self, d_model: int, d_state: int = 8, heads=HEADS, season: int = 4,
                 bidirectional: bool = True, gate: bool = True):
        super().__init__(d_model)
        N = self.d_state = positive_int("d_state", d_state)
        D = d_model
        if isinstance(heads, str):
            heads = (heads,)
        heads = tuple(heads) if isinstance(heads, (list, tuple)) else heads
        if not isinstance(heads, tuple) or not heads or len(set(heads)) != len(heads) or \
                any(h not in HEADS for h in heads):
            raise ValueError(f"heads must be a non-empty selection of {list(HEADS)} without "
                             f"repeats, got {heads!r}")
        self.heads = heads
        self.season = int_in("season", season)
        self.bidirectional = flag("bidirectional", bidirectional)
        self.gated = flag("gate", gate)
        dirs = (False, True) if self.bidirectional else (False,)
        # (head, direction) in order: trend forward, trend backward, seasonal forward, ...
        self.paths = [(h, "backward" if b else "forward") for h in heads for b in dirs]
        self.ssm = nn.ModuleList(_Path(D, N, self.season if h == "seasonal" else 1, b)
                                 for h in heads for b in dirs)
        self.skip = nn.Parameter(torch.ones(D))
        self.gate = Linear(D, D) if self.gated else None
        self.out = Linear(D, D, bias=False)

    def auto_mode(self, x):
        return "wavefront"

    def init_state(self, batch_size, height, width, device=None, dtype=None):
        sd = state_dtype(dtype)
        D, N = self.d_model, self.d_state
        return tuple((torch.zeros(batch_size, height, D, N, device=device, dtype=sd),
                      torch.zeros(batch_size, p.lag, width, D, N, device=device, dtype=sd))
                     for p in self.ssm)

    def _check_state(self, state, x):
        B, X, Y, _ = x.shape
        init = self.init_state(B, X, Y, device=x.device, dtype=x.dtype)
        if state is None:
            return init
        shapes = [tuple(tuple(t.shape) for t in pair) for pair in init]
        ok = isinstance(state, (tuple, list)) and len(state) == len(init) and all(
            isinstance(s, (tuple, list)) and len(s) == 2 and
            all(isinstance(t, torch.Tensor) and t.shape == e.shape for t, e in zip(s, pair))
            for s, pair in zip(state, init))
        if not ok:
            raise ValueError(f"state must be (left, top) of shapes {shapes}, one pair per path "
                             f"{self.paths}, got {_shapes(state)}")
        return tuple(tuple(t.to(device=x.device, dtype=e.dtype) for t, e in zip(s, pair))
                     for s, pair in zip(state, init))

    def _forward(self, x, state, mode):
        cdt = compute_dtype(x)
        xc = x.to(cdt)
        y = self.skip.to(cdt) * xc
        new_state = [None] * len(self.ssm)
        for lag in sorted({p.lag for p in self.ssm}):   # the paths of one lag in one run
            idx = [i for i, p in enumerate(self.ssm) if p.lag == lag]
            ys, rights, bottoms = _run_paths([self.ssm[i] for i in idx], x, xc,
                                             [state[i] for i in idx], lag, mode)
            for i, yp, r, b in zip(idx, ys, rights, bottoms):
                y = y + yp
                new_state[i] = (r.to(state[i][0].dtype), b.to(state[i][1].dtype))
        if self.gate is not None:
            y = y * F.silu(self.gate(x).to(cdt))
        return self.out(y.to(x.dtype)), tuple(new_state)


def _shapes(state):
    if isinstance(state, torch.Tensor):
        return tuple(state.shape)
    if isinstance(state, (tuple, list)):
        return [_shapes(s) for s in state]
    return type(state).__name__


def _cells(p: _Path, x, xc):
    """A path's transitions T (B, X, Y, 2, 2, D, N), sources b (B, X, Y, 2, D, N) and
    read-outs C1, C2 (B, X, Y, 1, N), on the grid as the path reads it."""
    B, X, Y, D = x.shape
    N = p.A_log.shape[-1]
    cdt = xc.dtype
    d1, d2 = F.softplus(p.dt_proj(x).to(cdt)).view(B, X, Y, 2, D, 1).unbind(3)
    B1, B2, C1, C2 = p.bc_proj(x).to(cdt).view(B, X, Y, 4, 1, N).unbind(3)
    A = -torch.exp(p.A_log.to(cdt))                                     # (4, D, N)
    # T[..., out, in]: out 0 = right (h2), 1 = down (h1); in 0 = left (h2), 1 = up (h1)
    T = torch.stack([torch.stack([torch.exp(d2 * A[3]), torch.exp(d2 * A[2])], -3),
                     torch.stack([torch.exp(d1 * A[1]), torch.exp(d1 * A[0])], -3)], -4)
    u = xc[..., None]                                                   # (B, X, Y, D, 1)
    # zero-order hold: Bbar = expm1(D A) / A * B on each axis
    b = torch.stack([torch.expm1(d2 * A[3]) / A[3] * B2 * u,
                     torch.expm1(d1 * A[0]) / A[0] * B1 * u], 3)        # (B, X, Y, 2, D, N)
    return T, b, C1, C2


def _run_paths(paths, x, xc, states, m, mode):
    """The paths (heads in one variate direction each) of time lag m over the grid, stacked
    along the batch in one grid recurrence: per path y (B, T, V, D), right, bottom."""
    B, X, Y, D = x.shape
    R = -(-X // m)                                   # rows of each phase grid
    pad = R * m - X                                  # future cells, computed and dropped
    xr, xcr = x.flip(2), xc.flip(2)                  # what a backward path reads
    per = [_cells(p, xr, xcr) if p.backward else _cells(p, x, xc) for p in paths]
    n = len(paths)
    top = torch.cat([s[1].flip(2) if p.backward else s[1] for p, s in zip(paths, states)])
    N = top.shape[-1]

    def phases(t):   # (n B, X, ...) -> (n B m, R, ...): phase p holds times p, p + m, ...
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) if pad else t
        t = t.reshape(n * B, R, m, *t.shape[2:]).transpose(1, 2)
        return t.reshape(n * B * m, R, *t.shape[3:])

    def times(t):    # the inverse, (n B m, R, ...) -> (n B, X, ...)
        t = t.reshape(n * B, m, R, *t.shape[2:]).transpose(1, 2)
        return t.reshape(n * B, R * m, *t.shape[3:])[:, :X]

    T = phases(torch.cat([c[0] for c in per]))
    b = phases(torch.cat([c[1] for c in per]))
    left = phases(torch.cat([s[0] for s in states]))
    L, U, right, bottom = grid_dag(T, b, left, top.reshape(n * B * m, Y, D, N), mode)
    h2 = times(torch.cat([L[:, :, 1:], right[:, :, None]], 2))          # leaving each cell
    h1 = times(torch.cat([U[:, 1:], bottom[:, None]], 1))
    C1, C2 = torch.cat([c[2] for c in per]), torch.cat([c[3] for c in per])
    y = ((C1 * h1).sum(-1) + (C2 * h2).sum(-1)).chunk(n)
    bottom = torch.cat([top, h1], 1)[:, -m:].chunk(n)  # the h1 leaving the last m steps
    right = times(right).chunk(n)
    flip = lambda t, p: t.flip(2) if p.backward else t  # noqa: E731
    return ([flip(t, p) for t, p in zip(y, paths)], right,
            [flip(t, p) for t, p in zip(bottom, paths)])


class VariateForecaster(nn.Module):
    """2-D layers over a multivariate series, shaped for the `forecast` task:
    inputs (B, T, C) -> outputs (B, T, horizon * C) (the task's layout, horizon-major).

    Each variate's value is lifted to d_model (a shared linear map plus an embedding per
    variate), the grid (B, T, C, d_model) goes through `layer` (one 2-D layer, e.g. Chimera,
    or a list of them, each with a pre-norm and a residual), and each cell is read out to
    the variate's `horizon` next values. `run` also returns the layers' states."""

    def __init__(self, layer, channels: int, horizon: int):
        super().__init__()
        layers = list(layer) if isinstance(layer, (list, tuple, nn.ModuleList)) else [layer]
        d = layers[0].d_model
        self.channels = positive_int("channels", channels)
        self.horizon = positive_int("horizon", horizon)
        self.lift = Linear(1, d)
        self.variate = nn.Parameter(torch.randn(channels, d) * 0.02)
        self.layers = nn.ModuleList(layers)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in layers) if len(layers) > 1 \
            else None
        self.head = Linear(d, horizon)

    def run(self, x: torch.Tensor, state=None):
        """x (B, T, C) -> (outputs (B, T, horizon * C), one state per layer)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.channels:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (batch, time, channels={self.channels}), got "
                             f"shape {got}")
        if state is not None and (not isinstance(state, (tuple, list)) or
                                  len(state) != len(self.layers)):
            raise ValueError(f"state must hold one state per layer ({len(self.layers)}), got "
                             f"{_shapes(state)}")
        h = self.lift(x[..., None].to(self.lift.weight.dtype)) + self.variate
        states = []
        for i, layer in enumerate(self.layers):
            inp = self.norms[i](h) if self.norms is not None else h
            out, s = layer(inp, None if state is None else state[i])
            h = h + out
            states.append(s)
        o = self.head(h)                                                 # (B, T, C, horizon)
        return o.transpose(2, 3).reshape(*x.shape[:2], self.horizon * self.channels), \
            tuple(states)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[0]


@dataclass
class ChimeraConfig:
    """A saved `ChimeraForecaster`: `channels` variates in, `horizon` values out per
    variate and step, `num_layers` Chimera layers of width `d_model` with `layer_options`."""

    channels: int = 3
    horizon: int = 1
    d_model: int = 32
    num_layers: int = 1
    layer_options: dict = field(default_factory=dict)
    model: str = "chimera"            # tells a saved config from a SequenceModel's

    def __post_init__(self):
        for name in ("channels", "horizon", "d_model", "num_layers"):
            setattr(self, name, int_in(name, getattr(self, name)))
        if not isinstance(self.layer_options, dict):
            raise ValueError(f"layer_options must be a dict, got {self.layer_options!r}")
        if self.model != "chimera":
            raise ValueError(f"model must be 'chimera', got {self.model!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def chimera_layer(d_model: int, options: dict) -> Chimera:
    """Chimera(d_model, **options), an unknown or bad option as one ValueError line."""
    try:
        return Chimera(d_model, **options)
    except TypeError as e:
        raise ValueError(f"bad option for chimera: {e}; it accepts d_state, heads, season, "
                         f"bidirectional, gate") from None


class ChimeraForecaster(VariateForecaster):
    """The model `rnnzoo train --model chimera` trains and `rnnzoo.load` rebuilds:
    inputs (B, T, C) -> (outputs (B, T, horizon * C), one Chimera state per layer)."""

    def __init__(self, config: ChimeraConfig):
        c = config
        super().__init__([chimera_layer(c.d_model, dict(c.layer_options))
                          for _ in range(c.num_layers)], c.channels, c.horizon)
        self.config = c

    def forward(self, inputs: torch.Tensor, state=None):
        return self.run(inputs, state)

    @classmethod
    def from_saved(cls, config: dict, source) -> "ChimeraForecaster":
        """The model of a saved config dict (`rnnzoo.load`); a bad one is one line."""
        try:
            return cls(ChimeraConfig(**config))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: its chimera config does not fit ({e})") from None
