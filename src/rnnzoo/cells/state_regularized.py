"""State-regularized RNN (Wang & Niepert 2019, "State-Regularized Recurrent Neural Networks",
ICML 2019, arXiv:1901.08817).

A classic cell (the `base`, GRU by default) proposes a state u_t; the state kept is a
mixture of k learned centroids s_1 .. s_k (the rows of S, (k, H)), weighted by a softmax of
the dot products at temperature tau:

    u_t     = base(x_t, h_{t-1})
    alpha_t = softmax(S u_t / tau)                         (k,)
    h_t     = S^T alpha_t              (soft assignment)
    h_t     = s_{argmax alpha_t}       (hard assignment: tau -> 0)

With hard assignment the network is a finite automaton: k states, and from each centroid
each input symbol leads to one centroid. `extract_automaton` reads it off: the start state
h_0 and the table of transitions between centroids.

Options: num_centroids (k), temperature (tau > 0), assignment ("soft" or "hard"), base (a
registered cell with a single state tensor). Parameters: the base cell's, and centroids
(k, H), initialised U(-1, 1). State h (B, H).

`fused` is the loop with a hand-written backward (cells/manual.py): the base's step (the
GRU's written here, any other base's own `manual_*`), then the two centroid products
l = u (S / tau)^T and h = alpha S, with

    d alpha = dh S^T,   d l = alpha * (d alpha - <alpha, d alpha>)   (zero under hard),
    du = d l (S / tau),  d S = (d l)^T u / tau + alpha^T dh   (summed over all steps at once)

A base with neither runs the reference loop there. With the GRU base the whole loop,
forward and backward, runs in C on CPU float32/float64 (ops/native/simple_gated.c, `srnn`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo import checks
from rnnzoo.cells.base import Cell, cell
from rnnzoo.cells.gru import GRUCell
from rnnzoo.cells.manual import manual_scan
from rnnzoo.ops.native.cells import NativeStep
from rnnzoo.registry import CELLS


class _GRUSteps:
    """torch.nn.GRU's step (GRUCell: b_hn inside the reset product) in the `manual_*` form,
    on the projection widened to (B, T, 4H) = [W_i(r,z) x + b_(r,z) | b_hn | W_in x + b_in]:
    then [a_r, a_z | W_hn h + b_hn] is one addmm on its first 3H, and the gradient at
    h W_hh^T is the first 3H of the gradient at the projection. One matrix, W_hh (3H, H)."""

    def __init__(self, gru: GRUCell):
        self.gru = gru

    def project(self, x):
        g, H = self.gru, self.gru.hidden_size
        xp = g.project(x)
        b_hn = xp.new_zeros(H) if g.bias_hh is None else g.bias_hh[2 * H:].to(xp.dtype)
        return torch.cat([xp[..., :2 * H], b_hn.expand_as(xp[..., 2 * H:]), xp[..., 2 * H:]], -1)

    def manual_params(self):
        return (self.gru.weight_hh,), ()

    def manual_step(self, xp_t, state, wt, vectors):
        h, H = state[0], self.gru.hidden_size
        a = torch.addmm(xp_t[:, :3 * H], h, wt[0])                      # [a_r, a_z | gh_n]
        rz, gh_n = torch.sigmoid(a[:, :2 * H]), a[:, 2 * H:]
        n = torch.tanh(torch.addcmul(xp_t[:, 3 * H:], rz[:, :H], gh_n))
        return (torch.lerp(n, h, rz[:, H:]),), None, (h,), (h, rz, n, gh_n)

    def manual_back(self, d_state, saved, matrices, vectors):
        (du,), (h, rz, n, gh_n), H = d_state, saved, self.gru.hidden_size
        d_xp = du.new_empty(du.shape[0], 4 * H)                         # [d a_rz | d gh_n | d a_n]
        d_hz = du * rz[:, H:]
        d_an = torch.ops.aten.tanh_backward.grad_input(du - d_hz, n, grad_input=d_xp[:, 3 * H:])
        d_rz = du.new_empty(du.shape[0], 2 * H)
        torch.mul(d_an, gh_n, out=d_rz[:, :H])
        torch.mul(du, h - n, out=d_rz[:, H:])
        torch.ops.aten.sigmoid_backward.grad_input(d_rz, rz, grad_input=d_xp[:, :2 * H])
        torch.mul(d_an, rz[:, :H], out=d_xp[:, 2 * H:3 * H])
        g = d_xp[:, :3 * H]                                              # at h W_hh^T
        return d_xp, (torch.addmm(d_hz, g, matrices[0]),), (g,), ()


class _Mixture:
    """The state-regularized step in the `manual_*` form (cells/manual.py): `steps` (the
    base's step) then the centroid products; matrices: the base's, S / tau and S^T."""

    def __init__(self, cell, steps):
        self.cell, self.steps = cell, steps
        self.hidden_size = cell.hidden_size

    def manual_native(self):
        return self.cell.manual_native()

    def manual_params(self):
        mats, vecs = self.steps.manual_params()
        S = self.cell.centroids
        return (*mats, S / self.cell.temperature, S.T), vecs

    def manual_step(self, xp_t, state, wt, vectors):
        (u,), y, rs, saved = self.steps.manual_step(xp_t, state, wt[:-2], vectors)
        logits = u @ wt[-2]
        if self.cell.assignment == "hard":
            alpha = F.one_hot(logits.argmax(-1), self.cell.num_centroids).to(u.dtype)
        else:
            alpha = torch.softmax(logits, -1)
        return (alpha @ wt[-1],), None, (*rs, u, alpha), (saved, alpha, y)

    def manual_back(self, d_state, saved, matrices, vectors):
        (dh,), (base_saved, alpha, y) = d_state, saved
        if self.cell.assignment == "hard":  # the argmax has no derivative
            d_l = torch.zeros_like(alpha)
        else:
            d_l = torch.ops.aten._softmax_backward_data(dh @ matrices[-1], alpha, -1,
                                                        alpha.dtype)
        du = d_l @ matrices[-2]
        d_base = (du,) if y is None else ((du,), torch.zeros_like(y))  # y: unused here
        d_xp, d_prev, gs, d_vecs = self.steps.manual_back(d_base, base_saved, matrices[:-2],
                                                          vectors)
        return d_xp, d_prev, (*gs, d_l, dh), d_vecs


@cell("state_regularized_rnn", paper="Wang & Niepert 2019, arXiv:1901.08817",
      tiny={"hidden_size": 5, "num_centroids": 4})
class StateRegularized(Cell):
    """h_t = centroid mixture of base(x_t, h_{t-1}); see the module docstring."""

    def __init__(self, input_size: int, hidden_size: int, num_centroids: int = 8,
                 temperature: float = 1.0, assignment: str = "soft", base: str = "gru"):
        super().__init__(input_size, hidden_size)
        self.num_centroids = checks.positive_int("num_centroids", num_centroids)
        self.temperature = checks.positive("temperature", temperature)
        self.assignment = checks.choice("assignment", assignment, ("soft", "hard"))
        if base == "state_regularized_rnn" or base not in CELLS:
            raise ValueError(f"base must be a registered cell other than this one, got {base!r}")
        self.base = CELLS[base].cls(input_size, hidden_size)
        if len(self.base.state_sizes) != 1:
            raise ValueError(f"base must be a cell with one state tensor, got {base!r} with "
                             f"{len(self.base.state_sizes)}")
        self.base_name = base
        self._gru_steps = _GRUSteps(self.base) if type(self.base) is GRUCell else None
        self.centroids = nn.Parameter(torch.empty(num_centroids, hidden_size).uniform_(-1, 1))

    def project(self, x):
        return self.base.project(x)

    def weights_of(self, u: torch.Tensor) -> torch.Tensor:
        """alpha (B, k): the centroids' weights for proposed states u (B, H) (one-hot under
        hard assignment)."""
        logits = u @ self.centroids.to(u.dtype).T / self.temperature
        if self.assignment == "hard":
            return F.one_hot(logits.argmax(-1), self.num_centroids).to(u.dtype)
        return torch.softmax(logits, -1)

    def recur(self, xp_t, state):
        u = self.base.recur(xp_t, state)[0]
        return (self.weights_of(u) @ self.centroids.to(u.dtype),)

    # -- the hand-written backward (cells/manual.py) ---------------------------------------
    def _steps(self):
        """The base's step in the manual form, or None."""
        if type(self.base) is GRUCell:
            return self._gru_steps
        return self.base if hasattr(self.base, "manual_step") else None

    def manual_native(self):
        """The loop in C (ops/native/simple_gated.c, `srnn`) with the GRU base; None (the
        Python loop) with any other. ints: [hard assignment]."""
        if type(self.base) is not GRUCell:
            return None
        return NativeStep("simple_gated", "srnn", 5 * self.hidden_size + self.num_centroids,
                          (int(self.assignment == "hard"),))

    def fused(self, x, state):
        steps = self._steps()
        if steps is None or torch.compiler.is_compiling():
            return self.loop(x, state)
        mixture = _Mixture(self, steps)
        return manual_scan(mixture, getattr(steps, "manual_project", steps.project)(x), state,
                           *mixture.manual_params())

    def extra_repr(self) -> str:
        return (f"num_centroids={self.num_centroids}, temperature={self.temperature}, "
                f"assignment={self.assignment!r}, base={self.base_name!r}")


@torch.no_grad()
def extract_automaton(cell: StateRegularized, symbols: torch.Tensor, h0: torch.Tensor):
    """The finite automaton of `cell` under hard assignment.

    symbols: (n, input_size), the input vector of each symbol; h0: (H,), the start state.
    Returns (start, delta): start[a] is the centroid reached from h0 on symbol a, and
    delta (k, n) long, delta[i, a] the centroid reached from centroid i on symbol a. The
    automaton's states are h0 and the k centroids; reading a nonempty string ends on a
    centroid, which a readout of the state labels accepting or not."""
    xp = cell.project(symbols)                                            # (n, P)
    n, k = symbols.shape[0], cell.num_centroids

    def nxt(h):  # h: (m, H) -> (m, n) centroid indices
        m = h.shape[0]
        hs = h.repeat_interleave(n, 0)
        u = cell.base.recur(xp.repeat(m, 1), (hs,))[0]
        return (u @ cell.centroids.T).argmax(-1).view(m, n)

    return nxt(h0.unsqueeze(0))[0], nxt(cell.centroids.to(xp.dtype)).view(k, n)
