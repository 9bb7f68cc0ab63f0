"""The LSTM and its variants. All but MC-LSTM keep the state (h, c); i, f, o are the
input, forget and output gates; W_* act on x_t, U_* on h_{t-1}; every pre-activation
carries b_ih + b_hh.

`lstm` -- Hochreiter & Schmidhuber 1997 with the forget gate of Gers et al. 2000,
gate order and biases as torch.nn.LSTM; optional peepholes (Gers & Schmidhuber 2000,
"Recurrent nets that time and count", IJCNN; Gers et al. 2002, JMLR 3) and recurrent
projection (LSTMP, Sak et al. 2014, arXiv:1402.1128):

    i = sigma(W_i x + U_i h + p_i * c_{t-1}),  f = sigma(W_f x + U_f h + p_f * c_{t-1})
    g = tanh(W_g x + U_g h),                   c_t = f * c_{t-1} + i * g
    o = sigma(W_o x + U_o h + p_o * c_t),      h_t = W_hr (o * tanh(c_t))

(p = 0 without peepholes, W_hr = I without projection). `peephole_lstm` is the same
cell with its peepholes always on, initialised as torchrecurrent's PeepholeLSTM.

`cifg_lstm` -- coupled input and forget gate (Greff et al. 2017, "LSTM: A Search Space
Odyssey", arXiv:1503.04069): f = 1 - i.

`original_lstm` (Hochreiter & Schmidhuber 1997, Neural Computation 9(8)): no forget gate,
    c_t = c_{t-1} + sigmoid(i) * tanh(g),   h_t = sigmoid(o) * tanh(c_t)
  (the 1997 squashings g(x) = 4 sigmoid(x) - 2 = 2 tanh(x/2) and h(x) = tanh(x/2) are
  rescaled tanh; we use tanh, as torchrecurrent and every later LSTM). Rows [i; g; o].

`res_lstm` (Kim, El-Khamy & Lee 2017, "Residual LSTM", arXiv:1701.03360): a peephole
LSTM whose output adds a projection of the cell to a shortcut of the input,
    h_t = o * (W_proj tanh(c_t) + W_res x_t);   weight_proj (H, H), weight_res (H, I).

`multiplicative_lstm` (Krause et al. 2016, arXiv:1609.07959): the gates read an
input-dependent transition m_t of the state,
    m_t = (W_mx x_t) * (W_mh h_{t-1} + b_hh)
    [i, f, c~, o] = [W_ix, W_fx, W_cx, W_ox] x_t + W_m* m_t (+ biases)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(c~),  h_t = sigmoid(o) * tanh(c_t)
  weight_ih (5H, I) rows [m; i; f; c~; o], weight_hh (H, H) = W_mh, weight_mh (4H, H).

`wmclstm` (Landi et al. 2021, "Working Memory Connections for LSTM", arXiv:2109.00020):
the gates read the cell through a squashed learned map,
    i = sigmoid(W_i x + U_i h + tanh(V_i c_{t-1} + b)),  f likewise with V_f,
    c_t = f * c_{t-1} + i * tanh(W_c x + U_c h),  o = sigmoid(W_o x + U_o h + tanh(V_o c_t + b))
    h_t = o * tanh(c_t);   weight_mh (3H, H) rows [V_i; V_f; V_o], bias_mh (3H,).

`janet` and `mclstm`: an LSTM with the forget gate only, and one whose gates read a
control vector instead of h (see their classes).

Initialisation: torch.nn.LSTM's U(-1/sqrt(H), 1/sqrt(H)) for lstm, cifg_lstm and
mclstm; Glorot-uniform weight matrices and zero biases for the others unless their
class says otherwise; peephole_lstm's peephole weights uniform in [-0.1, 0.1]
(torchrecurrent draws them from N(0, 1), which saturates the gates as soon as |c| grows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo import checks
from rnnzoo.cells.base import Cell, RecurrentMatrix, cell, fused_loop
from rnnzoo.cells.manual import lstm_cell_back, manual_loop, sigmoid_back, tanh_back
from rnnzoo.cells.parts import (
    StackedGates,
    affine,
    bias_param,
    glorot_init_,
    uniform_init_,
)
from rnnzoo.ops import backend
from rnnzoo.ops.native.cells import NativeStep


class _LSTM(StackedGates):
    """The LSTM step of `lstm`, `peephole_lstm` and `res_lstm`. State (h, c):
    h (B, proj_size or H), c (B, H). Gate rows (i, f, g, o); weight_ph (3H,) = p_i, p_f, p_o
    as torchrecurrent's PeepholeLSTM; weight_hr (proj_size, H)."""

    num_gates = 4

    def __init__(self, input_size, hidden_size, bias=True, proj_size=0, peepholes=False):
        if not isinstance(proj_size, int) or isinstance(proj_size, bool) or proj_size < 0:
            raise ValueError(f"proj_size must be a non-negative int, got {proj_size!r}")
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size must be smaller than hidden_size={hidden_size}, "
                             f"got {proj_size}")
        super().__init__(input_size, hidden_size, bias, proj_size or hidden_size)
        self.proj_size = proj_size
        self.weight_hr = nn.Parameter(torch.empty(proj_size, hidden_size)) if proj_size else None
        self.weight_ph = nn.Parameter(torch.empty(3 * hidden_size)) \
            if checks.flag("peepholes", peepholes) else None
        self.state_sizes = (proj_size or hidden_size, hidden_size)
        self.reset_parameters()

    def weights(self, batch_size):
        """W_hh as a `RecurrentMatrix`, p_i, p_f, p_o (or Nones), W_hr^T (or None)."""
        peepholes = (None,) * 3 if self.weight_ph is None else self.weight_ph.chunk(3)
        return (RecurrentMatrix(self.weight_hh), *peepholes,
                None if self.weight_hr is None else self.weight_hr.T)

    def _cell(self, gates_x, state, w):
        """c_t and the output gate's pre-activation (its peephole on c_t included)."""
        (h, c), (mm, p_i, p_f, p_o, _) = state, w[:5]
        i, f, g, o = mm(h, gates_x).chunk(4, -1)
        if p_i is not None:
            i, f = torch.addcmul(i, c, p_i), torch.addcmul(f, c, p_f)
        c = torch.addcmul(torch.sigmoid(f) * c, torch.sigmoid(i), torch.tanh(g))
        return c, (o if p_o is None else torch.addcmul(o, c, p_o))

    def transition(self, parts, state, w):
        c, o = self._cell(parts[0], state, w)
        h = torch.sigmoid(o) * torch.tanh(c)
        return (h if w[4] is None else h @ w[4]), c

    # -- the hand-written backward (`manual_loop`; no projection W_hr) ----------------------
    def fused(self, x, state):
        return manual_loop(self, x, state)

    def manual_params(self):
        """W_hh (and res_lstm's W_proj); the peepholes p_i, p_f, p_o where present."""
        proj = getattr(self, "weight_proj", None)
        return ((self.weight_hh,) if proj is None else (self.weight_hh, proj)), \
            (() if self.weight_ph is None else tuple(self.weight_ph.chunk(3)))

    def manual_step(self, xp_t, state, wt, vectors):
        (h, c), H = state, self.hidden_size
        ai, af, ag, ao = torch.addmm(xp_t[:, :4 * H], h, wt[0]).chunk(4, 1)
        if vectors:
            ai, af = torch.addcmul(ai, c, vectors[0]), torch.addcmul(af, c, vectors[1])
        i, f, g = torch.sigmoid(ai), torch.sigmoid(af), torch.tanh(ag)
        c_new = torch.addcmul(f * c, i, g)
        if vectors:
            ao = torch.addcmul(ao, c_new, vectors[2])
        o, tc = torch.sigmoid(ao), torch.tanh(c_new)
        u = None if len(wt) == 1 else torch.addmm(xp_t[:, 4 * H:], tc, wt[1])  # res_lstm
        return (o * (tc if u is None else u), c_new), None, (h,) + (() if u is None else (tc,)), \
            (c, i, f, g, o, c_new, tc, u)

    def manual_native(self):
        """The same step in C (ops/native/lstm_cells.c)."""
        res = getattr(self, "weight_proj", None) is not None
        return NativeStep("lstm_cells", "lstm", (7 + res) * self.hidden_size,
                          (int(self.weight_ph is not None), int(res)))

    def manual_back(self, d_state, saved, matrices, vectors):
        (dh, dc), (c, i, f, g, o, c_new, tc, u) = d_state, saved
        d_ao = sigmoid_back(dh * (tc if u is None else u), o)
        du = dh * o
        dc_new = dc + tanh_back(du if u is None else du @ matrices[1], tc)
        if vectors:
            dc_new = torch.addcmul(dc_new, d_ao, vectors[2])
        d_ai, d_af, d_ag, dc_prev = lstm_cell_back(dc_new, i, f, g, c)
        d_vec = ()
        if vectors:
            dc_prev = torch.addcmul(torch.addcmul(dc_prev, d_ai, vectors[0]), d_af, vectors[1])
            d_vec = (d_ai * c, d_af * c, d_ao * c_new)
        da = torch.cat([d_ai, d_af, d_ag, d_ao], 1)
        dh_prev = da @ matrices[0]
        if u is None:
            return da, (dh_prev, dc_prev), (da,), d_vec
        return torch.cat([da, du], 1), (dh_prev, dc_prev), (da, du), d_vec


