"""ops.newton (DEER / quasi-DEER / ELK) against the plain loop.

Cells: ParaRNN's paragru / paralstm, the Elman cell, and torch.nn.GRU / LSTM
cells written here with torch's default initialisation (the catalogue's `gru`
and `lstm` cells join the parametrisation when they are registered).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from rnnzoo.cells.base import Cell
from rnnzoo.cells.elman import ElmanTanh
from rnnzoo.cells.para import ParaGRU, ParaLSTM
from rnnzoo.ops import newton
from rnnzoo.ops.newton import parallel_rnn, verify_structure
from rnnzoo.registry import CELLS

F64 = torch.float64


class TorchGRUCell(Cell):
    """torch.nn.GRU's step with its default initialisation U(-1/sqrt(H), 1/sqrt(H))."""

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        k = 1 / math.sqrt(hidden_size)
        self.w_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size).uniform_(-k, k))
        self.w_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size).uniform_(-k, k))
        self.b_ih = nn.Parameter(torch.empty(3 * hidden_size).uniform_(-k, k))
        self.b_hh = nn.Parameter(torch.empty(3 * hidden_size).uniform_(-k, k))

    def project(self, x):
        return x @ self.w_ih.T + self.b_ih

    def recur(self, xp, state):
        h = state[0]
        hr, hz, hn = (h @ self.w_hh.T + self.b_hh).chunk(3, -1)
        xr, xz, xn = xp.chunk(3, -1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return ((1 - z) * n + z * h,)


class TorchLSTMCell(Cell):
    """torch.nn.LSTM's step with its default initialisation; state (h, c)."""

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.state_sizes = (hidden_size, hidden_size)
        k = 1 / math.sqrt(hidden_size)
        self.w_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size).uniform_(-k, k))
        self.w_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size).uniform_(-k, k))
        self.b = nn.Parameter(torch.empty(4 * hidden_size).uniform_(-k, k))

    def project(self, x):
        return x @ self.w_ih.T + self.b

    def recur(self, xp, state):
        h, c = state
        i, f, g, o = (xp + h @ self.w_hh.T).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


def _registered(*names):
    return [CELLS[n].cls for n in names if n in CELLS]


GRUS = [TorchGRUCell, *_registered("gru")]
LSTMS = [TorchLSTMCell, *_registered("lstm")]
CELL_CLASSES = [ParaGRU, ParaLSTM, ElmanTanh, TorchGRUCell, TorchLSTMCell,
                *_registered("gru", "lstm")]


def make(cls, input_size=3, hidden=4, dtype=F64, seed=0):
    torch.manual_seed(seed)
    return cls(input_size, hidden).to(dtype)


def data(cell, B=2, T=16, dtype=F64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, cell.input_size, generator=g, dtype=F64).to(dtype)
    h0 = tuple((0.5 * torch.randn(B, n, generator=g, dtype=F64)).to(dtype)
               for n in cell.state_sizes)
    return x, h0


def loop(cell, x, h0):
    states, s = [], h0
    for xp_t in cell.project(x).unbind(1):
        s = cell.recur(xp_t, s)
        states.append(s)
    return tuple(torch.stack(c, 1) for c in zip(*states))


def err(a, b):
    return max((u - v).abs().max().item() for u, v in zip(a, b))


def grads(cell, x, h0, method, **kw):
    x = x.clone().requires_grad_()
    h0 = tuple(t.clone().requires_grad_() for t in h0)
    traj = loop(cell, x, h0) if method == "loop" else parallel_rnn(cell, x, h0, method=method,
                                                                   **kw)[0]
    g = torch.Generator().manual_seed(5)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=F64).to(t.dtype)).sum()
               for t in traj)
    return torch.autograd.grad(loss, [x, *h0, *cell.parameters()], allow_unused=True)


