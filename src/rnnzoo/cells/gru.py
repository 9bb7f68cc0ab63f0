"""The GRU in its two reset placements (Cho et al. 2014, arXiv:1406.1078).

Gate order r, z, n and parameters as torch.nn.GRU (W_ih, W_hh: (3H, ...)).

`gru` (v1, cuDNN's and torch.nn.GRU's placement: reset after the matmul):

    r = sigma(W_ir x + b_ir + W_hr h + b_hr),  z = sigma(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h_t = (1 - z) * n + z * h_{t-1}

`gru_v3` (the paper's eq. 8: reset before the matmul):

    n = tanh(W_in x + b_in + W_hn (r * h_{t-1}) + b_hn)

v1 needs one matmul per step; v3 two (the candidate's depends on r).
"""

from __future__ import annotations

import torch

from rnnzoo.cells.base import cell
from rnnzoo.cells.lstm import _Gated, uniform_init_


class _GRU(_Gated):
    num_gates = 3

    def __init__(self, input_size, hidden_size, bias=True):
        super().__init__(input_size, hidden_size, bias)
        uniform_init_(self, hidden_size)

    def project(self, x):
        """W_ih x + b_ih, plus b_hh for r and z (b_hn stays inside the reset product)."""
        xp = x @ self.weight_ih.T
        if self.bias_ih is None:
            return xp
        H = self.hidden_size
        return xp + torch.cat([self.bias_ih[:2 * H] + self.bias_hh[:2 * H], self.bias_ih[2 * H:]])

    def _b_hn(self):
        return 0 if self.bias_hh is None else self.bias_hh[2 * self.hidden_size:]


@cell("gru", paper="Cho et al. 2014, arXiv:1406.1078 (v1 reset placement, as cuDNN/torch.nn.GRU)",
      tiny={"hidden_size": 5})
class GRUCell(_GRU):
    parallel_modes = ("newton", "quasi")
    """torch.nn.GRU's cell; `fused` runs torch's GRU kernel. State h (B, H)."""

    def recur(self, xp_t, state):
        h = state[0]
        H = self.hidden_size
        gh = h @ self.weight_hh.T
        rz = torch.sigmoid(xp_t[:, :2 * H] + gh[:, :2 * H])
        r, z = rz[:, :H], rz[:, H:]
        n = torch.tanh(xp_t[:, 2 * H:] + r * (gh[:, 2 * H:] + self._b_hn()))
        return (n + z * (h - n),)

    def flat_weights(self) -> list:
        w = [self.weight_ih, self.weight_hh]
        return w + ([self.bias_ih, self.bias_hh] if self.bias_ih is not None else [])

    has_torch_kernel = True

    def fused(self, x, state):
        out, h = torch._VF.gru(x, state[0].unsqueeze(0).to(x.dtype), self.flat_weights(),
                               self.bias_ih is not None, 1, 0.0, self.training, False, True)
        return out, (h[0],)


@cell("gru_v3", paper="Cho et al. 2014, arXiv:1406.1078 (the paper's reset placement, eq. 8)",
      tiny={"hidden_size": 5})
class GRUv3Cell(_GRU):
    """The paper's GRU: the reset gate multiplies h before the candidate's matmul. State h."""

    def recur(self, xp_t, state):
        h = state[0]
        H = self.hidden_size
        rz = torch.sigmoid(xp_t[:, :2 * H] + h @ self.weight_hh[:2 * H].T)
        r, z = rz[:, :H], rz[:, H:]
        n = torch.tanh(xp_t[:, 2 * H:] + (r * h) @ self.weight_hh[2 * H:].T + self._b_hn())
        return (n + z * (h - n),)