@cell("lstm", paper="Hochreiter & Schmidhuber 1997; Gers et al. 2000; LSTMP: Sak et al. 2014, "
      "arXiv:1402.1128", tiny={"hidden_size": 5})
class LSTMCell(_LSTM):
    """torch.nn.LSTM's cell. State (h, c): h (B, proj_size or H), c (B, H).

    Options: `proj_size` (LSTMP: h_t = W_hr (o * tanh c_t), weight_hr (proj_size, H)),
    `peepholes` (weight_ph (3H,): p_i, p_f, p_o as in torchrecurrent's PeepholeLSTM).
    `fused` runs torch's LSTM kernel; with peepholes (torch has none) it is the loop with its
    hand-written backward (`manual_loop`; `fused_loop` with proj_size too);
    inside `ops.backend.force("triton")`, without peepholes or projection, the Triton
    kernel `ops.triton.rnn.lstm_sequence`.
    """

    parallel_modes = ("newton", "quasi")

    def reset_parameters(self):
        uniform_init_(self, self.hidden_size)

    def flat_weights(self) -> list:
        """torch.nn.LSTM's `_flat_weights` order: w_ih, w_hh[, b_ih, b_hh][, w_hr]."""
        w = [self.weight_ih, self.weight_hh]
        w += [self.bias_ih, self.bias_hh] if self.bias_ih is not None else []
        return w + ([self.weight_hr] if self.weight_hr is not None else [])

    @property
    def has_torch_kernel(self) -> bool:
        return self.weight_ph is None

    def fused(self, x, state):
        if not self.has_torch_kernel:  # peepholes: the hand-written backward, or W_hr's too
            return fused_loop(self, x, state) if self.weight_hr is not None \
                else manual_loop(self, x, state)
        # the Triton kernel only when forced: cuDNN stays the default until a GPU benchmark
        # shows the kernel wins
        if self.weight_hr is None and x.dtype != torch.float64 and \
                backend.use_triton(x, *state, auto=False):
            from functools import partial

            from rnnzoo.cells.manual import manual_plain
            from rnnzoo.ops.triton.rnn import lstm_sequence
            return lstm_sequence(self.project(x), self.weight_hh, *state,
                                 plain=partial(manual_plain, self))
        h, c = (s.unsqueeze(0).to(x.dtype) for s in state)
        out, h, c = _torch_lstm(x, (h, c), self.flat_weights(), self.bias_ih is not None,
                                self.training)
        return out, (h[0], c[0])


