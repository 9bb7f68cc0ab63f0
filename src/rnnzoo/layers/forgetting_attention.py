"""Forgetting attention, the attention of the Forgetting Transformer (FoX; Lin et al. 2025,
"Forgetting Transformer: Softmax Attention with a Forget Gate", arXiv:2503.02130):
softmax attention whose scores carry the log of a data-dependent forget gate.

    q_t, k_t, v_t = W_q x_t, W_k x_t, W_v x_t               (per head; RMSNorm with qk_norm)
    f_t  = sigmoid(w_f^T x_t + b_f)                          (one scalar a head)
    D_ij = sum_{l = j+1..i} log f_l                          (0 on the diagonal)
    o_i  = sum_{j <= i} softmax_j(q_i . k_j / sqrt(Dh) + D_ij) v_j
    y    = W_o o     or, with use_output_gate,  W_o (o * sigmoid(W_g x))

All forget gates 1 (D = 0) is plain softmax attention; FoX needs no positions (the paper's
default), `rope_base` adds rotary positions as the `attention` layer has them.

The cache is the attention layer's (full: `max_len` slots; `window`: a ring buffer) plus,
per cached key, the decay it has gathered so far, D_{last, s}; each new token adds its
log f to every slot, so no long cumulative sum is ever differenced across the cache:

    state = (k_cache, v_cache, decay_cache, position)
    k_cache, v_cache: (B, H, capacity, Dh); decay_cache: (B, H, capacity); position: (B,)

Modes: `sequential` (one token at a time through the cache) and `parallel` (one masked
softmax over cache + new tokens). softmax_j is blind to the row's G_i, so q_i . k_j / sqrt(Dh)
+ D_ij gives the weights of q_i . k_j / sqrt(Dh) - G_j: a bias per key. A fresh sequence on
the CPU adds it in the C softmax rows of ops.native.attention; otherwise PyTorch's fused
attention takes it as one more channel, [q_i / sqrt(Dh), 1] . [k_j, -G_j].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rnnzoo.checks import flag
from rnnzoo.dtypes import compute_dtype
from rnnzoo.layers.attention import Attention, set_heads, write_front
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.norms import HeadNorm
from rnnzoo.layers.rotary import frequencies
from rnnzoo.ops import backend
from rnnzoo.ops.finite import finite, poison
from rnnzoo.ops.native import attention as native_attention
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import register


@register("forgetting_attention", family="attention",
          paper="Lin et al. 2025, arXiv:2503.02130 (Forgetting Transformer, FoX)",
          tiny=dict(d_model=4, num_heads=2, max_len=16, qk_norm=True, use_output_gate=True))
class ForgettingAttention(Attention):
    """x: (B, T, d_model) -> y; state (k_cache, v_cache, decay_cache, position)."""

    modes = ("sequential", "parallel")

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 window: int | None = None, max_len: int = 1024, qk_norm: bool = False,
                 use_output_gate: bool = False, rope_base: float | None = None,
                 norm_eps: float = 1e-6):
        RecurrentLayer.__init__(self, d_model)  # Attention's rotary-only checks do not apply
        head_dim = set_heads(self, d_model, num_heads, head_dim, max_len, window)
        if rope_base is not None and head_dim % 2:
            raise ValueError(f"head_dim must be even with rotary positions (rope_base), "
                             f"got {head_dim}")
        self.rope_base = None if rope_base is None else float(rope_base)
        self.rotary_dim = head_dim  # Attention.rope rotates every channel of a head
        self.qk_norm, self.use_output_gate = flag("qk_norm", qk_norm), flag("use_output_gate",
                                                                            use_output_gate)
        inner = num_heads * head_dim
        self.qkv = Linear(d_model, 3 * inner, bias=False)
        self.f_proj = Linear(d_model, num_heads, bias=True)
        self.q_norm = HeadNorm(num_heads, head_dim, eps=norm_eps) if qk_norm else None
        self.k_norm = HeadNorm(num_heads, head_dim, eps=norm_eps) if qk_norm else None
        self.g_proj = Linear(d_model, inner, bias=False) if use_output_gate else None
        self.out_proj = Linear(inner, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        k, v, position = super().init_state(batch_size, device, dtype)
        return k, v, torch.zeros(k.shape[:3], device=device, dtype=k.dtype), position

    def op_inputs(self, x, start=None):
        """q, k, v: (B, T, H, Dh) (normed, rotated from absolute positions start (B,) when
        rope_base is set) and the log forget gate g: (B, T, H), in the compute dtype."""
        B, T, _ = x.shape
        cdt = compute_dtype(x)
        q, k, v = self.qkv(x).to(cdt).view(B, T, 3, self.num_heads, self.head_dim).unbind(2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope_base is not None:
            if start is None:
                start = torch.zeros(B, dtype=torch.long, device=x.device)
            pos = start[:, None] + torch.arange(T, device=x.device)
            q, k = self.rope(q, pos), self.rope(k, pos)
        return q, k, v, F.logsigmoid(self.f_proj(x).to(cdt))

    def _heads(self, x, start):
        """op_inputs as (B, H, T, Dh) and (B, H, T), q times 1/sqrt(Dh); without qk_norm on
        the CPU, the split, rotary positions, scale and transposes in one C pass
        (ops.native.attention.heads)."""
        if not self.qk_norm and backend.use_native(x):
            lib = native_attention.load()
            if lib is not None:
                B, T, _ = x.shape
                cdt = compute_dtype(x)
                half = 0 if self.rope_base is None else self.head_dim // 2
                pos = start[:, None] + torch.arange(T, device=x.device)
                angle = pos.to(cdt)[..., None] * frequencies(half, self.rope_base or 1.0, cdt,
                                                             x.device)
                q, k, v = native_attention.heads(lib, self.qkv(x).to(cdt), self.num_heads,
                                                 angle.cos(), angle.sin(), self.head_dim ** -0.5)
                return q, k, v, F.logsigmoid(self.f_proj(x).to(cdt)).transpose(1, 2)
        q, k, v, g = (t.transpose(1, 2) for t in self.op_inputs(x, start))
        return q * self.head_dim ** -0.5, k, v, g

    def op_output(self, o, x):
        """o: (B, T, H, Dh) -> y: (B, T, d_model)."""
        o = o.flatten(2)
        if self.use_output_gate:
            o = o * torch.sigmoid(self.g_proj(x).to(o.dtype))
        return self.out_proj(o.to(x.dtype))

    def _attend(self, x, state):
        k_cache, v_cache, d_cache, position = state
        start = position.round().long()
        B, T, _ = x.shape
        cached = True
        if self.window is None:  # as Attention: read the position to check max_len
            top = int(start.max())
            if top + T > self.max_len:
                raise ValueError(f"sequence of {top + T} tokens exceeds max_len={self.max_len} "
                                 f"of this forgetting attention layer; build it with a larger "
                                 f"max_len or a sliding window")
            cached = top > 0
        q, k, v, g = self._heads(x, start)                 # (B, H, T, ...), q / sqrt(Dh)
        pos = start[:, None] + torch.arange(T, device=x.device)
        plain = not cached and self.window is None
        # a fresh sequence of finite values (Attention._finite) needs no marks; else a softmax
        # row meets every key as 0 * NaN: attend over finite values, then NaN in the rows
        # whose query or some visible key, value or gate is not finite (ops.finite)
        clean = plain and self._finite(q, k, v, g)
        if not clean:
            g, bad_g = finite(g, 2)
            seen_g = bad_g.cumsum(1) > 0                               # (B, T)
        G = g.cumsum(-1)                                               # (B, H, T), inclusive
        # D_ij = G_i - G_j; the softmax over j does not see the row's own G_i, so the bias
        # is -G_j (a cached key: the decay it has gathered, D_{start-1, s}): added per key in
        # the C rows, or one more channel of every key against a channel of ones in every
        # query for PyTorch's fused kernel; no (T, C + T) bias is ever built.
        k_bias = -G
        if cached:
            keys = torch.cat([k_cache.to(k.dtype), k], dim=2)
            values = torch.cat([v_cache.to(v.dtype), v], dim=2)
            k_bias = torch.cat([d_cache.to(g.dtype), k_bias], dim=2)
            key_pos = torch.cat([self._slot_positions(start), pos], dim=1)
        else:
            keys, values, key_pos = k, v, pos
        if not clean:
            (q, bad_q), (keys, bad_k), (values, bad_v), (k_bias, bad_d) = (
                finite(t, 2) for t in (q, keys, values, k_bias))
            bad = bad_k | bad_v | bad_d
        out, visible = self._biased(q, keys, values, k_bias, pos, key_pos, plain)
        if not clean:
            seen = bad.cumsum(1) > 0 if plain else (visible & bad[:, None, :]).any(-1)
            out = poison(out, (bad_q | seen | seen_g)[:, None])
        y = self.op_output(out.transpose(1, 2), x)
        # every kept slot gathers this chunk's decay; the new key j has G_last - G_j
        d_new = G[..., -1:] - G
        d_old = d_cache + G[..., -1:].to(d_cache.dtype)
        fresh = not cached
        k_cache, v_cache, end = self._write((k_cache, v_cache, position), k, v, pos, start + T,
                                            fresh=fresh)
        d_cache = self._write_decay(d_old, d_new, pos, fresh)
        return y, (k_cache, v_cache, d_cache if clean else poison(d_cache, seen_g[:, -1]), end)

    def _biased(self, q, keys, values, k_bias, pos, key_pos, plain):
        """softmax_j(q_i . k_j + k_bias_j) v_j over the visible keys: q (B, H, T, Dh), keys,
        values (B, H, S, Dh), k_bias (B, H, S), positions pos (B, T) and key_pos (B, S) (-1:
        an empty slot); plain: a fresh causal sequence (keys = the new tokens) -> (out (B, H,
        T, Dh), visible (B, T, S) bool, None when plain)."""
        lib = native_attention.load() if plain and backend.use_native(q, keys, values) else None
        if lib is not None:  # causal blocks with the softmax in C, the bias added per key
            return native_attention.causal_softmax_attention(lib, q, keys, values, k_bias), None
        q = torch.cat([q, torch.ones_like(q[..., :1])], -1)
        keys = torch.cat([keys, k_bias[..., None]], -1)
        values = F.pad(values, (0, 1))  # the fused kernels want one width for q, k and v
        if plain:
            out = native_attention.fused_sdpa(q, keys, values, causal=True, scale=1.0)
            return out[..., :-1], None
        visible = (key_pos[:, None, :] >= 0) & (key_pos[:, None, :] <= pos[:, :, None])
        if self.window is not None:
            visible &= pos[:, :, None] - key_pos[:, None, :] < self.window
        out = native_attention.fused_sdpa(q, keys, values, visible[:, None], scale=1.0)
        return out[..., :-1], visible

    def _write_decay(self, d_cache, d, pos, fresh: bool = False):
        """Attention._write for the (B, H, capacity) decay cache."""
        if fresh and self.window is None:
            return write_front(d_cache, d)
        keep = min(d.shape[2], self.capacity)
        d, pos = d[:, :, -keep:], pos[:, -keep:]
        slot = pos if self.window is None else torch.remainder(pos, self.window)
        return d_cache.scatter(2, slot[:, None, :].expand(-1, self.num_heads, -1),
                               d.to(d_cache.dtype))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"window={self.window}, max_len={self.max_len}, qk_norm={self.qk_norm}, "
                f"use_output_gate={self.use_output_gate}, rope_base={self.rope_base}")
