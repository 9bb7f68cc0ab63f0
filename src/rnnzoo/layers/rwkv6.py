"""RWKV-6 "Finch" time mixing (Peng et al. 2024, "Eagle and Finch", arXiv:2404.05892, section 4).

Data-dependent token shift (ddlerp) and a data-dependent decay per key channel:

    dx_t = x_{t-1} - x_t
    m_* = (tanh((x_t + dx_t mu_x) A) B)_*                   (low-rank, for * in w, k, v, r, g)
    x*_t = x_t + dx_t (mu_* + m_*)
    r, k, v = x r_t W_r, x k_t W_k, x v_t W_v;  g = silu(x g_t W_g)
    w_t = exp(-exp(w0 + tanh(x w_t D1) D2))                  (decay in (0, 1) per key channel)
    wkv_t = (S_{t-1} + diag(u) k_t v_t^T)^T r_t,   S_t = diag(w_t) S_{t-1} + k_t v_t^T
    y_t = (GroupNorm_h(wkv_t) * g_t) W_o

The wkv recurrence is gated linear attention with log decay -exp(.) and the bonus u.
State: (S: (B, H, K, K), the last input x_{T-1}: (B, d_model)). Modes: `sequential`, `chunk`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import positive_int
from rnnzoo.dtypes import state_dtype
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.norms import HeadNorm
from rnnzoo.ops import backend, first_order, sequence_parallel
from rnnzoo.ops.chunk.linear import gated_linear_attention, gated_linear_attention_recurrent
from rnnzoo.ops.native import gated_norm, linear, token_mix
from rnnzoo.ops.native.linear import Linear, product, weight_grad
from rnnzoo.registry import register


def _mix_project_plain(x, dx, low, up, mu, W):
    """`_MixProject`'s forward in plain differentiable ops (its `twice`)."""
    c = torch.einsum("nir,ird->ind", low, up) + mu[:, None]        # (5, N, d)
    mixed = x + dx * c
    return (mixed[0], *(mixed[i + 1] @ W[i].T for i in range(4)))


class _MixProject(first_order.Function):
    """The five ddlerp mixes x*_i = x + dx c_i, c_i = mu_i + low_i up_i (i = w, k, v, r, g),
    and the projections of the last four, x*_i W_i^T, with a hand-written backward. On the
    native path (ops.native.token_mix) the projections and their weight gradients run inside
    the mix kernel, a 64-row block at a time on mm.h's tiles; elsewhere each product is one
    `ops.native.linear.product`. x, dx (N, d); low (N, 5, r) (the tanh of the
    down-projection); up (5, r, d); mu (5, d); W (4, d, d) [out, in].
    -> x*_w and the projections k, v, r, g, each (N, d)."""

    plain = staticmethod(_mix_project_plain)  # torch.func

    @staticmethod
    def forward(ctx, x, dx, low, up, mu, W):
        inputs = x, dx, low, up, mu, W
        ctx.lib = lib = (token_mix.load() if backend.use_native(x, dx, low, up, mu, W)
                         else None)
        if lib is not None:  # c and the five mixes in C, a block of rows at a time
            # (ops.native.token_mix; no (5, N, r) transposed copy of low)
            low = low.contiguous()  # and the four projections in the same blocks (mm.h's
            # tiles ran (8192, 128) x (128, 128) in 3.2 ms to oneDNN's 4.0)
            mixed, c, proj = token_mix.ddlerp_mixes(lib, x.contiguous(), dx.contiguous(), low,
                                                    up.contiguous(), mu.contiguous(), W)
            # low (N, 5, r), c (5, N, d); the inputs last (for `twice`)
            ctx.save_for_backward(dx, low, up, mixed, W, c, *inputs)
            return mixed[0], *proj
        low = low.transpose(0, 1).contiguous()  # (5, N, r): dense operands for oneDNN
        c = [product(low[i], up[i].T, mu[i]) for i in range(5)]
        mixed = x.new_empty(5, *x.shape)
        for i in range(5):
            torch.addcmul(x, dx, c[i], out=mixed[i])
        proj = [product(mixed[i + 1], W[i]) for i in range(4)]
        ctx.save_for_backward(dx, low, up, mixed, W, *c, *inputs)  # low (5, N, r), c five (N, d)
        return mixed[0], *proj

    @staticmethod
    def twice(ctx, *grads):  # under create_graph: autograd through the plain form
        return first_order.replay(_mix_project_plain, ctx.saved_tensors[-6:], grads,
                                  ctx.needs_input_grad)

    @staticmethod
    def backward(ctx, d_xw, *d_proj):
        dx, low, up, mixed, W, *c = ctx.saved_tensors[:-6]
        gm = [None if d_xw is None else d_xw.contiguous()]  # the mixes' gradients (None: 0)
        if ctx.lib is not None:  # d_x, d_dx, the c_i's gradients and their products in C,
            # a block of rows at a time (ops.native.token_mix), g_i W_i among them
            # and the weights' gradients (per-thread partial sums)
            gp = [torch.zeros_like(dx) if g is None else g.contiguous() for g in d_proj]
            gm = [torch.zeros_like(dx) if gm[0] is None else gm[0], *gp]
            return token_mix.ddlerp_grads(ctx.lib, gm, c[0], dx.contiguous(), low,
                                          up.contiguous(), W, mixed)
        dW = torch.zeros_like(W)
        for i, g in enumerate(d_proj):
            if g is not None:
                g = g.contiguous()
                dW[i] = weight_grad(g, mixed[i + 1])
                g = product(g, W[i].T)
            gm.append(g)
        gm = [torch.zeros_like(dx) if g is None else g for g in gm]
        d_low = dx.new_empty(dx.shape[0], 5, low.shape[2])
        d_up, d_mu = torch.empty_like(up), dx.new_empty(5, dx.shape[1])
        d_x, d_dx = gm[0] + gm[1], gm[0] * c[0]
        for i in range(1, 5):
            if i > 1:
                d_x += gm[i]
            d_dx.addcmul_(gm[i], c[i])
        for i in range(5):  # the gradient of c_i, into gm[i] where that is ours (no fresh
            # (5, N, d) buffer: its first touch costs page faults)
            dc = gm[i] * dx if i == 0 else gm[i].mul_(dx)
            d_low[:, i] = product(dc, up[i])
            d_up[i] = weight_grad(low[i], dc)
            d_mu[i] = dc.sum(0)
        return d_x, d_dx, d_low, d_up, d_mu, dW