# -- float64: trajectory and adjoint gradients equal the loop's ---------------------------
@pytest.mark.parametrize("method", ["newton", "quasi", "elk"])
@pytest.mark.parametrize("cls", CELL_CLASSES, ids=lambda c: c.__name__)
def test_float64_equals_loop(cls, method):
    cell = make(cls)
    x, h0 = data(cell, T=40)
    want = loop(cell, x, h0)
    traj, info = parallel_rnn(cell, x, h0, method=method)
    assert info.converged and not info.fell_back, info
    assert err(traj, want) < 1e-10
    assert info.residual <= 1e-12 * (1 + max(t.abs().max().item() for t in want)) * 2


@pytest.mark.parametrize("method", ["newton", "quasi"])
@pytest.mark.parametrize("cls", CELL_CLASSES, ids=lambda c: c.__name__)
def test_adjoint_gradients_equal_backprop_through_loop(cls, method):
    cell = make(cls)
    x, h0 = data(cell, T=40)
    want = grads(cell, x, h0, "loop")
    got = grads(cell, x, h0, method)
    for w, g in zip(want, got):
        w = torch.zeros_like(g) if w is None else w
        g = torch.zeros_like(w) if g is None else g
        assert (w - g).abs().max().item() <= 1e-8 * w.abs().max().item() + 1e-14


@pytest.mark.parametrize("method", ["newton", "quasi"])
@pytest.mark.parametrize("cls", CELL_CLASSES, ids=lambda c: c.__name__)
def test_gradcheck(cls, method):
    cell = make(cls, hidden=4)
    x, h0 = data(cell, B=1, T=16)
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]

    def f(x, *args):
        h0, ps = args[:len(cell.state_sizes)], args[len(cell.state_sizes):]
        return parallel_rnn(cell, x, h0, method=method, params=dict(zip(names, ps)))[0]

    inputs = (x.requires_grad_(), *(t.requires_grad_() for t in h0), *params)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, fast_mode=True)


# -- float32 -------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["newton", "quasi"])
@pytest.mark.parametrize("cls", CELL_CLASSES, ids=lambda c: c.__name__)
def test_float32_error_bounded_by_loop_error(cls, method):
    cell64 = make(cls, hidden=8)
    cell32 = make(cls, hidden=8, dtype=torch.float32)
    x, h0 = data(cell64, T=200)
    exact = loop(cell64, x, h0)
    x32, h32 = x.float(), tuple(t.float() for t in h0)
    loop_err = err(loop(cell32, x32, h32), exact)
    traj, info = parallel_rnn(cell32, x32, h32, method=method)
    assert not info.fell_back
    for got, want in zip(traj, exact):
        bound = torch.maximum(torch.full_like(want, 10 * loop_err), 1e-5 * (1 + want.abs()))
        assert bool(((got.double() - want).abs() <= bound).all())
    g64 = grads(cell64, x, h0, "loop")
    g32 = grads(cell32, x32, h32, method)
    for w, g in zip(g64, g32):
        if w is not None:
            assert (w - g.double()).abs().max().item() <= 1e-4 * w.abs().max().item() + 1e-7


# -- iteration counts (regression bounds) --------------------------------------------------
@pytest.mark.parametrize("dtype,tol,newton_max,quasi_max",
                         [(F64, 1e-10, 5, 30), (torch.float32, 1e-5, 4, 15)])
@pytest.mark.parametrize("cls", GRUS + LSTMS, ids=lambda c: c.__name__)
def test_iterations_default_gru_lstm_T1024(cls, dtype, tol, newton_max, quasi_max):
    cell = make(cls, input_size=8, hidden=16, dtype=dtype)
    x, h0 = data(cell, B=1, T=1024, dtype=dtype)
    want = loop(cell, x, h0)
    for method, bound in (("newton", newton_max), ("quasi", quasi_max)):
        traj, info = parallel_rnn(cell, x, h0, method=method, atol=tol, rtol=tol)
        assert info.converged and not info.fell_back
        assert info.iterations <= bound, (method, info.iterations)
        assert err(traj, want) < (1e-8 if dtype == F64 else 1e-4)


# -- fallback ---------------------------------------------------------------------------------
@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(newton, "_warned", set())


