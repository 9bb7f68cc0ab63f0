"""Cells with one or two gates and a single state h (B, hidden_size): ATR, CFN,
Li-GRU, LightRU, MGU, MinimalRNN, UGRNN, STAR, SGRN, SGU and DSGU.

Parameters are PyTorch-style: `weight_ih` stacks the input maps of the gates in
the order the docstring lists them, `weight_hh` the recurrent maps, `bias_ih`
and `bias_hh` likewise (the layouts of torchrecurrent 0.2.5, so weights copy
across by name). Each step does one matrix product on h (MGU: two, its
candidate reads the gated state); everything that depends on x only (tanh
candidates of LightRU, MinimalRNN's latent z and its gate input) is computed
for all steps at once in `project`.

STAR and SGRN squash a gated mix of the old state and an input-only candidate.
STAR, the stackable recurrent cell (Turkoglu et al. 2021, "Gating Revisited: Deep
Multi-layer RNNs That Can Be Trained", arXiv:1911.11033, TPAMI):

    z_t = tanh(W_z x_t + b_z)
    k_t = sigmoid(W_x x_t + W_h h_{t-1} + b_k)
    h_t = tanh((1 - k_t) * h_{t-1} + k_t * z_t)

  weight_ih (2H, I) rows [z; k], bias_ih (2H,), weight_hh (H, H), bias_hh (H,).

SGRN, the simple gated recurrent network (IET Generation, Transmission &
Distribution 2021, doi:10.1049/gtd2.12056): one shared input map u_t,

    u_t = W_ih x_t + b_ih
    f_t = sigmoid(u_t + W_hh h_{t-1} + b_hh),   i_t = 1 - f_t
    h_t = tanh(i_t * u_t + f_t * h_{t-1})

  weight_ih (H, I), weight_hh (H, H), bias_ih, bias_hh (H,).

Simple Gated Unit and Deep Simple Gated Unit (Gao & Glowacka 2016, "Deep Gate
Recurrent Neural Network", ACML, arXiv:1604.02910). One gate z_t and a
multiplicative candidate built from the input-modulated state:

    x_g   = W_xh x_t + b_g
    z_g   = tanh(U_g (x_g * h_{t-1}) + b_zg)
    SGU:   z_out = softplus(z_g * h_{t-1})
    DSGU:  z_out = sigmoid(U_o (z_g * h_{t-1}))
    z_t   = hard_sigmoid(W_xz x_t + b_z + U_z h_{t-1})
    h_t   = (1 - z_t) * h_{t-1} + z_t * z_out

hard_sigmoid is torch's, relu6(x + 3) / 6, as in torchrecurrent (Theano's, used by
the paper's code, is clip(0.2 x + 0.5, 0, 1): the same shape with slope 0.2).
Parameters: weight_ih (2H, I) rows [W_xh; W_xz], bias_ih (2H,), weight_hh (2H, H)
rows [U_g; U_z], bias_hh (2H,); DSGU adds weight_ho (H, H) = U_o.

Initialisation: STAR, SGRN, SGU and DSGU Glorot-uniform weights and zero biases;
the others torch.nn.RNN's U(-1/sqrt(hidden), 1/sqrt(hidden)) unless their class
says otherwise, the papers giving none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.cells.base import cell
from rnnzoo.cells.manual import manual_loop, relu_back, sigmoid_back, tanh_back
from rnnzoo.cells.parts import (
    StackedGates,
    activation,
    add_bias,
    affine,
    glorot_init_,
    hard_sigmoid,
    uniform_init_,
)
from rnnzoo.ops.native.cells import NativeStep

COLLINS = "Collins, Sohl-Dickstein & Sussillo 2017, ICLR, arXiv:1611.09913"
SGU_PAPER = "Gao & Glowacka 2016, arXiv:1604.02910"


class _OneProduct(StackedGates):
    """torch.nn.RNN's initialisation; `weights` gives W_hh^T (H, R*H) once per sequence."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        uniform_init_(self, hidden_size)

    def weights(self, batch_size):
        return (self.weight_hh.T,)


