"""The linear recurrence on a 2-D grid's DAG, shared by pLSTM and Chimera.

Cell (i, j) of an X x Y grid has two incoming edges, from the left (l, the state
C^r(i, j-1)) and from above (u, the state C^d(i-1, j)), and two outgoing ones, to the
right (r) and downwards (d). The states on the edges (the line graph of the grid, as
pLSTM puts it; the Roesser 2-D state space, as Chimera does):

    L(i,j) = C^r(i, j-1)   (C0_left[i] at j = 0)        U(i,j) = C^d(i-1, j)   (C0_top[j] at i = 0)
    C^r(i,j) = T_rl(i,j) L(i,j) + T_ru(i,j) U(i,j) + b_r(i,j)
    C^d(i,j) = T_dl(i,j) L(i,j) + T_du(i,j) U(i,j) + b_d(i,j)

`T`: (n, X, Y, 2, 2, *s) with T[..., o, i] the weight from incoming edge i (0 = l, 1 = u)
to outgoing edge o (0 = r, 1 = d); s broadcasts against the state's trailing shape S
(scalar transitions: s all ones; diagonal ones: s = S). `b`: (n, X, Y, 2, *S) the sources
on the r and d edges. C0_left (n, X, *S), C0_top (n, Y, *S).
Returns L, U (n, X, Y, *S): the states entering every cell, and the border states leaving
the grid, right (n, X, *S) = C^r(:, Y-1) and bottom (n, Y, *S) = C^d(X-1, :).

Three evaluations of the same recurrence:
- `dag_sequential`: the plain loop over cells in row-major order (the reference);
- `dag_wavefront`: the anti-diagonals i + j = s one after the other, every cell of one in
  parallel (X + Y - 1 steps; the classic multi-dimensional RNN schedule);
- `dag_doubling` (scalar transitions only): the edge states solve E = A E + b0 with A the
  nilpotent line-graph transition matrix, so E = (I - A)^-1 b0 =
  (I + A)(I + A^2)(I + A^4)...(I + A^(2^(m-1))) b0 with 2^m >= X + Y: ceil(log2(X + Y))
  squarings, every edge at once (the associative-scan doubling of a linear recurrence,
  on the DAG; dense in the 2XY edges, for small grids).
All run in the dtype of their inputs (the caller casts to float32 / float64).
"""

from __future__ import annotations

import math

import torch


def _pad(T, S):
    """T (n, X, Y, 2, 2, *s) with s padded by trailing ones to the rank of S."""
    return T.reshape(*T.shape, *([1] * (len(S) + 5 - T.dim())))


def dag_sequential(T, b, C0_left, C0_top):
    n, X, Y = b.shape[:3]
    S = b.shape[4:]
    T = _pad(T, S)
    Cr = [[None] * Y for _ in range(X)]
    Cd = [[None] * Y for _ in range(X)]
    Ls, Us = [], []
    for i in range(X):
        for j in range(Y):
            L = C0_left[:, i] if j == 0 else Cr[i][j - 1]
            U = C0_top[:, j] if i == 0 else Cd[i - 1][j]
            t = T[:, i, j]
            Cr[i][j] = t[:, 0, 0] * L + t[:, 0, 1] * U + b[:, i, j, 0]
            Cd[i][j] = t[:, 1, 0] * L + t[:, 1, 1] * U + b[:, i, j, 1]
            Ls.append(L)
            Us.append(U)
    L = torch.stack(Ls, 1).reshape(n, X, Y, *S)
    U = torch.stack(Us, 1).reshape(n, X, Y, *S)
    right = torch.stack([Cr[i][Y - 1] for i in range(X)], 1)
    bottom = torch.stack([Cd[X - 1][j] for j in range(Y)], 1)
    return L, U, right, bottom


