"""Log-linear attention (Guo et al. 2025, arXiv:2506.04761) over gated linear attention.

The prefix s <= t of step t is split into Fenwick-tree buckets: with a_t the position of
step t, token s sits at level

    lev(a_t, a_s) = min(1 + msb(a_t XOR a_s), L - 1)    (0 for s = t, the token itself)

so step t sees popcount(a_t) + 1 buckets of sizes 1, 2, 4, ... (the set bits of a_t),
and the top level L - 1 keeps everything older than the lower levels cover (it is the
exact Fenwick bucket while a_t < 2^(L - 1)). Each level has its own weight per step:

    y_t = scale * sum_{s <= t} lambda_t^(lev(a_t, a_s)) exp(G_t - G_s) (q_t . k_s) v_s,
    G_t = sum_{r <= t} log_decay_r,

i.e. y_t = sum_l lambda_t^(l) q_t . S_t^(l) with one gated-linear-attention state per
level. With all lambda equal to 1 this is gated linear attention (Mamba-2's SSD).

State: `buckets` (B, H, L - 1, K, V), the stored levels 1 .. L - 1 (float32, or float64 for
float64 input), and `count` (B,), the number of steps taken modulo 2^(L - 1) (levels only
compare positions below bit L - 1; the top level absorbs any carry above), held as a float
(exact: L <= 25). Between steps slot l is non-empty only where bit l - 1 of the count is
set (popcount(count) live buckets), until the top level saturates.

Three forms, equal up to rounding:
- `log_linear_attention_recurrent`: token by token; the new token and the buckets under the
  count's trailing one bits merge into one bucket, as a binary counter carries.
- `log_linear_attention`: chunkwise; a masked matrix inside each chunk, and the buckets
  carried between chunks (bucket l reads at level max(l, lev(a_t, count))).
- `log_linear_attention_parallel`: the whole masked T x T matrix (the paper's H o QK^T).
No form reads tensor values on the host.
"""

from __future__ import annotations

import torch

from rnnzoo.dtypes import state_dtype
from rnnzoo.ops.finite import finite_inputs, poison


def _levels(a: torch.Tensor, b: torch.Tensor, L: int) -> torch.Tensor:
    """min(number of bits of a XOR b, L - 1): the level of a token at b seen from a >= b."""
    x = torch.bitwise_xor(a, b)
    lev = torch.zeros_like(x)
    for bit in range(L - 1):
        lev = lev + (torch.bitwise_right_shift(x, bit) > 0).long()
    return lev


def _prepare(q, k, v, log_decay, level_weights, scale, initial_state, L_from=None):
    B, T, H, K = q.shape
    V = v.shape[-1]
    L = level_weights.shape[-1]
    if L < 2:
        raise ValueError(f"level_weights needs at least 2 levels in its last dim, got {L}")
    dt = state_dtype(q.dtype)
    if initial_state is None:
        buckets = q.new_zeros(B, H, L - 1, K, V, dtype=dt)
        count = q.new_zeros(B, dtype=dt)
    else:
        buckets, count = initial_state
        buckets, count = buckets.to(dt), count.to(dt)
    scale = K ** -0.5 if scale is None else scale
    if log_decay is None:
        log_decay = q.new_zeros(B, T, H)
    cast = [t.to(dt) for t in (q, k, v, log_decay, level_weights)]
    return (*cast, float(scale), buckets, count, L)


def log_linear_attention_recurrent(q, k, v, log_decay, level_weights, *, scale=None,
                                   initial_state=None):
    """The reference loop. q, k: (B, T, H, K); v: (B, T, H, V); log_decay: (B, T, H) or
    None (<= 0); level_weights: (B, T, H, L), lambda_t^(l) for l = 0 .. L - 1;
    initial_state: (buckets (B, H, L - 1, K, V), count (B,)) or None.
    Returns y (B, T, H, V) in the state dtype and the final (buckets, count)."""
    q, k, v, g, lam, scale, S, count, L = _prepare(q, k, v, log_decay, level_weights, scale,
                                                   initial_state)
    T = q.shape[1]
    n = count.round().long() % (1 << (L - 1))  # any float count reads as a position
    slots = torch.arange(1, L, device=q.device)
    period = 1 << (L - 1)
    ys = []
    for t in range(T):
        S = S * g[:, t].exp()[:, :, None, None, None]
        qt = q[:, t] * scale                                            # (B, H, K)
        read = torch.einsum("bhk,bhlkv->bhlv", qt, S)
        own = (qt * k[:, t]).sum(-1, keepdim=True) * v[:, t]            # (B, H, V)
        ys.append(lam[:, t, :, 0, None] * own + (lam[:, t, :, 1:, None] * read).sum(2))
        # binary-counter carry: slots 1..j (the trailing one bits of n) and the token merge
        bits = (torch.bitwise_right_shift(n[:, None], slots - 1) & 1).long()   # (B, L - 1)
        merge = bits.cumprod(-1)                                        # 1 on slots <= j
        target = (merge.sum(-1) + 1).clamp(max=L - 1)                   # (B,)
        onehot = (slots == target[:, None]).to(S.dtype)
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]                  # (B, H, K, V)
        m = merge.to(S.dtype)[:, None, :, None, None]
        merged = kv + (S * m).sum(2)
        S = S * (1 - m) + onehot[:, None, :, None, None] * merged[:, :, None]
        n = (n + 1) % period
    return torch.stack(ys, 1), (S, n.to(count.dtype))


