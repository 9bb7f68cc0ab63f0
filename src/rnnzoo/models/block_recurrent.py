"""Block-Recurrent Transformer: a set of state vectors carried across segments.

Hutchins, Schlag, Wu, Dyer & Neyshabur 2022, "Block-Recurrent Transformers"
(arXiv:2203.07852).

The sequence is cut into segments of `segment_len` tokens. A recurrent layer holds M =
`num_state` state vectors S (B, M, d) and works in two directions on each segment x:

  vertical (the tokens; output to the next layer):
      a = mixer(norm(x))                          any registered layer (the paper: attention)
      c = MHA(q = norm(x) W_q, kv = S^ W_kv)      tokens read the state of the previous segment
      h = x + W_o [a; c],   y = h + MLP(norm(h))
  horizontal (the state; output to the next segment):
      S^ = norm(S) + state_ids                    learned ids: the state vectors have no order
      z  = W_h [MHA(S^ W_q', S^ W_kv); MHA(S^ W_q', norm(x) W_kv')]   self and cross attention
      S' = gate(S, z),   S'' = gate(S', MLP(norm(S')))
  gates, in place of the residual (the paper's two kinds):
      fixed:  g = sigmoid(b),  gate(c, z) = c * g + z * (1 - g)
      lstm:   i = sigmoid(W_i z + b_i - 1),  f = sigmoid(W_f z + b_f + 1),
              gate(c, z) = c * f + tanh(W_z z + b_z) * i

The state's keys and values (W_kv) are shared by both directions, as in the paper. The
other layers are ordinary Blocks; `recurrent_layers` says which are recurrent (the paper:
one layer near the top). The state has a constant size: the mixers' states and (B, M, d)
per recurrent layer, kept in float32 (float64 for float64 input). Segments are counted
from the start of each call, so streaming calls whose lengths are multiples of
`segment_len` (the last one aside) equal one call on the whole sequence.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.checks import choice, divides, int_in
from rnnzoo.dtypes import state_dtype
from rnnzoo.layers.base import valid_mask
from rnnzoo.models.blocks import GatedMLP, RMSNorm
from rnnzoo.models.stack import ModelConfig, SequenceModel, zero_padded
from rnnzoo.ops.native.attention import fused_sdpa
from rnnzoo.ops.native.linear import Linear


def mha(q, k, v, num_heads, keys=None):
    """Multi-head attention: q (B, Lq, d), k and v (B, Lk, d) -> (B, Lq, d); `keys` (B, Lk)
    bool: the keys read (None: all; a row must hold one)."""
    B, Lq, d = q.shape
    q, k, v = (t.reshape(B, t.shape[1], num_heads, d // num_heads).transpose(1, 2)
               for t in (q, k, v))
    mask = None if keys is None else keys[:, None, None, :]
    return fused_sdpa(q, k, v, mask).transpose(1, 2).reshape(B, Lq, d)


class Gate(nn.Module):
    """gate(c, z) -> the new state, c and z (..., d): the paper's fixed or LSTM-style gate."""

    def __init__(self, d_model: int, kind: str):
        super().__init__()
        self.kind = choice("gate", kind, ("fixed", "lstm"))
        if kind == "fixed":
            self.bias = nn.Parameter(torch.zeros(d_model))
        else:
            self.proj = Linear(d_model, 3 * d_model)

    def forward(self, c, z):
        if self.kind == "fixed":
            g = torch.sigmoid(self.bias).to(c.dtype)
            return c * g + z.to(c.dtype) * (1 - g)
        zi, zf, zz = self.proj(z).to(c.dtype).chunk(3, -1)
        i, f = torch.sigmoid(zi - 1), torch.sigmoid(zf + 1)
        return c * f + torch.tanh(zz) * i


class RecurrentCell(nn.Module):
    """One recurrent layer: (x (B, W, d), mixer state, S (B, M, d)) -> (y, mixer state, S')."""

    def __init__(self, mixer: nn.Module, d_model: int, num_state: int, num_heads: int,
                 gate: str = "fixed", mlp_ratio: float = 4.0):
        super().__init__()
        d = d_model
        self.num_heads = divides("num_heads", num_heads, "d_model", d)
        self.num_state = int_in("num_state", num_state)
        # vertical
        self.norm = RMSNorm(d)
        self.mixer = mixer
        self.q_tokens = Linear(d, d, bias=False)
        self.out_tokens = Linear(2 * d, d, bias=False)
        self.mlp_norm = RMSNorm(d) if mlp_ratio > 0 else None
        self.mlp = GatedMLP(d, mlp_ratio) if mlp_ratio > 0 else None
        # horizontal
        self.state_norm = RMSNorm(d)
        self.state_ids = nn.Parameter(torch.randn(num_state, d) * d ** -0.5)
        self.kv_state = Linear(d, 2 * d, bias=False)      # shared by both directions
        self.q_state = Linear(d, d, bias=False)
        self.kv_tokens = Linear(d, 2 * d, bias=False)
        self.out_state = Linear(2 * d, d, bias=False)
        self.gate = Gate(d, gate)
        self.state_mlp_norm = RMSNorm(d) if mlp_ratio > 0 else None
        self.state_mlp = GatedMLP(d, mlp_ratio) if mlp_ratio > 0 else None
        self.mlp_gate = Gate(d, gate) if mlp_ratio > 0 else None
        self.initial = nn.Parameter(torch.randn(num_state, d) * 0.1)   # learned initial state

    def init_state(self, batch_size, device=None, dtype=None, learn=False):
        """The learned initial state (B, M, d); with `learn` its gradient reaches `initial`."""
        s = self.initial if learn else self.initial.detach()
        return s.to(device=device, dtype=state_dtype(dtype)).expand(batch_size, -1, -1)

    def forward(self, x, mixer_state, S, *, mode="auto", lengths=None):
        """x (B, W, d); `lengths` (B,) in [0, W]: the valid tokens of each row (right padding):
        the state reads only those, and a row with none keeps S."""
        H = self.num_heads
        xn = self.norm(x)
        s_hat = (self.state_norm(S) + self.state_ids).to(x.dtype)
        k_s, v_s = self.kv_state(s_hat).chunk(2, -1)
        # vertical: tokens read the state as it was before this segment
        a, mixer_state = self.mixer(xn, mixer_state, mode=mode, lengths=lengths)
        c = mha(self.q_tokens(xn), k_s, v_s, H)
        h = x + self.out_tokens(torch.cat([a, c], -1))
        y = h if self.mlp is None else h + self.mlp(self.mlp_norm(h))
        # horizontal: the state reads itself and the segment, through the gates
        q = self.q_state(s_hat)
        k_t, v_t = self.kv_tokens(xn).chunk(2, -1)
        keys = None
        if lengths is not None:  # a row without tokens reads them all (no NaN), then keeps S
            keys = valid_mask(lengths, x.shape[1]) | (lengths == 0)[:, None]
        z = self.out_state(torch.cat([mha(q, k_s, v_s, H), mha(q, k_t, v_t, H, keys)], -1))
        S_new = self.gate(S, z)
        if self.state_mlp is not None:
            S_new = self.mlp_gate(S_new, self.state_mlp(self.state_mlp_norm(S_new.to(x.dtype))))
        if lengths is not None:
            S_new = torch.where((lengths > 0)[:, None, None], S_new, S)
        return y, mixer_state, S_new