class _GatedMix:
    """STAR's, SGRN's and LightRU's hand-written backward (`manual_loop`; the C step mix of
    ops/native/plain_cells.c): xp_t = [candidate z | gate input],
    k = sigmoid(+-a), a = gate input + h W_hh^T (- with `flip`: SGRN's 1 - f),
    m = h + k (z - h), h' = tanh(m) (`squash`) or m. With d = dh_t (times 1 - h'^2 when
    squashed): d z = d k, d a = +-d (z - h) k (1 - k), dh_{t-1} = d (1 - k) + d a W_hh."""

    flip = False
    squash = True

    def fused(self, x, state):
        return manual_loop(self, x, state)

    def manual_params(self):
        return (self.weight_hh,), ()

    def manual_native(self):
        """The same step in C (ops/native/plain_cells.c)."""
        return NativeStep("plain_cells", "mix", 4 * self.hidden_size,
                          ints=(int(self.flip), int(self.squash)))

    def manual_step(self, xp_t, state, wt, vectors):
        h, H = state[0], self.hidden_size
        z = xp_t[:, :H]
        a = torch.addmm(xp_t[:, H:], h, wt[0])
        k = torch.sigmoid(-a if self.flip else a)
        m = torch.addcmul(h, k, z - h)
        h_new = torch.tanh(m) if self.squash else m
        return (h_new,), None, (h,), (h, k, z, h_new)

    def manual_back(self, d_state, saved, matrices, vectors):
        (dh,), (h, k, z, h_new) = d_state, saved
        d = tanh_back(dh, h_new) if self.squash else dh
        d_a = sigmoid_back(d * (z - h), k)
        d_a = -d_a if self.flip else d_a
        return torch.cat([d * k, d_a], 1), (torch.addmm(d - d * k, d_a, matrices[0]),), \
            (d_a,), ()


@cell("atr", paper="Zhang, Xiong, Su, Lin & Zhang 2018, EMNLP, arXiv:1810.12546",
      tiny={"hidden_size": 5})
class ATR(_OneProduct):
    """Addition-subtraction twin-gated recurrent unit (Zhang et al. 2018):

        p_t = W_ih x_t + b_ih,   q_t = W_hh h_{t-1} + b_hh
        i_t = sigmoid(p_t + q_t),   f_t = sigmoid(p_t - q_t)
        h_t = i_t * p_t + f_t * h_{t-1}

    Both gates come from one product: [p_t + b_hh, p_t - b_hh] + h_{t-1} [U; -U]^T.
    """

    def pieces(self):
        return (2 * self.hidden_size, self.hidden_size)

    def project(self, x):
        """(..., I) -> (..., 3H): p + b_hh, p - b_hh, p."""
        p = affine(x, self.weight_ih, self.bias_ih)
        if self.bias_hh is None:
            return torch.cat([p, p, p], -1)
        return torch.cat([p + self.bias_hh, p - self.bias_hh, p], -1)

    def weights(self, batch_size):
        u = self.weight_hh
        return (torch.cat([u, -u]).T,)

    def transition(self, parts, state, w):
        h = state[0]
        pm, p = parts
        i, f = torch.sigmoid(torch.addmm(pm, h, w[0])).chunk(2, -1)
        return (torch.addcmul(i * p, f, h),)

    # -- the hand-written backward (`manual_loop`) ------------------------------------------
    def fused(self, x, state):
        """The loop with its hand-written backward; the step multiplies h by U once (the
        reference by [U; -U]): q = h U^T, i = sigmoid(xp_i + q), f = sigmoid(xp_f - q).
        With d = dh_t: d a_i = d p i (1 - i), d a_f = d h f (1 - f), d p = d i,
        dh_{t-1} = d f + (d a_i - d a_f) U."""
        return manual_loop(self, x, state)

    def manual_params(self):
        return (self.weight_hh,), ()

    def manual_native(self):
        """The same step in C (ops/native/plain_cells.c)."""
        return NativeStep("plain_cells", "atr", 4 * self.hidden_size)

    def manual_step(self, xp_t, state, wt, vectors):
        h, H = state[0], self.hidden_size
        q = h @ wt[0]
        i, f = torch.sigmoid(xp_t[:, :H] + q), torch.sigmoid(xp_t[:, H:2 * H] - q)
        p = xp_t[:, 2 * H:]
        return (torch.addcmul(i * p, f, h),), None, (h,), (h, i, f, p)

    def manual_back(self, d_state, saved, matrices, vectors):
        (dh,), (h, i, f, p) = d_state, saved
        d_i, d_f = sigmoid_back(dh * p, i), sigmoid_back(dh * h, f)
        g = d_i - d_f
        return torch.cat([d_i, d_f, dh * i], 1), (torch.addmm(dh * f, g, matrices[0]),), (g,), ()


