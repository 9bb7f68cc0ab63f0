"""Mamba-2 (Dao & Gu 2024, "Transformers are SSMs", arXiv:2405.21060): the SSD layer.

A scalar decay per head and per step, inputs B_t, C_t shared by the heads of a group
(`n_groups`, mamba_ssm's `ngroups`: head h reads group h // (H / n_groups); default one):

    [z, xBC, dt] = x W_in;  [x, B, C] = silu(conv1d(xBC));  dt = softplus(dt + dt_bias)
    S_t = exp(dt_t A) S_{t-1} + B_t (dt_t x_t)^T,   A = -exp(A_log) < 0    S: (d_state, head_dim)
    y_t = S_t^T C_t + D x_t,   out = RMSNorm(y * silu(z)) W_out              (gated RMSNorm)

The gated RMSNorm normalises each group's d_inner / n_groups channels on their own
(eps `norm_eps`), as mamba_ssm's RMSNormGated with group_size = d_inner / ngroups.
Options for checkpoints that differ (Falcon-H1): `d_inner` (the mixer width, default
expand * d_model), `norm_before_gate` (out = (RMSNorm(y) * silu(z)) W_out, as mamba_ssm's
norm_before_gate=True), `gated_norm=False` (no norm: out = (y * silu(z)) W_out) and
`dt_floor` (dt = max(dt, dt_floor), mamba_ssm's dt_limit lower bound, as Zamba2 clamps at
its time_step_min; 0: none).

i.e. gated linear attention with q = C, k = B, v = dt x and log decay dt A. Modes:
`sequential`, `chunk` (the SSD chunkwise algorithm) and `parallel` (the quadratic
"attention" form of the semiseparable matrix). The state is (S, conv state).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import flag, positive, positive_int
from rnnzoo.dtypes import state_dtype
from rnnzoo.layers._delta_block import conv_l2
from rnnzoo.layers._softplus import inverse_softplus
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.conv import ShortConv
from rnnzoo.ops import backend, first_order
from rnnzoo.ops.chunk.linear import (
    gated_linear_attention_parallel,
    gated_linear_attention_recurrent,
    ssd,
)
from rnnzoo.ops.native import conv as native_conv
from rnnzoo.ops.native import gated_norm
from rnnzoo.ops.native.linear import Linear, linear
from rnnzoo.registry import register


def _gated_rms_plain(y, z, weight, n, eps):
    """`_GatedRMSNorm`'s forward in plain differentiable ops (its `twice`)."""
    u = (y * F.silu(z)).unflatten(-1, (-1, n))
    return (u * u.square().mean(-1, keepdim=True).add(eps).rsqrt()).flatten(-2) * weight


class _GatedRMSNorm(first_order.Function):
    """RMSNorm(y * silu(z)) * weight over groups of n channels, with a hand-written backward
    that recomputes y * silu(z) (autograd's chain of silu, pow, mean, rsqrt and products
    stores and re-reads about twice as many (B, T, d_inner) tensors). With u = y silu(z),
    r = (mean_group(u^2) + eps)^(-1/2), out = u r weight and gu = grad * weight:
        du = r gu - u r^3 mean_group(gu u),  dy = du silu(z),
        dz = du y sigmoid(z) (1 + z (1 - sigmoid(z))),  dweight = sum(grad u r).
    y, z: (..., G n); weight: (G n,)."""

    @staticmethod
    def forward(ctx, y, z, weight, n, eps):
        u = (y * F.silu(z)).unflatten(-1, (-1, n))
        r = u.square().mean(-1, keepdim=True).add_(eps).rsqrt_()
        ctx.save_for_backward(y, z, weight, r)
        ctx.n, ctx.eps = n, eps
        return (u * r).flatten(-2) * weight

    @staticmethod
    def twice(ctx, grad):  # under create_graph: r saved holds no history; the plain form
        y, z, weight, _ = ctx.saved_tensors
        return first_order.replay(_gated_rms_plain, (y, z, weight, ctx.n, ctx.eps), (grad,),
                                  ctx.needs_input_grad)

    @staticmethod
    def backward(ctx, grad):
        y, z, weight, r = ctx.saved_tensors
        n = ctx.n
        sig = torch.sigmoid(z)
        u = (y * z * sig).unflatten(-1, (-1, n))
        g = grad.unflatten(-1, (-1, n))
        ur = u * r
        d_weight = (grad * ur.flatten(-2)).flatten(0, -2).sum(0)
        gu = g * weight.view(-1, n)
        du = (gu - ur * (gu * ur).mean(-1, keepdim=True)).mul_(r).flatten(-2)
        dy = du * z * sig
        dz = du * y * sig * (1 + z * (1 - sig))
        return dy, dz, d_weight, None, None


