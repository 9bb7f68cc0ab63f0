"""Longhorn (Liu et al. 2024, "Longhorn: State Space Models are Amortized Online Learners",
arXiv:2407.14207): an SSM whose update is the closed-form solution of an online regression.

Each step solves, for the state S (d_inner, d_state), the implicit online-learning problem

    S_t = argmin_S ||S - S_{t-1}||_F^2 + sum_i beta_{t,i} (S_i . k_t - u_{t,i})^2

whose minimiser (Sherman-Morrison, row by row) is

    S_t = S_{t-1} - eps_t (S_{t-1} k_t - u_t) k_t^T,   eps_t = beta_t / (1 + beta_t |k_t|^2)

i.e. the transition I - eps_{t,i} k_t k_t^T for row i. Longhorn keeps its diagonal, so that the
recurrence is a diagonal (selective) scan:

    S_t = (1 - eps_t k_t^{2 T}) * S_{t-1} + (eps_t * u_t) k_t^T,    y_t = S_t q_t + D * u_t

(exact when S_{t-1} = 0 or k_t is axis-aligned). The block is Mamba's, without A or dt:

    u, z = W_in x;  u = silu(conv(u));  dt, k, q = W_x u;  beta = sigmoid(W_dt dt)
    out  = W_out (y * silu(z))

The log-decay log(1 - eps_i k_j^2) = log1p(beta_i (|k|^2 - k_j^2)) - log1p(beta_i |k|^2) is
finite and <= 0. State: (S (B, d_inner, d_state), conv state (B, d_conv - 1, d_inner)).
Modes: `sequential` (the loop), `scan` (ops.scan.linear_scan over the (d_inner, d_state)
state; on the CPU the fused C kernel ops/native/longhorn_scan.c, which never writes the
(B, T, d_inner, d_state) transitions: ~40x faster at B=16, T=512, d_inner 256) and `chunk` (ops.chunk.linear: gated linear attention with one head per inner channel,
value width 1, key k, query q and the per-(channel, key) log-decay).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.conv import ShortConv
from rnnzoo.ops import backend, sequence_parallel
from rnnzoo.ops.chunk.linear import gated_linear_attention
from rnnzoo.ops.native import gated_norm
from rnnzoo.ops.native import longhorn_scan as native_longhorn
from rnnzoo.ops.native.linear import Linear
from rnnzoo.ops.scan import linear_scan
from rnnzoo.registry import register


def longhorn_coefficients(u, k, beta):
    """u, beta: (B, T, d); k: (B, T, m) -> (log a (B, T, d, m), eps (B, T, d)) with
    eps = beta / (1 + beta |k|^2) and a = 1 - eps k^2 (the diagonal of I - eps k k^T)."""
    k2 = k * k
    norm = k2.sum(-1, keepdim=True)                                   # (B, T, 1)
    eps = beta / (1 + beta * norm)
    log_a = torch.log1p(beta[..., None] * (norm - k2)[:, :, None]) \
        - torch.log1p(beta * norm)[..., None]
    return log_a, eps


def longhorn_recurrence(u, beta, k, q, S, *, mode="sequential", chunk_size=64):
    """S_t = (1 - eps_t k_t^2) * S_{t-1} + (eps_t u_t) k_t^T, y_t = S_t q_t.
    u, beta: (B, T, d); k, q: (B, T, m); S: (B, d, m) -> (y (B, T, d), S_T).
    mode: "sequential" (the loop), "scan" (linear_scan; on the CPU in float32/float64 the
    fused C kernel `ops.native.longhorn_scan` when it builds: `backend.use_native`) or
    "chunk" (ops.chunk.linear)."""
    S = S.to(u.dtype)
    if mode == "scan" and not sequence_parallel.active() and backend.use_native(u, beta, k, q, S):
        lib = native_longhorn.load()
        if lib is not None:
            return native_longhorn.longhorn_scan(lib, u, beta, k, q, S, _scan_form)
    if mode == "scan":
        return _scan_form(u, beta, k, q, S)
    log_a, eps = longhorn_coefficients(u, k, beta)
    if mode == "chunk":  # one GLA head per inner channel: K = d_state, V = 1
        B, T, d = u.shape
        m = k.shape[-1]
        o, S = gated_linear_attention(
            q[:, :, None].expand(B, T, d, m), k[:, :, None].expand(B, T, d, m),
            (eps * u)[..., None], log_a, scale=1.0, initial_state=S[..., None],
            chunk_size=chunk_size)
        return o[..., 0], S[..., 0]
    a, b = log_a.exp(), (eps * u)[..., None] * k[:, :, None]
    ys = []
    for t in range(u.shape[1]):
        S = a[:, t] * S + b[:, t]
        ys.append(torch.einsum("bdm,bm->bd", S, q[:, t]))
    return (torch.stack(ys, 1) if ys else u.new_zeros(u.shape)), S


def _scan_form(u, beta, k, q, S):
    """longhorn_recurrence's "scan" mode in PyTorch (ops.scan.linear_scan over the
    transitions): its path off the C kernel, and the form the kernel's `twice` differentiates."""
    log_a, eps = longhorn_coefficients(u, k, beta)
    h, S = linear_scan(log_a.exp(), (eps * u)[..., None] * k[:, :, None], S)
    return torch.einsum("btdm,btm->btd", h, q), S


