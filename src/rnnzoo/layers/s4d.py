"""S4D, the diagonal structured state space (Gu, Gupta, Goel & Re 2022, "On the
Parameterization and Initialization of Diagonal State Space Models", arXiv:2206.11893).

Each of the d_model channels is an SSM with d_state / 2 complex modes (the other
half are their conjugates), discretised by zero-order hold with a learned step dt:

    A_bar = exp(dt A),   B_bar = (exp(dt A) - 1) / A                  (B = 1)
    h_t = A_bar * h_{t-1} + B_bar * x_t,   s_t = 2 Re(C . h_t) + D x_t
    y_t = GLU(W gelu(s_t))                                            (the S4D block output)

Initialisations (A = -1/2 + i A_im, n = 0 .. d_state/2 - 1):
S4D-Lin: A_im = pi n;  S4D-Inv: A_im = (N / pi) (N / (2n + 1) - 1), N = d_state.

Modes: `sequential` (loop), `scan` (`linear_scan` over checkpointed time chunks of
`chunk_size` steps, so that the (B, T, d_model, d_state/2) states never exist all
at once), and `conv`: the SSM is the
causal convolution s = K * x + D x with the kernel K_l = 2 Re(sum_n C_n B_bar_n A_bar_n^l)
(a Vandermonde product), computed by FFT in O(T log T). The state h (B, d_model,
d_state/2) complex is carried in every mode; `conv` adds the initial state's free
response and computes the final state with a second Vandermonde product.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers._chunks import over_chunks
from rnnzoo.layers._diagonal import DiagonalLayer
from rnnzoo.ops import backend, first_order
from rnnzoo.ops.finite import clean_inputs, finite_inputs, marked
from rnnzoo.ops.native.linear import Linear
from rnnzoo.ops.scan import linear_scan
from rnnzoo.registry import register


def s4d_imag_init(d_state: int, init: str) -> torch.Tensor:
    """Imaginary parts of the d_state / 2 modes for S4D-Lin ("lin") or S4D-Inv ("inv")."""
    n = torch.arange(d_state // 2, dtype=torch.float64)
    if init == "lin":
        return math.pi * n
    if init == "inv":
        return d_state / math.pi * (d_state / (2 * n + 1) - 1)
    raise ValueError(f"init must be 'lin' or 'inv', got {init!r}")


def _vandermonde_plain(a, b, T):
    """`_Vandermonde`'s forward in plain differentiable ops (its `twice`)."""
    steps = torch.arange(T, dtype=a.dtype, device=a.device)
    mag, phase = torch.exp(a.unsqueeze(-1) * steps), b.unsqueeze(-1) * steps
    return torch.cat([mag * torch.cos(phase), mag * torch.sin(phase)], -2)


def _fft_conv_plain(u, k):
    """`_CausalFFTConv`'s forward in plain differentiable ops (its `twice`)."""
    T = u.shape[1]
    yf = (torch.fft.rfft(u.permute(0, 2, 3, 1), n=2 * T) * torch.fft.rfft(k, n=2 * T)).sum(-2)
    return torch.fft.irfft(yf, n=2 * T)[..., :T].transpose(1, 2)


class _Vandermonde(first_order.Function):
    """P = [e^{a l} cos(b l); e^{a l} sin(b l)], l = 0..T-1: a, b (..., N2) -> (..., 2 N2, T).
    The backward by hand from dP/d(a + ib) = l P (complex): da = sum_l l (dPr Pr + dPi Pi),
    db = sum_l l (dPi Pr - dPr Pi); autograd's chain through exp, cos, sin and the cat ran
    ~10 passes over P and recomputed sin and cos."""

    @staticmethod
    def forward(ctx, a, b, T):
        steps = torch.arange(T, dtype=a.dtype, device=a.device)
        mag = torch.exp(a.unsqueeze(-1) * steps)
        phase = b.unsqueeze(-1) * steps
        if torch.compiler.is_compiling():  # dynamo takes no out= into a slice
            P = torch.cat([mag * torch.cos(phase), mag * torch.sin(phase)], -2)
        else:  # each half written in place: no cat of two fresh temporaries (a 1.6x faster
            N2 = a.shape[-1]  # forward at (128, 64, 512), alternated in one process)
            P = mag.new_empty(*a.shape[:-1], 2 * N2, T)
            re, im = P[..., :N2, :], P[..., N2:, :]
            torch.cos(phase, out=re).mul_(mag)
            torch.sin(phase, out=im).mul_(mag)
        ctx.save_for_backward(P, a, b)
        return P

    plain = staticmethod(_vandermonde_plain)  # torch.func

    @staticmethod
    def twice(ctx, dP):  # under create_graph: autograd through the plain form
        _, a, b = ctx.saved_tensors
        return first_order.replay(_vandermonde_plain, (a, b, dP.shape[-1]), (dP,),
                                  ctx.needs_input_grad)

    @staticmethod
    def backward(ctx, dP):
        P, _, _ = ctx.saved_tensors
        (Pr, Pi), (gr, gi) = P.chunk(2, -2), dP.chunk(2, -2)
        steps = torch.arange(P.shape[-1], dtype=P.dtype, device=P.device)
        return torch.addcmul(gr * Pr, gi, Pi) @ steps, torch.addcmul(gi * Pr, gr, Pi, value=-1) @ steps, None


