"""Universal Transformer with adaptive computation time: one block, shared weights, in depth.

Dehghani et al. 2018, "Universal Transformers" (arXiv:1807.03819); ACT from Graves 2016,
"Adaptive Computation Time for Recurrent Neural Networks" (arXiv:1603.08983).

One residual block B (models.blocks.Block around any registered layer) is applied up to
N = `max_steps` times, with the same weights, to every position t:

    s^0_t = embed(x_t)
    s^n_t = B(s^{n-1}_t + P_t + Q_n)          P: position signal, Q: step signal (sinusoids)
    h^n_t = sigmoid(w . s^n_t + b)             halting probability (Graves: from the new state)
    N(t)  = min{n : h^1_t + ... + h^n_t >= 1 - eps}, capped at N (the last step halts)
    R(t)  = 1 - (h^1_t + ... + h^{N(t)-1}_t)  remainder
    y_t   = sum_{n < N(t)} h^n_t s^n_t + R(t) s^{N(t)}_t
    ponder cost rho_t = N(t) + R(t)            (Graves eq. 11; its gradient flows through R)

Positions halt independently: once t halts its state is copied to the later steps (the
paper's words), so the other positions still read it, and its output is fixed. The
mixer at step n has its own state along time (one per step, the weights shared), so a
causal mixer makes the model causal and the model streams: its state is the position
offset (for P) and the N mixer states. All N steps always run (a halted position's copy
still feeds the mixer's state at that depth), so streaming equals the whole sequence.
With `act=False` the model is the fixed-depth Universal Transformer: y = s^N.

    model = UniversalTransformer(ModelConfig(layer="attention", d_model=64, num_layers=1,
                                             vocab_size=256), max_steps=6)
    logits, state = model(tokens)                          # (B, T) -> (B, T, vocab), state
    logits, state, act = model(tokens, return_act=True)    # act.ponder (B, T): N + R
    loss = task_loss + tau * act.ponder.mean()             # Graves's time penalty tau
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from rnnzoo.checks import flag, int_in, real
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.models.stack import ModelConfig, SequenceModel, zero_padded
from rnnzoo.ops.native.linear import Linear


class ACT(NamedTuple):
    """Per position (B, T) (or (B,) for a step): ponder = steps + remainders."""
    ponder: torch.Tensor
    steps: torch.Tensor
    remainders: torch.Tensor


def timing_signal(pos: torch.Tensor, step: int, d_model: int, dtype) -> torch.Tensor:
    """P_pos + Q_step (the paper's sinusoids of Vaswani et al.): pos (...,) -> (..., d_model).

    Channel 2j holds sin(pos w_j) + sin(step w_j), channel 2j+1 the cosines,
    w_j = 1 / 10000^(2j / d_model).
    """
    j = torch.arange(0, d_model, 2, device=pos.device, dtype=dtype)
    w = torch.exp(j * (-math.log(10000.0) / d_model))
    a, b = pos.to(dtype)[..., None] * w, step * w
    sig = torch.stack([a.sin() + b.sin(), a.cos() + b.cos()], -1).flatten(-2)
    return sig[..., :d_model]


def act_loop(s, transform, halting, max_steps: int, threshold: float, act: bool = True):
    """Run `transform(n, s)` for n < max_steps with Graves's halting; s (..., d).

    Returns (y (..., d), ACT of (...,) tensors). `halting(s)` gives logits (..., 1).
    Without `act` every position runs max_steps and y is the last state.
    """
    acc = compute_dtype(s)
    shape = s.shape[:-1]
    running = torch.ones(shape, dtype=torch.bool, device=s.device)
    halt_sum = torch.zeros(shape, dtype=acc, device=s.device)
    steps = torch.zeros(shape, dtype=acc, device=s.device)
    remainders = torch.zeros(shape, dtype=acc, device=s.device)
    y = torch.zeros(s.shape, dtype=acc, device=s.device)
    for n in range(max_steps):
        new = transform(n, s)
        if act:
            p = torch.sigmoid(halting(new).squeeze(-1).to(acc))
        else:  # never reach the threshold: the last step takes the whole weight
            p = torch.zeros(shape, dtype=acc, device=s.device)
        halts = running & ((halt_sum + p >= threshold) | (n == max_steps - 1))
        goes_on = running & ~halts
        rest = 1 - halt_sum
        w = torch.where(goes_on, p, torch.where(halts, rest, torch.zeros_like(p)))
        y = y + w[..., None] * new.to(acc)
        remainders = torch.where(halts, rest, remainders)
        steps = steps + running.to(acc)
        halt_sum = halt_sum + torch.where(goes_on, p, torch.zeros_like(p))
        s = torch.where(running[..., None], new, s)   # a halted position's state is copied
        running = goes_on
    return y, ACT(steps + remainders, steps, remainders)


class UniversalTransformer(SequenceModel):
    """inputs (B, T) tokens or (B, T, input_dim) -> (B, T, output_dim), state.

    `config` is a ModelConfig with num_layers=1 (the one shared block; `layer` is any
    registered layer, `mlp_ratio` > 0 gives the paper's transition function). State:
    (position (B,), mixer state at step 1, ..., mixer state at step N).
    """

    def __init__(self, config: ModelConfig, max_steps: int = 4, act: bool = True,
                 threshold: float = 0.99, halt_bias: float = 1.0, timing: bool = True):
        if config.num_layers != 1 or config.hybrid is not None:
            raise ValueError(f"the Universal Transformer repeats one shared block: give "
                             f"num_layers=1 and no hybrid (max_steps sets the depth), got "
                             f"num_layers={config.num_layers}, hybrid={config.hybrid!r}")
        super().__init__(config)
        self.max_steps = int_in("max_steps", max_steps)
        self.act = flag("act", act)
        self.threshold = real("threshold", threshold, lo=0.0, hi=1.0, lo_open=True)
        self.timing = flag("timing", timing)
        self.halting = Linear(config.d_model, 1)
        nn.init.constant_(self.halting.bias, real("halt_bias", halt_bias))

    @property
    def block(self):
        return self.blocks[0]

    def init_state(self, batch_size: int, device=None, dtype=None) -> tuple:
        pos = torch.zeros(batch_size, device=device, dtype=state_dtype(dtype))
        return (pos,) + tuple(self.block.mixer.init_state(batch_size, device=device, dtype=dtype)
                              for _ in range(self.max_steps))

    def _signal(self, pos, n, x):
        if not self.timing:
            return 0
        return timing_signal(pos, n + 1, self.config.d_model, compute_dtype(x)).to(x.dtype)

    def forward(self, inputs, state=None, *, mode="auto", lengths=None, return_act=False):
        """-> outputs (B, T, output_dim), state[, ACT of (B, T) tensors]."""
        x, lengths, valid = self._embed_padded(inputs, lengths)
        B, T, _ = x.shape
        if state is None:
            state = self.init_state(B, device=x.device, dtype=x.dtype)
        pos = state[0][:, None] + torch.arange(T, device=x.device)
        mixer_states = list(state[1:])

        def transform(n, s):
            s, mixer_states[n] = self.block(s + self._signal(pos, n, s), mixer_states[n],
                                            mode=mode, lengths=lengths)
            return s

        y, info = act_loop(x, transform, self.halting, self.max_steps, self.threshold, self.act)
        advance = T if lengths is None else lengths.to(state[0].dtype)
        out = zero_padded(self.head(self.norm(y.to(x.dtype))), valid)
        new_state = (state[0] + advance,) + tuple(mixer_states)
        return (out, new_state, info) if return_act else (out, new_state)

    def step(self, inputs_t, state=None, *, return_act=False):
        """inputs_t (B,) or (B, input_dim) -> (B, output_dim), next state[, ACT of (B,)]."""
        x = self._embed(inputs_t)
        if state is None:
            state = self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        pos = state[0]
        mixer_states = list(state[1:])

        def transform(n, s):
            s, mixer_states[n] = self.block.step(s + self._signal(pos, n, s), mixer_states[n])
            return s

        y, info = act_loop(x, transform, self.halting, self.max_steps, self.threshold, self.act)
        out = self.head(self.norm(y.to(x.dtype)))
        new_state = (pos + 1,) + tuple(mixer_states)
        return (out, new_state, info) if return_act else (out, new_state)


def build_universal(max_steps: int = 4, act: bool = True, threshold: float = 0.99,
                    halt_bias: float = 1.0, timing: bool = True, **config) -> UniversalTransformer:
    """UniversalTransformer(ModelConfig(num_layers=1, **config), ...)."""
    config.setdefault("num_layers", 1)
    return UniversalTransformer(ModelConfig(**config), max_steps=max_steps, act=act,
                                threshold=threshold, halt_bias=halt_bias, timing=timing)
