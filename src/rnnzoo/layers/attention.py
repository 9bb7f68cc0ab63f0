"""Causal multi-head softmax attention as a token mixer, its KV cache as its state
(Vaswani et al. 2017, arXiv:1706.03762; rotary positions of Su et al. 2021,
arXiv:2104.09864; sliding window as in Beltagy et al. 2020, arXiv:2004.05150).

    q_t, k_t, v_t = W_q x_t, W_k x_t, W_v x_t        (per head, rotated by position t)
    y_t = W_o concat_h softmax_s<=t, t-s<window(q_t . k_s / sqrt(Dh)) v_s

The Transformer row of every comparison. The state has a fixed shape, as the
layer contract asks, so the cache has a fixed capacity:

    state = (k_cache, v_cache, position)
    k_cache, v_cache: (B, num_heads, capacity, head_dim), float32
    position:         (B,) float32, the number of tokens seen so far

Full attention: capacity = `max_len` and slot s holds token s; a sequence
longer than `max_len` raises a ValueError. Sliding window: capacity = `window`,
a ring buffer (token p lives in slot p mod window), so any length streams.
A model stack passes its own `max_len` to this layer (see models.stack).

Options of published models: `num_kv_heads` < num_heads shares each key/value head
among num_heads / num_kv_heads query heads (grouped-query attention, Ainslie et al. 2023,
arXiv:2305.13245; the cache holds them repeated per query head); `rotary_dim` < head_dim
rotates only the first rotary_dim channels of each head (GPT-NeoX / Griffin's partial
rotary; 0: no positions, as Nemotron-H); `out_bias` gives W_o a bias (RecurrentGemma); `qk_norm_eps` RMS-normalises
each head of q and k (weights q_norm, k_norm) before the rotation (Qwen3, as in
Dehghani et al. 2023, arXiv:2302.05442); `output_gate` multiplies each head's output
by sigmoid(W_g x) before W_o (gated attention, Qiu et al. 2025, arXiv:2505.06708;
Qwen3-Next).

Modes: `sequential` (reference: one token at a time through the cache) and
`parallel` (one masked matrix product over cache + new tokens; a fresh sequence on the CPU
runs causal blocks with the softmax in C, ops.native.attention, elsewhere PyTorch's fused
kernel).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from rnnzoo.checks import flag, int_in, positive, positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.rotary import frequencies, rotate
from rnnzoo.ops import backend
from rnnzoo.ops.finite import finite, poison
from rnnzoo.ops.native import attention as native_attention
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import register


def set_heads(layer, d_model: int, num_heads: int, head_dim: int | None, max_len: int,
              window: int | None = None) -> int:
    """Check and set the cache geometry every attention layer shares: layer.num_heads,
    head_dim (d_model // num_heads when None), max_len, window and capacity (the cache's
    slots: window, else max_len). Returns head_dim."""
    positive_int("num_heads", num_heads)
    positive_int("head_dim", head_dim, allow_none=True)
    positive_int("window", window, allow_none=True)
    positive_int("max_len", max_len)
    if head_dim is None:
        if d_model % num_heads:
            raise ValueError(f"num_heads must divide d_model={d_model}, got {num_heads}")
        head_dim = d_model // num_heads
    layer.num_heads, layer.head_dim, layer.max_len, layer.window = num_heads, head_dim, max_len, window
    layer.capacity = window if window is not None else max_len
    return head_dim


def write_front(cache, new):
    """cache (B, H, C, ...) with its first T = new.shape[2] slots replaced by new (cast to the
    cache's dtype): a fresh sequence's cache. One new tensor and two copies: torch.cat of the
    two parts takes its serial kernel at 1 thread (4x slower at B=16, T=512). When new fills
    every slot (T = C: a window of T, Titans-MAG's and -MAL's at T = 512), new itself (cast,
    made contiguous): no copy where it already was."""
    T = new.shape[2]
    if T == cache.shape[2]:
        return new.to(cache.dtype).contiguous()
    if backend.transforming():  # torch.func's vmap batches new, not the cache: no write into it
        return torch.cat([new.to(cache.dtype), cache[:, :, T:]], 2)
    out = torch.empty_like(cache)
    out[:, :, :T] = new
    out[:, :, T:] = cache[:, :, T:]
    return out


@register("attention", family="attention",
          paper="Vaswani et al. 2017, arXiv:1706.03762 (RoPE: Su et al. 2021, arXiv:2104.09864)",
          tiny=dict(d_model=4, num_heads=2, max_len=16))
class Attention(RecurrentLayer):
    """x: (B, T, d_model) -> y: (B, T, d_model); state (k_cache, v_cache, position)."""

    modes = ("sequential", "parallel")

    host_reads = {
        **RecurrentLayer.host_reads,
        **{case: "full attention (window=None) reads the position held in the state, to check "
           "max_len and to choose the fused causal kernel for a fresh sequence (a sliding "
           "window reads nothing)" for case in ("sequential", "parallel", "step")},
    }

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 window: int | None = None, max_len: int = 1024, rope_base: float = 10000.0,
                 num_kv_heads: int | None = None, rotary_dim: int | None = None,
                 out_bias: bool = False, qk_norm_eps: float | None = None,
                 output_gate: bool = False):
        super().__init__(d_model)
        positive_int("num_heads", num_heads)
        num_kv_heads = num_heads if num_kv_heads is None else positive_int("num_kv_heads",
                                                                           num_kv_heads)
        if num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads must divide num_heads={num_heads}, got {num_kv_heads}")
        head_dim = set_heads(self, d_model, num_heads, head_dim, max_len, window)
        if head_dim % 2:
            raise ValueError(f"head_dim must be even (rotary positions), got {head_dim}")
        rotary_dim = head_dim if rotary_dim is None else int_in("rotary_dim", rotary_dim, 0)
        if rotary_dim % 2 or rotary_dim > head_dim:
            raise ValueError(f"rotary_dim must be even and <= head_dim={head_dim}, got {rotary_dim}")
        self.num_kv_heads, self.rotary_dim = num_kv_heads, rotary_dim
        self.rope_base = float(rope_base)
        inner = num_heads * head_dim
        self.qkv = Linear(d_model, inner + 2 * num_kv_heads * head_dim, bias=False)
        self.out_proj = Linear(inner, d_model, bias=flag("out_bias", out_bias))
        self.qk_norm_eps = None if qk_norm_eps is None else positive("qk_norm_eps", qk_norm_eps)
        if qk_norm_eps is not None:
            self.q_norm = nn.Parameter(torch.ones(head_dim))
            self.k_norm = nn.Parameter(torch.ones(head_dim))
        self.g_proj = Linear(d_model, inner, bias=False) if flag("output_gate",
                                                                   output_gate) else None

    def init_state(self, batch_size, device=None, dtype=None):
        sd = state_dtype(dtype)
        shape = (batch_size, self.num_heads, self.capacity, self.head_dim)
        return (torch.zeros(shape, device=device, dtype=sd), torch.zeros(shape, device=device, dtype=sd),
                torch.zeros(batch_size, device=device, dtype=sd))

    def _project(self, x, start):
        """q, k, v: (B, H, T, Dh) in the compute dtype, q and k rotated, q times 1/sqrt(Dh);
        pos (B, T) long."""
        B, T, _ = x.shape
        H, KV, Dh = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = self.qkv(x).to(compute_dtype(x))
        pos = start[:, None] + torch.arange(T, device=x.device)
        if KV == H and self.qk_norm_eps is None and backend.use_native(qkv):
            lib = native_attention.load()
            if lib is not None:  # split, rotary and transposes in one pass in C
                half = self.rotary_dim // 2
                angle = pos.to(qkv.dtype)[..., None] * frequencies(half, self.rope_base,
                                                                   qkv.dtype, x.device)
                return (*native_attention.heads(lib, qkv, H, angle.cos(), angle.sin(),
                                                Dh ** -0.5), pos)
        q, k, v = qkv.split([H * Dh, KV * Dh, KV * Dh], -1)
        q = q.view(B, T, H, Dh)
        k, v = (t.view(B, T, KV, Dh) for t in (k, v))
        if H != KV:
            k, v = (t.repeat_interleave(H // KV, 2) for t in (k, v))
        if self.qk_norm_eps is not None:
            q = F.rms_norm(q, (Dh,), eps=self.qk_norm_eps) * self.q_norm.to(q.dtype)
            k = F.rms_norm(k, (Dh,), eps=self.qk_norm_eps) * self.k_norm.to(k.dtype)
        q, k = self.rope(q, pos), self.rope(k, pos)
        return (q * Dh ** -0.5).transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), pos

    def rope(self, x, pos):
        """Rotary positions on x: (B, T, H, Dh) at absolute positions pos (B, T), channel
        pairs (j, j + R/2) of the first R = rotary_dim channels, with frequencies
        rope_base^(-j / (R/2))."""
        R = self.rotary_dim
        if R == 0:  # no positions (NoPE: Nemotron-H, Granite-4.0-H)
            return x
        half = R // 2
        theta = frequencies(half, self.rope_base, x.dtype, x.device)
        lib = native_attention.load() if backend.use_native(x) else None
        if lib is not None:  # one pass in C, written in the (B, H, T, Dh) layout read next
            angle = pos.to(x.dtype)[..., None] * theta
            return native_attention.rope(lib, x, angle.cos(), angle.sin())
        if R == self.head_dim:
            return rotate(x, pos.to(x.dtype), theta, pairs="halves")
        return torch.cat([rotate(x[..., :R], pos.to(x.dtype), theta, pairs="halves"),
                          x[..., R:]], -1)

    def _slot_positions(self, start):
        """Absolute position of the token in each cache slot, (B, capacity); -1 where empty."""
        slots = torch.arange(self.capacity, device=start.device)
        if self.window is None:
            return torch.where(slots < start[:, None], slots, -1)
        # ring buffer: slot s holds the latest p < start with p = s (mod window)
        last = start[:, None] - 1
        p = last - torch.remainder(last - slots, self.window)
        return torch.where(p >= 0, p, -1)

    def _attend(self, x, state):
        k_cache, v_cache, position = state
        start = position.round().long()
        T = x.shape[1]
        # A sliding window reads nothing: it always attends through its ring buffer (empty
        # slots are masked), except on the CPU in eager mode, where reading the position
        # costs no sync and lets a fresh sequence skip the empty buffer. Full attention reads
        # the position once, to check max_len and to give a fresh sequence PyTorch's fused
        # causal kernel.
        cached = True
        if self.window is None:
            top = int(start.max())
            if top + T > self.max_len:
                raise ValueError(f"sequence of {top + T} tokens exceeds max_len={self.max_len} "
                                 f"of this attention layer; build it with a larger max_len or "
                                 f"a sliding window")
            cached = top > 0  # positions are >= 0: any() is max() > 0
        elif backend.host_readable(x):
            cached = bool(start.max() > 0)  # free there (no sync): skip an empty ring buffer
        q, k, v, pos = self._project(x, start)
        if cached:  # attend to the cache, then to the new tokens
            keys = torch.cat([k_cache.to(k.dtype), k], dim=2)
            values = torch.cat([v_cache.to(v.dtype), v], dim=2)
            key_pos = torch.cat([self._slot_positions(start), pos], dim=1)  # (B, C + T)
        else:  # an empty cache (a fresh sequence): the new tokens only
            keys, values, key_pos = k, v, pos
        plain = keys is k and (self.window is None or T <= self.window)
        if plain and self._finite(q, k, v):  # a fresh sequence of finite values: no marks
            out = self._causal(q, k, v)
        else:
            out = self._attend_marked(q, keys, values, pos, key_pos, plain)
        out = out.transpose(1, 2).reshape(*x.shape[:2], -1)
        if self.g_proj is not None:
            out = out * torch.sigmoid(self.g_proj(x).to(out.dtype))
        y = self.out_proj(out.to(x.dtype))
        return y, self._write(state, k, v, pos, start + T, fresh=not cached)

    @staticmethod
    def _finite(*ts) -> bool:
        """Whether every entry of the tensors ts is finite, known where reading on the host is
        free (the CPU in eager mode; elsewhere False): one read of their total, which a
        non-finite entry (or a total that overflows: then the marked form, exact too) makes
        non-finite."""
        return backend.host_readable(ts[0]) and bool(torch.isfinite(sum(t.sum() for t in ts)))

    @staticmethod
    def _causal(q, k, v):
        """Causal softmax attention of a fresh sequence: q (scaled), k, v (B, H, T, Dh) ->
        (B, H, T, Dh); blocks in C on the CPU, else PyTorch's fused kernel."""
        lib = native_attention.load() if backend.use_native(q, k, v) else None
        if lib is not None:
            return native_attention.causal_softmax_attention(lib, q, k, v)
        return native_attention.fused_sdpa(q, k, v, causal=True, scale=1.0)

    def _attend_marked(self, q, keys, values, pos, key_pos, plain):
        """The attention of q (B, H, T, Dh) over keys, values (B, H, S, Dh) at key_pos (B, S)
        (-1: an empty slot), on their finite values, NaN in the rows whose query or some
        visible key or value is not finite (a softmax row meets every key as 0 * NaN; the
        cache keeps the non-finite entry). plain: a fresh causal sequence (keys = the new
        tokens, T <= window)."""
        (q, bad_q), (keys, bad_k), (values, bad_v) = (finite(t, 2) for t in (q, keys, values))
        if plain:
            out = self._causal(q, keys, values)
            seen = (bad_k | bad_v).cumsum(1) > 0
        else:
            visible = (key_pos[:, None, :] >= 0) & (key_pos[:, None, :] <= pos[:, :, None])
            if self.window is not None:
                visible &= pos[:, :, None] - key_pos[:, None, :] < self.window
            out = native_attention.fused_sdpa(q, keys, values, visible[:, None], scale=1.0)
            seen = (visible & (bad_k | bad_v)[:, None, :]).any(-1)
        return poison(out, (bad_q | seen)[:, None])

    def _write(self, state, k, v, pos, end, fresh: bool = False):
        """The cache with the new tokens k, v (B, H, T, .) at positions pos (B, T) written in;
        fresh: every row starts at position 0 (slot s = token s while T <= capacity), so they
        fill slots [0, T) and the rest stays as it was (no scatter)."""
        k_cache, v_cache, _ = state
        if fresh and k.shape[2] <= self.capacity:  # slot = position (a ring buffer not wrapped)
            return write_front(k_cache, k), write_front(v_cache, v), end.to(state[2].dtype)
        keep = min(k.shape[2], self.capacity)  # a ring buffer keeps only the last `window`
        k, v, pos = k[:, :, -keep:], v[:, :, -keep:], pos[:, -keep:]
        slot = pos if self.window is None else torch.remainder(pos, self.window)
        index = slot[:, None, :, None].expand(-1, self.num_heads, -1, 1)
        k_cache = k_cache.scatter(2, index.expand_as(k), k.to(k_cache.dtype))
        v_cache = v_cache.scatter(2, index.expand_as(v), v.to(v_cache.dtype))  # width may differ
        return k_cache, v_cache, end.to(state[2].dtype)

    def _forward(self, x, state, mode):
        if mode == "parallel":
            return self._attend(x, state)
        ys = []
        # the reference runs PyTorch's attention by its math form, differentiable twice (its
        # fused CPU and GPU kernels have no double backward)
        with sdpa_kernel(SDPBackend.MATH):
            for x_t in x.unbind(1):
                y_t, state = self._step(x_t, state)
                ys.append(y_t)
        return torch.stack(ys, 1), state

    def _step(self, x_t, state):
        y, state = self._attend(x_t[:, None], state)
        return y[:, 0], state

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"window={self.window}, max_len={self.max_len}")
