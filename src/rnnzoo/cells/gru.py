"""The GRU and its variants: the two reset placements, MiRU's fixed coefficients and
tau-GRU's delayed feedback.

`gru` and `gru_v3` (Cho et al. 2014, arXiv:1406.1078): gate order r, z, n and parameters
as torch.nn.GRU (W_ih, W_hh: (3H, ...)). `gru` (v1, cuDNN's and torch.nn.GRU's
placement: reset after the matmul):

    r = sigma(W_ir x + b_ir + W_hr h + b_hr),  z = sigma(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h_t = (1 - z) * n + z * h_{t-1}

`gru_v3` (the paper's eq. 8: reset before the matmul):

    n = tanh(W_in x + b_in + W_hn (r * h_{t-1}) + b_hn)

v1 needs one matmul per step; v3 two (the candidate's depends on r).

`miru1` and `miru2`, the Minion recurrent units (Zyarah & Kudithipudi 2025, "Minion
Gated Recurrent Unit for Continual Learning", arXiv:2503.06175, Neurocomputing,
doi:10.1016/j.neucom.2026.132847): a GRU whose update gate is a fixed scaling
coefficient lambda (`update_coefficient`). MiRU1 (a learned reset gate):

    r_t  = sigmoid(W_r x_t + b_r + U_r h_{t-1})
    h~_t = tanh(W_h x_t + b_h + U_h (r_t * h_{t-1}))
    h_t  = lambda h_{t-1} + (1 - lambda) h~_t

MiRU2 (the reset gate is a fixed scaling coefficient beta, `reset_coefficient`):

    h~_t = tanh(W_h x_t + b_h + U_h (beta h_{t-1})),   h_t = lambda h_{t-1} + (1 - lambda) h~_t

Parameters: weight_ih (k*H, I), weight_hh (k*H, H), bias_ih, bias_hh (k*H,), k = 2
(rows [r; h]) for MiRU1 and 1 for MiRU2.

`taugru`, a GRU with weighted time-delay feedback (Erichson, Lim & Mahoney 2022,
"Gated Recurrent Neural Networks with Weighted Time-Delay Feedback",
arXiv:2212.00228). With delay d (steps):

    u_n = tanh(W_1 h_n + U_1 x_n + b_u)
    z_n = tanh(W_2 h_{n-d} + U_2 x_n + b_z)
    g_n = sigmoid(W_3 h_n + U_3 x_n + b_g)
    a_n = sigmoid(W_4 h_n + U_4 x_n + b_a)
    h_{n+1} = (1 - g_n) * h_n + g_n * (u_n + a_n * z_n)

States before the sequence's start are zero. The state is the delay line
(h_n, h_{n-1}, ..., h_{n-d}), d + 1 tensors of (B, H), so that a sequence split
in two continues exactly. Parameters: weight_ih (4H, I), weight_hh (4H, H), bias_ih,
bias_hh (4H,), rows in the order [u; g; a; z] (the three maps of h_n first, so that they
are one matrix product).

Initialisation: torch.nn.GRU's U(-1/sqrt(H), 1/sqrt(H)) for gru and gru_v3;
Glorot-uniform weights and zero biases for the others.
"""

from __future__ import annotations

import torch

from rnnzoo import checks
from rnnzoo.cells.base import cell
from rnnzoo.cells.manual import manual_loop, sigmoid_back, tanh_back
from rnnzoo.cells.parts import StackedGates, affine, glorot_init_, uniform_init_
from rnnzoo.ops import backend
from rnnzoo.ops.native.cells import NativeStep


class _GRU(StackedGates):
    num_gates = 3

    def __init__(self, input_size, hidden_size, bias=True):
        super().__init__(input_size, hidden_size, bias)
        uniform_init_(self, hidden_size)

    def project(self, x):
        """W_ih x + b_ih, plus b_hh for r and z (b_hn stays inside the reset product)."""
        xp = affine(x, self.weight_ih)
        if self.bias_ih is None:
            return xp
        H = self.hidden_size
        return xp + torch.cat([self.bias_ih[:2 * H] + self.bias_hh[:2 * H], self.bias_ih[2 * H:]])

    def _b_hn(self):
        return 0 if self.bias_hh is None else self.bias_hh[2 * self.hidden_size:]


@cell("gru", paper="Cho et al. 2014, arXiv:1406.1078 (v1 reset placement, as cuDNN/torch.nn.GRU)",
      tiny={"hidden_size": 5})
