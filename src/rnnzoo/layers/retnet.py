"""Multi-scale retention (Sun et al. 2023, "Retentive Network", arXiv:2307.08621).

Per head h a fixed decay gamma_h = 1 - 2^(-5 - h) (section 2.2), and q, k rotated by
their absolute position n (Theta_n = e^{i n theta}, eq. 3; theta as in the authors'
torchscale code, 1 / 10000^linspace(0, 1, d_k / 2) on pairs of channels):

    q_n = (x_n W_Q) Theta_n,  k_n = (x_n W_K) conj(Theta_n),  v_n = x_n W_V
    S_n = gamma_h S_{n-1} + k_n v_n^T,   o_n = S_n^T q_n / sqrt(d_k)     (recurrent, eq. 6)
    O = (Q K^T / sqrt(d_k) * D) V,  D_nm = gamma^(n - m) [n >= m]       (parallel, eq. 5)
    Y = GroupNorm_h(O),  MSR(X) = (swish(X W_G) * Y) W_O                 (eq. 8)

The value width is twice the key width per head (the paper's d_v = 2 d). The state is
(S, n): the matrix state and the position of the next token (float, exact below 2^24).
Modes: `sequential`, `chunk` (chunkwise retention, eq. 7, as `ops.chunk.linear.ssd` with one
group per head: on a CPU in float32/float64 the recurrence in C, ops/native/ssd_scan.c),
`parallel`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rnnzoo.checks import positive_int
from rnnzoo.dtypes import state_dtype
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.norms import HeadNorm
from rnnzoo.layers.rotary import turn
from rnnzoo.ops import backend, sequence_parallel
from rnnzoo.ops.chunk.linear import (
    gated_linear_attention_parallel,
    gated_linear_attention_recurrent,
    ssd,
)
from rnnzoo.ops.native import gated_norm
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import register


def retention_decays(num_heads: int) -> torch.Tensor:
    """gamma_h = 1 - 2^(-5 - h), h = 0 .. num_heads - 1 (float64)."""
    return 1 - 2.0 ** (-5 - torch.arange(num_heads, dtype=torch.float64))


def retnet_theta(head_dim: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """theta_j = 1 / 10000^(j / (head_dim/2 - 1)), j < head_dim / 2 (torchscale's spacing)."""
    return 1.0 / 10000 ** torch.linspace(0, 1, head_dim // 2, dtype=dtype, device=device)


@register("retnet", family="matrix", paper="Sun et al. 2023, arXiv:2307.08621",
          tiny=dict(d_model=8, num_heads=2, chunk_size=4))
class RetNet(RecurrentLayer):
    """x: (B, T, d_model) -> y; state (S: (B, num_heads, head_dim, expand_v * head_dim),
    position: (B,))."""

    modes = ("sequential", "chunk", "parallel")
    theta = staticmethod(retnet_theta)  # the rotary frequencies (hf/fla_hub.py sets its own)

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 expand_v: int = 2, chunk_size: int = 64):
        super().__init__(d_model)
        positive_int("num_heads", num_heads)
        head_dim = d_model // num_heads if head_dim is None else head_dim
        for name, value in (("head_dim", head_dim), ("expand_v", expand_v),
                            ("chunk_size", chunk_size)):
            positive_int(name, value)
        if head_dim % 2:
            raise ValueError(f"head_dim must be even (q, k rotate in channel pairs), got {head_dim}")
        self.num_heads, self.head_dim, self.chunk_size = num_heads, head_dim, chunk_size
        self.value_dim = expand_v * head_dim
        H, K, V = num_heads, head_dim, self.value_dim
        self.qk = Linear(d_model, 2 * H * K, bias=False)
        self.v = Linear(d_model, H * V, bias=False)
        self.gate = Linear(d_model, H * V, bias=False)
        self.norm = HeadNorm(H, V, kind="layer")
        self.out_proj = Linear(H * V, d_model, bias=False)
        self.register_buffer("log_gamma", retention_decays(H).log(), persistent=False)

    def init_state(self, batch_size, device=None, dtype=None):
        dt = state_dtype(dtype)
        return (torch.zeros(batch_size, self.num_heads, self.head_dim, self.value_dim,
                            device=device, dtype=dt),
                torch.zeros(batch_size, device=device, dtype=dt))

    def lion_inputs(self, x, position=None):
        """q, k (rotated from `position`, (B,), default 0), v, the log-decay per head and the
        scale: the op's inputs (also those of bidirectional=True, layers/bidirectional.py)."""
        B, T, _ = x.shape
        H, K, V = self.num_heads, self.head_dim, self.value_dim
        dt = state_dtype(x.dtype)
        if position is None:
            position = torch.zeros(B, device=x.device, dtype=dt)
        qk = self.qk(x).view(B, T, 2, H, K)
        positions = position[:, None] + torch.arange(T, device=x.device, dtype=position.dtype)
        theta = self.theta(K, positions.dtype, x.device)
        angle = positions[..., None] * theta.to(positions.dtype)  # (B, T, K/2)
        q, k = turn(qk, angle[:, :, None, None]).unbind(2)  # both in one call
        g = self.log_gamma.to(dt).expand(B, T, H)
        return q, k, self.v(x).view(B, T, H, V), g, 1 / math.sqrt(K)

    def lion_output(self, o, x):
        """The gated per-head GroupNorm, then the output projection; on the CPU in
        float32/float64 the norm and gate are one C pass each way (ops.native.gated_norm)."""
        z, norm = self.gate(x), self.norm
        lib = (gated_norm.load() if getattr(norm, "kind", None) == "layer"  # (fla_hub: RMS)
               and backend.use_native(o, z, norm.weight, norm.bias) else None)
        if lib is None:
            return self.out_proj(F.silu(z) * norm(o).flatten(2))
        W = z.shape[-1]
        return self.out_proj(gated_norm.norm_gate(lib, o.reshape(z.shape), None, None, z,
                                                  norm.weight.view(W), norm.bias.view(W),
                                                  self.value_dim, norm.eps))

    def _forward(self, x, state, mode):
        state, position = state
        start, T = 0, x.shape[1]
        if mode == "chunk" and sequence_parallel.active():  # x: this rank's time slice
            start, T = sequence_parallel.offset(T)  # its first position, the whole length
        q, k, v, g, scale = self.lion_inputs(x, position + start)
        kw = dict(scale=scale, initial_state=state)
        if mode == "chunk":  # Mamba-2's SSD op with one group per head: on the CPU its C
            # recurrence (ops.native.ssd_scan), elsewhere the scalar-decay chunks
            o, state = ssd(q, k, v, g, chunk_size=self.chunk_size, **kw)
        elif mode == "parallel":
            o, state = gated_linear_attention_parallel(q, k, v, g, **kw)
        else:
            o, state = gated_linear_attention_recurrent(q, k, v, g, **kw)
        return self.lion_output(o, x), (state, position + T)
