"""Liquid-S4 (Hasani, Lechner, Wang, Chahine, Amini & Rus 2022, "Liquid Structural State-Space
Models", arXiv:2209.12951), on the diagonal S4D machinery of layers/s4d.py.

The linearised liquid time-constant SSM lets the input modulate the transition,

    h_t = (A_bar + B_bar u_t) h_{t-1} + B_bar u_t,

whose unrolled output holds, next to S4D's kernel, terms in products of inputs. The
paper keeps the products of p consecutive inputs up to p = liquid_degree (P):

    U^(1)_t = u_t,   U^(p)_t = u_t U^(p-1)_{t-1} = u_t u_{t-1} ... u_{t-p+1}
    s_t = sum_{p=1..P} (K^(p) * U^(p))_t + D u_t,    K^(p)_l = 2 Re(sum_n C_n A_bar_n^l B_bar_n^p)
    y_t = GLU(W gelu(s_t))                                         (S4D's output block)

(K^(p) is exactly the coefficient of u_{t-l-p+1} ... u_{t-l} in the liquid recurrence's
output.) liquid_kernel="kb" is that kernel; "polyb" keeps only its lag-0 term for p >= 2,
s_t = (K^(1) * u)_t + sum_{p>=2} 2 Re(sum_n C_n B_bar_n^p) U^(p)_t + D u_t. With
liquid_degree=1 there are no correlation terms and the layer is S4D.

Recurrent reading (mode `sequential`, and `scan` on `linear_scan`): one S4D state per kept
degree, h^(p)_t = A_bar h^(p)_{t-1} + B_bar^p U^(p)_t, s_t = sum_p 2 Re(C . h^(p)_t) + ...;
`conv` is the FFT convolution with the kernels K^(p). State: (h, c) with h (B, d_model, Q,
d_state / 2) complex (Q = P for "kb", 1 for "polyb") and c (B, d_model, P) real, the last
step's products U^(1..P)_{t-1} (U^(P) is kept for a shape that does not depend on P > 1).
"""

from __future__ import annotations

import torch

from rnnzoo.checks import choice, positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers._chunks import over_chunks
from rnnzoo.layers.s4d import S4D, _CausalFFTConv, as_real, finite_conv_inputs, vandermonde
from rnnzoo.ops.finite import marked
from rnnzoo.ops.scan import linear_scan
from rnnzoo.registry import register


@register("liquid_s4", family="diagonal", paper="Hasani et al. 2022, arXiv:2209.12951",
          tiny=dict(d_model=2, d_state=4, liquid_degree=3, chunk_size=4))