def _vf_lstm(x, hc, weights, has_bias, training):
    return torch._VF.lstm(x, hc, weights, has_bias, 1, 0.0, training, False, True)


def _torch_lstm(x, hc, weights, has_bias, training):
    """Eager under torch.compile, as torch.nn.LSTM itself is (dynamo's allow_rnn): the CPU
    kernel has no fake-tensor rule, and a compiled call from a state failed inside AOT
    autograd. The disable is made only there: torch.compiler.disable imports dynamo (and
    triton), which `import rnnzoo` must not."""
    run = torch.compiler.disable(_vf_lstm) if torch.compiler.is_compiling() else _vf_lstm
    return run(x, hc, weights, has_bias, training)


@cell("peephole_lstm", paper="Gers & Schmidhuber 2000, IJCNN (Recurrent nets that time and count)")
class PeepholeLSTMCell(_LSTM):
    """`lstm` with peephole connections from the cell to the gates, always on. State (h, c).

    Glorot-uniform weights, zero biases, peephole weights U(-0.1, 0.1)."""

    def __init__(self, input_size, hidden_size, bias=True):
        super().__init__(input_size, hidden_size, bias, peepholes=True)

    def reset_parameters(self):
        glorot_init_(self)
        nn.init.uniform_(self.weight_ph, -0.1, 0.1)


