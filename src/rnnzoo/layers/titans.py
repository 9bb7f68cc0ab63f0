"""Titans' neural long-term memory (Behrouz, Zhong & Mirrokni 2024, "Titans: Learning to
Memorize at Test Time", arXiv:2501.00663, sections 3.1, 3.2 and 4.4) as a token mixer: a memory
M (a linear map, or a two-layer MLP with memory_depth=2) trained online on the associative loss,
with momentum (the surprise S) and weight decay (forgetting), all gates data-dependent:

    q, k, v = silu(shortconv(W_q x)), silu(shortconv(W_k x)), silu(shortconv(W_v x)),  q, k l2-normalised
    theta_t = base_lr sigmoid(w_theta . x_t),  alpha_t = sigmoid(w_alpha . x_t),  eta_t = sigmoid(w_eta . x_t)
    S_t = eta_t S_t-1 - theta_t grad l(M'; k_t, v_t),   l = 1/2 |M(k) - v|^2
    M_t = (1 - alpha_t) M_t-1 + S_t,                    o_t = M_t(q_t)
    y   = W_o [RMSNorm(o) * sigmoid(W_g x)]

M' is the memory at the start of the current chunk of `chunk_size` steps: the paper's
chunkwise (mini-batch) gradient, which makes the chunk parallel (ops/memory.py); chunk_size=1 is
the fully sequential rule. theta absorbs the factor 2 of the paper's unhalved loss. M is kept as
the change from the learned initial memory, so forgetting returns the memory to it (a literal
decay to zero when the initial memory is zero). `inner_norm=True` reads M(x) = x + LN(f(x)) as
TTT and fla do; the memory's layers are weights only (as in the paper) unless memory_bias.

`block` chooses the paper's architecture (section 4), with the memory above as its recurrent
part and the sliding-window attention of layers/attention.py (window `window`, its ring-buffer
cache as its state) as its short-term part, x~ = [p || x] with p the `num_persistent` learned
persistent-memory tokens (section 3.3):

    "lmm": o = M(x)                                   (the memory as the whole layer; default)
    "mag": o = n_y(SWA(x~)) * sigmoid(n_m(M(x~)))     (memory as a gate; n: RMS norms with
                                                       learned vector weights, as the paper does)
    "mal": o = SWA(M(x~))                             (memory as a layer)
    "mac": per segment of chunk_size tokens, h_t = M_seg(W_Q x_t) (a read of the memory the
           segment started with), y = Attn([p, h_1, x_1, ..., h_C, x_C]) at the x's (causal,
           restarted every segment), the memory learns from y, o_t = n_y(y_t) * sigmoid(n_m(M_t(y_t)))
           (memory as context; h_t is visible from x_t on, which keeps it causal)

The persistent tokens open every sequence: init_state is the block's state after reading p from
the empty state (so the layer on x equals the block without p on [p || x], minus p's outputs).
State: (M', M, S) per memory weight, the step count in the chunk, the short-conv state, and for
"mag" / "mal" the attention's (k cache, v cache, position). Modes: `sequential` (token by
token) and `chunk` (the memory chunkwise, the attention as one masked product; "mac" a
segment at a time, cut where each sequence's segments end).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from rnnzoo.checks import choice, flag, int_in, positive, positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers._delta_block import conv_l2, l2norm
from rnnzoo.layers.attention import Attention
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.conv import ShortConv
from rnnzoo.layers.norms import HeadNorm
from rnnzoo.layers.rotary import frequencies
from rnnzoo.ops import backend, sequence_parallel
from rnnzoo.ops.finite import finite, poison
from rnnzoo.ops.memory import (
    _select,
    _titans_segment_plain,
    memory_read,
    titans_chunked,
    titans_init_state,
    titans_segment,
    titans_sequential,
    titans_step,
)
from rnnzoo.ops.native import attention as native_attention
from rnnzoo.ops.native import conv as native_conv
from rnnzoo.ops.native import head_norm, titans_scan
from rnnzoo.ops.native.head_norm import rms_gate
from rnnzoo.ops.native.linear import Linear, linear
from rnnzoo.registry import register


def memory_geometry(layer, d_model, num_heads, head_dim, memory_depth, chunk_size, base_lr):
    """Checks and sets the geometry every memory layer here shares: num_heads H, head_dim K
    (d_model // H by default), memory_depth (1: a linear memory, 2: an MLP of width 4K),
    chunk_size, base_lr. Returns (H, K)."""
    H = positive_int("num_heads", num_heads)
    K = positive_int("head_dim", d_model // H if head_dim is None else head_dim)
    layer.num_heads, layer.head_dim = H, K
    layer.memory_depth = int_in("memory_depth", memory_depth, 1, 2)
    layer.kind = "linear" if memory_depth == 1 else "mlp"
    layer.chunk_size = positive_int("chunk_size", chunk_size)
    layer.base_lr = positive("base_lr", base_lr)
    return H, K


def memory_output(layer, d_model, norm_eps):
    """The output every memory layer here shares: o_proj(HeadNorm(read) * g_proj(x))."""
    H, K = layer.num_heads, layer.head_dim
    layer.g_proj = Linear(d_model, H * K)
    layer.norm = HeadNorm(H, K, kind="rms", eps=norm_eps)
    layer.o_proj = Linear(H * K, d_model, bias=False)


def memory_qkv(layer, x, conv_state, fused=False, qkv=None):
    """The read/write inputs every memory layer here shares: q, k (unit norm per head), v:
    (B, T, H, K) in the compute dtype, from layer.qkv_proj through layer.conv; new conv state.
    `fused`: the norms in the C convolution on the CPU (_delta_block.conv_l2; equal up to
    rounding: Titans and the Miras layers take it, Atlas keeps F.normalize's). `qkv`:
    layer.qkv_proj(x) when the caller made it (x then unread)."""
    H, K = layer.num_heads, layer.head_dim
    qkv = layer.qkv_proj(x).to(compute_dtype(x)) if qkv is None else qkv
    B, T, _ = qkv.shape
    if not fused:
        qkv, conv_state = layer.conv(qkv, conv_state)
        q, k, v = qkv.reshape(B, T, 3, H, K).unbind(2)
        return F.normalize(q, dim=-1, eps=1e-6), F.normalize(k, dim=-1, eps=1e-6), v, conv_state
    (q, k, v), conv_state, normed = conv_l2(layer.conv, qkv, conv_state, 2 * H, K, False,
                                            (H * K,) * 3)
    q, k, v = (t.reshape(B, T, H, K) for t in (q, k, v))
    if not normed:
        q, k = l2norm(q), l2norm(k)
    return q, k, v, conv_state


def _chain(w, b, inner):
    """The linear map x -> (inner(x)) w^T + b as one (weight, bias): w (O, d), b (O,) or
    None, inner a Linear (d, I) -> (w W_inner, w b_inner + b)."""
    bias = b
    if inner.bias is not None:
        bias = w @ inner.bias if bias is None else bias + w @ inner.bias
    return w @ inner.weight, bias


def _causal_attention(q, k, v):
    """Causal softmax attention of a fresh sequence as layers.attention's parallel mode runs
    it (q scaled; (B, H, T, Dh) each; `Attention._causal`: in C on the CPU), non-finite
    entries zeroed and the rows that see one marked NaN as it does."""
    (q, bad_q), (k, bad_k), (v, bad_v) = (finite(t, 2) for t in (q, k, v))
    out = Attention._causal(q, k, v)
    return poison(out, (bad_q | ((bad_k | bad_v).cumsum(1) > 0))[:, None])


@register("titans", family="matrix", paper="Behrouz et al. 2024, arXiv:2501.00663 (Titans)",
          tiny=dict(d_model=6, num_heads=2, head_dim=3, chunk_size=4, d_conv=2))
class Titans(RecurrentLayer):
    """x: (B, T, d_model) -> y; state ((M', M, S) per memory weight, n (B,), conv state,
    and with an attention branch its (k_cache, v_cache, position))."""

    modes = ("sequential", "chunk")
    BLOCKS = ("lmm", "mac", "mag", "mal")

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 memory_depth: int = 1, chunk_size: int = 16, base_lr: float = 1.0,
                 d_conv: int = 4, inner_norm: bool = False, memory_bias: bool = False,
                 norm_eps: float = 1e-6, block: str = "lmm", window: int = 512,
                 num_persistent: int = 0):
        super().__init__(d_model)
        self.block = choice("block", block, self.BLOCKS)
        self.window = positive_int("window", window)
        self.num_persistent = int_in("num_persistent", num_persistent, 0)
        if self.block == "lmm" and num_persistent:
            raise ValueError("num_persistent needs an attention branch (block 'mac', 'mag' or 'mal')")
        H, K = memory_geometry(self, d_model, num_heads, head_dim, memory_depth, chunk_size,
                               base_lr)
        self.inner_norm = flag("inner_norm", inner_norm)
        self.memory_bias = flag("memory_bias", memory_bias)
        self.norm_eps = positive("norm_eps", norm_eps)
        self.qkv_proj = Linear(d_model, 3 * H * K, bias=False)
        self.conv = ShortConv(3 * H * K, d_conv, bias=False)
        self.gate_proj = Linear(d_model, 3 * H)          # theta, alpha, eta
        widths = [K, K] if self.kind == "linear" else [K, 4 * K, K]
        self.memory = nn.ParameterList()
        for i, o in zip(widths[:-1], widths[1:]):
            self.memory.append(nn.Parameter(torch.randn(H, i, o) / i ** 0.5))
            self.memory.append(nn.Parameter(torch.zeros(H, o), requires_grad=memory_bias))
        self.inner_norm_weight = nn.Parameter(torch.ones(H, K)) if self.inner_norm else None
        self.inner_norm_bias = nn.Parameter(torch.zeros(H, K)) if self.inner_norm else None
        memory_output(self, d_model, norm_eps)
        self.attn = None
        if self.block != "lmm":  # the short-term memory: sliding-window attention
            # MAC: attention over one segment, [p, h_1, x_1, ..., h_C, x_C], in a ring buffer
            span = self.num_persistent + 2 * self.chunk_size if self.block == "mac" else self.window
            self.attn = Attention(d_model, H, window=span, max_len=span)
            self.persistent = nn.Parameter(0.02 * torch.randn(self.num_persistent, d_model))
        if self.block in ("mac", "mag"):  # the gate's norms' learned weights
            self.gate_norm = nn.Parameter(torch.ones(2, d_model))
        if self.block == "mac":  # the retrieval's query q_t = W_Q x_t
            self.retrieve_proj = Linear(d_model, H * K, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        sdt = state_dtype(dtype)
        p = None if self.attn is None or not self.num_persistent else self.persistent
        at, run = (device, sdt) if p is None else (p.device, state_dtype(p.dtype))
        mem = titans_init_state(self.kind, batch_size, self.num_heads, self.head_dim, at, run)
        state = (*mem, self.conv.init_state(batch_size, at, run))
        if self.attn is None:
            return state
        state = (*state, *self.attn.init_state(batch_size, at, run))
        if p is None:
            return state
        if self.block == "mac":  # p opens every segment's attention (reset where n = 0 or C)
            state = (*state[:-3], *self.segment_start(batch_size, state[-3:]))
        else:  # x~ = [p || x]: the block's state after reading the persistent tokens
            _, state = self._forward(p.expand(batch_size, -1, -1), state, "chunk")
        return tuple(t.to(device=device if device is not None else at, dtype=sdt) for t in state)

    def op_inputs(self, x, conv_state, proj=None):
        """q, k, v (B, T, H, K); theta, alpha, eta (B, T, H); new conv state. `proj`: the
        caller's [qkv_proj(x) | gate_proj(x)] (B, T, 3 H K + 3 H) (x then unread)."""
        HK = self.num_heads * self.head_dim
        qkv, g = (None, self.gate_proj(x)) if proj is None else proj.split([3 * HK, proj.shape[-1] - 3 * HK], -1)
        q, k, v, conv_state = memory_qkv(self, x, conv_state, fused=True, qkv=qkv)
        B, T = q.shape[:2]
        gates = torch.sigmoid(g.to(q.dtype))
        theta, alpha, eta = gates.reshape(B, T, 3, self.num_heads).unbind(2)
        return q, k, v, self.base_lr * theta, alpha, eta, conv_state

    def op_args(self, dtype):
        """(initial memory weights, inner norm weight, inner norm bias) in `dtype`; the norm's
        are None without `inner_norm`."""
        init = [p.to(dtype) if i % 2 == 0 or self.memory_bias else torch.zeros_like(p, dtype=dtype)
                for i, p in enumerate(self.memory)]
        if not self.inner_norm:  # no inner norm, no parameters for it
            return init, None, None
        return init, self.inner_norm_weight.to(dtype), self.inner_norm_bias.to(dtype)

    def op_output(self, z, q, x, gate=None):
        """The memory's read z = f(q) (plus q + LN with inner_norm), norm, gate, W_o; gate:
        g_proj(x) when already made."""
        return self.o_proj(self.op_gated(z, q, x, gate).to(x.dtype))

    def op_gated(self, z, q, x, gate=None):
        """op_output before W_o: (B, T, H K) in z's dtype."""
        if self.inner_norm:
            w, b = self.inner_norm_weight.to(z.dtype), self.inner_norm_bias.to(z.dtype)
            z = q + F.layer_norm(z, z.shape[-1:], eps=self.norm_eps) * w + b
        gate = (self.g_proj(x) if gate is None else gate).to(z.dtype)
        return rms_gate(z.flatten(2), self.norm.weight.to(z.dtype), self.head_dim, self.norm.eps,
                        gate.view(z.shape[:-2] + (-1,)), "sigmoid")     # in C on the CPU

    def combine(self, x, state, memory, attend):
        """The block around the memory: memory(x, mem_state) and attend(x, attn_state) each
        -> (y, new state); returns (o, state)."""
        if self.attn is None:
            return memory(x, state)
        mem, att = state[:-3], state[-3:]
        if self.block == "mal":
            m, mem = memory(x, mem)
            o, att = attend(m, att)
            return o, (*mem, *att)
        m, mem = memory(x, mem)
        y, att = attend(x, att)
        return self.gate(y, m), (*mem, *att)

    def gate(self, y, m):
        """MAG's and MAC's y (x) M: n_y(y) * sigmoid(n_m(m))."""
        w, D = self.gate_norm.to(y.dtype), y.shape[-1]
        return rms_gate(y, w[0], D, self.norm_eps, rms_gate(m, w[1], D, self.norm_eps), "sigmoid")

    def _forward(self, x, state, mode):
        if self.block == "mac" and mode == "chunk":
            return self._mac_chunk(x, state)
        if self.block == "mac":
            ys = []
            with sdpa_kernel(SDPBackend.MATH):  # as Attention's reference: differentiable twice
                for x_t in x.unbind(1):
                    y_t, state = self._mac_step(x_t, state)
                    ys.append(y_t)
            return torch.stack(ys, 1), state
        return self.combine(x, state, lambda x, s: self._memory(x, s, mode),
                            lambda x, s: self.attn._forward(
                                x, s, "parallel" if mode == "chunk" else "sequential"))

    def _step(self, x_t, state):
        if self.block == "mac":
            return self._mac_step(x_t, state)
        return self.combine(x_t, state, self._memory_step, self.attn and self.attn._step)

    def segment_start(self, batch_size, att):
        """MAC: the attention state of a fresh segment, having read the persistent tokens
        (the empty cache without them); `att` gives device and dtype."""
        fresh = tuple(torch.zeros_like(t[:batch_size]) for t in att)
        if not self.num_persistent:
            return fresh
        p = self.persistent.expand(batch_size, -1, -1)
        _, out = self.attn._forward(p, tuple(t.to(state_dtype(p.dtype)) for t in fresh),
                                    "parallel")
        return tuple(t.to(a.dtype) for t, a in zip(out, att))

    def _mac_chunk(self, x, state):
        """MAC a segment at a time: cut where each sequence's segments end (its offset in the
        segment, read on the host, groups the batch), each piece's retrieval, attention and
        memory update run as one chunk each."""
        C, L = self.chunk_size, (len(state) - 5) // 3
        offset = torch.remainder(state[3 * L].round(), C)
        groups = offset.long().unique().tolist()
        if groups == [0] and x.dtype == compute_dtype(x) == self.o_proj.weight.dtype:
            return self._mac_aligned(x, state)
        if len(groups) > 1:  # sequences at different places in their segments
            y, out = torch.empty_like(x), [t.clone() for t in state]
            for c in groups:
                idx = (offset == c).nonzero().squeeze(1)
                y_c, s_c = self._mac_pieces(x[idx], tuple(t[idx] for t in state), c)
                y = y.index_copy(0, idx, y_c)
                out = [o.index_copy(0, idx, t.to(o.dtype)) for o, t in zip(out, s_c)]
            return y, tuple(out)
        return self._mac_pieces(x, state, groups[0])

    def _mac_pieces(self, x, state, c):
        """x cut at the segment ends of sequences c steps into their segment (split, not
        sliced: a slice's backward is a zero tensor of x's whole size, per piece)."""
        T, C = x.shape[1], self.chunk_size
        first = min(T, C - c)
        sizes = [first] + [C] * ((T - first) // C) + ([(T - first) % C] if (T - first) % C else [])
        # what reads x alone runs once for every piece: the retrieval's queries, the
        # retrieval's output gate, a fresh segment's attention state
        B = x.shape[0]
        q = l2norm(self.retrieve_proj(x).to(compute_dtype(x)).view(
            B, T, self.num_heads, self.head_dim))
        gate = self.g_proj(x)
        start = self.segment_start(B, state[-3:])
        outs = []
        for piece, q_p, g_p in zip(*(t.split(sizes, 1) for t in (x, q, gate))):
            *out, state = self._mac_piece(piece, state, q_p, g_p, start)
            outs.append(out)
        # what the next piece does not read runs once for all: the memory's output, the gate
        y, z, q_m = (torch.cat(t, 1) for t in zip(*outs))
        return self.gate(y, self.op_output(z, q_m, y)), state

    def _mac_aligned(self, x, state):
        """_mac_pieces for sequences that all stand at a segment's start (every piece opens a
        fresh segment): what does not read the memory runs once over all of x (the
        retrieval's queries and gate, the attention's queries, keys and values of the x's,
        its W_out), and the segment loop keeps only the chain memory -> retrieval -> attention
        -> memory, with the products that follow each other there composed: W_{k,v} W_o
        from the retrieval's gated read to its keys and values, [W_qkv; W_gates] W_out from
        the attention's heads to the memory's inputs. The attention's queries are the x's
        (the retrieval tokens' outputs are not read: their queries are zeros). Equal to
        _mac_pieces up to rounding. On the CPU (`_mac_fast`) a segment is three autograd
        nodes (titans_scan.mac_retrieve, mac_attention, mac_memory: the read to the keys
        and values, the attention to the memory's inputs, the conv and the memory; the last
        ops.memory.titans_segment without the C conv) while their inputs are finite (one
        host read each a segment), the general forms from the first that is not."""
        B, T, _ = x.shape
        C, P, attn, cd = self.chunk_size, self.num_persistent, self.attn, x.dtype
        H, Dh, HK = attn.num_heads, attn.head_dim, self.num_heads * self.head_dim
        Hm, K = self.num_heads, self.head_dim
        q = l2norm(self.retrieve_proj(x).view(B, T, Hm, K))
        gate = self.g_proj(x)
        start = self.segment_start(B, state[-3:])
        # Titans' attention: as many key/value heads as query heads, full rotary, no norms,
        # no output gate (__init__); x_i sits at P + 2 i + 1 of its segment, h_i at P + 2 i
        pos = (P + 2 * torch.remainder(torch.arange(T, device=x.device), C)).expand(B, T)
        w_kv, b_kv = _chain(attn.qkv.weight[H * Dh:], attn.qkv.bias, self.o_proj)
        w_in = torch.cat([self.qkv_proj.weight, self.gate_proj.weight])
        b_in = torch.cat([torch.zeros_like(w_in[:3 * HK, 0]), self.gate_proj.bias])
        w_m, b_m = _chain(w_in, b_in, attn.out_proj)
        rot = attn.rope
        lib = native_attention.load() if backend.use_native(x) else None
        if lib is None:
            qx, kx, vx = attn.qkv(x).view(B, T, 3, H, Dh).unbind(2)
            qx = attn.rope(qx, pos + 1).transpose(1, 2) * Dh ** -0.5
            kx, vx = attn.rope(kx, pos + 1).transpose(1, 2), vx.transpose(1, 2)
        else:  # the rotary angles, the same in every segment: made once (h_i's, x_i's)
            ang = (P + 2 * torch.arange(C, device=x.device, dtype=cd))[:, None] * frequencies(
                attn.rotary_dim // 2, attn.rope_base, cd, x.device)
            cos, sin = (t.expand(B, C, -1).contiguous() for t in (ang.cos(), ang.sin()))
            rot = lambda t, p: native_attention.rope(  # noqa: E731
                lib, t, cos[:, :t.shape[1]], sin[:, :t.shape[1]])
            ang = (pos[0] + 1).to(cd)[:, None] * frequencies(attn.rotary_dim // 2,
                                                             attn.rope_base, cd, x.device)
            # the x's queries (scaled), keys, values (B, H, T, Dh): split, turned and
            # transposed in one pass each way
            qx, kx, vx = native_attention.heads(lib, attn.qkv(x), H, *(
                t.expand(B, T, -1) for t in (ang.cos(), ang.sin())), Dh ** -0.5)
        kp, vp = (t[:, :, :P].to(cd) for t in start[:2])
        mem, L = state[:-3], (len(state) - 5) // 3
        init = self.op_args(cd)[0]
        sizes = [C] * (T // C) + ([T % C] if T % C else [])
        # the fast form's memory: [gradient point (the memory the segment reads), M, S, conv
        # state, the state's M' (the last segment's gradient point)]
        tlib = self._mac_fast(lib, mem, L, (qx, kx, vx, kp, vp))
        fast, ran = None, False
        glib = head_norm.load() if tlib is not None else None
        nw = self.norm.weight.to(cd)
        if tlib is not None:
            P0 = _select(mem[3 * L].round() == C, mem[L], mem[0])
            fast = [P0, mem[L], mem[2 * L], mem[-1], P0]
        outs = []
        # split, not sliced (a slice's backward is a zero tensor of the whole size, per piece);
        # mac_retrieve reads q's rows in place, the bmm below takes them transposed
        qT = q.transpose(1, 2)
        qT = qT.contiguous() if fast is not None and glib is None else qT
        for q_s, g_s, p_s, qT_s, qx_s, kx_s, vx_s in zip(
                *(t.split(sizes, 1) for t in (q, gate, pos)),
                *(t.split(sizes, 2) for t in (qT, qx, kx, vx))):
            n_ = q_s.shape[1]
            if fast is not None and glib is not None:  # the read, norm, gate, W_{k,v} W_o
                kv = titans_scan.mac_retrieve(glib, tlib, q_s, init[0], fast[0], g_s, nw,
                                              self.norm.eps, w_kv, b_kv)
            else:
                if fast is not None:   # memory_read of a weight-only memory, (b, h) batched
                    W = (init[0] + fast[0]).view(B * Hm, K, K)
                    u = torch.bmm(qT_s.view(B * Hm, n_, K), W).view(B, Hm, n_, K).transpose(1, 2)
                else:
                    full = mem[3 * L].round() == C
                    u = memory_read(init, [_select(full, m, g)
                                           for g, m in zip(mem[:L], mem[L:2 * L])], q_s)
                kv = linear(self.op_gated(u, q_s, None, g_s), w_kv, b_kv)
            if fast is not None and math.isfinite(kv.sum().item()):  # q, the x tokens: hoisted
                # the h's rotary keys, the interleave, the attention at the x's, W_m: one node
                a, proj, ks, vs = titans_scan.mac_attention(lib, kv, qx_s, kx_s, vx_s, kp, vp,
                                                            cos[:, :n_].contiguous(),
                                                            sin[:, :n_].contiguous(), w_m, b_m)
            else:
                kh, vh = kv.view(B, n_, 2, H, Dh).unbind(2)
                kh, vh = rot(kh, p_s).transpose(1, 2), vh.transpose(1, 2)
                # [p, h_1, x_1, ..., h_n, x_n]: (B, H, P + 2 n, Dh); the attention's queries
                # [0 (p's), 0 (h_1), x_1, ..., 0 (h_n), x_n]
                ks, vs, qs = (torch.stack([h, t], 3).flatten(2, 3) for h, t in (
                    (kh, kx_s), (vh, vx_s), (torch.zeros_like(qx_s), qx_s)))
                if P:
                    ks, vs = torch.cat([kp, ks], 2), torch.cat([vp, vs], 2)
                    qs = torch.cat([qx_s.new_zeros(B, H, P, Dh), qs], 2)
                a = _causal_attention(qs, ks, vs)
                a = a[:, :, P + 1::2].transpose(1, 2).reshape(B, n_, -1)
                proj = linear(a, w_m, b_m)
            if fast is not None and math.isfinite(proj.sum().item()):
                z, fast, ran = *self._mac_fast_memory(tlib, proj, fast, init[0]), True
                outs.append((a, z, None))
                continue
            if fast is not None:   # non-finite: the general form from here on
                mem = self._mac_fast_state(fast, mem[3 * L], C) if ran else mem
                fast = None
            z, q_m, mem = self._memory_read(None, mem, "chunk", within=True, proj=proj)
            outs.append((a, z, q_m if self.inner_norm else None))
        a, z = (torch.cat([o[i] for o in outs], 1) for i in range(2))
        q_m = torch.cat([o[2] for o in outs], 1) if self.inner_norm else None
        if fast is not None:
            mem = self._mac_fast_state(fast, mem[3 * L], sizes[-1])
        y = attn.out_proj(a)
        # the attention's state: the last segment's tokens in its first slots (p's included)
        att = [torch.cat([t.to(c.dtype), c[:, :, t.shape[2]:]], 2)
               for t, c in zip((ks, vs), start[:2])]
        return (self.gate(y, self.op_output(z, q_m, y)),
                (*mem, *att, start[2] + (ks.shape[2] - P)))

    def _mac_fast(self, lib, mem, L, hoisted):
        """titans_scan's library when _mac_aligned's fast form applies, else None: the C
        attention (`lib`), a linear weight-only memory without inner norm whose state's bias
        rows are zero constants in the compute dtype, and finite hoisted attention inputs
        (their total read once: a non-finite entry or an overflow makes it non-finite)."""
        if (lib is None or self.kind != "linear" or self.inner_norm or self.memory_bias
                or any(t.dtype != hoisted[0].dtype for t in mem[:-1])
                or any(t.requires_grad or bool(t.any()) for t in mem[1:3 * L:2])
                or not bool(torch.isfinite(sum(t.sum() for t in hoisted)))):
            return None
        return titans_scan.load()

    def _mac_fast_memory(self, tlib, proj, fast, W0):
        """One aligned segment's memory in the fast form: proj (B, n, 3 H K + 3 H) the
        memory's inputs (finite), fast as _mac_aligned keeps it, W0 the initial memory.
        Returns (the read z (B, n, H, K), the new fast state)."""
        P0, M, S, conv_state, _ = fast
        H = self.num_heads
        w = self.conv.weight.to(proj.dtype)
        clib = (native_conv.load() if not sequence_parallel.active()
                and backend.use_native(proj, w, conv_state) else None)
        if clib is not None:   # the conv and the memory in one node
            z, M, S, conv_state = titans_scan.mac_memory(clib, tlib, proj, w, conv_state,
                                                         self.conv.silu, W0, P0, M, S,
                                                         self.base_lr, _titans_segment_plain)
            return z, [M, M, S, conv_state, P0]
        qkv, g = proj.split([proj.shape[-1] - 3 * H, 3 * H], -1)
        q, k, v, conv_state = memory_qkv(self, None, conv_state, fused=True, qkv=qkv)
        # the gates' sigmoids and the kernels' (B, H, n, K) layout inside one autograd node
        z, M, S = titans_segment(tlib, q, k, v, g, W0, P0, M, S, self.base_lr)
        return z, [M, M, S, conv_state, P0]

    @staticmethod
    def _mac_fast_state(fast, count, n):
        """The memory's state tuple (M', M, S with zero bias rows, step count n (count's
        dtype), conv state) from _mac_aligned's fast form."""
        _, M, S, conv_state, Pg = fast
        zero = lambda: torch.zeros_like(M[..., 0, :])  # noqa: E731
        return (Pg, zero(), M, zero(), S, zero(), torch.full_like(count, n), conv_state)

    def _mac_piece(self, x, state, q, gate, start):
        """_mac_step over tokens x (B, T, d) that lie inside one segment, all at once, up to
        the memory's output: q the retrieval's queries (B, T, H, K), gate g_proj(x), start a
        fresh segment's attention state. Returns (y, the memory's read z and its queries,
        state): o = gate(y, op_output(z, queries, y))."""
        mem, att = state[:-3], state[-3:]
        L = (len(mem) - 2) // 3
        n = mem[3 * L].round()
        new = (n == 0) | (n == self.chunk_size)
        att = tuple(_select(new, s, a) for s, a in zip(start, att))
        full = n == self.chunk_size
        seg = [_select(full, m, g) for g, m in zip(mem[:L], mem[L:2 * L])]
        z = memory_read(self.op_args(q.dtype)[0], seg, q)     # read only: no step learns
        h = self.op_output(z, q, x, gate)
        y, att = self.attn._forward(torch.stack([h, x], 2).flatten(1, 2), att, "parallel")
        # the piece lies inside one segment (offset + T <= C): the memory's chunk form needs
        # one chunk, not the two that cover any offset
        y = y[:, 1::2]
        z, q, mem = self._memory_read(y, mem, "chunk", within=True)
        return y, z, q, (*mem, *att)

    def _mac_step(self, x_t, state):
        """Memory as context, one token (section 4.1). At a segment's start (n = 0 or C) the
        attention restarts from [p]; the token's retrieval h_t = M_seg(W_Q x_t) reads the
        memory the segment started with (no update), the attention reads h_t then x_t
        (y_t: its output at x_t), the memory learns from y_t and o_t = y_t (x) M_t(y_t)."""
        mem, att = state[:-3], state[-3:]
        L = (len(mem) - 2) // 3
        n = mem[3 * L].round()
        B = x_t.shape[0]
        new = (n == 0) | (n == self.chunk_size)
        att = tuple(torch.where(new.view(-1, *[1] * (a.dim() - 1)), s, a)
                    for s, a in zip(self.segment_start(B, att), att))
        full = (n == self.chunk_size).view(-1, 1, 1, 1)
        seg = [torch.where(full if g.dim() == 4 else full[..., 0], m, g)
               for g, m in zip(mem[:L], mem[L:2 * L])]        # the memory at the segment start
        q = l2norm(self.retrieve_proj(x_t).to(compute_dtype(x_t)).view(
            B, self.num_heads, self.head_dim))
        init, w, b = self.op_args(q.dtype)
        zero = torch.zeros_like(q[..., 0])                    # a step that reads, learns nothing
        z, _ = titans_step(self.kind, q, q, q, zero, zero, zero, self.chunk_size, init,
                           (*seg, *seg, *[torch.zeros_like(t) for t in seg], mem[3 * L]),
                           w, b, self.norm_eps, self.inner_norm, self.memory_bias)
        h = self.op_output(z[:, None], q[:, None], x_t[:, None])[:, 0]
        y, att = self.attn._forward(torch.stack([h, x_t], 1), att, "parallel")
        m, mem = self._memory_step(y[:, 1], mem)
        return self.gate(y[:, 1], m), (*mem, *att)

    def _memory(self, x, state, mode, within=False):
        z, q, state = self._memory_read(x, state, mode, within)
        return self.op_output(z, q, x), state

    def _memory_read(self, x, state, mode, within=False, proj=None):
        """The memory over x (B, T, d) before its output: (read z, queries q (B, T, H, K),
        new state); proj as op_inputs takes it."""
        *mem, conv_state = state
        q, k, v, theta, alpha, eta, conv_state = self.op_inputs(x, conv_state, proj)
        init, w, b = self.op_args(q.dtype)
        args = (self.kind, q, k, v, theta, alpha, eta, self.chunk_size, init, tuple(mem),
                w, b, self.norm_eps, self.inner_norm, self.memory_bias)
        if mode == "chunk":
            z, mem = titans_chunked(*args, within=within)
        else:
            z, mem = titans_sequential(*args)
        return z, q, (*mem, conv_state)

    def _memory_step(self, x_t, state):
        *mem, conv_state = state
        q, k, v, theta, alpha, eta, conv_state = self.op_inputs(x_t[:, None], conv_state)
        init, w, b = self.op_args(q.dtype)
        z, mem = titans_step(self.kind, q[:, 0], k[:, 0], v[:, 0], theta[:, 0], alpha[:, 0],
                             eta[:, 0], self.chunk_size, init, tuple(mem), w, b, self.norm_eps,
                             self.inner_norm, self.memory_bias)
        return self.op_output(z[:, None], q, x_t[:, None])[:, 0], (*mem, conv_state)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"memory_depth={self.memory_depth}, chunk_size={self.chunk_size}, "
                f"base_lr={self.base_lr}, inner_norm={self.inner_norm}, "
                f"memory_bias={self.memory_bias}, block={self.block!r}"
                + ("" if self.attn is None else
                   f", window={self.window}, num_persistent={self.num_persistent}"))


@register("titans_mac", family="matrix",
          paper="Behrouz et al. 2024, arXiv:2501.00663 (Titans, memory as context)",
          tiny=dict(d_model=4, num_heads=1, head_dim=4, chunk_size=4, d_conv=2,
                    num_persistent=1))
class TitansMAC(Titans):
    """`titans` with block="mac": segments of chunk_size tokens attended with the persistent
    tokens and the memory's retrieval, the memory learning from the attention's output."""

    host_reads = {
        **Titans.host_reads,
        "chunk": "the chunk form cuts the sequence where its segments end, so it reads each "
                 "sequence's offset in its segment (the step count held in the state)",
    }

    def __init__(self, d_model: int, block: str = "mac", **options):
        super().__init__(d_model, block=block, **options)


@register("titans_mag", family="matrix",
          paper="Behrouz et al. 2024, arXiv:2501.00663 (Titans, memory as a gate)",
          tiny=dict(d_model=8, num_heads=2, head_dim=4, chunk_size=4, d_conv=2, window=3,
                    num_persistent=2))
class TitansMAG(Titans):
    """`titans` with block="mag": sliding-window attention gated by the memory."""

    def __init__(self, d_model: int, block: str = "mag", **options):
        super().__init__(d_model, block=block, **options)


@register("titans_mal", family="matrix",
          paper="Behrouz et al. 2024, arXiv:2501.00663 (Titans, memory as a layer)",
          tiny=dict(d_model=8, num_heads=2, head_dim=4, chunk_size=4, d_conv=2, window=3,
                    num_persistent=2))
class TitansMAL(Titans):
    """`titans` with block="mal": the memory, then sliding-window attention."""

    def __init__(self, d_model: int, block: str = "mal", **options):
        super().__init__(d_model, block=block, **options)
