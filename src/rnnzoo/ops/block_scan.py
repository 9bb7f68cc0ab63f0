"""Block-diagonal and small dense linear recurrences, and block-tridiagonal solves
(the linear solvers of `ops.newton`).

`block_linear_scan` solves, for transition matrices instead of diagonals,

    h_t = A_t h_{t-1} + b_t,   A_t: (..., k, k),  b_t: (..., k)

over any number of independent blocks (m blocks of size k: a block-diagonal
transition; m = 1: a dense one), by odd-even reduction: neighbouring steps are
combined as

    (A1, b1) o (A0, b0) = (A1 A0, A1 b0 + b1),

the half-length sequence is solved recursively and the other half filled in with
one more step (a work-efficient tree of ~log2(T) levels, about 2x the sequential
work). Each combine is a k x k matrix product, O(T k^3) work per block in all.
(`ops.scan.linear_scan`, for diagonal transitions, uses a chunked scan instead.)

`block_tridiagonal_solve` solves a block-tridiagonal system by cyclic reduction
(the same odd-even tree): ELK's Levenberg-Marquardt step needs it.
"""

from __future__ import annotations

import torch


def block_linear_scan(A: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, *,
                      reverse: bool = False) -> torch.Tensor:
    """Solve h_t = A_t h_{t-1} + b_t for all t at once.

    A: (B, T, *S, k, k), b: (B, T, *S, k), h0: (B, *S, k) or None (zeros).
    reverse: h_t = A_t h_{t+1} + b_t from t = T-1 down to 0 (h0 is then h_T).
    Returns h: (B, T, *S, k). Plain autograd (the Newton solver calls it without grad).
    """
    if A.shape[:-1] != b.shape or A.shape[-1] != A.shape[-2] or b.dim() < 3:
        raise ValueError(f"block_linear_scan: A must be (B, T, ..., k, k) and b (B, T, ..., k); "
                         f"got A {tuple(A.shape)}, b {tuple(b.shape)}")
    if reverse:
        A, b = A.flip(1), b.flip(1)
    if h0 is not None:
        if h0.shape != b.shape[:1] + b.shape[2:]:
            raise ValueError(f"block_linear_scan: h0 must have shape "
                             f"{tuple(b.shape[:1] + b.shape[2:])}, got {tuple(h0.shape)}")
        b = b.clone()
        b[:, 0] = b[:, 0] + _matvec(A[:, 0], h0)
    h = _tree(A, b)
    return h.flip(1) if reverse else h


def _matvec(A, v):
    return (A @ v.unsqueeze(-1)).squeeze(-1)


def _tree(A, b):
    T = b.shape[1]
    if T == 1:
        return b.clone()
    n = T // 2
    A_even, A_odd = A[:, 0:2 * n:2], A[:, 1:2 * n:2]
    b_even, b_odd = b[:, 0:2 * n:2], b[:, 1:2 * n:2]
    h_odd = _tree(A_odd @ A_even, _matvec(A_odd, b_even) + b_odd)
    h = torch.empty_like(b)
    h[:, 1::2] = h_odd
    h[:, 0] = b[:, 0]
    m = (T - 1) // 2
    if m:
        h[:, 2::2] = _matvec(A[:, 2::2], h_odd[:, :m]) + b[:, 2::2]
    return h


def block_tridiagonal_solve(lower: torch.Tensor, diag: torch.Tensor, upper: torch.Tensor,
                            rhs: torch.Tensor) -> torch.Tensor:
    """Solve L_t x_{t-1} + D_t x_t + U_t x_{t+1} = r_t for t = 0..T-1 by cyclic reduction.

    lower, diag, upper: (B, T, *S, k, k) (lower[:, 0] and upper[:, -1] are ignored);
    rhs: (B, T, *S, k). Returns x: (B, T, *S, k). Each level eliminates the even
    unknowns, x_e = D_e^{-1} (r_e - L_e x_{e-1} - U_e x_{e+1}), from the odd equations
    (stable for symmetric positive definite systems such as J^T J + lambda I).
    """
    T = rhs.shape[1]
    if T == 1:
        return torch.linalg.solve(diag[:, 0], rhs[:, 0]).unsqueeze(1)
    L, D, U, r = lower.clone(), diag, upper.clone(), rhs
    L[:, 0] = 0
    U[:, -1] = 0
    # Solve with every even block at once: D_e^{-1} [L_e, U_e, r_e].
    De, Le, Ue, re = D[:, 0::2], L[:, 0::2], U[:, 0::2], r[:, 0::2]
    k = D.shape[-1]
    sol = torch.linalg.solve(De, torch.cat([Le, Ue, re.unsqueeze(-1)], -1))
    DiL, DiU, Dir = sol[..., :k], sol[..., k:2 * k], sol[..., 2 * k]
    n = T // 2  # odd unknowns 1, 3, ..., each with an even left neighbour and maybe a right one
    Lo, Do, Uo, ro = L[:, 1::2], D[:, 1::2], U[:, 1::2], r[:, 1::2]
    # left neighbour of odd 2i+1 is even 2i (index i); right neighbour is even 2i+2 (index i+1)
    D_new = Do - Lo @ DiU[:, :n]
    r_new = ro - _matvec(Lo, Dir[:, :n])
    L_new = -Lo @ DiL[:, :n]
    U_new = torch.zeros_like(Uo)
    has_right = (T - 1) // 2  # odd unknowns with an even right neighbour
    if has_right:
        Uo_r = Uo[:, :has_right]
        D_new = torch.cat([D_new[:, :has_right] - Uo_r @ DiL[:, 1:has_right + 1],
                           D_new[:, has_right:]], 1)
        r_new = torch.cat([r_new[:, :has_right] - _matvec(Uo_r, Dir[:, 1:has_right + 1]),
                           r_new[:, has_right:]], 1)
        U_new = torch.cat([-Uo_r @ DiU[:, 1:has_right + 1], U_new[:, has_right:]], 1)
    x_odd = block_tridiagonal_solve(L_new, D_new, U_new, r_new)
    # back-substitute the even unknowns
    x = torch.empty_like(rhs)
    x[:, 1::2] = x_odd
    x_even = Dir.clone()
    n_even = x_even.shape[1]
    x_even[:, 1:] = x_even[:, 1:] - _matvec(DiL[:, 1:], x_odd[:, :n_even - 1])
    n_right = min(n_even, n)
    x_even[:, :n_right] = x_even[:, :n_right] - _matvec(DiU[:, :n_right], x_odd[:, :n_right])
    x[:, 0::2] = x_even
    return x
