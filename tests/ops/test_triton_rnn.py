"""ops.triton.rnn (fused LSTM / GRU / sLSTM sequences) under TRITON_INTERPRET=1 on CPU,
against rnnzoo's own cells (their `recur` loop) and torch.nn.LSTM / torch.nn.GRU, float32:
outputs, final states and every gradient (xp, recurrent weights, b_hn, initial states)."""

import pytest
import torch

from rnnzoo.cells.gru import GRUCell
from rnnzoo.cells.lstm import LSTMCell
from rnnzoo.cells.slstm import SLSTMCell

pytest.importorskip("triton")

B, D = 3, 5  # batch not a multiple of the kernels' batch block (16); input size
TOL = 2e-6  # measured: <= 2.6e-7 (relative to 1 + max |reference|)
SHAPES = [(1, 8), (5, 8), (1, 16), (5, 16)]  # (T, H)


@pytest.fixture(scope="module")
def tr():
    from _triton_interp import interpreted
    return interpreted("rnnzoo.ops.triton.rnn")


@pytest.fixture
def small_blocks(tr):
    """Hidden blocks of 16: at H = 24 two blocks, the last ragged."""
    tr._CONFIG_OVERRIDE = (16, 16)
    yield
    tr._CONFIG_OVERRIDE = None


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _run(fn, leaves, params=(), seed=7):
    """fn(*leaves) -> (h_all, final states); a random linear loss of all outputs; returns
    the outputs and the gradients of the leaves and the params."""
    leaves = [x.detach().clone().requires_grad_() for x in leaves]
    h_all, final = fn(*leaves)
    outs = [h_all, *final]
    loss = sum((o * _rand(*o.shape, seed=seed + k)).sum() for k, o in enumerate(outs))
    grads = torch.autograd.grad(loss, leaves + list(params))
    return [o.detach() for o in outs] + list(grads)


def _compare(a, b, tol=TOL):
    assert len(a) == len(b)
    worst = 0.0
    for x, y in zip(a, b):
        assert x.shape == y.shape, (x.shape, y.shape)
        worst = max(worst, ((x - y).abs().max() / (1 + y.abs().max())).item())
    assert worst < tol, worst
    return worst


def _loop(cell):
    """The cell's own reference recurrence over precomputed projections xp."""
    def fn(xp, *state):
        outs = []
        for xp_t in xp.unbind(1):
            state = cell.recur(xp_t, tuple(state))
            outs.append(cell.output(state))
        return torch.stack(outs, 1), tuple(state)
    return fn


def _states(cell, seed):
    st = [0.5 * _rand(B, n, seed=seed + k) for k, n in enumerate(cell.state_sizes)]
    if isinstance(cell, SLSTMCell):  # n > 0 (a normaliser), m any real
        st[2] = st[2].abs() + 0.5
    return st


def _xp(cell, T, seed):
    with torch.no_grad():
        return cell.project(_rand(B, T, cell.input_size, seed=seed))


@pytest.mark.parametrize("T,H", SHAPES)
def test_lstm_matches_cell(tr, T, H):
    torch.manual_seed(0)
    cell = LSTMCell(D, H)
    xp, st = _xp(cell, T, 1), _states(cell, 2)
    ours = _run(lambda xp, h, c: tr.lstm_sequence(xp, cell.weight_hh, h, c), [xp, *st],
                [cell.weight_hh])
    ref = _run(_loop(cell), [xp, *st], [cell.weight_hh])
    _compare(ours, ref)


def _gru(tr, w_hh, b_hn):
    """gru_sequence with the final state as a 1-tuple, as the cell's."""
    def fn(xp, h):
        y, hT = tr.gru_sequence(xp, w_hh, b_hn, h)
        return y, (hT,)
    return fn


@pytest.mark.parametrize("T,H", SHAPES)
def test_gru_matches_cell(tr, T, H):
    torch.manual_seed(0)
    cell = GRUCell(D, H)
    xp, st = _xp(cell, T, 1), _states(cell, 2)
    b_hn = cell.bias_hh[2 * H:]
    ours = _run(_gru(tr, cell.weight_hh, b_hn), [xp, *st], [cell.weight_hh, cell.bias_hh])
    ref = _run(_loop(cell), [xp, *st], [cell.weight_hh, cell.bias_hh])
    _compare(ours, ref)


def test_gru_without_bias(tr):
    torch.manual_seed(0)
    cell = GRUCell(D, 8, bias=False)
    xp, st = _xp(cell, 5, 1), _states(cell, 2)
    ours = _run(_gru(tr, cell.weight_hh, None), [xp, *st], [cell.weight_hh])
    _compare(ours, _run(_loop(cell), [xp, *st], [cell.weight_hh]))


