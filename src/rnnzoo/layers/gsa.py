"""Gated Slot Attention (Zhang et al. 2024, "Gated Slot Attention for Efficient Linear-Time
Sequence Modeling", arXiv:2409.07146): a gated linear attention whose memory is M slots,
read by a softmax over the slots (ABC / attention with bounded memory control, gated).

    q, k, v = swish(W_q x), swish(W_k x), swish(W_v x)              (per head)
    alpha_t = sigmoid(W_f x_t)^(1 / gate_logit_normalizer)          (M slots a head)
    K~_t = diag(alpha_t) K~_{t-1} + (1 - alpha_t) k_t^T,  V~_t likewise with v_t
    o_t  = V~_t^T softmax(K~_t q_t / sqrt(K))
    y    = W_o RMSNorm(o)                                           (per head)

The damping 1 / gate_logit_normalizer (the paper's tau = 8) keeps alpha near 1, so slots
forget slowly. State: (hk (B, H, head_dim, num_slots), hv (B, H, num_slots, head_dim)):
num_slots x head_dim a head whatever the length. Modes: `sequential` (two recurrent loops)
and `chunk` (two chunkwise GLA passes), ops.gsa.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rnnzoo.checks import choice, positive_int, real
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.norms import HeadNorm
from rnnzoo.ops import backend
from rnnzoo.ops.gsa import gated_slot_attention
from rnnzoo.ops.native import gla_scan as native_gla
from rnnzoo.ops.native.head_norm import rms_gate
from rnnzoo.ops.native.linear import Linear, linear
from rnnzoo.registry import register


@register("gsa", family="matrix", paper="Zhang et al. 2024, arXiv:2409.07146 (Gated Slot Attention)",
          tiny=dict(d_model=4, num_heads=2, num_slots=3, chunk_size=4))
class GSA(RecurrentLayer):
    """x: (B, T, d_model) -> y; state (hk (B, H, K, M), hv (B, H, M, V))."""

    modes = ("sequential", "chunk")

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 num_slots: int = 64, gate_logit_normalizer: float = 8.0,
                 feature_map: str = "swish", chunk_size: int = 64, norm_eps: float = 1e-5):
        super().__init__(d_model)
        H = positive_int("num_heads", num_heads)
        D = positive_int("head_dim", d_model // H if head_dim is None else head_dim)
        self.num_heads, self.head_dim = H, D
        self.num_slots = positive_int("num_slots", num_slots)
        self.gate_logit_normalizer = real("gate_logit_normalizer", gate_logit_normalizer, 0,
                                          lo_open=True)
        self.feature_map = choice("feature_map", feature_map, ("swish", "identity"))
        self.chunk_size = positive_int("chunk_size", chunk_size)
        self.qkv_proj = Linear(d_model, 3 * H * D, bias=False)
        self.f_proj = Linear(d_model, H * num_slots, bias=False)
        self.norm = HeadNorm(H, D, kind="rms", eps=norm_eps)
        self.o_proj = Linear(H * D, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        sdt = state_dtype(dtype)
        H, D, M = self.num_heads, self.head_dim, self.num_slots
        return (torch.zeros(batch_size, H, D, M, device=device, dtype=sdt),
                torch.zeros(batch_size, H, M, D, device=device, dtype=sdt))

    def op_inputs(self, x):
        """q, k, v: (B, T, H, head_dim); s = 1 - alpha and log alpha: (B, T, H, num_slots),
        in the compute dtype."""
        B, T, _ = x.shape
        cdt = compute_dtype(x)
        # three products on qkv_proj's row blocks: q, k, v each contiguous for the C kernels
        # (no copies of strided slices before them, no stack of their gradients after)
        qkv = (linear(x, w).to(cdt) for w in self.qkv_proj.weight.chunk(3))
        if self.feature_map == "swish":
            qkv = (F.silu(t) for t in qkv)
        q, k, v = (t.view(B, T, self.num_heads, self.head_dim) for t in qkv)
        f = self.f_proj(x).to(cdt).view(B, T, self.num_heads, -1)
        lib = native_gla.load() if backend.use_native(f) else None
        if lib is not None:  # one C pass each way (ops.native.gla_scan)
            log_alpha, s = native_gla.slot_gate(lib, f, self.gate_logit_normalizer)
            return q, k, v, s, log_alpha
        log_alpha = F.logsigmoid(f) / self.gate_logit_normalizer
        return q, k, v, -torch.expm1(log_alpha), log_alpha

    def op_output(self, o, x):
        o = rms_gate(o.flatten(2), self.norm.weight, self.head_dim, self.norm.eps)  # ops.native.head_norm
        return self.o_proj(o.to(x.dtype))

    def lion_inputs(self, x):
        """The first pass (the slot scores) as ops.gsa runs it: one head a slot, q, k
        (B, T, H M, K), value s (B, T, H M, 1), scalar log-decay (B, T, H M), scale K^-1/2;
        bidirectional=True runs it and the second pass (lion_second) both ways
        (layers/bidirectional.py)."""
        q, k, _, s, log_alpha = self.op_inputs(x)
        B, T, H, M = s.shape
        K = q.shape[-1]

        def per_slot(t):
            return t[:, :, :, None].expand(B, T, H, M, K).reshape(B, T, H * M, K)

        return (per_slot(q), per_slot(k), s.reshape(B, T, H * M, 1),
                log_alpha.reshape(B, T, H * M), K ** -0.5)

    def lion_second(self, scores, x):
        """The second pass: query softmax over the slots of the scores (B, T, H M, 1), key s,
        value v, log-decay log alpha per slot (the key channel), scale 1."""
        _, _, v, s, log_alpha = self.op_inputs(x)
        return scores.reshape(s.shape).softmax(-1), s, v, log_alpha, 1.0

    def lion_output(self, o, x):
        return self.op_output(o, x)

    def _forward(self, x, state, mode):
        q, k, v, s, log_alpha = self.op_inputs(x)
        o, state = gated_slot_attention(q, k, v, s, log_alpha, initial_state=state, mode=mode,
                                        chunk_size=self.chunk_size)
        return self.op_output(o, x), state

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"num_slots={self.num_slots}, gate_logit_normalizer={self.gate_logit_normalizer}, "
                f"feature_map={self.feature_map!r}, chunk_size={self.chunk_size}")