@cell("cfn", paper="Laurent & von Brecht 2017, ICLR, arXiv:1612.06212", tiny={"hidden_size": 5})
class CFN(_OneProduct):
    """Chaos-free network (Laurent & von Brecht 2017):

        theta_t = sigmoid(U_theta h_{t-1} + V_theta x_t + b_theta)
        eta_t   = sigmoid(U_eta h_{t-1} + V_eta x_t + b_eta)
        h_t     = theta_t * tanh(h_{t-1}) + eta_t * tanh(W x_t + b)

    weight_ih = [V_theta; V_eta; W] (3H, I), weight_hh = [U_theta; U_eta] (2H, H).
    Without input the state decays monotonically to 0: no chaos.
    """

    num_gates, recurrent_gates = 3, 2

    def pieces(self):
        return (2 * self.hidden_size, self.hidden_size)

    def project(self, x):
        H = self.hidden_size
        xp = affine(x, self.weight_ih, self.bias_ih)
        gates = xp[..., :2 * H] if self.bias_hh is None else xp[..., :2 * H] + self.bias_hh
        return torch.cat([gates, torch.tanh(xp[..., 2 * H:])], -1)

    def transition(self, parts, state, w):
        h = state[0]
        gates, cand = parts
        theta, eta = torch.sigmoid(torch.addmm(gates, h, w[0])).chunk(2, -1)
        return (torch.addcmul(theta * torch.tanh(h), eta, cand),)

    # -- the hand-written backward (`manual_loop`) ------------------------------------------
    def fused(self, x, state):
        """The loop with its hand-written backward: with d = dh_t,
        d a_theta = d tanh(h) theta (1 - theta), d a_eta = d cand eta (1 - eta),
        d cand = d eta, dh_{t-1} = d theta (1 - tanh(h)^2) + [d a_theta, d a_eta] U."""
        return manual_loop(self, x, state)

    def manual_params(self):
        return (self.weight_hh,), ()

    def manual_native(self):
        """The same step in C (ops/native/simple_gated.c)."""
        return NativeStep("simple_gated", "cfn", 4 * self.hidden_size)

    def manual_step(self, xp_t, state, wt, vectors):
        h, H = state[0], self.hidden_size
        te = torch.sigmoid(torch.addmm(xp_t[:, :2 * H], h, wt[0]))
        th, cand = torch.tanh(h), xp_t[:, 2 * H:]
        return (torch.addcmul(te[:, :H] * th, te[:, H:], cand),), None, (h,), (th, te, cand)

    def manual_back(self, d_state, saved, matrices, vectors):
        (dh,), (th, te, cand), H = d_state, saved, self.hidden_size
        d_a = sigmoid_back(torch.cat([dh * th, dh * cand], 1), te)
        dh_prev = torch.addmm(tanh_back(dh * te[:, :H], th), d_a, matrices[0])
        return torch.cat([d_a, dh * te[:, H:]], 1), (dh_prev,), (d_a,), ()


