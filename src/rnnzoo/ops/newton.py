"""Parallel-in-time evaluation of any nonlinear cell: DEER, quasi-DEER, ELK.

A cell's whole trajectory h_0..h_{T-1} is the root of the T equations

    F_t(h) = h_t - f(h_{t-1}, x_t) = 0,   h_{-1} = h0,

which Newton's method solves for all t at once (DEER: Lim et al. 2024,
arXiv:2309.12252; ParaRNN: Danieli et al. 2025, arXiv:2510.21450). Linearising
f around the current guess h^(i) gives a *linear* recurrence

    h_t^(i+1) = J_t h_{t-1}^(i+1) + (f_t - J_t h_{t-1}^(i)),
    f_t = f(h_{t-1}^(i), x_t),   J_t = d f / d h_{t-1} at (h_{t-1}^(i), x_t),

solved by a parallel scan: `ops.scan.linear_scan` when J_t is diagonal,
`ops.block_scan.block_linear_scan` for block-diagonal or small dense J_t. Each
iteration makes at least one more step exact (the prefix property), so at most
T iterations are ever needed; near the solution convergence is quadratic.

Methods:
- ``newton``: exact Jacobians in the structure the cell declares
  (``cell.jacobian_structure``: "diag", ("block", k) or "dense").
- ``quasi``: quasi-DEER (Gonzalez et al. 2024, arXiv:2407.19115): the diagonal
  of J_t only, one elementwise scan per iteration; more, cheaper iterations.
- ``elk``: ELK (same paper): a Levenberg-Marquardt step on sum_t |F_t|^2,
  (L^T L + lambda I) delta = -L^T F with L = dF/dh block-bidiagonal, solved by
  cyclic reduction; lambda adapts (halved after a step that lowers the merit,
  x4 and retried after one that does not). Opt-in, for cells whose undamped
  Newton iterates blow up.
- ``sequential``: the plain loop; the reference and the fallback.

The state is handled as one flat vector per step (the concatenation of the
cell's state tuple). Stopping rule: max_t |h_t - f(h_{t-1}, x_t)| <= atol +
rtol |f(h_{t-1}, x_t)| elementwise. On NaN/inf, or no convergence within
`max_iter`, or when the residual has not reached a new minimum for 10
iterations (chaotic cells: the loop is then cheaper), the sequential loop's
result is returned (a warning once per cell
class and method) and the info record says so.

Backward is the exact adjoint at the returned trajectory (DEER, section 3.3):

    lambda_t = g_t + J_{t+1}^T lambda_{t+1}     (the same scan, in reverse)

then one vector-Jacobian product of the cell over all steps at once gives the
gradients of the parameters, of the projected inputs and of h0. Only the
projected inputs, h0 and the trajectory are saved; the exact Jacobians are
recomputed (never the quasi diagonal). Under create_graph=True (second derivatives) the
node's `twice` replays the sequential loop over the saved xp, h0 and parameters through
autograd: the loop is the solver's fixed point, so its gradient is the adjoint's.

Block layout of ("block", k): a cell with S state tensors of equal width n
declares that its flat state splits into n*S/k independent groups of k
entries: group j takes entries [j*c, (j+1)*c) of every state tensor, with
c = k / S. For an LSTM-like (h, c) state with k = 2 that is the pair
(h_j, c_j); for one state tensor, contiguous blocks of k.

Analytic hook: a cell may define ``jacobian(xp_t, state) -> J`` (xp_t: (R, P),
state: tuple of (R, n_i)) returning d state_t / d state_{t-1} in its structure:
(R, N) for "diag", (R, m, k, k) for ("block", k) in the layout above, (R, N, N)
for "dense". `verify_structure` checks both the declaration and the hook.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, jvp

from rnnzoo.checks import choice, int_in, positive
from rnnzoo.ops import first_order
from rnnzoo.ops.block_scan import block_linear_scan, block_tridiagonal_solve
from rnnzoo.ops.scan import linear_scan

METHODS = ("auto", "newton", "quasi", "elk", "sequential")
_JVP_ELEMENTS = 1 << 23  # rows x width of one batched-JVP call, bounds memory for dense cells
_PATIENCE = 10  # give up (fall back) after this many iterations without a smaller residual
_warned: set = set()


@dataclass
class SolveInfo:
    """What `parallel_rnn` did: iterations (linear solves), the final residual
    max |h_t - f(h_{t-1}, x_t)|, and whether it fell back to the loop (and why)."""

    method: str
    iterations: int = 0
    residual: float = math.nan
    converged: bool = False
    fell_back: bool = False
    reason: str = ""
    history: list = field(default_factory=list)  # residual before each iteration


# -- structure ---------------------------------------------------------------------------
class Layout:
    """Maps the flat state (..., N) to Jacobian blocks (..., m, k) and back."""

    def __init__(self, cell):
        sizes = tuple(int(n) for n in cell.state_sizes)
        self.sizes, self.N = sizes, sum(sizes)
        s = cell.jacobian_structure
        name = type(cell).__name__
        if s == "diag":
            self.kind, self.k = "diag", 1
        elif s == "dense":
            self.kind, self.k = "dense", self.N
        elif isinstance(s, tuple) and len(s) == 2 and s[0] == "block" and isinstance(s[1], int):
            self.kind, self.k = "block", s[1]
            S = len(sizes)
            if len(set(sizes)) != 1 or self.k % S or sizes[0] % (self.k // S) or self.k < S:
                raise ValueError(f"{name}.jacobian_structure {s!r} needs state tensors of equal "
                                 f"width and k a multiple of their number dividing the total; "
                                 f"got state_sizes {sizes}")
            self.S, self.c = S, self.k // S
        else:
            raise ValueError(f"{name}.jacobian_structure must be 'dense', 'diag' or "
                             f"('block', k), got {s!r}")
        self.m = self.N // self.k

    def to_blocks(self, z):
        lead = z.shape[:-1]
        if self.kind == "diag":
            return z.unsqueeze(-1)
        if self.kind == "dense":
            return z.unsqueeze(-2)
        z = z.reshape(*lead, self.S, self.m, self.c).transpose(-3, -2)
        return z.reshape(*lead, self.m, self.k)

    def from_blocks(self, zb):
        lead = zb.shape[:-2]
        if self.kind != "block":
            return zb.reshape(*lead, self.N)
        z = zb.reshape(*lead, self.m, self.S, self.c).transpose(-3, -2)
        return z.reshape(*lead, self.N)

    def basis(self, like):
        """(k, N): tangent r has a 1 at entry r of every block."""
        eye = torch.eye(self.k, dtype=like.dtype, device=like.device)
        return self.from_blocks(eye.unsqueeze(1).expand(self.k, self.m, self.k))


# -- calling the cell ----------------------------------------------------------------------
class _Call(nn.Module):
    """Calls one method of a cell, so that `functional_call` can swap its parameters."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, method, *args):
        return getattr(self.cell, method)(*args)


