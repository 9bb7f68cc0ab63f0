"""What the chunkwise ops share with their Triton kernels (`rnnzoo.ops.triton`): the argument
checks, so both give the same errors, the chunk layout and the unit-lower-triangular
inverse; and the UT-transform solver of the delta rules with an erase key (`wy_chunks`,
ops.chunk.kda and ops.erase_delta). A module of its own so that the ops (which
dispatch to the kernels) and the kernels (which check as the ops do) import it, not each
other.
"""

from __future__ import annotations

import torch

from rnnzoo.ops import first_order

__all__ = ["causal_decay", "check_delta", "check_linear", "check_mlstm", "check_rwkv7",
           "chunk_scan", "from_chunks", "to_chunks", "unit_lower_inverse", "unit_lower_solve", "wy_chunks"]


def check_delta(op: str, q: torch.Tensor, named: dict[str, tuple[torch.Tensor | None, tuple]],
                initial_state, V: int):
    """Every tensor's shape against the pattern built from q's (B, T, H, K)."""
    if not isinstance(q, torch.Tensor) or q.dim() != 4 or not q.is_floating_point():
        got = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
        raise ValueError(f"{op}: q must be a floating-point (B, T, H, K) tensor, got {got}")
    for name, (t, shape) in named.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{op}: {name} must have shape {shape}, got {got}")
    B, _, H, K = q.shape
    if initial_state is not None and tuple(initial_state.shape) != (B, H, K, V):
        raise ValueError(f"{op}: initial_state must have shape {(B, H, K, V)}, "
                         f"got {tuple(initial_state.shape)}")


def check_rwkv7(r, w, k, v, a, b, initial_state):
    B, T, H, K = r.shape if isinstance(r, torch.Tensor) and r.dim() == 4 else (0, 0, 0, 0)
    V = v.shape[-1] if isinstance(v, torch.Tensor) else 0
    check_delta("rwkv7", r, dict(w=(w, (B, T, H, K)), k=(k, (B, T, H, K)), v=(v, (B, T, H, V)),
                            a=(a, (B, T, H, K)), b=(b, (B, T, H, K))), initial_state, V)


def check_linear(q, k, v, g, initial_state, bonus):
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k must be (B, T, H, K) and v (B, T, H, V) with equal B, T, H; got "
                         f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    B, T, H, K = q.shape
    if g is not None and g.shape not in ((B, T, H), (B, T, H, K)):
        raise ValueError(f"log_decay must be (B, T, H) or (B, T, H, K) = {(B, T, H)} or "
                         f"{(B, T, H, K)}, got {tuple(g.shape)}")
    if initial_state is not None and initial_state.shape != (B, H, K, v.shape[-1]):
        raise ValueError(f"initial_state must be (B, H, K, V) = {(B, H, K, v.shape[-1])}, "
                         f"got {tuple(initial_state.shape)}")
    if bonus is not None and bonus.shape != (H, K):
        raise ValueError(f"bonus must be (H, K) = {(H, K)}, got {tuple(bonus.shape)}")


def check_mlstm(q, k, v, log_i, log_f, initial_state):
    check_linear(q, k, v, None, None, None)
    B, T, H, K = q.shape
    for name, t in (("log_i", log_i), ("log_f", log_f)):
        if t.shape != (B, T, H):
            raise ValueError(f"{name} must be (B, T, H) = {(B, T, H)}, got {tuple(t.shape)}")
    if initial_state is not None:
        want = ((B, H, K, v.shape[-1]), (B, H, K), (B, H))
        got = tuple(tuple(s.shape) for s in initial_state)
        if got != want:
            raise ValueError(f"initial_state must be (C, n, m) of shapes {want}, got {got}")


def unit_lower_inverse(A):
    """(I + A)^{-1} for strictly lower-triangular A (..., C, C), by one batched triangular
    solve against the identity (the UT transform's T, before its diag(beta) factor).
    Solving for I and then multiplying is faster on CPU than solving for wide right-hand sides."""
    C = A.shape[-1]
    eye = torch.eye(C, dtype=A.dtype, device=A.device)
    return torch.linalg.solve_triangular(eye + A, eye.expand(A.shape), upper=False,
                                         unitriangular=True)


def unit_lower_solve(A, R):
    """(I + A)^{-1} R for strictly lower-triangular A (..., C, C) and R (..., C, W): one batched
    triangular solve with a unit diagonal (A's own diagonal is never read) while W <= C, else
    `unit_lower_inverse` times R.

    The solve copies R into LAPACK's column-major layout and back; for W <= C that costs
    less than forming the inverse and multiplying (kda's op at B=16, T=2048, C=W=32, 1 thread:
    forward ~20% faster, forward + backward ~10%), for wide R (the delta rule's C=16, W=48)
    it does not."""
    return _unit_lower_solve(A, R)[0]


