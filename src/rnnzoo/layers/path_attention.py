"""PaTH attention (Yang et al. 2025, "PaTH Attention: Position Encoding via Accumulating
Householder Transformations", arXiv:2505.16381): softmax attention whose position encoding is
the product of the data-dependent Householder reflections between key and query.

    q, k, v = W_q x, W_k x, W_v x;   w_t = normalize(W_w x_t);   beta_t = 2 sigmoid(W_b x_t)
    H_t  = I - beta_t w_t w_t^T                                   (per head)
    s_ij = q_i^T H_i H_{i-1} ... H_{j+1} k_j / sqrt(Dh)           (j <= i; j = i: q_i^T k_i)
    o_i  = sum_{j<=i} softmax_j(s_ij) v_j,   y = W_o o

With identity reflections (beta = 0) it is softmax attention without positions.
The keys transformed so far, K~_t = [H_t ... H_{j+1} k_j]_j, follow
K~_t = H_t K~_{t-1} + k_t e_t^T: RWKV-7's generalised delta rule (no decay, a = w, b =
-beta w) with one-hot values over the cache's slots, whose readout q_t^T K~_t is the row of
scores. So the cache holds the transformed keys, updated by each new reflection (as the
paper decodes); slots from `position` on are empty (read as zero keys, never attended):

    state = (k_cache (transformed), v_cache, position)   (B, H, max_len, Dh) each, (B,)

Modes: `sequential` (reference: that recurrence through ops.chunk.delta.rwkv7_recurrent, over
all max_len slots) and `chunk` (the paper's chunkwise algorithm, ops.path_attention: UT
transform within a chunk, whole-chunk products between chunks, softmax over the causal blocks
only; the cache is read only when some sequence has one).
"""

from __future__ import annotations

import torch

from rnnzoo.checks import positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers._delta_block import l2norm
from rnnzoo.layers.attention import Attention, set_heads, write_front
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.ops import backend
from rnnzoo.ops.chunk.delta import rwkv7_recurrent
from rnnzoo.ops.finite import finite, poison
from rnnzoo.ops.native.linear import Linear, linear
from rnnzoo.ops.path_attention import (
    fresh_applies,
    path_attention,
    path_attention_fresh,
    proj_views,
    proj_weight,
)
from rnnzoo.registry import register

_W_EPS = 1e-6  # w = w_proj(x) / max(|w_proj(x)|, eps) per head


@register("path_attention", family="attention",
          paper="Yang et al. 2025, arXiv:2505.16381 (PaTH attention)",
          tiny=dict(d_model=4, num_heads=2, max_len=16, chunk_size=4))
