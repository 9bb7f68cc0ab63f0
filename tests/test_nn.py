"""rnnzoo.nn against torch.nn.LSTM/GRU/RNN: state dicts both ways, equal outputs and states."""

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnzoo.nn as znn

CASES = [  # (ours, torch's, kwargs)
    (znn.LSTM, torch.nn.LSTM, {}),
    (znn.LSTM, torch.nn.LSTM, {"proj_size": 3}),
    (znn.GRU, torch.nn.GRU, {}),
    (znn.RNN, torch.nn.RNN, {}),
    (znn.RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
]
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def _flat(state):
    return state if isinstance(state, tuple) else (state,)


def _close(a, b, tol):
    if isinstance(a, torch.nn.utils.rnn.PackedSequence):
        assert torch.equal(a.batch_sizes, b.batch_sizes)
        a, b = a.data, b.data
    assert a.shape == b.shape
    assert (a - b).abs().max().item() < tol


def _pair(ours_cls, torch_cls, kwargs, dtype, from_torch, **common):
    torch.manual_seed(0)
    ref = torch_cls(5, 4, **common, **kwargs).to(dtype)
    ours = ours_cls(5, 4, **common, **kwargs).to(dtype)
    if from_torch:
        ours.load_state_dict(ref.state_dict())
    else:
        ref.load_state_dict(ours.state_dict())
    return ours, ref


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("from_torch", [True, False])
@pytest.mark.parametrize("bidirectional,batch_first", [(False, False), (True, True)])
def test_dense_matches_torch(case, dtype, from_torch, bidirectional, batch_first):
    ours_cls, torch_cls, kwargs = CASES[case]
    ours, ref = _pair(ours_cls, torch_cls, kwargs, dtype, from_torch, num_layers=2,
                      bidirectional=bidirectional, batch_first=batch_first)
    assert set(ours.state_dict()) == set(ref.state_dict())
    x = torch.randn(3, 7, 5, dtype=dtype)
    y_ref, s_ref = ref(x)
    y, s = ours(x)
    _close(y, y_ref, TOL[dtype])
    for a, b in zip(_flat(s), _flat(s_ref)):
        _close(a, b, TOL[dtype])
    y2, _ = ours(x, s)  # a given initial state
    _close(y2, ref(x, s_ref)[0], TOL[dtype])


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_matches_torch(case, bidirectional):
    ours_cls, torch_cls, kwargs = CASES[case]
    ours, ref = _pair(ours_cls, torch_cls, kwargs, torch.float64, True, num_layers=2,
                      bidirectional=bidirectional)
    x = torch.randn(6, 4, 5, dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.tensor([3, 6, 1, 4]), enforce_sorted=False)
    y_ref, s_ref = ref(packed)
    y, s = ours(packed)
    _close(y, y_ref, 1e-12)
    for a, b in zip(_flat(s), _flat(s_ref)):
        _close(a, b, 1e-12)


def test_generic_cell_path_matches_torch_kernel_path():
    """Peephole-free LSTM through the per-cell loops (dense and packed, both directions)
    equals the one-call torch kernel path."""
    torch.manual_seed(0)
    ours = znn.LSTM(5, 4, num_layers=2, bidirectional=True, proj_size=3).double()
    ref = torch.nn.LSTM(5, 4, num_layers=2, bidirectional=True, proj_size=3).double()
    ref.load_state_dict(ours.state_dict())
    for c in ours.cells:  # force the generic path
        c.weight_ph = None
    ours._torch_kernel = lambda: None
    x = torch.randn(6, 4, 5, dtype=torch.float64)
    _close(ours(x)[0], ref(x)[0], 1e-12)
    packed = pack_padded_sequence(x, torch.tensor([3, 6, 1, 4]), enforce_sorted=False)
    y, (h, c) = ours(packed)
    y_ref, (h_ref, c_ref) = ref(packed)
    _close(y, y_ref, 1e-12)
    _close(h, h_ref, 1e-12)
    _close(c, c_ref, 1e-12)


def test_unbatched_and_gradients_match_torch():
    ours, ref = _pair(znn.LSTM, torch.nn.LSTM, {}, torch.float64, True, num_layers=2)
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    y, (h, c) = ours(x)
    assert y.shape == (7, 4) and h.shape == (2, 4) and c.shape == (2, 4)
    y_ref, _ = ref(x)
    _close(y, y_ref, 1e-12)
    g, = torch.autograd.grad(y.sum(), x)
    g_ref, = torch.autograd.grad(y_ref.sum(), x)
    _close(g, g_ref, 1e-12)
    assert ours.weight_hh_l1 is ours.cells[1].weight_hh


def test_dropout_between_layers_only():
    torch.manual_seed(0)
    rnn = znn.RNN(5, 4, num_layers=2, dropout=1.0, cell="gru_v3")
    x = torch.randn(6, 2, 5)
    y_eval = rnn.eval()(x)[0]
    y_train = rnn.train()(x)[0]
    # dropout 1 zeroes layer 1's input, so layer 1 sees zeros: not equal to eval
    assert not torch.allclose(y_eval, y_train)
    one = znn.RNN(5, 4, num_layers=1, dropout=1.0, cell="gru_v3")
    assert torch.equal(one.train()(x)[0], one.eval()(x)[0])  # no dropout after the last


@pytest.mark.parametrize("cell", ["gru_v3", "cifg_lstm", "ln_lstm", "slstm", "qrnn", "sru"])
def test_any_cell_packed_equals_per_sequence(cell):
    """A catalogue cell through the drop-in: packed, bidirectional, 2 layers, each sequence's
    output and final state equal running it alone."""
    torch.manual_seed(0)
    rnn = znn.RNN(5, 4, num_layers=2, bidirectional=True, cell=cell).double()
    lengths = [3, 6, 1]
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
    y, s = rnn(packed)
    y, _ = pad_packed_sequence(y)
    for b, n in enumerate(lengths):
        y_b, s_b = rnn(x[:n, b])
        assert (y[:n, b] - y_b).abs().max() < 1e-12
        for a, e in zip(_flat(s), _flat(s_b)):
            assert (a[:, b] - e).abs().max() < 1e-12


def test_cells_whose_state_has_the_input_width():
    """tgru/tlstm keep x_{t-1} and intersection_rnn its output y (input width) in the state:
    stacked over layers of other input widths, the state parts differ per layer and cannot
    be torch's (D*num_layers, N, n) tensors. That failed in forward with a raw torch.cat /
    matmul shape error; now the constructor says why in one line. Where the widths agree
    (num_layers=1, or input_size = the later layers' input width) it runs."""
    for cell, kw in (("tgru", dict(num_layers=2)), ("tlstm", dict(num_layers=2)),
                     ("intersection_rnn", dict(num_layers=2, bidirectional=True))):
        with pytest.raises(ValueError, match=rf"cell '{cell}' keeps state of its input's "
                                             r"width.*use num_layers=1"):
            znn.RNN(4, 6, cell=cell, **kw)
    x = torch.randn(5, 2, 6)
    for cell, kw in (("tgru", dict(num_layers=2)), ("tlstm", dict(bidirectional=True)),
                     ("intersection_rnn", dict(num_layers=2))):
        rnn = znn.RNN(6, 6, cell=cell, **kw)
        y, s = rnn(x)
        assert y.shape == (5, 2, 6 * (2 if kw.get("bidirectional") else 1))
        assert all(t.shape[:2] == (rnn.num_layers * (1 + rnn.bidirectional), 2)
                   for t in _flat(s))


def test_truncated_bptt_carries_detached_state():
    """Truncated BPTT: each chunk starts from the previous chunk's detached state; the
    outputs equal one pass over the whole sequence and gradients stop at chunk boundaries."""
    torch.manual_seed(0)
    rnn = znn.LSTM(3, 4, num_layers=2, batch_first=True).double()
    x = torch.randn(2, 12, 3, dtype=torch.float64)
    y_full, _ = rnn(x)
    state, ys = None, []
    for chunk in x.split(4, dim=1):
        chunk = chunk.clone().requires_grad_()
        y, state = rnn(chunk, state)
        y.sum().backward()
        state = tuple(s.detach() for s in state)
        ys.append(y.detach())
        assert chunk.grad is not None and state[0].grad_fn is None
    assert (torch.cat(ys, 1) - y_full).abs().max() < 1e-12


def test_bad_arguments():
    with pytest.raises(ValueError, match="cell must be one of"):
        znn.RNN(3, 4, cell="nope")
    with pytest.raises(ValueError, match="nonlinearity must be"):
        znn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="num_layers must be a positive int, got 0"):
        znn.RNN(3, 4, 0)
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\], got 2"):
        znn.LSTM(3, 4, dropout=2)
    rnn = znn.LSTM(3, 4, num_layers=2)
    with pytest.raises(ValueError, match="input must have 3 features"):
        rnn(torch.randn(5, 2, 4))
    with pytest.raises(ValueError, match=r"hx must have shape \(2, 2, 4\)"):
        rnn(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(TypeError, match="hx must be 2 tensor"):
        rnn(torch.randn(5, 2, 3), torch.zeros(2, 2, 4))


def test_state_dict_keys_are_torchs():
    for (ours_cls, torch_cls, kw), bidi in itertools.product(CASES, (False, True)):
        a = ours_cls(3, 4, 2, bidirectional=bidi, **kw).state_dict()
        b = torch_cls(3, 4, 2, bidirectional=bidi, **kw).state_dict()
        assert list(a) == list(b) or set(a) == set(b)
        assert all(a[k].shape == b[k].shape for k in a)


def test_every_cell_takes_an_empty_batch_as_torch_does():
    """torch.nn.RNN / LSTM / GRU take a batch of 0 sequences (an empty output); so does the
    drop-in with every cell (qrnn raised 'cannot reshape tensor of 0 elements' before)."""
    from rnnzoo.registry import CELLS
    assert torch.nn.RNN(6, 6, batch_first=True)(torch.randn(0, 5, 6))[0].shape == (0, 5, 6)
    for name in CELLS:
        model = znn.RNN(6, 6, cell=name, batch_first=True)
        x = torch.randn(0, 5, 6, requires_grad=True)
        y, _ = model(x)
        assert y.shape[:2] == (0, 5), name
        y.sum().backward()
        assert x.grad.shape == x.shape, name
