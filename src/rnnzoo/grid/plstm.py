"""pLSTM: parallelizable Linear Source Transition Mark networks (Pöppel, Freinschlag,
Schmied, Lin & Hochreiter 2025, arXiv:2506.11997), on a 2-D grid.

Per head, cell c = (i, j) with query q, key k (scaled by 1/sqrt(K)) and value v; states
C (K x V matrices) live on the grid's edges (grid/dag.py): L, U enter c from the left and
from above, C^r, C^d leave it to the right and downwards:

    C^o(c) = sum_{e in (l, u)} T_oe(c) C^e_in(c) + S_o(c) k v^T       o in (r, d)
    y(c)   = q^T [M_l(c) L(c) + M_u(c) U(c)] + D(c) (q . k) v

Source S, transition T, mark M and direct D are gates computed from x(c). The number of
paths between two cells grows combinatorially, so the transitions are normalised, in one
of the paper's two modes (`propagation`):
- "P" (directed propagation): an orientation o(c) in (0, 1) sends every incoming state to
  the right with weight o and downwards with 1 - o, times one decay T(c) in (0, 1):
  T = T(c) [[o, o], [1 - o, 1 - o]]; S_r = o S, S_d = (1 - o) S; M_l = M_u = M. Each
  column sums to T(c) <= 1: a state's mass is routed, never multiplied, so a signal goes
  any distance along the direction the orientations set (with T near 1).
- "D" (diffusive distribution): each outgoing state a weighted mean of the incoming ones,
  T_r = a_r [w_r, 1 - w_r], T_d = a_d [1 - w_d, w_d] (rows sum to the decay a <= 1), with
  their own sources S_r, S_d and marks M_l, M_u.
As in the paper's layer, the recurrence runs in `orientations` (1 or 4) directions, the
grid flipped so that its origin is each corner in turn, each with its own gates, and the
outputs are averaged; then one output projection.

Parallel forms: "wavefront" (grid/dag.py), every cell of an anti-diagonal at once
(X + Y - 1 steps); "doubling" (grid/dag.py), all cells at once by log2(X + Y) squarings of
the dense 2XY x 2XY line-graph transition matrix (small grids); and "block", the paper's
block recursion (`dag_block`): 2x2 blocks of cells combine into one block with a border
transition (h + w)^2 and a border source (h + w, K, V) per level, ceil(log2) levels up, and
the border states entering each block are handed down the same levels, so every cell gets
its (L, U) in O(log) depth and O(XY (K V log + max(X, Y))) work, never the dense matrix.
`mode="auto"` takes "block" when both sides are at least 8 and "wavefront" below (measured
on CPU: docs/2d.md). Reference: "sequential", the loop over cells.

State: (right, bottom), the states leaving the grid, (B, orientations, H, X, K, V) and
(B, orientations, H, Y, K, V), each orientation in its own (flipped) frame; an input state
is (left, top) of the same shapes, entering the first column and row.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rnnzoo.checks import choice, divides, positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.grid.base import GridLayer, register_grid
from rnnzoo.grid.dag import grid_dag
from rnnzoo.ops.native.linear import Linear

GATES = {"P": ("source", "transition", "mark", "direct", "orientation"),
         "D": ("source_r", "source_d", "decay_r", "decay_d", "mix_r", "mix_d", "mark_l",
               "mark_u", "direct")}


def _flip(t: torch.Tensor, orientation: int) -> torch.Tensor:
    """Flip the grid dims (1, 2) of t (B, X, Y, ...) so its origin is corner `orientation`."""
    dims = [d for d, bit in ((1, 1), (2, 2)) if orientation & bit]
    return t.flip(dims) if dims else t


def stm_gates(g: dict, propagation: str):
    """Transition (n, X, Y, 2, 2), sources (n, X, Y, 2), marks (n, X, Y, 2), direct (n, X, Y)
    from the gate pre-activations `g` (name -> (n, X, Y)) of mode "P" or "D"."""
    if propagation == "P":
        o = torch.sigmoid(g["orientation"])
        decay = torch.sigmoid(g["transition"])
        col = torch.stack([o, 1 - o], -1)                            # (.., out)
        T = (decay[..., None] * col)[..., None].expand(*o.shape, 2, 2)
        S = torch.sigmoid(g["source"])[..., None] * col
        M = torch.sigmoid(g["mark"])[..., None].expand(*o.shape, 2)
    else:
        ar, ad = torch.sigmoid(g["decay_r"]), torch.sigmoid(g["decay_d"])
        wr, wd = torch.sigmoid(g["mix_r"]), torch.sigmoid(g["mix_d"])
        T = torch.stack([torch.stack([ar * wr, ar * (1 - wr)], -1),
                         torch.stack([ad * (1 - wd), ad * wd], -1)], -2)
        S = torch.sigmoid(torch.stack([g["source_r"], g["source_d"]], -1))
        M = torch.sigmoid(torch.stack([g["mark_l"], g["mark_u"]], -1))
    return T, S, M, torch.sigmoid(g["direct"])


def _merge_cols(T, b, h, w):
    """Blocks (n, bx, by, E, E) / (n, bx, by, E, F), E = h + w, border order in = (left rows,
    top columns), out = (right rows, bottom columns): each left block a with its right
    neighbour c -> (n, bx, by / 2, E', E') / (.., E', F), E' = h + 2w."""
    Ta, Tc, ba, bc = T[:, :, 0::2], T[:, :, 1::2], b[:, :, 0::2], b[:, :, 1::2]
    feed = Tc[..., :h]                                       # c's outputs from its left border
    P = feed @ Ta[..., :h, :]                                # ... through a's right border
    zero = Ta.new_zeros(()).expand(*Ta.shape[:3], w, w)
    T = torch.cat([torch.cat([P[..., :h, :], Tc[..., :h, h:]], -1),
                   torch.cat([Ta[..., h:, :], zero], -1),
                   torch.cat([P[..., h:, :], Tc[..., h:, h:]], -1)], -2)
    bc = bc + feed @ ba[..., :h, :]
    return T, torch.cat([bc[..., :h, :], ba[..., h:, :], bc[..., h:, :]], -2)


def _merge_rows(T, b, h, w):
    """As `_merge_cols` for each upper block a with the block c below it -> E' = 2h + w."""
    Ta, Tc, ba, bc = T[:, 0::2], T[:, 1::2], b[:, 0::2], b[:, 1::2]
    feed = Tc[..., h:]                                       # c's outputs from its top border
    Q = feed @ Ta[..., h:, :]                                # ... through a's bottom border
    zero = Ta.new_zeros(()).expand(*Ta.shape[:3], h, h)
    T = torch.cat([torch.cat([Ta[..., :h, :h], zero, Ta[..., :h, h:]], -1),
                   torch.cat([Q[..., :h], Tc[..., :h], Q[..., h:]], -1)], -2)
    bc = bc + feed @ ba[..., h:, :]
    return T, torch.cat([ba[..., :h, :], bc], -2)


def _split_cols(T, b, C, h, w):
    """Down: the border states C (n, bx, by / 2, h + 2w, F) entering merged blocks -> those
    entering the halves (n, bx, by, h + w, F); the right half's left border is the left
    half's right border, T_a C_a + b_a."""
    Ca = C[..., :h + w, :]
    right = T[:, :, 0::2, :h] @ Ca + b[:, :, 0::2, :h]
    Cc = torch.cat([right, C[..., h + w:, :]], -2)
    return torch.stack([Ca, Cc], 3).flatten(2, 3)


def _split_rows(T, b, C, h, w):
    """As `_split_cols` for merged upper/lower pairs: C (n, bx / 2, by, 2h + w, F)."""
    Ca = torch.cat([C[..., :h, :], C[..., 2 * h:, :]], -2)
    bottom = T[:, 0::2, :, h:] @ Ca + b[:, 0::2, :, h:]
    Cc = torch.cat([C[..., h:2 * h, :], bottom], -2)
    return torch.stack([Ca, Cc], 2).flatten(1, 2)


def dag_block(T, b, C0_left, C0_top):
    """The grid recurrence (grid/dag.py's contract, scalar transitions: T (n, X, Y, 2, 2),
    b (n, X, Y, 2, *S)) by pLSTM's block recursion. Up: blocks of h x w cells, each with its
    border transition (h + w, h + w) and border source (h + w, F), merge with their neighbour
    to the right, then with the one below (2x2 -> 1 per level, ceil(log2) levels); an odd
    count of blocks gets one zero block (zero gates) at its right or bottom end first, which
    no valid cell reads (the DAG runs right and down). Down: from the whole grid's (left, top)
    border, each merged block hands its halves their entering borders, so at 1 x 1 blocks
    the border entering each cell is its (L, U)."""
    n, X, Y = b.shape[:3]
    S = b.shape[4:]
    T = T0 = T.reshape(n, X, Y, 2, 2)
    b = b0 = b.reshape(n, X, Y, 2, -1)
    ups, h, w = [], 1, 1
    while T.shape[1] > 1 or T.shape[2] > 1:
        for dim, split, merge in ((2, _split_cols, _merge_cols), (1, _split_rows, _merge_rows)):
            count = T.shape[dim]
            if count == 1:
                continue
            if count % 2:
                pad = (0, 0, 0, 0) + (0, 1) * (dim == 2) + (0, 0, 0, 1) * (dim == 1)
                T, b = nn.functional.pad(T, pad), nn.functional.pad(b, pad)
            ups.append((split, T, b, h, w, count))
            T, b = merge(T, b, h, w)
            h, w = (h, 2 * w) if dim == 2 else (2 * h, w)
    C = torch.cat([nn.functional.pad(C0_left.reshape(n, X, -1), (0, 0, 0, h - X)),
                   nn.functional.pad(C0_top.reshape(n, Y, -1), (0, 0, 0, w - Y))], 1)
    C = C[:, None, None]                                      # (n, 1, 1, h + w, F)
    for split, Tl, bl, hl, wl, count in reversed(ups):
        C = split(Tl, bl, C, hl, wl).narrow(1 if split is _split_rows else 2, 0, count)
    # C: (n, X, Y, 2, F) = (L, U) per cell; the borders leaving the grid from its last cells
    L, U = C[..., 0, :], C[..., 1, :]
    Cr = T0[:, :, -1, 0, 0, None] * L[:, :, -1] + T0[:, :, -1, 0, 1, None] * U[:, :, -1] \
        + b0[:, :, -1, 0]
    Cd = T0[:, -1, :, 1, 0, None] * L[:, -1] + T0[:, -1, :, 1, 1, None] * U[:, -1] \
        + b0[:, -1, :, 1]
    return (L.reshape(n, X, Y, *S), U.reshape(n, X, Y, *S), Cr.reshape(n, X, *S),
            Cd.reshape(n, Y, *S))


def plstm2d(q, k, v, T, S, M, D, C0_left, C0_top, mode="sequential"):
    """q, k (n, X, Y, K), v (n, X, Y, V); gates as `stm_gates` returns; C0_left (n, X, K, V),
    C0_top (n, Y, K, V) -> y (n, X, Y, V), right (n, X, K, V), bottom (n, Y, K, V)."""
    kv = k[..., :, None] * v[..., None, :]                           # (n, X, Y, K, V)
    b = S[..., None, None] * kv[:, :, :, None]                       # (n, X, Y, 2, K, V)
    if mode == "block":
        L, U, right, bottom = dag_block(T, b, C0_left, C0_top)
    else:
        L, U, right, bottom = grid_dag(T[..., None, None], b, C0_left, C0_top, mode)
    C_in = M[..., 0, None, None] * L + M[..., 1, None, None] * U
    y = torch.einsum("nxyk,nxykv->nxyv", q, C_in) + (D * (q * k).sum(-1))[..., None] * v
    return y, right, bottom


@register_grid("plstm", paper="Pöppel et al. 2025, arXiv:2506.11997 (pLSTM)",
               tiny=dict(d_model=4, num_heads=2, orientations=4))
class PLSTM(GridLayer):
    """x: (B, X, Y, d_model) -> y; state (right (B, O, H, X, K, V), bottom (B, O, H, Y, K, V))."""

    modes = ("sequential", "wavefront", "doubling", "block")

    def __init__(self, d_model: int, num_heads: int = 2, head_dim: int | None = None,
                 propagation: str = "P", orientations: int = 4):
        super().__init__(d_model)
        H = positive_int("num_heads", num_heads)
        if head_dim is None:
            divides("num_heads", H, "d_model", d_model)
        K = positive_int("head_dim", d_model // H if head_dim is None else head_dim)
        self.num_heads, self.head_dim = H, K
        self.propagation = choice("propagation", propagation, ("P", "D"))
        self.orientations = choice("orientations", orientations, (1, 4))
        self.gate_names = GATES[propagation]
        self.qkv = Linear(d_model, 3 * H * K, bias=False)
        self.gates = Linear(d_model, orientations * H * len(self.gate_names))
        self.out = Linear(H * K, d_model, bias=False)
        with torch.no_grad():   # start with long memory: decays near 1, sources and marks open
            bias = self.gates.bias.view(orientations, H, len(self.gate_names))
            bias.zero_()
            for n, name in enumerate(self.gate_names):
                if name.startswith(("transition", "decay")):
                    bias[..., n] = 3.0
            self.gates.weight.mul_(0.1)

    def auto_mode(self, x):
        # CPU, fwd+bwd (docs/2d.md): block 1.1-1.4x faster from 8 x 8 up, slower on grids
        # with a side under 8 (a thin grid's anti-diagonals are short)
        return "block" if min(x.shape[1], x.shape[2]) >= 8 else "wavefront"

    def init_state(self, batch_size, height, width, device=None, dtype=None):
        shape = (batch_size, self.orientations, self.num_heads)
        sd = state_dtype(dtype)
        K = self.head_dim
        return (torch.zeros(*shape, height, K, K, device=device, dtype=sd),
                torch.zeros(*shape, width, K, K, device=device, dtype=sd))

    def _forward(self, x, state, mode):
        B, X, Y, _ = x.shape
        H, K, n_or = self.num_heads, self.head_dim, self.orientations
        cdt = compute_dtype(x)
        q, k, v = self.qkv(x).to(cdt).view(B, X, Y, 3, H, K).unbind(3)
        k = k / math.sqrt(K)
        g = self.gates(x).to(cdt).view(B, X, Y, n_or, H, len(self.gate_names))

        def fold(t, o):  # (B, X, Y, H, ...) in orientation o's frame -> (B H, X, Y, ...)
            t = _flip(t, o)
            return t.movedim(3, 1).reshape(B * H, X, Y, *t.shape[4:])

        # the orientations are flips of one grid: all of them run as one batch (n = O B H)
        def every(t):
            return torch.cat([fold(t[:, :, :, o], o) for o in range(n_or)])

        gates = {name: every(g[..., n]) for n, name in enumerate(self.gate_names)}
        T, S, M, D = stm_gates(gates, self.propagation)
        qkv = [every(t[:, :, :, None].expand(B, X, Y, n_or, H, K)) for t in (q, k, v)]
        C0l = state[0].movedim(1, 0).reshape(n_or * B * H, X, K, K)
        C0t = state[1].movedim(1, 0).reshape(n_or * B * H, Y, K, K)
        y, right, bottom = plstm2d(*qkv, T, S, M, D, C0l, C0t, mode)
        y = y.reshape(n_or, B, H, X, Y, K).movedim(2, 4)              # (O, B, X, Y, H, K)
        y = torch.stack([_flip(y[o], o) for o in range(n_or)]).mean(0).reshape(B, X, Y, H * K)
        rights = right.reshape(n_or, B, H, X, K, K).movedim(0, 1)
        bottoms = bottom.reshape(n_or, B, H, Y, K, K).movedim(0, 1)
        sd = state[0].dtype
        return self.out(y.to(x.dtype)), (rights.to(sd), bottoms.to(sd))

