"""DeltaFormer (Zhong et al. 2025, "Understanding Transformer from the Perspective of
Associative Memory", arXiv:2505.19488): softmax attention that writes with the delta rule.
Each token stores, instead of its value, the value minus what the memory already returns
for it (its query read against the earlier keys), and the output reads those residues:

    p_ts = softmax_{s<t}(q_t . k_s / sqrt(Dh))                (strictly earlier keys)
    u_t  = v_t - beta_t sum_{s<t} p_ts u_s,   beta_t = sigmoid(w_beta^T x_t) (one a head)
    o_t  = sum_{s<=t} softmax_{s<=t}(q_t . k_s / sqrt(Dh)) u_s,   y = W_o o

The residues u solve the unit lower-triangular system (I + diag(beta) P) u = v, P the
strictly causal softmax: the `parallel` mode solves it with one triangular solve per
block of new tokens (the cache's part moved to the right-hand side); `sequential` appends
one token at a time. On the CPU in float32/float64 a fresh sequence's block runs row by row
in C (ops.native.deltaformer_attn: u_t by forward substitution as the rows are reached, the
output read through the same row of scores, no (T, T) matrix). The cache holds keys and residues (the attention layer's full cache):

    state = (k_cache, u_cache, position)   k_cache, u_cache: (B, H, max_len, Dh)
"""

from __future__ import annotations

import torch

from rnnzoo.dtypes import compute_dtype
from rnnzoo.layers.attention import Attention, set_heads
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.ops import backend
from rnnzoo.ops.finite import finite, poison
from rnnzoo.ops.native import deltaformer_attn as native_df
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import register


def masked_softmax(scores, visible):
    """softmax over the visible keys; rows with none are 0 (finite gradients everywhere)."""
    low = torch.finfo(scores.dtype).min
    return torch.softmax(scores.masked_fill(~visible, low), -1) * visible


@register("deltaformer", family="attention",
          paper="Zhong et al. 2025, arXiv:2505.19488 (DeltaFormer)",
          tiny=dict(d_model=4, num_heads=2, max_len=16))
class DeltaFormer(Attention):
    """x: (B, T, d_model) -> y; state (k_cache, u_cache, position)."""

    modes = ("sequential", "parallel")
    host_reads = {
        **RecurrentLayer.host_reads,
        **{case: "reads the position held in the state to check max_len and to skip the "
           "empty cache of a fresh sequence" for case in ("sequential", "parallel", "step")},
    }

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 max_len: int = 1024):
        RecurrentLayer.__init__(self, d_model)  # no rotary (Attention's checks), no window
        head_dim = set_heads(self, d_model, num_heads, head_dim, max_len)
        inner = num_heads * head_dim
        self.qkv = Linear(d_model, 3 * inner, bias=False)
        self.b_proj = Linear(d_model, num_heads, bias=True)
        self.out_proj = Linear(inner, d_model, bias=False)

    def op_inputs(self, x):
        """q, k, v: (B, T, H, Dh), beta: (B, T, H), in the compute dtype."""
        B, T, _ = x.shape
        cdt = compute_dtype(x)
        q, k, v = self.qkv(x).to(cdt).view(B, T, 3, self.num_heads, -1).unbind(2)
        return q, k, v, torch.sigmoid(self.b_proj(x).to(cdt))

    def op_output(self, o, x):
        return self.out_proj(o.flatten(2).to(x.dtype))

    def _attend(self, x, state):
        k_cache, u_cache, position = state
        start = position.round().long()
        T = x.shape[1]
        top = int(start.max())
        if top + T > self.max_len:
            raise ValueError(f"sequence of {top + T} tokens exceeds max_len={self.max_len} of "
                             f"this DeltaFormer layer; build it with a larger max_len")
        q, k, v, beta = self.op_inputs(x)
        # u_t depends on q_t, k, v, beta up to t and is written to the cache: a non-finite
        # entry at step t marks every later output (ops.finite)
        (q, bad_q), (k_f, bad_k), (v, bad_v), (beta, bad_b) = (finite(t) for t in (q, k, v, beta))
        late = (bad_q | bad_k | bad_v | bad_b).cumsum(1) > 0                    # (B, T)
        q, k_f, v, beta = (t.transpose(1, 2) for t in (q, k_f, v, beta))       # (B, H, T, .)
        pos = start[:, None] + torch.arange(T, device=x.device)
        lib = native_df.load() if top == 0 and backend.use_native(q, k_f, v, beta) else None
        if lib is not None:  # a fresh sequence: row by row in C, no (T, T) matrix (ops.native)
            out, u = native_df.attend(lib, q, k_f, v, beta, self.head_dim ** -0.5)
            return self._finish(x, state, k, u, out, late, pos, start + T, fresh=True)
        new_pos = pos[:, None, :]
        if top > 0:
            (kc, bad_kc), (uc, bad_uc) = finite(k_cache.to(q.dtype), 2), finite(u_cache.to(q.dtype), 2)
            cpos = self._slot_positions(start)[:, None, :]                     # (B, 1, C)
            vis_c = (cpos >= 0) & (cpos < pos[:, :, None])                      # (B, T, C)
            late = late | (vis_c & (bad_kc | bad_uc)[:, None, :]).any(-1)
            keys, key_pos = torch.cat([kc, k_f], 2), torch.cat([cpos, new_pos], 2)
        else:
            keys, key_pos, uc = k_f, new_pos, None
        scores = q @ keys.transpose(-1, -2) * self.head_dim ** -0.5            # (B, H, T, C + T)
        seen = (key_pos >= 0) & (key_pos <= pos[:, :, None])
        strict = seen & (key_pos < pos[:, :, None])
        P = masked_softmax(scores, strict[:, None])
        C = keys.shape[2] - T
        rhs = v if uc is None else v - beta[..., None] * (P[..., :C] @ uc)
        eye = torch.eye(T, dtype=q.dtype, device=q.device)
        u = torch.linalg.solve_triangular(eye + beta[..., None] * P[..., C:], rhs, upper=False,
                                          unitriangular=True)
        values = u if uc is None else torch.cat([uc, u], 2)
        out = masked_softmax(scores, seen[:, None]) @ values
        return self._finish(x, state, k, u, out, late, pos, start + T, fresh=top == 0)

    def _finish(self, x, state, k, u, out, late, pos, end, fresh: bool):
        """y from the heads' outputs out (B, H, T, Dh), and the cache with k and residues u
        (fresh: every sequence starts at 0, Attention._write's cat); outputs and residues
        from a marked (non-finite) step on are NaN."""
        y = self.op_output(poison(out, late[:, None]).transpose(1, 2), x)
        u = poison(u.transpose(1, 2), late).transpose(1, 2)  # a marked step's residue is NaN
        return y, self._write(state, k.transpose(1, 2), u, pos, end, fresh=fresh)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"max_len={self.max_len}")
