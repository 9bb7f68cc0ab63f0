"""What the chunkwise ops share with their Triton kernels (`rnnzoo.ops.triton`): the argument
checks, so both give the same errors, the chunk layout and the unit-lower-triangular
inverse; and the UT-transform solver of the delta rules with an erase key (`wy_chunks`,
ops.chunk.kda and ops.erase_delta). A module of its own so that the ops (which
dispatch to the kernels) and the kernels (which check as the ops do) import it, not each
other.
"""

from __future__ import annotations

import torch

__all__ = ["check_delta", "check_linear", "check_mlstm", "check_rwkv7", "from_chunks",
           "state_pass", "to_chunks", "unit_lower_inverse", "unit_lower_solve", "wy_chunks"]


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
    if R.shape[-1] > A.shape[-1]:
        return unit_lower_inverse(A) @ R
    return torch.linalg.solve_triangular(A, R, upper=False, unitriangular=True)


def causal_decay(G, E=None, diagonal: int = 0):
    """The within-chunk decay matrix e^{E_t - G_s} where s <= t + diagonal (diagonal -1:
    s < t), 0 elsewhere, without overflow where masked out: G, E (..., C) log-decays summed
    within each chunk (E: G when None). Returns (..., C, C)."""
    C = G.shape[-1]
    keep = torch.ones(C, C, dtype=torch.bool, device=G.device).tril(diagonal)
    E = G if E is None else E
    return (E[..., :, None] - G[..., None, :]).masked_fill(~keep, float("-inf")).exp()


def state_pass(S, U0, W, k_out, decay):
    """The sequential part of a chunked delta rule, S_0 -> S_C chunk after chunk:

        U_n = U0_n - W_n S_n,     S_{n+1} = decay_n o S_n + k_out_n^T U_n

    S: (B, H, K, V) entering the first chunk; U0: (B, H, N, C, V); W, k_out: (B, H, N, C, K);
    decay: (B, H, N, K, 1), (B, H, N, 1, 1) or None (no decay). Returns (the states entering
    each chunk (B, H, N, K, V), U (B, H, N, C, V), the final state). The chunks are unbound,
    not indexed, so that the backward pass stacks their gradients once."""
    decays = [None] * U0.shape[2] if decay is None else decay.unbind(2)
    states, pseudo = [], []
    for u0_n, w_n, kd_n, dec_n in zip(U0.unbind(2), W.unbind(2), k_out.unbind(2), decays):
        states.append(S)
        u = u0_n - w_n @ S
        pseudo.append(u)
        S = S if dec_n is None else S * dec_n
        S = S + kd_n.transpose(-1, -2) @ u
    return torch.stack(states, 2), torch.stack(pseudo, 2), S


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

    A: strictly lower (..., C, C); M: lower (..., C, C); v: (..., C, V); w, q_in, k_out:
    (..., C, K); chunk_decay: (..., K, 1) or (..., 1, 1); S: (B, H, K, V) the state entering
    the first chunk. The intra-chunk work is done for all chunks at once; only the state
    pass (two small products a chunk) loops. Returns (o (B, T, H, V), final state)."""
    V = v.shape[-1]
    U0, W = unit_lower_solve(A, torch.cat([v, w], -1)).split([V, w.shape[-1]], -1)
    states, U, S = state_pass(S, U0, W, k_out, chunk_decay)     # U = U0 - W S_0
    o = scale * (q_in @ states + M @ U)
    return from_chunks(o, T), S
