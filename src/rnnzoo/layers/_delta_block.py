"""The block shared by DeltaNet, Gated DeltaNet and DeltaProduct (registered in their own files).

    q, k, v = silu(shortconv(W_q x)), silu(shortconv(W_k x)), silu(shortconv(W_v x))
    q, k    = q / |q|, k / |k|                         (per head; max(|q|, 1e-6), or with
                                                        sqrt_eps sqrt(|q|^2 + 1e-6): fla's l2norm)
    beta    = sigmoid(W_b x)        (2 sigmoid(W_b x) with allow_neg_eigval, Grazzi et al. 2025)
    g       = -exp(A_log) softplus(W_a x + dt_bias)     (forget gate, Gated DeltaNet only)
    S_t     = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T q_t / sqrt(K)
    y       = W_o [RMSNorm(o) (* silu(W_g x) with the output gate)]

With num_key_heads < num_heads, q and k have num_key_heads heads, each shared by
num_heads / num_key_heads consecutive value heads (grouped value heads, Qwen3-Next).

DeltaProduct takes n_h keys, values and betas per token and applies n_h such Householder
steps per token. The layer state is (S (B, H, K, V), short-conv state (B, d_conv-1, C)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import flag, positive, positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers._softplus import inverse_softplus, softplus
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.conv import ShortConv
from rnnzoo.ops import backend, first_order, sequence_parallel
from rnnzoo.ops.chunk.delta import (
    delta_product,
    delta_product_recurrent,
    delta_rule,
    delta_rule_recurrent,
    delta_rule_step,
)
from rnnzoo.ops.native import conv as native_conv
from rnnzoo.ops.native.head_norm import rms_gate
from rnnzoo.ops.native.linear import Linear, linear


def l2norm(x, sqrt_eps: bool = False, eps: float = 1e-6):
    """x / max(|x|, eps) over the last axis (eps 1e-12: F.normalize's), or
    x / sqrt(|x|^2 + 1e-6) (fla's l2norm)."""
    return _L2Norm.apply(x, sqrt_eps, eps)


def _l2norm_plain(x, sqrt_eps, eps):
    """`l2norm` in plain differentiable ops (`_L2Norm`'s twice-differentiable form)."""
    s = x.square().sum(-1, keepdim=True)
    return x * ((s + 1e-6).rsqrt() if sqrt_eps else s.clamp(min=eps * eps).rsqrt())


class _L2Norm(first_order.Function):
    """y = x r with r = 1 / max(|x|, eps) (sqrt_eps: 1 / sqrt(|x|^2 + 1e-6)) over the last
    axis, in two passes each way (F.normalize takes about six forward and more backward):
    dx = r (dy - y (y . dy)), the projection off y, where r depends on x; dx = r dy where
    the floor 1e-6 holds r constant."""

    @staticmethod
    def forward(ctx, x, sqrt_eps, eps):
        s = x.pow(2).sum(-1, keepdim=True)
        if sqrt_eps:
            r, floor = (s + 1e-6).rsqrt_(), None
        else:
            floor = s <= eps * eps
            r = s.clamp_(min=eps * eps).rsqrt_()
        y = x * r
        ctx.save_for_backward(y, r, floor, x)
        ctx.args = sqrt_eps, eps
        return y

    @staticmethod
    def twice(ctx, dy):  # under create_graph: autograd through the plain form
        return first_order.replay(_l2norm_plain, (ctx.saved_tensors[3], *ctx.args), (dy,),
                                  ctx.needs_input_grad)

    @staticmethod
    def backward(ctx, dy):
        y, r, floor, _ = ctx.saved_tensors
        dot = (dy * y).sum(-1, keepdim=True)
        if floor is not None:
            dot = dot.masked_fill(floor, 0)
        return (dy - y * dot) * r, None, None


def delta_qkv(layer, x, conv_state, sqrt_eps: bool = False):
    """The q/k/v front end the single-key delta layers share (comba, kda, gdn2,
    momentum_deltanet): layer.qkv_proj through layer.conv in the compute dtype, split into
    q, k (B, T, H, K), unit norm per head (`l2norm`), and v (B, T, H, V); new conv state."""
    B, T, _ = x.shape
    H, K, V = layer.num_heads, layer.head_dim, layer.value_dim
    (q, k, v), conv_state, normed = conv_l2(layer.conv, layer.qkv_proj(x).to(compute_dtype(x)),
                                            conv_state, 2 * H, K, sqrt_eps, (H * K, H * K, H * V))
    q, k = (t.reshape(B, T, H, K) if normed else l2norm(t.reshape(B, T, H, K), sqrt_eps)
            for t in (q, k))
    return q, k, v.reshape(B, T, H, V), conv_state


def conv_l2(conv, x, conv_state, groups, G, sqrt_eps=False, splits=None):
    """((y's pieces of widths `splits` (three), each (B, T, width); y (B, T, C) itself when
    splits is None), new conv state, normed): conv(x, conv_state)'s output, cut into q, k, v
    where splits are given. On a CPU the first `groups` groups of G
    channels come back L2-normalised as `l2norm` gives them (normed True), fused into the C
    convolution (`ops.native.conv`), which writes each piece contiguous (no copies before
    the C recurrences, no cat of their gradients); elsewhere views of y (normed False)."""
    w, b = conv.weight.to(x.dtype), None if conv.bias is None else conv.bias.to(x.dtype)
    if not sequence_parallel.active() and backend.use_native(x, w, b, conv_state):
        lib = native_conv.load()
        if lib is not None:
            return (*native_conv.short_conv(lib, x, w, b, conv_state, conv.silu, groups, G,
                                            sqrt_eps, splits), True)
    y, conv_state = conv(x, conv_state)
    return (y if splits is None else y.split(list(splits), -1)), conv_state, False


def delta_state(layer, batch_size, device=None, dtype=None):
    """The delta layers' state: S (B, H, K, V) zeros in the state dtype, the conv state."""
    sdt = state_dtype(dtype)
    S = torch.zeros(batch_size, layer.num_heads, layer.head_dim, layer.value_dim,
                    device=device, dtype=sdt)
    return S, layer.conv.init_state(batch_size, device, sdt)


def gated_head_output(layer, o, x, gate=torch.sigmoid):
    """o (B, T, H, V) -> layer.o_proj(layer.norm(o) * gate(layer.g_proj(x))): the per-head
    norm, times the output gate where the layer has one (g_proj None: no gate). An RMS
    HeadNorm with a sigmoid or SiLU gate runs fused in C on a CPU (`ops.native.head_norm.rms_gate`)."""
    z = None if layer.g_proj is None else layer.g_proj(x).to(o.dtype)
    act = {torch.sigmoid: "sigmoid", F.silu: "silu"}.get(gate)
    if layer.norm.kind == "rms" and (z is None or act is not None):
        w = layer.norm.weight.to(o.dtype)
        return layer.o_proj(rms_gate(o.flatten(2), w, o.shape[-1], layer.norm.eps, z, act).to(x.dtype))
    o = layer.norm(o)
    if z is not None:
        o = o * gate(z).view(o.shape)
    return layer.o_proj(o.flatten(2).to(x.dtype))


class DeltaBlock(RecurrentLayer):
    """x: (B, T, d_model) -> y: (B, T, d_model); state (S (B, H, K, V), conv (B, d_conv-1, C))."""

    modes = ("sequential", "chunk")

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 expand_v: int = 1, num_householder: int = 1, forget_gate: bool = False,
                 output_gate: bool = False, allow_neg_eigval: bool = False, d_conv: int = 4,
                 chunk_size: int = 32, norm_eps: float = 1e-5, sqrt_eps: bool = False,
                 num_key_heads: int | None = None):
        super().__init__(d_model)
        self.sqrt_eps = flag("sqrt_eps", sqrt_eps)
        positive_int("num_heads", num_heads)
        Hk = num_heads if num_key_heads is None else positive_int("num_key_heads", num_key_heads)
        if num_heads % Hk:
            raise ValueError(f"num_key_heads must divide num_heads={num_heads}, got {Hk}")
        self.num_key_heads = Hk
        H = positive_int("num_heads", num_heads)
        K = positive_int("head_dim", d_model // H if head_dim is None else head_dim)
        V = K * positive_int("expand_v", expand_v)
        n_h = positive_int("num_householder", num_householder)
        self.chunk_size = positive_int("chunk_size", chunk_size)
        self.num_heads, self.head_dim, self.value_dim, self.num_householder = H, K, V, n_h
        self.allow_neg_eigval = bool(allow_neg_eigval)
        self.norm_eps = positive("norm_eps", norm_eps)
        C = Hk * K + n_h * (Hk * K + H * V)
        self.qkv_proj = Linear(d_model, C, bias=False)
        self.conv = ShortConv(C, d_conv, bias=False)
        self.b_proj = Linear(d_model, n_h * H)
        if forget_gate:  # Mamba-2 style decay, initialised as in Gated DeltaNet
            self.a_proj = Linear(d_model, H, bias=False)
            self.A_log = nn.Parameter(torch.empty(H).uniform_(1, 16).log())
            dt = torch.empty(H).uniform_(math.log(1e-3), math.log(1e-1)).exp()
            self.dt_bias = nn.Parameter(inverse_softplus(dt))
        else:
            self.a_proj = None
        self.g_proj = Linear(d_model, H * V, bias=False) if output_gate else None
        self.norm_weight = nn.Parameter(torch.ones(V))
        self.o_proj = Linear(H * V, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        return delta_state(self, batch_size, device, dtype)

    def op_inputs(self, x, conv_state):
        """q (B,T,H,K), k (B,T,n_h,H,K), v (B,T,n_h,H,V), beta (B,T,n_h,H), g (B,T,H) or None."""
        B, T, _ = x.shape
        H, K, V, n_h = self.num_heads, self.head_dim, self.value_dim, self.num_householder
        cdt = compute_dtype(x)
        Hk = self.num_key_heads
        (q, k, v), conv_state, normed = conv_l2(self.conv, self.qkv_proj(x).to(cdt),
                                                conv_state, (1 + n_h) * Hk, K, self.sqrt_eps,
                                                (Hk * K, n_h * Hk * K, n_h * H * V))
        q, k = q.reshape(B, T, Hk, K), k.reshape(B, T, n_h, Hk, K)
        if not normed:
            q, k = self.l2norm(q), self.l2norm(k)
        if Hk != H:
            q, k = q.repeat_interleave(H // Hk, -2), k.repeat_interleave(H // Hk, -2)
        v = v.reshape(B, T, n_h, H, V)
        b, a = self.gate_inputs(x)
        beta = torch.sigmoid(b.to(cdt)).reshape(B, T, n_h, H)
        if self.allow_neg_eigval:
            beta = 2 * beta
        g = None
        if a is not None:
            g = -self.A_log.to(cdt).exp() * softplus(a.to(cdt) + self.dt_bias.to(cdt))
        return q, k, v, beta, g, conv_state

    def gate_inputs(self, x, extra=None):
        """(W_b x + b_b (B, T, n_h H), W_a x (B, T, H) or None without the forget gate), and
        with extra (E, d_model) rows (MoM's router) x extra^T (B, T, E) third: the stacked
        weights in one product (one pass over x, one x^T in the weight gradient, where
        products of 4-16 output columns each cost ~2 ms fwd+bwd)."""
        a = None if self.a_proj is None else self.a_proj.weight
        if a is None and extra is None:
            return self.b_proj(x), None
        ws = [w for w in (self.b_proj.weight, a, extra) if w is not None]
        rows = [w.shape[0] for w in ws]
        y = linear(x, torch.cat([w.to(ws[0].dtype) for w in ws]),
                   F.pad(self.b_proj.bias, (0, sum(rows[1:]))))
        b, *rest = y.split(rows, -1)
        g = rest.pop(0) if a is not None else None
        return (b, g) if extra is None else (b, g, rest[0])

    def l2norm(self, x):
        return l2norm(x, self.sqrt_eps)

    def op_output(self, o, x):
        """RMSNorm per head (and the output gate), then the output projection. o: (B, T, H, V)."""
        cdt, V = o.dtype, o.shape[-1]
        z = None if self.g_proj is None else self.g_proj(x).to(cdt)
        w = self.norm_weight.to(cdt).repeat(o.shape[-2])
        y = rms_gate(o.flatten(2), w, V, self.norm_eps, z, None if z is None else "silu")
        return self.o_proj(y.to(x.dtype))

    def _forward(self, x, state, mode):
        S, conv_state = state
        q, k, v, beta, g, conv_state = self.op_inputs(x, conv_state)
        if self.num_householder == 1:
            k, v, beta = k.squeeze(2), v.squeeze(2), beta.squeeze(2)  # views each way (a
            # select's backward fills zeros and copies the gradient in)
            if mode == "chunk":
                o, S = delta_rule(q, k, v, beta, g, initial_state=S, chunk_size=self.chunk_size)
            else:
                o, S = delta_rule_recurrent(q, k, v, beta, g, initial_state=S)
        elif mode == "chunk":
            o, S = delta_product(q, k, v, beta, g, initial_state=S, chunk_size=self.chunk_size)
        else:
            o, S = delta_product_recurrent(q, k, v, beta, g, initial_state=S)
        return self.op_output(o, x), (S, conv_state)

    def _step(self, x_t, state):
        S, conv_state = state
        q, k, v, beta, g, conv_state = self.op_inputs(x_t[:, None], conv_state)
        scale = self.head_dim ** -0.5
        if g is not None:
            S = S * g[:, 0].exp()[..., None, None]
        for j in range(self.num_householder):
            o, S = delta_rule_step(q[:, 0], k[:, 0, j], v[:, 0, j], beta[:, 0, j], None, S, scale)
        return self.op_output(o[:, None], x_t[:, None])[:, 0], (S, conv_state)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"value_dim={self.value_dim}, num_householder={self.num_householder}, "
                f"forget_gate={self.a_proj is not None}, output_gate={self.g_proj is not None}, "
                f"allow_neg_eigval={self.allow_neg_eigval}, chunk_size={self.chunk_size}")
