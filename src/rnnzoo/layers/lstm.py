"""The standard LSTM as a token mixer (Hochreiter & Schmidhuber 1997; the
forget-gate form of Gers et al. 2000, gate order and biases as torch.nn.LSTM):

    i, f, g, o = sigma(W_i x + U_i h), sigma(W_f x + U_f h), tanh(W_g x + U_g h), sigma(W_o x + U_o h)
    c_t = f * c_{t-1} + i * g,   h_t = o * tanh(c_t)

Modes: `sequential` (reference: the input projection for all steps in one
matrix product, then one fused matrix product per step) and `fused`
(torch.nn.LSTM's own kernel on the same parameters).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnzoo.layers.base import RecurrentLayer, compute_dtype, state_dtype
from rnnzoo.registry import register


@register("lstm", family="classic", paper="Hochreiter & Schmidhuber 1997; Gers et al. 2000",
          tiny=dict(d_model=6))
class LSTM(RecurrentLayer):
    """x: (B, T, d_model) -> y: (B, T, d_model); state (h, c), each (B, hidden_size).

    `hidden_size` defaults to d_model; when it differs, a linear map takes h back
    to d_model. The parameters live in an `nn.LSTM` (`self.rnn`), so its state
    dict is PyTorch's.
    """

    modes = ("sequential", "fused")

    def __init__(self, d_model: int, hidden_size: int | None = None, bias: bool = True):
        super().__init__(d_model)
        self.hidden_size = hidden_size or d_model
        self.rnn = nn.LSTM(d_model, self.hidden_size, bias=bias, batch_first=True)
        self.out_proj = nn.Linear(self.hidden_size, d_model) if self.hidden_size != d_model \
            else nn.Identity()

    def init_state(self, batch_size, device=None, dtype=None):
        z = torch.zeros(batch_size, self.hidden_size, device=device, dtype=state_dtype(dtype))
        return z, z.clone()

    def _input_projection(self, x):
        r = self.rnn
        xp = x @ r.weight_ih_l0.T
        if r.bias:
            xp = xp + (r.bias_ih_l0 + r.bias_hh_l0)
        return xp

    def _cell(self, xp_t, h, c, w_hh):
        i, f, g, o = (xp_t + h @ w_hh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def _forward(self, x, state, mode):
        h, c = state
        if mode == "fused":
            hs, (h, c) = self.rnn(x, (h.unsqueeze(0).to(x.dtype), c.unsqueeze(0).to(x.dtype)))
            sd = state_dtype(x.dtype)
            return self.out_proj(hs), (h[0].to(sd), c[0].to(sd))
        cd = compute_dtype(x)
        w_hh = self.rnn.weight_hh_l0.T.to(cd)
        hs = []
        for xp_t in self._input_projection(x).to(cd).unbind(1):
            h, c = self._cell(xp_t, h, c, w_hh)
            hs.append(h)
        return self.out_proj(torch.stack(hs, 1).to(x.dtype)), (h, c)

    def _step(self, x_t, state):
        h, c = state
        cd = compute_dtype(x_t)
        xp = self._input_projection(x_t).to(cd)
        h, c = self._cell(xp, h, c, self.rnn.weight_hh_l0.T.to(cd))
        return self.out_proj(h.to(x_t.dtype)), (h, c)

    def _forward_lengths(self, x, state, mode, lengths):
        if mode != "fused" or int(lengths.min()) == 0:
            return super()._forward_lengths(x, state, mode, lengths)
        h, c = (s.unsqueeze(0).to(x.dtype) for s in state)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, (h, c) = self.rnn(packed, (h, c))
        hs, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        sd = state_dtype(x.dtype)
        return self.out_proj(hs), (h[0].to(sd), c[0].to(sd))
