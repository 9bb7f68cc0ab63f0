"""RWKV-7 "Goose" time mixing (Peng et al. 2025, arXiv:2503.14456): the generalised delta rule

    S_t = (diag(w_t) - kappa_t (a_t o kappa_t)^T) S_{t-1} + k~_t v_t^T,    o_t = S_t^T r_t

(written here with S as (K, V); the paper's wkv state is its transpose) with, per token,
token shift x' = x_{t-1} - x_t and one learned mix per branch (x_* = x + mu_* o x'):

    r = W_r x_r,  k = W_k x_k,  v = W_v x_v
    w = exp(-e^{-0.5} sigmoid(w_0 + tanh(x_w W_w1) W_w2))      decay in (e^{-e^{-0.5}}, 1)
    a = sigmoid(a_0 + x_a W_a1 W_a2)                           in-context learning rate
    kappa = normalize(k o k_k) per head,  k~ = k o (1 + (a - 1) o k_a)
    g = sigmoid(x_g W_g1) W_g2                                 output gate
    y = W_o (g o (GroupNorm_H(o) + ((r o k~ o r_k) summed per head) v))

This is the first layer of a stack, so the value residual of later layers (v mixed with
layer 0's v) does not apply. The layer state is (S (B, H, K, K), x_{t-1} (B, d_model)).
Modes: `sequential` (the loop), `chunk` (ops.chunk.delta.rwkv7, with a = -kappa, b = kappa o a).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers._delta_block import l2norm
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.ops import backend, sequence_parallel
from rnnzoo.ops.chunk.delta import rwkv7, rwkv7_recurrent, rwkv7_step
from rnnzoo.ops.native import token_mix as native_mix
from rnnzoo.ops.native.linear import Linear, linear
from rnnzoo.registry import register

_MIXES = ("r", "w", "k", "v", "a", "g")


@register("rwkv7", family="matrix", paper="Peng et al. 2025, arXiv:2503.14456",
          tiny=dict(d_model=6, num_heads=2, low_rank=2, chunk_size=4))
class RWKV7(RecurrentLayer):
    """x: (B, T, d_model) -> y; state (S (B, H, K, K), previous token (B, d_model)). Options:
    num_heads, head_dim (default d_model // num_heads), low_rank (the low-rank width of the
    decay, learning-rate and gate maps), chunk_size."""

    modes = ("sequential", "chunk")

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 low_rank: int = 32, chunk_size: int = 32):
        super().__init__(d_model)
        H = positive_int("num_heads", num_heads)
        K = positive_int("head_dim", d_model // H if head_dim is None else head_dim)
        R = positive_int("low_rank", low_rank)
        self.chunk_size = positive_int("chunk_size", chunk_size)
        self.num_heads, self.head_dim = H, K
        D = H * K
        ramp = torch.arange(d_model) / d_model
        self.mix = nn.Parameter(torch.stack([1 - ramp ** p for p in (0.2, 0.9, 0.7, 0.7, 0.9, 0.2)]))
        self.r_proj, self.k_proj, self.v_proj = (Linear(d_model, D, bias=False) for _ in range(3))
        self.w0 = nn.Parameter(torch.linspace(-6, 2, D))  # slow to fast decays across channels
        self.w1, self.w2 = nn.Parameter(torch.randn(d_model, R) / math.sqrt(d_model)), nn.Parameter(torch.zeros(R, D))
        self.a0 = nn.Parameter(torch.zeros(D))
        self.a1, self.a2 = nn.Parameter(torch.randn(d_model, R) / math.sqrt(d_model)), nn.Parameter(torch.zeros(R, D))
        self.g1, self.g2 = nn.Parameter(torch.randn(d_model, R) / math.sqrt(d_model)), nn.Parameter(torch.zeros(R, D))
        self.k_k = nn.Parameter(torch.full((D,), 0.85))
        self.k_a = nn.Parameter(torch.ones(D))
        self.r_k = nn.Parameter(torch.full((H, K), -0.04))
        self.norm_weight, self.norm_bias = nn.Parameter(torch.ones(D)), nn.Parameter(torch.zeros(D))
        self.o_proj = Linear(D, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        sdt = state_dtype(dtype)
        S = torch.zeros(batch_size, self.num_heads, self.head_dim, self.head_dim, device=device, dtype=sdt)
        return S, torch.zeros(batch_size, self.d_model, device=device, dtype=sdt)

    def op_inputs(self, x, x_last):
        """r, w (log-decay), k~, v, a = -kappa, b = kappa o a: (B, T, H, K); g (B, T, H K)."""
        B, T, _ = x.shape
        H, K, cdt = self.num_heads, self.head_dim, compute_dtype(x)
        shifted = torch.cat([x_last[:, None].to(x.dtype), x[:, :-1]], 1)
        step = shifted - x
        lib = native_mix.load() if backend.use_native(x, self.mix) else None
        if lib is not None:  # the six mixes in one C pass each way (ops.native.token_mix)
            xs = dict(zip(_MIXES, native_mix.token_mix(lib, x, step, self.mix)))
        else:
            xs = dict(zip(_MIXES, (torch.addcmul(x, step, mu) for mu in self.mix)))
        r, k, v = (p(xs[n]).to(cdt) for p, n in ((self.r_proj, "r"), (self.k_proj, "k"), (self.v_proj, "v")))
        lora = {n: xs[n].to(cdt) for n in ("w", "a", "g")}
        p = {n: getattr(self, n).to(cdt) for n in ("w0", "w1", "w2", "a0", "a1", "a2", "g1", "g2", "k_k", "k_a")}
        # the low-rank maps t @ m (+ bias) through oneDNN (ops.native.linear): MKL's AVX2 mm
        # took twice as long
        mm = lambda t, m, bias=None: linear(t, m.T, bias)  # noqa: E731
        wp = mm(torch.tanh(mm(lora["w"], p["w1"])), p["w2"], p["w0"])  # the pre-sigmoids
        ap = mm(mm(lora["a"], p["a1"]), p["a2"], p["a0"])
        g = mm(torch.sigmoid(mm(lora["g"], p["g1"])), p["g2"])
        heads = lambda t: t.reshape(B, T, H, K)  # noqa: E731
        if lib is not None and backend.use_native(k, ap, wp, p["k_k"], p["k_a"]):
            # w, k~, -kappa, kappa o a in one C pass each way (token_mix.rwkv7_keys)
            w, k, nkappa, b = (heads(t) for t in native_mix.rwkv7_keys(
                lib, k.reshape(B * T, H * K), ap.reshape(B * T, H * K), wp.reshape(B * T, H * K),
                p["k_k"], p["k_a"], -math.exp(-0.5), 1e-12, H))
            return heads(r), w, k, heads(v), nkappa, b, g, x[:, -1].to(x_last.dtype)
        w = -math.exp(-0.5) * torch.sigmoid(wp)
        a = torch.sigmoid(ap)
        nkappa = l2norm(heads(k * -p["k_k"]), eps=1e-12)      # -kappa, two passes
        k = k * torch.addcmul(1 - p["k_a"], a, p["k_a"])       # k o (1 + (a - 1) k_a)
        b = torch.addcmul(nkappa.new_zeros(()), nkappa, heads(a), value=-1)  # kappa o a
        return heads(r), heads(w), heads(k), heads(v), nkappa, b, g, x[:, -1].to(x_last.dtype)

    def op_output(self, o, r, k, v, g, x):
        """GroupNorm per head, the bonus term (r o k o r_k) v, the gate, the projection."""
        cdt = o.dtype
        B, T, H, K = o.shape   # GroupNorm_H with eps K 1e-5
        rk, nw, nb = self.r_k.to(cdt), self.norm_weight.to(cdt), self.norm_bias.to(cdt)
        lib = native_mix.load() if backend.use_native(o, r, k, v, g, rk, nw, nb) else None
        if lib is not None:  # the norm, bonus term and gate in one C pass each way (token_mix)
            heads = lambda t: t.reshape(B * T, H, K)  # noqa: E731
            y = native_mix.bonus_gate(lib, heads(o), nw.view(H, K), nb.view(H, K), K * 1e-5,
                                      heads(r), heads(k), heads(v), heads(g), rk)
            return self.o_proj(y.view(B, T, H * K).to(x.dtype))
        # torch's group norm in its one fused pass each way
        o = F.group_norm(o.reshape(B * T, H * K), H, nw, nb, eps=K * 1e-5).view(B, T, H * K)
        bonus = (r * k * rk).sum(-1, keepdim=True) * v
        return self.o_proj(((o + bonus.flatten(2)) * g).to(x.dtype))

    def _forward(self, x, state, mode):
        S, x_last = state
        final = None
        if sequence_parallel.active():  # x is this rank's slice: shift in the previous rank's last
            prev, final = sequence_parallel.halo(x, x_last[:, None])
            x_last = prev[:, 0]
        r, w, k, v, a, b, g, x_last = self.op_inputs(x, x_last)
        if final is not None:  # the whole sequence's last input
            x_last = final[:, 0]
        if mode == "chunk":
            o, S = rwkv7(r, w, k, v, a, b, initial_state=S, chunk_size=self.chunk_size,
                         w_min=-math.exp(-0.5))  # w = -e^{-1/2} sigmoid(.): no read of w
        else:
            o, S = rwkv7_recurrent(r, w, k, v, a, b, initial_state=S)
        return self.op_output(o, r, k, v, g, x), (S, x_last)

    def _step(self, x_t, state):
        S, x_last = state
        x = x_t[:, None]
        r, w, k, v, a, b, g, x_last = self.op_inputs(x, x_last)
        o, S = rwkv7_step(r[:, 0], w[:, 0], k[:, 0], v[:, 0], a[:, 0], b[:, 0], S, 1.0)
        return self.op_output(o[:, None], r, k, v, g, x)[:, 0], (S, x_last)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"chunk_size={self.chunk_size}")