def _chunk_step(q, k, v, g, lam, scale, S, n, L, period):
    """One chunk of c steps from the buckets S at count n: (y (B, c, H, V), S', n')."""
    B, c, H, K = q.shape
    t = torch.arange(c, device=q.device)
    a = n[:, None] + t                                                  # (B, c) positions
    G = g.cumsum(1)                                                     # (B, c, H)
    lamh = lam.permute(0, 2, 1, 3)                                      # (B, H, c, L)
    # intra-chunk: the masked matrix with each pair's level weight
    lev = _levels(a[:, :, None], a[:, None, :], L)                      # (B, c, c)
    causal = t[:, None] >= t[None, :]
    w = torch.gather(lamh, 3, lev[:, None].expand(B, H, c, c))
    diff = (G.permute(0, 2, 1)[..., :, None] - G.permute(0, 2, 1)[..., None, :])
    decay = diff.masked_fill(~causal, float("-inf")).exp()              # (B, H, c, c)
    qk = torch.einsum("bthk,bshk->bhts", q, k) * scale
    y = torch.einsum("bhts,bshv->bthv", qk * w * decay, v)
    # the carried buckets: slot l reads at level max(l, lev(a_t, n))
    slots = torch.arange(1, L, device=q.device)
    lev0 = _levels(a, n[:, None], L)                                    # (B, c)
    lev_s = torch.maximum(slots, lev0[:, :, None])                      # (B, c, L - 1)
    ws = torch.gather(lamh, 3, lev_s[:, None].expand(B, H, c, L - 1))   # (B, H, c, L - 1)
    ws = ws * G.permute(0, 2, 1).exp()[..., None]
    read = torch.einsum("bthk,bhlkv->bthlv", q * scale, S)
    y = y + (ws.permute(0, 2, 1, 3)[..., None] * read).sum(3)
    # the buckets at count n + c: old slot l moves to max(l, lev(n + c, n)), token s to
    # lev(n + c, a_s)
    end = n + c
    lev_end = _levels(end[:, None], n[:, None], L)                      # (B, 1)
    move = (torch.maximum(slots, lev_end)[:, None, :] == slots[:, None]).to(S.dtype)
    gl = G[:, -1]                                                       # (B, H)
    S = torch.einsum("bml,bhlkv->bhmkv", move, S) * gl.exp()[:, :, None, None, None]
    lev_tok = _levels(end[:, None], a, L)                               # (B, c), >= 1
    onehot = (lev_tok[:, :, None] == slots).to(S.dtype)                 # (B, c, L - 1)
    kd = k * (gl[:, None] - G).exp()[..., None]
    S = S + torch.einsum("bsl,bshk,bshv->bhlkv", onehot, kd, v)
    return y, S, end % period


def log_linear_attention(q, k, v, log_decay, level_weights, *, scale=None,
                         initial_state=None, chunk_size=64):
    """Chunkwise log-linear attention; same arguments and returns as the recurrent form.
    A non-finite input at step t makes outputs from t on NaN, never earlier ones (ops.finite)."""
    (q, level_weights), (k, v, log_decay), marks = finite_inputs((q, level_weights),
                                                                 (k, v, log_decay))
    q, k, v, g, lam, scale, S, count, L = _prepare(q, k, v, log_decay, level_weights, scale,
                                                   initial_state)
    T = q.shape[1]
    n = count.round().long() % (1 << (L - 1))  # any float count reads as a position
    ys = []
    for i in range(0, T, chunk_size):
        sl = slice(i, i + chunk_size)
        y, S, n = _chunk_step(q[:, sl], k[:, sl], v[:, sl], g[:, sl], lam[:, sl], scale, S, n,
                              L, 1 << (L - 1))
        ys.append(y)
    y = torch.cat(ys, 1) if ys else v.new_zeros(v.shape)
    return poison(y, marks.outputs), (poison(S, marks.state), n.to(count.dtype))


def log_linear_attention_parallel(q, k, v, log_decay, level_weights, *, scale=None,
                                  initial_state=None):
    """The whole sequence as one chunk (the T x T masked matrix); same arguments and returns,
    and the same non-finite handling as the chunk form."""
    (q, level_weights), (k, v, log_decay), marks = finite_inputs((q, level_weights),
                                                                 (k, v, log_decay))
    q, k, v, g, lam, scale, S, count, L = _prepare(q, k, v, log_decay, level_weights, scale,
                                                   initial_state)
    n = count.round().long() % (1 << (L - 1))  # any float count reads as a position
    if q.shape[1] == 0:
        return v.new_zeros(v.shape), (S, count)
    y, S, n = _chunk_step(q, k, v, g, lam, scale, S, n, L, 1 << (L - 1))
    return poison(y, marks.outputs), (poison(S, marks.state), n.to(count.dtype))