class PaTHAttention(Attention):
    """x: (B, T, d_model) -> y; state (k_cache, v_cache, position)."""

    modes = ("sequential", "chunk")
    host_reads = {
        **RecurrentLayer.host_reads,
        **{case: "reads the position held in the state to check max_len"
           for case in ("sequential", "chunk", "step")},
    }

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 max_len: int = 1024, chunk_size: int = 64):
        RecurrentLayer.__init__(self, d_model)  # no rotary (Attention's checks), no window
        head_dim = set_heads(self, d_model, num_heads, head_dim, max_len)
        self.chunk_size = positive_int("chunk_size", chunk_size)
        inner = num_heads * head_dim
        self.qkv = Linear(d_model, 3 * inner, bias=False)
        self.w_proj = Linear(d_model, inner, bias=False)
        self.b_proj = Linear(d_model, num_heads, bias=True)
        self.out_proj = Linear(inner, d_model, bias=False)

    def _check_or_init_state(self, state, x):
        """A fresh sequence (no state given) gets its empty caches as one zero expanded to
        (B, H, max_len, Dh): `_forward` only reads them (the keys come back as a new cache,
        the values through a copy), so the two 4 B H max_len Dh bytes of zeros are not written
        each call. `init_state` still returns real zeros."""
        if state is not None:
            return super()._check_or_init_state(state, x)
        dt = state_dtype(x.dtype)
        B = x.shape[0]
        # torch.zeros, not x.new_zeros: under torch.func's vmap x's zeros are batched, and the
        # position read to check max_len is then a read of a batched value
        empty = torch.zeros((), dtype=dt, device=x.device).expand(B, self.num_heads,
                                                                   self.capacity, self.head_dim)
        return empty, empty, torch.zeros(B, dtype=dt, device=x.device)

    def op_inputs(self, x):
        """q, k, v, w: (B, T, H, Dh) (w of unit norm), beta: (B, T, H) in (0, 2)."""
        qkv, w, beta = self.fused_inputs(x)
        return (*qkv.unbind(2), w, beta)

    def fused_inputs(self, x):
        """op_inputs with q, k, v as the fused projection qkv (B, T, 3, H, Dh) (q, k, v =
        qkv.unbind(2)): ops.path_attention reads them from it in place on the CPU (no split
        into heads, one gradient tensor)."""
        return self._normalised(*self._projections(x))

    def _projections(self, x):
        """qkv (B, T, 3, H, Dh), w and beta before their normalisation: (B, T, H, Dh), (B, T, H)."""
        B, T, _ = x.shape
        cdt = compute_dtype(x)
        qkv = self.qkv(x).to(cdt).view(B, T, 3, self.num_heads, -1)
        return qkv, self.w_proj(x).to(cdt).view(B, T, self.num_heads, -1), self.b_proj(x).to(cdt)

    @staticmethod
    def _normalised(qkv, w, beta):
        return qkv, l2norm(w, eps=_W_EPS), 2 * torch.sigmoid(beta)  # w: F.normalize's, eps 1e-6

    def op_output(self, o, x):
        return self.out_proj(o.flatten(2).to(x.dtype))

    def _forward(self, x, state, mode):
        k_cache, v_cache, position = state
        start = position.round().long()
        B, T, _ = x.shape
        top = int(start.max())
        if top + T > self.max_len:
            raise ValueError(f"sequence of {top + T} tokens exceeds max_len={self.max_len} of "
                             f"this PaTH attention layer; build it with a larger max_len")
        if (mode == "chunk" and top == 0 and compute_dtype(x) == x.dtype
                and fresh_applies(T, self.chunk_size, x, self.qkv.weight)):
            fresh = self._fresh(x, state, start)  # None: an input not finite
            if fresh is not None:
                return fresh
        qkv, w, beta = self._normalised(*self._projections(x))
        q, k, v = qkv.unbind(2)
        pos = start[:, None] + torch.arange(T, device=x.device)                   # (B, T)
        slots = torch.arange(self.max_len, device=x.device)
        if mode == "chunk":
            return self._chunk(x, state, qkv, w, beta, start, pos, slots, top > 0)
        onehot = (slots == pos[..., None]).to(q.dtype)[:, :, None].expand(-1, -1, self.num_heads, -1)
        # slots from the position on are empty: read as zero (the new keys are written there)
        empty = (slots >= start[:, None])[:, None, :, None]
        S0 = k_cache.to(q.dtype).masked_fill(empty, 0).transpose(-1, -2)         # (B, H, Dh, L)
        zero = torch.zeros_like(w)
        s, S = rwkv7_recurrent(q, zero, k, onehot, w, -beta[..., None] * w,
                               scale=self.head_dim ** -0.5, initial_state=S0)
        # values: the cache with the new ones written in, then softmax over visible slots
        _, v_all, end = self._write((k_cache, v_cache, position), k.transpose(1, 2),
                                    v.transpose(1, 2), pos, start + T)
        values, bad_v = finite(v_all.to(q.dtype), 2)                              # (B, H, L, Dh)
        visible = slots[None, None, :] <= pos[..., None]                          # (B, T, L)
        scores = s.transpose(1, 2).masked_fill(~visible[:, None], float("-inf"))  # (B, H, T, L)
        out = scores.softmax(-1) @ values
        out = poison(out, (visible & bad_v[:, None, :]).any(-1)[:, None])
        y = self.op_output(out.transpose(1, 2), x)
        return y, (S.transpose(-1, -2).to(k_cache.dtype), v_all, end)

    def _fresh(self, x, state, start):
        """The chunk mode of a fresh sequence in one product and two C kernels each way
        (ops.path_attention.path_attention_fresh): q, k, v, w and beta from one oneDNN
        product over the three projections' weights (b_proj's bias added in the kernel), w's
        l2norm and beta's sigmoid in the chunk kernel, one gradient of the product; None
        when an input is not finite (the caller's path then marks it)."""
        k_cache, v_cache, position = state
        H = self.num_heads
        weight = proj_weight(*self.qkv.weight.chunk(3), self.w_proj.weight, self.b_proj.weight, H)
        proj = linear(x, weight)                   # (B, T, 4 H Dh + H): per head [q k v w], beta
        # the values' cache written by the kernel (where the dtypes agree), else write_front
        values = v_cache if v_cache.dtype == proj.dtype else None
        fresh = path_attention_fresh(proj, H, scale=self.head_dim ** -0.5,
                                     chunk_size=self.chunk_size, keys_len=self.max_len,
                                     eps=_W_EPS, beta_bias=self.b_proj.bias, values=values)
        if fresh is None:
            return None
        out, keys, *vals = fresh
        if values is None:
            vals = [write_front(v_cache, proj_views(proj, H)[2].transpose(1, 2))]
        return self.op_output(out, x), (keys.to(k_cache.dtype), vals[0],
                                         (start + x.shape[1]).to(position.dtype))

    def _chunk(self, x, state, qkv, w, beta, start, pos, slots, cached):
        """The chunkwise form (ops.path_attention): the cache is read only when some sequence
        has one (cached), and its keys are moved through the new reflections either way."""
        k_cache, v_cache, position = state
        q, k, v = qkv.unbind(2)
        v_new, bad = v, None  # C kernels, every value finite: no copy, no marks (one host read)
        if not (backend.use_native(v) and bool(torch.isfinite(v.sum((2, 3))).all())):
            v_new, bad = finite(v)                                                # (B, T, H, Dh)
            bad = bad.cumsum(1) > 0
        kc = vc = visible = None
        if cached:
            kc, (vc, bad_c) = k_cache, finite(v_cache.to(q.dtype), 2)
            visible = slots < start[:, None]                                      # (B, L)
            bad_c = (visible & bad_c).any(-1, keepdim=True)
            bad = bad_c if bad is None else bad | bad_c
        out, keys, moved = path_attention(q, k, v_new, w, beta, scale=self.head_dim ** -0.5,
                                          chunk_size=self.chunk_size, k_cache=kc,
                                          v_cache=vc, cache_visible=visible,
                                          qkv=qkv if v_new is v else None,
                                          keys_len=None if cached else self.max_len)
        y = self.op_output(out if bad is None else poison(out, bad), x)
        end = (start + pos.shape[1]).to(position.dtype)
        if not cached:  # every sequence starts at 0: the new tokens fill slots [0, T), no scatter
            # (keys: a fresh cache of max_len slots from the op, zero past T)
            return y, (keys.to(k_cache.dtype), write_front(v_cache, v.transpose(1, 2)), end)
        index = pos[:, None, :, None].expand(-1, self.num_heads, -1, self.head_dim)
        k_cache = moved.scatter(2, index, keys).to(k_cache.dtype)
        v_cache = v_cache.scatter(2, index, v.transpose(1, 2).to(v_cache.dtype))
        return y, (k_cache, v_cache, end)

    def _step(self, x_t, state):
        y, state = self._forward(x_t[:, None], state, "sequential")
        return y[:, 0], state

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"max_len={self.max_len}, chunk_size={self.chunk_size}")