def _unit_lower_solve(A, R):
    """unit_lower_solve -> (X, the inverse where it was formed, else None)."""
    if R.shape[-1] > A.shape[-1]:
        Tinv = unit_lower_inverse(A)
        return Tinv @ R, Tinv
    return torch.linalg.solve_triangular(A, R, upper=False, unitriangular=True), None


def causal_decay(G, E=None, diagonal: int = 0):
    """The within-chunk decay matrix e^{E_t - G_s} where s <= t + diagonal (diagonal -1:
    s < t), 0 elsewhere, without overflow where masked out: G, E (..., C) log-decays summed
    within each chunk (E: G when None). Returns (..., C, C)."""
    C = G.shape[-1]
    keep = torch.ones(C, C, dtype=torch.bool, device=G.device).tril(diagonal)
    E = G if E is None else E
    return (E[..., :, None] - G[..., None, :]).masked_fill(~keep, float("-inf")).exp()


def chunk_scan(S, U0, W, k_out, decay, q_in, M, scale):
    """The sequential part of a chunked delta rule and its readout, S_0 -> S_C chunk after
    chunk:

        U_n = U0_n - W_n S_n,     S_{n+1} = decay_n o S_n + k_out_n^T U_n,
        O_n = scale (q_in_n S_n + M_n U_n)

    S: (B, H, K, V) entering the first chunk; U0: (B, H, N, R, V); k_out: (B, H, N, R, K);
    W: (B, H, N, Rw, K), Rw <= R (the rows of U past Rw read no state: U_n = U0_n - [W_n S_n; 0]);
    q_in: (B, H, N, C, K); M: (B, H, N, C, R) (R = C for the delta rules; RWKV-7 stacks its
    rank-one and value parts, R = 2C); decay: (B, H, N, K, 1), (B, H, N, 1, 1) or None (no
    decay); scale a number. Returns (O (B, H, N, C, V), the final state).

    An autograd Function: the loop runs without a graph (three ops a chunk), and the
    backward pass runs its own reverse loop over the chunks,

        dU_n = scale M_n^T dO_n + k_out_n dS_{n+1},
        dS_n = scale q_in_n^T dO_n + decay_n o dS_{n+1} - W_n^T dU_n,

    then every other gradient (dW = -dU S^T, dk_out = U dS_{n+1}^T, ...) as one batched
    product over all chunks, instead of the ~15 recorded ops a chunk autograd replays."""
    return _ChunkScan.apply(S, U0, W, k_out, decay, q_in, M, scale)


def _flat(x):
    """(B, H, N, ...) -> (B H, N, ...), a view where the layout allows."""
    return None if x is None else x.flatten(0, 1)


def _scan_forward(S, U0, W, k_out, decay, q_in, M, scale):
    """chunk_scan's forward without a graph -> (O, final S, what its backward reads)."""
    B, H, N, R, V = U0.shape
    K, C, Rw = W.shape[-1], q_in.shape[-2], W.shape[-2]
    S = S.reshape(B * H, K, V)
    U0f, Wf, kT = _flat(U0), _flat(W), _flat(k_out).transpose(-1, -2)
    dec = _flat(decay)
    states, pseudo = [], []
    for n in range(N):
        states.append(S)
        if Rw == R:
            u = torch.baddbmm(U0f[:, n], Wf[:, n], S, alpha=-1)
        else:   # only the first Rw rows read the state
            u = U0f[:, n].clone()
            u[:, :Rw].baddbmm_(Wf[:, n], S, alpha=-1)
        pseudo.append(u)
        S = torch.baddbmm(S if dec is None else S * dec[:, n], kT[:, n], u)
    states, U = torch.stack(states, 1), torch.stack(pseudo, 1)   # (B H, N, K|R, V)
    o = torch.baddbmm(_flat(M).reshape(-1, C, R) @ U.view(-1, R, V),
                      _flat(q_in).reshape(-1, C, K), states.view(-1, K, V))
    if scale != 1:
        o.mul_(scale)
    return o.view(B, H, N, C, V), S.view(B, H, K, V), (states, U, W, k_out, decay, q_in, M)