@register("longhorn", family="matrix",
          paper="Liu et al. 2024, arXiv:2407.14207 (Longhorn)",
          tiny=dict(d_model=4, d_state=3, d_conv=2, expand=1, dt_rank=2, chunk_size=4))
class Longhorn(RecurrentLayer):
    """x: (B, T, d_model) -> y; state (S (B, d_inner, d_state), conv state)."""

    modes = ("sequential", "scan", "chunk")

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", chunk_size: int = 64):
        super().__init__(d_model)
        self.d_state = positive_int("d_state", d_state)
        self.expand = positive_int("expand", expand)
        self.chunk_size = positive_int("chunk_size", chunk_size)
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        self.dt_rank = positive_int("dt_rank ('auto' or)", dt_rank)
        d_inner = self.d_inner = expand * d_model
        self.in_proj = Linear(d_model, 2 * d_inner, bias=False)
        self.conv = ShortConv(d_inner, positive_int("d_conv", d_conv))
        self.x_proj = Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = Linear(self.dt_rank, d_inner)
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = Linear(d_inner, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        sdt = state_dtype(dtype)
        return (torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=sdt),
                self.conv.init_state(batch_size, device, sdt))

    def op_inputs(self, x, conv_state):
        """u, beta (B, T, d_inner), k, q (B, T, d_state), z (B, T, d_inner), new conv state:
        u the values, beta the per-channel step of the online objective, in the compute dtype."""
        cdt = compute_dtype(x)
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u, conv_state = self.conv(u, conv_state)
        dt, k, q = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        beta = torch.sigmoid(self.dt_proj(dt).to(cdt))
        return u.to(cdt), beta, k.to(cdt), q.to(cdt), z.to(cdt), conv_state

    def op_output(self, y, u, z, x):
        """y + D u, gated by silu(z), then W_out. y, u, z: (B, T, d_inner). On the CPU in
        float32/float64 the skip and gate in one C pass (ops.native.gated_norm.gate_rms)."""
        if backend.use_native(y, u, z, self.D):
            lib = gated_norm.load()
            if lib is not None:
                W = y.shape[-1]
                return self.out_proj(gated_norm.gate_rms(lib, y, u, self.D, z, None, W, 0.0,
                                                         norm=False).to(x.dtype))
        return self.out_proj(((y + self.D.to(y.dtype) * u) * F.silu(z)).to(x.dtype))

    def _forward(self, x, state, mode):
        S, conv_state = state
        u, beta, k, q, z, conv_state = self.op_inputs(x, conv_state)
        y, S = longhorn_recurrence(u, beta, k, q, S, mode=mode, chunk_size=self.chunk_size)
        return self.op_output(y, u, z, x), (S, conv_state)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, expand={self.expand}, "
                f"dt_rank={self.dt_rank}, chunk_size={self.chunk_size}")