def dag_wavefront(T, b, C0_left, C0_top):
    n, X, Y = b.shape[:3]
    S = b.shape[4:]
    pad = [1] * len(S)
    Tf = _pad(T, S)
    rows = torch.arange(X, device=b.device)
    # every anti-diagonal's cells gathered at once (slot = row; off-grid slots clamped), then
    # unbound: one gather and one stack in the backward pass, not one full-size scatter a step
    diag = (torch.arange(X + Y - 1, device=b.device)[:, None] - rows).clamp(0, Y - 1)
    Ts, bs = Tf[:, rows, diag].unbind(1), b[:, rows, diag].unbind(1)
    prev_r = prev_d = None       # C^r, C^d of the previous anti-diagonal, slot = row
    Ls, Us, rights, bottoms = [], [], [None] * X, [None] * Y
    for s in range(X + Y - 1):
        cols = s - rows
        on = ((cols >= 0) & (cols < Y)).reshape(1, X, *pad)
        c = cols.clamp(0, Y - 1)
        if prev_r is None:                    # s = 0: only cell (0, 0), on both borders
            L, U = C0_left, C0_top[:, c]
        else:                                 # (i, j) reads (i, j-1) in slot i, (i-1, j) in i-1
            L = torch.where((cols == 0).reshape(1, X, *pad), C0_left, prev_r)
            U = torch.cat([C0_top[:, c[:1]], prev_d[:, :-1]], 1)
        t, bb = Ts[s], bs[s]                              # (n, X, 2, 2, *s), (n, X, 2, *S)
        new_r = t[:, :, 0, 0] * L + t[:, :, 0, 1] * U + bb[:, :, 0]
        new_d = t[:, :, 1, 0] * L + t[:, :, 1, 1] * U + bb[:, :, 1]
        zero = torch.zeros((), dtype=b.dtype, device=b.device)
        prev_r, prev_d = torch.where(on, new_r, zero), torch.where(on, new_d, zero)
        Ls.append(L)
        Us.append(U)
        if s >= Y - 1:                       # row s - (Y - 1) leaves through the right edge
            rights[s - Y + 1] = new_r[:, s - Y + 1]
        if s >= X - 1:                       # column s - (X - 1) leaves through the bottom
            bottoms[s - X + 1] = new_d[:, X - 1]
    # cell (i, j) was computed on anti-diagonal i + j, in slot i
    i = rows.reshape(X, 1).expand(X, Y)
    j = torch.arange(Y, device=b.device).reshape(1, Y).expand(X, Y)
    L = torch.stack(Ls, 1)[:, i + j, i]
    U = torch.stack(Us, 1)[:, i + j, i]
    return L, U, torch.stack(rights, 1), torch.stack(bottoms, 1)


def dag_doubling(T, b, C0_left, C0_top):
    """Scalar transitions only: T (n, X, Y, 2, 2) (trailing dims of size 1 allowed)."""
    n, X, Y = b.shape[:3]
    S = b.shape[4:]
    T = T.reshape(n, X, Y, 2, 2)
    N = 2 * X * Y                                   # edge e = ((i * Y + j) * 2 + o)
    cells = torch.arange(X * Y, device=b.device)
    i, j = cells // Y, cells % Y
    A = torch.zeros(n, N, N, dtype=b.dtype, device=b.device)
    has_l, has_u = j > 0, i > 0
    rows, cols = torch.arange(X, device=b.device), torch.arange(Y, device=b.device)
    with_l = (rows[:, None] * Y + cols[None, 1:]).reshape(-1)      # cells with a left edge
    with_u = (rows[1:, None] * Y + cols[None, :]).reshape(-1)      # cells with an upper one
    Tc = T.reshape(n, X * Y, 2, 2)
    for o in range(2):
        A[:, with_l * 2 + o, (with_l - 1) * 2 + 0] = Tc[:, with_l, o, 0]   # from C^r(i, j-1)
        A[:, with_u * 2 + o, (with_u - Y) * 2 + 1] = Tc[:, with_u, o, 1]   # from C^d(i-1, j)
    # sources, plus the borders' states entering the first column and row
    b0 = b.reshape(n, X * Y, 2, -1)
    C0l = C0_left.reshape(n, X, 1, -1)[:, i]                          # (n, XY, 1, F)
    C0t = C0_top.reshape(n, Y, 1, -1)[:, j]
    b0 = b0 + torch.where(~has_l.reshape(1, -1, 1, 1), Tc[..., 0, None] * C0l, 0) \
        + torch.where(~has_u.reshape(1, -1, 1, 1), Tc[..., 1, None] * C0t, 0)
    E = b0.reshape(n, N, -1)
    P = A
    for _ in range(max(1, math.ceil(math.log2(X + Y)))):
        E = E + P @ E
        P = P @ P
    E = E.reshape(n, X, Y, 2, *S)
    Cr, Cd = E[:, :, :, 0], E[:, :, :, 1]
    L = torch.cat([C0_left[:, :, None], Cr[:, :, :-1]], 2)
    U = torch.cat([C0_top[:, None], Cd[:, :-1]], 1)
    return L, U, Cr[:, :, -1], Cd[:, -1]


RUNS = {"sequential": dag_sequential, "wavefront": dag_wavefront, "doubling": dag_doubling}


def grid_dag(T, b, C0_left, C0_top, mode: str = "sequential"):
    """The grid recurrence above in `mode` ("sequential", "wavefront" or "doubling")."""
    return RUNS[mode](T, b, C0_left, C0_top)
