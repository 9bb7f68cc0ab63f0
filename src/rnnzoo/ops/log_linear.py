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
On the CPU (`backend.use_native`; `ops.flop_count.native`, so bench.layer_flops counts
this path) with every row at one count, the chunk form reads the
count and which buckets are non-zero on the host and runs `_aligned`: chunks on the grid of
multiples of 2^c, each reading only the Fenwick blocks of whole chunks that hold tokens
(popcount(chunk index) of them, not L - 1 dense slots). Elsewhere (CUDA, meta) no form
reads tensor values on the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rnnzoo.dtypes import state_dtype
from rnnzoo.ops import backend, first_order, flop_count
from rnnzoo.ops.chunk._common import causal_decay
from rnnzoo.ops.finite import clean_inputs, finite_inputs, marked, poison
from rnnzoo.ops.native import attention as native_attention
from rnnzoo.ops.native import log_linear as native_log_linear


def _levels(a: torch.Tensor, b: torch.Tensor, L: int) -> torch.Tensor:
    """min(number of bits of a XOR b, L - 1): the level of a token at b seen from a >= b."""
    x = torch.bitwise_xor(a, b)
    lev = torch.zeros_like(x)
    for bit in range(L - 1):
        lev = lev + (torch.bitwise_right_shift(x, bit) > 0).long()
    return lev