def _scan_backward(saved, scale, dO, dS_final, need):
    """chunk_scan's gradients (dS, dU0, dW, dk_out, ddecay, dq_in, dM; None where `need`,
    the seven flags, is False; dU0 always)."""
    states, U, W, k_out, decay, q_in, M = saved
    B, H, N, Rw, K = W.shape
    R, V, C = U.shape[-2], U.shape[-1], q_in.shape[-2]
    dO = (dO * scale if scale != 1 else dO).reshape(B * H * N, C, V).contiguous()
    Mf, qf = _flat(M).reshape(-1, C, R), _flat(q_in).reshape(-1, C, K)
    Uf, Sf = U.view(-1, R, V), states.view(-1, K, V)
    dM = (dO @ Uf.transpose(-1, -2)).view(M.shape) if need[6] else None
    dq = (dO @ Sf.transpose(-1, -2)).view(q_in.shape) if need[5] else None
    dU = (Mf.transpose(-1, -2) @ dO).view(B * H, N, R, V)
    dstates = (qf.transpose(-1, -2) @ dO).view(B * H, N, K, V)
    kf, Wt, dec = _flat(k_out), _flat(W).transpose(-1, -2), _flat(decay)
    dS = torch.zeros_like(states[:, 0]) if dS_final is None else dS_final.reshape(B * H, K, V)
    later, dUs = [None] * N, [None] * N        # dS_{n+1}, the total dU_n
    for n in range(N - 1, -1, -1):
        later[n] = dS
        du = torch.baddbmm(dU[:, n], kf[:, n], dS)
        dUs[n] = du
        dS_new = torch.baddbmm(dstates[:, n], Wt[:, n], du[:, :Rw], alpha=-1)
        dS = dS_new.add_(dS if dec is None else dec[:, n] * dS)
    dU = torch.stack(dUs, 1).view(-1, R, V)
    later = torch.stack(later, 1).view(-1, K, V)
    dW = None
    if need[2]:
        dUw = dU.view(-1, N, R, V)[:, :, :Rw].reshape(-1, Rw, V) if Rw < R else dU
        dW = (dUw @ Sf.transpose(-1, -2)).neg_().view(W.shape)
    dk = (Uf @ later.transpose(-1, -2)).view(k_out.shape) if need[3] else None
    ddec = None
    if decay is not None and need[4]:
        ddec = (Sf * later).view(B, H, N, K, V).sum(-1, keepdim=True)
        if decay.shape[-2] == 1:
            ddec = ddec.sum(-2, keepdim=True)
    dS0 = dS.view(B, H, K, V) if need[0] else None
    return dS0, dU.view(B, H, N, R, V), dW, dk, ddec, dq, dM


def _scan_plain(S, U0, W, k_out, decay, q_in, M, scale):
    """chunk_scan in plain differentiable ops (its forward's own loop, recorded): the form
    _ChunkScan's `twice` differentiates."""
    return _scan_forward(S, U0, W, k_out, decay, q_in, M, scale)[:2]


class _ChunkScan(first_order.Function):
    @staticmethod
    def forward(ctx, S, U0, W, k_out, decay, q_in, M, scale):
        o, S1, saved = _scan_forward(S, U0, W, k_out, decay, q_in, M, scale)
        ctx.save_for_backward(*saved, S, U0)  # S, U0: the inputs as given, for `twice`
        ctx.scale = scale
        return o, S1

    @staticmethod
    def twice(ctx, dO, dS_final):  # under create_graph: autograd through the recorded loop
        states, U, W, k_out, decay, q_in, M, S, U0 = ctx.saved_tensors
        return first_order.replay(_scan_plain, (S, U0, W, k_out, decay, q_in, M, ctx.scale),
                                  (dO, dS_final), ctx.needs_input_grad)

    @staticmethod
    def backward(ctx, dO, dS_final):
        return *_scan_backward(ctx.saved_tensors[:7], ctx.scale, dO, dS_final,
                               ctx.needs_input_grad), None


