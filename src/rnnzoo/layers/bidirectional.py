"""LION's bidirectional reading of a linear-attention layer (Afzal et al. 2025, "LION: Linear
Attention for Efficient Bidirectional Sequence Modeling", arXiv:2502.16249).

Full (non-causal) linear attention with a decay is two RNNs. With the log-decay g_t (a
scalar or one per key channel, G_t = sum_{s <= t} g_s) and the decay-masked attention

    o_i = scale sum_j (q_i . k_j)_M v_j,   M_ij = exp(G_i - G_j) (j <= i),  exp(G_j - G_i) (j > i)

(per key channel for a vector decay: (q_i . k_j)_M = sum_c q_ic k_jc exp(-|G_ic - G_jc|)),
the j <= i part is the causal recurrence S^F_t = diag(e^{g_t}) S^F_{t-1} + k_t v_t^T,
o^F_t = scale S^F_t^T q_t, and the j >= i part the same recurrence run backwards,
S^B_t = diag(e^{g_{t+1}}) S^B_{t+1} + k_t v_t^T (the decay between t and t + 1 is g_{t+1}).
Both include j = i, so

    o = o^F + o^B - scale (q_t . k_t) v_t                 (the diagonal counted once)

With RWKV-6's bonus u (H, K) each step reads the state before its own write,
o_t = scale (S_{t-1} + diag(u) k_t v_t^T)^T q_t, so the mask is the product of the decays
strictly between i and j, exp(G_{i-1} - G_j) (j < i), exp(G_{j-1} - G_i) (j > i), and u on the
diagonal. The backward recurrence is then the same op on the reversed sequence with the
reversed decays unshifted (reading before writing skips g at both ends), both directions
count the bonus term, and the correction is that term, not the plain diagonal:

    o = o^F + o^B - scale (q_t . (u * k_t)) v_t

Modes of a bidirectional layer: "sequential" (the two recurrences), "chunk" (the two
chunkwise forms), "parallel" (the masked full-attention form above, O(T^2); not with a bonus).

Which layers: those whose op is gated linear attention (no, scalar or per-channel decay),
each declaring `lion_inputs(x) -> (q, k, v, log_decay or None, scale[, bonus])` and
`lion_output(o, x)`, and a two-pass layer also `lion_second(o, x)` (the second pass's
inputs from the first pass's output); the option `bidirectional` is added to their
constructor (layers/base.py). Wired: linear_attention (its normaliser z is the ones column of
v, read in both directions), retnet (rotations from position 0), gla, hgrn2,
lightning_attention; mamba2 (q = C, k = B, v = dt x, scalar decay dt A; the skip D x and the
gate z are recomputed by lion_output from the same projection); rwkv6 (per-channel decay, the
bonus above); based and rebased (linear attention on the feature maps of ops.feature_maps,
the normaliser as a ones column of v, the division after both directions); gsa (two passes:
the slot scores K~ q, one head a slot with scalar decay alpha_m, run both ways; their softmax
over the slots is the query of the second pass, value slots with per-slot decay, run both
ways; each pass is a decay-masked full attention, their composition is GSA with a slot memory
written by the whole sequence). Short convolutions and token shifts before the op stay causal
(they make q, k, v; LION is about the op).
Not defined for the delta rule family (deltanet, gated_deltanet, deltaproduct, kda, comba,
gdn2, rwkv7, momentum_deltanet, mom whose memories are Gated DeltaNet's): their transition
(I - beta k p^T) makes o_t depend on earlier keys through products of such matrices, not
through one score q_i . k_j, so there is no decay-masked attention matrix whose two
triangles two recurrences compute; LION's construction needs a scalar or diagonal
transition. Nor for mesanet (a linear solve per step, not a sum over j), mlstm (its
max-normaliser and stabiliser are not a mask), or the test-time memories ttt_linear,
ttt_mlp, titans, moneta, yaad, memora (their state is a model trained by gradient steps on
the earlier tokens, whose read-out is not linear in each v_j with a score of q_i and k_j
alone).

A bidirectional layer is non-causal by definition: it has no `step`, and the state it returns
is the one it was given (nothing carries over to a next segment); `lengths` masks the padded
steps out of both directions, and packed sequences (cu_seqlens) are each read both ways on
their own.
"""

from __future__ import annotations

import functools

import torch

from rnnzoo.checks import flag
from rnnzoo.ops.chunk.linear import gated_linear_attention, gated_linear_attention_recurrent

__all__ = ["add_bidirectional_option", "lion", "lion_attention", "lion_forward"]


def _shift_reverse(g):
    """The backward recurrence's log-decays, in reversed time: step r = T - 1 - t decays by
    g_{t+1}; the first reversed step starts from zeros, its decay is 0."""
    g = g.flip(1)
    return torch.cat([torch.zeros_like(g[:, :1]), g[:, :-1]], 1)