class GRUCell(_GRU):
    """torch.nn.GRU's cell; `fused` runs, on the CPU, the hand-written backward
    (`manual_loop`, in C: ops/native/gated_cells.c), elsewhere torch's GRU kernel (inside
    `ops.backend.force("triton")` the Triton kernel `ops.triton.rnn.gru_sequence`).
    State h (B, H)."""

    parallel_modes = ("newton", "quasi")
    has_torch_kernel = True

    def recur(self, xp_t, state):
        h = state[0]
        H = self.hidden_size
        gh = h @ self.weight_hh.T
        rz = torch.sigmoid(xp_t[:, :2 * H] + gh[:, :2 * H])
        r, z = rz[:, :H], rz[:, H:]
        n = torch.tanh(xp_t[:, 2 * H:] + r * (gh[:, 2 * H:] + self._b_hn()))
        return (n + z * (h - n),)

    def flat_weights(self) -> list:
        """torch.nn.GRU's `_flat_weights` order: w_ih, w_hh[, b_ih, b_hh]."""
        w = [self.weight_ih, self.weight_hh]
        return w + ([self.bias_ih, self.bias_hh] if self.bias_ih is not None else [])

    def fused(self, x, state):
        # the Triton kernel only when forced: cuDNN stays the default until a GPU benchmark
        # shows the kernel wins
        if x.dtype != torch.float64 and backend.use_triton(x, *state, auto=False):
            from rnnzoo.ops.triton.rnn import gru_sequence
            b_hn = None if self.bias_hh is None else self.bias_hh[2 * self.hidden_size:]
            from functools import partial

            from rnnzoo.cells.manual import manual_plain
            out, h = gru_sequence(self.project(x), self.weight_hh, b_hn, state[0],
                                  plain=partial(manual_plain, self))
            return out, (h,)
        if x.device.type == "cpu" and not torch.compiler.is_compiling():
            # the hand-written backward below (cells.manual), its loop in C (gated_cells.c)
            # unless RNNZOO_NATIVE=0: ~2x faster than torch's GRU kernel on the CPU
            return manual_loop(self, x, state)
        out, h = torch._VF.gru(x, state[0].unsqueeze(0).to(x.dtype), self.flat_weights(),
                               self.bias_ih is not None, 1, 0.0, self.training, False, True)
        return out, (h[0],)

    # the hand-written backward (`manual_loop`, run in C on the CPU): W_hh, and b_hn
    def manual_params(self):
        """W_hh (3H, H); b_hn (H,) when there are biases."""
        return (self.weight_hh,), (() if self.bias_hh is None else (self._b_hn(),))

    def manual_native(self):
        """The same step in C (ops/native/gated_cells.c, gru1)."""
        return NativeStep("gated_cells", "gru1", 5 * self.hidden_size)

    def manual_step(self, xp_t, state, wt, vectors):
        h, H = state[0], self.hidden_size
        gh = h @ wt[0]
        rz = torch.sigmoid(xp_t[:, :2 * H] + gh[:, :2 * H])
        hn = gh[:, 2 * H:] + vectors[0] if vectors else gh[:, 2 * H:]
        n = torch.tanh(xp_t[:, 2 * H:] + rz[:, :H] * hn)
        return (torch.lerp(n, h, rz[:, H:]),), None, (h,), (h, rz, n, hn)

    def manual_back(self, d_state, saved, matrices, vectors):
        (dh,), (h, rz, n, hn), H = d_state, saved, self.hidden_size
        r, z = rz[:, :H], rz[:, H:]
        d_n = tanh_back(dh - dh * z, n)
        d_rz = sigmoid_back(torch.cat([d_n * hn, dh * (h - n)], -1), rz)
        d_hn = d_n * r
        g = torch.cat([d_rz, d_hn], -1)
        return (torch.cat([d_rz, d_n], -1), (torch.addmm(dh * z, g, matrices[0]),), (g,),
                (d_hn,) if vectors else ())


@cell("gru_v3", paper="Cho et al. 2014, arXiv:1406.1078 (the paper's reset placement, eq. 8)",
      tiny={"hidden_size": 5})