class _GateAndCandidate:
    """UGRNN's and Li-GRU's hand-written backward (`manual_loop`; the C step gate2 of
    ops/native/plain_cells.c): a = xp_t + h W_hh^T holds the candidate's pre-activation
    and the gate's (`candidate_first`: in that order), c = phi(a_c), g = sigmoid(a_g),
    h' = c + g (h - c). With d = dh_t: d a_c = d (1 - g) phi'(c), d a_g = d (h - c) g (1 - g),
    dh_{t-1} = d g + d a W_hh."""

    candidate_first = True
    relu = False

    def fused(self, x, state):
        return manual_loop(self, x, state)

    def manual_params(self):
        return (self.weight_hh,), ()

    def manual_native(self):
        """The same step in C (ops/native/plain_cells.c)."""
        return NativeStep("plain_cells", "gate2", 3 * self.hidden_size,
                          ints=(int(not self.candidate_first), int(self.relu)), g_is_dxp=True)

    def _split_gates(self, a):
        H = self.hidden_size
        return (a[:, :H], a[:, H:]) if self.candidate_first else (a[:, H:], a[:, :H])

    def manual_step(self, xp_t, state, wt, vectors):
        h = state[0]
        a_c, a_g = self._split_gates(torch.addmm(xp_t, h, wt[0]))
        c, g = (torch.relu if self.relu else torch.tanh)(a_c), torch.sigmoid(a_g)
        return (torch.lerp(c, h, g),), None, (h,), (h, c, g)

    def manual_back(self, d_state, saved, matrices, vectors):
        (dh,), (h, c, g) = d_state, saved
        d_c = (relu_back if self.relu else tanh_back)(dh - dh * g, c)
        d_g = sigmoid_back(dh * (h - c), g)
        da = torch.cat([d_c, d_g] if self.candidate_first else [d_g, d_c], 1)
        return da, (torch.addmm(dh * g, da, matrices[0]),), (da,), ()


@cell("ligru", paper="Ravanelli, Brakel, Omologo & Bengio 2018, arXiv:1803.10225",
      tiny={"hidden_size": 5})
class LiGRU(_GateAndCandidate, _OneProduct):
    """Light GRU (Ravanelli et al. 2018): a GRU without reset gate, ReLU candidate.

        z_t = sigmoid(W_z x_t + U_z h_{t-1} + b_z)
        c_t = relu(W_h x_t + U_h h_{t-1} + b_h)
        h_t = z_t * h_{t-1} + (1 - z_t) * c_t

    weight_ih = [W_z; W_h], weight_hh = [U_z; U_h]. The paper batch-normalises
    W_h x_t over the mini-batch; a per-batch statistic would make a streamed
    step differ from the whole sequence, so it is left to the surrounding model.
    Init: Glorot input maps, orthogonal recurrent maps (as SpeechBrain's Li-GRU), zero biases.
    """

    num_gates = 2
    candidate_first = False

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "relu"):
        super().__init__(input_size, hidden_size, bias)
        self.nonlinearity = nonlinearity
        self.relu = nonlinearity == "relu"
        self._phi = activation("nonlinearity", nonlinearity, ("relu", "tanh"))
        for w, init in ((self.weight_ih, nn.init.xavier_uniform_),
                        (self.weight_hh, nn.init.orthogonal_)):
            for block in w.data.chunk(2):
                init(block)
        for b in (self.bias_ih, self.bias_hh):
            if b is not None:
                nn.init.zeros_(b)

    def transition(self, parts, state, w):
        h = state[0]
        z, c = torch.addmm(parts[0], h, w[0]).chunk(2, -1)
        return (torch.lerp(self._phi(c), h, torch.sigmoid(z)),)


@cell("lightru", paper="Ye et al. 2024, Electronics 13(16):3204, doi:10.3390/electronics13163204",
      tiny={"hidden_size": 5})
