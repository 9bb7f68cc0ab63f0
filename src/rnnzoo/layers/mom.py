"""Mixture of Memories (Du et al. 2025, "MoM: Linear Sequence Modeling with Mixture-of-Memories",
arXiv:2502.13685): N separate matrix memories, each token written to the top-k of them chosen
by a router and read from the same ones, over Gated DeltaNet's memory (layers/_delta_block.py):

    r_t = softmax(W_r x_t) (N scores);  top-k memories T_t, weights w_tm = r_tm / sum_{T_t} r
    memory m:  k_t^m, v_t^m, beta_t^m = its own projections (q_t shared)
    S_t^m = alpha_t (I - beta_t^m k k^T) S_t-1^m + beta_t^m k v^T    if m in T_t,  else S_t-1^m
    o_t = sum_{m in T_t} w_tm S_t^m^T q_t / sqrt(K)   (+ a shared memory written by every token,
                                                        with shared_memory)
    y = W_o [RMSNorm(o) * silu(W_g x)]

A memory a token skips takes an identity step (beta = 0, no decay). The reference
(`sequential`) runs every memory over every token that way, as extra heads of one delta-rule
loop. Since a skipped token leaves a memory as it was, memory m's states at its own tokens are
those of the delta rule run on its routed tokens alone, in order: `chunk` (on a CPU) gathers
each memory's tokens into a packed sequence, right-padded with identity steps to the longest
one (L ~ T top_k / N), runs all routed memories as the heads of one chunked delta rule over
those L steps (the shared memory over all T), and gathers each token's top-k outputs back.
Elsewhere (and under sequence parallelism) `chunk` runs the masked form over all T, which
needs no host read of the counts. One memory chosen always is Gated DeltaNet.
State: (S (B, N' H, K, V) with N' = N (+ 1 shared), short-conv state).
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.checks import flag, int_in, positive_int
from rnnzoo.dtypes import state_dtype
from rnnzoo.layers._delta_block import DeltaBlock
from rnnzoo.ops import backend, sequence_parallel
from rnnzoo.ops.chunk.delta import delta_rule, delta_rule_recurrent, delta_rule_step
from rnnzoo.registry import register


@register("mom", family="matrix", paper="Du et al. 2025, arXiv:2502.13685 (Mixture of Memories)",
          tiny=dict(d_model=6, num_heads=2, head_dim=3, expand_v=1, num_memories=3, top_k=2,
                    shared_memory=True, d_conv=2, chunk_size=4))
class MoM(DeltaBlock):
    """x: (B, T, d_model) -> y; state (S (B, N' H, K, V), conv state)."""

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
        self.router = nn.Linear(d_model, N, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        S = torch.zeros(batch_size, self.num_householder * self.num_heads, self.head_dim,
                        self.value_dim, device=device, dtype=state_dtype(dtype))
        return S, self.conv.init_state(batch_size, device, state_dtype(dtype))

    def _route(self, x, dtype):
        """Router softmax and its top-k: (read weights over the chosen (B, T, top_k), memory
        indices (B, T, top_k))."""
        top, idx = torch.softmax(self.router(x).to(dtype), -1).topk(self.top_k, -1)
        return top / top.sum(-1, keepdim=True), idx

    def routed_inputs(self, x, conv_state):
        """Every memory as heads: q, k (B, T, N' H, K), v (B, T, N' H, V), beta, g (B, T, N' H)
        (identity steps where a memory is not chosen), read weights w (B, T, N'), conv state."""
        q, k, v, beta, g, conv_state = self.op_inputs(x, conv_state)
        B, T, Np, H, _ = k.shape
        top, idx = self._route(x, q.dtype)
        r = q.new_zeros(B, T, self.num_memories)
        w = r.scatter(-1, idx, top)
        chosen = r.scatter(-1, idx, torch.ones_like(top))
        if self.shared_memory:
            w = torch.cat([w, torch.ones_like(w[..., :1])], -1)
            chosen = torch.cat([chosen, torch.ones_like(chosen[..., :1])], -1)
        beta = (beta * chosen[..., None]).flatten(2)
        g = (g[:, :, None] * chosen[..., None]).flatten(2)
        q = q[:, :, None].expand(B, T, Np, H, q.shape[-1]).flatten(2, 3)
        return q, k.flatten(2, 3), v.flatten(2, 3), beta, g, w, conv_state

    def _mix(self, o, w):
        """o (B, T, N' H, V), w (B, T, N') -> sum_m w_m o_m (B, T, H, V)."""
        B, T, _, V = o.shape
        return (o.view(B, T, -1, self.num_heads, V) * w[..., None, None]).sum(2)

    def _packed(self, x, S, conv_state):
        """`chunk` with each routed memory run over its own tokens only (module docstring).
        Reads the longest routed count on the host. -> (o (B, T, H, V), S, conv state)."""
        q, k, v, beta, g, conv_state = self.op_inputs(x, conv_state)
        B, T, _, H, K = k.shape
        N, V = self.num_memories, v.shape[-1]
        w, idx = self._route(x, q.dtype)                                  # (B, T, top_k)
        chosen = torch.zeros(B, T, N, dtype=torch.bool, device=x.device).scatter_(-1, idx, True)
        count = chosen.sum(1)                                             # (B, N)
        L = max(int(count.max()), 1)
        # memory m's l-th token: the routed ones first, in time order (a stable sort); its row
        # in (B T, ...) tensors (q, g) and in (B T N', ...) ones (k, v, beta). Each (b, m)
        # is a sequence of its own (batch B N), so that a non-finite input marks only it
        src = torch.sort((~chosen).to(torch.uint8), dim=1, stable=True).indices[:, :L]
        src = src.transpose(1, 2)                                         # (B, N, L)
        tok = (src + T * torch.arange(B, device=x.device)[:, None, None]).flatten()
        mem = tok * k.shape[2] + torch.arange(N, device=x.device).repeat_interleave(L).repeat(B)
        valid = torch.arange(L, device=x.device) < count[..., None]       # (B, N, L)

        def pack(t, rows, vector=True, steps=True):  # -> (B N, L, H[, D]); past the count: zeros
            t = t.reshape(-1, H, *t.shape[-1:] if vector else ()).index_select(0, rows)
            t = t.view(B * N, L, *t.shape[1:])
            if steps:  # beta = g = 0 (and k = v = 0): an identity step
                t = torch.where(valid.view(B * N, L, *(1,) * (t.dim() - 2)), t, 0)
            return t

        # outputs past the count are never read: q needs no zeros
        o, S_r = self._delta(pack(q, tok, steps=False), pack(k, mem), pack(v, mem),
                             pack(beta, mem, False), pack(g, tok, False),
                             S[:, :N * H].reshape(B * N, H, K, V))
        S_r = S_r.view(B, N * H, K, V)
        # token t's j-th memory idx_tj holds it at place rank_tj of its packed sequence
        rank = (chosen.cumsum(1) - 1).gather(-1, idx)                     # (B, T, top_k)
        at = (idx + N * torch.arange(B, device=x.device)[:, None, None]) * L + rank
        o = o.reshape(B * N * L, H, V).index_select(0, at.flatten()).view(B, T, -1, H, V)
        o = (o * w[..., None, None]).sum(2)
        if self.shared_memory:
            o_s, S_s = self._delta(q, k[:, :, N], v[:, :, N], beta[:, :, N], g, S[:, N * H:])
            o, S_r = o + o_s, torch.cat([S_r, S_s], 1)
        return o, S_r, conv_state

    def _delta(self, q, k, v, beta, g, S):
        """The delta rule of `_packed` (on the CPU its C recurrence, through delta_rule).
        -> (o, S_T)."""
        return delta_rule(q, k, v, beta, g, initial_state=S, chunk_size=self.chunk_size)

    def _forward(self, x, state, mode):
        S, conv_state = state
        if mode == "chunk" and backend.host_readable(x) and not sequence_parallel.active():
            o, S, conv_state = self._packed(x, S, conv_state)
            return self.op_output(o, x), (S, conv_state)
        q, k, v, beta, g, w, conv_state = self.routed_inputs(x, conv_state)
        if mode == "chunk":
            o, S = delta_rule(q, k, v, beta, g, initial_state=S, chunk_size=self.chunk_size)
        else:
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
