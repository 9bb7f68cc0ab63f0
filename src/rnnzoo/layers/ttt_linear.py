"""TTT-Linear (Sun et al. 2024, "Learning to (Learn at Test Time): RNNs with Expressive Hidden
States", arXiv:2407.04620): the hidden state is a linear model W (K x K per head) trained on the
sequence itself by mini-batch gradient descent (ops/memory.py has the inner loop).

    q, k = shortconv(W_q x), shortconv(W_k x),   v = W_v x                 (per head, K wide)
    lr_t = base_lr sigmoid(w_lr . x_t + b_lr) / K                           (the learned inner rate)
    W_t  = W_0 - tok_t sum_{s <= t in the mini-batch} lr_s grad l_s(W_0),
           l_s(W) = 1/2 |LN(k_s W + b) - (v_s - k_s)|^2                      (M = mini_batch_size)
    o_t  = q_t + LN(q_t W_t + b_t)
    y    = W_o [gelu(W_g x) * LayerNorm(o)]                                (the paper's gated block)

With `rope` (as the paper's code does) q and k are rotated (Su et al. 2021, arXiv:2104.09864,
LLaMA's half pairing, frequencies rope_base^(-j / (K/2))) by their position inside their
mini-batch, t mod M: the inner loop sees the same relative geometry in every mini-batch.
The initial inner weights W, b, the inner norm, tok's offsets and the rate gate are learned in the
outer loop. `inner_norm=False` drops the inner LN (then l_s = 1/2 |k_s W + b - (v_s - k_s)|^2 and
o_t = q_t + q_t W_t + b_t). State: the inner model's change from its initial weights at the
current mini-batch start, the mini-batch's gradient sums, the step count in it, and the
short-conv state. Modes: `sequential` (token by token) and `minibatch` (the dual form: one
mini-batch at a time, all its steps at once).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import flag, positive, positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.conv import ShortConv
from rnnzoo.layers.rotary import rotate
from rnnzoo.ops.memory import (
    _gelu,
    inner_output,
    ttt_init_state,
    ttt_minibatch,
    ttt_sequential,
    ttt_step,
)
from rnnzoo.ops.native.linear import Linear, linear
from rnnzoo.registry import register


class TTTLayer(RecurrentLayer):
    """x: (B, T, d_model) -> y; state (inner weights' changes and sums..., steps n (B,),
    conv state (B, d_conv - 1, 2 H K)). Subclasses set `kind` ("linear" or "mlp")."""

    modes = ("sequential", "minibatch")
    kind = "linear"

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 mini_batch_size: int = 16, base_lr: float = 1.0, d_conv: int = 4,
                 inner_norm: bool = True, norm_eps: float = 1e-6, rope: bool = False,
                 rope_base: float = 10000.0):
        super().__init__(d_model)
        H = positive_int("num_heads", num_heads)
        K = positive_int("head_dim", d_model // H if head_dim is None else head_dim)
        self.num_heads, self.head_dim = H, K
        self.rope = flag("rope", rope)
        self.rope_base = positive("rope_base", rope_base)
        if self.rope and K % 2:
            raise ValueError(f"head_dim must be even with rope=True, got {K}")
        self.mini_batch_size = M = positive_int("mini_batch_size", mini_batch_size)
        self.base_lr = positive("base_lr", base_lr)
        self.inner_norm = flag("inner_norm", inner_norm)
        self.norm_eps = positive("norm_eps", norm_eps)
        self.qkv_proj = Linear(d_model, 3 * H * K, bias=False)
        self.conv = ShortConv(2 * H * K, d_conv, silu=False)
        self.lr_proj = Linear(d_model, H)
        nn.init.normal_(self.lr_proj.weight, std=0.02)
        nn.init.zeros_(self.lr_proj.bias)
        self.tok_offset = nn.Parameter(torch.zeros(M))     # tok_t = max(1/(t+1) + offset_t, 0)
        widths = [K, K] if self.kind == "linear" else [K, 4 * K, K]
        self.inner = nn.ParameterList()
        for i, o in zip(widths[:-1], widths[1:]):
            self.inner.append(nn.Parameter(0.02 * torch.randn(H, i, o)))
            self.inner.append(nn.Parameter(torch.zeros(H, o)))
        self.inner_norm_weight = nn.Parameter(torch.ones(H, K)) if self.inner_norm else None
        self.inner_norm_bias = nn.Parameter(torch.zeros(H, K)) if self.inner_norm else None
        self.post_norm = nn.LayerNorm(H * K, eps=norm_eps)
        self.g_proj = Linear(d_model, H * K)
        self.o_proj = Linear(H * K, d_model)

    def init_state(self, batch_size, device=None, dtype=None):
        sdt = state_dtype(dtype)
        mem = ttt_init_state(self.kind, batch_size, self.num_heads, self.head_dim, device, sdt)
        return (*mem, self.conv.init_state(batch_size, device, sdt))

    def op_inputs(self, x, conv_state):
        """q, k, v (B, T, H, K), lr (B, T, H), new conv state."""
        B, T, _ = x.shape
        H, K = self.num_heads, self.head_dim
        cdt = compute_dtype(x)
        # q, k and v as two products (W_qkv's rows [q; k] and v): the conv takes [q, k] as
        # written, no cat of q and k each way (nor the split's (B, T, 3HK) gradient)
        W = self.qkv_proj.weight
        qk, v = (linear(x, w).to(cdt) for w in W.split([2 * H * K, H * K]))
        qk, conv_state = self.conv(qk, conv_state)
        q, k = qk.reshape(B, T, 2, H, K).unbind(2)
        lr = self.base_lr / K * torch.sigmoid(self.lr_proj(x).to(cdt))
        return q, k, v.reshape(B, T, H, K), lr, conv_state

    def rotary(self, q, k, n):
        """q, k (B, T, H, K) rotated by their positions in the mini-batch, (n + t) mod M,
        where n (B,) steps of the current mini-batch are already taken (M of them: a new one
        starts)."""
        if not self.rope:
            return q, k
        M, half = self.mini_batch_size, self.head_dim // 2
        pos = torch.remainder(n.round()[:, None] + torch.arange(q.shape[1], device=q.device), M)
        theta = self.rope_base ** (-torch.arange(half, device=q.device, dtype=q.dtype) / half)
        return (rotate(q, pos.to(q.dtype), theta, pairs="halves"),
                rotate(k, pos.to(q.dtype), theta, pairs="halves"))

    def token_factors(self, dtype):
        """tok (M,): 1/(t+1) plus the learned offset, at least 0 (the paper's code)."""
        M = self.mini_batch_size
        base = 1.0 / torch.arange(1, M + 1, device=self.tok_offset.device, dtype=dtype)
        return torch.clamp(base + self.tok_offset.to(dtype), min=0)

    def op_args(self, dtype):
        """The inner model's learned part: (tok, initial weights, norm weight, norm bias)."""
        return (self.token_factors(dtype), [p.to(dtype) for p in self.inner],
                *self.norm_args(dtype))

    def norm_args(self, dtype):
        """The inner norm's (weight, bias) in `dtype`; (None, None) without `inner_norm`."""
        if not self.inner_norm:
            return None, None
        return self.inner_norm_weight.to(dtype), self.inner_norm_bias.to(dtype)

    def op_output(self, q, z, x):
        """o = q + LN(z), then the gated output block. q, z: (B, T, H, K)."""
        w, b = self.norm_args(z.dtype)
        o = inner_output(q, z, w, b, self.norm_eps, self.inner_norm).flatten(2)
        gate = _gelu(self.g_proj(x).to(o.dtype))   # tanh GELU (in C on the CPU: ATen's costs more)
        o = F.layer_norm(o, o.shape[-1:], self.post_norm.weight.to(o.dtype),
                         self.post_norm.bias.to(o.dtype), self.norm_eps)
        return self.o_proj((gate * o).to(x.dtype))

    def _forward(self, x, state, mode):
        *mem, conv_state = state
        q, k, v, lr, conv_state = self.op_inputs(x, conv_state)
        q, k = self.rotary(q, k, mem[-1])
        tok, init, w, b = self.op_args(q.dtype)
        fn = ttt_minibatch if mode == "minibatch" else ttt_sequential
        z, mem = fn(self.kind, q, k, v, lr, tok, init, tuple(mem), w, b, self.norm_eps,
                    self.inner_norm)
        return self.op_output(q, z, x), (*mem, conv_state)

    def _step(self, x_t, state):
        *mem, conv_state = state
        q, k, v, lr, conv_state = self.op_inputs(x_t[:, None], conv_state)
        q, k = self.rotary(q, k, mem[-1])
        tok, init, w, b = self.op_args(q.dtype)
        z, mem = ttt_step(self.kind, q[:, 0], k[:, 0], v[:, 0], lr[:, 0], tok, init,
                          tuple(mem), w, b, self.norm_eps, self.inner_norm)
        return self.op_output(q, z[:, None], x_t[:, None])[:, 0], (*mem, conv_state)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"mini_batch_size={self.mini_batch_size}, base_lr={self.base_lr}, "
                f"inner_norm={self.inner_norm}, rope={self.rope}")


@register("ttt_linear", family="matrix", paper="Sun et al. 2024, arXiv:2407.04620 (TTT-Linear)",
          tiny=dict(d_model=8, num_heads=2, head_dim=4, mini_batch_size=4, d_conv=2, rope=True))
class TTTLinear(TTTLayer):
    __doc__ = TTTLayer.__doc__
    kind = "linear"