class GRUv3Cell(_GRU):
    """The paper's GRU: the reset gate multiplies h before the candidate's matmul. State h.
    `fused` is the loop with its hand-written backward (`manual_loop`)."""

    def project(self, x):
        """W_ih x + b_ih + b_hh: b_hn adds outside the reset product here, so it folds in."""
        return affine(x, self.weight_ih, self.bias_ih, self.bias_hh)

    def recur(self, xp_t, state):
        h = state[0]
        H = self.hidden_size
        rz = torch.sigmoid(xp_t[:, :2 * H] + h @ self.weight_hh[:2 * H].T)
        r, z = rz[:, :H], rz[:, H:]
        n = torch.tanh(xp_t[:, 2 * H:] + (r * h) @ self.weight_hh[2 * H:].T)
        return (n + z * (h - n),)

    def fused(self, x, state):
        return manual_loop(self, x, state)

    def manual_params(self):
        """[U_r; U_z] and U_n."""
        return self.weight_hh.split([2 * self.hidden_size, self.hidden_size]), ()

    def manual_native(self):
        """The same step in C (ops/native/gated_cells.c)."""
        return NativeStep("gated_cells", "gru3", 4 * self.hidden_size)

    def manual_step(self, xp_t, state, wt, vectors):
        h, H = state[0], self.hidden_size
        rz = torch.sigmoid(torch.addmm(xp_t[:, :2 * H], h, wt[0]))
        rh = rz[:, :H] * h
        n = torch.tanh(torch.addmm(xp_t[:, 2 * H:], rh, wt[1]))
        return (torch.lerp(n, h, rz[:, H:]),), None, (h, rh), (h, rz, n)

    def manual_back(self, d_state, saved, matrices, vectors):
        (dh,), (h, rz, n), H = d_state, saved, self.hidden_size
        r, z = rz[:, :H], rz[:, H:]
        d_n = tanh_back(dh - dh * z, n)
        d_rh = d_n @ matrices[1]
        d_rz = sigmoid_back(torch.cat([d_rh * h, dh * (h - n)], -1), rz)
        dh_prev = torch.addmm(torch.addcmul(dh * z, d_rh, r), d_rz, matrices[0])
        return torch.cat([d_rz, d_n], -1), (dh_prev,), (d_rz, d_n), ()


MIRU = "Zyarah & Kudithipudi 2025, arXiv:2503.06175"


class _MiRU(StackedGates):
    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 update_coefficient: float = 0.5):
        super().__init__(input_size, hidden_size, bias)
        self.update_coefficient = checks.real("update_coefficient", update_coefficient, 0.0, 1.0)
        glorot_init_(self)

    # every bias enters linearly next to W x, so `project` folds all of them in

    def weights(self, batch_size):
        return self.weight_hh.T.split(self.hidden_size, 1)

    def _mix(self, h, candidate):
        lam = self.update_coefficient
        return torch.add(candidate * (1.0 - lam), h, alpha=lam)


@cell("miru1", paper=MIRU)
class MiRU1(_MiRU):
    """MiRU1: GRU with a fixed update coefficient lambda and a learned reset gate.
    See the module docstring. State: h (B, H). `fused` is the loop with its hand-written
    backward (`manual_loop`, in C on the CPU)."""

    num_gates = 2

    def pieces(self):
        return (self.hidden_size, self.hidden_size)

    def transition(self, parts, state, w):
        (xr, xh), h, (u_r, u_h) = parts, state[0], w
        r = torch.sigmoid(torch.addmm(xr, h, u_r))
        candidate = torch.tanh(torch.addmm(xh, r * h, u_h))
        return (self._mix(h, candidate),)

    # -- the hand-written backward (`manual_loop`), in C: ops/native/gated_cells.c ----------

    def fused(self, x, state):
        return manual_loop(self, x, state)

    def manual_params(self):
        """U_r and U_h (H, H)."""
        return self.weight_hh.split(self.hidden_size), ()

    def manual_native(self):
        """The same step in C (ops/native/gated_cells.c, miru1)."""
        return NativeStep("gated_cells", "miru1", 3 * self.hidden_size,
                          floats=(self.update_coefficient,))

    def manual_step(self, xp_t, state, wt, vectors):
        h, H = state[0], self.hidden_size
        r = torch.sigmoid(torch.addmm(xp_t[:, :H], h, wt[0]))
        rh = r * h
        n = torch.tanh(torch.addmm(xp_t[:, H:], rh, wt[1]))
        return (self._mix(h, n),), None, (h, rh), (h, r, n)

    def manual_back(self, d_state, saved, matrices, vectors):
        (dh,), (h, r, n), lam = d_state, saved, self.update_coefficient
        d_n = tanh_back(dh * (1.0 - lam), n)
        d_rh = d_n @ matrices[1]
        d_r = sigmoid_back(d_rh * h, r)
        dh_prev = torch.addmm(torch.addcmul(dh * lam, d_rh, r), d_r, matrices[0])
        return torch.cat([d_r, d_n], -1), (dh_prev,), (d_r, d_n), ()


