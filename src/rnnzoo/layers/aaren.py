"""Aaren, attention as an RNN (Feng et al. 2024, "Attention as an RNN", arXiv:2405.13956):
softmax attention of a learned query over every prefix, many-to-many, read as a recurrence.

    s_t = q_h . k_t / sqrt(Dh),   k_t, v_t = W_k x_t, W_v x_t     (q_h: a learned query a head)
    o_t = sum_{i<=t} exp(s_i) v_i / sum_{i<=t} exp(s_i)             (attention over the prefix)
    y_t = W_o o_t

The RNN keeps the running max m, the stabilised sum of weights u and of weighted values w:

    m_t = max(m_{t-1}, s_t)
    u_t = u_{t-1} exp(m_{t-1} - m_t) + exp(s_t - m_t)
    w_t = w_{t-1} exp(m_{t-1} - m_t) + exp(s_t - m_t) v_t,          o_t = w_t / u_t

(m, u, w) combine associatively, (m_A, u_A, w_A) + (m_B, u_B, w_B) = (max, u_A e^(m_A - m)
+ u_B e^(m_B - m), likewise w), so every prefix comes out of a parallel prefix scan: the
paper's. Here the scan is split in its two parts: m_t is a prefix max (cummax), and then
u and w are the linear recurrences above with a_t = exp(m_{t-1} - m_t) <= 1 and
b_t = exp(s_t - m_t) <= 1 (ops.scan.linear_scan), so nothing overflows.

State: (m (B, H), u (B, H), w (B, H, Dh)); u = 0 is the empty prefix (m is then ignored).
Modes: `sequential` (the RNN above, step by step) and `scan` (the prefix scan).
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.checks import positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.ops.native.linear import Linear
from rnnzoo.ops.scan import linear_scan
from rnnzoo.registry import register


@register("aaren", family="attention", paper="Feng et al. 2024, arXiv:2405.13956 (Aaren)",
          tiny=dict(d_model=4, num_heads=2))
class Aaren(RecurrentLayer):
    """x: (B, T, d_model) -> y; state (m (B, H), u (B, H), w (B, H, head_dim))."""

    modes = ("sequential", "scan")

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None):
        super().__init__(d_model)
        H = positive_int("num_heads", num_heads)
        D = positive_int("head_dim", d_model // H if head_dim is None else head_dim)
        self.num_heads, self.head_dim = H, D
        self.query = nn.Parameter(torch.randn(H, D) * D ** -0.5)
        self.kv_proj = Linear(d_model, 2 * H * D, bias=False)
        self.o_proj = Linear(H * D, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        sdt = state_dtype(dtype)
        H, D = self.num_heads, self.head_dim
        return (torch.zeros(batch_size, H, device=device, dtype=sdt),
                torch.zeros(batch_size, H, device=device, dtype=sdt),
                torch.zeros(batch_size, H, D, device=device, dtype=sdt))

    def op_inputs(self, x):
        """scores s: (B, T, H) and values v: (B, T, H, head_dim), in the compute dtype."""
        B, T, _ = x.shape
        k, v = self.kv_proj(x).to(compute_dtype(x)).view(B, T, 2, self.num_heads, -1).unbind(2)
        s = (k * self.query.to(k.dtype)).sum(-1) * self.head_dim ** -0.5
        return s, v

    def _forward(self, x, state, mode):
        s, v = self.op_inputs(x)
        m, u, w = state
        if mode == "sequential":
            outs = []
            for s_t, v_t in zip(s.unbind(1), v.unbind(1)):
                m, u, w = self.update((m, u, w), s_t, v_t)
                outs.append(w / u[..., None])
            o = torch.stack(outs, 1)
        else:
            # prefix max from the state's m (when the state holds anything)
            start = torch.where(u > 0, m, s[:, 0])
            mt = torch.maximum(s.cummax(1).values, start[:, None])             # (B, T, H)
            prev = torch.cat([start[:, None], mt[:, :-1]], 1)
            a = torch.exp(torch.clamp(prev - mt, max=0))
            b = torch.exp(s - mt)
            uw, _ = linear_scan(a[..., None], torch.cat([b[..., None], b[..., None] * v], -1),
                                torch.cat([u[..., None], w], -1).to(s.dtype))
            o = uw[..., 1:] / uw[..., :1]
            m, u, w = mt[:, -1], uw[:, -1, :, 0], uw[:, -1, :, 1:]
        y = self.o_proj(o.flatten(2).to(x.dtype))
        return y, tuple(t.to(r.dtype) for t, r in zip((m, u, w), state))

    @staticmethod
    def update(state, s_t, v_t):
        """One RNN step: (m, u, w) with the score s_t (B, H) and value v_t (B, H, Dh)."""
        m, u, w = state
        m_new = torch.where(u > 0, torch.maximum(m, s_t), s_t)
        a = torch.exp(torch.clamp(m - m_new, max=0))  # <= 1; times u = 0 when empty
        b = torch.exp(s_t - m_new)
        return m_new, u * a + b, w * a[..., None] + b[..., None] * v_t

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}"
