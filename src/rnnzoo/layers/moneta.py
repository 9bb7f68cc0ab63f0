"""Moneta (Behrouz, Razaviyayn, Zhong & Mirrokni 2025, "It's All Connected: A Journey Through
Test-Time Memorization, Attentional Bias, Retention, and Online Optimization",
arXiv:2504.13173, section 5.1), and the Miras block it shares with Yaad and Memora
(layers/yaad.py, layers/memora.py; the memory update is ops/memory.py's miras_*).

    q, k, v = silu(shortconv(W_q x, W_k x, W_v x)),  q, k l2-normalised        (per head, K wide)
    eta_t = base_lr sigmoid(w_eta . x_t),  alpha_t = sigmoid(w_alpha . x_t)    (rate, retention)
    U_t = alpha_t U_t-1 - eta_t grad_W loss(W'; k_t, v_t),  W_t = phi(U_init + U_t),  o_t = M(q_t; W_t)
    y   = W_o [RMSNorm(o) * sigmoid(W_g x)]

M is a weight-only memory: one dense layer, or (memory_depth=2, the paper's choice) a two-layer
MLP with expansion 4 and GELU. W' is the memory at the start of the chunk (chunk_size steps,
the paper's chunkwise training). Moneta's attentional bias is the l_p loss |M(k) - v|_p^p
(gradient p sign(e) |e|^(p-1)), its retention the l_q one: phi(U) = U / |U|_q^(q-2), with the
paper's p = 3, q = 4. Forgetting (alpha) pulls the accumulators back to the learned U_init.
State: (U' and U per memory weight, the step count in the chunk, the short-conv state).
Modes: `sequential` (token by token) and `chunk`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import positive
from rnnzoo.dtypes import state_dtype
from rnnzoo.layers._delta_block import gated_head_output
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.conv import ShortConv
from rnnzoo.layers.titans import memory_geometry, memory_output, memory_qkv
from rnnzoo.ops.memory import (
    attentional_bias,
    miras_chunked,
    miras_init_state,
    miras_sequential,
    miras_step,
    retention,
)
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import register


class MirasLayer(RecurrentLayer):
    """x: (B, T, d_model) -> y; state (U' and U per memory weight, n (B,), conv state).
    Subclasses set `bias` and `retention` (ops.memory's names) in `__init__`."""

    modes = ("sequential", "chunk")
    with_delta = False          # Yaad's data-dependent Huber threshold

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 memory_depth: int = 2, chunk_size: int = 16, base_lr: float = 1.0,
                 d_conv: int = 4, norm_eps: float = 1e-6):
        super().__init__(d_model)
        H, K = memory_geometry(self, d_model, num_heads, head_dim, memory_depth, chunk_size,
                               base_lr)
        self.qkv_proj = Linear(d_model, 3 * H * K, bias=False)
        self.conv = ShortConv(3 * H * K, d_conv, bias=False)
        self.gate_proj = Linear(d_model, 3 * H if self.with_delta else 2 * H)
        widths = [K, K] if self.kind == "linear" else [K, 4 * K, K]
        self.memory = nn.ParameterList(nn.Parameter(torch.randn(H, i, o) / i ** 0.5)
                                       for i, o in zip(widths[:-1], widths[1:]))
        memory_output(self, d_model, norm_eps)

    def rules(self):
        """(dloss, phi): the attentional bias's gradient and the retention's weight map."""
        raise NotImplementedError

    def init_state(self, batch_size, device=None, dtype=None):
        sdt = state_dtype(dtype)
        mem = miras_init_state(self.kind, batch_size, self.num_heads, self.head_dim, device, sdt)
        return (*mem, self.conv.init_state(batch_size, device, sdt))

    def op_inputs(self, x, conv_state):
        """q, k, v (B, T, H, K); eta, alpha, delta (B, T, H); new conv state."""
        B, T, _ = x.shape
        # the norms of q and k fused into the C convolution on the CPU (F.normalize's six
        # passes each way elsewhere; equal up to rounding)
        q, k, v, conv_state = memory_qkv(self, x, conv_state, fused=True)
        gates = self.gate_proj(x).to(q.dtype).reshape(B, T, -1, self.num_heads)
        eta, alpha = self.base_lr * torch.sigmoid(gates[:, :, 0]), torch.sigmoid(gates[:, :, 1])
        delta = F.softplus(gates[:, :, 2]) if self.with_delta else torch.zeros_like(eta)
        return q, k, v, eta, alpha, delta, conv_state

    def op_output(self, z, x):
        """z (B, T, H, K) -> o_proj(RMSNorm(z) * sigmoid(g_proj(x))), the norm and gate in C
        on the CPU (`_delta_block.gated_head_output`)."""
        return gated_head_output(self, z, x)

    def _forward(self, x, state, mode):
        *mem, conv_state = state
        q, k, v, eta, alpha, delta, conv_state = self.op_inputs(x, conv_state)
        fn = miras_chunked if mode == "chunk" else miras_sequential
        init = [p.to(q.dtype) for p in self.memory]
        z, mem = fn(self.kind, q, k, v, eta, alpha, delta, self.chunk_size, init, tuple(mem),
                    *self.rules())
        return self.op_output(z, x), (*mem, conv_state)

    def _step(self, x_t, state):
        *mem, conv_state = state
        q, k, v, eta, alpha, delta, conv_state = self.op_inputs(x_t[:, None], conv_state)
        init = [p.to(q.dtype) for p in self.memory]
        z, mem = miras_step(self.kind, q[:, 0], k[:, 0], v[:, 0], eta[:, 0], alpha[:, 0],
                            delta[:, 0], self.chunk_size, init, tuple(mem), *self.rules())
        return self.op_output(z[:, None], x_t[:, None])[:, 0], (*mem, conv_state)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"memory_depth={self.memory_depth}, chunk_size={self.chunk_size}, "
                f"base_lr={self.base_lr}")


@register("moneta", family="matrix", paper="Behrouz et al. 2025, arXiv:2504.13173 (Miras: Moneta)",
          tiny=dict(d_model=6, num_heads=2, head_dim=3, memory_depth=2, chunk_size=4, d_conv=2))
class Moneta(MirasLayer):
    __doc__ = MirasLayer.__doc__

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 memory_depth: int = 2, chunk_size: int = 16, base_lr: float = 1.0,
                 d_conv: int = 4, p: float = 3.0, q: float = 4.0, norm_eps: float = 1e-6):
        super().__init__(d_model, num_heads, head_dim, memory_depth, chunk_size, base_lr,
                         d_conv, norm_eps)
        self.p = positive("p", p)
        self.q = positive("q", q)
        if self.p < 1 or self.q < 1:
            raise ValueError(f"p and q must be at least 1, got p={p}, q={q}")

    def rules(self):
        return attentional_bias("lp", self.p), retention("lq", self.q)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", p={self.p}, q={self.q}"