def _heads(t, H):
    """q or k (B, T, G, K) with G dividing H -> (B, T, H, K): group h // (H / G) to head h."""
    return t if t.shape[2] == H else t.repeat_interleave(H // t.shape[2], 2)


def _prepare(q, k, v, log_decay, level_weights, scale, initial_state, groups=False):
    """The inputs in the state dtype, q and k repeated to v's heads unless `groups`."""
    B, T, G, K = q.shape
    H, V = v.shape[2], v.shape[-1]
    if H % G or k.shape[2] != G:
        raise ValueError(f"q and k need the same number of heads (groups), dividing v's {H}; "
                         f"got {G} and {k.shape[2]}")
    if not groups:
        q, k = _heads(q, H), _heads(k, H)
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
    """The reference loop. q, k: (B, T, H, K) (or (B, T, G, K), a group shared by H / G
    heads); v: (B, T, H, V); log_decay: (B, T, H) or
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


def _fast_chunk(C, L):
    """The aligned chunk size of the CPU path: a power of two <= C and <= 2^(L - 2), so the
    levels inside a chunk stay under the top one (0 when there is none)."""
    c = min(C.bit_length() - 1, L - 2)
    return 1 << c if c >= 1 else 0


def _host_position(count, S, L):
    """(n0, the slots to read) from the host, or None when the batch rows' counts differ.
    The slots: the non-zero ones, or all when S needs a gradient (an empty slot has one)."""
    n = count.round().long() % (1 << (L - 1))
    if n.numel() == 0 or bool((n != n[0]).any()):
        return None
    if S.requires_grad:
        return int(n[0]), list(range(1, L))
    if not any(S.stride()):  # one value expanded (a fresh sequence's empty buckets)
        one = S.as_strided((1,), (1,))
        return int(n[0]), [] if bool(one.eq(0).all()) else list(range(1, L))
    # (L - 1,): a slot with a non-zero (or NaN) entry, from its largest and smallest entries
    # (NaN propagates; two vectorised passes over S ran ~4x faster than any(), whose bool
    # reduction is not vectorised)
    Sr = S.flatten(3)                                                   # (B, H, L - 1, K V)
    live = (Sr.amax(-1).ne(0) | Sr.amin(-1).ne(0)).flatten(0, 1).any(0).tolist()
    return int(n[0]), [i + 1 for i in range(L - 1) if live[i]]


def _lev(a: int, b: int, L: int) -> int:
    """_levels for Python ints."""
    return min((a ^ b).bit_length(), L - 1)


def _bmm(a, b):
    """a (..., n, k) @ b (..., k, m), same leading dims, as one batched product on 3-d views
    (a 5-d matmul copies a transposed operand, and its backward copies them again): mm.h's
    (ops.native.attention.bmm, any strides) where the C kernels run (`backend.use_native`:
    MKL's bmm takes its AVX2 code on AMD and ran the 64 x 64 x 64 blocks here at ~50
    GFLOP/s), else torch.bmm (also what bench.layer_flops counts, under backend.force)."""
    lib = native_attention.load() if backend.use_native(a, b) else None
    if lib is not None:
        return native_attention.bmm(lib, a, b)
    return torch.bmm(a.flatten(0, -3), b.flatten(0, -3)).unflatten(0, a.shape[:-2])


class _Intra(first_order.Function):
    """Inside each chunk: y = (Q K^T o W o D) V with W[t, s] = lam_t^(lev[t, s]) and D the
    causal decay e^(G_t - G_s) (s <= t). Heads first: q, k (B, H, N, C, K), v (.., V), G
    (B, H, N, C), lam (B, H, N, C, L), lev (C, C). Backward by hand (autograd ran ~11 passes
    over the (C, C) matrices of every chunk and copied them for the products):
        dA = dy V^T,  dV = A^T dy,  dQ = (dA o M) K,  dK = (dA o M)^T Q,  M = W o D,
        dW = dA o S o D (-> dlam by level),  dG_t = sum_s E[t, s] - sum_s E[s, t],
        E = dA o S o M,   S = Q K^T."""

    @staticmethod
    def forward(ctx, q, k, v, G, lam, lev):
        B, H, N, C, _ = q.shape
        D = causal_decay(G)
        M = torch.gather(lam, 4, lev.expand(B, H, N, C, C)).mul_(D)
        S = _bmm(q, k.transpose(-1, -2))
        A = S * M
        ctx.save_for_backward(q, k, v, S, A, M, D, lev, G, lam)
        ctx.L = lam.shape[-1]
        return _bmm(A, v)

    @staticmethod
    def backward(ctx, dy):
        q, k, v, S, A, M, D, lev = ctx.saved_tensors[:8]
        B, H, N, C, _ = q.shape
        dA = _bmm(dy, v.transpose(-1, -2))
        dv = _bmm(A.transpose(-1, -2), dy)
        dM = dA * S
        dS = dA.mul_(M)
        dq, dk = _bmm(dS, k), _bmm(dS.transpose(-1, -2), q)
        E = M * dM
        dG = E.sum(-1) - E.sum(-2)
        dlam = dM.new_zeros(B, H, N, C, ctx.L).scatter_add_(4, lev.expand(B, H, N, C, C),
                                                            dM.mul_(D))
        return dq, dk, dv, dG, dlam, None

    @staticmethod
    def twice(ctx, dy):
        q, k, v, lev, G, lam = (ctx.saved_tensors[i] for i in (0, 1, 2, 7, 8, 9))
        return first_order.replay(_intra, (q, k, v, G, lam, lev), (dy,), ctx.needs_input_grad)


def _intra(q, k, v, G, lam, lev):
    """_Intra's plain form (its `twice`)."""
    B, H, N, C, _ = q.shape
    M = torch.gather(lam, 4, lev.expand(B, H, N, C, C)) * causal_decay(G)
    return ((q @ k.transpose(-1, -2)) * M) @ v


def _block(qc, kc, vc, G, lamc, f, w, cP, cF, ip, lev):
    """The aligned chunk form's products in PyTorch on heads-first tensors (q, k, v, lam
    (B, H, N, C, .), the rest as `ops.native.log_linear.chunks_tm`'s; lev (C, C) the levels of
    the pairs inside a chunk) -> (y (B, H, N, C, V): the intra-chunk block plus the pairs'
    reads of the Fenwick blocks, the final buckets (B, H, L - 1, K, V))."""
    K, V = qc.shape[-1], vc.shape[-1]
    yc = _Intra.apply(qc, kc, vc, G, lamc, lev)                         # (B, H, N, C, V)
    U = _bmm((kc * f[..., None]).transpose(-1, -2), vc).flatten(3)      # (B, H, N, K V)
    if ip.numel():
        Hp = _bmm(cP, U).unflatten(-1, (K, V))                          # (B, H, P, K, V)
        yc = yc.index_add(2, ip, _bmm(qc.index_select(2, ip) * w[..., None], Hp))
    return yc, _bmm(cF, U).unflatten(-1, (K, V))                        # (B, H, L - 1, K, V)


def _native_plain(ip, N, check, q, k, v, u, G, lam, f, w, cP, cF, sk, wide, lp):
    """ops.native.log_linear.chunks_tm's node arguments (time-major q, k by group, v, u,
    lam) to `_block`: the plain form the node's `twice` differentiates. -> (y (B, Tp, H, V),
    the final buckets)."""
    B, Tp = q.shape[:2]
    H, L = v.shape[2], lam.shape[-1]
    C = Tp // N

    def heads_first(x):  # (B, Tp, H, .) -> (B, H, N, C, .)
        return x.transpose(1, 2).unflatten(2, (N, C))

    vs = v if u is None else v * u[..., None]
    qc, kc, vc, lamc = (heads_first(x) for x in (_heads(q, H), _heads(k, H), vs, lam))
    if w is None:  # the pairs' row weights lam[.., lp] e^G at each pair's chunk
        w = torch.gather(lamc.index_select(2, ip), 4,
                         lp[:, None, None].expand(B, H, ip.shape[0], C, 1))[..., 0]
        w = w * G.index_select(2, ip).exp()
    off = torch.arange(C, device=q.device)
    yc, Sfin = _block(qc, kc, vc, G, lamc, f, w, cP, cF, ip, _levels(off[:, None], off[None, :], L))
    y = yc.flatten(2, 3).transpose(1, 2)
    return (y if sk is None else y + sk[:, None] * v), Sfin


def _aligned(q, k, v, g, lam, scale, S, count, L, C, n0, live, u=None, check=False,
             skip=None):
    """The chunk form with the position n0 known on the host (the CPU path): chunks on the
    grid of multiples of C = 2^c counted from position 0, so a pair of tokens in different
    chunks I > J sits at level min(c + 1 + msb(I XOR J), L - 1), a Fenwick block of whole
    chunks per level. Each chunk reads only the blocks that hold tokens (popcount(I) of
    them, not L - 1 dense slots), each block's state a decayed sum of the chunk states; the
    initial buckets, linear in the output, are read only where non-zero (`live`).
    q, k may hold G groups of H / G heads (read in place by the C block, repeated elsewhere).
    u (B, T, H) or None: v's per-step scales (the tokens' values are u_t v_t), inside the C
    block's products where it runs, else applied to v here.
    skip (H,) or None: y also holds skip_h v_t (the unscaled v), added by the C block; only
    with `check` (the C block then runs, or None comes back).
    Returns (y (B, T, H, V), buckets, count); with `check` (inputs not checked on the host),
    None where the C block does not run or reports a non-finite input."""
    B, T, _, K = q.shape
    H = v.shape[2]
    c = C.bit_length() - 1
    dev = q.device
    end = n0 + T
    y = None
    # the initial buckets: slot l reads at level max(l, lev(a_t, n0)), decayed by e^{G_t}
    Sout = None  # the initial buckets moved to the end
    if live:
        G_all = g.cumsum(1)                                             # (B, T, H)
        lev0 = [_lev(n0 + t, n0, L) for t in range(T)]
        idx = torch.tensor([[max(s, lv) for s in live] for lv in lev0], device=dev)  # (T, nl)
        w0 = torch.gather(lam, 3, idx[None, :, None].expand(B, T, H, len(live)))
        w0 = w0 * G_all.exp()[..., None]
        sl = torch.tensor([s - 1 for s in live], device=dev)
        S_live = S.index_select(2, sl)                                   # (B, H, nl, K, V)
        y = torch.einsum("bthl,bthk,bhlkv->bthv", w0, _heads(q, H) * scale, S_live)
        # ... and at the end slot l moves to max(l, lev(end, n0)), decayed by e^{G_T}
        to = torch.tensor([max(s, _lev(end, n0, L)) - 1 for s in live], device=dev)
        moved = S_live * G_all[:, -1].exp()[:, :, None, None, None]
        Sout = torch.zeros_like(S).index_add(2, to, moved)
    # this call's tokens, from empty buckets, on the aligned grid, heads first (B, H, N, C, .)
    h0 = n0 % C
    N = -(-(h0 + T) // C)
    I0 = n0 >> c

    def chunks(x):  # (B, T, H, ...) -> (B, H, N, C, ...) in that order in memory: h0 zeros
        x = x.transpose(1, 2)  # before, zeros after T (F.pad keeps the strides of a view)
        if h0 or N * C > T:
            x = F.pad(x, [0, 0] * (x.dim() - 3) + [h0, N * C - h0 - T])
        return x.contiguous().unflatten(2, (N, C))

    def steps(x):  # (B, T, ...) -> (B, N C, ...) time-major: h0 zeros before, zeros after T
        if h0 or N * C > T:
            x = F.pad(x, [0, 0] * (x.dim() - 2) + [h0, N * C - h0 - T])
        return x

    qs = q if scale == 1 else q * scale
    G = chunks(g[..., None])[..., 0].cumsum(-1)                         # (B, H, N, C)
    gl = G[..., -1]                                                     # (B, H, N)
    off = torch.arange(C, device=dev)
    lib = native_log_linear.load() if backend.use_native(q, k, v, G, lam) else None
    if check and lib is None:
        return None
    if lib is None and u is not None:
        v, u = v * u[..., None], None
    if lib is not None:  # time-major, q and k by group, read in place by the C block
        qt, kt, vt, lamt = (steps(x) for x in (qs, k, v, lam))
        ut = None if u is None else steps(u[..., None])[..., 0]
    else:
        qc, kc, vc, lamc = (chunks(x) for x in (_heads(qs, H), _heads(k, H), v, lam))
    f = (gl[..., None] - G).exp()                       # (B, H, N, C): each step to its chunk's end
    # the (chunk, level) blocks that hold tokens of this call
    m_top = L - 2 - c
    pairs, rows = [], []
    for i in range(1, N):
        Ia = I0 + i
        for m in range(m_top):
            if Ia >> m & 1:
                j0, j1 = max(((Ia >> m) - 1 << m) - I0, 0), min((Ia >> m << m) - I0, i)
                if j1 > j0:
                    pairs.append((i, c + 1 + m))
                    rows.append([float(j0 <= j < j1) for j in range(N)])
        j1 = min((Ia >> m_top << m_top) - I0, i)
        if j1 > 0:
            pairs.append((i, L - 1))
            rows.append([float(j < j1) for j in range(N)])
    P = len(pairs)
    ip = torch.tensor([p[0] for p in pairs], dtype=torch.long, device=dev)
    if pairs:
        mask = torch.tensor(rows, dtype=q.dtype, device=dev)             # (P, N)
        lp = torch.tensor([p[1] for p in pairs], device=dev)
        # segment sums: D[I, J] = sum_{J < r < I} gl_r, from a masked cumulative sum
        keep = torch.ones(N, N, dtype=torch.bool, device=dev).tril(-1)   # r > J
        cs = gl[..., :, None].expand(B, H, N, N).masked_fill(~keep, 0).cumsum(-2)
        cP = cs.index_select(2, ip - 1).exp() * mask                     # (B, H, P, N)
        if lib is not None:  # the C block makes w = lam[.., lp] e^G at each pair's chunk
            w = None          # itself (no indexed copy of lam and scatter back each way)
        else:
            lam_p = torch.gather(lamc.index_select(2, ip), 4,
                                 lp[:, None, None].expand(B, H, P, C, 1))[..., 0]
            w = lam_p * G.index_select(2, ip).exp()                      # (B, H, P, C)
    else:
        cP, w = G.new_zeros(B, H, 0, N), G.new_zeros(B, H, 0, C)
    # the final buckets: whole chunks before end's chunk by their level, end's own chunk
    # (when end is not on the grid) token by token
    Ie, e_off = end >> c, end % C
    fin = [[0.0] * N for _ in range(L - 1)]
    for j in range(N if e_off == 0 else N - 1):
        fin[min(c + (Ie ^ (I0 + j)).bit_length(), L - 1) - 1][j] = 1.0
    fin = torch.tensor(fin, dtype=q.dtype, device=dev)
    after = gl.flip(-1).cumsum(-1).flip(-1) - gl                         # sum_{r > J} gl_r
    cF = after.exp()[:, :, None] * fin                                   # (B, H, L - 1, N)
    if lib is not None:  # the whole block in C, the levels from the offsets (ops.native.log_linear)
        yc, Sfin, *bad = native_log_linear.chunks_tm(lib, ip, qt, kt, vt, G, lamt, f, w, cP, cF,
                                                     ut, check=check,
                                                     skip=None if skip is None else
                                                     skip.to(vt.dtype),
                                                     lp=lp if w is None else None,
                                                     plain=_native_plain)
        if bad and bool(bad[0].isnan().any()):
            return None
        yc = yc[:, h0:h0 + T]  # (B, T, H, V)
    else:
        lev = _levels(off[:, None], off[None, :], L)                    # (C, C), <= c
        yc, Sfin = _block(qc, kc, vc, G, lamc, f, w, cP, cF, ip, lev)
        yc = yc.flatten(2, 3)[:, :, h0:h0 + T].transpose(1, 2)
    y = yc if y is None else y + yc
    Sout = Sfin if Sout is None else Sout + Sfin
    if e_off:
        if lib is not None:  # the last chunk's k and v, heads first (B, H, C, .)
            vl = vt[:, -C:] if ut is None else vt[:, -C:] * ut[:, -C:, :, None]
            kl, vl = _heads(kt[:, -C:], H).transpose(1, 2), vl.transpose(1, 2)
        else:
            kl, vl = kc[:, :, -1], vc[:, :, -1]
        kl = kl * (gl[..., -1, None] - G[:, :, -1]).exp()[..., None]  # (B, H, C, K)
        s = 0
        while s < e_off:  # offsets with the same level seen from e_off form one run
            lv = _lev(e_off, s, L)
            s1 = s
            while s1 < e_off and _lev(e_off, s1, L) == lv:
                s1 += 1
            part = _bmm(kl[:, :, s:s1].transpose(-1, -2), vl[:, :, s:s1])  # (B, H, K, V)
            Sout = Sout.index_add(2, torch.tensor([lv - 1], device=dev), part[:, :, None])
            s = s1
    return y, Sout, torch.full_like(count, end % (1 << (L - 1)))


def log_linear_attention(q, k, v, log_decay, level_weights, *, scale=None,
                         initial_state=None, chunk_size=64, v_scale=None, skip=None):
    """Chunkwise log-linear attention; same arguments and returns as the recurrent form, and
    v_scale (B, T, H) or None: the values are v * v_scale[..., None] (Mamba-2's v = dt x),
    scaled inside the C block's products where it runs (no scaled copy of v each way).
    skip (H,) or None: the output also holds skip_h v_t (the unscaled v: Mamba-2's D x), added
    inside the C block where it runs (no (B, T, H, V) add and gradient sum each way), else here.
    A non-finite input at step t makes outputs from t on NaN, never earlier ones (ops.finite)."""
    v0 = v
    read, write = (q, level_weights), (k, v, log_decay, v_scale)
    if backend.use_native(q, k, v, log_decay, level_weights):
        # the C block checks its own inputs while they are in cache: no host pass over them
        # unless it does not run or finds a non-finite one; then no zeroed copies unless some
        # step is not finite (one host read)
        out = _chunk_form(*read, *write, scale, initial_state, chunk_size, None, True, skip)
        if out is not None:
            return out
        (q, level_weights), (k, v, log_decay, v_scale), marks = clean_inputs(read, write)
    else:
        (q, level_weights), (k, v, log_decay, v_scale), marks = finite_inputs(read, write)
    y, state = _chunk_form(q, level_weights, k, v, log_decay, v_scale, scale, initial_state,
                           chunk_size, marks, False)
    if skip is not None:
        y = y + skip[:, None].to(y.dtype) * v0
    return y, state


def _chunk_form(q, level_weights, k, v, log_decay, u, scale, initial_state, chunk_size, marks,
                check, skip=None):
    """`log_linear_attention` on inputs made finite (ops.finite's marks, or None: all finite)
    or, with `check`, not checked yet: then only the C block runs (it reports a non-finite
    input itself), and None comes back where it does not run or finds one. skip: only with
    `check` (see `log_linear_attention`)."""
    q, k, v, g, lam, scale, S, count, L = _prepare(q, k, v, log_decay, level_weights, scale,
                                                   initial_state, groups=True)
    u = None if u is None else u.to(v.dtype)
    T, H = q.shape[1], v.shape[2]
    n = count.round().long() % (1 << (L - 1))  # any float count reads as a position
    if T == 0:
        return v.new_zeros(v.shape), (S, count)
    C = _fast_chunk(min(chunk_size, T), L)
    pos = _host_position(count, S, L) if C and flop_count.native(q, S) else None
    if check and pos is None:
        return None
    if pos is not None:
        out = _aligned(q, k, v, g, lam, scale, S, count, L, C, *pos, u=u, check=check,
                       skip=skip)
        if out is None:
            return None
        y, S, count = out
        y, S = marked(y, S, marks)
        return y, (S, count)
    if u is not None:
        v = v * u[..., None]
    y, S, n = _chunked(_heads(q, H), _heads(k, H), v, g, lam, scale, S, n, L,
                       min(chunk_size, T))
    y, S = marked(y, S, marks)
    return y, (S, n.to(count.dtype))


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