class _NegExp(first_order.Transformable):
    """-exp(w), the log-decay: two passes forward and one backward (its own derivative),
    where exp and neg through autograd took four."""

    @staticmethod
    def forward(ctx, w):
        y = torch.exp(w).neg_()
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def plain(w):  # torch.func: out of place
        return torch.exp(w).neg()

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        return dy * y


@register("rwkv6", family="matrix", paper="Peng et al. 2024, arXiv:2404.05892",
          tiny=dict(d_model=8, head_dim=4, mix_rank=2, decay_rank=2, chunk_size=4,
                    subchunk_size=2))
class RWKV6(RecurrentLayer):
    """x: (B, T, d_model) -> y; state (S: (B, H, head_dim, head_dim), x_last: (B, d_model))."""

    modes = ("sequential", "chunk")

    def __init__(self, d_model: int, head_dim: int = 64, mix_rank: int = 32,
                 decay_rank: int = 64, chunk_size: int = 64, subchunk_size: int = 16):
        super().__init__(d_model)
        for name, value in (("head_dim", head_dim), ("mix_rank", mix_rank),
                            ("decay_rank", decay_rank), ("chunk_size", chunk_size),
                            ("subchunk_size", subchunk_size)):
            positive_int(name, value)
        if d_model % head_dim:
            raise ValueError(f"d_model={d_model} must be a multiple of head_dim, got {head_dim}")
        self.num_heads, self.head_dim = d_model // head_dim, head_dim
        self.chunk_size, self.subchunk_size = chunk_size, subchunk_size
        d, H = d_model, self.num_heads
        ramp = torch.arange(d) / max(d - 1, 1)
        self.mu_x = nn.Parameter(1 - ramp ** 0.5)
        self.mu = nn.Parameter((1 - ramp ** 0.5).repeat(5, 1))  # w, k, v, r, g
        self.mix_down = nn.Parameter(torch.empty(d, 5 * mix_rank).uniform_(-1e-2, 1e-2))
        self.mix_up = nn.Parameter(torch.zeros(5, mix_rank, d))
        self.w0 = nn.Parameter(-6 + 5 * ramp ** 1.2)  # decays from slow to fast channels
        self.decay_down = nn.Parameter(torch.empty(d, decay_rank).uniform_(-1e-2, 1e-2))
        self.decay_up = nn.Parameter(torch.zeros(decay_rank, d))
        self.u = nn.Parameter((0.5 * (1 - ramp) + 0.1 * ((torch.arange(d) + 1) % 3 - 1))
                              .view(H, head_dim))
        self.r_proj, self.k_proj, self.v_proj, self.g_proj = (
            Linear(d, d, bias=False) for _ in range(4))
        self.norm = HeadNorm(H, head_dim, kind="layer", eps=64e-5)
        self.out_proj = Linear(d, d, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        dt, H, K = state_dtype(dtype), self.num_heads, self.head_dim
        return (torch.zeros(batch_size, H, K, K, device=device, dtype=dt),
                torch.zeros(batch_size, self.d_model, device=device, dtype=dt))

    def _project(self, x, x_last, dtype):
        """r, k, v (B, T, H, K), the log-decay per key channel (B, T, H, K) in `dtype` and
        the output gate's pre-activation g (B, T, d) (`_head` takes its silu), x_last
        (B, d_model) being the input before x."""
        B, T, d = x.shape
        H, K = self.num_heads, self.head_dim
        lib = token_mix.load() if backend.use_native(x, self.mu_x) else None
        if lib is not None:  # the shift and the first mix in one C pass each way
            dx, xx = token_mix.shift_mix(lib, x, x_last.to(x.dtype), self.mu_x)
        else:
            dx = torch.cat([x_last[:, None].to(x.dtype), x[:, :-1]], 1) - x
            xx = torch.addcmul(x, dx, self.mu_x)
        # the two low-rank tanhs in C (token_mix.tanh: ATen's float32 tanh is ~7x slower)
        tanh = torch.tanh if lib is None else (lambda t: token_mix.tanh(lib, t))
        low = tanh(linear.linear(xx, self.mix_down.T))
        # the five mixes and r, k, v, g in one Function (a per-mix slice's backward would
        # zero-fill a (5, B, T, d) gradient each)
        weights = torch.stack([p.weight for p in (self.k_proj, self.v_proj, self.r_proj,
                                                  self.g_proj)])
        xw, k, v, r, g = _MixProject.apply(x.reshape(B * T, d), dx.reshape(B * T, d),
                                           low.view(B * T, 5, -1), self.mix_up, self.mu,
                                           weights)
        r, k, v = (t.view(B, T, H, K) for t in (r, k, v))
        g = g.view(B, T, d)
        w = linear.linear(tanh(linear.linear(xw, self.decay_down.T)), self.decay_up.T,
                          self.w0).view(B, T, d)
        w = _NegExp.apply(w.to(dtype)) if lib is None else token_mix.negexp(lib, w.to(dtype))
        return r, k, v, w.view(B, T, H, K), g

    def lion_inputs(self, x):
        """r, k, v, the log-decay, scale 1 and the bonus u (H, K), from a zero token shift
        (bidirectional=True, layers/bidirectional.py: u takes the diagonal's place)."""
        sdt = state_dtype(x.dtype)
        r, k, v, log_w, _ = self._project(x, x.new_zeros(x.shape[0], x.shape[2]), sdt)
        return r, k, v, log_w, 1.0, self.u.to(sdt)

    def lion_output(self, o, x):
        """The per-head norm times the gate, then the output projection (the gate's token
        shift recomputed: a bidirectional call runs the projections twice)."""
        g = self._project(x, x.new_zeros(x.shape[0], x.shape[2]), state_dtype(x.dtype))[-1]
        return self._head(o, g)

    def _head(self, o, g):
        """The per-head norm of o (B, T, H, K) times silu(g) (B, T, d), then the output
        projection; on the CPU in float32/float64 one C pass each way (ops.native.gated_norm)."""
        B, T, d = g.shape
        lib = (gated_norm.load() if backend.use_native(o, g, self.norm.weight, self.norm.bias)
               else None)
        if lib is None:
            return self.out_proj(self.norm(o).reshape(B, T, d) * F.silu(g))
        y = gated_norm.norm_gate(lib, o.reshape(B, T, d), None, None, g,
                                 self.norm.weight.view(d), self.norm.bias.view(d),
                                 self.head_dim, self.norm.eps)
        return self.out_proj(y)

    def _forward(self, x, state, mode):
        S, x_last = state
        B, T, d = x.shape
        x_final = x[:, -1].to(S.dtype)
        if sequence_parallel.active():  # x is this rank's slice: shift in the previous rank's last
            prev, last = sequence_parallel.halo(x, x_last[:, None])
            x_last, x_final = prev[:, 0], last[:, 0]
        r, k, v, log_w, g = self._project(x, x_last, S.dtype)
        kw = dict(scale=1.0, initial_state=S, bonus=self.u.to(S.dtype))
        if mode == "chunk":
            o, S = gated_linear_attention(r, k, v, log_w, chunk_size=self.chunk_size,
                                          subchunk_size=self.subchunk_size, **kw)
        else:
            o, S = gated_linear_attention_recurrent(r, k, v, log_w, **kw)
        return self._head(o, g), (S, x_final)