@cell("res_lstm", paper="Kim, El-Khamy & Lee 2017, arXiv:1701.03360")
class ResLSTM(PeepholeLSTMCell):
    """Residual LSTM: peephole LSTM with a projected cell plus an input shortcut.
    State: (h, c)."""

    def __init__(self, input_size, hidden_size, bias=True):
        super().__init__(input_size, hidden_size, bias)
        self.weight_proj = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.weight_res = nn.Parameter(torch.empty(hidden_size, input_size))
        nn.init.xavier_uniform_(self.weight_proj)
        nn.init.xavier_uniform_(self.weight_res)

    def project(self, x):
        """[W_ih x + b_ih + b_hh, W_res x]: one product with the stacked weights (no cat of
        two (B, T, .) results, whose backward would copy each slice)."""
        H = self.hidden_size
        pad = [None if b is None else F.pad(b, (0, H)) for b in (self.bias_ih, self.bias_hh)]
        return affine(x, torch.cat([self.weight_ih, self.weight_res]), *pad)

    def pieces(self):
        return (4 * self.hidden_size, self.hidden_size)

    def weights(self, batch_size):
        return super().weights(batch_size) + (self.weight_proj.T,)

    def transition(self, parts, state, w):
        gates_x, residual = parts
        c, o = self._cell(gates_x, state, w)
        return torch.sigmoid(o) * torch.addmm(residual, torch.tanh(c), w[5]), c


class _ThreeGates(StackedGates):
    """The hand-written backward (`manual_loop`, in C on CPU: lstm_cells.c) of the LSTMs with
    gate rows (i, g, o): c' = c + i (g - c) when `coupled` (cifg_lstm), else c + i g
    (original_lstm); h' = o tanh(c'). State (h, c)."""

    num_gates = 3
    coupled: bool

    def fused(self, x, state):
        return manual_loop(self, x, state)

    def manual_params(self):
        return (self.weight_hh,), ()

    def manual_step(self, xp_t, state, wt, vectors):
        (h, c), H = state, self.hidden_size
        a = torch.addmm(xp_t, h, wt[0])
        i, g, o = torch.sigmoid(a[:, :H]), torch.tanh(a[:, H:2 * H]), torch.sigmoid(a[:, 2 * H:])
        c_new = c + i * (g - c) if self.coupled else torch.addcmul(c, i, g)
        tc = torch.tanh(c_new)
        return (o * tc, c_new), None, (h,), (c, i, g, o, tc)

    def manual_back(self, d_state, saved, matrices, vectors):
        (dh, dc), (c, i, g, o, tc) = d_state, saved
        d_ao = sigmoid_back(dh * tc, o)
        dc_new = dc + tanh_back(dh * o, tc)
        d_ai = sigmoid_back(dc_new * (g - c if self.coupled else g), i)
        da = torch.cat([d_ai, tanh_back(dc_new * i, g), d_ao], 1)
        dc_prev = dc_new * (1 - i) if self.coupled else dc_new
        return da, (da @ matrices[0], dc_prev), (da,), ()

    def manual_native(self):
        """The same step in C (ops/native/lstm_cells.c)."""
        return NativeStep("lstm_cells", "lstm3", 5 * self.hidden_size, (int(self.coupled),))


