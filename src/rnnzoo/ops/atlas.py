"""ATLAS's memory update (Behrouz et al. 2025, "ATLAS: Learning to Optimally Memorize the
Context at Test Time", arXiv:2505.23735, sections 3-5): the Omega rule, polynomial feature
maps and the Muon (Newton-Schulz) step, on the memory engine of ops/memory.py (its inner
models, gradients, chunk-start gradient point and state layout are Titans').

The Omega rule fits the memory to the last `window` = c tokens, each weighed by its gate
gamma_i, instead of the current token alone; with g_t the gradient of that window loss at
the weights M' the current chunk (of C steps) started from,

    g_t = grad sum_{i = t-c+1}^{t} gamma_i 1/2 |M'(phi(k_i)) - v_i|^2
    S_t = eta_t S_t-1 - theta_t g_t,            M_t = (1 - alpha_t) M_t-1 + S_t              (OmegaNet)
    S_t = eta_t S_t-1 - g_t,                     M_t = (1 - alpha_t) M_t-1 + theta_t NS(S_t)  (Atlas, muon)
    z_t = M_t(phi(q_t))

phi is the identity or a polynomial feature map of ops/feature_maps.py ("taylor": [1, x,
x x^T / sqrt 2], "square": x x^T), so the memory's input is F wide. NS is Muon's quintic
Newton-Schulz iteration (Jordan et al. 2024), X <- a X + (b A + c A^2) X with A = X X^T,
(a, b, c) = (3.4445, -4.7750, 2.0315), from X = S / |S|_F: it pushes every singular value
of S towards 1 (approximately orthogonal), keeping its singular vectors. The memory is
weight-only (one dense layer or the GELU MLP). With c = 1 and no muon the rule is Titans'
(`titans_step`) on the same tensors. State: (M' per weight, M, S, n, and the last c - 1
tokens' k, v, gamma). `atlas_sequential` is the reference; `atlas_chunked` is the same
recurrence a chunk at a time: the gradients are taken at the chunk start, so every S_t of a
chunk is linear in known window gradients (Newton-Schulz, nonlinear, then applies to each S_t
on its own, all of them at once) and M_t is a decayed cumulative sum of them.
"""

from __future__ import annotations

from functools import partial

import torch
from torch.utils.checkpoint import checkpoint

from rnnzoo.ops import backend, first_order
from rnnzoo.ops.feature_maps import feature_size, features
from rnnzoo.ops.finite import finite_inputs, poison
from rnnzoo.ops.memory import _dense, _gelu, _grads, _outer, _pick, _ratios, _titans_roll
from rnnzoo.ops.native import atlas_scan
from rnnzoo.ops.native import newton_schulz as native_ns

__all__ = ["newton_schulz", "atlas_init_state", "atlas_step", "atlas_sequential",
           "atlas_chunked"]

MUON = (3.4445, -4.7750, 2.0315)


