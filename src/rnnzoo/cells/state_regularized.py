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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo import checks
from rnnzoo.cells.base import Cell, cell
from rnnzoo.registry import CELLS


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
