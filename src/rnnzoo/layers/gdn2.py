"""Gated DeltaNet-2 (GDN-2, "Gated DeltaNet-2: Decoupling Erase and Write in Linear
Attention", NVIDIA; fla-core's `gdn2`): KDA's per-channel decay with the scalar beta split
into an erase gate per key channel and a write gate per value channel.

    q, k, v = silu(shortconv(W_q x)), silu(shortconv(W_k x)), silu(shortconv(W_v x))
    q, k    = q / |q|, k / |k|                                       (per head)
    g       = -exp(A_log) softplus(W_f_up W_f_down x + dt_bias)      (log-decay per key channel)
    b       = sigmoid(W_b x)  (K per head; 2 sigmoid with allow_neg_eigval),   w = sigmoid(W_w x)  (V per head)
    S_t     = (I - k_t (b_t o k_t)^T) diag(exp g_t) S_{t-1} + k_t (w_t o v_t)^T,   o_t = S_t^T q_t / sqrt(K)
    y       = W_o [RMSNorm(o) * sigmoid(W_g_up W_g_down x + bias)]

b = w = beta (one scalar a head) is KDA. The recurrence is ops.erase_delta's with erase key
b o k and value w o v. State: (S (B, H, K, V), short-conv state (B, d_conv - 1, H (2K + V))).
Modes: `sequential` (the loop) and `chunk` (the UT transform with per-channel decay).
"""

from __future__ import annotations

import torch

from rnnzoo.dtypes import compute_dtype
from rnnzoo.layers.kda import KDA
from rnnzoo.ops import backend
from rnnzoo.ops.erase_delta import erase_delta, erase_delta_recurrent, erase_delta_step
from rnnzoo.ops.native import vector_delta as native_vector
from rnnzoo.ops.native.linear import Linear, linear
from rnnzoo.registry import register


@register("gdn2", family="matrix", paper="Gated DeltaNet-2 (NVIDIA 2025; fla-core ops/gdn2)",
          tiny=dict(d_model=6, num_heads=2, head_dim=3, d_conv=2, chunk_size=4, subchunk_size=2))
class GDN2(KDA):
    """x: (B, T, d_model) -> y; state (S (B, H, K, expand_v K), conv state). KDA's block and
    options, with b_proj widened to an erase gate per key channel and a write gate w_proj."""

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 expand_v: int = 1, d_conv: int = 4, chunk_size: int = 32,
                 subchunk_size: int = 8, allow_neg_eigval: bool = False, norm_eps: float = 1e-5):
        super().__init__(d_model, num_heads, head_dim, expand_v, d_conv, chunk_size,
                         subchunk_size, allow_neg_eigval, norm_eps)
        H, K, V = self.num_heads, self.head_dim, self.value_dim
        self.b_proj = Linear(d_model, H * K, bias=False)
        self.w_proj = Linear(d_model, H * V, bias=False)

    def op_inputs(self, x, conv_state):
        """q, k, g, b (B, T, H, K), v, w (B, T, H, V), new conv state."""
        q, k, v, g, z, conv_state = self._gate_inputs(x, conv_state)
        return q, k, v, g, *self._gates(z), conv_state

    def _gates(self, z):
        """b (B, T, H, K), w (B, T, H, V) from their pre-sigmoids z (B, T, H (K + V))."""
        B, T, H, K, V = *z.shape[:2], self.num_heads, self.head_dim, self.value_dim
        b, w = torch.sigmoid(z).split([H * K, H * V], -1)
        if self.allow_neg_eigval:
            b = 2 * b
        return b.reshape(B, T, H, K), w.reshape(B, T, H, V)

    def _gate_inputs(self, x, conv_state):
        """q, k, g (B, T, H, K), v (B, T, H, V), z (B, T, H (K + V)) the erase and write
        gates' pre-sigmoids (`_gated`), new conv state."""
        q, k, v, g, conv_state = self._qkv_decay(x, conv_state)
        # the erase and write gates from one product and one sigmoid (one x^T copy and one dx
        # product fewer than two projections; split's backward is one cat)
        z = linear(x, torch.cat([self.b_proj.weight, self.w_proj.weight])).to(compute_dtype(x))
        return q, k, v, g, z, conv_state

    def _gated(self, k, v, z):
        """The erase key b o k and the value w o v (B, T, H, K / V) from z (B, T, H (K + V)),
        the two gates' pre-sigmoids; on the CPU one C pass each way (vector_delta)."""
        B, T, H, K = k.shape
        V, bs = self.value_dim, 2.0 if self.allow_neg_eigval else 1.0
        lib = native_vector.load() if backend.use_native(z, k, v) else None
        if lib is not None:
            p, u = native_vector.gated_inputs(lib, z.reshape(B * T, -1), k.reshape(B * T, H * K),
                                              v.reshape(B * T, H * V), bs)
            return p.view(B, T, H, K), u.view(B, T, H, V)
        b, w = self._gates(z)
        return b * k, w * v

    def _forward(self, x, state, mode):
        S, conv_state = state
        q, k, v, g, z, conv_state = self._gate_inputs(x, conv_state)
        p, u = self._gated(k, v, z)
        if mode == "chunk":
            o, S = erase_delta(q, k, u, g, p, initial_state=S, chunk_size=self.chunk_size,
                               subchunk_size=self.subchunk_size)
        else:
            o, S = erase_delta_recurrent(q, k, u, g, p, initial_state=S)
        return self.op_output(o, x), (S, conv_state)

    def _step(self, x_t, state):
        S, conv_state = state
        q, k, v, g, z, conv_state = self._gate_inputs(x_t[:, None], conv_state)
        p, u = self._gated(k, v, z)
        q, k, u, g, p = (t[:, 0] for t in (q, k, u, g, p))
        o, S = erase_delta_step(q, k, u, g, p, S, self.head_dim ** -0.5)
        return self.op_output(o[:, None], x_t[:, None])[:, 0], (S, conv_state)