@register("mamba2", family="matrix", paper="Dao & Gu 2024, arXiv:2405.21060",
          tiny=dict(d_model=4, d_state=2, head_dim=4, d_conv=3, chunk_size=4))
class Mamba2(RecurrentLayer):
    """x: (B, T, d_model) -> y; state (S: (B, H, d_state, head_dim),
    conv: (B, d_conv - 1, d_inner + 2 n_groups d_state)), H = d_inner / head_dim,
    d_inner = expand * d_model unless given."""

    modes = ("sequential", "chunk", "parallel")

    def __init__(self, d_model: int, d_state: int = 64, head_dim: int = 64, expand: int = 2,
                 d_conv: int = 4, chunk_size: int = 64, dt_min: float = 1e-3,
                 dt_max: float = 0.1, n_groups: int = 1, norm_eps: float = 1e-5,
                 d_inner: int | None = None, gated_norm: bool = True,
                 norm_before_gate: bool = False, dt_floor: float = 0.0):
        super().__init__(d_model)
        for name, value in (("d_state", d_state), ("head_dim", head_dim), ("expand", expand),
                            ("d_conv", d_conv), ("chunk_size", chunk_size),
                            ("n_groups", n_groups)):
            positive_int(name, value)
        self.norm_eps = positive("norm_eps", norm_eps)
        self.gated_norm = flag("gated_norm", gated_norm)
        self.norm_before_gate = flag("norm_before_gate", norm_before_gate)
        self.dt_floor = positive("dt_floor", dt_floor, allow_zero=True)
        d_inner = expand * d_model if d_inner is None else positive_int("d_inner", d_inner)
        if d_inner % head_dim:
            raise ValueError(f"d_inner (expand * d_model unless given) = {d_inner} must be a "
                             f"multiple of head_dim, got head_dim={head_dim}")
        self.d_inner, self.d_state, self.head_dim = d_inner, d_state, head_dim
        self.num_heads, self.chunk_size = d_inner // head_dim, chunk_size
        H, G = self.num_heads, n_groups
        if H % G:
            raise ValueError(f"the number of heads d_inner / head_dim = {H} must be a "
                             f"multiple of n_groups, got n_groups={n_groups}")
        self.n_groups = G
        self.in_proj = Linear(d_model, 2 * d_inner + 2 * G * d_state + H, bias=False)
        self.conv = ShortConv(d_inner + 2 * G * d_state, d_conv)
        dt = torch.exp(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_bias = nn.Parameter(inverse_softplus(dt))
        self.A_log = nn.Parameter(torch.empty(H).uniform_(1, 16).log())
        self.D = nn.Parameter(torch.ones(H))
        self.norm_weight = nn.Parameter(torch.ones(d_inner)) if self.gated_norm else None
        self.out_proj = Linear(d_inner, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        S = torch.zeros(batch_size, self.num_heads, self.d_state, self.head_dim, device=device,
                        dtype=state_dtype(dtype))
        return S, self.conv.init_state(batch_size, device, state_dtype(dtype))

    def _project(self, x, conv_state, dtype, extra=None, unscaled_v=False):
        """The op's inputs q = C, k = B (B, T, n_groups, d_state), v = dt x (B, T, H, head_dim), the
        log-decay dt A (B, T, H) in `dtype`; the skip input xs (B, T, H, head_dim), the gate z
        (B, T, d_inner) and the new conv state. With `extra` = (W (E, d_model), b (E,)), one
        more output after those: softplus(x W^T + b) (B, T, E) in `dtype` (a subclass's
        projection, e.g. LogLinearMamba2's level weights), from dt's product. With
        `unscaled_v`, v is x itself (xs in `dtype`, not dt x) and dt (B, T, H) comes last (for
        an op that scales v by dt inside its products)."""
        Bsz, T, _ = x.shape
        H, N, P, G = self.num_heads, self.d_state, self.head_dim, self.n_groups
        # three products over row blocks of in_proj's weight instead of one split: the split's
        # backward concatenated the three gradients (a (B, T, 2 d_inner + 2 G N + H) copy) and
        # xBC came out strided (copied again in front of the conv)
        wz, wxbc, wdt = self.in_proj.weight.split([self.d_inner, self.d_inner + 2 * G * N, H])
        z, xBC = linear(x, wz), linear(x, wxbc)
        out = ()
        if extra is not None and x.dtype == dtype:
            # dt's rows and the extra rows as one product with dt_bias and b as its bias, one
            # softplus: no second product each way, no second (B, T, d_model) gradient to add
            sp = F.softplus(linear(x, torch.cat([wdt, extra[0]]),
                                   torch.cat([self.dt_bias.to(x.dtype), extra[1]])))
            dt, out = sp[..., :H], (sp[..., H:],)
        else:
            dt = F.softplus(linear(x, wdt).to(dtype) + self.dt_bias)  # (B, T, H)
            if extra is not None:
                out = (F.softplus(linear(x, *extra).to(dtype)),)
        widths = (self.d_inner, G * N, G * N)
        if unscaled_v:  # one (B, T, C) output: the log-linear op takes it whole
            xBC, conv_state = self.conv(xBC, conv_state)
            xs, Bm, Cm = xBC.split(widths, -1)
        else:  # x, B, C as three contiguous pieces from the C conv (ops.native.conv's splits):
            # no cat of their gradients in the backward, no copies of B, C in front of the SSD
            (xs, Bm, Cm), conv_state, _ = conv_l2(self.conv, xBC, conv_state, 0, 1,
                                                  splits=widths)
        xs = xs.reshape(Bsz, T, H, P)
        if self.dt_floor:
            dt = dt.clamp(min=self.dt_floor)
        log_decay = -dt * self.A_log.to(dtype).exp()
        if unscaled_v:
            return (Cm.view(Bsz, T, G, N), Bm.view(Bsz, T, G, N), xs.to(dtype), log_decay, xs,
                    z, conv_state, *out, dt)
        if xs.dtype == dtype and backend.use_native(xs, dt) and native_conv.load():
            # v = dt x and the skip's x: their gradients summed with dt's made in one C pass
            v, xs = native_conv.scaled_values(native_conv.load(), xs, dt)
        else:
            v = xs.to(dtype) * dt[..., None]
        return (Cm.view(Bsz, T, G, N), Bm.view(Bsz, T, G, N), v, log_decay, xs, z, conv_state,
                *out)

    def _heads(self, t):
        """A group's (B, T, G, d_state) input repeated to its heads: (B, T, H, d_state)."""
        return t.repeat_interleave(self.num_heads // self.n_groups, 2)

    def _output(self, y, xs, z, x, skipped=False):
        """y (B, T, H, head_dim) -> out: the skip D x, the gated RMSNorm (gate before the
        norm, or after it with norm_before_gate; the gate alone without gated_norm), the
        projection. `skipped`: y already holds D x (an op that adds it itself; xs unused)."""
        if backend.use_native(y, xs, z, self.D):
            lib = gated_norm.load()  # the skip, gate and norm in one C pass (ops.native.gated_norm)
            if lib is not None:
                D = None if skipped else self.D.repeat_interleave(self.head_dim)
                return self.out_proj(gated_norm.rms_norm_gate(
                    lib, y.flatten(2), None if skipped else xs.flatten(2), D, z,
                    self.norm_weight if self.gated_norm else None, self.d_inner // self.n_groups,
                    self.norm_eps, "silu", pre=not self.norm_before_gate, norm=self.gated_norm))
        if not skipped:
            y = y + self.D[:, None].to(y.dtype) * xs
        y = y.flatten(2).to(x.dtype)
        if not self.gated_norm:
            return self.out_proj(y * F.silu(z))
        if not self.norm_before_gate:
            return self.out_proj(_GatedRMSNorm.apply(
                y, z, self.norm_weight, self.d_inner // self.n_groups, self.norm_eps))
        y = y.unflatten(-1, (self.n_groups, self.d_inner // self.n_groups))
        y = F.rms_norm(y, (self.d_inner // self.n_groups,), eps=self.norm_eps).flatten(-2)
        return self.out_proj(y * self.norm_weight * F.silu(z))

    def lion_inputs(self, x):
        """q, k, v, log-decay, scale 1 from a zero conv state (bidirectional=True,
        layers/bidirectional.py; the conv stays causal)."""
        sdt = state_dtype(x.dtype)
        q, k, v, g, _, _, _ = self._project(x, self.conv.init_state(x.shape[0], x.device, sdt),
                                            sdt)
        return self._heads(q), self._heads(k), v, g, 1.0

    def lion_output(self, o, x):
        """The read-out of o (B, T, H, head_dim): it needs the skip input and the gate of the
        same projection, recomputed here (a bidirectional call runs in_proj and the conv twice)."""
        sdt = state_dtype(x.dtype)
        _, _, _, _, xs, z, _ = self._project(x, self.conv.init_state(x.shape[0], x.device, sdt),
                                             sdt)
        return self._output(o, xs, z, x)

    def _forward(self, x, state, mode):
        S, conv_state = state
        q, k, v, log_decay, xs, z, conv_state = self._project(x, conv_state, S.dtype)
        kw = dict(scale=1.0, initial_state=S)
        if mode == "chunk":
            y, S = ssd(q, k, v, log_decay, chunk_size=self.chunk_size, **kw)
        elif mode == "parallel":
            y, S = gated_linear_attention_parallel(self._heads(q), self._heads(k), v, log_decay,
                                                   **kw)
        else:
            y, S = gated_linear_attention_recurrent(self._heads(q), self._heads(k), v, log_decay,
                                                    **kw)
        return self._output(y, xs, z, x), (S, conv_state)
