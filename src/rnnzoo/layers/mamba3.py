"""Mamba-3 (Lahoti et al. 2026, arXiv:2603.15569): a trapezoidal, complex-valued SSM, SISO or
MIMO.

Per head h (B, C shared by the heads of a group, `n_groups`), with R = mimo_rank (1: SISO):

    [z, x, B, C, dt, A, lam, phi] = u W_in;  B, C = RMSNorm(B), RMSNorm(C) + bias (per head, rank)
    dt = softplus(dt + dt_bias);  A = min(-softplus(A), -A_floor);  alpha_t = exp(dt_t A_t)
    lam = sigmoid(lam);  beta_t = (1 - lam_t) dt_t;  gamma_t = lam_t dt_t
    dtheta_t = pi tanh(phi_t) dt_t          (data-dependent angles, one per channel pair)
    x_{t,r} = x_t * mimo_x[r]               (SISO: x_{t,1} = x_t)
    u_t = sum_r B_{t,r} x_{t,r}^T                                         (d_state, head_dim)
    h_t = alpha_t R(-dtheta_t) (h_{t-1} + beta_t u_{t-1}) + gamma_t u_t    (trapezoidal rule)
    y_{t,r} = h_t^T C_{t,r} + D x_{t,r}
    out = W_out sum_r mimo_o[r] * y_{t,r} * silu(z_t * mimo_z[r])        (SISO: y * silu(z))

R(a) turns channel pairs of the state (a complex diagonal transition exp(dt A + i dtheta) on
the pairs): the first rope_fraction * d_state channels, paired as mamba_ssm's kernels pair
them (adjacent channels for SISO, channel j with j + d_state/2 for MIMO); lam = 1 is the
exponential-Euler rule of Mamba-2. With is_outproj_norm, a gated RMSNorm per head
(mamba_ssm's RMSNormGated, norm before gate) replaces the plain gate. There is no short
convolution (the paper drops it).

Modes: `sequential` is the loop above. `chunk` applies the rotation to C and B as cumulative
angles (the paper's RoPE reading: C_t . R(theta_s - theta_t) B_s = (R_t C_t) . (R_s B_s)),
feeds the two trapezoid terms as one input B_s (gamma_s + beta_{s+1}) and runs Mamba-2's SSD
chunk op (ops/chunk/linear.py) on the sequence of (step, rank) rows, with the decay on each
step's first row; a same-step correction then gives y_{t,r} exactly its gamma_t terms.
The state is (h (B, H, d_state, head_dim), the previous step's B (B, R, H, d_state), x
(B, H, head_dim)): h in the unrotated frame, so a call needs no running angle.

Sequence parallelism (ops/sequence_parallel.py, chunk mode): each rank's angles start from
the sum of the slices' before it (`prefix_sum`), its first step reads the previous rank's
last B and x (`halo`: the trapezoid's beta term, which this rank adds to the state entering
it, as a call adds it to its initial state), and the SSD op runs under LASP-2 (`lasp2`) with
this rank's own run started from that term.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import choice, flag, positive, positive_int
from rnnzoo.dtypes import state_dtype
from rnnzoo.layers._softplus import inverse_softplus
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.norms import HeadNorm
from rnnzoo.layers.rotary import turn
from rnnzoo.ops import backend, first_order, sequence_parallel
from rnnzoo.ops.chunk.linear import gated_linear_attention, ssd
from rnnzoo.ops.native import gated_norm
from rnnzoo.ops.native import mamba3_qk as native_qk
from rnnzoo.ops.native.linear import Linear, linear_pieces
from rnnzoo.registry import register


@register("mamba3", family="matrix", paper="Lahoti et al. 2026, arXiv:2603.15569",
          tiny=dict(d_model=4, d_state=4, head_dim=4, chunk_size=4, is_mimo=True, mimo_rank=2))
class Mamba3(RecurrentLayer):
    """u: (B, T, d_model) -> y; state (h (B, H, d_state, head_dim), B_prev (B, R, H, d_state),
    x_prev (B, H, head_dim)), H = expand * d_model / head_dim, R = mimo_rank (1 for SISO)."""

    modes = ("sequential", "chunk")

    def __init__(self, d_model: int, d_state: int = 128, head_dim: int = 64, expand: int = 2,
                 n_groups: int = 1, rope_fraction: float = 0.5, dt_min: float = 1e-3,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4, A_floor: float = 1e-4,
                 is_outproj_norm: bool = False, is_mimo: bool = False, mimo_rank: int = 4,
                 chunk_size: int = 64, norm_eps: float = 1e-5):
        super().__init__(d_model)
        for name, value in (("d_state", d_state), ("head_dim", head_dim), ("expand", expand),
                            ("n_groups", n_groups), ("mimo_rank", mimo_rank),
                            ("chunk_size", chunk_size)):
            positive_int(name, value)
        choice("rope_fraction", rope_fraction, (0.5, 1.0))
        self.A_floor = positive("A_floor", A_floor)
        self.norm_eps = positive("norm_eps", norm_eps)
        self.is_outproj_norm = flag("is_outproj_norm", is_outproj_norm)
        self.is_mimo = flag("is_mimo", is_mimo)
        E = expand * d_model
        if E % head_dim:
            raise ValueError(f"expand * d_model = {E} must be a multiple of head_dim, "
                             f"got head_dim={head_dim}")
        H, N, P, G = E // head_dim, d_state, head_dim, n_groups
        if H % G:
            raise ValueError(f"the number of heads expand * d_model / head_dim = {H} must be a "
                             f"multiple of n_groups, got n_groups={n_groups}")
        # mamba_ssm: the rotated channels rope_fraction * d_state, rounded down to even
        n_angles = (int(N * rope_fraction) // 2 * 2) // 2
        if n_angles == 0:
            raise ValueError(f"rope_fraction * d_state must be at least 2 (one channel pair), "
                             f"got d_state={d_state}, rope_fraction={rope_fraction}")
        R = mimo_rank if is_mimo else 1
        self.d_inner, self.d_state, self.head_dim, self.num_heads = E, N, P, H
        self.n_groups, self.mimo_rank, self.n_angles = G, R, n_angles
        self.chunk_size = chunk_size
        self.pairs = "halves" if is_mimo else "adjacent"
        # order as mamba_ssm's: [z, x, B, C, dt, A, lam, angles]
        self.in_proj = Linear(d_model, 2 * E + 2 * R * G * N + 3 * H + n_angles, bias=False)
        dt = torch.exp(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(inverse_softplus(dt))
        self.B_bias = nn.Parameter(torch.ones(H, R, N))
        self.C_bias = nn.Parameter(torch.ones(H, R, N))
        self.B_norm = nn.RMSNorm(N, eps=norm_eps)
        self.C_norm = nn.RMSNorm(N, eps=norm_eps)
        if self.is_mimo:
            self.mimo_x = nn.Parameter(torch.full((H, R, P), 1.0 / R))
            self.mimo_z = nn.Parameter(torch.ones(H, R, P))
            self.mimo_o = nn.Parameter(torch.full((H, R, P), 1.0 / R))
        self.D = nn.Parameter(torch.ones(H))
        self.norm = HeadNorm(H, P, "rms", eps=norm_eps) if self.is_outproj_norm else None
        self.out_proj = Linear(E, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        sdt, H = state_dtype(dtype), self.num_heads
        kw = dict(device=device, dtype=sdt)
        return (torch.zeros(batch_size, H, self.d_state, self.head_dim, **kw),
                torch.zeros(batch_size, self.mimo_rank, H, self.d_state, **kw),
                torch.zeros(batch_size, H, self.head_dim, **kw))

    def ssm_inputs(self, u, dtype, raw=False):
        """u (B, T, d_model) -> in `dtype`: C, B (B, T, R, H, d_state) after norm and bias
        (raw: in_proj's (B, T, R G d_state) as they are), x (B, T, H, head_dim), the
        per-rank inputs xr (B, T, R, H, head_dim), log alpha, beta, gamma (B, T, H), the
        angle steps dtheta (B, T, H, n_angles) of the rotated pairs (the first n_angles of
        the d_state / 2; raw: their inputs (phi (B, T, n_angles), dt (B, T, H)), dtheta =
        pi tanh(phi) dt) and the gate z (B, T, H, head_dim)."""
        Bsz, T, _ = u.shape
        E, N, P, H, G, R = (self.d_inner, self.d_state, self.head_dim, self.num_heads,
                            self.n_groups, self.mimo_rank)
        # z, x and the rest as three products into dense tensors (ops.native.linear's pieces):
        # z's and x's readers (the gate, the SSD and its finiteness sum) read dense rows, not
        # slices of 812-float rows, and their gradients need no cat backward
        z, x, rest = linear_pieces(u, self.in_proj.weight,
                                   [E, E, 2 * R * G * N + 3 * H + self.n_angles])
        Bm, Cm, gates, phi = rest.split([R * G * N, R * G * N, 3 * H, self.n_angles], -1)
        # dt, A, lam as three contiguous (B, T, H) tensors: one copy (and one backward) of the
        # 3H columns, where each elementwise op on an H-wide strided slice ran H at a time
        dd_dt, dd_A, lam = gates.unflatten(-1, (3, H)).permute(2, 0, 1, 3).contiguous()
        if not raw:
            Bm, Cm = self._normed(Bm, dtype, "B"), self._normed(Cm, dtype, "C")
        dt = F.softplus(dd_dt.to(dtype) + self.dt_bias)
        log_alpha = dt * (-F.softplus(dd_A.to(dtype))).clamp(max=-self.A_floor)
        lam = torch.sigmoid(lam.to(dtype))
        # raw: the angles' inputs as they are (ops.native.mamba3_qk.qk_turned forms them)
        dtheta = ((phi.to(dtype), dt) if raw else
                  (math.pi * torch.tanh(phi.to(dtype)))[:, :, None] * dt[..., None])
        x = x.unflatten(-1, (H, P)).to(dtype)
        xr = x[:, :, None] * self.mimo_x.transpose(0, 1) if self.is_mimo else x[:, :, None]
        return (Cm, Bm, x, xr, log_alpha, (1 - lam) * dt, lam * dt, dtheta,
                z.unflatten(-1, (H, P)))

    def _normed(self, t, dtype, which):
        """in_proj's B or C (B, T, R G d_state) -> (B, T, R, H, d_state), norm and bias. Head h
        reads group h // (H / G): the groups broadcast over their heads in the bias add (no
        gathered copy, and a sum, not a scatter, backward)."""
        norm, bias = (self.B_norm, self.B_bias) if which == "B" else (self.C_norm, self.C_bias)
        G, H = self.n_groups, self.num_heads
        return (norm(t.unflatten(-1, (self.mimo_rank, G, self.d_state))).to(dtype)[:, :, :, :, None]
                + bias.transpose(0, 1).unflatten(1, (G, H // G))).flatten(3, 4)

    def _output(self, y, z, u):
        """y (B, T, R, H, head_dim) -> out (B, T, d_model): gate (or gated norm), mix ranks."""
        z = z.to(y.dtype)[:, :, None]
        if self.is_mimo:
            z = z * self.mimo_z.transpose(0, 1)
        if self.norm is not None:
            y = self.norm(y)
        y = y * F.silu(z)
        y = (y * self.mimo_o.transpose(0, 1)).sum(2) if self.is_mimo else y[:, :, 0]
        return self.out_proj(y.flatten(2).to(u.dtype))

    def _ranked(self, x):
        """x (B, H, head_dim) -> the rank inputs (B, R, H, head_dim)."""
        return x[:, None] * self.mimo_x.transpose(0, 1) if self.is_mimo else x[:, None]

    def _forward(self, u, state, mode):
        h, B_prev, x_prev = state
        fused = (mode == "chunk" and not self.is_mimo and not sequence_parallel.active()
                 and backend.use_native(u, h, self.B_bias, self.C_bias, self.B_norm.weight,
                                        self.C_norm.weight))
        lib = native_qk.load() if fused else None
        C, Bm, x, xr, log_alpha, beta, gamma, dtheta, z = self.ssm_inputs(u, h.dtype,
                                                                         raw=lib is not None)
        if lib is not None:  # SISO on the CPU: q and k from the raw B and C in C
            last = self._normed(Bm[:, -1:], h.dtype, "B")[:, 0], x[:, -1]
            y, h = self._chunk_fused(lib, C, Bm, x, log_alpha, beta, gamma, dtheta, h, B_prev,
                                     self._ranked(x_prev))
            # y holds the skip D x already (the SSD's same-step term)
            head = gated_norm.load() if backend.use_native(y, z) else None
            if head is None:
                return self._output(y, z, u), (h, *last)
            # the norm (is_outproj_norm) and the gate in one C pass each way
            norm = self.norm
            y = gated_norm.rms_norm_gate(
                head, y.flatten(2), None, None, z.flatten(2), None if norm is None else norm.weight,
                self.head_dim, self.norm_eps if norm is None else norm.eps, "silu", pre=False,
                norm=norm is not None)
            return self.out_proj(y.to(u.dtype)), (h, *last)
        last = Bm[:, -1], x[:, -1]
        if mode == "chunk" and sequence_parallel.active():  # this rank's slice of the steps
            B_prev, x_prev, last = self._halo(Bm, x, B_prev, x_prev)
        run = self._chunk if mode == "chunk" else self._sequential
        y, h = run(C, Bm, xr, log_alpha, beta, gamma, dtheta, h, B_prev, self._ranked(x_prev))
        y = y + self.D[:, None].to(y.dtype) * xr
        return self._output(y, z, u), (h, *last)

    @staticmethod
    def _halo(Bm, x, B_prev, x_prev):
        """Sequence parallel: (the B and x of the step before this rank's slice: the previous
        rank's last, the state's on rank 0; the whole sequence's last B and x)."""
        rows = torch.cat([Bm.flatten(2), x.flatten(2)], -1)
        before, end = sequence_parallel.halo(
            rows, torch.cat([B_prev.flatten(1), x_prev.flatten(1)], -1)[:, None])
        n = B_prev[0].numel()
        (Bb, xb), (Be, xe) = (t[:, 0].split([n, t.shape[-1] - n], -1) for t in (before, end))
        return (Bb.view_as(B_prev), xb.view_as(x_prev),
                (Be.view_as(B_prev), xe.view_as(x_prev)))

    def _sequential(self, C, Bm, xr, log_alpha, beta, gamma, dtheta, h, B_prev, xr_prev):
        """The recurrence, one step at a time -> y (B, T, R, H, head_dim), h_T."""
        ys = []
        for t in range(C.shape[1]):
            h = h + beta[:, t, :, None, None] * torch.einsum("brhn,brhp->bhnp", B_prev, xr_prev)
            h = self._turn(h.transpose(-1, -2), -dtheta[:, t, :, None]).transpose(-1, -2)
            B_prev, xr_prev = Bm[:, t], xr[:, t]
            h = log_alpha[:, t, :, None, None].exp() * h + gamma[:, t, :, None, None] * \
                torch.einsum("brhn,brhp->bhnp", B_prev, xr_prev)
            ys.append(torch.einsum("brhn,bhnp->brhp", C[:, t], h))
        return torch.stack(ys, 1), h

    def _chunk(self, C, Bm, xr, log_alpha, beta, gamma, dtheta, h, B_prev, xr_prev):
        """The RoPE reading through the SSD chunk op over (step, rank) rows -> y, h_T."""
        Bsz, T, R, H, N = C.shape
        # cumulative angles from the call's start (h is in that frame), summed in float64 and
        # wrapped, so that long sequences keep their angles to float32 precision (MPS has no
        # float64: there they are summed in the state dtype)
        wide = dtheta.dtype if dtheta.device.type == "mps" else torch.float64
        theta = dtheta.to(wide).cumsum(1)
        parallel = sequence_parallel.active()
        if parallel:  # this rank's slice: its angles start where the previous rank's ended
            before, end = sequence_parallel.prefix_sum(theta[:, -1])
            theta = theta + before[:, None]
            before, end = (t.remainder(2 * math.pi).to(dtheta.dtype) for t in (before, end))
            B_prev = self._turn(B_prev, before[:, None])  # the previous step's frame
        theta = theta.remainder(2 * math.pi).to(dtheta.dtype)
        if not parallel:
            end = theta[:, -1]
        Cr, Br = _Rotation.apply(theta[:, :, None], self.pairs, C, Bm)
        # beta_{t+1} (none past the call's end) joins step t's key. A non-finite beta_{t+1}
        # would reach outputs before t + 1 that way: it is zeroed there and marks step t + 1's
        # own decay instead (0 * beta is NaN exactly when beta is not finite).
        beta_next = F.pad(beta[:, 1:], (0, 0, 0, 1))
        beta_next = torch.where(beta_next.isfinite(), beta_next, 0.0)
        k = Br * (gamma + beta_next)[:, :, None, :, None]
        log_decay = F.pad((log_alpha + 0 * beta)[:, :, None], (0, 0, 0, R - 1))  # first rows
        carry = beta[:, 0, :, None, None] * torch.einsum("brhn,brhp->bhnp", B_prev, xr_prev)
        args = (Cr.flatten(1, 2), k.flatten(1, 2), xr.flatten(1, 2), log_decay.flatten(1, 2))
        if parallel:  # LASP-2; this rank's own run starts from its beta term (its carry)
            def op(*a, initial_state=None, **kw):
                return gated_linear_attention(
                    *a, initial_state=carry if initial_state is None else initial_state, **kw)
            o, S = sequence_parallel.lasp2(op, *args, scale=1.0, initial_state=h,
                                           chunk_size=self.chunk_size * R)
        else:  # each head its own group of Mamba-2's SSD (on the CPU its C recurrence)
            o, S = ssd(*args, scale=1.0, initial_state=h + carry,
                       chunk_size=self.chunk_size * R)
        # same step t: the op gave row r ranks s <= r with gamma_t + beta_{t+1}; it needs
        # every rank s with gamma_t (C_t . B_t is the same in either frame)
        if R == 1:  # SISO: the one pair (r, s) = (0, 0), elementwise (no (1, 1) products)
            qk = (C.squeeze(2) * Bm.squeeze(2)).sum(-1) * -beta_next  # (B, T, H); squeeze, not
            # [:, :, 0]: a select's backward fills a zero tensor first
            return self._turned_back(o[:, :, None] + qk[:, :, None, :, None] * xr, S, end)
        later = torch.ones(R, R, dtype=torch.bool, device=C.device).triu(1)  # s > r
        w = torch.where(later, gamma[..., None, None], -beta_next[..., None, None])
        qk = torch.einsum("btrhn,btshn->bthrs", C, Bm) * w
        y = o.unflatten(1, (T, R)) + torch.einsum("bthrs,btshp->btrhp", qk, xr)
        return self._turned_back(y, S, end)

    def _chunk_fused(self, lib, Cx, Bx, x, log_alpha, beta, gamma, dtheta, h, B_prev, xr_prev):
        """`_chunk` for SISO on the CPU from in_proj's raw C and B (B, T, G d_state): their
        norm, bias, rotation (its angles from dtheta = (phi, dt), ssm_inputs' raw form) and
        the key's scale gamma_t + beta_{t+1}, with each step's C_t . B_t, in one C pass each
        way (ops.native.mamba3_qk) -> y (with the skip D x), h_T. x: (B, T, H,
        head_dim), the one rank's inputs (not a select of xr: its backward fills a zero
        (B, T, 1, H, head_dim) tensor)."""
        beta_next = F.pad(beta[:, 1:], (0, 0, 0, 1))  # as in _chunk
        beta_next = torch.where(beta_next.isfinite(), beta_next, 0.0)
        # the angles (as _chunk's: float64 sum, wrapped) from phi and dt inside the kernel
        phi, dt = dtheta
        q, k, cb, end, fin = native_qk.qk_turned(
            lib, Bx.to(h.dtype), Cx.to(h.dtype), self.B_norm.weight, self.C_norm.weight,
            self.B_bias[:, 0], self.C_bias[:, 0], phi, dt, gamma + beta_next, self.norm_eps)
        # the trapezoid's beta_0 term from the state's B and x; none on a fresh state (both
        # zero, no gradient asked: two small host reads on the CPU spare a state-size product,
        # sum and add each way. A non-finite beta_0 marks step 0's decay either way.)
        if xr_prev.requires_grad or B_prev.requires_grad or bool(B_prev.any()) or \
                bool(xr_prev.any()):
            h = h + beta[:, 0, :, None, None] * torch.einsum("brhn,brhp->bhnp", B_prev, xr_prev)
        # the same-step correction o_t - beta_{t+1} (C_t . B_t) x_t and the skip D x as the op's
        # diag term (in the C kernels: no (B, T, H, head_dim) pass, add or product backward of
        # either; D's gradient from the kernel's dd, a (B, T, H) sum)
        # fin: each (step, head)'s q and k summed by the kernel: the SSD's finiteness check
        # then reads x and the decays only (not q and k again, 2 x 16.8 MB at the #17 size)
        o, S = ssd(q, k, x, log_alpha + 0 * beta, scale=1.0, initial_state=h,
                   chunk_size=self.chunk_size, diag=torch.addcmul(self.D.to(cb.dtype), cb,
                                                                  beta_next, value=-1),
                   finite_qk=bool(torch.isfinite(fin).all()))
        return self._turned_back(o[:, :, None], S, end)

    def _turned_back(self, y, S, end):
        """(y, the final state turned back by the call's last angles to the unrotated frame)."""
        h = self._turn(S.transpose(-1, -2), -end[:, :, None]).transpose(-1, -2)
        return y, h

    def _turn(self, x, angle):
        """x (..., d_state) turned by angle (..., n_angles) on the rotated pairs."""
        return turn(x, F.pad(angle, (0, self.d_state // 2 - self.n_angles)), self.pairs)


class _Rotation(first_order.Function):
    """(R(theta) C, R(theta) B) for C, B (B, T, R, H, N) and theta (B, T, 1, H, n) turning
    the first n channel pairs (`pairs` as in layers.rotary.turn; the others pass as they are),
    the angles' cos and sin computed once for both:
        y_re + i y_im = (x_re + i x_im) e^{i theta}
    backward dx = R(-theta) dy, dtheta = sum over R and both of Im(conj(y) dy). Adjacent pairs
    run as one complex product (view_as_complex); halves as four real passes over the turned
    half. (rotary.turn through autograd made cos and sin twice each way, and its stack, cat and
    repeat_interleave copies over every channel: ~40% of the layer's time.)"""

    @staticmethod
    def _parts(x, n, pairs):
        """Views (turned, rest) of x or its gradient: complex for adjacent pairs, else
        (re, im) pairs of real views."""
        if pairs == "adjacent":
            v = torch.view_as_complex(x.unflatten(-1, (-1, 2)))
            return v[..., :n], v[..., n:]
        v = x.unflatten(-1, (2, -1))
        return (v[..., 0, :n], v[..., 1, :n]), v[..., n:]

    @staticmethod
    def _turn(x, e, n, pairs):
        """x turned by the angles e (complex e^{i theta}, or (cos, sin)), into a new tensor."""
        if torch.compiler.is_compiling():  # dynamo refuses a strided out=: built by cat
            turned, rest = _Rotation._parts(x, n, pairs)
            if pairs == "adjacent":
                return torch.cat([torch.view_as_real(turned * e).flatten(-2),
                                  x[..., 2 * n:]], -1)
            (re, im), (cos, sin) = turned, e
            return torch.cat([re * cos - im * sin, rest[..., 0, :],
                              re * sin + im * cos, rest[..., 1, :]], -1)
        y = torch.empty_like(x)
        (turned, rest), (y_turned, y_rest) = (_Rotation._parts(t, n, pairs) for t in (x, y))
        if pairs == "adjacent":
            torch.mul(turned, e, out=y_turned)
        else:
            (re, im), (y_re, y_im), (cos, sin) = turned, y_turned, e
            torch.mul(re, cos, out=y_re).addcmul_(im, sin, value=-1)
            torch.mul(re, sin, out=y_im).addcmul_(im, cos)
        y_rest.copy_(rest)
        return y

    @staticmethod
    def forward(ctx, theta, pairs, *xs):
        n = theta.shape[-1]
        cos, sin = theta.cos(), theta.sin()
        e = torch.complex(cos, sin) if pairs == "adjacent" else (cos, sin)
        ys = tuple(_Rotation._turn(x.contiguous(), e, n, pairs) for x in xs)
        ctx.save_for_backward(cos, sin, *ys, theta, *xs)  # the inputs last: for `twice`
        ctx.pairs = pairs
        return ys

    @staticmethod
    def _plain(theta, pairs, *xs):
        """The forward by layers.rotary.turn: differentiable twice."""
        return tuple(turn(x, F.pad(theta, (0, x.shape[-1] // 2 - theta.shape[-1])), pairs)
                     for x in xs)

    plain = _plain  # torch.func

    @staticmethod
    def twice(ctx, *dys):  # under create_graph: autograd through the plain form
        k = len(dys)
        return first_order.replay(_Rotation._plain, (ctx.saved_tensors[2 + k], ctx.pairs,
                                                     *ctx.saved_tensors[3 + k:]),
                                  dys, ctx.needs_input_grad)

    @staticmethod
    def backward(ctx, *dys):
        cos, sin, *ys = ctx.saved_tensors[:2 + len(dys)]
        n, pairs = cos.shape[-1], ctx.pairs
        back = torch.complex(cos, -sin) if pairs == "adjacent" else (cos, -sin)
        dxs, dtheta = [], None
        for y, dy in zip(ys, dys):
            if dy is None:
                dxs.append(None)
                continue
            dy = dy.contiguous()
            dxs.append(_Rotation._turn(dy, back, n, pairs))
            (yt, _), (dt, _) = (_Rotation._parts(t, n, pairs) for t in (y, dy))
            if pairs == "adjacent":
                g = (yt.conj() * dt).imag
            else:
                g = (yt[0] * dt[1]).addcmul_(yt[1], dt[0], value=-1)
            g = g.sum(2, keepdim=True) if g.shape[2] > 1 else g
            dtheta = g if dtheta is None else dtheta + g
        return dtheta, None, *dxs