class LightRU(_GatedMix, _OneProduct):
    """Light recurrent unit (Ye et al. 2024): the candidate sees the input only.

        c_t = tanh(W_c x_t + b_c)
        f_t = sigmoid(W_f x_t + U_f h_{t-1} + b_f)
        h_t = (1 - f_t) * h_{t-1} + f_t * c_t

    weight_ih = [W_c; W_f] (2H, I), weight_hh = U_f (H, H); bias_hh goes to f.
    """

    num_gates, recurrent_gates = 2, 1
    squash = False

    def pieces(self):
        return (self.hidden_size, self.hidden_size)

    def project(self, x):
        H = self.hidden_size
        xp = affine(x, self.weight_ih, self.bias_ih)
        f = xp[..., H:] if self.bias_hh is None else xp[..., H:] + self.bias_hh
        return torch.cat([torch.tanh(xp[..., :H]), f], -1)

    def transition(self, parts, state, w):
        h = state[0]
        cand, f = parts
        return (torch.lerp(h, cand, torch.sigmoid(torch.addmm(f, h, w[0]))),)


@cell("mgu", paper="Zhou, Wu, Zhang & Zhou 2016, arXiv:1603.09420", tiny={"hidden_size": 5})
class MGU(_OneProduct):
    """Minimal gated unit (Zhou et al. 2016): one forget gate.

        f_t = sigmoid(W_f x_t + U_f h_{t-1} + b_f)
        c_t = tanh(W_h x_t + U_h (f_t * h_{t-1}) + b_h)
        h_t = (1 - f_t) * h_{t-1} + f_t * c_t

    weight_ih = [W_f; W_h], weight_hh = [U_f; U_h]. The candidate reads the gated
    state, so a step needs two matrix products.
    """

    num_gates = 2

    def pieces(self):
        return (self.hidden_size, self.hidden_size)

    def weights(self, batch_size):
        """U_f^T, U_h^T."""
        return tuple(u.T for u in self.weight_hh.chunk(2))

    def transition(self, parts, state, w):
        h = state[0]
        x_f, x_h = parts
        f = torch.sigmoid(torch.addmm(x_f, h, w[0]))
        return (torch.lerp(h, torch.tanh(torch.addmm(x_h, f * h, w[1])), f),)

    # -- the hand-written backward (`manual_loop`) ------------------------------------------
    def fused(self, x, state):
        """The loop with its hand-written backward: with d = dh_t,
        d a_c = d f (1 - c^2),  d(f h) = d a_c U_h,  d a_f = (d (c - h) + d(f h) h) f (1 - f),
        dh_{t-1} = d (1 - f) + d(f h) f + d a_f U_f."""
        return manual_loop(self, x, state)

    def manual_params(self):
        return tuple(self.weight_hh.chunk(2)), ()

    def manual_native(self):
        """The same step in C (ops/native/plain_cells.c)."""
        return NativeStep("plain_cells", "mgu", 3 * self.hidden_size)

    def manual_step(self, xp_t, state, wt, vectors):
        h, H = state[0], self.hidden_size
        f = torch.sigmoid(torch.addmm(xp_t[:, :H], h, wt[0]))
        fh = f * h
        c = torch.tanh(torch.addmm(xp_t[:, H:], fh, wt[1]))
        return (torch.lerp(h, c, f),), None, (h, fh), (h, f, c)

    def manual_back(self, d_state, saved, matrices, vectors):
        (dh,), (h, f, c) = d_state, saved
        d_c = tanh_back(dh * f, c)
        d_fh = d_c @ matrices[1]
        d_f = sigmoid_back(torch.addcmul(dh * (c - h), d_fh, h), f)
        dh_prev = torch.addmm(torch.addcmul(dh - dh * f, d_fh, f), d_f, matrices[0])
        return torch.cat([d_f, d_c], 1), (dh_prev,), (d_f, d_c), ()


