"""ops.native.cells for the classic cells beyond the LSTM family (ode_cells.c,
searched_cells.c, highway_cells.c, gated_cells.c): each C loop against the Python
hand-written backward (RNNZOO_NATIVE=0) and the reference loop in float64 to 1e-10
(outputs, final states, the gradients of the input, the initial state and every parameter),
at 1 and 2 threads and at sizes that take every path of the C matrix product; float32
close; no-grad runs (one step's buffers)."""

from __future__ import annotations

import pytest
import test_native_cells
import torch
from test_native_cells import _cell, _close, _inputs, _run, calls  # noqa: F401 (fixture)

from rnnzoo.registry import CELLS

# (cell, options): every cell with a C loop here, and the options that change its kernel
CASES = [
    ("ltc", {}), ("ltc", {"ode_unfolds": 2, "dt": 0.7}),
    ("cfc", {}), ("cfc", {"backbone_units": 0}), ("cfc", {"backbone_units": 7, "dt": 0.5}),
    ("lem", {}), ("lem", {"dt": 0.6}),
    ("nas", {}), ("nas", {"bias": False}), ("mut1", {}), ("mut2", {}), ("mut3", {}),
    ("rhn", {}), ("rhn", {"depth": 1, "coupled": False}), ("intersection_rnn", {}),
    ("gru_v3", {}), ("taugru", {}), ("taugru", {"delay": 3, "bias": False}),
    ("sgu", {}), ("sgu", {"bias": False}), ("dsgu", {}), ("scrn", {}), ("scrn", {"context_size": 3}),
]
# B, T, D, H: at 1 thread rows in a block of 4 and one alone, at 2 threads 2 + 3; H = 21 (and
# its multiples) takes full and partial vector blocks and a scalar tail in float64
SIZES = [(5, 3, 3, 21)]


def _ids(cases):
    return [f"{n}-{o}" for n, o in cases]


def test_every_native_cell_here_is_covered():
    """every cell with a C loop is tested here or in test_native_cells; each case above
    names one (options the C loop cannot take fall back: beyond the driver's 8 matrices or
    states)"""
    have = {n for n, info in CELLS.items() if hasattr(info.cls, "manual_native")
            and _cell(n, {}, 3, 4).manual_native() is not None}
    assert have == {n for n, _ in CASES + test_native_cells.CASES}
    for name, options in CASES:
        assert _cell(name, options, 3, 4).manual_native() is not None, name
    assert _cell("ltc", {"ode_unfolds": 9}, 3, 4).manual_native() is None
    assert _cell("rhn", {"depth": 9}, 3, 4).manual_native() is None
    assert _cell("taugru", {"delay": 8}, 3, 4).manual_native() is None


@pytest.mark.parametrize("B,T,D,H", SIZES)
@pytest.mark.parametrize("name,options", CASES, ids=_ids(CASES))
def test_native_cell_more_equals_manual_and_reference(name, options, B, T, D, H, calls,  # noqa: F811
                                                      monkeypatch):
    cell = _cell(name, options, D, H)
    x, s0 = _inputs(cell, B, T)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        got = _run(cell, x, s0, True, True, monkeypatch)
        assert len(calls) == 1, "the fused mode did not run the C loop"
        manual = _run(cell, x, s0, True, False, monkeypatch)
        ref = _run(cell, x, s0, False, True, monkeypatch)
        torch.set_num_threads(2)  # two threads, each its own rows
        two = _run(cell, x, s0, True, True, monkeypatch)
    finally:
        torch.set_num_threads(old)
    assert len(calls) == 2
    _close(got, manual, 1e-10)
    _close(got, ref, 1e-10)
    _close(two, got, 1e-13)


@pytest.mark.parametrize("name,options", CASES, ids=_ids(CASES))
def test_native_cell_more_float32_and_no_grad(name, options, calls, monkeypatch):  # noqa: F811
    cell = _cell(name, options, 5, 20, torch.float32)
    x, s0 = _inputs(cell, 6, 9, torch.float32)
    got = _run(cell, x, s0, True, True, monkeypatch)
    _close(got, _run(cell, x, s0, True, False, monkeypatch), 1e-5)
    monkeypatch.setenv("RNNZOO_NATIVE", "1")
    with torch.no_grad():
        y, s = cell(x, s0, fused=True)
    assert len(calls) == 2
    _close([y, *s], got[:1 + len(s)], 1e-6)
