"""ops.native.cells: every classic cell's C loop (forward and backward) against the Python
hand-written backward (cells/manual.py, RNNZOO_NATIVE=0) and the reference loop, in float64
to 1e-10: outputs, final states, and the gradients of the input, the initial state and every
parameter; at 1 and 2 threads, at sizes that take every path of the C matrix product (row
blocks of 4 and single rows, full and partial vector blocks, scalar tails); float32 close;
no-grad runs; the fallbacks (RNNZOO_NATIVE=0, a compiler that fails, meta tensors)."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from _cells import perturbed

from rnnzoo.ops import native
from rnnzoo.ops.native import cells as native_cells
from rnnzoo.registry import CELLS

# (cell, options): every cell with a C loop, and the options that change its kernel
LSTM_CASES = [  # lstm_cells.c, slstm.c, normalized.c, para.c
    ("lstm", {"peepholes": True}), ("peephole_lstm", {}), ("peephole_lstm", {"bias": False}),
    ("res_lstm", {}), ("wmclstm", {}), ("wmclstm", {"bias": False}),
    ("multiplicative_lstm", {}), ("multiplicative_lstm", {"bias": False}), ("mclstm", {}),
    ("slstm", {"num_heads": 2}), ("slstm", {"num_heads": 1}), ("ln_lstm", {}), ("ln_gru", {}),
    ("paralstm", {}), ("paragru", {}), ("cifg_lstm", {}), ("original_lstm", {}),
    ("original_lstm", {"bias": False}), ("janet", {}), ("janet", {"beta": 0.3}),
]
MORE_CASES = [  # ode_cells.c, searched_cells.c, highway_cells.c, gated_cells.c, simple_gated.c,
    # plain_cells.c
    ("ltc", {}), ("ltc", {"ode_unfolds": 2, "dt": 0.7}),
    ("cfc", {}), ("cfc", {"backbone_units": 0}), ("cfc", {"backbone_units": 7, "dt": 0.5}),
    ("lem", {}), ("lem", {"dt": 0.6}),
    ("nas", {}), ("nas", {"bias": False}), ("mut1", {}), ("mut2", {}), ("mut3", {}),
    ("rhn", {}), ("rhn", {"depth": 1, "coupled": False}), ("intersection_rnn", {}),
    ("gru", {}), ("gru", {"bias": False}), ("gru_v3", {}), ("taugru", {}), ("taugru", {"delay": 3, "bias": False}),
    ("miru1", {}), ("miru1", {"update_coefficient": 0.2, "bias": False}),
    ("sgu", {}), ("sgu", {"bias": False}), ("dsgu", {}), ("scrn", {}),
    ("scrn", {"context_size": 3}),
    # simple_gated.c
    ("cfn", {}), ("cfn", {"bias": False}), ("ran", {}), ("ran", {"nonlinearity": "identity"}),
    ("state_regularized_rnn", {}), ("state_regularized_rnn", {"assignment": "hard"}),
    ("state_regularized_rnn", {"num_centroids": 3, "temperature": 0.5}),
    # plain_cells.c
    ("ugrnn", {}), ("ugrnn", {"bias": False}), ("ligru", {}), ("ligru", {"nonlinearity": "tanh"}),
    ("gated_antisymmetric_rnn", {}), ("gated_antisymmetric_rnn", {"epsilon": 0.7, "gamma": 0.3}),
    ("nbr", {}), ("br", {}), ("br", {"bias": False}), ("fastgrnn", {}),
    ("fastgrnn", {"gate_nonlinearity": "tanh", "update_nonlinearity": "relu"}),
    ("fastgrnn", {"update_nonlinearity": "sigmoid"}),
    ("mgu", {}), ("star", {}), ("sgrn", {}), ("lightru", {}), ("lightru", {"bias": False}),
    ("atr", {}), ("atr", {"bias": False}), ("cornn", {}), ("cornn", {"implicit_damping": False}),
]
CASES = LSTM_CASES + MORE_CASES
# (cell, options, (B, T, D, H)): at 1 thread row blocks of 4 and single rows, at 2 threads
# each its own rows; H = 4, 20 and 21 (and their multiples) take full and partial vector
# blocks and scalar tails
RUNS = ([(n, o, size) for n, o in LSTM_CASES for size in [(3, 5, 3, 4), (6, 4, 5, 20)]]
        + [(n, o, (5, 3, 3, 21)) for n, o in MORE_CASES])


def _ids(cases):
    return [f"{c[0]}-{c[1]}" + (f"-{c[2]}" if len(c) > 2 else "") for c in cases]


@pytest.fixture
def calls(monkeypatch):
    n = []
    real = native_cells._NativeLoop.apply
    monkeypatch.setattr(native_cells._NativeLoop, "apply", lambda *a: n.append(1) or real(*a))
    return n


def _cell(name, options, D, H, dtype=torch.float64):
    return perturbed(name, input_size=D, hidden_size=H, dtype=dtype, **options)


def _inputs(cell, B, T, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, T, cell.input_size, generator=g, dtype=dtype)
    s0 = tuple(torch.randn(B, n, generator=g, dtype=dtype) for n in cell.state_sizes)
    if isinstance(cell, CELLS["slstm"].cls):  # a normaliser state n > 0, as the cell keeps
        s0 = s0[:2] + (s0[2].abs() + 1,) + s0[3:]
    return x, s0


def _run(cell, x, s0, fused, native_on, monkeypatch):
    monkeypatch.setenv("RNNZOO_NATIVE", "1" if native_on else "0")
    xs = [x.clone().requires_grad_()] + [s.clone().requires_grad_() for s in s0]
    y, s = cell(xs[0], tuple(xs[1:]), fused=fused)
    g = torch.Generator().manual_seed(7)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in (y, *s))
    return [y, *s] + list(torch.autograd.grad(loss, xs + list(cell.parameters()),
                                                 allow_unused=True, materialize_grads=True))


def _close(got, want, tol):
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert (g - w).abs().max().item() <= tol * (1 + w.abs().max().item())


def test_every_native_cell_is_covered():
    """every cell with a C loop has a case above, and each case names one (options the C
    loop cannot take fall back: beyond the driver's 8 matrices or states)"""
    have = {n for n, info in CELLS.items() if hasattr(info.cls, "manual_native")
            and _cell(n, {}, 3, 4).manual_native() is not None}
    assert have == {n for n, _ in CASES}
    for name, options in CASES:
        assert _cell(name, options, 3, 4).manual_native() is not None, name
    assert _cell("ltc", {"ode_unfolds": 9}, 3, 4).manual_native() is None
    assert _cell("rhn", {"depth": 9}, 3, 4).manual_native() is None
    assert _cell("taugru", {"delay": 8}, 3, 4).manual_native() is None
    assert _cell("state_regularized_rnn", {"base": "mgu"}, 3, 4).manual_native() is None


@pytest.mark.parametrize("name,options,size", RUNS, ids=_ids(RUNS))
def test_native_cell_equals_manual_and_reference(name, options, size, calls, monkeypatch):
    B, T, D, H = size
    cell = _cell(name, options, D, H)
    x, s0 = _inputs(cell, B, T)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        got = _run(cell, x, s0, True, True, monkeypatch)
        assert len(calls) == 1, "the fused mode did not run the C loop"
        manual = _run(cell, x, s0, True, False, monkeypatch)
        ref = _run(cell, x, s0, False, True, monkeypatch)
        torch.set_num_threads(2)  # two threads, each its own rows (B = 3: 1 + 2; 5: 2 + 3)
        two = _run(cell, x, s0, True, True, monkeypatch)
    finally:
        torch.set_num_threads(old)
    assert len(calls) == 2
    _close(got, manual, 1e-10)
    _close(got, ref, 1e-10)
    _close(two, got, 1e-13)


@pytest.mark.parametrize("name,options", CASES, ids=_ids(CASES))
def test_native_cell_float32_and_no_grad(name, options, calls, monkeypatch):
    cell = _cell(name, options, 5, 20, torch.float32)
    x, s0 = _inputs(cell, 6, 9, torch.float32)
    got = _run(cell, x, s0, True, True, monkeypatch)
    _close(got, _run(cell, x, s0, True, False, monkeypatch), 1e-5)
    monkeypatch.setenv("RNNZOO_NATIVE", "1")
    with torch.no_grad():  # nothing kept per step: the C loop rewrites one step's buffers
        y, s = cell(x, s0, fused=True)
    assert len(calls) == 2
    _close([y, *s], got[:1 + len(s)], 1e-6)


def test_native_cells_fall_back(calls, monkeypatch, tmp_path):
    cell = _cell("peephole_lstm", {}, 3, 4)
    x, s0 = _inputs(cell, 2, 3)
    want = _run(cell, x, s0, True, False, monkeypatch)  # RNNZOO_NATIVE=0: the Python loop
    assert not calls
    monkeypatch.setattr(native, "_libs", {})
    monkeypatch.setenv("RNNZOO_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")
    with pytest.warns(RuntimeWarning, match=r"cannot build lstm_cells\.c \(false exited 1"):
        got = _run(cell, x, s0, True, True, monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once
        again = _run(cell, x, s0, True, True, monkeypatch)
    assert not calls and os.listdir(tmp_path) == []
    for g, a, w in zip(got, again, want):
        assert torch.equal(g, w) and torch.equal(a, w)
    meta = _cell("peephole_lstm", {}, 3, 4).to("meta")
    monkeypatch.setenv("RNNZOO_NATIVE", "1")
    y, _ = meta(x.to("meta"), tuple(s.to("meta") for s in s0), fused=True)
    assert y.shape == (2, 3, 4) and not calls


def test_native_cell_empty_batch(calls, monkeypatch):
    cell = _cell("wmclstm", {}, 3, 4)
    x, s0 = _inputs(cell, 0, 3)
    got = _run(cell, x, s0, True, True, monkeypatch)
    assert len(calls) == 1
    want = _run(cell, x, s0, True, False, monkeypatch)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and (g.numel() == 0 or torch.equal(g, w))


def test_affine_with_a_strided_gradient():
    """cells.parts.affine (the oneDNN projection) under torch.cat, whose backward hands it a
    strided slice: gradients equal F.linear's, and biases that are None are skipped."""
    from rnnzoo.cells.parts import affine
    x = torch.randn(4, 9, 6, requires_grad=True)
    w, b1, b2 = (torch.randn(10, 6, requires_grad=True), torch.randn(10, requires_grad=True),
                 torch.randn(10, requires_grad=True))
    dy = torch.randn(4, 9, 16)
    ours = torch.autograd.grad((torch.cat([affine(x, w, b1, None, b2), x], -1) * dy).sum(),
                               (x, w, b1, b2))
    ref = torch.autograd.grad((torch.cat([torch.nn.functional.linear(x, w, b1 + b2), x], -1)
                               * dy).sum(), (x, w, b1, b2))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