def _wy_forward(A, M, v, w, q_in, k_out, decay, S, scale):
    """_WY's forward: the solve (as `unit_lower_solve` chooses) and the scan ->
    (o, final S, X, the inverse or None, the masks, what _scan_backward reads). Plain
    differentiable ops: recorded (`_wy_plain`), it is the form _WY's `twice` differentiates."""
    C, V, Cq = A.shape[-1], v.shape[-1], M.shape[-2]
    strict = torch.ones(C, C, dtype=A.dtype, device=A.device).tril_(-1)
    step = torch.arange(C, device=A.device)  # output row t reads steps s < (t + 1) C / Cq
    lower = (step // (C // Cq) <= step[:Cq, None]).to(A.dtype)
    X, Tinv = _unit_lower_solve(A, torch.cat([v, w], -1))
    U0, W = X.split([V, w.shape[-1]], -1)
    o, S, saved = _scan_forward(S, U0, W, k_out, decay, q_in, M * lower, scale)
    return o, S, X, Tinv, strict, lower, saved


def _wy_plain(A, M, v, w, q_in, k_out, decay, S, scale):
    return _wy_forward(A, M, v, w, q_in, k_out, decay, S, scale)[:2]


class _WY(first_order.Function):
    """wy_chunks' solve and scan with one backward: the solve's gradient is the transposed
    solve, dR = (I + A)^{-T} dX and dA = -dR X^T on s < t; the masks of A (s < t) and M
    (s <= t) are applied here, once, as products with a float mask (no tril copies). Under
    create_graph, `twice` replays the same forward recorded (`_wy_plain`)."""

    @staticmethod
    def forward(ctx, A, M, v, w, q_in, k_out, decay, S, scale):
        o, S1, X, Tinv, strict, lower, saved = _wy_forward(A, M, v, w, q_in, k_out, decay, S,
                                                           scale)
        # the last five: the inputs as given (references), for `twice`
        ctx.save_for_backward(A if Tinv is None else Tinv, X, strict, lower, *saved,
                              A, M, v, w, S)
        ctx.scale, ctx.inverse, ctx.V = scale, Tinv is not None, v.shape[-1]
        return o, S1

    @staticmethod
    def twice(ctx, dO, dS_final):
        k_out, decay, q_in = ctx.saved_tensors[7:10]   # as given: _scan_forward keeps them
        A, M, v, w, S = ctx.saved_tensors[11:]
        return first_order.replay(_wy_plain, (A, M, v, w, q_in, k_out, decay, S, ctx.scale),
                                  (dO, dS_final), ctx.needs_input_grad)

    @staticmethod
    def backward(ctx, dO, dS_final):
        A, X, strict, lower, *saved = ctx.saved_tensors[:11]
        need = ctx.needs_input_grad    # A, M, v, w, q_in, k_out, decay, S
        dS0, dU0, dW, dk, ddec, dq, dM = _scan_backward(
            saved, ctx.scale, dO, dS_final, (need[7], True, True, need[5], need[6], need[4], need[1]))
        dX = torch.cat([dU0, dW], -1)
        if ctx.inverse:
            dR = A.transpose(-1, -2) @ dX
        else:
            dR = torch.linalg.solve_triangular(A.transpose(-1, -2), dX, upper=True,
                                               unitriangular=True)
        dA = (dR @ X.transpose(-1, -2)).mul_(-strict) if need[0] else None
        dv, dw = dR.split([ctx.V, dR.shape[-1] - ctx.V], -1)
        return dA, None if dM is None else dM.mul_(lower), dv, dw, dq, dk, ddec, dS0, None


def to_chunks(x, C):
    """(B, T, H, ...) -> (B, H, N, C, ...), zero-padded at the end to N * C steps."""
    T = x.shape[1]
    N = -(-T // C)
    pad = N * C - T
    if pad:
        x = torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], 1)
    x = x.reshape(x.shape[0], N, C, *x.shape[2:])
    return x.movedim(3, 1).contiguous()  # (B, H, N, C, ...)


def from_chunks(x, T):
    """(B, H, N, C, D) -> (B, T, H, D): the inverse of `to_chunks`."""
    B, H, N, C, D = x.shape
    return x.movedim(1, 3).reshape(B, N * C, H, D)[:, :T]


def wy_chunks(A, M, v, w, q_in, k_out, chunk_decay, S, scale, T):
    """The UT transform and the state pass of a delta rule written per chunk as
    S_t = D_t S_{t-1} + k_t u_t^T, given the chunk's scores (all (B, H, N, ...) from
    `to_chunks`):

        (I + A) U = v - w S_0,     O = scale (q_in S_0 + M U),     S_C = chunk_decay o S_0 + k_out^T U

    A (..., C, C): only its strictly lower part is read (s < t); M (..., C, C): only its
    lower part (s <= t), so callers need not mask them (M and q_in may instead have C / n
    rows, output t read after step (t + 1) n - 1: DeltaProduct's n steps a token); v: (..., C, V); w, q_in, k_out:
    (..., C, K); chunk_decay: (..., K, 1), (..., 1, 1) or None; S: (B, H, K, V) the state
    entering the first chunk. The intra-chunk work is done for all chunks at once; only the
    state pass (`chunk_scan`'s loop) runs chunk by chunk. One autograd Function (`_WY`) with
    the solve (as `unit_lower_solve` chooses: a triangular solve, or the inverse for R wider
    than C) and the scan. Returns (o (B, T, H, V), final state)."""
    o, S = _WY.apply(A, M, v, w, q_in, k_out, chunk_decay, S, scale)
    return from_chunks(o, T), S