@cell("cifg_lstm", paper="Greff et al. 2017, arXiv:1503.04069 (coupled input-forget gate)",
      tiny={"hidden_size": 5})
class CIFGLSTMCell(_ThreeGates):
    """LSTM with coupled input and forget gates (Greff et al. 2017, variant CIFG):

        i = sigma(W_i x + U_i h + b_i),  g = tanh(W_g x + U_g h + b_g)
        o = sigma(W_o x + U_o h + b_o)
        c_t = (1 - i) * c_{t-1} + i * g,  h_t = o * tanh(c_t)

    Gate order in weight_ih / weight_hh: i, g, o. State (h, c).
    """

    coupled = True

    def __init__(self, input_size, hidden_size, bias=True):
        super().__init__(input_size, hidden_size, bias)
        self.state_sizes = (hidden_size, hidden_size)
        uniform_init_(self, hidden_size)

    def weights(self, batch_size):
        return (self.weight_hh.T,)

    def transition(self, parts, state, w):
        h, c = state
        i, g, o = torch.addmm(parts[0], h, w[0]).chunk(3, -1)
        i = torch.sigmoid(i)
        c = c + i * (torch.tanh(g) - c)  # (1 - i) c + i g
        return torch.sigmoid(o) * torch.tanh(c), c


@cell("original_lstm", paper="Hochreiter & Schmidhuber 1997, Neural Computation 9(8)")
class OriginalLSTM(_ThreeGates):
    """The 1997 LSTM, without forget gate (see the module docstring). State: (h, c)."""

    coupled = False

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        self.state_sizes = (hidden_size, hidden_size)
        glorot_init_(self)

    def weights(self, batch_size):
        return (self.weight_hh.T,)

    def transition(self, parts, state, w):
        h, c = state
        i, g, o = torch.addmm(parts[0], h, w[0]).chunk(3, 1)
        c = torch.addcmul(c, torch.sigmoid(i), torch.tanh(g))
        return torch.sigmoid(o) * torch.tanh(c), c