@pytest.mark.parametrize("method", ["newton", "quasi"])
def test_chaotic_gru_falls_back_and_equals_loop(method, fresh_warnings):
    cell = make(TorchGRUCell, input_size=4, hidden=8)
    with torch.no_grad():
        cell.w_hh.mul_(6)
    x, h0 = data(cell, T=256)
    with pytest.warns(RuntimeWarning, match="falling back to the sequential loop"):
        traj, info = parallel_rnn(cell, x, h0, method=method)
    assert info.fell_back and not info.converged and info.reason
    assert err(traj, loop(cell, x, h0)) == 0
    with warnings.catch_warnings():  # warned once only
        warnings.simplefilter("error")
        parallel_rnn(cell, x, h0, method=method)
    got = grads(cell, x, h0, method)  # the adjoint at the loop's trajectory is still exact
    for w, g in zip(grads(cell, x, h0, "loop"), got):
        assert (w - g).abs().max().item() <= 1e-8 * w.abs().max().item()


class NaNJacobianGRU(ParaGRU):
    """ParaGRU whose analytic Jacobian is poisoned: the Newton iterates turn NaN."""

    def jacobian(self, xp_t, state):
        return super().jacobian(xp_t, state) * float("nan")


def test_injected_nan_falls_back(fresh_warnings):
    cell = make(NaNJacobianGRU)
    x, h0 = data(cell, T=20)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        traj, info = parallel_rnn(cell, x, h0, method="newton")
    assert info.fell_back and "non-finite" in info.reason
    assert err(traj, loop(cell, x, h0)) == 0
    with pytest.raises(RuntimeError, match="non-finite"):
        parallel_rnn(cell, x, h0, method="newton", fallback=None)


def test_no_convergence_within_max_iter_falls_back(fresh_warnings):
    cell = make(TorchLSTMCell)
    x, h0 = data(cell, T=30)
    with pytest.warns(RuntimeWarning, match="max_iter=2"):
        traj, info = parallel_rnn(cell, x, h0, method="quasi", max_iter=2)
    assert info.fell_back and info.iterations == 2
    assert err(traj, loop(cell, x, h0)) == 0


# -- ELK --------------------------------------------------------------------------------------
def test_elk_never_raises_the_residual_norm_where_newton_blows_up():
    """LM steps are accepted only if sum |F_t|^2 falls, so every later max-residual stays
    below the initial residual's 2-norm; undamped Newton's first step on the same chaotic
    GRU raises the max-residual above where it started."""
    cell = make(TorchGRUCell, input_size=4, hidden=8)
    with torch.no_grad():
        cell.w_hh.mul_(6)
    x, h0 = data(cell, B=1, T=48)
    flat_h0 = torch.cat(h0, -1)
    z0 = torch.cat(cell.recur(cell.project(x), tuple(t.unsqueeze(1).expand(-1, 48, -1)
                                                     for t in h0)), -1)
    prev = torch.cat([flat_h0.unsqueeze(1), z0[:, :-1]], 1)
    F0 = z0 - torch.cat(cell.recur(cell.project(x), (prev,)), -1)
    bound = F0.norm().item()
    _, elk = parallel_rnn(cell, x, h0, method="elk", max_iter=15)
    _, newt = parallel_rnn(cell, x, h0, method="newton", max_iter=15)
    assert max(elk.history) <= bound * (1 + 1e-12)
    assert max(elk.history[1:]) < bound and newt.history[1] > newt.history[0]


def test_damping_only_for_elk():
    cell = make(ParaGRU)
    x, h0 = data(cell)
    with pytest.raises(ValueError, match="damping.*method='elk'"):
        parallel_rnn(cell, x, h0, method="newton", damping=1.0)
    traj, info = parallel_rnn(cell, x, h0, method="elk", damping=100.0)
    assert info.converged and err(traj, loop(cell, x, h0)) < 1e-10


# -- structure ----------------------------------------------------------------------------------
class FalseDiagElman(ElmanTanh):
    jacobian_structure = "diag"


class FalseBlockLSTM(TorchLSTMCell):
    jacobian_structure = ("block", 2)