def newton_schulz(G: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration on the last two dims of G (..., I, O): an
    approximately orthogonal matrix with G's singular vectors.

    On X (s x l, the short side first) each step is X <- P X with P = a + b A + c A^2 a
    polynomial in A = X X^T, so the next A is P A P and the result is P_4 ... P_0 X_0: when
    l >= 2 s the steps run on the s x s Gram matrix (two s x s x l products in all instead of
    two a step; |X_0|_F^2 is its trace)."""
    a, b, c = MUON
    wide = G.shape[-2] > G.shape[-1]
    X = G.transpose(-1, -2) if wide else G              # iterate on the short side
    short, long_ = X.shape[-2:]
    if long_ < 2 * short:
        X = X / (torch.linalg.matrix_norm(X, keepdim=True) + eps)
        for _ in range(steps):
            A = X @ X.transpose(-1, -2)
            X = a * X + (b * A + c * A @ A) @ X
        return X.transpose(-1, -2) if wide else X
    lib = native_ns.load() if backend.use_native(X) else None
    if lib is not None:  # the whole iteration in C (ops.native.newton_schulz)
        X = native_ns.newton_schulz(lib, X.reshape(-1, short, long_), steps, MUON, eps)
        X = X.view(*G.shape[:-2], short, long_)
        return X.transpose(-1, -2) if wide else X
    # the same Gram form in PyTorch (the C node's `twice` replays it too)
    X = native_ns._torch_newton_schulz(X.reshape(-1, short, long_), steps, MUON, eps)
    X = X.view(*G.shape[:-2], short, long_)
    return X.transpose(-1, -2) if wide else X


def phi(x, feature_map):
    return x if feature_map is None else features(x, feature_map)


def atlas_init_state(kind, B, H, K, window, feature_map=None, device=None,
                     dtype=torch.float32):
    """Zeros: (M'_1.., M_1.., S_1.., n) and, for a window c > 1, the last c - 1 tokens'
    (k_buf (B, c-1, H, K), v_buf, gamma_buf (B, c-1, H))."""
    F_ = K if feature_map is None else feature_size(feature_map, K)
    widths = [F_, K] if kind == "linear" else [F_, 4 * K, K]
    W = [torch.zeros(B, H, i, o, device=device, dtype=dtype)
         for i, o in zip(widths[:-1], widths[1:])]
    buf = torch.zeros(B, window - 1, H, K, device=device, dtype=dtype)
    bufs = (buf, buf.clone(), buf[..., 0].clone()) if window > 1 else ()
    return (*W, *[w.clone() for w in W], *[w.clone() for w in W],
            torch.zeros(B, device=device, dtype=dtype), *bufs)


def _with_biases(Ws):
    """Weight-only layers as the (W, b) list of ops.memory's engine (zero biases)."""
    return [t for W in Ws for t in (W, torch.zeros_like(W[..., 0, :]))]


def atlas_step(kind, q_t, k_t, v_t, theta_t, alpha_t, eta_t, gamma_t, C, init, state,
               feature_map=None, muon=False, ns_steps=5):
    """One step. q_t, k_t, v_t (B, H, K); theta_t, alpha_t, eta_t, gamma_t (B, H); C the chunk
    size; init the learned initial weights [(H, I, O), ...]. Returns (z_t (B, H, K), state)."""
    L = len(init)
    Pg, Mc, S = list(state[:L]), list(state[L:2 * L]), list(state[2 * L:3 * L])
    n0, bufs = state[3 * L], state[3 * L + 1:]
    kb, vb, gb = bufs if bufs else (t[:, None][:, :0] for t in (k_t, v_t, gamma_t))
    Pg, n = _titans_roll(Pg, Mc, n0, C)
    keys = torch.cat([kb, k_t[:, None]], 1).transpose(1, 2)             # (B, H, c, K)
    vals = torch.cat([vb, v_t[:, None]], 1).transpose(1, 2)
    gam = torch.cat([gb, gamma_t[:, None]], 1).transpose(1, 2)[..., None]
    P = _with_biases([w0.to(p.dtype) + p for w0, p in zip(init, Pg)])
    Xs, Gs = _grads(kind, P, phi(keys, feature_map), vals, None, None, 0.0, False,
                    residual=False)
    g = _outer(Xs, [G * gam for G in Gs])[::2]                         # the window's gradient
    e, a, th = (t[..., None, None] for t in (eta_t, 1 - alpha_t, theta_t))
    if muon:
        S = [e * s - gr for s, gr in zip(S, g)]
        Mc = [a * m + th * newton_schulz(s, ns_steps) for m, s in zip(Mc, S)]
    else:
        S = [e * s - th * gr for s, gr in zip(S, g)]
        Mc = [a * m + s for m, s in zip(Mc, S)]
    z = _dense([w0.to(m.dtype) + m for w0, m in zip(init, Mc)], phi(q_t, feature_map))
    shift = lambda buf, new: torch.cat([buf, new[:, None]], 1)[:, 1:]  # noqa: E731
    bufs = (shift(kb, k_t), shift(vb, v_t), shift(gb, gamma_t)) if bufs else ()
    return z, (*Pg, *Mc, *S, (n + 1).to(n0.dtype), *bufs)


SEGMENT = 16  # steps per checkpointed segment of atlas_sequential


def _steps(kind, q, k, v, theta, alpha, eta, gamma, C, init, state, feature_map, muon,
           ns_steps):
    zs = []
    for t in range(q.shape[1]):
        z, state = atlas_step(kind, q[:, t], k[:, t], v[:, t], theta[:, t], alpha[:, t],
                              eta[:, t], gamma[:, t], C, init, state, feature_map, muon,
                              ns_steps)
        zs.append(z)
    return torch.stack(zs, 1), state


def atlas_sequential(kind, q, k, v, theta, alpha, eta, gamma, C, init, state, feature_map=None,
                     muon=False, ns_steps=5):
    """The reference: atlas_step over time. q, k, v (B, T, H, K); gates (B, T, H).

    Under autograd the steps run in segments of SEGMENT under activation checkpointing: the
    graph keeps the state entering each segment and recomputes the segment in backward (the
    same values and gradients). Kept whole, it holds every step's weights, window products
    and Newton-Schulz iterates: 55 MB a step at B=16, d_model 128 (3507 MB saved at T=64,
    and at T=512 a process killed at 23 GB); in segments 12 MB at T=64, plus one segment
    recomputed at a time in backward."""
    T = q.shape[1]
    # not under torch.func, which refuses the checkpoint's saved-tensor hooks
    if T <= SEGMENT or not torch.is_grad_enabled() or backend.transforming():
        return _steps(kind, q, k, v, theta, alpha, eta, gamma, C, init, state, feature_map,
                      muon, ns_steps)
    zs = []
    for t0 in range(0, T, SEGMENT):
        part = [x[:, t0:t0 + SEGMENT] for x in (q, k, v, theta, alpha, eta, gamma)]
        z, state = checkpoint(_steps, kind, *part, C, init, state, feature_map, muon,
                              ns_steps, use_reentrant=False)
        zs.append(z)
    return torch.cat(zs, 1), state


def _short_first(W):
    """(..., I, O) as (..., s, l), the short side first (a transposed view when I > O)."""
    return W.transpose(-1, -2) if W.shape[-2] > W.shape[-1] else W


def _pack(Ws):
    """The weights' short-side-first forms, flattened, side by side: (..., N)."""
    return torch.cat([_short_first(W).flatten(-2) for W in Ws], -1)


def _unpack(t, shapes):
    """Views of a packed (..., N) tensor as weights of `shapes` [(I, O), ...]: (..., I, O)
    each (a transposed view where I > O)."""
    out = []
    for part, (i, o) in zip(t.split([i * o for i, o in shapes], -1), shapes):
        w = part.unflatten(-1, (min(i, o), max(i, o)))
        out.append(w.transpose(-1, -2) if i > o else w)
    return out


def _newton_schulz_packed(St, shapes, steps):
    """newton_schulz of each weight's part of a packed (..., N) momentum: one call on the
    whole tensor when every weight has one short-first shape (the MLP memory's (F, 4K) and
    (4K, K) momenta, both K x 4K for F = K)."""
    forms = {(min(i, o), max(i, o)) for i, o in shapes}
    if len(forms) == 1:
        ((short, long_),) = forms
        return newton_schulz(St.reshape(-1, short, long_), steps).view(St.shape)
    return _pack([newton_schulz(u, steps) for u in _unpack(St, shapes)])


class _Chunks(first_order.Function):
    """Chunks of atlas_chunked on the CPU kernels (ops.native.atlas_scan, newton_schulz),
    forward and backward by hand: one autograd node for a run of chunks instead of ~40 a
    chunk. Inputs chunk-major and contiguous: fk (n, B, H, C + W1, F), v (n, B, H, C + W1, K),
    gamma (n, B, H, C + W1), q (n, B, H, C, F), the steps' e, w, a, c (n, B, H, C); the packed
    M and S (B, H, N) before the first chunk; then the initial weights W0 [(H, I, O)] (one or
    two) and the gradient point Pg [(B, H, I, O)]. Returns z (n, B, H, C, O) and the packed
    M and S after every chunk (n, B, H, N). A chunk: the window gradients at W0 + Pg
    (atlas_scan.grads_fwd, `_grads` with residual=False and no biases, written out; for the
    MLP Z1 = k P1, X2 = gelu(Z1), G = X2 P2 - v, G1 = (G P2^T) gelu'(Z1)), the momenta,
    Newton-Schulz, the memories with their reads; the backward runs the chunks back."""

    @staticmethod
    def forward(ctx, cfg, fk, v, g, q, e, w, a, c, M0, S0, *wp):
        orig = (fk, v, g, q, e, w, a, c, M0, S0, *wp)  # for `twice` (copies: no history)
        lib, ns_lib, W1, muon, ns_args, shapes = cfg
        n, L = e.shape[0], len(shapes)
        W0 = [t.contiguous() for t in wp[:L]]
        W01, W02 = W0[0], (W0[1] if L == 2 else None)
        s, l_ = min(shapes[0]), max(shapes[0])
        Mall, Sall = M0.new_empty(n, *M0.shape), S0.new_empty(n, *S0.shape)
        z = q.new_empty(*e.shape, shapes[-1][1])
        Pg0 = _pack(wp[L:])
        Mp, Sp, keep = M0.contiguous(), S0.contiguous(), []
        for j in range(n):
            out = atlas_scan.grads_fwd(lib, Mall[j - 1] if j else Pg0, W01, W02, fk[j], v[j],
                                       g[j])
            saved, Xs, Gs = (out[:5], (fk[j], out[1]), out[5:]) if L == 2 else \
                (out[:1], (fk[j],), out[1:])
            pairs = [t for X, G_, (i, o) in zip(Xs, Gs, shapes)
                     for t in ((G_, X) if i > o else (X, G_))]
            St, Sp = atlas_scan.mom_fwd(lib, W1, Sp, e[j], w[j], *pairs, Slast=Sall[j])
            U = native_ns.fwd(ns_lib, St.view(-1, s, l_), *ns_args).view(St.shape) if muon \
                else St
            _, Mp, Ms, hs = atlas_scan.read_fwd(lib, Mp, U, a[j], c[j], q[j], W01, W02, z=z[j],
                                                Mlast=Mall[j])
            keep += [*saved, *pairs, St, U, Ms, hs]
        ctx.cfg, ctx.n_keep, ctx.n_orig = cfg, len(keep) // n, len(orig)
        ctx.save_for_backward(*orig, fk, v, g, q, e, w, a, c, W01, W02, M0, S0, Mall, Sall, Pg0,
                              *keep)
        return z, Mall, Sall

    @staticmethod
    def twice(ctx, *douts):  # under create_graph: autograd through _chunk_run's PyTorch form
        return (None, *first_order.replay(partial(_chunks_plain, ctx.cfg),
                                          ctx.saved_tensors[:ctx.n_orig], douts,
                                          ctx.needs_input_grad[1:]))

    @staticmethod
    def backward(ctx, dz, dMall, dSall):
        lib, ns_lib, W1, muon, ns_args, shapes = ctx.cfg
        (fk, v, g, q, e, w, a, c, W01, W02, M0, S0, Mall, Sall, Pg0,
         *keep) = ctx.saved_tensors[ctx.n_orig:]
        L = len(shapes)
        n, m, ns = e.shape[0], ctx.n_keep, 5 if L == 2 else 1
        s, l_ = min(shapes[0]), max(shapes[0])
        dz = q.new_zeros(*e.shape, shapes[-1][1]) if dz is None else dz.contiguous()
        dfk, dv, dg, dq = (torch.empty_like(t) for t in (fk, v, g, q))
        de, dw, da, dc = (torch.empty_like(t) for t in (e, w, a, c))
        dW0 = [torch.zeros_like(W01), None if W02 is None else torch.zeros_like(W02)][:L]
        dWp = torch.zeros_like(M0)                      # the gradient points' part of dW0
        dMp, dSp = torch.zeros_like(M0), torch.zeros_like(S0)
        # one dU and one dS_t buffer for every chunk (fresh (B, H, C, N) tensors a chunk
        # cost their pages' first touch again where malloc hands them back to the system)
        bufU = torch.empty_like(keep[-4])
        bufS = torch.empty_like(bufU) if muon else None
        for j in reversed(range(n)):
            kj = keep[j * m:(j + 1) * m]
            saved, pairs, (St, U, Ms, hs) = kj[:ns], kj[ns:ns + 2 * L], kj[ns + 2 * L:]
            Mprev, Sprev = (Mall[j - 1], Sall[j - 1]) if j else (M0, S0)
            if dMall is not None:
                dMp += dMall[j]
            if dSall is not None:
                dSp += dSall[j]
            dM0, dU, *_, dW1, dW2 = atlas_scan.read_bwd(
                lib, Mprev, U, a[j], c[j], q[j], W01, W02, Ms, hs, dz[j], dMp, da=da[j],
                dc=dc[j], dq=dq[j], dU=bufU)
            dW0[0] += dW1.sum(0)
            if L == 2:
                dW0[1] += dW2.sum(0)
            dSt = native_ns.bwd(ns_lib, St.view(-1, s, l_), dU.view(-1, s, l_), *ns_args,
                                dX=bufS.view(-1, s, l_)).view(St.shape) if muon else dU
            dSp, du1, dv1, du2, dv2, *_ = atlas_scan.mom_bwd(
                lib, W1, Sprev, e[j], w[j], *pairs, *[None] * (4 - 2 * L), St, dSt, dSp,
                de=de[j], dw=dw[j])
            # the pairs' gradients: (dX_l, d(gamma G_l)) per weight
            dX, dGg = [], []
            for (i, o), du, dv_ in zip(shapes, (du1, du2), (dv1, dv2)):
                dX.append(dv_ if i > o else du)
                dGg.append(du if i > o else dv_)
            dPg = dM0 if j else torch.zeros_like(M0)
            atlas_scan.grads_bwd(
                lib, Mprev if j else Pg0, W01, W02, fk[j], g[j], saved, dX[0],
                dX[1] if L == 2 else None, dGg[0] if L == 2 else None, dGg[-1], dPg, dWp,
                dk=dfk[j], dv=dv[j], dg=dg[j])
            dMp = dPg
        for acc, d in zip(dW0, _unpack(dWp, shapes)):
            acc += d.sum(0)
        return (None, dfk, dv, dg, dq, de, dw, da, dc, dM0, dSp, *dW0,
                *_unpack(dPg, shapes))


GROUP = 1 << 25  # atlas_chunked under autograd: elements of one (steps, I, O) tensor per segment


def _decay_rows(e, w_in, W1, dtype):
    """[E_t, -D[t]]: the rows of a chunk's momentum product, D[t] = RE[t] w over the window's
    band (B, H, [N,] C, 1 + C + W1) from e, w_in (B, H, [N,] C)."""
    C = e.shape[-1]
    t_ = torch.arange(C, device=e.device)
    i_ = torch.arange(C + W1, device=e.device)
    band = ((i_[None] >= t_[:, None]) & (i_[None] <= t_[:, None] + W1)).to(dtype)
    D = (_ratios(e) * w_in[..., None, :]) @ band       # (B, H, [N,] C, C + W1)
    return torch.cat([torch.cumprod(e, -1)[..., None], -D], -1)


def _memory_rows(a, c_out):
    """[A_t, RA[t] c]: the rows of a chunk's memory product (B, H, [N,] C, 1 + C)."""
    return torch.cat([torch.cumprod(a, -1)[..., None], _ratios(a) * c_out[..., None, :]], -1)


def _momenta(D_j, Sp, pairs):
    """Every step's momentum of a chunk at once, S_t = E_t S_0 - sum_w D[t, w] u_w v_w^T,
    the window's outer products (short side first, flattened) one product's rows after S_0:
    (St (B, H, C, N), its last row). D_j (B, H, C, 1 + C + W1) (`_decay_rows`); pairs [(u,
    v)] per weight (B, H, C + W1, .)."""
    Zs = [(u[..., :, None] * v[..., None, :]).flatten(-2) for u, v in pairs]
    Z = Zs[0] if len(Zs) == 1 else torch.cat(Zs, -1)
    St = D_j @ torch.cat([Sp[:, :, None], Z], 2)               # (B, H, C, N)
    return St, St[:, :, -1]


def _reads(R_j, Mp, U, q_j, w0s):
    """The memories M_t = A_t M_0 + sum_s RA[t, s] c_s U_s of a chunk at once (R_j
    `_memory_rows`), read by the memory model at q_j: (z (B, H, C, O), M_{C-1})."""
    shapes = [tuple(w.shape[-2:]) for w in w0s]
    Ms = R_j @ torch.cat([Mp[:, :, None], U], 2)
    x = q_j
    for i, (w0, Mt, (a, b)) in enumerate(zip(w0s, _unpack(Ms, shapes), shapes)):
        if i:
            x = _gelu(x)
        # x M_t, through the stored (short-first) form: a transposed M_t's gradient would be
        # copied back into the packed layout
        read = (Mt.transpose(-1, -2) @ x[..., :, None])[..., 0] if a > b else \
            (x[..., None, :] @ Mt)[..., 0, :]
        x = x @ w0.to(x.dtype) + read
    return x, Ms[:, :, -1]


def _momenta_plain(W1, S0, e, w, u1, v1, u2, v2):
    """ops.native.atlas_scan.momenta by _momenta: the form its node's `twice` differentiates."""
    pairs = [(u1, v1)] + ([] if u2 is None else [(u2, v2)])
    return _momenta(_decay_rows(e, w, W1, e.dtype), S0, pairs)


def _reads_plain(M0, U, a, c, q, W01, W02):
    """ops.native.atlas_scan.reads by _reads: the form its node's `twice` differentiates."""
    return _reads(_memory_rows(a, c), M0, U, q, [W01] + ([] if W02 is None else [W02]))


def _chunks_plain(cfg, fk, v, g, q, e, w, a, c, M0, S0, *wp):
    """_Chunks' (z, Mall, Sall) by _chunk_run's PyTorch form (the same chunks, one graph a
    chunk): the form its `twice` differentiates."""
    W1, muon, ns_args, shapes = cfg[2:]
    L = len(shapes)
    major = lambda t: t.movedim(0, 2)  # noqa: E731
    Dp = _decay_rows(major(e), major(w), W1, e.dtype)
    Rp = _memory_rows(major(a), major(c))
    out = _chunk_run("linear" if L == 1 else "mlp", 0, 0, major(fk), major(v), major(g),
                     major(q), Dp, Rp, list(wp[:L]), list(wp[L:]), _unpack(M0, shapes),
                     _unpack(S0, shapes), None, muon, ns_args[0])
    hist = out[1 + 2 * L:]
    per = [hist[i:i + 3 * L] for i in range(0, len(hist), 3 * L)]
    return (out[0].movedim(2, 0), torch.stack([_pack(h[L:2 * L]) for h in per]),
            torch.stack([_pack(h[2 * L:]) for h in per]))


def _chunk_run(kind, j0, first, fk, vE, gE, q, Dp, Rp, init, Pg, Mc, S, feature_map, muon,
               ns_steps, lib=None):
    """Chunks j0, j0 + 1, ... of atlas_chunked (one per entry of the (B, H, N, ...) tensors):
    returns (z (B, H, N, C, O), M and S after the last chunk, then the state (M', M, S) after
    every chunk j >= first). Inside, every weight's M and S are packed (`_pack`: short side
    first, side by side, (B, H, N)), so each chunk's momenta, Newton-Schulz and memories are
    one product each over all the weights. With `lib` (ops.native.atlas_scan) Dp and Rp are
    the steps' (e, w) and (a, c) stacked (B, H, N, C, 2), and the momenta and memories run
    as their recurrences in C (no materialised outer products)."""
    shapes = [tuple(w.shape[-2:]) for w in init]
    Mp, Sp = _pack(Mc), _pack(S)
    zs, hist = [], []
    for j, (fk_j, v_j, g_j, q_j, D_j, R_j) in enumerate(zip(
            *(t.unbind(2) for t in (fk, vE, gE, q, Dp, Rp))), j0):
        P = [w0.to(p.dtype) + p for w0, p in zip(init, Pg)]
        Xs, Gs = _grads(kind, [t for W in P for t in (W, None)], fk_j, v_j, None, None, 0.0,
                        False, residual=False)
        # every step's momentum at once: S_t = E_t S_0 - sum_w D[t, w] X_w^T gamma_w G_w,
        # with the window's outer products (short side first) one product's rows after S_0
        pairs = [(g_j[..., None] * G, X) if i > o else (X, g_j[..., None] * G)
                 for X, G, (i, o) in zip(Xs, Gs, shapes)]
        if lib is not None:  # the same sums as recurrences, a (batch, head) row in cache
            St, Sp = atlas_scan.momenta(lib, Sp, *D_j.unbind(-1), pairs,
                                        fk_j.shape[-2] - D_j.shape[-2], plain=_momenta_plain)
        else:
            St, Sp = _momenta(D_j, Sp, pairs)
        U = _newton_schulz_packed(St, shapes, ns_steps) if muon else St
        w0s = [w0.to(q_j.dtype) for w0 in init]
        if lib is not None:  # the memories and their reads, a (batch, head) row in cache
            x, Mp = atlas_scan.reads(lib, Mp, U, *R_j.unbind(-1), q_j, w0s, plain=_reads_plain)
        else:
            x, Mp = _reads(R_j, Mp, U, q_j, w0s)
        zs.append(x)
        Mc = _unpack(Mp, shapes)
        if j >= first:
            hist += [*Pg, *Mc, *_unpack(Sp, shapes)]
        Pg = Mc
    return (torch.stack(zs, 2), *Mc, *_unpack(Sp, shapes), *hist)


def _segment(kind, j0, first, L, init, feature_map, muon, ns_steps, lib, *t):
    """_chunk_run on flat tensors (the six chunk inputs, then M', M, S), for checkpoint."""
    return _chunk_run(kind, j0, first, *t[:6], init, t[6:6 + L], t[6 + L:6 + 2 * L],
                      t[6 + 2 * L:], feature_map, muon, ns_steps, lib)


def _segment_native(cfg, j0, first, L, init, *t):
    """_chunk_run's result for chunks j0, j0 + 1, ... through _Chunks: t the eight
    chunk-major inputs (fk, v, gamma, q, e, w, a, c), then M', M, S."""
    shapes = cfg[-1]
    Pg, Mc, S = t[8:8 + L], t[8 + L:8 + 2 * L], t[8 + 2 * L:]
    z, Mall, Sall = _Chunks.apply(cfg, *t[:8], _pack(Mc), _pack(S), *init, *Pg)
    hist = []
    for j in range(max(first - j0, 0), Mall.shape[0]):
        hist += [*(_unpack(Mall[j - 1], shapes) if j else Pg), *_unpack(Mall[j], shapes),
                 *_unpack(Sall[j], shapes)]
    return (z.movedim(0, 2), *_unpack(Mall[-1], shapes), *_unpack(Sall[-1], shapes), *hist)


def _native_config(q, init, W1, muon, ns_steps):
    """_Chunks' configuration where it can run (the C kernels load; with Muon every weight one
    short-first shape, the long side >= 2x the short), else None."""
    if not backend.use_native(q):
        return None
    shapes = [tuple(w.shape[-2:]) for w in init]
    forms = {(min(i, o), max(i, o)) for i, o in shapes}
    libs = (atlas_scan.load(), native_ns.load() if muon else None)
    if libs[0] is None or (muon and (libs[1] is None or len(forms) > 1)):
        return None
    ((short, long_),) = forms if muon else ((1, 2),)
    if long_ < 2 * short:
        return None
    return (*libs, W1, muon, (ns_steps, tuple(float(x) for x in MUON), 1e-7), shapes)


def atlas_chunked(kind, q, k, v, theta, alpha, eta, gamma, C, init, state, feature_map=None,
                  muon=False, ns_steps=5):
    """The chunkwise form, equal to `atlas_sequential`. Same arguments.

    Inside a chunk every gradient is taken at its start M', so the window gradients
    g_t = sum_i gamma_i X_i^T G_i of its C steps come from one pass of the memory over the
    chunk's C tokens and the window - 1 before them; the momentum is linear in them,
    S_t = E_t S_0 - sum_{s <= t} RE[t, s] w_s g_s (E, RE products of eta; w = theta without
    Muon, 1 with it), so every S_t is one product, Newton-Schulz runs on all C of them at
    once, and M_t = A_t M_0 + sum_{s <= t} RA[t, s] c_s U_s (U = NS(S), c = theta; without
    Muon U = S, c = 1) is another. The loop runs over the T / C chunks (each chunk's gradient
    point is the memory the previous one left). Every sequence sits on the chunk grid at its
    own offset, with identity steps (alpha = 0, eta = 1, nothing written) off it. On the
    CPU (ops.native.atlas_scan) the momenta and the memories with their reads run as their
    step recurrences in C instead of those products; where `_native_config` allows, a
    segment's chunks run as one autograd node (`_Chunks`: the window gradients in C too, the
    backward by hand), else as a per-chunk graph (`_chunk_run`). Under autograd the chunks run in
    segments of at most GROUP elements per (steps, I, O) tensor, all but the last
    checkpointed (its backward comes first, so recomputing it would save nothing), the last
    as long as GROUP allows and the others even: at T=2048, B=4, d_model 64 one chunk of 129
    is recomputed (peak RSS ~1.4 GB with the C recurrences)."""
    B, T, H, K = q.shape
    L = len(init)
    (q,), (k, v, theta, alpha, eta, gamma), marks = finite_inputs(
        read=(q,), write=(k, v, theta, alpha, eta, gamma))
    Pg, Mc, S = list(state[:L]), list(state[L:2 * L]), list(state[2 * L:3 * L])
    n0, bufs = state[3 * L], state[3 * L + 1:]
    Pg, c = _titans_roll(Pg, Mc, n0, C)
    W1 = bufs[0].shape[1] if bufs else 0                   # window - 1 earlier tokens
    NT = (T + 2 * C - 2) // C
    steps = torch.arange(T + W1, device=q.device)
    pos = c[:, None] + steps                               # buffer, then the sequence

    def place(t, n, at):  # (B, T', H, ...) -> (B, H, n, ...), zeros off the sequence
        out = t.new_zeros(B, n, *t.shape[2:])
        idx = at.view(B, -1, *[1] * (t.dim() - 2)).expand_as(t)
        return out.scatter(1, idx, t).transpose(1, 2)

    grid, on_grid = NT * C, pos[:, W1:] - W1
    kx, vx, gx = ((torch.cat([b.to(t.dtype), t], 1) if W1 else t)
                  for b, t in zip(bufs or (None,) * 3, (k, v, gamma)))
    # the extended timeline: the window - 1 slots before the grid, then the grid
    windows = lambda t: t.unfold(2, C + W1, C).movedim(-1, 3)  # noqa: E731  (B, H, NT, C+W1, ..)
    kE = windows(place(kx, W1 + grid, pos))
    vE = windows(place(vx, W1 + grid, pos))
    gE = windows(place(gx, W1 + grid, pos)[..., None])[..., 0]
    fk = phi(kE, feature_map)
    chunks = lambda t: t.reshape(B, H, NT, C, *t.shape[3:])  # noqa: E731
    a = chunks(1 - place(alpha, grid, on_grid))            # identity steps off the sequence
    e = chunks(1 - place(1 - eta, grid, on_grid))
    th = chunks(place(theta, grid, on_grid))
    on = chunks(place(torch.ones_like(theta), grid, on_grid))
    w_in, c_out = (on, th) if muon else (th, on)
    cfg = _native_config(q, init, W1, muon, ns_steps)
    lib = atlas_scan.load() if cfg is None and backend.use_native(q) else None
    if cfg is not None:  # chunk-major, contiguous: _Chunks' inputs
        Dp = Rp = None
        cm = lambda t: t.movedim(2, 0).contiguous()  # noqa: E731
        fk, vE, gE, e, w_in, a, c_out = (cm(t) for t in (fk, vE, gE, e, w_in, a, c_out))
    elif lib is not None:  # the steps' coefficients of the C recurrences
        Dp, Rp = torch.stack([e, w_in], -1), torch.stack([a, c_out], -1)
    else:
        # [E_t, -D[t]] and [A_t, RA[t]]: the rows of a chunk's momentum and memory products
        Dp, Rp = _decay_rows(e, w_in, W1, q.dtype), _memory_rows(a, c_out)
    qf = chunks(place(phi(q, feature_map), grid, on_grid))
    first, last = (T - 1) // C, (c + T - 1) // C
    args = (fk, vE, gE, qf, Dp, Rp)
    if cfg is not None:
        args = (fk, vE, gE, qf.movedim(2, 0).contiguous(), e, w_in, a, c_out)
    size = B * H * C * max(w.shape[-2] * w.shape[-1] for w in init)
    cap = NT if not torch.is_grad_enabled() else max(1, GROUP // size)
    # the last segment (kept, not recomputed) as long as allowed, the rest in even segments
    rest = NT - min(NT, cap)
    n_rest = -(-rest // cap)
    bounds = [rest * i // n_rest for i in range(n_rest)] + [rest, NT]
    zs, hist = [], []
    for j0, j1 in zip(bounds[:-1], bounds[1:]):
        if cfg is not None:
            part = [t[j0:j1] for t in args]
            fn = partial(_segment_native, cfg, j0, first, L, init)
        else:
            part = [t[:, :, j0:j1] for t in args]
            fn = partial(_segment, kind, j0, first, L, init, feature_map, muon, ns_steps, lib)
        ins = (*part, *Pg, *Mc, *S)
        keep = j1 == NT or backend.transforming()  # torch.func refuses checkpoint's hooks
        out = fn(*ins) if keep else checkpoint(fn, *ins, use_reentrant=False)
        zs.append(out[0])
        Mc, S = list(out[1:1 + L]), list(out[1 + L:1 + 2 * L])
        h = out[1 + 2 * L:]
        hist += [h[i:i + 3 * L] for i in range(0, len(h), 3 * L)]
        Pg = Mc
    final = _pick(hist, last, first)
    z = torch.cat(zs, 2).reshape(B, H, grid, -1).transpose(1, 2)
    z = z.gather(1, on_grid.view(B, T, 1, 1).expand(B, T, H, z.shape[-1]))
    n_out = ((c + T - 1) % C + 1).to(n0.dtype)
    new_bufs = tuple(t[:, T:] for t in (kx, vx, gx)) if W1 else ()
    final = poison((*final, *new_bufs), marks.state)
    return poison(z, marks.outputs), (*final[:3 * L], n_out, *final[3 * L:])