class BlockRecurrentTransformer(SequenceModel):
    """inputs (B, T) tokens or (B, T, input_dim) -> (B, T, output_dim), state.

    State: (mixer states, one per layer; S (B, num_state, d_model), one per recurrent
    layer). The layers' mixers are the config's `layer` (`layer_options`).
    """

    def __init__(self, config: ModelConfig, segment_len: int = 64, num_state: int = 16,
                 num_heads: int = 4, gate: str = "fixed", recurrent_layers=None):
        if config.hybrid is not None:
            raise ValueError(f"hybrid is not offered with the Block-Recurrent Transformer, got "
                             f"{config.hybrid!r}")
        super().__init__(config)
        self.segment_len = int_in("segment_len", segment_len)
        L = config.num_layers
        if recurrent_layers is None:
            recurrent_layers = (max(0, L - 2),)      # the paper: one layer near the top
        rec = tuple(recurrent_layers)
        if not rec or any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < L
                          for i in rec) or len(set(rec)) != len(rec):
            raise ValueError(f"recurrent_layers must be distinct layer indices in [0, {L - 1}], "
                             f"got {recurrent_layers!r}")
        self.recurrent_layers = tuple(sorted(rec))
        for i in self.recurrent_layers:
            self.blocks[i] = RecurrentCell(self.blocks[i].mixer, config.d_model, num_state,
                                           num_heads, gate, config.mlp_ratio)

    def init_state(self, batch_size: int, device=None, dtype=None, learn=False) -> tuple:
        mixers = tuple(b.mixer.init_state(batch_size, device=device, dtype=dtype)
                       for b in self.blocks)
        cells = tuple(self.blocks[i].init_state(batch_size, device=device, dtype=dtype,
                                                learn=learn) for i in self.recurrent_layers)
        return mixers, cells

    def forward(self, inputs, state=None, *, mode="auto", lengths=None):
        """-> outputs (B, T, output_dim), state (constant size).

        Right padding, `lengths` (B,): as SequenceModel's (the padded inputs are never read,
        the padded outputs are 0, each row's state is the one at its own last step): in each
        segment the mixers take the row's valid steps there, the state reads only them, and
        a row with none left keeps its state."""
        x, lengths, valid = self._embed_padded(inputs, lengths)
        if state is None:
            state = self.init_state(x.shape[0], device=x.device, dtype=x.dtype, learn=True)
        mixers, cells = list(state[0]), list(state[1])
        outs = []
        for start in range(0, x.shape[1], self.segment_len):
            h = x[:, start:start + self.segment_len]
            seg = None if lengths is None else (lengths - start).clamp(0, h.shape[1])
            j = 0
            for i, block in enumerate(self.blocks):
                if isinstance(block, RecurrentCell):
                    h, mixers[i], cells[j] = block(h, mixers[i], cells[j], mode=mode,
                                                   lengths=seg)
                    j += 1
                else:
                    h, mixers[i] = block(h, mixers[i], mode=mode, lengths=seg)
            outs.append(h)
        y = torch.cat(outs, 1) if outs else x
        return zero_padded(self.head(self.norm(y)), valid), (tuple(mixers), tuple(cells))

    def step(self, inputs_t, state=None):
        raise NotImplementedError("the Block-Recurrent Transformer updates its state once a "
                                  "segment: call the model on segments, model(x, state)")


def build_block_recurrent(segment_len: int = 64, num_state: int = 16, num_heads: int = 4,
                          gate: str = "fixed", recurrent_layers=None,
                          **config) -> BlockRecurrentTransformer:
    """BlockRecurrentTransformer(ModelConfig(**config), ...)."""
    return BlockRecurrentTransformer(ModelConfig(**config), segment_len=segment_len,
                                     num_state=num_state, num_heads=num_heads, gate=gate,
                                     recurrent_layers=recurrent_layers)