class LiquidS4(S4D):
    """x: (B, T, d_model) -> y: (B, T, d_model); state (h, c) as in the module docstring.

    Options: S4D's (d_state, init, dt_min, dt_max, chunk_size), liquid_degree (P >= 1, the
    longest input product kept) and liquid_kernel ("kb" or "polyb")."""

    modes = ("sequential", "scan", "conv")

    def __init__(self, d_model: int, d_state: int = 64, liquid_degree: int = 2,
                 liquid_kernel: str = "kb", init: str = "lin", dt_min: float = 1e-3,
                 dt_max: float = 0.1, chunk_size: int = 128):
        super().__init__(d_model, d_state=d_state, init=init, dt_min=dt_min, dt_max=dt_max,
                         chunk_size=chunk_size)
        self.liquid_degree = positive_int("liquid_degree", liquid_degree)
        self.liquid_kernel = choice("liquid_kernel", liquid_kernel, ("kb", "polyb"))
        self.n_ssm = self.liquid_degree if liquid_kernel == "kb" else 1  # Q

    def init_state(self, batch_size, device=None, dtype=None):
        h = torch.zeros(batch_size, self.d_model, self.n_ssm, self.d_state // 2, device=device,
                        dtype=state_dtype(dtype, complex_=True))
        c = torch.zeros(batch_size, self.d_model, self.liquid_degree, device=device,
                        dtype=state_dtype(dtype))
        return h, c

    def correlations(self, u, c0, lengths=None):
        """U (B, T, H, P): the products U^(p)_t, and the state's c: U at each sequence's last
        valid step (c0 for an empty one). u: (B, T, H), c0: (B, H, P)."""
        cols = [u]
        for p in range(1, self.liquid_degree):
            prev = torch.cat([c0[:, None, :, p - 1], cols[-1][:, :-1]], 1)
            cols.append(u * prev)
        U = torch.stack(cols, -1)
        if lengths is None:
            return U, U[:, -1]
        idx = (lengths - 1).clamp(min=0).view(-1, 1, 1, 1).expand(-1, 1, *U.shape[2:])
        last = U.gather(1, idx)[:, 0]
        return U, torch.where((lengths > 0).view(-1, 1, 1), last, c0)

    def readouts(self, dtype):
        """A_bar (H, 1, N2), B_bar^p for p = 1..Q (H, Q, N2), C (H, 1, N2), dtA (H, 1, N2), and
        the polyb lag-0 weights 2 Re(sum_n C_n B_bar_n^p) for p = 2..P (H, P - 1) or None."""
        A_bar, B_bar, dtA, C = self.discretize(dtype)
        powers = [B_bar]
        for _ in range(1, max(self.n_ssm, self.liquid_degree)):
            powers.append(powers[-1] * B_bar)
        Bp = torch.stack(powers, 1)                                             # (H, P, N2)
        direct = None
        if self.liquid_kernel == "polyb" and self.liquid_degree > 1:
            direct = 2 * (C.unsqueeze(1) * Bp[:, 1:]).sum(-1).real
        return (A_bar.unsqueeze(1), Bp[:, :self.n_ssm], C.unsqueeze(1), dtA.unsqueeze(1),
                direct)

    def ssm(self, x, state, mode, mask=None):
        """s (B, T, d_model) in the compute dtype and the final state (h, c)."""
        h0, c0 = state
        cdt = compute_dtype(x)
        u = x.to(cdt)
        lengths = None
        if mask is not None:
            u = torch.where(mask, u, torch.zeros((), dtype=cdt, device=u.device))
            lengths = mask.flatten(1).sum(1)
        U, c = self.correlations(u, c0.to(cdt), lengths)
        A_bar, Bp, C, dtA, direct = self.readouts(cdt)
        Q = self.n_ssm
        if mode == "conv":  # the FFT would spread a NaN or inf to every step (ops.finite)
            _, (Uf,), marks = finite_conv_inputs(U)
            Uf = Uf if Q == Uf.shape[-1] else Uf[..., :Q]  # (a whole slice's backward copies)
            s, h = marked(*self._conv_degrees(Uf, h0, lengths, A_bar, Bp, C, dtA), marks)
        else:
            keep = () if mask is None else (mask.to(cdt),)

            def chunk(h, U, *keep):
                b = Bp * U[..., :Q].unsqueeze(-1)                            # (B, L, H, Q, N2)
                if keep:  # a padded step is the identity (b = 0 there since u = 0)
                    a = torch.where(keep[0].unsqueeze(-1).unsqueeze(-1) > 0, A_bar,
                                    torch.ones_like(A_bar))
                    a = a.expand_as(b)
                else:
                    a = A_bar.expand_as(b)
                if mode == "scan":
                    hs, h = linear_scan(a, b, h)
                    return 2 * (hs * C).sum(-1).real.sum(-1), h
                out = []
                for a_t, b_t in zip(a.unbind(1), b.unbind(1)):
                    h = a_t * h + b_t
                    out.append(2 * (h * C).sum(-1).real.sum(-1))
                return torch.stack(out, 1), h

            size = self.chunk_size if mode == "scan" else u.shape[1]
            s, h = over_chunks(chunk, h0, (U, *keep), size)
        s = s + self.D.to(cdt) * u
        if direct is not None:
            s = s + (U[..., 1:] * direct).sum(-1)
        return s, (h, c.to(c0.dtype))

    def _conv_degrees(self, U, h0, lengths, A_bar, Bp, C, dtA):
        """The kernels K^(p) by FFT over U (B, T, H, Q), plus h0's free response; the final
        state by a Vandermonde contraction of the right-aligned inputs (as S4D's conv)."""
        Bt, T, _, Q = U.shape
        P = vandermonde(dtA[:, 0], T)                                       # (H, 2 N2, T)
        # the kernels K^(p)_l and h0's free response 2 Re(sum C h0 A_bar^{l+1}), one product
        rows = torch.cat([as_real(2 * C * Bp),
                          as_real(2 * (h0 * C).sum(2) * A_bar[:, 0]).transpose(0, 1)], 1)
        K, free = torch.bmm(rows, P).split([Q, Bt], 1)            # (H, Q, T), (H, B, T)
        s = _CausalFFTConv.apply(U, K) + free.permute(1, 2, 0)                 # (B, T, H)
        if lengths is None:
            rev, decay = U.flip(1), torch.exp(dtA * T)
        else:
            idx = (lengths.view(-1, 1) - 1 - torch.arange(T, device=U.device)) % T
            rev = U.gather(1, idx.view(Bt, T, 1, 1).expand_as(U))
            decay = torch.exp(dtA * lengths.view(-1, 1, 1, 1).to(U.dtype))
        h = Bp * torch.complex(*torch.einsum("blhq,hml->bhqm", rev, P).chunk(2, -1))
        return s, h + decay * h0

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, liquid_degree={self.liquid_degree}, "
                f"liquid_kernel={self.liquid_kernel!r}")
