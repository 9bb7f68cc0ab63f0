"""GateLoop (Katsch 2023, "GateLoop: Fully Data-Controlled Linear Recurrence for
Sequence Modeling", arXiv:2311.01927).

Per head, with q_t, k_t in R^{d_state}, v_t in R^{head_dim} and a data-controlled
complex transition a_t in C^{d_state}:

    a_t = sigma(W_m x_t) * exp(i W_theta x_t)          |a_t| < 1, phase unbounded
    S_t = diag(a_t) S_{t-1} + k_t v_t^T                 S: (d_state, head_dim) complex
    o_t = Re(q_t^T S_t),   y_t = W_o (o_t * silu(W_g x_t))

Equivalently o_t = Re(sum_{s<=t} (q_t . (prod_{s<r<=t} a_r) k_s) v_s), an attention
with data-controlled complex relative decay (the paper's surrogate attention).
The transition is diagonal per key dimension and broadcast over the value
dimension, so `linear_scan` solves it; `scan` works in checkpointed time chunks
so that the (B, T, heads, d_state, head_dim) states never exist all at once.

`chunk` (the default) is real gated linear attention with twice the key width: with
R_t, Theta_t the running sums of Re log a and Im log a over the call,
Re(e^{L_t - L_s}) = e^{R_t - R_s} (cos Theta_t cos Theta_s + sin Theta_t sin Theta_s), so

    o_t = q'_t^T S'_t,   S'_t = diag(e^{Re log a_t}) S'_{t-1} + k'_t v_t^T,
    q' = [q cos Theta, q sin Theta],  k' = [k cos Theta, k sin Theta]      (2 d_state keys)

which `ops.chunk.linear.gated_linear_attention` computes chunkwise with matrix products;
S'_0 = [Re S_0; -Im S_0] and S_T = e^{i Theta_T} (S'_T[:N] - i S'_T[N:]). Theta is summed
in float64, so the phases stay exact over long sequences. `chunk_size` (default 32) is
the chunk of both modes: at d_model 128 on a CPU, 32 ran the chunk mode 1.6x faster than 64
(whose log-decay span, ~0.7 per step at init, passes the op's limit for one factorised block).
The state is (B, num_heads, d_state, head_dim) complex.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rnnzoo.checks import positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers._chunks import over_chunks
from rnnzoo.layers._diagonal import DiagonalLayer
from rnnzoo.ops import sequence_parallel
from rnnzoo.ops.chunk.linear import gated_linear_attention
from rnnzoo.ops.native.linear import Linear
from rnnzoo.ops.scan import linear_scan
from rnnzoo.registry import register


@register("gateloop", family="diagonal", paper="Katsch 2023, arXiv:2311.01927",
          tiny=dict(d_model=4, num_heads=2, d_state=2, chunk_size=4))
class GateLoop(DiagonalLayer):
    """x: (B, T, d_model) -> y: (B, T, d_model); state S: (B, heads, d_state, head_dim) complex."""

    modes = ("sequential", "chunk", "scan")

    def __init__(self, d_model: int, num_heads: int = 4, d_state: int = 16, chunk_size: int = 32):
        super().__init__(d_model)
        for name, v in (("num_heads", num_heads), ("d_state", d_state), ("chunk_size", chunk_size)):
            positive_int(name, v)
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads, got {num_heads}")
        self.num_heads, self.d_state, self.chunk_size = num_heads, d_state, chunk_size
        self.head_dim = d_model // num_heads
        hk = num_heads * d_state
        self.in_proj = Linear(d_model, 4 * hk + 2 * d_model)  # q, k, magnitude, phase, v, g
        self.out_proj = Linear(d_model, d_model)

    def init_state(self, batch_size, device=None, dtype=None):
        return torch.zeros(batch_size, self.num_heads, self.d_state, self.head_dim, device=device,
                           dtype=state_dtype(dtype, complex_=True))

    def projections(self, x):
        """q, k, log a (complex), v per head in the compute dtype, and the output gate g."""
        B, T, _ = x.shape
        hk = self.num_heads * self.d_state
        q, k, m, theta, v, g = self.in_proj(x).split([hk] * 4 + [self.d_model] * 2, dim=-1)
        cdt = compute_dtype(x)
        heads = lambda t, d: t.to(cdt).view(B, T, self.num_heads, d)  # noqa: E731
        log_a = torch.complex(-F.softplus(-heads(m, self.d_state)), heads(theta, self.d_state))
        return (heads(q, self.d_state), heads(k, self.d_state), log_a,
                heads(v, self.head_dim), g)

    def _run(self, x, state, mode, mask=None):
        q, k, log_a, v, g = self.projections(x)
        if mask is not None:  # padded steps are the identity: a = exp(0) = 1, b = k v^T = 0
            m = mask.unsqueeze(-1)
            log_a, k = torch.where(m, log_a, torch.zeros_like(log_a)), k * m
        if mode == "chunk":
            o, S = self._chunk(state, q, k, log_a, v)
            return self.out_proj(o.to(x.dtype) * F.silu(g)), S

        def chunk(S, q, k, log_a, v):
            a = torch.exp(log_a).unsqueeze(-1)                          # (B, L, H, N, 1)
            b = (k.unsqueeze(-1) * v.unsqueeze(-2)).to(a.dtype)          # (B, L, H, N, dv)
            q = q.to(a.dtype)
            if mode == "scan":
                Ss, S = linear_scan(a, b, S)
                return torch.einsum("blhn,blhnv->blhv", q, Ss).real.flatten(2), S
            out = []
            for a_t, b_t, q_t in zip(a.unbind(1), b.unbind(1), q.unbind(1)):
                S = a_t * S + b_t
                out.append(torch.einsum("bhn,bhnv->bhv", q_t, S).real.flatten(1))
            return torch.stack(out, 1), S

        size = self.chunk_size if mode == "scan" else x.shape[1]
        o, S = over_chunks(chunk, state, (q, k, log_a, v), size)
        return self.out_proj(o.to(x.dtype) * F.silu(g)), S

    def _chunk(self, S, q, k, log_a, v):
        """The `chunk` mode: o (B, T, d_model) and the final state, by real gated linear
        attention over keys [k cos Theta, k sin Theta] (see the module docstring)."""
        real = log_a.real
        theta = log_a.imag.to(torch.float64).cumsum(1)                   # (B, T, H, N)
        end = theta[:, -1]
        if sequence_parallel.active():  # this rank's slice: its phases start where the last ended
            before, end = sequence_parallel.prefix_sum(end)
            theta = theta + before[:, None]
        cos, sin = theta.cos().to(real.dtype), theta.sin().to(real.dtype)
        q2 = torch.cat([q * cos, q * sin], -1)
        k2 = torch.cat([k * cos, k * sin], -1)
        S2 = torch.cat([S.real, -S.imag], -2).to(real.dtype)             # (B, H, 2N, head_dim)
        o, S2 = gated_linear_attention(q2, k2, v, torch.cat([real, real], -1), scale=1.0,
                                       initial_state=S2, chunk_size=self.chunk_size)
        N = self.d_state
        turn = torch.polar(torch.ones_like(end), end).to(S.dtype)
        S = turn.unsqueeze(-1) * torch.complex(S2[:, :, :N], -S2[:, :, N:]).to(S.dtype)
        return o.flatten(2), S