@cell("multiplicative_lstm", paper="Krause et al. 2016, arXiv:1609.07959")
class MultiplicativeLSTM(Cell):
    """mLSTM: an LSTM whose gates read m_t = (W_mx x_t) * (W_mh h_{t-1}). State: (h, c)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size)
        self.state_sizes = (hidden_size, hidden_size)
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(5 * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(H, H))
        self.weight_mh = nn.Parameter(torch.empty(4 * H, H))
        self.bias_ih = bias_param(5 * H, bias)
        self.bias_hh = bias_param(H, bias)
        self.bias_mh = bias_param(4 * H, bias)
        glorot_init_(self)

    def project(self, x):
        H = self.hidden_size
        b_mh = None if self.bias_mh is None else F.pad(self.bias_mh, (H, 0))
        return affine(x, self.weight_ih, self.bias_ih, b_mh)

    def pieces(self):
        return (self.hidden_size, 4 * self.hidden_size)

    def weights(self, batch_size):
        return self.weight_hh.T, self.weight_mh.T

    def transition(self, parts, state, w):
        (m_x, gates_x), (h, c), (w_hh, w_mh) = parts, state, w
        hh = h @ w_hh if self.bias_hh is None else torch.addmm(self.bias_hh, h, w_hh)
        i, f, g, o = torch.addmm(gates_x, m_x * hh, w_mh).chunk(4, 1)
        c = torch.addcmul(torch.sigmoid(f) * c, torch.sigmoid(i), torch.tanh(g))
        return torch.sigmoid(o) * torch.tanh(c), c

    def fused(self, x, state):
        return manual_loop(self, x, state)

    def manual_params(self):
        return (self.weight_hh, self.weight_mh), \
            (() if self.bias_hh is None else (self.bias_hh,))

    def manual_step(self, xp_t, state, wt, vectors):
        (h, c), H = state, self.hidden_size
        m_x = xp_t[:, :H]
        hh = h @ wt[0] if not vectors else torch.addmm(vectors[0], h, wt[0])
        m = m_x * hh
        a = torch.addmm(xp_t[:, H:], m, wt[1])
        i, f, o = torch.sigmoid(a[:, :2 * H]).chunk(2, 1) + (torch.sigmoid(a[:, 3 * H:]),)
        g = torch.tanh(a[:, 2 * H:3 * H])
        c_new = torch.addcmul(f * c, i, g)
        tc = torch.tanh(c_new)
        return (o * tc, c_new), None, (h, m), (m_x, hh, c, i, f, g, o, tc)

    def manual_native(self):
        """The same step in C (ops/native/lstm_cells.c)."""
        return NativeStep("lstm_cells", "mlstm", 8 * self.hidden_size, (int(self.bias_hh is not None),))

    def manual_back(self, d_state, saved, matrices, vectors):
        (dh, dc), (m_x, hh, c, i, f, g, o, tc) = d_state, saved
        d_ao = sigmoid_back(dh * tc, o)
        d_ai, d_af, d_ag, dc_prev = lstm_cell_back(dc + tanh_back(dh * o, tc), i, f, g, c)
        da = torch.cat([d_ai, d_af, d_ag, d_ao], 1)
        dm = da @ matrices[1]
        d_hh = dm * m_x
        return torch.cat([dm * hh, da], 1), (d_hh @ matrices[0], dc_prev), (d_hh, da), \
            ((d_hh,) if vectors else ())


@cell("wmclstm", paper="Landi et al. 2021, arXiv:2109.00020")
class WMCLSTM(StackedGates):
    """LSTM with working-memory connections tanh(V c) into the gates. State: (h, c)."""

    num_gates = 4

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        self.state_sizes = (hidden_size, hidden_size)
        self.weight_mh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.bias_mh = bias_param(3 * hidden_size, bias)
        glorot_init_(self)

    def weights(self, batch_size):
        H = self.hidden_size
        v_if, v_o = self.weight_mh.T.split([2 * H, H], 1)
        b_if, b_o = (None, None) if self.bias_mh is None else self.bias_mh.split([2 * H, H])
        return self.weight_hh.T, v_if, v_o, b_if, b_o

    @staticmethod
    def _memory(c, v, b):
        """tanh(V c + b): the working-memory connection."""
        return torch.tanh(c @ v if b is None else torch.addmm(b, c, v))

    def transition(self, parts, state, w):
        (h, c), (w_hh, v_if, v_o, b_if, b_o) = state, w
        gi, gf, gc, go = torch.addmm(parts[0], h, w_hh).chunk(4, 1)
        mi, mf = self._memory(c, v_if, b_if).chunk(2, 1)
        i, f = torch.sigmoid(gi + mi), torch.sigmoid(gf + mf)
        c = torch.addcmul(f * c, i, torch.tanh(gc))
        o = torch.sigmoid(go + self._memory(c, v_o, b_o))
        return o * torch.tanh(c), c

    def fused(self, x, state):
        return manual_loop(self, x, state)

    def manual_params(self):
        """W_hh, V_if, V_o; b_if, b_o (none without bias)."""
        H = self.hidden_size
        v_if, v_o = self.weight_mh.split([2 * H, H])
        return (self.weight_hh, v_if, v_o), \
            (() if self.bias_mh is None else tuple(self.bias_mh.split([2 * H, H])))

    def manual_step(self, xp_t, state, wt, vectors):
        (h, c), H = state, self.hidden_size
        b_if, b_o = vectors or (None, None)
        a = torch.addmm(xp_t, h, wt[0])
        mem_if = self._memory(c, wt[1], b_if)
        i, f = torch.sigmoid(a[:, :2 * H] + mem_if).chunk(2, 1)
        g = torch.tanh(a[:, 2 * H:3 * H])
        c_new = torch.addcmul(f * c, i, g)
        mem_o = self._memory(c_new, wt[2], b_o)
        o = torch.sigmoid(a[:, 3 * H:] + mem_o)
        tc = torch.tanh(c_new)
        return (o * tc, c_new), None, (h, c, c_new), (c, i, f, g, o, tc, mem_if, mem_o)

    def manual_native(self):
        """The same step in C (ops/native/lstm_cells.c)."""
        return NativeStep("lstm_cells", "wmc", 9 * self.hidden_size, (int(self.bias_mh is not None),))

    def manual_back(self, d_state, saved, matrices, vectors):
        (dh, dc), (c, i, f, g, o, tc, mem_if, mem_o) = d_state, saved
        d_ao = sigmoid_back(dh * tc, o)
        d_mo = tanh_back(d_ao, mem_o)
        dc_new = torch.addmm(dc + tanh_back(dh * o, tc), d_mo, matrices[2])
        d_ai, d_af, d_ag, dc_prev = lstm_cell_back(dc_new, i, f, g, c)
        d_aif = torch.cat([d_ai, d_af], 1)
        d_mif = tanh_back(d_aif, mem_if)
        da = torch.cat([d_aif, d_ag, d_ao], 1)
        return da, (da @ matrices[0], torch.addmm(dc_prev, d_mif, matrices[1])), \
            (da, d_mif, d_mo), ((d_mif, d_mo) if vectors else ())


@cell("janet", paper="van der Westhuizen & Lasenby 2018, arXiv:1804.04849",
      tiny={"hidden_size": 5})
class JANET(StackedGates):
    """JANET, "just another network" (van der Westhuizen & Lasenby 2018): an LSTM
    with the forget gate only, the input gate tied to it through a shift beta.

        s_t = U_f h_{t-1} + W_f x_t + b_f
        c~_t = tanh(U_c h_{t-1} + W_c x_t + b_c)
        c_t = sigmoid(s_t) * c_{t-1} + (1 - sigmoid(s_t - beta)) * c~_t
        h_t = c_t

    weight_ih = [W_f; W_c], weight_hh = [U_f; U_c]. beta is a fixed
    hyperparameter (1 in the paper; torchrecurrent 0.2.5 trains it). Init: the
    paper's chrono initialiser for the forget bias, b_f = log(U(1, t_max - 1))
    (t_max: the longest dependency expected), other biases 0, Glorot-uniform W,
    orthogonal U. State: h = c (B, hidden_size).
    """

    num_gates = 2

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 beta: float = 1.0, t_max: float = 100.0):
        super().__init__(input_size, hidden_size, bias)
        self.beta = checks.positive("beta", beta, allow_zero=True)
        t_max = checks.positive("t_max", t_max)
        if t_max <= 2:
            raise ValueError(f"t_max must be > 2 (chrono init draws from U(1, t_max - 1)), "
                             f"got {t_max!r}")
        for block in self.weight_ih.data.chunk(2):
            nn.init.xavier_uniform_(block)
        for block in self.weight_hh.data.chunk(2):
            nn.init.orthogonal_(block)
        if self.bias_ih is not None:
            with torch.no_grad():
                self.bias_ih[:hidden_size].uniform_(1, t_max - 1).log_()

    def weights(self, batch_size):
        return (self.weight_hh.T,)

    def transition(self, parts, state, w):
        c = state[0]
        s, cand = torch.addmm(parts[0], c, w[0]).chunk(2, -1)
        keep = torch.sigmoid(self.beta - s)  # 1 - sigmoid(s - beta)
        return (torch.addcmul(torch.sigmoid(s) * c, keep, torch.tanh(cand)),)

    # -- the hand-written backward (`manual_loop`; in C on CPU: lstm_cells.c) ---------------
    def fused(self, x, state):
        return manual_loop(self, x, state)

    def manual_params(self):
        return (self.weight_hh,), ()

    def manual_step(self, xp_t, state, wt, vectors):
        (c,), H = state, self.hidden_size
        a = torch.addmm(xp_t, c, wt[0])
        f, keep = torch.sigmoid(a[:, :H]), torch.sigmoid(self.beta - a[:, :H])
        tc = torch.tanh(a[:, H:])
        return (torch.addcmul(f * c, keep, tc),), None, (c,), (c, f, keep, tc)

    def manual_back(self, d_state, saved, matrices, vectors):
        (dc,), (c, f, keep, tc) = d_state, saved
        da = torch.cat([sigmoid_back(dc * c, f) - sigmoid_back(dc * tc, keep),
                        tanh_back(dc * keep, tc)], 1)
        return da, (torch.addmm(dc * f, da, matrices[0]),), (da,), ()

    def manual_native(self):
        """The same step in C (ops/native/lstm_cells.c)."""
        return NativeStep("lstm_cells", "janet", 4 * self.hidden_size, floats=(self.beta,))


@cell("mclstm", paper="memory-controller LSTM, NIPS 2017 Time Series Workshop (Intel AI)",
      tiny={"hidden_size": 5})
class MCLSTM(StackedGates):
    """Memory-controller LSTM: the gates read a control vector v_{t-1}, not the output h.

        f, i, o, m = sigmoid(W_ih^{f,i,o,m} x_t + W_hh^{f,i,o,m} v_{t-1} + b)
        n_t = tanh(W_ih^n x_t + W_hh^n v_{t-1} + b_n)
        c_t = f * c_{t-1} + i * n_t
        h_t = o * tanh(c_t)         (the output)
        v_t = m * tanh(c_t)         (what the next step reads)

    weight_ih = [W_f; W_i; W_o; W_m; W_n] (5H, I), weight_hh likewise (5H, H).
    Init: torch.nn.LSTM's U(+-1/sqrt(hidden)). State: (h, v, c), output h; h is
    carried only to be returned (the next step reads v and c).
    """

    num_gates = 5

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        self.state_sizes = (hidden_size,) * 3
        uniform_init_(self, hidden_size)

    def weights(self, batch_size):
        return (self.weight_hh.T,)

    def transition(self, parts, state, w):
        _, v, c = state
        H = self.hidden_size
        gates, n = torch.addmm(parts[0], v, w[0]).split((4 * H, H), -1)
        f, i, o, m = torch.sigmoid(gates).chunk(4, -1)
        c = torch.addcmul(f * c, i, torch.tanh(n))
        squashed = torch.tanh(c)
        return o * squashed, m * squashed, c

    def fused(self, x, state):
        return manual_loop(self, x, state)

    def manual_params(self):
        return (self.weight_hh,), ()

    def manual_step(self, xp_t, state, wt, vectors):
        (_, v, c), H = state, self.hidden_size
        a = torch.addmm(xp_t, v, wt[0])
        gates, n = torch.sigmoid(a[:, :4 * H]), torch.tanh(a[:, 4 * H:])
        f, i, o, m = gates.chunk(4, 1)
        c_new = torch.addcmul(f * c, i, n)
        s = torch.tanh(c_new)
        return (o * s, m * s, c_new), None, (v,), (c, gates, n, s)

    def manual_native(self):
        """The same step in C (ops/native/lstm_cells.c)."""
        return NativeStep("lstm_cells", "mc", 7 * self.hidden_size)

    def manual_back(self, d_state, saved, matrices, vectors):
        (dh, dv, dc), (c, gates, n, s) = d_state, saved
        f, i, o, m = gates.chunk(4, 1)
        dc_new = dc + tanh_back(torch.addcmul(dh * o, dv, m), s)
        d_gates = sigmoid_back(torch.cat([dc_new * c, dc_new * n, dh * s, dv * s], 1), gates)
        da = torch.cat([d_gates, tanh_back(dc_new * i, n)], 1)
        return da, (torch.zeros_like(dh), da @ matrices[0], dc_new * f), (da,), ()
