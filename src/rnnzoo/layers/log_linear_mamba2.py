"""Log-linear Mamba-2 (Guo et al. 2025, "Log-Linear Attention", arXiv:2506.04761).

The Mamba-2 block (layers/mamba2.py: in-projection, short convolution, dt, A, D, gated
RMSNorm, out-projection) with its SSD recurrence replaced by log-linear attention
(ops/log_linear.py): the prefix is split into Fenwick-tree buckets, one Mamba-2 state per
level, and each level read with its own data-dependent weight

    lambda_t^(l) = softplus(x_t W_lambda + b_lambda)^(l),   l = 0 .. num_levels - 1, per head
    y_t = sum_l lambda_t^(l) C_t . S_t^(l) + D x_t        (S_t^(l): the level-l bucket state)

b_lambda starts at softplus^-1(1), so the layer starts near Mamba-2 (all weights 1 is
exactly Mamba-2 on the same tensors). After t steps decoding holds popcount(t) <=
floor(log2 t) + 1 live bucket states (a step reads them and its own token: popcount + 1
levels) in a fixed (num_levels - 1)-slot buffer; the top level absorbs everything older
than the lower levels cover (exact Fenwick buckets up to t = 2^(num_levels - 1)). Modes: `sequential` (the binary-counter loop), `chunk` (masked
matrix inside chunks, buckets between them) and `parallel` (the T x T masked matrix).
State: (buckets (B, H, num_levels - 1, d_state, head_dim), count (B,), conv state).
"""

from __future__ import annotations

import math

import torch

from rnnzoo.checks import positive_int
from rnnzoo.dtypes import state_dtype
from rnnzoo.layers.mamba2 import Mamba2
from rnnzoo.ops.log_linear import (
    log_linear_attention,
    log_linear_attention_parallel,
    log_linear_attention_recurrent,
)
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import register


@register("log_linear_mamba2", family="matrix", paper="Guo et al. 2025, arXiv:2506.04761",
          tiny=dict(d_model=4, d_state=2, head_dim=4, d_conv=3, chunk_size=4, num_levels=4))
class LogLinearMamba2(Mamba2):
    """x: (B, T, d_model) -> y; Mamba-2's options plus `num_levels` (>= 2; levels 0 .. L - 1,
    exact Fenwick buckets up to 2^(num_levels - 1) steps)."""

    modes = ("sequential", "chunk", "parallel")
    # no LION reading (Mamba-2's lion_inputs would silently read a plain decay mask): the
    # Fenwick level weights make the mask hierarchical, not a product of per-step decays
    lion_inputs = None

    def __init__(self, d_model: int, d_state: int = 64, head_dim: int = 64, expand: int = 2,
                 d_conv: int = 4, chunk_size: int = 64, dt_min: float = 1e-3,
                 dt_max: float = 0.1, n_groups: int = 1, norm_eps: float = 1e-5,
                 num_levels: int = 16):
        super().__init__(d_model, d_state=d_state, head_dim=head_dim, expand=expand,
                         d_conv=d_conv, chunk_size=chunk_size, dt_min=dt_min, dt_max=dt_max,
                         n_groups=n_groups, norm_eps=norm_eps)
        positive_int("num_levels", num_levels)
        if not 2 <= num_levels <= 25:
            raise ValueError(f"num_levels must lie in [2, 25], got {num_levels}")
        self.num_levels = num_levels
        self.level_proj = Linear(d_model, self.num_heads * num_levels)
        with torch.no_grad():
            self.level_proj.weight.mul_(0.1)
            self.level_proj.bias.fill_(math.log(math.e - 1))            # softplus^-1(1)

    def init_state(self, batch_size, device=None, dtype=None):
        dt = state_dtype(dtype)
        buckets = torch.zeros(batch_size, self.num_heads, self.num_levels - 1, self.d_state,
                              self.head_dim, device=device, dtype=dt)
        count = torch.zeros(batch_size, device=device, dtype=dt)
        return buckets, count, self.conv.init_state(batch_size, device, dt)

    def _check_or_init_state(self, state, x):
        """A fresh sequence (no state given) gets its empty buckets as one zero expanded to
        (B, H, num_levels - 1, d_state, head_dim): the op reads them as empty from that one
        value (ops.log_linear._host_position), so no 4 B H (L - 1) d_state head_dim bytes of
        zeros are written and scanned each call. `init_state` still returns real zeros."""
        if state is not None:
            return super()._check_or_init_state(state, x)
        dt = state_dtype(x.dtype)
        B = x.shape[0]
        buckets = x.new_zeros((), dtype=dt).expand(B, self.num_heads, self.num_levels - 1,
                                                   self.d_state, self.head_dim)
        return (buckets, x.new_zeros(B, dtype=dt),
                self.conv.init_state(B, x.device, dt))

    def op_inputs(self, x, conv_state):
        """x (B, T, d_model) -> q, k (B, T, H, d_state), v (B, T, H, head_dim), log_decay
        (B, T, H), level weights (B, T, H, num_levels), and (z, xs, conv_state) for
        `op_output`. Mamba-2's projection (`Mamba2._project`) plus the level weights."""
        q, k, *rest = self._group_inputs(x, conv_state)
        return self._heads(q), self._heads(k), *rest

    def _group_inputs(self, x, conv_state, unscaled_v=False):
        """`op_inputs` with q, k by group (B, T, n_groups, d_state), views of the conv's
        output: the ops take a group shared by H / n_groups heads (the C block reads it in
        place; no repeated copies of q and k each way). With `unscaled_v`: v is x (the conv
        output's view) and dt (B, T, H), v's per-step scale, comes after the level weights."""
        Bsz, T, _ = x.shape
        sdt = conv_state.dtype
        # the level weights' product with dt's (Mamba2._project's extra rows)
        q, k, v, log_decay, xs, z, conv_state, lam, *dt = self._project(
            x, conv_state, sdt, extra=(self.level_proj.weight, self.level_proj.bias),
            unscaled_v=unscaled_v)
        lam = lam.reshape(Bsz, T, self.num_heads, self.num_levels)
        return q, k, v, log_decay, lam, *dt, (z, xs, conv_state)

    def op_output(self, y, x, rest):
        """y (B, T, H, head_dim) from the op -> the block's output (B, T, d_model): Mamba-2's
        skip, gated RMSNorm and out-projection (`Mamba2._output`)."""
        z, xs, _ = rest
        return self._output(y, xs, z, x)

    def _forward(self, x, state, mode):
        buckets, count, conv_state = state
        kw = dict(scale=1.0, initial_state=(buckets, count))
        if mode == "chunk":  # v = dt x scaled inside the op (no scaled copy each way), and
            # the skip D x added there (v is x: no (B, T, d_inner) add and gradient sum here)
            q, k, v, g, lam, dt, rest = self._group_inputs(x, conv_state, unscaled_v=True)
            y, (buckets, count) = log_linear_attention(q, k, v, g, lam, v_scale=dt, skip=self.D,
                                                       chunk_size=self.chunk_size, **kw)
            z, xs, _ = rest
            return self._output(y, xs, z, x, skipped=True), (buckets, count, rest[2])
        q, k, v, g, lam, rest = self._group_inputs(x, conv_state)
        if mode == "parallel":
            y, (buckets, count) = log_linear_attention_parallel(q, k, v, g, lam, **kw)
        else:
            y, (buckets, count) = log_linear_attention_recurrent(q, k, v, g, lam, **kw)
        return self.op_output(y, x, rest), (buckets, count, rest[2])