@cell("minimal_rnn", paper="Chen 2017, arXiv:1711.06788", tiny={"hidden_size": 5})
class MinimalRNN(_OneProduct):
    """MinimalRNN (Chen 2017): the input is mapped to a latent z_t, then one gate.

        z_t = tanh(W_ih x_t + b_ih)
        u_t = sigmoid(W_hh h_{t-1} + W_mm z_t + b_hh)
        h_t = u_t * h_{t-1} + (1 - u_t) * z_t

    z_t and W_mm z_t + b_hh depend on the input only: `project` computes both.
    Init (our choice, the paper gives none): Glorot W_ih, orthogonal W_hh and
    W_mm, zero biases.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        self.weight_mm = nn.Parameter(torch.empty(hidden_size, hidden_size))
        nn.init.xavier_uniform_(self.weight_ih)
        nn.init.orthogonal_(self.weight_hh)
        nn.init.orthogonal_(self.weight_mm)
        for b in (self.bias_ih, self.bias_hh):
            if b is not None:
                nn.init.zeros_(b)

    def project(self, x):
        z = torch.tanh(affine(x, self.weight_ih, self.bias_ih))
        return torch.cat([z, affine(z, self.weight_mm, self.bias_hh)], -1)

    def pieces(self):
        return (self.hidden_size, self.hidden_size)

    def transition(self, parts, state, w):
        h = state[0]
        z, u = parts
        return (torch.lerp(z, h, torch.sigmoid(torch.addmm(u, h, w[0]))),)


@cell("ugrnn", paper=COLLINS, tiny={"hidden_size": 5})
class UGRNN(_GateAndCandidate, _OneProduct):
    """Update-gate RNN: one gate between h_{t-1} and a tanh candidate.

        c_t = tanh(W_c x_t + U_c h_{t-1} + b_c)
        g_t = sigmoid(W_g x_t + U_g h_{t-1} + b_g)
        h_t = g_t * h_{t-1} + (1 - g_t) * c_t

    (Collins, Sohl-Dickstein & Sussillo 2017, "Capacity and Trainability in Recurrent
    Neural Networks", section 2 and appendix.) weight_ih = [W_c; W_g] (2H, I),
    weight_hh = [U_c; U_g] (2H, H). State: h.
    """

    num_gates = 2

    def transition(self, parts, state, w):
        h = state[0]
        c, g = torch.addmm(parts[0], h, w[0]).chunk(2, -1)
        return (torch.lerp(torch.tanh(c), h, torch.sigmoid(g)),)


class _SquashedGate(StackedGates):
    """STAR and SGRN: weight_hh (H, H), a gate and a candidate from x. Glorot init."""

    recurrent_gates = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        glorot_init_(self)

    def pieces(self):
        return (self.hidden_size, self.hidden_size)

    def weights(self, batch_size):
        return (self.weight_hh.T,)

    def transition(self, parts, state, w):
        """parts = (candidate, gate pre-activation from x): h = tanh(h + k (candidate - h))."""
        (candidate, gate_x), h = parts, state[0]
        k = torch.sigmoid(torch.addmm(gate_x, h, w[0]))
        return (torch.tanh(torch.addcmul(h, k, candidate - h)),)


@cell("star", paper="Turkoglu et al. 2021, arXiv:1911.11033")
class STAR(_GatedMix, _SquashedGate):
    """STAR (see the module docstring). State: h (B, H)."""

    num_gates = 2

    def project(self, x):
        H = self.hidden_size
        xp = affine(x, self.weight_ih, self.bias_ih)
        return torch.cat([torch.tanh(xp[..., :H]), add_bias(xp[..., H:], self.bias_hh)], -1)


@cell("sgrn", paper="IET Gener. Transm. Distrib. 2021, doi:10.1049/gtd2.12056")
class SGRN(_GatedMix, _SquashedGate):
    """SGRN (see the module docstring); i_t = 1 - f_t, so h = tanh(h + (1 - f)(u - h)).
    State: h (B, H)."""

    flip = True

    def project(self, x):
        u = affine(x, self.weight_ih, self.bias_ih)
        return torch.cat([u, add_bias(u, self.bias_hh)], -1)

    def transition(self, parts, state, w):
        (u, gate_x), h = parts, state[0]
        f = torch.sigmoid(torch.addmm(gate_x, h, w[0]))
        return (torch.tanh(torch.addcmul(u, f, h - u)),)


@cell("sgu", paper=SGU_PAPER)
class SGU(StackedGates):
    """SGU (see the module docstring). State: h (B, H)."""

    num_gates = 2

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        glorot_init_(self)

    def project(self, x):
        H = self.hidden_size
        xp = affine(x, self.weight_ih, self.bias_ih)
        b_z = None if self.bias_hh is None else self.bias_hh[H:]
        return torch.cat([xp[..., :H], add_bias(xp[..., H:], b_z)], -1)

    def pieces(self):
        return (self.hidden_size, self.hidden_size)

    def weights(self, batch_size):
        """U_g, U_z, b_zg, and U_o (DSGU)."""
        b_g = None if self.bias_hh is None else self.bias_hh[:self.hidden_size]
        return (*self.weight_hh.T.split(self.hidden_size, 1), b_g, None)

    @staticmethod
    def _out(gated, w_o):
        return F.softplus(gated)

    def transition(self, parts, state, w):
        (x_g, x_z), h, (u_g, u_z, b_g, w_o) = parts, state[0], w
        pre = x_g * h @ u_g if b_g is None else torch.addmm(b_g, x_g * h, u_g)
        z_out = self._out(torch.tanh(pre) * h, w_o)
        z = hard_sigmoid(torch.addmm(x_z, h, u_z))
        return (torch.addcmul(h, z, z_out - h),)

    # -- the hand-written backward (`manual_loop`), SGU and DSGU ------------------------------
    def fused(self, x, state):
        return manual_loop(self, x, state)

    def manual_params(self):
        """U_g, U_z (and DSGU's U_o); b_zg where present."""
        mats = tuple(self.weight_hh.split(self.hidden_size))
        if hasattr(self, "weight_ho"):
            mats += (self.weight_ho,)
        return mats, (() if self.bias_hh is None else (self.bias_hh[:self.hidden_size],))

    def manual_native(self):
        """The same step in C (ops/native/gated_cells.c), SGU and DSGU."""
        return NativeStep("gated_cells", "sgu", 7 * self.hidden_size)

    def manual_step(self, xp_t, state, wt, vectors):
        h, H = state[0], self.hidden_size
        x_g, x_z = xp_t[:, :H], xp_t[:, H:]
        xgh = x_g * h
        tg = torch.tanh(torch.addmm(vectors[0], xgh, wt[0]) if vectors else xgh @ wt[0])
        gated = tg * h
        z_out = torch.sigmoid(gated @ wt[2]) if len(wt) == 3 else F.softplus(gated)
        a_z = torch.addmm(x_z, h, wt[1])
        z = hard_sigmoid(a_z)
        rs = (xgh, h) + ((gated,) if len(wt) == 3 else ())
        return (torch.addcmul(h, z, z_out - h),), None, rs, (h, x_g, tg, gated, z_out, a_z, z)

    def manual_back(self, d_state, saved, matrices, vectors):
        (dh,), (h, x_g, tg, gated, z_out, a_z, z) = d_state, saved
        d_out = dh * z
        d_az = torch.ops.aten.hardsigmoid_backward(dh * (z_out - h), a_z)
        if len(matrices) == 3:
            d_o = sigmoid_back(d_out, z_out)
            d_gated, gs = d_o @ matrices[2], (d_o,)
        else:
            d_gated, gs = torch.ops.aten.softplus_backward(d_out, gated, 1.0, 20.0), ()
        d_pre = tanh_back(d_gated * h, tg)
        d_xgh = d_pre @ matrices[0]
        dh_prev = torch.addcmul(torch.addcmul(dh - d_out, d_gated, tg), d_xgh, x_g)
        return torch.cat([d_xgh * h, d_az], 1), (torch.addmm(dh_prev, d_az, matrices[1]),), \
            (d_pre, d_az) + gs, ((d_pre,) if vectors else ())


@cell("dsgu", paper=SGU_PAPER)
class DSGU(SGU):
    """DSGU: SGU whose candidate is sigmoid(U_o (z_g * h)). State: h (B, H)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)
        self.weight_ho = nn.Parameter(torch.empty(hidden_size, hidden_size))
        nn.init.xavier_uniform_(self.weight_ho)

    def weights(self, batch_size):
        return super().weights(batch_size)[:3] + (self.weight_ho.T,)

    @staticmethod
    def _out(gated, w_o):
        return torch.sigmoid(gated @ w_o)