def vandermonde(dtA: torch.Tensor, T: int) -> torch.Tensor:
    """exp(dtA l) for l = 0..T-1 as real numbers: dtA (..., N2) complex -> (..., 2 N2, T),
    the real parts over the imaginary ones. Built from real exp, cos and sin (vectorised on
    the CPU, where torch's complex exp is ~10x slower), so the contractions with it are real
    matrix products."""
    return _Vandermonde.apply(dtA.real, dtA.imag, T)


def finite_conv_inputs(t: torch.Tensor):
    """finite_inputs(write=(t,)) for an FFT convolution; on the host `clean_inputs` (one read,
    no nan_to_num copy and no NaN marks to add when every step is finite: marks None)."""
    return (clean_inputs if backend.host_readable(t) else finite_inputs)((), (t,))


def as_real(w: torch.Tensor) -> torch.Tensor:
    """w (..., N2) complex -> (..., 2 N2) real such that as_real(w) . vandermonde(dtA, T)
    = Re(sum_n w_n exp(dtA_n l))."""
    return torch.cat([w.real, -w.imag], -1)


class _CausalFFTConv(first_order.Function):
    """y_t = sum_q sum_{l <= t} k_{q,l} u_{t-l,q}: Q causal convolutions summed, by a 2T-point
    real FFT, the sum over q taken in the frequency domain (one inverse transform, not Q).
    The backward written out: g^ = rfft(dy) once, du_q = irfft(g^ conj(k^_q)) and
    dk_q = irfft(sum_b g^ conj(u^_q)), read at 0 .. T-1 (the zero padding to 2T keeps every
    wrap-around at zero). u: (B, T, H, Q), k: (H, Q, T) -> y: (B, T, H), contiguous (the
    layer's elementwise passes after it run on that layout; a transposed view made
    gelu's backward ~20x slower)."""

    @staticmethod
    def forward(ctx, u, k):
        T = u.shape[1]
        uf, kf = torch.fft.rfft(u.permute(0, 2, 3, 1), n=2 * T), torch.fft.rfft(k, n=2 * T)
        ctx.save_for_backward(uf, kf, u, k)
        yf = uf[..., 0, :] * kf[:, 0]                      # the sum over q without a Q-wide temporary
        for q in range(1, uf.shape[-2]):
            yf.addcmul_(uf[..., q, :], kf[:, q])
        return torch.fft.irfft(yf, n=2 * T)[..., :T].transpose(1, 2).contiguous()

    @staticmethod
    def twice(ctx, dy):  # under create_graph: autograd through the plain form
        return first_order.replay(_fft_conv_plain, ctx.saved_tensors[2:], (dy,),
                                  ctx.needs_input_grad)

    @staticmethod
    def backward(ctx, dy):
        uf, kf, _, _ = ctx.saved_tensors
        T = dy.shape[1]
        gf = torch.fft.rfft(dy.transpose(1, 2), n=2 * T).unsqueeze(-2)     # (B, H, 1, F)
        du = dk = None
        if ctx.needs_input_grad[0]:
            # contiguous in u's (B, T, H, Q) layout: the elementwise backward passes after it
            # run far slower on a mix of layouts (as gelu's did on a transposed view)
            du = torch.fft.irfft(gf * kf.conj(), n=2 * T)[..., :T].permute(0, 3, 1, 2).contiguous()
        if ctx.needs_input_grad[1]:
            # sum_b g^ conj(u^) as conj(sum_b conj(g^) u^): the conjugated operand the small one
            dk = torch.fft.irfft((gf.conj() * uf).sum(0).conj(), n=2 * T)[..., :T]
        return du, dk


@register("s4d", family="diagonal", paper="Gu et al. 2022, arXiv:2206.11893",
          tiny=dict(d_model=2, d_state=4, chunk_size=4))
