"""Stick-breaking attention (Tan et al. 2024, "Scaling Stick-Breaking Attention: An Efficient
Implementation and In-depth Study", arXiv:2410.17980): each query breaks a stick of length 1,
nearest key first; the softmax and the positions both go.

    z_ij  = q_i . k_j / sqrt(Dh),   beta_ij = sigmoid(z_ij)
    A_ij  = beta_ij prod_{j < l < i} (1 - beta_il)        (j < i; j <= l <= i, j <= i with
                                                            attend_current)
    o_i   = sum_j A_ij v_j,   y = W_o o                    (sum_j A_ij <= 1: no normaliser)

In log space, log A_ij = logsigmoid(z_ij) + sum_{l > j, visible} logsigmoid(-z_il): one
reverse cumulative sum along the keys.

The cache is the `attention` layer's (full attention, `max_len` slots, slot s = token s):
    state = (k_cache, v_cache, position)
Modes: `sequential` (one token at a time through the cache) and `parallel` (all queries over
cache + new tokens at once). On the CPU in float32 / float64 both run the C rows of
ops.native.attention between blocked matrix products (a fresh sequence in causal tiles);
elsewhere the log-space form below.
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from rnnzoo.checks import flag
from rnnzoo.dtypes import compute_dtype
from rnnzoo.layers.attention import Attention, set_heads
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.ops import backend, first_order, native
from rnnzoo.ops.finite import finite, poison
from rnnzoo.ops.native import attention as native_attention
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import register


def stick_breaking_weights(z, visible):
    """A (..., Tq, Tk) from logits z and a bool mask of the visible keys (keys in position
    order): beta_ij prod over the visible l after j of (1 - beta_il); 0 where not visible."""
    log_om = F.logsigmoid(-z).masked_fill(~visible, 0.0)
    after = log_om.flip(-1).cumsum(-1).flip(-1) - log_om          # sum over visible l > j
    return (F.logsigmoid(z) + after).masked_fill(~visible, float("-inf")).exp()


def _split_plain(qkv, H, scale):
    """`_Split`'s forward in plain differentiable ops (its `twice`)."""
    q, k, v = qkv.unflatten(-1, (3, H, -1)).permute(2, 0, 3, 1, 4).unbind(0)
    return q * scale, k, v


