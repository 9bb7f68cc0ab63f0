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
import torch.nn.functional as F

from rnnzoo.dtypes import state_dtype
from rnnzoo.ops.chunk._common import causal_decay
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


def _chunked(q, k, v, g, lam, scale, S, n, L, C):
    """All chunks of C steps from the buckets S at count n: (y (B, T, H, V), S', n').
    The intra-chunk matrices and the state updates are computed for every chunk at once;
    only the carry of the (L - 1) buckets from chunk to chunk is a loop."""
    B, T, H, K = q.shape
    N = -(-T // C)
    pad = N * C - T

    def chunks(x):  # (B, T, ...) -> (B, N, C, ...), zeros after T (no write, no decay)
        return F.pad(x, [0, 0] * (x.dim() - 2) + [0, pad]).unflatten(1, (N, C))

    qc, kc, vc, gc, lamc = (chunks(x) for x in (q * scale, k, v, g, lam))
    t = torch.arange(N * C, device=q.device).view(N, C)
    a = n[:, None, None] + t                                            # (B, N, C) positions
    G = gc.cumsum(2)                                                    # (B, N, C, H)
    lamh = lamc.transpose(2, 3)                                         # (B, N, H, C, L)
    # intra-chunk: the masked matrix with each pair's level weight
    lev = _levels(a[..., :, None], a[..., None, :], L)                  # (B, N, C, C)
    w = torch.gather(lamh, 4, lev[:, :, None].expand(B, N, H, C, C))
    Gh = G.transpose(2, 3)                                              # (B, N, H, C)
    decay = causal_decay(Gh)
    A = torch.einsum("bnthk,bnshk->bnhts", qc, kc) * w * decay
    y = torch.einsum("bnhts,bnshv->bnthv", A, vc)
    # each chunk's end (the last real step for the last chunk), its decay and its writes
    slots = torch.arange(1, L, device=q.device)
    end = n[:, None] + torch.arange(1, N + 1, device=q.device).mul(C).clamp(max=T)  # (B, N)
    start = n[:, None] + torch.arange(N, device=q.device) * C          # (B, N)
    gl = G[:, :, -1]                                                    # (B, N, H)
    lev_tok = _levels(end[:, :, None], a, L)                            # (B, N, C), >= 1 real
    onehot = (lev_tok[..., None] == slots).to(S.dtype)                  # (B, N, C, L - 1)
    kd = kc * (gl[:, :, None] - G).exp()[..., None]
    updates = torch.einsum("bnsl,bnshk,bnshv->bnhlkv", onehot, kd, vc)
    # old slot l moves to max(l, lev(end, start)) at each chunk's end
    lev_end = _levels(end, start, L)                                    # (B, N)
    move = (torch.maximum(slots, lev_end[..., None])[:, :, None, :]
            == slots[:, None]).to(S.dtype)                              # (B, N, new, old)
    starts = []
    for i in range(N):
        starts.append(S)
        S = torch.einsum("bml,bhlkv->bhmkv", move[:, i], S) \
            * gl[:, i].exp()[..., None, None, None] + updates[:, i]
    S0 = torch.stack(starts, 1)                                         # (B, N, H, L-1, K, V)
    # the carried buckets: slot l reads at level max(l, lev(a_t, start))
    lev0 = _levels(a, start[..., None], L)                              # (B, N, C)
    lev_s = torch.maximum(slots, lev0[..., None])                       # (B, N, C, L - 1)
    ws = torch.gather(lamc, 4, lev_s[:, :, :, None].expand(B, N, C, H, L - 1))
    ws = ws * G.exp()[..., None]                                        # (B, N, C, H, L - 1)
    y = y + torch.einsum("bnthl,bnthk,bnhlkv->bnthv", ws, qc, S0)
    return y.flatten(1, 2)[:, :T], S, end[:, -1] % (1 << (L - 1))


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
    if T == 0:
        return v.new_zeros(v.shape), (S, count)
    y, S, n = _chunked(q, k, v, g, lam, scale, S, n, L, min(chunk_size, T))
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
    y, S, n = _chunked(q, k, v, g, lam, scale, S, n, L, q.shape[1])
    return poison(y, marks.outputs), (poison(S, marks.state), n.to(count.dtype))
