"""Mixture of Memories (Du et al. 2025, "MoM: Linear Sequence Modeling with Mixture-of-Memories",
arXiv:2502.13685): N separate matrix memories, each token written to the top-k of them chosen
by a router and read from the same ones, over Gated DeltaNet's memory (layers/_delta_block.py):

    r_t = softmax(W_r x_t) (N scores);  top-k memories T_t, weights w_tm = r_tm / sum_{T_t} r
    memory m sees only its routed tokens x_{t_1}, x_{t_2}, ... (t_l the l-th token with m in T):
        q_l^m, k_l^m, v_l^m = silu(shortconv_m(W_q x, W_k^m x, W_v^m x)) over that sequence
        S_l^m = alpha_l (I - beta_l^m k k^T) S_{l-1}^m + beta_l^m k v^T    (alpha, beta of x_{t_l})
    o_t = sum_{m in T_t} w_tm S^m^T q^m / sqrt(K)   (+ a shared memory written by every token,
                                                      its q, k, v convolved over all tokens,
                                                      with shared_memory)
    y = W_o [RMSNorm(o) * silu(W_g x)]

As in the paper's hardware-efficient form and its code (fla's MomAttention: the routed tokens
of each memory gathered into a sequence of their own, projected and convolved there), a
memory's state, conv state included, depends only on the tokens routed to it: a token it
skips leaves it as it was. W_q and the conv filter of q are shared, so each memory reads its
own q^m. The reference (`sequential`, and `step`) takes every memory at every token, the
skipped ones as identity steps (conv window and delta state kept, beta = 0, no decay).
`chunk` gathers each memory's tokens into a packed sequence (B N sequences, right-padded with
identity steps to the longest routed count L ~ T top_k / N, read on the host; L = T where
reading is not free), projects and convolves only those, runs all routed memories as the
heads of one chunked delta rule over those L steps (the shared memory over all T), and
gathers each token's top-k outputs back. One memory chosen always is Gated DeltaNet.
State: (S (B, N' H, K, V) with N' = N (+ 1 shared), conv state (B, d_conv - 1, N' (2 H K + H V)):
each memory's last d_conv - 1 projected routed tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rnnzoo.checks import flag, int_in, positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers._delta_block import DeltaBlock
from rnnzoo.layers._softplus import softplus
from rnnzoo.layers.conv import causal_conv1d
from rnnzoo.ops import backend, sequence_parallel
from rnnzoo.ops.chunk.delta import delta_rule, delta_rule_recurrent, delta_rule_step
from rnnzoo.ops.native.linear import Linear, linear
from rnnzoo.registry import register


@register("mom", family="matrix", paper="Du et al. 2025, arXiv:2502.13685 (Mixture of Memories)",
          tiny=dict(d_model=6, num_heads=2, head_dim=3, expand_v=1, num_memories=3, top_k=2,
                    shared_memory=True, d_conv=2, chunk_size=4))
class MoM(DeltaBlock):
    """x: (B, T, d_model) -> y; state (S (B, N' H, K, V), conv state (B, d_conv-1, N' C_m))."""

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 expand_v: int = 2, num_memories: int = 4, top_k: int = 2,
                 shared_memory: bool = False, d_conv: int = 4, chunk_size: int = 32,
                 allow_neg_eigval: bool = False, norm_eps: float = 1e-5):
        N = positive_int("num_memories", num_memories)
        self_top_k = int_in("top_k", top_k, 1, N)
        shared = flag("shared_memory", shared_memory)
        super().__init__(d_model, num_heads, head_dim, expand_v, num_householder=N + shared,
                         forget_gate=True, output_gate=True, allow_neg_eigval=allow_neg_eigval,
                         d_conv=d_conv, chunk_size=chunk_size, norm_eps=norm_eps)
        self.num_memories, self.top_k, self.shared_memory = N, self_top_k, shared
        self.router = Linear(d_model, N, bias=False)

    @property
    def _width(self):
        """C_m: one memory's conv channels, q, k, v (2 H K + H V)."""
        return self.num_heads * (2 * self.head_dim + self.value_dim)

    def init_state(self, batch_size, device=None, dtype=None):
        S = torch.zeros(batch_size, self.num_householder * self.num_heads, self.head_dim,
                        self.value_dim, device=device, dtype=state_dtype(dtype))
        conv = torch.zeros(batch_size, self.conv.d_conv - 1, self.num_householder * self._width,
                           device=device, dtype=state_dtype(dtype))
        return S, conv

    def _weights(self, dtype):
        """Each memory's (q, k, v) rows of qkv_proj (N', C_m, d_model) and conv filters
        (N', C_m, d_conv): q's are shared, k's and v's its own."""
        HK, HV, Np = self.num_heads * self.head_dim, self.num_heads * self.value_dim, \
            self.num_householder
        ar = lambda n: torch.arange(n, device=self.conv.weight.device)  # noqa: E731
        m = ar(Np)[:, None]
        cols = torch.cat([ar(HK).expand(Np, HK), HK + m * HK + ar(HK),
                          HK + Np * HK + m * HV + ar(HV)], 1)
        return self.qkv_proj.weight[cols].to(dtype), self.conv.weight[cols].to(dtype)

    def _route(self, logits):
        """Router softmax and its top-k from the router's logits (B, T, N) (`_gates`' third):
        (read weights over the chosen (B, T, top_k), memory indices (B, T, top_k))."""
        top, idx = torch.softmax(logits, -1).topk(self.top_k, -1)
        return top / top.sum(-1, keepdim=True), idx

    def _heads(self, y, normed=False):
        """Conv outputs y (..., C_m), or its q, k, v pieces, -> q, k (unit norm, (..., H, K)),
        v (..., H, V); normed: q and k already are."""
        H, K, V = self.num_heads, self.head_dim, self.value_dim
        q, k, v = y.split([H * K, H * K, H * V], -1) if isinstance(y, torch.Tensor) else y
        q, k = (t.unflatten(-1, (H, K)) for t in (q, k))
        if not normed:
            q, k = self.l2norm(q), self.l2norm(k)
        return q, k, v.unflatten(-1, (H, V))

    def _gates(self, x):
        """beta (B, T, N', H), g (B, T, H), router logits (B, T, N): W_b, W_a and the
        router's rows in one product (`gate_inputs`)."""
        cdt = compute_dtype(x)
        b, a, logits = (t.to(cdt) for t in self.gate_inputs(x, extra=self.router.weight))
        beta = torch.sigmoid(b).unflatten(-1, (self.num_householder, -1))
        if self.allow_neg_eigval:
            beta = 2 * beta
        g = -self.A_log.to(cdt).exp() * softplus(a + self.dt_bias.to(cdt))
        return beta, g, logits

    def routed_inputs(self, x, conv_state):
        """The reference's inputs, every memory at every token: q, k (B, T, N' H, K), v (B, T,
        N' H, V), beta, g (B, T, N' H) (identity steps where a memory is not chosen), read
        weights w (B, T, N'), conv state. A memory's conv window moves on only at its own
        tokens: its k_t is the conv of its last d_conv routed tokens up to t."""
        B, T, _ = x.shape
        cdt, Np, Kc = compute_dtype(x), self.num_householder, self.conv.d_conv
        Wp, Wc = self._weights(x.dtype)
        P = torch.einsum("btd,ncd->btnc", x, Wp).to(cdt)              # (B, T, N', C_m)
        Wc = Wc.to(cdt).permute(2, 0, 1)                              # (d_conv, N', C_m)
        beta, g, logits = self._gates(x)
        top, idx = self._route(logits)
        w = P.new_zeros(B, T, self.num_memories).scatter(-1, idx, top)
        chosen = w.new_zeros(w.shape).scatter(-1, idx, torch.ones_like(top))
        if self.shared_memory:
            w = torch.cat([w, torch.ones_like(w[..., :1])], -1)
            chosen = torch.cat([chosen, torch.ones_like(chosen[..., :1])], -1)
        # memory m's history: its conv state, then its routed tokens' projections in order
        # (place K - 1 + r for its r-th routed token; the others to a spare last place)
        rank = chosen.cumsum(1).long() - 1                                # (B, T, N')
        at = torch.where(chosen > 0, rank + Kc - 1, Kc - 1 + T)[..., None].expand_as(P)
        hist = torch.cat([conv_state.to(cdt).view(B, Kc - 1, Np, -1),
                          P.new_zeros(B, T + 1, *P.shape[2:])], 1).scatter(1, at, P)
        # a routed token's window: places r .. r + K - 1 (unrouted tokens read any)
        r = rank.clamp(min=0)[..., None].expand_as(P)
        y = sum(Wc[j] * hist.gather(1, r + j) for j in range(Kc))
        q, k, v = (t.flatten(2, 3) for t in self._heads(F.silu(y)))
        last = (rank[:, -1:] + 1)[..., None] + torch.arange(Kc - 1, device=x.device)[:, None, None]
        win = hist.gather(1, last.expand(-1, -1, -1, P.shape[-1]))       # (B, d_conv-1, N', C_m)
        beta = (beta * chosen[..., None]).flatten(2)
        g = (g[:, :, None] * chosen[..., None]).flatten(2)
        return q, k, v, beta, g, w, win.flatten(2).to(conv_state.dtype)

    def _mix(self, o, w):
        """o (B, T, N' H, V), w (B, T, N') -> sum_m w_m o_m (B, T, H, V)."""
        B, T, _, V = o.shape
        return (o.view(B, T, -1, self.num_heads, V) * w[..., None, None]).sum(2)

    def _conv(self, x, weight, state):
        """((q, k, v): silu(causal conv) of x (B, L, C) with filters (C, d_conv) and state
        (B, d_conv-1, C) cut into its (B, L, H K), (B, L, H K), (B, L, H V) pieces, normed):
        on a CPU the C convolution writes each piece contiguous, q and k unit norm (`_heads`'
        l2norm fused in, normed True). The state it leaves is not used (the packed sequences
        end at their own counts)."""
        state = state.to(x.dtype)
        H, K = self.num_heads, self.head_dim
        splits = [H * K, H * K, H * self.value_dim]
        if backend.use_native(x, weight, state):
            from rnnzoo.ops.native import conv as native_conv
            lib = native_conv.load()
            if lib is not None:
                return native_conv.short_conv(lib, x, weight, None, state, True, 2 * H, K,
                                              False, splits)[0], True
        return F.silu(causal_conv1d(x, weight, None, state)[0]).split(splits, -1), False

    def _packed(self, x, S, conv_state):
        """`chunk`: each routed memory over its own tokens only (module docstring). Reads the
        longest routed count on the host where that is free. -> (o (B, T, H, V), S, conv)."""
        B, T, d = x.shape
        N, H, K, V, Kc = self.num_memories, self.num_heads, self.head_dim, self.value_dim, \
            self.conv.d_conv
        cdt, Cm, Np = compute_dtype(x), self._width, self.num_householder
        beta, g, logits = self._gates(x)
        w, idx = self._route(logits)                                   # (B, T, top_k)
        chosen = torch.zeros(B, T, N, dtype=torch.bool, device=x.device).scatter(-1, idx, True)
        count = chosen.sum(1)                                             # (B, N)
        L = max(int(count.max()), 1) if backend.host_readable(x) else T
        # memory m's l-th token: the routed ones first, in time order (a stable sort). Each
        # (m, b) is a sequence of its own (batch N B, memory-major), so that a non-finite
        # input marks only it
        src = torch.sort((~chosen).to(torch.uint8), dim=1, stable=True).indices[:, :L]
        valid = (torch.arange(L, device=x.device) < count[..., None]).transpose(0, 1)
        tok = src.permute(2, 0, 1) + T * torch.arange(B, device=x.device)[:, None]  # (N, B, L)
        # its rows in (B T, ...) tensors and in (B T N', ...) ones (beta); past the count a
        # zero row: an identity step (beta = g = 0), its q, k, v convolved from zeros
        mem = torch.where(valid, tok * Np + torch.arange(N, device=x.device)[:, None, None],
                          B * T * Np)
        tok = torch.where(valid, tok, B * T)
        Wp, Wc = self._weights(x.dtype)
        # each memory's tokens projected (one oneDNN product each: `linear`) and convolved
        # (N, B, L, C_m); unbind, not [m]: a select's backward fills a zero tensor per memory
        xz = torch.cat([x.reshape(B * T, d), x.new_zeros(1, d)])
        states = conv_state[..., :N * Cm].unflatten(-1, (N, Cm))
        ys = [self._conv(linear(xm, wm).to(cdt), wc.to(cdt), sm) for xm, wm, wc, sm in
              zip(xz[tok].unbind(0), Wp[:N].unbind(0), Wc[:N].unbind(0), states.unbind(-2))]
        # (N, B, L, width) each: contiguous, so the delta rule's reshapes are views
        y, normed = [torch.stack([t[i] for t, _ in ys]) for i in range(3)], ys[0][1]
        # the conv state each memory leaves: its last d_conv - 1 routed inputs, place
        # count + j of [conv state; its projected tokens], those tokens projected again
        at = count.T[..., None] + torch.arange(Kc - 1, device=x.device)    # (N, B, d_conv - 1)
        last = xz[tok.gather(2, (at - (Kc - 1)).clamp(min=0))]             # (N, B, d_conv-1, d)
        P = (last.flatten(1, 2) @ Wp[:N].transpose(1, 2)).to(cdt).view(N, B, Kc - 1, Cm)
        old = states.to(cdt).permute(2, 0, 1, 3).gather(
            2, at.clamp(max=Kc - 2)[..., None].expand(-1, -1, -1, Cm))
        conv_r = torch.where((at < Kc - 1)[..., None], old, P).permute(1, 2, 0, 3)
        q, k, v = self._heads(y, normed)                                   # (N, B, L, H, .)
        zero_row = lambda t: torch.cat([t.reshape(-1, H), t.new_zeros(1, H)])  # noqa: E731
        beta_r, g_r = zero_row(beta)[mem], zero_row(g)[tok]                # (N, B, L, H)
        flat = lambda t: t.reshape(N * B, L, *t.shape[3:])  # noqa: E731
        S_r = S[:, :N * H].reshape(B, N, H, K, V).transpose(0, 1).reshape(N * B, H, K, V)
        o, S_r = self._delta(flat(q), flat(k), flat(v), flat(beta_r), flat(g_r), S_r)
        S_r = S_r.view(N, B, H, K, V).transpose(0, 1).reshape(B, N * H, K, V)
        # token t's j-th memory idx_tj holds it at place rank_tj of its packed sequence
        rank = (chosen.cumsum(1) - 1).gather(-1, idx)                     # (B, T, top_k)
        at = (idx * B + torch.arange(B, device=x.device)[:, None, None]) * L + rank
        o = o.reshape(N * B * L, H * V).index_select(0, at.flatten()).view(B, T, -1, H * V)
        o = torch.einsum("btj,btjd->btd", w, o).view(B, T, H, V)  # a batched product: cheaper
        # both ways than a broadcast product and its sum
        conv_r = conv_r.flatten(2)
        if self.shared_memory:
            state = conv_state[..., N * Cm:]
            P = linear(x, Wp[N]).to(cdt)
            q_s, k_s, v_s = self._heads(*self._conv(P, Wc[N].to(cdt), state))
            o_s, S_s = self._delta(q_s, k_s, v_s, beta[:, :, N], g, S[:, N * H:])
            tail = P[:, max(T - Kc + 1, 0):]                               # its last inputs
            conv_s = torch.cat([state.to(cdt), tail], 1)[:, tail.shape[1]:]
            o, S_r = o + o_s, torch.cat([S_r, S_s], 1)
            conv_r = torch.cat([conv_r, conv_s], -1)
        return o, S_r, conv_r.to(conv_state.dtype)

    def _delta(self, q, k, v, beta, g, S):
        """The delta rule of `_packed` (on the CPU its C recurrence, through delta_rule).
        -> (o, S_T)."""
        return delta_rule(q, k, v, beta, g, initial_state=S, chunk_size=self.chunk_size)

    def _forward(self, x, state, mode):
        if sequence_parallel.active():
            raise ValueError("mom under sequence parallelism: its memories' convolutions run over "
                             "their own routed tokens, which no rank's neighbour holds")
        S, conv_state = state
        if mode == "chunk":
            o, S, conv_state = self._packed(x, S, conv_state)
            return self.op_output(o, x), (S, conv_state)
        q, k, v, beta, g, w, conv_state = self.routed_inputs(x, conv_state)
        o, S = delta_rule_recurrent(q, k, v, beta, g, initial_state=S)
        return self.op_output(self._mix(o, w), x), (S, conv_state)

    def _step(self, x_t, state):
        S, conv_state = state
        q, k, v, beta, g, w, conv_state = self.routed_inputs(x_t[:, None], conv_state)
        S = S * g[:, 0].exp()[..., None, None]
        o, S = delta_rule_step(q[:, 0], k[:, 0], v[:, 0], beta[:, 0], None, S,
                               self.head_dim ** -0.5)
        return self.op_output(self._mix(o[:, None], w), x_t[:, None])[:, 0], (S, conv_state)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", num_memories={self.num_memories}, top_k={self.top_k}, "
                f"shared_memory={self.shared_memory}")