@pytest.mark.parametrize("T,H", SHAPES)
def test_slstm_matches_cell(tr, T, H):
    torch.manual_seed(0)
    cell = SLSTMCell(D, H, num_heads=2)
    xp, st = _xp(cell, T, 1), _states(cell, 2)
    ours = _run(lambda xp, *s: tr.slstm_sequence(xp, cell.weight_hh, *s), [xp, *st],
                [cell.weight_hh])
    ref = _run(_loop(cell), [xp, *st], [cell.weight_hh])
    _compare(ours, ref)


def _nn_inputs(T, H, seed):
    return _rand(B, T, D, seed=seed), 0.5 * _rand(1, B, H, seed=seed + 1), \
        0.5 * _rand(1, B, H, seed=seed + 2)


@pytest.mark.parametrize("T,H", [(5, 8), (5, 16)])
def test_lstm_matches_torch_nn(tr, T, H):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(D, H, batch_first=True)
    params = list(lstm.parameters())  # w_ih, w_hh, b_ih, b_hh

    def ours(x, h, c):
        xp = x @ lstm.weight_ih_l0.T + lstm.bias_ih_l0 + lstm.bias_hh_l0
        y, (hT, cT) = tr.lstm_sequence(xp, lstm.weight_hh_l0, h[0], c[0])
        return y, (hT, cT)

    def ref(x, h, c):
        y, (hT, cT) = lstm(x, (h, c))
        return y, (hT[0], cT[0])

    leaves = list(_nn_inputs(T, H, 3))
    _compare(_run(ours, leaves, params), _run(ref, leaves, params))


@pytest.mark.parametrize("T,H", [(5, 8), (5, 16)])
def test_gru_matches_torch_nn(tr, T, H):
    torch.manual_seed(0)
    gru = torch.nn.GRU(D, H, batch_first=True)
    params = list(gru.parameters())

    def ours(x, h):
        b_ih, b_hh = gru.bias_ih_l0, gru.bias_hh_l0
        xp = x @ gru.weight_ih_l0.T + b_ih + torch.cat([b_hh[:2 * H], torch.zeros_like(b_hh[:H])])
        y, hT = tr.gru_sequence(xp, gru.weight_hh_l0, b_hh[2 * H:], h[0])
        return y, (hT,)

    def ref(x, h):
        y, hT = gru(x, h)
        return y, (hT[0],)

    x, h, _ = _nn_inputs(T, H, 3)
    _compare(_run(ours, [x, h], params), _run(ref, [x, h], params))


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("kind", ["lstm", "gru", "slstm"])
def test_several_hidden_blocks(tr, kind):
    """H = 24 with blocks of 16: the per-step loop over hidden blocks and input blocks."""
    torch.manual_seed(0)
    H, T = 24, 4
    if kind == "lstm":
        cell = LSTMCell(D, H)
        fn, params = (lambda xp, h, c: tr.lstm_sequence(xp, cell.weight_hh, h, c)), \
            [cell.weight_hh]
    elif kind == "gru":
        cell = GRUCell(D, H)
        fn, params = _gru(tr, cell.weight_hh, cell.bias_hh[2 * H:]), [cell.weight_hh,
                                                                       cell.bias_hh]
    else:
        cell = SLSTMCell(D, H, num_heads=3)
        fn, params = (lambda xp, *s: tr.slstm_sequence(xp, cell.weight_hh, *s)), \
            [cell.weight_hh]
    xp, st = _xp(cell, T, 1), _states(cell, 2)
    _compare(_run(fn, [xp, *st], params), _run(_loop(cell), [xp, *st], params))


def test_slstm_dense_recurrent_matches_cell(tr):
    cell = SLSTMCell(D, 12, num_heads=3)
    torch.testing.assert_close(tr.slstm_dense_recurrent(cell.weight_hh),
                               cell.recurrent_matrix(), rtol=0, atol=0)


def test_bad_arguments(tr):
    xp = torch.zeros(2, 3, 32)
    w, h = torch.zeros(32, 8), torch.zeros(2, 8)
    with pytest.raises(ValueError, match="w_hh"):
        tr.lstm_sequence(xp, torch.zeros(24, 8), h, h)
    with pytest.raises(ValueError, match="c0"):
        tr.lstm_sequence(xp, w, h, torch.zeros(3, 8))
    with pytest.raises(TypeError, match="float64"):
        tr.lstm_sequence(xp.double(), w, h, h)
    with pytest.raises(ValueError, match="b_hn"):
        tr.gru_sequence(torch.zeros(2, 3, 24), torch.zeros(24, 8), torch.zeros(7), h)


def test_kernels_compile_for_sm90():
    """The interpreter accepts more than the compiler: build the GPU configuration's kernels
    (H = 512) to a cubin for sm_90, which needs no GPU (triton's bundled ptxas); the entries
    are test_triton_compile.py's, which compiles every other kernel too (slow)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(os.path.dirname(__file__), "..", "..",
                                                      "src"), env.get("PYTHONPATH", "")])
    script = os.path.join(os.path.dirname(__file__), "test_triton_compile.py")
    p = subprocess.run([sys.executable, script, "rnn"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0 and "compiled 6 of 6" in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]
