"""A dynamical-systems reconstruction model: a latent piecewise-linear RNN read out by the
identity on its first N units, trained by generalized teacher forcing (Hess, Monfared,
Brenner & Durstewitz 2023, ICML, arXiv:2306.04406; the AL-RNN of Brenner et al. 2024,
arXiv:2410.14240):

    z_{t+1} = F(z~_t),   z~_t[:N] = alpha x_t + (1 - alpha) z_t[:N],   z~_t[N:] = z_t[N:],
    prediction of x_{t+1} = z_{t+1}[:N],      z_0 = (x_0, 0),

F the cell (`plrnn` or `al_rnn`) run on no input. alpha = 1 is teacher forcing of the
observed units, alpha = 0 the free run. Annealed (`anneal` > 0): every `anneal` optimiser
steps alpha <- max(gamma alpha, alpha*), alpha* = max(0, 1 - 1/G) from the Jacobians along
the last forced trajectory (cells.piecewise_linear.gtf_alpha_bound, gtf_anneal). Inference
is the free run (`generate`). The current alpha is a buffer: checkpoints keep it.

    model = DSRModel(DSRConfig(cell="al_rnn", observation_dim=3, latent_size=20,
                               cell_options={"num_relu": 2}, alpha=0.3, anneal=5))
    pred, state = model(x)              # x (B, T, N) -> next states (B, T, N), state (z_T,)
    model.after_step(step)              # the annealing, once per optimiser step
    traj = model.generate(x0, 5000)     # x0 (B, N) -> its free run (B, 5000, N)
    model = load_dsr("runs/lorenz63-al_rnn-...")   # a run folder of `rnnzoo train --model dsr`

In training mode the forward pass forces with the current alpha; in eval mode with
alpha = 1 (one-step-ahead prediction, what a forecasting task scores).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.cells.piecewise_linear import PLRNN, free_run, gtf_alpha_bound, gtf_anneal, gtf_rollout
from rnnzoo.checks import choice, int_in, real
from rnnzoo.models.checkpoint import MODEL_KINDS, load
from rnnzoo.registry import CELLS

DSR_CELLS = ("al_rnn", "plrnn")


@dataclass
class DSRConfig:
    cell: str = "al_rnn"
    observation_dim: int = 3          # N: observed variables, read off z[:N]
    latent_size: int = 20             # M >= N
    cell_options: dict = field(default_factory=dict)   # e.g. {"num_relu": 2} (al_rnn)
    alpha: float = 1.0                # the forcing at the start of training
    anneal: int = 0                   # every `anneal` steps alpha <- max(gamma alpha, alpha*)
    gamma: float = 0.999
    model: str = "dsr"                # tells a saved config from a SequenceModel's

    def __post_init__(self):
        choice("cell", self.cell, DSR_CELLS)
        self.observation_dim = int_in("observation_dim", self.observation_dim)
        self.latent_size = int_in("latent_size", self.latent_size)
        if self.latent_size < self.observation_dim:
            raise ValueError(f"latent_size ({self.latent_size}) must be at least the number of "
                             f"observed variables ({self.observation_dim})")
        if not isinstance(self.cell_options, dict):
            raise ValueError(f"cell_options must be a dict, got {self.cell_options!r}")
        self.alpha = real("gtf_alpha", self.alpha, 0, 1)
        self.anneal = int_in("gtf_anneal", self.anneal, lo=0)
        self.gamma = real("gtf_gamma", self.gamma, 0, 1, lo_open=True)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class DSRModel(nn.Module):
    """inputs (B, T, N) -> (predictions of the next states (B, T, N), (z_T (B, M),))."""

    def __init__(self, config: DSRConfig):
        super().__init__()
        self.config = c = config
        cls = CELLS[c.cell].cls
        try:
            self.cell: PLRNN = cls(1, c.latent_size, **c.cell_options)
        except TypeError as e:
            accepted = [p for p in inspect.signature(cls.__init__).parameters
                        if p not in ("self", "input_size", "hidden_size")]
            raise ValueError(f"bad option for cell {c.cell!r}: {e}; it accepts {accepted}") \
                from None
        self.register_buffer("alpha", torch.tensor(c.alpha, dtype=torch.float64))
        self._forced = None   # the last training pass's forced states, for the annealing

    def _check(self, x: torch.Tensor) -> None:
        if not x.is_floating_point() or x.dim() != 3 or x.shape[-1] != self.config.observation_dim:
            raise ValueError(f"inputs must be floating point (B, T, {self.config.observation_dim})"
                             f", got {x.dtype} {tuple(x.shape)}")

    def forward(self, inputs: torch.Tensor, state=None, *, alpha: float | None = None):
        """inputs x_0..x_{T-1} (B, T, N) -> predictions of x_1..x_T (B, T, N), (z_T,).
        alpha: the forcing (default: the current one in training, 1 in eval). `state` is
        not read: each window starts from z_0 = (x_0, 0)."""
        self._check(inputs)
        x = inputs.to(self.cell.A.dtype)
        if alpha is None:  # the buffer itself: no host sync per step
            alpha = self.alpha if self.training else 1.0
        pred, forced = gtf_rollout(self.cell, F.pad(x, (0, 0, 0, 1)), alpha)
        if self.training:
            self._forced = forced.detach()
        return pred, (free_run(self.cell, forced[:, -1], 1)[:, 0],)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """After optimiser step `step` (1-based): anneal alpha every `anneal` steps."""
        c = self.config
        if c.anneal and step % c.anneal == 0 and self._forced is not None:
            bound = gtf_alpha_bound(self.cell, self._forced)
            self.alpha.fill_(gtf_anneal(float(self.alpha), bound, c.gamma))

    @torch.no_grad()
    def generate(self, x0: torch.Tensor, steps: int) -> torch.Tensor:
        """The free run from z_0 = (x0, 0): x0 (B, N) -> the observed units (B, steps, N)."""
        int_in("steps", steps)
        if x0.dim() != 2 or x0.shape[-1] != self.config.observation_dim:
            raise ValueError(f"x0 must be (B, {self.config.observation_dim}), got "
                             f"{tuple(x0.shape)}")
        x0 = x0.to(self.cell.A.dtype)
        z0 = torch.cat([x0, x0.new_zeros(x0.shape[0], self.config.latent_size - x0.shape[1])], -1)
        return free_run(self.cell, z0, steps)[..., :self.config.observation_dim]

    @classmethod
    def from_saved(cls, config: dict, source) -> "DSRModel":
        """The model of a saved config dict (`rnnzoo.load`); a bad one is one line."""
        try:
            return cls(DSRConfig(**config))
        except TypeError as e:
            raise ValueError(f"{source}: its dsr config does not fit DSRConfig ({e})") from None


MODEL_KINDS["dsr"] = DSRModel.from_saved


def load_dsr(path, device=None) -> DSRModel:
    """The DSR model saved at `path` (a run folder of `rnnzoo train --model dsr`, or its
    model.safetensors), with its current alpha: `rnnzoo.load`, checked to be one."""
    model = load(path, device)
    if not isinstance(model, DSRModel):
        raise ValueError(f"{path} holds no dsr model (train one with --model dsr)")
    return model
