"""MesaNet (von Oswald et al. 2025, "MesaNet: Sequence Modeling by Locally Optimal Test-Time
Training", arXiv:2506.05233): each head reads out the ridge-regression solution fitted to
the decayed key-value history, solved by conjugate gradients (ops.mesa).

    q, k    = silu(shortconv(W_q x)), silu(shortconv(W_k x));   q, k = q / |q|, k / |k|
    v       = W_v x
    gamma   = sigmoid(W_a x + b_a),   beta = sigmoid(W_b x + b_b),   lambda = softplus(l) + lambda_lower_bound
    H_t     = gamma_t H_{t-1} + beta_t k_t k_t^T,   G_t = gamma_t G_{t-1} + beta_t k_t v_t^T
    o_t     = G_t^T (H_t + diag(lambda))^{-1} q_t         (conjugate gradients: at most
              max_cg_steps, stopping once the residual |r| <= cg_tol |q_t|)
    y       = W_o [RMSNorm(o) * silu(W_g x)]              (RMSNorm(o) alone without output_gate)

lambda is one regulariser per key channel (the paper's Lambda), initialised to 1. cg_tol is part
of the layer's definition, the same in every mode (a token's solve runs while |r_i| > cg_tol
|q_t|): at 1e-5 (the level ops.mesa's guard converges to) a freshly initialised layer's solves
take 4-6 iterations at d_model 128, where fla runs a fixed 30 (cg_tol=0: always max_cg_steps). State:
(H (B, heads, K, K), G (B, heads, K, K), short-conv state (B, d_conv - 1, 2 heads K)).
Modes: `sequential` (the recurrence, one CG solve a step) and `chunk` (every step's CG
iterations at once through the chunkwise form of H_t x).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import flag, positive, positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers._delta_block import conv_l2, l2norm
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.conv import ShortConv
from rnnzoo.layers.norms import HeadNorm
from rnnzoo.ops.mesa import mesa, mesa_recurrent, mesa_step
from rnnzoo.ops.native.head_norm import rms_gate
from rnnzoo.ops.native.linear import Linear, linear
from rnnzoo.registry import register


@register("mesanet", family="matrix", paper="von Oswald et al. 2025, arXiv:2506.05233 (MesaNet)",
          tiny=dict(d_model=6, num_heads=2, head_dim=3, d_conv=2, chunk_size=4, max_cg_steps=4))
class MesaNet(RecurrentLayer):
    """x: (B, T, d_model) -> y; state (H (B, heads, K, K), G (B, heads, K, K), conv state)."""

    modes = ("sequential", "chunk")

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 d_conv: int = 4, output_gate: bool = True, lambda_lower_bound: float = 0.25,
                 max_cg_steps: int = 30, cg_tol: float = 1e-5, chunk_size: int = 64,
                 norm_eps: float = 1e-5):
        super().__init__(d_model)
        H = positive_int("num_heads", num_heads)
        K = positive_int("head_dim", d_model // H if head_dim is None else head_dim)
        self.num_heads, self.head_dim = H, K
        self.chunk_size = positive_int("chunk_size", chunk_size)
        self.max_cg_steps = positive_int("max_cg_steps", max_cg_steps)
        self.cg_tol = positive("cg_tol", cg_tol, allow_zero=True)
        self.lambda_lower_bound = positive("lambda_lower_bound", lambda_lower_bound)
        if self.lambda_lower_bound >= 1:
            raise ValueError(f"lambda_lower_bound must be below lambda's initial value 1, got "
                             f"{lambda_lower_bound!r}")
        self.qk_proj = Linear(d_model, 2 * H * K, bias=False)
        self.conv = ShortConv(2 * H * K, d_conv, bias=False)
        self.v_proj = Linear(d_model, H * K, bias=False)
        self.a_proj = Linear(d_model, H)
        self.b_proj = Linear(d_model, H)
        init = math.log(math.expm1(1.0 - self.lambda_lower_bound))  # softplus^-1(1 - bound)
        self.lambda_params = nn.Parameter(torch.full((H, K), init))
        self.g_proj = Linear(d_model, H * K, bias=False) if flag("output_gate", output_gate) \
            else None
        self.norm = HeadNorm(H, K, kind="rms", eps=norm_eps)
        self.o_proj = Linear(H * K, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        sdt = state_dtype(dtype)
        Hkk = torch.zeros(batch_size, self.num_heads, self.head_dim, self.head_dim,
                          device=device, dtype=sdt)
        return Hkk, torch.zeros_like(Hkk), self.conv.init_state(batch_size, device, sdt)

    def op_inputs(self, x, conv_state):
        """q, k, v (B, T, heads, K), g (log gamma), beta (B, T, heads), lambda (heads, K), conv."""
        *ins, _, conv_state = self._inputs(x, conv_state)
        return (*ins, conv_state)

    def _inputs(self, x, conv_state):
        """op_inputs' tensors and z = W_g x (B, T, heads K; None without the output gate)
        before the conv state. W_v, W_g, W_a, W_b run as one product (one pass over x and
        one weight gradient for the four); W_q, W_k as their own, whose output the conv
        reads whole."""
        B, T, _ = x.shape
        H, K = self.num_heads, self.head_dim
        cdt = compute_dtype(x)
        # on a CPU the C convolution returns q and k unit norm (its fused l2norm)
        qk, conv_state, normed = conv_l2(self.conv, self.qk_proj(x).to(cdt), conv_state, 2 * H, K)
        qk = qk.reshape(B, T, 2 * H, K)
        q, k = (qk if normed else l2norm(qk)).chunk(2, 2)   # F.normalize's, eps 1e-6
        gate = self.g_proj is not None
        W = torch.cat([self.v_proj.weight, *([self.g_proj.weight] if gate else []),
                       self.a_proj.weight, self.b_proj.weight])
        bias = torch.cat([self.a_proj.bias.new_zeros((1 + gate) * H * K), self.a_proj.bias,
                          self.b_proj.bias])
        v, *z, a, b = linear(x, W, bias).to(cdt).split([H * K] * (1 + gate) + [H, H], -1)
        g, beta = F.logsigmoid(a), torch.sigmoid(b)
        lamb = F.softplus(self.lambda_params.to(cdt)) + self.lambda_lower_bound
        return q, k, v.reshape(B, T, H, K), g, beta, lamb, z[0] if gate else None, conv_state

    def op_output(self, o, x):
        """Per-head RMSNorm (times silu(W_g x)), then W_o. o: (B, T, heads, K)."""
        return self._output(o, None if self.g_proj is None else self.g_proj(x), x)

    def _output(self, o, z, x):
        """op_output with z = W_g x given (None: no gate): the norm and gate in C on a CPU
        (`ops.native.head_norm.rms_gate`)."""
        w = self.norm.weight.to(o.dtype)
        y = rms_gate(o.flatten(2), w, o.shape[-1], self.norm.eps,
                     None if z is None else z.to(o.dtype), None if z is None else "silu")
        return self.o_proj(y.to(x.dtype))

    def _forward(self, x, state, mode):
        Hkk, Hkv, conv_state = state
        q, k, v, g, beta, lamb, z, conv_state = self._inputs(x, conv_state)
        if mode == "chunk":
            o, (Hkk, Hkv) = mesa(q, k, v, g, beta, lamb, initial_state=(Hkk, Hkv),
                                 cg_steps=self.max_cg_steps, cg_tol=self.cg_tol,
                                 chunk_size=self.chunk_size)
        else:
            o, (Hkk, Hkv) = mesa_recurrent(q, k, v, g, beta, lamb, initial_state=(Hkk, Hkv),
                                           cg_steps=self.max_cg_steps, cg_tol=self.cg_tol)
        return self._output(o, z, x), (Hkk, Hkv, conv_state)

    def _step(self, x_t, state):
        Hkk, Hkv, conv_state = state
        q, k, v, g, beta, lamb, z, conv_state = self._inputs(x_t[:, None], conv_state)
        o, Hkk, Hkv = mesa_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], lamb, Hkk, Hkv,
                                self.max_cg_steps, cg_tol=self.cg_tol)
        return self._output(o[:, None], z, x_t[:, None])[:, 0], (Hkk, Hkv, conv_state)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"max_cg_steps={self.max_cg_steps}, cg_tol={self.cg_tol}, lambda_lower_bound={self.lambda_lower_bound}, "
                f"output_gate={self.g_proj is not None}, chunk_size={self.chunk_size}")