def call_cell(cell, method: str, *args, params: dict | None = None):
    """cell.<method>(*args), with `params` (name -> tensor) standing in for its parameters."""
    return _Cell(cell, params).call(method, *args)


class _Cell:
    """A cell with an optional set of parameter tensors standing in for its own."""

    def __init__(self, cell, params: dict | None):
        self.cell, self.params = cell, params
        self._wrapped = None if params is None else _Call(cell)

    def call(self, method, *args, params=None):
        params = self.params if params is None else params
        if params is None:
            return getattr(self.cell, method)(*args)
        return functional_call(self._wrapped or _Call(self.cell),
                               {f"cell.{k}": v for k, v in params.items()}, (method, *args))

    @property
    def layout(self):
        if not hasattr(self, "_layout"):
            self._layout = Layout(self.cell)
        return self._layout

    def split(self, z):
        return tuple(z.split(self.layout.sizes, -1))

    def f(self, xp, z, params=None):
        """One step on flat states: xp (R, P), z (R, N) -> (R, N)."""
        return torch.cat(self.call("recur", xp, self.split(z), params=params), -1)

    def f_and_jacobian(self, xp, z):
        """f(xp, z) and its Jacobian in the declared structure: (R, N) diag, (R, m, k, k)."""
        lay = self.layout
        if hasattr(self.cell, "jacobian"):
            J = self.call("jacobian", xp, self.split(z))
            if lay.kind == "dense":
                J = J.unsqueeze(-3)
            return self.f(xp, z), J
        if lay.kind == "diag":
            return jvp(lambda zz: self.f(xp, zz), (z,), (torch.ones_like(z),))
        R, k = z.shape[0], lay.k
        V = lay.basis(z)  # (k, N)
        group = max(1, min(k, _JVP_ELEMENTS // max(1, R * lay.N)))
        fz, cols = None, []
        for r0 in range(0, k, group):
            g = min(group, k - r0)
            tangent = V[r0:r0 + g].repeat_interleave(R, 0)
            out, Jv = jvp(lambda zz: self.f(xp.repeat(g, 1), zz), (z.repeat(g, 1),), (tangent,))
            fz = out[:R] if fz is None else fz
            cols.append(Jv.reshape(g, R, lay.N))
        Jcols = lay.to_blocks(torch.cat(cols, 0))  # (k_col, R, m, k_row)
        return fz, Jcols.permute(1, 2, 3, 0)


# -- the solver ------------------------------------------------------------------------------
def _shift(z, h0):
    return torch.cat([h0.unsqueeze(1), z[:, :-1]], 1)


def _jacobian_all(c: _Cell, xp, zprev):
    """f and J at every step at once: xp (B, T, P), zprev (B, T, N)."""
    B, T = zprev.shape[:2]
    fz, J = c.f_and_jacobian(xp.reshape(B * T, -1), zprev.reshape(B * T, -1))
    return fz.reshape(B, T, -1), J.reshape(B, T, *J.shape[1:])


def _diag_of(c: _Cell, J):
    if c.layout.kind == "diag":
        return J
    return c.layout.from_blocks(torch.diagonal(J, dim1=-2, dim2=-1))


def _newton_step(c: _Cell, method, fz, J, zprev, h0):
    lay = c.layout
    if method == "quasi" or lay.kind == "diag":
        a = _diag_of(c, J)
        return linear_scan(a, fz - a * zprev, h0)[0]
    A = J
    b = lay.to_blocks(fz) - (A @ lay.to_blocks(zprev).unsqueeze(-1)).squeeze(-1)
    return lay.from_blocks(block_linear_scan(A, b, lay.to_blocks(h0)))


def _lm_step(c: _Cell, F, J, lam):
    """Levenberg-Marquardt: (L^T L + lam I) delta = -L^T F, L = I - subdiag(J_t)."""
    lay = c.layout
    if lay.kind == "diag":
        Jb = J.unsqueeze(-1).unsqueeze(-1)  # (B, T, N, 1, 1)
        Fb = F.unsqueeze(-1)
    else:
        Jb, Fb = J, lay.to_blocks(F)
    k = Jb.shape[-1]
    eye = torch.eye(k, dtype=F.dtype, device=F.device)
    Jn = torch.zeros_like(Jb)  # J_{t+1}, zero past the end
    Jn[:, :-1] = Jb[:, 1:]
    JnT = Jn.transpose(-1, -2)
    diag = (1 + lam) * eye + JnT @ Jn
    rhs = -(Fb - (JnT @ torch.roll(Fb, -1, 1).unsqueeze(-1)).squeeze(-1))
    delta = block_tridiagonal_solve(-Jb, diag, -JnT, rhs)
    return delta.squeeze(-1) if lay.kind == "diag" else lay.from_blocks(delta)


def _sequential(c: _Cell, xp, h0, params=None):
    z, out = h0, []
    for xp_t in xp.unbind(1):
        z = c.f(xp_t, z, params)
        out.append(z)
    return torch.stack(out, 1)


def _initial_guess(c: _Cell, xp, h0, init):
    B, T = xp.shape[:2]
    if isinstance(init, torch.Tensor):
        if init.shape != (B, T, c.layout.N):
            raise ValueError(f"init must be 'f0', 'zeros' or a (B, T, N) = {(B, T, c.layout.N)} "
                             f"tensor, got shape {tuple(init.shape)}")
        return init.to(xp.dtype)
    if init == "zeros":
        return xp.new_zeros(B, T, c.layout.N)
    if init == "f0":  # every step from h0: f(h0, x_t)
        zprev = h0.unsqueeze(1).expand(B, T, -1).reshape(B * T, -1)
        return c.f(xp.reshape(B * T, -1), zprev).reshape(B, T, -1)
    raise ValueError(f"init must be 'f0', 'zeros' or a (B, T, N) tensor, got {init!r}")


def _solve(c: _Cell, xp, h0, opts, info: SolveInfo):
    """The trajectory (B, T, N) without autograd. Fills `info`."""
    method = info.method
    if method == "sequential":
        info.converged = True
        return _sequential(c, xp, h0)
    atol, rtol, max_iter = opts["atol"], opts["rtol"], opts["max_iter"]
    z = _initial_guess(c, xp, h0, opts["init"])
    lam = opts["damping"]
    merit = None
    fz = J = None
    for it in range(max_iter + 1):
        if fz is None:
            fz, J = _jacobian_all(c, xp, _shift(z, h0))
        err = (z - fz).abs()
        res = err.max().item()
        if not math.isfinite(res):
            return _fall_back(c, xp, h0, opts, info, "non-finite values in the iterates")
        info.history.append(res)
        info.residual, info.iterations = res, it
        if bool((err <= atol + rtol * fz.abs()).all()):
            info.converged = True
            return fz
        if it == max_iter:
            break
        if len(info.history) > _PATIENCE and min(info.history[-_PATIENCE:]) > \
                min(info.history[:-_PATIENCE]):
            return _fall_back(c, xp, h0, opts, info, f"the residual stopped decreasing "
                              f"({_PATIENCE} iterations without a new minimum; {res:.3g})")
        zprev = _shift(z, h0)
        if method != "elk":
            z = _newton_step(c, method, fz, J, zprev, h0)
            fz = None
            continue
        # ELK: accept the step only if it lowers the merit sum |F|^2; else damp more.
        F = z - fz
        merit = (F * F).sum().item() if merit is None else merit
        while True:
            z_new = z + _lm_step(c, F, J, lam)
            fz_new, J_new = _jacobian_all(c, xp, _shift(z_new, h0))
            F_new = z_new - fz_new
            m_new = (F_new * F_new).sum().item()
            if math.isfinite(m_new) and m_new <= merit:
                z, fz, J, merit, lam = z_new, fz_new, J_new, m_new, lam * 0.5
                break
            lam *= 4
            if lam > 1e12:
                return _fall_back(c, xp, h0, opts, info, "ELK could not lower the residual")
    return _fall_back(c, xp, h0, opts, info,
                      f"no convergence within max_iter={max_iter} (residual {info.residual:.3g})")


def _fall_back(c, xp, h0, opts, info, reason):
    info.reason = reason
    if opts["fallback"] is None:
        raise RuntimeError(f"parallel_rnn ({info.method}) on {type(c.cell).__name__}: {reason}")
    info.fell_back = True
    key = (type(c.cell).__name__, info.method)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"parallel_rnn ({info.method}) on {type(c.cell).__name__}: {reason}; "
                      f"falling back to the sequential loop (warned once)", RuntimeWarning,
                      stacklevel=4)
    return _sequential(c, xp, h0)


class _ParallelRNN(first_order.Function):
    @staticmethod
    def forward(ctx, c, opts, info, names, xp, h0, *params):
        with torch.no_grad():
            z = _solve(c, xp, h0, opts, info)
        ctx.c, ctx.names = c, names
        ctx.save_for_backward(xp, h0, z, *params)
        return z

    @staticmethod
    def plain(c, opts, info, names, xp, h0, *params):  # torch.func: the loop it converges to
        info.converged, info.reason = True, "torch.func: the sequential loop"
        return _sequential(c, xp, h0, dict(zip(names, params)) if params else None)

    @staticmethod
    def backward(ctx, g):
        xp, h0, z, *params = ctx.saved_tensors
        c, lay = ctx.c, ctx.c.layout
        zprev = _shift(z, h0)
        with torch.no_grad():  # lambda_t = g_t + J_{t+1}^T lambda_{t+1}, exact J
            _, J = _jacobian_all(c, xp, zprev)
            Jn = torch.zeros_like(J)
            if lay.kind == "diag":
                Jn[:, :-1] = J[:, 1:]
                lam = linear_scan(Jn, g.to(z.dtype), reverse=True)[0]
            else:
                Jn[:, :-1] = J[:, 1:].transpose(-1, -2)
                lam = lay.from_blocks(block_linear_scan(Jn, lay.to_blocks(g.to(z.dtype)),
                                                        reverse=True))
        with torch.enable_grad():  # one VJP of the cell over all steps
            xp_ = xp.detach().requires_grad_()
            h0_ = h0.detach().requires_grad_()
            ps = [p.detach().requires_grad_() for p in params]
            B, T = z.shape[:2]
            zprev_ = torch.cat([h0_.unsqueeze(1), z[:, :-1]], 1)
            fz = c.f(xp_.reshape(B * T, -1), zprev_.reshape(B * T, -1),
                     params=dict(zip(ctx.names, ps)) if ps else None)
            grads = torch.autograd.grad(fz, [xp_, h0_, *ps], lam.reshape(B * T, -1),
                                        allow_unused=True)
        return (None, None, None, None, *grads)

    @staticmethod
    def twice(ctx, g):  # under create_graph: autograd through the loop the solver converged to
        xp, h0, _, *params = ctx.saved_tensors
        c, names = ctx.c, ctx.names

        def loop(xp, h0, *ps):
            return _sequential(c, xp, h0, dict(zip(names, ps)) if ps else None)
        return (None,) * 4 + first_order.replay(loop, (xp, h0, *params), (g,),
                                                ctx.needs_input_grad[4:])


# -- the entry point ---------------------------------------------------------------------------
def parallel_rnn(cell, x: torch.Tensor, h0=None, *, method: str = "auto",
                 max_iter: int | None = None, atol: float | None = None,
                 rtol: float | None = None, damping: float | None = None, init="f0",
                 fallback: str | None = "sequential", params: dict | None = None):
    """Run `cell` over x with all steps solved at once.

    cell: a `rnnzoo.cells.base.Cell` (project, recur, state_sizes, jacobian_structure).
    x: (B, T, input_size); the cell's `project` is applied once to all steps.
    h0: the initial state, a tuple of (B, n_i) tensors, one tensor (B, N), or None (zeros).
    method: "auto" (newton), "newton", "quasi", "elk" or "sequential".
    max_iter: linear solves at most (default min(T + 1, 100); 100 for elk); atol, rtol: stopping rule
        max |h_t - f(h_{t-1}, x_t)| <= atol + rtol |f| (default 1e-12 each in float64,
        1e-5 in float32); damping: ELK's initial lambda (default 1; only for elk).
    init: "f0" (h_t = f(h0, x_t)), "zeros", or a (B, T, N) guess (warm start).
    fallback: "sequential" (loop on NaN/inf or no convergence, warn once) or None (raise).
    params: parameter tensors standing in for the cell's own (e.g. cast copies), by name.
    Returns (trajectory, info): the state tuple over time, tensors (B, T, n_i), and a
    `SolveInfo`. Differentiable in x, h0 and the parameters (adjoint backward).
    """
    choice("method", method, METHODS)
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[1] == 0:
        raise ValueError(f"x must be a (batch, time, input_size) tensor with time >= 1, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    choice("fallback", fallback, ("sequential", None))
    if damping is not None and method != "elk":
        raise ValueError(f"damping is ELK's Levenberg-Marquardt strength; it needs "
                         f"method='elk', got method={method!r}")
    if damping is not None:
        positive("damping", damping)
    method = "newton" if method == "auto" else method
    c = _Cell(cell, params)
    B, T = x.shape[:2]
    xp = c.call("project", x)
    wide = xp.dtype == torch.float64
    N = c.layout.N
    if h0 is None:
        h0 = xp.new_zeros(B, N)
    elif isinstance(h0, (tuple, list)):
        h0 = torch.cat([s.to(xp.dtype) for s in h0], -1)
    if h0.shape != (B, N):
        raise ValueError(f"h0 must be the cell's state for batch {B} (flat width {N}), "
                         f"got shape {tuple(h0.shape)}")
    opts = dict(atol=(1e-12 if wide else 1e-5) if atol is None else atol,
                rtol=(1e-12 if wide else 1e-5) if rtol is None else rtol,
                max_iter=(100 if method == "elk" else min(T + 1, 100)) if max_iter is None
                else max_iter,
                damping=1.0 if damping is None else damping, init=init, fallback=fallback)
    int_in("max_iter", opts["max_iter"], 0)
    info = SolveInfo(method)
    h0 = h0.to(xp.dtype)
    if method == "sequential":
        z = _sequential(c, xp, h0)
        info.converged = True
    else:
        names, ps = zip(*(params or dict(cell.named_parameters())).items()) \
            if (params or list(cell.parameters())) else ((), ())
        z = _ParallelRNN.apply(c, opts, info, tuple(names), xp, h0, *ps)
    return c.split(z), info


def verify_structure(cell, input_size: int | None = None, batch: int = 3, *, seed: int = 0,
                     atol: float = 1e-10) -> None:
    """Check `cell.jacobian_structure` (and an analytic `cell.jacobian`) against the dense
    Jacobian from autograd at random float64 inputs and states; raise ValueError on a mismatch."""
    lay = Layout(cell)
    name = type(cell).__name__
    g = torch.Generator().manual_seed(seed)
    params = {k: v.detach().double() for k, v in cell.named_parameters()}
    c = _Cell(cell, params)
    x = torch.randn(batch, 1, input_size or cell.input_size, generator=g, dtype=torch.float64)
    xp = c.call("project", x)[:, 0]
    z = torch.randn(batch, lay.N, generator=g, dtype=torch.float64)
    dense = torch.stack([torch.func.jacrev(lambda zz: c.f(xp[i:i + 1], zz[None])[0])(z[i])
                         for i in range(batch)])  # (R, N, N)
    # the dense Jacobian in block coordinates: Db[r, j, a, j', b] = d z[j, a] / d zprev[j', b]
    idx = lay.to_blocks(torch.arange(lay.N, dtype=torch.float64)).reshape(-1).long()
    Db = dense[:, idx][:, :, idx].reshape(batch, lay.m, lay.k, lay.m, lay.k)
    mask = torch.eye(lay.m, dtype=torch.bool).reshape(1, lay.m, 1, lay.m, 1).expand_as(Db)
    off = Db.masked_fill(mask, 0).abs().max().item()
    if off > atol:
        raise ValueError(f"{name} declares jacobian_structure {cell.jacobian_structure!r} but "
                         f"its Jacobian has entries up to {off:.3g} outside that structure")
    blocks = torch.diagonal(Db, dim1=1, dim2=3).permute(0, 3, 1, 2)  # (R, m, k, k)
    _, J = c.f_and_jacobian(xp, z)
    if lay.kind == "diag":
        J = J.unsqueeze(-1).unsqueeze(-1)
    err = (J - blocks).abs().max().item()
    if err > atol * (1 + blocks.abs().max().item()):
        where = "analytic cell.jacobian" if hasattr(cell, "jacobian") else "structured Jacobian"
        raise ValueError(f"{name}: the {where} differs from autograd's by {err:.3g}")
