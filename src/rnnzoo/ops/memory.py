"""Test-time training: a memory that is a small model trained online, by mini-batch gradient
descent on a reconstruction loss (Sun et al. 2024, "Learning to (Learn at Test Time): RNNs with
Expressive Hidden States", arXiv:2407.04620, sections 2.1-2.7 and appendix A).

The inner model f is a stack of dense layers (TTT-Linear: one, K -> K; TTT-MLP: two,
K -> 4K -> K with GELU between), read with a layer norm and a residual:

    f(x) = x + LN(f_res(x)),      loss_t(W) = 1/2 |LN(f_res(k_t)) - (v_t - k_t)|^2

Time is cut into mini-batches of M steps. Inside a mini-batch every gradient is taken at the
weights W_0 the mini-batch started from, and step t of it reads

    W_t = W_0 - tok_t sum_{s <= t} lr_s grad loss_s(W_0),     z_t = f_res(q_t; W_t)

with lr_s the learned per-token rate (the layer's gate) and tok_t the per-position factor of
the paper's code (1/(t+1) plus a learned offset, clamped at 0). At the end of a mini-batch
W_0 <- W_M-1. For one dense layer with input x and output gradient g (so grad W = x^T g,
grad b = g), the dual form reads all steps of a mini-batch at once:

    z = x_q W_0 + b_0 - tok o (x_q A + A_b + tril(x_q X^T + 1) (lr o G))

where A, A_b hold the mini-batch's sums so far. The state is, per dense layer, the weights
at the mini-batch start (as a change from the learned initial weights) and the sums A, A_b,
plus the number of steps n in [0, M] already taken in the current mini-batch (rolled over
lazily, at the next step): constant size, and a sequence can stop and resume anywhere,
each batch element at its own offset. The `minibatch` form places every sequence on a grid
of mini-batches at its own offset (scatter into a zero-padded timeline, lr = 0 off the
sequence), loops over the T / M mini-batches and does each at once; `ttt_step` is the token
by token reference. Tensors are (B, T, H, D); states accumulate in float32 (float64 for
float64 input).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from rnnzoo.ops import backend
from rnnzoo.ops.finite import finite_inputs, poison

__all__ = ["layer_norm", "ttt_minibatch", "ttt_sequential", "ttt_step", "ttt_init_state",
           "inner_output", "titans_init_state", "titans_step", "titans_sequential",
           "titans_chunked", "memory_read", "miras_init_state", "miras_step", "miras_sequential",
           "miras_chunked", "attentional_bias", "retention"]

KINDS = ("linear", "mlp")


# -- the inner layer norm, forward and its gradient --------------------------------------------
def layer_norm(z, w, b, eps):
    """(LN(z) w + b, z_hat, std) over the last dim; w, b broadcast (H, D). The variance as the
    mean square of z - mean (ATen's Welford var is ~12x slower on these short rows)."""
    d = z - z.mean(-1, keepdim=True)
    std = torch.sqrt((d * d).mean(-1, keepdim=True) + eps)
    zhat = d / std
    return zhat * w + b, zhat, std


def _layer_norm_grad(dy, zhat, std, w):
    """d/dz of <dy, LN(z) w + b>: (D dzh - sum dzh - z_hat sum(dzh z_hat)) / (D std)."""
    D = zhat.shape[-1]
    dzh = dy * w
    return (D * dzh - dzh.sum(-1, keepdim=True)
            - zhat * (dzh * zhat).sum(-1, keepdim=True)) / (D * std)


def _norm_loss_grad(Z, target, w, b, eps):
    """d/dZ of 1/2 |LN(Z) w + b - target|^2: Z, target (B, H, M, K), w, b (H, K). On the CPU
    one C pass a row each way (ops.native.ttt_norm; ~17 small ops forward and ~35 backward
    a mini-batch in torch)."""
    if Z.dim() == 4 and Z.shape == target.shape and w.shape == b.shape == Z.shape[1:2] + Z.shape[3:] \
            and backend.use_native(Z, target, w, b):
        from rnnzoo.ops.native import ttt_norm
        if (lib := ttt_norm.load()) is not None:
            return ttt_norm.norm_loss_grad(lib, Z, target, w, b, eps, _norm_loss_grad_torch)
    return _norm_loss_grad_torch(Z, target, w, b, eps)


def _norm_loss_grad_torch(Z, target, w, b, eps):
    w, b = w[:, None], b[:, None]                                      # (H, 1, K)
    y, zhat, std = layer_norm(Z, w, b, eps)
    return _layer_norm_grad(y - target, zhat, std, w)


def inner_output(q, z, w, b, eps, norm=True):
    """f(q) = q + LN(z) w + b (or q + z without the inner norm); q, z (B, T, H, K). On the
    CPU one C pass each way (ops.native.ttt_norm.inner_output)."""
    if not norm:
        return q + z
    if (q.shape == z.shape and z.dim() >= 2 and w.shape == b.shape == z.shape[-2:]
            and backend.use_native(q, z, w, b)):
        from rnnzoo.ops.native import ttt_norm
        if (lib := ttt_norm.load()) is not None:
            return ttt_norm.inner_output(lib, q, z, w, b, eps)
    return torch.addcmul(q + b, F.layer_norm(z, z.shape[-1:], eps=eps), w)


def _native_gelu(*tensors):
    """ops.native.memory_gelu's library when it should run on these tensors, else None."""
    if not backend.use_native(*tensors):
        return None
    from rnnzoo.ops.native import memory_gelu
    return memory_gelu.load()


def _gelu(z):
    """GELU (tanh); on the CPU in C (ATen's tanh GELU and its double backward cost more than
    the memory's products at these sizes)."""
    if (lib := _native_gelu(z)) is not None:
        from rnnzoo.ops.native import memory_gelu
        return memory_gelu.gelu(lib, z)
    return F.gelu(z, approximate="tanh")


def _gelu_back(g, z):
    """g * d gelu_tanh / dz, one op (differentiable again: the chunk forms' gradients are
    part of their output's graph)."""
    if g.shape == z.shape and (lib := _native_gelu(g, z)) is not None:
        from rnnzoo.ops.native import memory_gelu
        return memory_gelu.gelu_back(lib, g, z)
    return torch.ops.aten.gelu_backward(g, z, approximate="tanh")


# -- the inner model ---------------------------------------------------------------------------
# Weights: a tuple (W_1, b_1, ..., W_L, b_L) with W_l (H, I, O), b_l (H, O) (the learned
# initial weights), or per batch (B, H, I, O), (B, H, O) (the state's changes from them).
# Token tensors inside the engine are (B, H, M, D).

def _grads(kind, P, k, v, w, b, eps, norm, residual=True, dloss=None):
    """The inputs X_l and output gradients G_l of each dense layer, for loss_t at weights P,
    all M steps of k, v (B, H, M, K) at once (the target is v - k with `residual`, else v).
    `dloss(err)` is the loss's gradient in the prediction error (err for the halved l2).
    A bias given as None is left out (a weight-only memory). Returns (Xs, Gs)."""
    dense = lambda x, W, bias: x @ W if bias is None else x @ W + bias[:, :, None]  # noqa: E731
    if kind == "linear":
        Z = dense(k, P[0], P[1])
        Xs = [k]
    else:
        Z1 = dense(k, P[0], P[1])
        X2 = _gelu(Z1)
        Z = dense(X2, P[2], P[3])
        Xs = [k, X2]
    target = v - k if residual else v
    if norm:
        G = _norm_loss_grad(Z, target, w, b, eps)
    else:
        G = Z - target if dloss is None else dloss(Z - target)
    if kind == "linear":
        return Xs, [G]
    return Xs, [_gelu_back(G @ P[2].transpose(-1, -2), Z1), G]


def _read(kind, P, Acc, q, Xs, Gl, tok):
    """Dual-form read z_t = f_res(q_t; W_t) of M steps at once. P: weights at the mini-batch
    start; Acc: (A_1, Ab_1, ...) the sums before these steps; Gl: lr-weighted gradients;
    tok (B or 1, 1, M, 1). Returns (z, the sums after the M steps)."""
    x, new = q, []
    for i, (X, G) in enumerate(zip(Xs, Gl)):
        if i:
            x = _gelu(x)
        W, bias, A, Ab = P[2 * i], P[2 * i + 1], Acc[2 * i], Acc[2 * i + 1]
        att = torch.tril(x @ X.transpose(-1, -2) + 1)
        x = x @ W + bias[:, :, None] - tok * (x @ A + Ab[:, :, None] + att @ G)
        new += [A + X.transpose(-1, -2) @ G, Ab + G.sum(-2)]
    return x, new


def ttt_init_state(kind, B, H, K, device=None, dtype=torch.float32, hidden=None):
    """Zeros: (dW_1, db_1, ..., A_1, Ab_1, ..., n); hidden = 4K for the MLP by default."""
    dims = [(K, K)] if kind == "linear" else [(K, hidden or 4 * K), (hidden or 4 * K, K)]
    W = []
    for i, o in dims:
        W += [torch.zeros(B, H, i, o, device=device, dtype=dtype),
              torch.zeros(B, H, o, device=device, dtype=dtype)]
    return (*W, *[t.clone() for t in W], torch.zeros(B, device=device, dtype=dtype))


def _split(state):
    L2 = (len(state) - 1) // 2
    return list(state[:L2]), list(state[L2:2 * L2]), state[-1]


def _roll(dP, Acc, n, tok, M):
    """Start a new mini-batch where the last one is full (n == M): W_0 <- W_0 - tok_M-1 A."""
    n = torch.round(n).long()
    full = n == M
    if backend.host_readable(full) and not bool(full.any()):
        return list(dP), list(Acc), n   # none full (every fresh state): no copies, no graph
    f = full.view(-1, 1, 1, 1)
    dP = [torch.where(f if p.dim() == 4 else f[..., 0],
                      p - tok[-1].to(p.dtype) * a, p) for p, a in zip(dP, Acc)]
    Acc = [torch.where(f if a.dim() == 4 else f[..., 0], torch.zeros_like(a), a) for a in Acc]
    return dP, Acc, torch.where(full, torch.zeros_like(n), n)


def _weights(init, dP):
    return [p0.to(d.dtype) + d for p0, d in zip(init, dP)]


def ttt_step(kind, q_t, k_t, v_t, lr_t, tok, init, state, w, b, eps, norm=True):
    """One step. q_t, k_t, v_t (B, H, K), lr_t (B, H), tok (M,); init: the learned initial
    weights; w, b (H, K): the inner norm. Returns (z_t (B, H, K), state)."""
    M = tok.shape[0]
    dP, Acc, n = _split(state)
    dP, Acc, n = _roll(dP, Acc, n, tok, M)
    P = _weights(init, dP)
    Xs, Gs = _grads(kind, P, k_t[:, :, None], v_t[:, :, None], w, b, eps, norm)
    Gl = [g * lr_t[:, :, None, None] for g in Gs]
    tok_t = tok.to(q_t.dtype)[n].view(-1, 1, 1, 1)
    z, Acc = _read(kind, P, Acc, q_t[:, :, None], Xs, Gl, tok_t)
    return z[:, :, 0], (*dP, *Acc, (n + 1).to(state[-1].dtype))


def ttt_sequential(kind, q, k, v, lr, tok, init, state, w, b, eps, norm=True):
    """The reference: ttt_step over time. q, k, v (B, T, H, K), lr (B, T, H)."""
    zs = []
    for t in range(q.shape[1]):
        z, state = ttt_step(kind, q[:, t], k[:, t], v[:, t], lr[:, t], tok, init, state,
                            w, b, eps, norm)
        zs.append(z)
    return torch.stack(zs, 1), state


def _grid(c, T, C, within=False):
    """Sequences of T steps at offsets c (B,) in [0, C-1] laid on one grid of NT chunks of C
    steps. Returns (NT, first, last, place, take): last (B,) each one's last chunk, first the
    earliest of them; place (B, T, H, ...) -> (B, H, NT*C, ...), zeros off the sequence;
    take (B, H, NT*C, D) -> (B, T, H, D). Any offsets need NT = (T + 2C - 2) // C and a
    scatter; where reading c is free (backend.host_readable), a batch at one offset (every fresh
    sequence is at 0) is padded instead and needs ceil((c + T) / C) chunks (`within`: the
    caller knows one chunk holds them)."""
    B = c.shape[0]
    last = (c + T - 1) // C
    if backend.host_readable(c) and B and T and bool((c == c[0]).all()):
        c0 = int(c[0])
        NT = 1 if within else -(-(c0 + T) // C)
        pad = NT * C - c0 - T

        def place(t):
            t = t.transpose(1, 2)
            if not (c0 or pad):
                return t
            return F.pad(t, (0, 0) * (t.dim() - 3) + (c0, pad))

        return NT, (c0 + T - 1) // C, last, place, lambda z: z[:, :, c0:c0 + T].transpose(1, 2)
    NT = 1 if within else (T + 2 * C - 2) // C
    pos = c[:, None] + torch.arange(T, device=c.device)             # (B, T) on the grid

    def place(t):
        out = t.new_zeros(B, NT * C, *t.shape[2:])
        idx = pos.view(B, T, *[1] * (t.dim() - 2)).expand_as(t)
        return out.scatter(1, idx, t).transpose(1, 2)

    def take(z):
        z = z.transpose(1, 2)
        return z.gather(1, pos.view(B, T, 1, 1).expand(B, T, *z.shape[2:]))

    return NT, (T - 1) // C, last, place, take


_READ_BYTES = 16 << 20


def _ttt_read_lib(*tensors):
    """ops.native.ttt_read's library when the reads should run in C on these tensors, else
    None."""
    if not backend.use_native(*tensors):
        return None
    from rnnzoo.ops.native import ttt_read
    return ttt_read.load()


def _dual_read(x, X, W, bias, G, tok):
    """One dense layer's dual-form reads of mini-batch blocks, z = x W + bias - A G with
    A_ij = tok_i (x_i . X_j + 1) (j <= i): x, X (..., M, I), W (..., I, O), bias (..., O), G
    (..., M, O), tok (M,) (ops.native.ttt_read's PyTorch form)."""
    flat = lambda t: t.flatten(0, -3)  # noqa: E731
    att = tok[:, None] * torch.tril(torch.bmm(flat(x), flat(X).transpose(1, 2)) + 1)  # (., M, M)
    z = torch.baddbmm(bias.flatten(0, -2)[:, None], flat(x), flat(W))
    return torch.baddbmm(z, att, flat(G), alpha=-1).view(*x.shape[:-1], -1)


def _read_all(Pst, XG, x, Acc, tok_c):
    """The dual-form reads of n mini-batches at once: Pst, XG the loop's per mini-batch
    weights [W_1, b_1, ...] (B, H, n, I, O), (B, H, n, O) and [X_1, ..., Gl_1, ...] (B, H, n,
    M, I or O), stacked; x (B, H, n, M, K) their queries; Acc the sums the state brought, read
    by the first (None: zero). Returns (B, H, n, M, K), laid out as x in C (ops.native.ttt_read
    reads and writes a layer's (B, T, H, K) tensors viewed as blocks: no copies either way)."""
    L2 = len(Pst)
    lib = _ttt_read_lib(x, tok_c, *Pst, *XG)
    if lib is None:
        x = x.contiguous()                                           # flat views, no copies
    for i in range(L2 // 2):
        if i:
            x = _gelu(x)
        W, bias, X, G = Pst[2 * i], Pst[2 * i + 1], XG[i], XG[L2 // 2 + i]
        if lib is not None:  # one C pass a block (ops.native.ttt_read)
            from rnnzoo.ops.native import ttt_read
            like = ttt_read.tokens_major(x, W.shape[-1]) if i == L2 // 2 - 1 else None
            z = ttt_read.read(lib, x, X, W, bias, G, tok_c[:, 0], like=like, plain=_dual_read)
        else:
            z = _dual_read(x, X, W, bias, G, tok_c[:, 0])
        if Acc is not None:
            A, Ab = Acc[2 * i], Acc[2 * i + 1]
            head = z[:, :, 0] - tok_c * (x[:, :, 0] @ A + Ab[:, :, None])
            z = torch.cat([head[:, :, None], z[:, :, 1:]], 2)
        x = z
    return x


def ttt_minibatch(kind, q, k, v, lr, tok, init, state, w, b, eps, norm=True):
    """The dual (mini-batch) form, equal to `ttt_sequential`. Same arguments."""
    from rnnzoo.ops.finite import clean_inputs, marked  # here: the module's head is TTT's

    B, T, H, K = q.shape
    M = tok.shape[0]
    # where reading is free, no copies (nor NaN marks) for inputs that all sum to a finite
    # number: one host read (clean_inputs)
    if backend.host_readable(q):
        (q,), (k, v, lr), marks = clean_inputs((q,), (k, v, lr))
    else:
        (q,), (k, v, lr), marks = finite_inputs(read=(q,), write=(k, v, lr))
    dP, Acc, n = _split(state)
    dP, Acc, c = _roll(dP, Acc, n, tok, M)
    NT, first, last, place, take = _grid(c, T, M)
    chunks = lambda t: t.reshape(B, H, NT, M, t.shape[-1])  # noqa: E731
    qc = chunks(place(q))
    tok_c = tok.to(q.dtype).view(M, 1)
    lib = _ttt_loop_lib(q, k, v, lr, tok, w, b, *init, *dP, *Acc)
    if lib is not None:   # the whole loop in C, a (batch x head) row at a time
        from rnnzoo.ops.native import ttt_loop
        # the linear loop reads k, v, lr at their strides (views: no copies); the MLP's dense
        kc, vc, lc = (chunks(place(t)) for t in (k, v, lr[..., None]))
        if kind != "linear":
            kc, vc, lc = (t.contiguous() for t in (kc, vc, lc))
        nw, nb = (w, b) if norm else (None, None)
        if kind == "linear":
            W, bias = _weights(init, dP)
            P, pc, Gl, S, s = ttt_loop.loop(lib, W, bias, *Acc, kc, vc, lc[..., 0], nw, nb, tok,
                                            eps, plain=_ttt_loop_plain)
            rows = torch.arange(B, device=q.device)
            final = [P[rows, :, last] - init[0].to(P.dtype),
                     pc[rows, :, last] - init[1].to(P.dtype), S[rows, :, last], s[rows, :, last]]
            groups = [([P, pc], [kc, Gl])]
        else:
            P1, pb1, P2, pb2, X2, Gl1, Gl2, fin = ttt_loop.mlp_loop(
                lib, _weights(init, dP), Acc, kc, vc, lc[..., 0], nw, nb, tok, last, eps,
                plain=_ttt_mlp_plain)
            final = [f - p0.to(f.dtype) for f, p0 in zip(fin[:4], init)] + fin[4:]
            groups = [([P1, pb1, P2, pb2], [kc, X2, Gl1, Gl2])]
        per = NT   # the stacks are made whole: read whole (slices would cost a whole-size
        # zero gradient each)
    else:
        # the reads go in groups of mini-batches whose stacked weights stay under _READ_BYTES:
        # glibc maps a block over 32 MB afresh on every call (and its gradient), page by page
        per = max(1, _READ_BYTES // max(1, B * max(a.numel() for a in init) * q.element_size()))
        # the loop's inputs as (NT, B, H, M, D), one copy: each mini-batch's slice dense
        # (unbound once: a slice taken in the loop would cost a whole-size zero tensor in
        # backward, per mini-batch)
        kc, vc, lc = (chunks(place(t)).permute(2, 0, 1, 3, 4).contiguous().unbind(0)
                      for t in (k, v, lr[..., None]))
        starts, XGs, history = _loop(kind, init, dP, Acc, kc, vc, lc, w, b, eps, norm, tok,
                                     first)
        stack = lambda ts: [torch.stack(t, 2) for t in zip(*ts)]  # noqa: E731
        groups = [(stack(starts[j:j + per]), stack(XGs[j:j + per]))
                  for j in range(0, len(XGs), per)]
        final = _pick(history, last, first)
    # the first mini-batch also reads the sums the state brought (a mini-batch begun); on
    # the CPU in eager mode (backend.host_readable), sums known to be zero (a fresh state) are
    # skipped, unless their gradient is asked for
    begun = not (backend.host_readable(q) and not any(a.requires_grad for a in Acc)
                 and not any(bool(a.any()) for a in Acc))
    # (one group: qc whole, not a one-piece split, whose backward copies dq into a cat)
    zs = [_read_all(Pst, XG, x, Acc if begun and not i else None, tok_c)
          for i, ((Pst, XG), x) in enumerate(zip(groups, qc.split(per, 2) if per < NT
                                                  else (qc,)))]
    z = take((zs[0] if len(zs) == 1 else torch.cat(zs, 2)).reshape(B, H, NT * M, -1))
    n_out = ((c + T - 1) % M + 1).to(state[-1].dtype)
    z, final = marked(z, tuple(final), marks)
    return z, (*final, n_out)


def _ttt_loop_lib(*tensors):
    """ops.native.ttt_loop's library when the TTT loop (linear or MLP) should run in C on these
    tensors, else None."""
    if not backend.use_native(*tensors):
        return None
    from rnnzoo.ops.native import ttt_loop
    return ttt_loop.load()


def _minibatch(kind, P, k, v, lr, w, b, eps, norm):
    """One mini-batch of the loop at its start weights P: its layers' inputs Xs, lr-weighted
    gradients Gl and their sums (per weight). k, v (B, H, M, K), lr (B, H, M, 1)."""
    Xs, Gs = _grads(kind, P, k, v, w, b, eps, norm)
    Gl = [g * lr for g in Gs]
    return Xs, Gl, _outer(Xs, Gl)


def _ttt_loop_plain(eps, W, c, A0, a0, k, v, lr, w, b, tok):
    """ops.native.ttt_loop.loop's (P, pc, Gl, S, s) by _loop: its node's `twice`."""
    starts, XGs, history = _loop("linear", None, [W, c], [A0, a0], *_minibatches(k, v, lr),
                                 w, b, eps, w is not None, tok)
    return tuple(torch.stack(t, 2) for t in zip(*((*P, XG[1], *h[2:])
                                                  for P, XG, h in zip(starts, XGs, history))))


def _ttt_mlp_plain(eps, F, Ws, A, k, v, lr, w, b, tok, last):
    """ops.native.ttt_loop.mlp_loop's node outputs (P1, pb1, P2, pb2, X2, Gl1, Gl2, Fin) by
    _loop: its node's `twice`. Ws, A: the weights and sums flat (B, H, n)."""
    B, H, NT, M, K = k.shape
    shapes = [(K, F), (F,), (F, K), (K,)]
    unflat = lambda t: [p.view(B, H, *s) for p, s in zip(  # noqa: E731
        t.split([math.prod(s) for s in shapes], -1), shapes)]
    starts, XGs, history = _loop("mlp", None, unflat(Ws), unflat(A), *_minibatches(k, v, lr),
                                 w, b, eps, w is not None, tok)
    per = [torch.stack(t, 2) for t in zip(*((*P, *XG[1:]) for P, XG in zip(starts, XGs)))]
    fin = _pick(history, last)
    return (*per, torch.cat([t.reshape(B, H, -1) for t in fin], -1))


def _minibatches(k, v, lr):
    """The mini-batches of k, v (B, H, NT, M, K) and lr (B, H, NT, M) as _loop takes them."""
    return k.unbind(2), v.unbind(2), lr[..., None].unbind(2)


def _loop(kind, init, dP, Acc, ks, vs, ls, w, b, eps, norm, tok, first=0):
    """TTT's mini-batch loop in torch (ttt_minibatch's where the C loop does not run, and the
    C loops' `twice` forms): the weights init + dP (dP alone where init is None) and the sums
    Acc carried from mini-batch to mini-batch, ks, vs, ls (B, H, M, K or 1) each one's inputs.
    Returns lists over the mini-batches: start weights P, (inputs Xs, lr-weighted gradients
    Gl) as _read_all stacks them, and from mini-batch `first` on the state after it [*dP,
    *sums]."""
    starts, XGs, history = [], [], []
    # the loop carries only the weights: a mini-batch's gradients at its start and its sums;
    # every read runs after it, all mini-batches at once
    for j, (k_j, v_j, l_j) in enumerate(zip(ks, vs, ls)):
        P = dP if init is None else _weights(init, dP)
        Xs, Gl, sums = _minibatch(kind, P, k_j, v_j, l_j, w, b, eps, norm)
        end = [a + s for a, s in zip(Acc, sums)] if j == 0 else sums
        starts.append(P)
        XGs.append((*Xs, *Gl))
        if j >= first:
            history.append([*dP, *end])
        dP = [p - tok[-1].to(p.dtype) * a for p, a in zip(dP, end)]
    return starts, XGs, history


# -- Titans: momentum (surprise) and weight decay (forgetting) ----------------------------------
# Behrouz, Zhong & Mirrokni 2024, "Titans: Learning to Memorize at Test Time",
# arXiv:2501.00663, section 3.1-3.2. With g_t the gradient of loss_t at the weights M' the
# current chunk (of C steps) started from,
#
#     S_t = eta_t S_t-1 - theta_t g_t,        M_t = (1 - alpha_t) M_t-1 + S_t,   z_t = f_res(q_t; M_t)
#
# (M is the change from the learned initial weights). Inside a chunk both recurrences are linear
# in the known g_s, so with a_t = 1 - alpha_t, e_t = m_t = eta_t, A = cumprod a, E = cumprod e,
# RA[t, s] = prod_{s<r<=t} a_r, RE likewise, and P[r, s] = m_r RE[r-1, s] (s < r):
#
#     M_t = A_t M_0 + f_t S_0 - sum_{s<=t} c_ts g_s,   c = (RA + RA P) diag(theta),
#     f = RA (m E_prev),   S_t = E_t S_0 - sum_{s<=t} RE_ts theta_s g_s
#
# and a dense layer's read is z_t = x_t M_t + b_t, all steps of the chunk at once. Steps off a
# sequence (its offset inside the first chunk, the padding after it) are identity steps:
# a = e = 1, m = theta = 0. State: (M' (gradient point), M, S per weight, steps n).

def titans_init_state(kind, B, H, K, device=None, dtype=torch.float32, hidden=None):
    """Zeros: (M'_1..., M_1..., S_1..., n), each weight as in ttt_init_state."""
    ttt = ttt_init_state(kind, B, H, K, device, dtype, hidden)
    W = ttt[:(len(ttt) - 1) // 2]
    return (*W, *[t.clone() for t in W], *[t.clone() for t in W],
            torch.zeros(B, device=device, dtype=dtype))


def _titans_split(state):
    L = (len(state) - 1) // 3
    return list(state[:L]), list(state[L:2 * L]), list(state[2 * L:3 * L]), state[-1]


def _select(mask, a, b):
    """torch.where(mask, a, b), mask (B,) bool broadcast over the trailing dims of a, b
    (one shape); where reading mask is free (backend.host_readable), a or b itself when the
    mask is all one value (no copy, nothing in backward: every step of an aligned batch)."""
    if backend.host_readable(mask) and mask.numel():
        if bool(mask.all()):
            return a
        if not bool(mask.any()):
            return b
    return torch.where(mask.view(-1, *[1] * (a.dim() - 1)), a, b)


def _titans_roll(Pg, Mc, n, C):
    n = torch.round(n).long()
    full = n == C
    Pg = [_select(full, m, p) for p, m in zip(Pg, Mc)]
    return Pg, torch.where(full, torch.zeros_like(n), n)


def _outer(Xs, Gs, bias=True):
    """Per-weight gradients sum_s (X_s^T G_s, G_s) of each dense layer (0 for the biases
    without `bias`)."""
    out = []
    for X, G in zip(Xs, Gs):
        out += [X.transpose(-1, -2) @ G, G.sum(-2) * bias]
    return out


def titans_step(kind, q_t, k_t, v_t, theta_t, alpha_t, eta_t, C, init, state, w, b, eps,
                norm=False, bias=True):
    """One step. q_t, k_t, v_t (B, H, K); theta_t, alpha_t, eta_t (B, H); C the chunk size.
    The loss is 1/2 |M(k) - v|^2 (theta absorbs the paper's factor 2); with `norm`,
    M(x) = x + LN(f_res(x)) as in TTT. Without `bias` the memory's biases do not learn (keep
    them, and their state, at zero for a weight-only memory). Returns (z_t (B, H, K), state)."""
    Pg, Mc, S, n = _titans_split(state)
    Pg, n = _titans_roll(Pg, Mc, n, C)
    Xs, Gs = _grads(kind, _weights(init, Pg), k_t[:, :, None], v_t[:, :, None], w, b, eps,
                    norm, residual=norm)
    gr = _outer(Xs, Gs, bias)
    shape = lambda t, p: t.view(*t.shape, *[1] * (p.dim() - 2))  # noqa: E731
    S = [shape(eta_t, s) * s - shape(theta_t, g) * g for s, g in zip(S, gr)]
    Mc = [shape(1 - alpha_t, m) * m + s for m, s in zip(Mc, S)]
    x = q_t
    P = _weights(init, Mc)
    for i in range(0, len(P), 2):
        if i:
            x = _gelu(x)
        x = torch.einsum("bhi,bhio->bho", x, P[i]) + P[i + 1]
    return x, (*Pg, *Mc, *S, (n + 1).to(state[-1].dtype))


def memory_read(init, change, x):
    """f_res(x) of a memory held fixed (no step learns): weights init [(H, I, O), (H, O), ...]
    plus the state's changes [(B, H, I, O), (B, H, O), ...]; x (B, T, H, I) -> (B, T, H, O).
    What titans_chunked reads with theta = alpha = eta = 0, without its chunk machinery."""
    for i in range(0, len(init), 2):
        if i:
            x = _gelu(x)
        W, b = (p0.to(d.dtype) + d for p0, d in zip(init[i:i + 2], change[i:i + 2]))
        x = torch.einsum("bthi,bhio->btho", x, W) + b[:, None]
    return x


def titans_sequential(kind, q, k, v, theta, alpha, eta, C, init, state, w, b, eps, norm=False,
                      bias=True):
    """The reference: titans_step over time. q, k, v (B, T, H, K); gates (B, T, H)."""
    zs = []
    for t in range(q.shape[1]):
        z, state = titans_step(kind, q[:, t], k[:, t], v[:, t], theta[:, t], alpha[:, t],
                               eta[:, t], C, init, state, w, b, eps, norm, bias)
        zs.append(z)
    return torch.stack(zs, 1), state


def _ratios(a):
    """R[t, s] = prod_{s < r <= t} a_r for t >= s, else 0. a (..., C) -> (..., C, C)."""
    C = a.shape[-1]
    lower = torch.ones(C, C, dtype=torch.bool, device=a.device).tril(-1)
    Y = torch.where(lower, a[..., :, None], torch.ones_like(a)[..., :, None])
    return torch.cumprod(Y, -2).tril()


def _per_head(x, W):
    """x (B, H, N, C, I) @ W (H, I, O) as one product per (batch, head) over all N C rows:
    broadcasting W over the chunks made a (B, H, N, I, O) copy, a product per chunk and a
    sum over that copy in backward."""
    return (x.flatten(2, 3) @ W).view(*x.shape[:-1], W.shape[-1])


def _coefficients(a, e, m, th):
    """The gates' coefficients of every chunk at once (they do not depend on the memory):
    a, e, m, th (B, H, N, C) (1 - alpha, E's and S's factors, theta) -> Cm (B, H, N, C, C),
    f, REth = RE's last row times theta, Acum, Ecum (B, H, N, C)."""
    RA, RE = _ratios(a), _ratios(e)
    Acum, Ecum = torch.cumprod(a, -1), torch.cumprod(e, -1)
    Eprev = torch.cat([torch.ones_like(Ecum[..., :1]), Ecum[..., :-1]], -1)
    RE_prev = torch.cat([torch.zeros_like(RE[..., :1, :]), RE[..., :-1, :]], -2)
    Cm = (RA + RA @ (m[..., :, None] * RE_prev)) * th[..., None, :]
    f = (RA * (m * Eprev)[..., None, :]).sum(-1)
    return Cm, f, RE[..., -1, :] * th, Acum, Ecum


def _first_layer(q, k, init, Cm, bias):
    """The first layer reads q and writes at k (B, H, N, C, K): its attention
    Cm o (q_t . k_s (+ 1, the bias's input)) and its read through the initial weights do
    not depend on the memory, so every chunk's are one product. Returns (att, read0)."""
    qk = q @ k.transpose(-1, -2)
    att = Cm * (qk + 1 if bias else qk)
    return att, _per_head(q, init[0].to(q.dtype)) + init[1].to(q.dtype)[:, None, None]


def _pick(history, last, first=0):
    """The state each batch element holds after its last chunk: history[j] lists the state
    tensors (B, ...) after chunk first + j; last (B,) is each element's last chunk (>= first).
    A sequence of T steps at offset c in [0, C-1] ends in chunk (T-1)//C or the one after:
    the chunk forms keep only those two (stacking every chunk's state cost more than the
    rest of the loop's copies)."""
    if len(history) == 1:
        return list(history[0])
    rows = torch.arange(last.shape[0], device=last.device)
    return [torch.stack(ts, 0)[last - first, rows] for ts in zip(*history)]


def titans_chunked(kind, q, k, v, theta, alpha, eta, C, init, state, w, b, eps, norm=False,
                   bias=True, within=False):
    """The chunkwise-parallel form, equal to `titans_sequential`. Same arguments; `within`:
    the caller knows that every sequence's steps lie inside one chunk (its offset plus T at
    most C, as Titans-MAC's segments do), so one chunk is laid out instead of the two that
    cover any offset."""
    from rnnzoo.ops.finite import marked  # here: the module's head is TTT's

    B, T, H, K = q.shape
    # where reading is free, no copies (nor NaN marks) for inputs that are all finite: one
    # host read of their total (a non-finite entry, or an overflow, makes it non-finite)
    if not (backend.host_readable(q)
            and bool(torch.isfinite(sum(t.sum() for t in (q, k, v, theta, alpha, eta))))):
        (q,), (k, v, theta, alpha, eta), marks = finite_inputs((q,), (k, v, theta, alpha, eta))
    else:
        marks = None
    Pg, Mc, S, n = _titans_split(state)
    Pg, c = _titans_roll(Pg, Mc, n, C)
    NT, first, last, place, take = _grid(c, T, C, within)
    qg, kg, vg = place(q), place(k), place(v)
    a_g, e_g = 1 - place(alpha), 1 - place(1 - eta)   # identity off the sequence
    m_g, th_g = place(eta), place(theta)
    zs = []
    gates = [t.reshape(B, H, NT, C) for t in (a_g, e_g, m_g, th_g)]
    q_ch, k_ch = (t.reshape(B, H, NT, C, K) for t in (qg, kg))
    if kind == "linear" and not norm:
        final, z = _titans_linear_chunks(q_ch, k_ch, vg.reshape(B, H, NT, C, K), init, Pg, Mc,
                                         S, bias, gates, last, first)
        z, final = marked(take(z.reshape(B, H, NT * C, K)), tuple(final), marks)
        return z, (*final, ((c + T - 1) % C + 1).to(state[-1].dtype))
    Cm_all, f_all, REth_all, Acum_all, Ecum_all = _coefficients(*gates)
    att0_all, read0_all = _first_layer(q_ch, k_ch, init, Cm_all, bias)
    history = []
    for j in range(NT):
        sl = slice(j * C, (j + 1) * C)
        RE_th, Cm, f = REth_all[:, :, j], Cm_all[:, :, j], f_all[:, :, j]
        Acum, Ecum = Acum_all[:, :, j], Ecum_all[:, :, j]
        Xs, Gs = _grads(kind, _weights(init, Pg), kg[:, :, sl], vg[:, :, sl], w, b, eps, norm,
                        residual=norm)
        x, newM, newS = qg[:, :, sl], [], []
        for i, (X, G) in enumerate(zip(Xs, Gs)):
            if i:
                x = _gelu(x)
            SW, Sb = S[2 * i], S[2 * i + 1]
            if i:
                att = Cm * (x @ X.transpose(-1, -2) + bias)
                read = x @ init[2 * i].to(x.dtype) + init[2 * i + 1].to(x.dtype)[:, None]
            else:
                att, read = att0_all[:, :, j], read0_all[:, :, j]
            x = (read + Acum[..., None] * (x @ Mc[2 * i] + Mc[2 * i + 1][:, :, None])
                 + f[..., None] * (x @ SW + Sb[:, :, None]) - att @ G)
            cl, el = Cm[..., -1, :, None] * G, RE_th[..., None] * G
            A_T, f_T, E_T = Acum[..., -1], f[..., -1], Ecum[..., -1]
            newM += [A_T[..., None, None] * Mc[2 * i] + f_T[..., None, None] * SW
                     - X.transpose(-1, -2) @ cl,
                     A_T[..., None] * Mc[2 * i + 1] + f_T[..., None] * Sb - cl.sum(-2) * bias]
            newS += [E_T[..., None, None] * SW - X.transpose(-1, -2) @ el,
                     E_T[..., None] * Sb - el.sum(-2) * bias]
        zs.append(x)
        Mc, S = newM, newS
        if j >= first:
            history.append([*Pg, *Mc, *S])
        Pg = Mc
    final = _pick(history, last, first)
    z, final = marked(take(torch.cat(zs, 2)), tuple(final), marks)
    return z, (*final, ((c + T - 1) % C + 1).to(state[-1].dtype))


def titans_segment(lib, q, k, v, g, W0, P0, M0, S0, lr=1.0):
    """titans_chunked's C path for one chunk that every sequence opens and ends inside (the
    aligned segments of Titans-MAC): the linear weight-only memory without inner norm, with
    finite inputs and zero bias state, in two kernel calls under one autograd node
    (ops.native.titans_scan.titans_segment) and no chunk machinery (grid, roll, finite
    marks, pick). q, k, v (B, n, H, K) (any strides), n <= C; g (B, n, 3 H) the gates'
    logits (theta's H heads, alpha's, eta's: theta = lr sigmoid(.) with lr = base_lr,
    alpha, eta = sigmoid(.)); W0 (H, K, K) the initial memory; P0 the gradient point, M0,
    S0 (B, H, K, K) the state's M', M, S weights. `lib` = ops.native.titans_scan.load().
    Returns z (B, n, H, K) (the initial memory's zero bias not added), M, S (B, H, K, K)
    after the n steps (M' stays P0). Equal to titans_chunked up to rounding (E's factors
    are eta itself, not 1 - (1 - eta))."""
    from rnnzoo.ops.native import titans_scan  # here: the module's head is the TTT region's

    return titans_scan.titans_segment(lib, q, k, v, g, W0, P0, M0, S0, lr,
                                      plain=_titans_segment_plain)


def _titans_gates_plain(q, k, a, e, m, th):
    """ops.native.titans_scan.titans_gates' (att, ga, gf, cl, re, gE) by _coefficients: the
    form its node's `twice` differentiates."""
    Cm, f, REth, Acum, Ecum = _coefficients(a, e, m, th)
    return Cm * (q @ k.transpose(-1, -2)), Acum, f, Cm[..., -1, :], REth, Ecum[..., -1]


def _titans_linear_plain(q, k, R, att, ga, gf, cl, re, gE, P0, M0, S0, W0, tail):
    """ops.native.titans_scan.titans_linear's (o, Ms, Ss), chunk after chunk in PyTorch (its
    module's recurrence): the form its node's `twice` differentiates.

    The reference beside `_titans_linear_chunks`, not a special case of it: this one is the
    C node's own function, of its inputs (the gates' coefficients att, ga, gf, cl, re, gE as
    ops.native.titans_scan.titans_gates makes them; weight-only, no bias rows), each chunk's
    read and update written as the kernel runs them, so that differentiating it twice gives
    the node's second derivative. _titans_linear_chunks is the layer's path: from the gates
    (bias rows too), it hands the weight-only case to that C node where it runs and
    otherwise folds each chunk into one affine map of (M, S) with the reads batched over all
    chunks (other products and rounding)."""
    P, M, S, os, Ms, Ss = P0, M0, S0, [], [M0], [S0]
    for j, (q_j, k_j, R_j, att_j, a_j, f_j, c_j, r_j) in enumerate(zip(*(
            t.unbind(2) for t in (q, k, R, att, ga, gf, cl, re)))):
        G = k_j @ (P + W0) + R_j
        os.append(q_j @ W0 + a_j[..., None] * (q_j @ M) + f_j[..., None] * (q_j @ S)
                  - att_j.tril() @ G)
        kT = k_j.transpose(-1, -2)
        M, S = (a_j[..., -1, None, None] * M + f_j[..., -1, None, None] * S
                - kT @ (c_j[..., None] * G), gE[:, :, j, None, None] * S - kT @ (r_j[..., None] * G))
        P = M
        Ms.append(M)
        Ss.append(S)
    lo = len(Ms) - tail
    return torch.stack(os, 2), torch.stack(Ms[lo:], 2), torch.stack(Ss[lo:], 2)


def _titans_segment_plain(q, k, v, g, W0, P0, M0, S0, lr):
    """ops.native.titans_scan.titans_segment's (z, M, S) by _titans_gates_plain and
    _titans_linear_plain on one chunk: the form its node's `twice` differentiates."""
    H = q.shape[2]
    heads = lambda t: t.transpose(1, 2)[:, :, None]  # noqa: E731  (B, n, H, .) -> (B, H, 1, n, .)
    th, al, et = (heads(t) for t in torch.sigmoid(g.unflatten(-1, (3, H))).unbind(-2))
    qh, kh = heads(q), heads(k)
    coef = _titans_gates_plain(qh, kh, 1 - al, et, et, lr * th)
    o, Ms, Ss = _titans_linear_plain(qh, kh, -heads(v), *coef, P0, M0, S0, W0, 1)
    return o[:, :, 0].transpose(1, 2), Ms[:, :, 0], Ss[:, :, 0]


def _titans_linear_chunks(q, k, v, init, Pg, Mc, S, bias, gates, last, first=0):
    """The linear memory without inner norm: a chunk's gradients G = k_a (W_0 + M') - v are
    linear in its gradient point M' (k_a = [k, 1], weights stacked W_a = [W; b]), so with
    (M, S) at a chunk's start (and M' = M from the second chunk on) the chunk maps
    M -> A M + f S - Kc^T (k_a M + R),  S -> E S - Ke^T (k_a M + R)
    (R = k_a W_0 - v, Kc = diag(Cm[-1]) [k, bias], Ke = diag(RE theta) [k, bias]): the maps'
    matrices and every read are products over all chunks at once, and only (M, S), each
    (J, K) with J = K+1 (K for a weight-only memory whose bias rows are zero), passes from
    chunk to chunk. q, k, v (B, H, N, C, K); gates (a, e, m, th) as _coefficients takes them.
    Returns (final state [M'_W, M'_b, M_W, M_b, S_W, S_b] at each element's last chunk
    (last (B,), none before `first`), z (B, H, N, C, K)). The fast path; the C node it calls
    has `_titans_linear_plain` as its reference (see there why both)."""
    B, H, N, C, K = q.shape
    # a weight-only memory whose state's bias rows are zero constants (every fresh state;
    # read on the host where that is free) keeps them zero: its products are K wide, not
    # K + 1 (odd widths run at half the speed in the small batched products)
    sb = (Pg[1], Mc[1], S[1])
    rows = (bias or not backend.host_readable(q) or any(t.requires_grad for t in sb)
            or any(bool(t.any()) for t in sb))
    if rows:
        one = torch.ones_like(q[..., :1])
        qa, ka = torch.cat([q, one], -1), torch.cat([k, one], -1)
        kg = torch.cat([k, one * bias], -1)                     # the gradient's inputs
        W0 = torch.cat([init[0], init[1][:, None]], -2).to(q.dtype)  # (H, K+1, K)
        R = ka @ W0[:, None] - v                                 # (B, H, N, C, K)
        aug = lambda W, b: torch.cat([W, b[..., None, :]], -2).to(q.dtype)  # noqa: E731
    else:
        from rnnzoo.ops import flop_count  # here: the module's head is the TTT region's
        from rnnzoo.ops.native import titans_scan

        qa, ka, kg = q, k, k
        W0, b0 = (t.to(q.dtype) for t in init[:2])
        P0, M0, S0 = (t.to(q.dtype) for t in (Pg[0], Mc[0], S[0]))
        lib = titans_scan.load() if flop_count.native(q, k, v, *gates, P0, M0, S0, W0) else None
        if lib is not None:  # the gates' coefficients, the chunk loop and every read in C
            # once: both kernels read them dense; copied as (B, H, N C, K) (the chunk axes of
            # a transposed (B, T, H, K) merged): torch's copy of the 5-d view ~4.7x slower
            q, k, v = (t.flatten(2, 3).contiguous().view(t.shape) for t in (q, k, v))
            coef = titans_scan.titans_gates(lib, q, k, *gates,    # (ops.native.titans_scan)
                                            plain=_titans_gates_plain)
            lo = max(first, 1)   # the states read: lo .. N (at most 3; Ms[:, :, i]: lo + i)
            o, Ms, Ss = titans_scan.titans_linear(lib, q, k, b0[:, None, None] - v, *coef, P0,
                                                  M0, S0, W0, N + 1 - lo,
                                                  plain=_titans_linear_plain)
            P_f, M_f, S_f = _pick([(P0 if j == 0 else Ms[:, :, j - lo], Ms[:, :, j + 1 - lo],
                                    Ss[:, :, j + 1 - lo]) for j in range(first, N)], last, first)
            zero = lambda: torch.zeros_like(P_f[..., 0, :])  # noqa: E731
            return [P_f, zero(), M_f, zero(), S_f, zero()], o + b0[:, None, None]
        R = _per_head(k, W0) + b0[:, None, None] - v
        aug = lambda W, b: W.to(q.dtype)  # noqa: E731
    Cm, f, REth, Acum, Ecum = _coefficients(*gates)
    att, read0 = _first_layer(q, k, init, Cm, bias)
    Pg0, Z = aug(*Pg), torch.cat([aug(*Mc), aug(*S)], -2)       # (B, H, 2J, K)
    A_T, f_T, E_T = Acum[..., -1], f[..., -1], Ecum[..., -1]     # (B, H, N)
    Kc, Ke = kg * Cm[..., -1, :, None], kg * REth[..., None]
    Kt = -torch.cat([Kc, Ke], -1).transpose(-1, -2)             # (B, H, N, 2J, C)
    J = K + rows
    lin, Bm = Kt @ ka, Kt @ R                                    # (B, H, N, 2J, J or K)
    Mc, S = Z[..., :J, :], Z[..., J:, :]
    # per chunk (unbound once: a slice of the all-chunk tensors costs a zero tensor of their
    # whole size in backward, a movedim a copy)
    each = lambda t: [u.flatten(0, 1) for u in t.unbind(2)]  # noqa: E731
    lins, Bms = each(lin), each(Bm)
    gates = [each(t[..., None, None]) for t in (A_T, f_T, E_T)]
    # chunk 0: its gradient point is the state's M' (the chunk may have begun earlier)
    Ms, Ss = [Mc], [S]
    Mc, S = Mc.flatten(0, 1), S.flatten(0, 1)
    L = torch.baddbmm(Bms[0], lins[0], Pg0.flatten(0, 1))
    a_n, f_n, e_n = (g[0] for g in gates)
    Mc, S = L[:, :J] + a_n * Mc + f_n * S, L[:, J:] + e_n * S
    # the other chunks, M' = M: only this affine map of (M, S) runs chunk after chunk
    for n in range(1, N + 1):
        Ms.append(Mc.view(B, H, J, K))
        Ss.append(S.view(B, H, J, K))
        if n == N:
            break
        L = torch.baddbmm(Bms[n], lins[n], Mc)
        a_n, f_n, e_n = (g[n] for g in gates)
        Mc, S = L[:, :J] + a_n * Mc + f_n * S, L[:, J:] + e_n * S
    Ps = [Pg0, *Ms[1:N]]                                         # each chunk's gradient point
    Mst, Sst, Pst = (torch.stack(t, 2) for t in (Ms[:N], Ss[:N], Ps))   # (B, H, N, J, K)
    G = ka @ Pst + R
    z = (read0 + Acum[..., None] * (qa @ Mst) + f[..., None] * (qa @ Sst) - att @ G)
    P_f, M_f, S_f = _pick([(Ps[j], Ms[j + 1], Ss[j + 1]) for j in range(first, N)], last, first)
    if not rows:
        zero = lambda: torch.zeros_like(M_f[..., 0, :])  # noqa: E731
        return [P_f, zero(), M_f, zero(), S_f, zero()], z
    final = [P_f[..., :K, :], P_f[..., K, :], M_f[..., :K, :], M_f[..., K, :],
             S_f[..., :K, :], S_f[..., K, :]]
    return final, z


# -- Miras: other attentional biases and retention gates ----------------------------------------
# Behrouz, Razaviyayn, Zhong & Mirrokni 2025, "It's All Connected: A Journey Through Test-Time
# Memorization, Attentional Bias, Retention, and Online Optimization", arXiv:2504.13173,
# section 5. A weight-only memory (one dense layer or a two-layer MLP) keeps accumulators U,
# one a weight, and reads the weights W = phi(U):
#
#     U_t = alpha_t U_t-1 - eta_t grad_W loss(W'; k_t, v_t),      W_t = phi(U_init + U_t)
#
# with W' the weights at the current chunk's start (the chunkwise gradient of Titans), U the
# change from the learned U_init. The attentional bias sets the loss's gradient in the error
# e = M(k) - v; the retention sets phi:
#     l2 (halved): e;  lp: p sign(e) |e|^(p-1) (Moneta);
#     huber: e where |e|_2 <= delta_t, else delta_t sign(e) (Yaad);
#     retention l2: phi = identity (Yaad);  lq: U / |U|_q^(q-2) (Moneta, whole matrix);
#     kl: softmax over the output axis (Memora: log W_t = alpha log W_t-1 - eta grad + const,
#         the memory stays on the simplex).
# U is linear in the chunk's gradients (U_t = A_t U_0 - sum_{s<=t} RA_ts eta_s g_s), so a chunk
# reads each step with its own weights without a step loop over the sequence: on the CPU in a
# C kernel (ops/native/miras_read) that runs the in-chunk recurrence in cache for every chunk
# at once; elsewhere for phi = identity in the dual form, for softmax and the q-scale by
# materialising every U_t, a group of chunks at a time.

GROUP = 1 << 21   # miras_chunked's per-step weights: elements per group of chunks


class _LpBias:
    """p sign(e) |e|^(p-1) (p = 3: 3 e |e|, no powers)."""

    def __init__(self, p):
        self.p = p

    def __call__(self, e, delta):
        if self.p == 3:
            return 3 * e * e.abs()
        return self.p * torch.sign(e) * e.abs() ** (self.p - 1)


def _l2_bias(e, delta):
    return e


def _huber_bias(e, delta):
    return torch.where(torch.linalg.vector_norm(e, dim=-1, keepdim=True) <= delta, e,
                       delta * torch.sign(e))


def attentional_bias(kind, p=3.0):
    """The loss's gradient in the error e (and delta for huber): a function (e, delta) -> G."""
    if kind == "l2":
        return _l2_bias
    if kind == "lp":
        return _LpBias(p)
    if kind == "huber":
        return _huber_bias
    raise ValueError(f"attentional bias must be 'l2', 'lp' or 'huber', got {kind!r}")


def _identity(U):
    return U


def _softmax_rows(U):
    return torch.softmax(U, -1)


class _QScale:
    """U / |U|_q^(q-2), the norm over the whole matrix (the last two axes); for q = 4
    U / sqrt(sum U^4), without powers (vector_norm with a general power took ten times as
    long, once per weight and chunk in Moneta's loop, and again in its backward)."""

    def __init__(self, q):
        self.q = q

    def __call__(self, U):
        if self.q == 4:
            U2 = U * U
            return U * (U2 * U2).sum((-2, -1), keepdim=True).rsqrt()
        return U / torch.linalg.vector_norm(U, self.q, dim=(-2, -1), keepdim=True) ** (self.q - 2)


def retention(kind, q=4.0):
    """phi: accumulator U (..., I, O) -> weights W."""
    if kind == "l2":
        return _identity
    if kind == "lq":
        return _QScale(q)
    if kind == "kl":
        return _softmax_rows
    raise ValueError(f"retention must be 'l2', 'lq' or 'kl', got {kind!r}")


def _phi_kind(phi):
    return ("identity" if phi is _identity else "softmax" if phi is _softmax_rows
            else "qscale" if isinstance(phi, _QScale) else None)


def _native_read(phi, *tensors):
    """The C kernel of the per-step reads (ops/native/miras_read.py) for these tensors and phi
    (the identity, the row softmax or a q-scale), or None: a function of (x, U_init, U_0, a,
    e, X, G)."""
    from rnnzoo.ops import flop_count  # it books its FLOPs: bench.layer_flops takes it too
    kind = _phi_kind(phi)
    if kind is None or not flop_count.native(*tensors):
        return None
    from rnnzoo.ops.native import miras_read as native_read
    lib = native_read.load()
    if lib is None:
        return None
    plain = functools.partial(_miras_read_plain, phi)
    return lambda *t: native_read.miras_read(lib, kind, getattr(phi, "q", None), *t,
                                             plain=plain)


def _native_loop(kind, phi, dloss, *tensors):
    """The C kernel of miras_chunked's chunk loop (ops/native/miras_chunk.py) for the MLP
    memory with these tensors (one dtype), phi and dloss, or None: a function of (k, v,
    delta, aT, c, U_init, Pg, U0) -> (Us, X2, G1, G2)."""
    pk = _phi_kind(phi)
    loss = ("l2" if dloss is _l2_bias else "huber" if dloss is _huber_bias
            else "l3" if isinstance(dloss, _LpBias) and dloss.p == 3 else None)
    from rnnzoo.ops import flop_count  # it books its FLOPs: bench.layer_flops takes it too
    if (kind != "mlp" or pk is None or getattr(phi, "q", 4) != 4 or loss is None
            or len({t.dtype for t in tensors}) != 1 or not flop_count.native(*tensors)):
        return None
    from rnnzoo.ops.native import miras_chunk
    lib = miras_chunk.load()
    if lib is None:
        return None
    plain = functools.partial(_miras_loop_plain, kind, phi, dloss)
    return lambda *t: miras_chunk.miras_chunks(lib, pk, loss, *t, plain=plain)


def miras_init_state(kind, B, H, K, device=None, dtype=torch.float32, hidden=None):
    """Zeros: (U'_1, ..., U_1, ..., n): the weights' accumulators, without biases."""
    W = titans_init_state(kind, B, H, K, device, dtype, hidden)
    L = (len(W) - 1) // 3
    Ws = list(W[:L:2])
    return (*Ws, *[t.clone() for t in Ws], W[-1])


def _dense(P, x):
    """Weight-only dense layers with GELU between; P: [(B, H, [M,] I, O)], x (B, H, [M,] I)."""
    for i, W in enumerate(P):
        if i:
            x = _gelu(x)
        x = (x[..., None, :] @ W)[..., 0, :]
    return x


def _miras_grads(kind, Wg, k, v, delta, dloss):
    """Weight gradients' factors (X_l, G_l) at weights Wg for the steps of k, v (B, H, M, K)."""
    P = [t for W in Wg for t in (W, None)]
    return _grads(kind, P, k, v, None, None, 0.0, False, residual=False,
                  dloss=lambda e: dloss(e, delta[..., None]))


def miras_step(kind, q_t, k_t, v_t, eta_t, alpha_t, delta_t, C, init, state, dloss, phi):
    """One step. q_t, k_t, v_t (B, H, K); eta_t, alpha_t, delta_t (B, H); init: the learned
    U_init [(H, I, O), ...]; dloss, phi from attentional_bias and retention."""
    L = (len(state) - 1) // 2
    Ug, U, n = list(state[:L]), list(state[L:2 * L]), state[-1]
    Ug, n = _titans_roll(Ug, U, n, C)
    Wg = [phi(u0.to(u.dtype) + u) for u0, u in zip(init, Ug)]
    Xs, Gs = _miras_grads(kind, Wg, k_t[:, :, None], v_t[:, :, None], delta_t[:, :, None], dloss)
    a, e = alpha_t[..., None, None], eta_t[..., None, None]
    U = [a * u - e * (X.transpose(-1, -2) @ G) for u, X, G in zip(U, Xs, Gs)]
    z = _dense([phi(u0.to(u.dtype) + u) for u0, u in zip(init, U)], q_t)
    return z, (*Ug, *U, (n + 1).to(state[-1].dtype))


def miras_sequential(kind, q, k, v, eta, alpha, delta, C, init, state, dloss, phi):
    """The reference: miras_step over time. q, k, v (B, T, H, K); eta, alpha, delta (B, T, H)."""
    zs = []
    for t in range(q.shape[1]):
        z, state = miras_step(kind, q[:, t], k[:, t], v[:, t], eta[:, t], alpha[:, t],
                              delta[:, t], C, init, state, dloss, phi)
        zs.append(z)
    return torch.stack(zs, 1), state


def _miras_loop(kind, phi, dloss, init, Ug, U, kc, vc, dc, A_end, c_end):
    """miras_chunked's chunk loop in PyTorch: per chunk its U_0, X and G of each weight
    (made), and the (U', U) after it (after). kc, vc (B, H, N, C, K); dc (B, H, N, C); A_end
    (B, H, N, 1, 1), c_end (B, H, N, C, 1) each chunk's whole decay and last row of Cm."""
    made, after = [], []
    # unbound once: a chunk's slice taken in the loop would cost a whole-size zero tensor in
    # backward, per chunk
    for k_j, v_j, d_j, a_j, c_j in zip(*(t.unbind(2) for t in (kc, vc, dc, A_end, c_end))):
        Wg = [phi(u0.to(u.dtype) + u) for u0, u in zip(init, Ug)]
        Xs, Gs = _miras_grads(kind, Wg, k_j, v_j, d_j, dloss)
        made.append((*U, *Xs, *Gs))
        U = [a_j * u - X.transpose(-1, -2) @ (c_j * G) for u, X, G in zip(U, Xs, Gs)]
        after.append([*Ug, *U])
        Ug = U
    return made, after


def _miras_loop_plain(kind, phi, dloss, k, v, dl, aT, c, u1, u2, P1, P2, U1, U2):
    """ops.native.miras_chunk's outputs (Us1, Us2, X2, G1, G2, flat) by _miras_loop: the
    form its node's `twice` differentiates."""
    made, after = _miras_loop(kind, phi, dloss, [u1, u2], [P1, P2], [U1, U2], k, v, dl,
                              aT[..., None, None], c[..., None])
    Us = [[U0, *(a[2 + i] for a in after)] for i, U0 in enumerate((U1, U2))]
    return (*Us[0], *Us[1], *(torch.stack([m[i] for m in made]) for i in (3, 4, 5)))


def _step_weights(u0, Ac, Cc, u, X, G):
    """V_t = U_init + A_t U_0 - sum_s Cm[t, s] X_s^T G_s of every step (B, H, N, C, I, O),
    the sum for every step of a chunk in one product: rows (t, i), contraction s. u0 (H, 1,
    I, O); Ac (B, H, N, C), Cc (B, H, N, C, C); u (B, H, N, I, O); X, G (B, H, N, C, I or
    O)."""
    CX = Cc[..., :, None, :] * X.transpose(-1, -2)[..., None, :, :]  # (.., C, I, C)
    return torch.addcmul(u0[:, None], Ac[..., None, None], u[:, :, :, None]) - (
        CX.flatten(-3, -2) @ G).view(*CX.shape[:-1], u.shape[-1])


def _miras_read_plain(phi, x, u0, a, e, U0, X, G):
    """ops.native.miras_read's y by _step_weights (its arguments as miras_read takes them):
    the form its node's `twice` differentiates."""
    U0, X, G = (torch.stack(t, 2) if isinstance(t, list) else t.movedim(0, 2)
                for t in (U0, X, G))
    Cm, Acum = _ratios(a) * e[..., None, :], torch.cumprod(a, -1)
    return (x[..., None, :] @ phi(_step_weights(u0[:, None], Acum, Cm, U0, X, G)))[..., 0, :]


def miras_chunked(kind, q, k, v, eta, alpha, delta, C, init, state, dloss, phi):
    """The chunkwise form, equal to `miras_sequential`. Same arguments.

    Only the weights pass from chunk to chunk: the loop takes a chunk's gradients at its
    start and its end accumulators U_C = A_C U_0 - X^T (Cm[C] o G), nothing else: on the CPU,
    for the MLP memory with the three layers' rules, in the C kernel ops/native/miras_chunk
    (one (batch, head) memory at a time, its backward by hand). The reads
    then run over all chunks at once: on the CPU (float32/64, `backend.use_native`), the C
    kernel ops/native/miras_read, which makes each step's weights in cache from the chunk's
    start (W_t = a_t W_t-1 - e_t X_t^T G_t) and never stores them; elsewhere the dual form
    for phi = identity; otherwise each step's
    U_t = A_t U_0 - Cm[t] @ (X_s (x) G_s) materialised (as the reference holds each step's
    weights), a group of chunks at a time to bound the memory."""
    B, T, H, K = q.shape
    (q,), (k, v, eta, alpha, delta), marks = finite_inputs(read=(q,), write=(k, v, eta, alpha, delta))
    L = (len(state) - 1) // 2
    Ug, U, n = list(state[:L]), list(state[L:2 * L]), state[-1]
    Ug, c = _titans_roll(Ug, U, n, C)
    NT, first, last, place, take = _grid(c, T, C)   # a batch at one offset: padded, no scatter
    chunks = lambda t: t.reshape(B, H, NT, C, *t.shape[3:])  # noqa: E731
    qc, kc, vc, dc, e = (chunks(place(t)) for t in (q, k, v, delta, eta))
    a = chunks(1 - place(1 - alpha))                   # identity steps off the sequence
    loop = _native_loop(kind, phi, dloss, q, *init, *Ug, *U)
    read = _native_read(phi, q, *init)
    if loop is None or read is None:   # the PyTorch loop and reads take every (t, s) ratio
        Cm, Acum = _ratios(a) * e[..., None, :], torch.cumprod(a, -1)   # every chunk at once
        c_end, A_end = Cm[..., -1, :, None], Acum[..., -1, None, None]
    else:   # the C kernels take only each chunk's last row and whole product (suffix products)
        suf = torch.cumprod(a.flip(-1), -1).flip(-1)              # prod_{r >= s} a_r
        c_end = (torch.cat([suf[..., 1:], torch.ones_like(a[..., :1])], -1) * e)[..., None]
        A_end = suf[..., :1, None]
    if loop is not None:   # the whole loop in C, one (batch, head) memory at a time
        Us, X2, G1, G2 = loop(kc, vc, dc, A_end[..., 0, 0], c_end[..., 0], init, Ug, U)
        # per weight its NT + 1 chunk starts; X, G chunk-major (N, B, H, ...) as the reads
        # take them
        history = [[*(Ug if j == 0 else [u[j] for u in Us]), *[u[j + 1] for u in Us]]
                   for j in range(first, NT)]
        Ust = [u[:NT] for u in Us]
        Xs, Gs = [kc.permute(2, 0, 1, 3, 4), X2], [G1, G2]
    else:
        made, after = _miras_loop(kind, phi, dloss, init, Ug, U, kc, vc, dc, A_end, c_end)
        history = after[first:]
        per = [list(t) for t in zip(*made)]        # per weight: its NT chunks' U_0, X, G
        Ust, Xs, Gs = per[:L], per[L:2 * L], per[2 * L:]
    final = _pick(history, last, first)
    u0s = [u0.to(q.dtype)[:, None] for u0 in init]               # (H, 1, I, O)
    if read is None:   # the PyTorch reads take every chunk at once: stacked, (B, H, NT, ...)
        Ust, Xs, Gs = ([torch.stack(t, 2) if isinstance(t, list) else t.movedim(0, 2)
                        for t in ts] for ts in (Ust, Xs, Gs))
    if read is not None:
        # each step's weights made in cache by the recurrence W_t = a_t W_t-1 - e_t X_t^T G_t
        # (the same U_t), never stored (for phi = identity too: the dual form's batches of
        # (C, C) and (C, I) products ran at ~5 GFLOP/s); the chunks' tensors as the loop made
        # them (stacking them was a copy of every chunk's weights)
        x = qc
        for i, (u0, u, X, G) in enumerate(zip(init, Ust, Xs, Gs)):
            if i:
                x = _gelu(x)
            x = read(x, u0.to(q.dtype), u, a, e, X, G)
        z = x
    elif phi is _identity:  # linear in U: every read in the dual form, as Titans
        x = qc
        for i, (u0, u, X, G) in enumerate(zip(u0s, Ust, Xs, Gs)):
            if i:
                x = _gelu(x)
            x = (_per_head(x, u0[:, 0]) + Acum[..., None] * (x @ u)
                 - (Cm * (x @ X.transpose(-1, -2))) @ G)
        z = x
    else:
        size = B * H * C * max(u.shape[-2] * u.shape[-1] for u in u0s)
        step = max(1, GROUP // size)                             # chunks per group
        split = lambda t: t.split(step, 2)  # noqa: E731  (split, not sliced: see the loop)
        zs = []
        for x, Ac, Cc, *UXG in zip(*map(split, (qc, Acum, Cm, *Ust, *Xs, *Gs))):
            for i, (u0, u, X, G) in enumerate(zip(u0s, UXG[:L], UXG[L:2 * L], UXG[2 * L:])):
                if i:
                    x = _gelu(x)
                # V_t = U_init + A_t U_0 - sum_s Cm[t, s] X_s^T G_s, the sum for every step of
                # a chunk in one product: rows (t, i), contraction s
                x = (x[..., None, :] @ phi(_step_weights(u0, Ac, Cc, u, X, G)))[..., 0, :]
            zs.append(x)
        z = torch.cat(zs, 2)
    z = take(z.reshape(B, H, NT * C, -1))
    n_out = ((c + T - 1) % C + 1).to(state[-1].dtype)
    return poison(z, marks.outputs), (*poison(tuple(final), marks.state), n_out)