class S4D(DiagonalLayer):
    """x: (B, T, d_model) -> y: (B, T, d_model); state h: (B, d_model, d_state // 2) complex."""

    modes = ("sequential", "scan", "conv")

    def __init__(self, d_model: int, d_state: int = 64, init: str = "lin", dt_min: float = 1e-3,
                 dt_max: float = 0.1, chunk_size: int = 128):
        super().__init__(d_model)
        if not isinstance(d_state, int) or isinstance(d_state, bool) or d_state < 2 or d_state % 2:
            raise ValueError(f"d_state must be a positive even int (conjugate pairs), got {d_state!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.d_state, self.init = d_state, init
        self.chunk_size = positive_int("chunk_size", chunk_size)
        H, N2 = d_model, d_state // 2
        self.log_dt = nn.Parameter(torch.rand(H) * (math.log(dt_max) - math.log(dt_min))
                                   + math.log(dt_min))
        self.log_A_real = nn.Parameter(torch.full((H, N2), math.log(0.5)))
        self.A_imag = nn.Parameter(s4d_imag_init(d_state, init).float().repeat(H, 1))
        self.C = nn.Parameter(torch.randn(H, N2, 2) * math.sqrt(0.5))  # complex normal, as real pairs
        self.D = nn.Parameter(torch.randn(H))
        self.out_proj = Linear(H, 2 * H)  # followed by a GLU

    def init_state(self, batch_size, device=None, dtype=None):
        return torch.zeros(batch_size, self.d_model, self.d_state // 2, device=device,
                           dtype=state_dtype(dtype, complex_=True))

    def discretize(self, dtype=torch.float32):
        """(A_bar, B_bar, dtA, C), each (d_model, d_state/2) complex, by zero-order hold."""
        A = torch.complex(-self.log_A_real.to(dtype).exp(), self.A_imag.to(dtype))
        dtA = self.log_dt.to(dtype).exp().unsqueeze(-1) * A
        A_bar = torch.exp(dtA)
        return A_bar, (A_bar - 1) / A, dtA, torch.view_as_complex(self.C.to(dtype).contiguous())

    def kernel(self, T: int, dtype=torch.float32) -> torch.Tensor:
        """K: (d_model, T), K_l = 2 Re(sum_n C_n B_bar_n A_bar_n^l), by a Vandermonde product."""
        _, B_bar, dtA, C = self.discretize(dtype)
        return 2 * torch.einsum("hm,hml->hl", as_real(C * B_bar), vandermonde(dtA, T))

    def ssm(self, x, h0, mode, mask=None):
        """s = the SSM's output (B, T, d_model) in the compute dtype, and the final state.
        mask: (B, T, 1) bool, the valid steps of right-padded sequences, or None."""
        cdt = compute_dtype(x)
        u = x.to(cdt)
        if mask is not None:
            u = torch.where(mask, u, torch.zeros((), dtype=cdt, device=u.device))
        if mode == "conv":  # the FFT would spread a NaN or inf to every step: convolve finite
            _, (u,), marks = finite_conv_inputs(u)  # values, then NaN from that step on
            s, h = self._conv(u, h0, None if mask is None else mask.flatten(1).sum(1))
            return marked(s + self.D.to(cdt) * u, h, marks)
        A_bar, B_bar, _, C = self.discretize(cdt)
        # a padded step is the identity: A_bar -> 1 (and b = 0 since u = 0 there)
        keep = () if mask is None else (mask.to(cdt),)

        def chunk(h, u, *keep):
            if keep:
                a = torch.where(keep[0].unsqueeze(-1) > 0, A_bar, torch.ones_like(A_bar))
            else:  # a view: A_bar is the same at every step
                a = A_bar.expand(u.shape[0], u.shape[1], *A_bar.shape)
            b = B_bar * u.unsqueeze(-1)                                   # (B, L, H, N2)
            if mode == "scan":
                hs, h = linear_scan(a, b, h)
                return 2 * (hs * C).sum(-1).real, h
            out = []
            for a_t, b_t in zip(a.unbind(1), b.unbind(1)):
                h = a_t * h + b_t
                out.append(2 * (h * C).sum(-1).real)
            return torch.stack(out, 1), h

        size = self.chunk_size if mode == "scan" else u.shape[1]
        s, h = over_chunks(chunk, h0, (u, *keep), size)
        return s + self.D.to(cdt) * u, h

    def _conv(self, u, h0, lengths):
        """Causal FFT convolution with the kernel, plus the free response of h0; s (B, T, H)."""
        Bt, T, H = u.shape
        A_bar, B_bar, dtA, C = self.discretize(u.dtype)
        P = vandermonde(dtA, T)                                   # (H, 2 N2, T): A_bar^0..T-1
        # the kernel K_l and h0's free response 2 Re(sum_n h0_n C_n A_bar_n^{l+1}), one product
        rows = torch.cat([as_real(2 * C * B_bar).unsqueeze(1),
                          as_real(2 * h0 * C * A_bar).transpose(0, 1)], 1)   # (H, 1 + B, 2 N2)
        K, free = torch.bmm(rows, P).split([1, Bt], 1)
        s = _CausalFFTConv.apply(u.unsqueeze(-1), K) + free.permute(1, 2, 0)
        # final state h = A_bar^n h0 + B_bar sum_{l<n} A_bar^l u_{n-1-l}, n = each length
        # (u is zero past it, so index n-1-l mod T reads zeros for l >= n)
        if lengths is None:
            rev, decay = u.flip(1), torch.exp(dtA * T)
        else:
            idx = (lengths.view(-1, 1) - 1 - torch.arange(T, device=u.device)) % T
            rev = u.gather(1, idx.unsqueeze(-1).expand_as(u))
            decay = torch.exp(dtA * lengths.view(-1, 1, 1).to(u.dtype))
        h = B_bar * torch.complex(*torch.einsum("blh,hml->bhm", rev, P).chunk(2, -1))
        return s, h + decay * h0

    def _out(self, s, x):
        return F.glu(self.out_proj(F.gelu(s).to(x.dtype)), dim=-1)

    def _run(self, x, state, mode, mask=None):
        s, h = self.ssm(x, state, mode, mask)
        return self._out(s, x), h

    def auto_mode(self, x):
        return "conv"