def lion(q, k, v, log_decay=None, *, scale=1.0, chunk=True, chunk_size=64, bonus=None):
    """LION's forward + backward recurrences minus the diagonal. q, k: (B, T, H, K); v:
    (B, T, H, V); log_decay: None, (B, T, H) or (B, T, H, K); bonus: None or (H, K) (RWKV-6's
    u, see the module docstring). Returns o (B, T, H, V)."""
    op = functools.partial(gated_linear_attention, chunk_size=chunk_size) if chunk \
        else gated_linear_attention_recurrent
    kw = dict(scale=scale) if bonus is None else dict(scale=scale, bonus=bonus)
    o_f, _ = op(q, k, v, log_decay, **kw)
    # with a bonus each direction reads the state before its own write, so the decays between
    # i and j are those strictly between them in either direction: the reversed ones, unshifted
    g_b = None if log_decay is None else (
        log_decay.flip(1) if bonus is not None else _shift_reverse(log_decay))
    o_b, _ = op(q.flip(1), k.flip(1), v.flip(1), g_b, **kw)
    qk = q * k if bonus is None else q * bonus.to(k.dtype) * k
    diag = scale * qk.sum(-1, keepdim=True) * v
    return o_f + o_b.flip(1) - diag


def lion_attention(q, k, v, log_decay=None, *, scale=1.0):
    """The masked full-attention form o = scale (Q K^T o M) V with M_ij = exp(-|G_i - G_j|)
    (per key channel for a vector decay). Same shapes as `lion`; O(T^2) memory."""
    if log_decay is None:
        A = torch.einsum("bihk,bjhk->bhij", q, k)
    elif log_decay.dim() == 3:
        G = log_decay.cumsum(1).transpose(1, 2)                           # (B, H, T)
        A = torch.einsum("bihk,bjhk->bhij", q, k) * (-(G[..., :, None] - G[..., None, :]).abs()).exp()
    else:
        G = log_decay.cumsum(1)                                            # (B, T, H, K)
        M = (-(G[:, :, None] - G[:, None, :]).abs()).exp()                 # (B, i, j, H, K)
        A = torch.einsum("bihk,bjhk,bijhk->bhij", q, k, M)
    return scale * torch.einsum("bhij,bjhv->bihv", A, v)


def lion_forward(layer, x, state, mode, lengths=None):
    """A LION layer's forward: (y, the state it was given). mode: "sequential", "chunk" or
    "parallel" (see the module docstring); lengths (B,) masks padded steps out of both
    directions, and padded outputs are 0. A layer with `lion_second(o, x)` (two passes, GSA)
    gets a second bidirectional pass on the inputs it makes from the first pass's output."""
    valid = None
    if lengths is not None:
        valid = (torch.arange(x.shape[1], device=x.device) < lengths[:, None])[..., None]
        x = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))

    def run(q, k, v, g, scale, *bonus):
        bonus = bonus[0] if bonus else None
        if valid is not None:  # padded keys and values write nothing, in either direction
            m = valid[..., None].to(k.dtype)
            k, v = k * m, v * m
        if mode == "parallel":
            if bonus is not None:
                raise ValueError(f"{type(layer).__name__}: the parallel form of LION with a "
                                 "bonus is not implemented")
            return lion_attention(q, k, v, g, scale=scale)
        return lion(q, k, v, g, scale=scale, chunk=mode != "sequential",
                    chunk_size=getattr(layer, "chunk_size", 64), bonus=bonus)

    o = run(*layer.lion_inputs(x))
    if hasattr(layer, "lion_second"):
        o = run(*layer.lion_second(o, x))
    y = layer.lion_output(o, x)
    if valid is not None:
        y = torch.where(valid, y, torch.zeros((), dtype=y.dtype, device=y.device))
    return y, state


def add_bidirectional_option(cls):
    """Give cls's constructor the option `bidirectional` (default False) and the modes of a
    bidirectional reading; called by layers/base.py for every class with `lion_inputs`."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, bidirectional: bool = False, **kwargs):
        init(self, *args, **kwargs)
        self.bidirectional = flag("bidirectional", bidirectional)

    cls.__init__ = __init__
    # packed sequences (cu_seqlens) reach a layer through `_forward` (documents of equal
    # length as one batch) or `_forward_lengths` (a right-padded batch): both read both ways too
    fwd, fwd_lengths = cls._forward, cls._forward_lengths

    @functools.wraps(fwd)
    def _forward(self, x, state, mode):
        if self.bidirectional:
            return lion_forward(self, x, state, mode)
        return fwd(self, x, state, mode)

    @functools.wraps(fwd_lengths)
    def _forward_lengths(self, x, state, mode, lengths):
        if self.bidirectional:
            return lion_forward(self, x, state, mode, lengths)
        return fwd_lengths(self, x, state, mode, lengths)

    cls._forward, cls._forward_lengths = _forward, _forward_lengths
    return cls