class _Split(first_order.Function):
    """qkv (B, T, 3 H D) laid out [q | k | v] -> q (times scale), k, v (B, H, T, D) contiguous,
    one C pass each way over the (b, t) rows (attention.c: sb_split; a plain copy a head, where
    the rotary `heads` kernel took ~3x as long with no channel to turn)."""

    @staticmethod
    def forward(ctx, lib, qkv0, H, scale):
        qkv = qkv0.contiguous()
        B, T, w = qkv.shape
        q, k, v = qkv.new_empty(3, B, H, T, w // (3 * H)).unbind(0)
        fn = native.kernel(lib, "sb_split", qkv.dtype, _SPLIT_ARGS)
        native_attention._run(fn, [native.ptr(t) for t in (qkv, q, k, v)],
                              (T, H, w // (3 * H), scale, 0), B * T)
        ctx.lib, ctx.H, ctx.scale = lib, H, scale
        ctx.save_for_backward(qkv0)
        return q, k, v

    @staticmethod
    def twice(ctx, dq, dk, dv):  # under create_graph: autograd through the plain form
        (qkv,) = ctx.saved_tensors
        return (None, *first_order.replay(_split_plain, (qkv, ctx.H, ctx.scale),
                                          (dq, dk, dv), ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, dq, dk, dv):
        ref = next(g for g in (dq, dk, dv) if g is not None)
        B, H, T, D = ref.shape
        dq, dk, dv = (torch.zeros_like(ref) if g is None else g.contiguous()
                      for g in (dq, dk, dv))
        dqkv = dq.new_empty(B, T, 3 * H * D)
        fn = native.kernel(ctx.lib, "sb_split", dq.dtype, _SPLIT_ARGS)
        native_attention._run(fn, [native.ptr(t) for t in (dqkv, dq, dk, dv)],
                              (T, H, D, ctx.scale, 1), B * T)
        return None, dqkv, None, None


_SPLIT_ARGS = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 3 + [ctypes.c_double] + [ctypes.c_long] * 3


@register("stickbreaking_attention", family="attention",
          paper="Tan et al. 2024, arXiv:2410.17980 (stick-breaking attention)",
          tiny=dict(d_model=4, num_heads=2, max_len=16, attend_current=True))
class StickBreakingAttention(Attention):
    """x: (B, T, d_model) -> y; state (k_cache, v_cache, position)."""

    modes = ("sequential", "parallel")
    host_reads = {
        **RecurrentLayer.host_reads,
        **{case: "reads the position held in the state to check max_len and to skip the "
           "empty cache of a fresh sequence (and, on the C kernels, whether a fresh "
           "projection sums to a finite number)" for case in ("sequential", "parallel",
                                                              "step")},
    }

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 max_len: int = 1024, attend_current: bool = False):
        RecurrentLayer.__init__(self, d_model)  # no rotary (Attention's checks), no window
        head_dim = set_heads(self, d_model, num_heads, head_dim, max_len)
        self.attend_current = flag("attend_current", attend_current)
        inner = num_heads * head_dim
        self.qkv = Linear(d_model, 3 * inner, bias=False)
        self.out_proj = Linear(inner, d_model, bias=False)

    def op_inputs(self, x):
        """q, k, v: (B, T, H, Dh) in the compute dtype."""
        B, T, _ = x.shape
        return self.qkv(x).to(compute_dtype(x)).view(B, T, 3, self.num_heads, -1).unbind(2)

    def op_output(self, o, x):
        return self.out_proj(o.flatten(2).to(x.dtype))

    def _attend(self, x, state):
        k_cache, v_cache, position = state
        start = position.round().long()
        T = x.shape[1]
        top = int(start.max())
        if top + T > self.max_len:
            raise ValueError(f"sequence of {top + T} tokens exceeds max_len={self.max_len} of "
                             f"this stick-breaking attention layer; build it with a larger max_len")
        qkv = self.qkv(x).to(compute_dtype(x))
        lib = native_attention.load() if backend.use_native(qkv) else None
        if lib is not None and top == 0:  # split, transposes and q's scale in one C pass
            q, k, v = _Split.apply(lib, qkv, self.num_heads, self.head_dim ** -0.5)
        else:  # (B, H, T, Dh) views, as op_inputs
            q, k, v = qkv.view(*x.shape[:2], 3, self.num_heads, -1).unbind(2)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        pos = start[:, None] + torch.arange(T, device=x.device)
        if top > 0:
            keys = torch.cat([k_cache.to(k.dtype), k], dim=2)
            values = torch.cat([v_cache.to(v.dtype), v], dim=2)
            key_pos = torch.cat([self._slot_positions(start), pos], dim=1)
        else:
            keys, values, key_pos = k, v, pos
        # a fresh sequence on the C kernels whose projection sums to a finite number (one sum,
        # read on the host: free there) has only finite q, k, v: no zeroed copies, no marks
        clean = lib is not None and top == 0 and bool(torch.isfinite(qkv.sum()))
        if not clean:
            (q, bad_q), (keys, bad_k), (values, bad_v) = (finite(t, 2)
                                                           for t in (q, keys, values))
        if lib is None or top > 0:
            q = q * self.head_dim ** -0.5
        bad = None if clean else bad_k | bad_v
        if lib is not None and top == 0:  # fresh: causal tiles, no (T, T) mask at all
            out = native_attention.stick_breaking_attention(lib, q, keys, values, None,
                                                            0 if self.attend_current else -1)
            if clean:  # q, k, v as they were: nothing to mark
                return (self.op_output(out.transpose(1, 2), x),
                        self._write(state, k, v, pos, start + T, fresh=True))
            seen = bad.cumsum(1) - (0 if self.attend_current else bad.long()) > 0
        else:
            before = key_pos[:, None, :] <= pos[:, :, None] if self.attend_current \
                else key_pos[:, None, :] < pos[:, :, None]
            visible = (key_pos[:, None, :] >= 0) & before               # (B, T, C + T)
            if lib is not None:  # C rows between blocked matmuls
                out = native_attention.stick_breaking_attention(lib, q, keys, values, visible)
            else:
                out = stick_breaking_weights(q @ keys.transpose(-1, -2), visible[:, None]) \
                    @ values
            seen = (visible & bad[:, None, :]).any(-1)
        out = poison(out, (bad_q | seen)[:, None])
        y = self.op_output(out.transpose(1, 2), x)
        return y, self._write(state, k, v, pos, start + T, fresh=top == 0)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"max_len={self.max_len}, attend_current={self.attend_current}")