class WrongHookGRU(ParaGRU):
    def jacobian(self, xp_t, state):
        return 1.01 * super().jacobian(xp_t, state)


@pytest.mark.parametrize("cls,match", [(FalseDiagElman, "outside that structure"),
                                       (FalseBlockLSTM, "outside that structure"),
                                       (WrongHookGRU, "analytic cell.jacobian differs")])
def test_verify_structure_catches_false_declarations(cls, match):
    with pytest.raises(ValueError, match=match):
        verify_structure(make(cls, hidden=5))


@pytest.mark.parametrize("name", sorted(CELLS))
def test_verify_structure_on_every_registered_cell(name):
    info = CELLS[name]
    torch.manual_seed(0)
    options = {k: v for k, v in info.tiny.items() if k != "hidden_size"}
    cell = info.cls(6, info.tiny.get("hidden_size", 6), **options)
    verify_structure(cell)


def test_quasi_on_block_cell_uses_the_diagonal_and_newton_is_exact_on_diag_cells():
    cell = make(ParaLSTM, hidden=6)
    x, h0 = data(cell, T=64)
    _, n = parallel_rnn(cell, x, h0, method="newton")
    _, q = parallel_rnn(cell, x, h0, method="quasi")
    assert q.iterations > n.iterations  # the 2x2 coupling is dropped by quasi
    cell = make(ParaGRU, hidden=6)
    _, n = parallel_rnn(cell, x, h0[:1], method="newton")
    _, q = parallel_rnn(cell, x, h0[:1], method="quasi")
    assert q.history == n.history  # diagonal Jacobian: the same iterates


def test_bad_arguments():
    cell = make(ParaGRU)
    x, h0 = data(cell)
    with pytest.raises(ValueError, match="method must be one of"):
        parallel_rnn(cell, x, h0, method="picard")
    with pytest.raises(ValueError, match="h0 must be"):
        parallel_rnn(cell, x, (h0[0][:1],))
    with pytest.raises(ValueError, match="x must be a"):
        parallel_rnn(cell, x[:, 0], h0)
    with pytest.raises(ValueError, match="init must be"):
        parallel_rnn(cell, x, h0, init="ones")
    with pytest.raises(ValueError, match="fallback must be"):
        parallel_rnn(cell, x, h0, fallback="raise")


def test_warm_start_from_the_solution_needs_no_iteration():
    cell = make(ParaLSTM)
    x, h0 = data(cell)
    want = loop(cell, x, h0)
    traj, info = parallel_rnn(cell, x, h0, init=torch.cat(want, -1))
    assert info.iterations == 0 and info.converged and err(traj, want) < 1e-14


# -- create_graph: the node's `twice` replays the loop the solver converged to --------------
@pytest.mark.parametrize("method", ["newton", "quasi", "elk"])
@pytest.mark.parametrize("cls", CELL_CLASSES, ids=lambda c: c.__name__)
def test_second_derivative_equals_the_loops(cls, method):
    """Under create_graph=True the gradient of the trajectory is the loop's (the solver's fixed
    point), differentiable again: the second derivative (x, h0 and every parameter) against a
    central difference of the adjoint gradient, and equal to the loop's own to 1e-10."""
    from _second_order import second_order

    cell = make(cls, hidden=4)
    x, h0 = data(cell, B=2, T=9)
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    S = len(cell.state_sizes)

    def run(how):
        def f(x, *args):
            h0, ps = args[:S], dict(zip(names, args[S:]))
            if how == "loop":
                return parallel_rnn(cell, x, h0, method="sequential", params=ps)[0]
            traj, info = parallel_rnn(cell, x, h0, method=how, params=ps, atol=1e-14,
                                      rtol=1e-14)  # the first-order gradients agree to 1e-12
            assert info.converged and not info.fell_back, info
            return traj
        return f

    inputs = (x.requires_grad_(), *(t.requires_grad_() for t in h0), *params)
    second_order(run(method), inputs, ref=run("loop"), tol=1e-6)
