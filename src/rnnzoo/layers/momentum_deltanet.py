"""Momentum DeltaNet (fla-core's `MomentumDeltaNet`, arXiv:2605.05838): the delta rule's
online regression step taken with heavy-ball momentum, a second (K, V) state M.

    q, k, v = silu(shortconv(W_q x)), silu(shortconv(W_k x)), silu(shortconv(W_v x))
    q, k    = q / |q|, k / |k|;   q <- q - exp(D_log) k                    (output_correction)
    eta     = 1 + tanh(W_e x / tau),   tau = sqrt(d_model / tau_factor)    (the step size)
    theta   = arctan(eta exp(log_factor))                                  (a head's balance)
    beta    = sin^2(theta) sigmoid(W_b x)            (2 x with allow_neg_eigval)
    log_alpha = log cos^2(theta) - exp(A_log) softplus(W_a x + dt_bias)
    log_mu  = max(-exp(Mu_log) softplus(W_m x + mu_bias), min_log_mu)
    M_t     = mu_t M_{t-1} + eta_t k_t (S_{t-1}^T k_t - v_t)^T,   S_t = alpha_t S_{t-1} - beta_t M_t
    y       = W_o [RMSNorm(S_t^T q_t / sqrt(K)) * silu(W_g x)]   (RMSNorm alone without output_gate)

The state pair (S, M) moves by a map linear in (S, M) (M feeds S through a scalar block), so it
has an exact chunk form of its own (ops.momentum_delta.momentum_delta: one triangular solve per
chunk for the error rows, the pair passed from chunk to chunk; on a CPU in float32/64 the
recurrence in C instead, ops.native.momentum_scan, which costs less there; the gates there
too, one C pass each way, `momentum_scan.gates`). Modes:
`sequential` (the loop) and `chunk` (`auto`). State: (S, M (B, H, K, V), short-conv state).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import flag, positive_int, real
from rnnzoo.dtypes import compute_dtype
from rnnzoo.layers._delta_block import delta_qkv, delta_state, gated_head_output
from rnnzoo.layers._softplus import inverse_softplus
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.conv import ShortConv
from rnnzoo.layers.norms import HeadNorm
from rnnzoo.ops import backend
from rnnzoo.ops.momentum_delta import (
    momentum_delta,
    momentum_delta_recurrent,
    momentum_delta_step,
)
from rnnzoo.ops.native import momentum_scan
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import register


def _inv_softplus_dt(n):
    dt = torch.empty(n).uniform_(math.log(1e-3), math.log(1e-1)).exp()
    return inverse_softplus(dt)


@register("momentum_deltanet", family="matrix",
          paper="Momentum DeltaNet, arXiv:2605.05838 (fla-core ops/momentum_delta_rule)",
          tiny=dict(d_model=6, num_heads=2, head_dim=3, expand_v=1, d_conv=2))
class MomentumDeltaNet(RecurrentLayer):
    """x: (B, T, d_model) -> y; state (S, M (B, H, K, expand_v K), conv state)."""

    modes = ("sequential", "chunk")

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 expand_v: int = 2, d_conv: int = 4, output_gate: bool = True,
                 output_correction: bool = True, allow_neg_eigval: bool = False,
                 min_log_mu: float | None = -2.0, tau_factor: float = 1.0,
                 norm_eps: float = 1e-5):
        super().__init__(d_model)
        H = positive_int("num_heads", num_heads)
        K = positive_int("head_dim", d_model // H if head_dim is None else head_dim)
        V = K * positive_int("expand_v", expand_v)
        self.num_heads, self.head_dim, self.value_dim = H, K, V
        self.allow_neg_eigval = flag("allow_neg_eigval", allow_neg_eigval)
        self.min_log_mu = None if min_log_mu is None else real("min_log_mu", min_log_mu, hi=0.0)
        self.tau = math.sqrt(d_model / real("tau_factor", tau_factor, lo=0.0, lo_open=True))
        self.qkv_proj = Linear(d_model, H * (2 * K + V), bias=False)
        self.conv = ShortConv(H * (2 * K + V), d_conv, bias=False)
        self.gate_proj = Linear(d_model, 4 * H, bias=False)       # a, b, m, e
        self.A_log = nn.Parameter(torch.empty(H).uniform_(0, 16).log())
        self.Mu_log = nn.Parameter(torch.empty(H).uniform_(0, 16).log())
        self.dt_bias = nn.Parameter(_inv_softplus_dt(H))
        self.mu_bias = nn.Parameter(self.dt_bias.detach().clone())
        self.log_factor = nn.Parameter(torch.empty(H).uniform_(0, 4).log())
        self.D_log = nn.Parameter(torch.empty(H).uniform_(0, 1).log()) \
            if flag("output_correction", output_correction) else None
        self.g_proj = Linear(d_model, H * V, bias=False) if flag("output_gate", output_gate) \
            else None
        self.norm = HeadNorm(H, V, kind="rms", eps=norm_eps)
        self.o_proj = Linear(H * V, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        S, conv_state = delta_state(self, batch_size, device, dtype)
        return S, torch.zeros_like(S), conv_state

    def op_inputs(self, x, conv_state, correct=True):
        """q, k (B, T, H, K), v (B, T, H, V), log_alpha, log_mu, beta, eta (B, T, H), conv state;
        q with the output correction q - exp(D_log) k unless correct is False (the ops take
        it as their `correction`, `correction` below)."""
        cdt = compute_dtype(x)
        q, k, v, conv_state = delta_qkv(self, x, conv_state)
        g = self.gate_proj(x).to(cdt)
        params = [t.to(cdt) for t in (self.A_log, self.Mu_log, self.dt_bias, self.mu_bias,
                                      self.log_factor)]
        lib = momentum_scan.load() if backend.use_native(g, *params) else None
        if lib is not None:  # the gates below in one C pass each way
            log_alpha, log_mu, beta, eta = momentum_scan.gates(
                lib, g, *params, self.tau, self.allow_neg_eigval, self.min_log_mu)
        else:
            log_alpha, log_mu, beta, eta = self._gates(g)
        if correct and self.D_log is not None:
            q = q - self.correction(cdt)[:, None] * k
        return q, k, v, log_alpha, log_mu, beta, eta, conv_state

    def _gates(self, g):
        """(log_alpha, log_mu, beta, eta) (B, T, H) from g = gate_proj(x) (B, T, 4H), in
        torch (the module docstring's formulas)."""
        cdt = g.dtype
        a, b, m, e = g.chunk(4, -1)
        eta = torch.tanh(e / self.tau) + 1
        theta = torch.atan(eta * self.log_factor.to(cdt).exp())
        beta = torch.sin(theta) ** 2 * torch.sigmoid(b)
        if self.allow_neg_eigval:
            beta = 2 * beta
        log_alpha = 2 * torch.log(torch.cos(theta)) \
            - self.A_log.to(cdt).exp() * F.softplus(a + self.dt_bias.to(cdt))
        log_mu = -self.Mu_log.to(cdt).exp() * F.softplus(m + self.mu_bias.to(cdt))
        if self.min_log_mu is not None:
            log_mu = log_mu.clamp(min=self.min_log_mu)
        return log_alpha, log_mu, beta, eta

    def correction(self, dtype):
        """exp(D_log) (H,) in dtype, or None without the output correction."""
        return None if self.D_log is None else self.D_log.to(dtype).exp()

    def op_output(self, o, x):
        """Per-head RMSNorm (times silu(W_g x)), then W_o. o: (B, T, H, V)."""
        return gated_head_output(self, o, x, F.silu)

    def _forward(self, x, state, mode):
        S, M, conv_state = state
        q, k, v, la, lm, beta, eta, conv_state = self.op_inputs(x, conv_state, correct=False)
        fn = momentum_delta if mode == "chunk" else momentum_delta_recurrent
        o, (S, M) = fn(q, k, v, k, la, lm, beta, eta, initial_state=(S, M),
                       correction=self.correction(q.dtype))
        return self.op_output(o, x), (S, M, conv_state)

    def _step(self, x_t, state):
        S, M, conv_state = state
        q, k, v, la, lm, beta, eta, conv_state = self.op_inputs(x_t[:, None], conv_state)
        q, k, v, la, lm, beta, eta = (t[:, 0] for t in (q, k, v, la, lm, beta, eta))
        o, S, M = momentum_delta_step(q, k, v, k, la, lm, beta, eta, S, M, self.head_dim ** -0.5)
        return self.op_output(o[:, None], x_t[:, None])[:, 0], (S, M, conv_state)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"value_dim={self.value_dim}, output_correction={self.D_log is not None}, "
                f"output_gate={self.g_proj is not None}, min_log_mu={self.min_log_mu}, "
                f"allow_neg_eigval={self.allow_neg_eigval}")