@cell("miru2", paper=MIRU)
class MiRU2(_MiRU):
    """MiRU2: GRU with fixed update (lambda) and reset (beta) coefficients.
    See the module docstring. State: h (B, H)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 update_coefficient: float = 0.5, reset_coefficient: float = 0.5):
        super().__init__(input_size, hidden_size, bias, update_coefficient)
        self.reset_coefficient = checks.real("reset_coefficient", reset_coefficient)

    def transition(self, parts, state, w):
        h = state[0]
        candidate = torch.tanh(torch.addmm(parts[0], h, w[0], alpha=self.reset_coefficient))
        return (self._mix(h, candidate),)


@cell("taugru", paper="Erichson, Lim & Mahoney 2022, arXiv:2212.00228", tiny={"delay": 2})
class TauGRU(StackedGates):
    """tau-GRU (see the module docstring). State: (h_n, h_{n-1}, ..., h_{n-d})."""

    num_gates = 4

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, delay: int = 1):
        super().__init__(input_size, hidden_size, bias)
        self.delay = checks.positive_int("delay", delay)
        self.state_sizes = (hidden_size,) * (delay + 1)
        glorot_init_(self)

    def pieces(self):
        return (3 * self.hidden_size, self.hidden_size)

    def weights(self, batch_size):
        H = self.hidden_size
        return self.weight_hh.T.split([3 * H, H], 1)

    def transition(self, parts, state, w):
        (x_uga, x_z), (w_uga, w_z) = parts, w
        h, delayed = state[0], state[-1]
        u, g, a = torch.addmm(x_uga, h, w_uga).chunk(3, 1)
        u, g, a = torch.tanh(u), torch.sigmoid(g), torch.sigmoid(a)
        z = torch.tanh(torch.addmm(x_z, delayed, w_z))
        new = torch.addcmul(h, g, torch.addcmul(u, a, z) - h)
        return (new,) + tuple(state[:-1])

    # -- the hand-written backward (`manual_loop`) ------------------------------------------
    def fused(self, x, state):
        return manual_loop(self, x, state)

    def manual_params(self):
        """[W_1; W_3; W_4] (read h_n) and W_2 (reads h_{n-d})."""
        return self.weight_hh.split([3 * self.hidden_size, self.hidden_size]), ()

    def manual_native(self):
        """The same step in C (ops/native/gated_cells.c), up to delay 7 (the C loop's limit
        of 8 state tensors; longer delays run the Python loop)."""
        if self.delay > 7:
            return None
        return NativeStep("gated_cells", "taugru", 6 * self.hidden_size)

    def manual_step(self, xp_t, state, wt, vectors):
        h, delayed, H = state[0], state[-1], self.hidden_size
        a = torch.addmm(xp_t[:, :3 * H], h, wt[0])
        u, ga = torch.tanh(a[:, :H]), torch.sigmoid(a[:, H:])
        z = torch.tanh(torch.addmm(xp_t[:, 3 * H:], delayed, wt[1]))
        v = torch.addcmul(u, ga[:, H:], z)
        return (torch.addcmul(h, ga[:, :H], v - h),) + tuple(state[:-1]), None, (h, delayed), \
            (h, u, ga, z, v)

    def manual_back(self, d_state, saved, matrices, vectors):
        (h, u, ga, z, v), H = saved, self.hidden_size
        d_new, g, a = d_state[0], ga[:, :H], ga[:, H:]
        dv = d_new * g
        d_ga = sigmoid_back(torch.cat([d_new * (v - h), dv * z], 1), ga)
        da = torch.cat([tanh_back(dv, u), d_ga], 1)
        d_az = tanh_back(dv * a, z)
        # new state (h_{n+1}, h_n, ..., h_{n-d+1}): old component k feeds new component k + 1
        dh = torch.addmm(d_new - dv, da, matrices[0]) + d_state[1]
        prev = (dh, *d_state[2:], d_az @ matrices[1])
        return torch.cat([da, d_az], 1), prev, (da, d_az), ()
