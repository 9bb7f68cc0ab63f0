"""ops.finite.clean_inputs: marks None exactly when finite_inputs would change nothing."""

import pytest
import torch

from rnnzoo.ops.finite import clean_inputs, finite_inputs


def _inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 7, 3, 4, generator=g, dtype=dtype)
    k = torch.randn(2, 7, 3, 4, generator=g, dtype=dtype)
    gate = torch.randn(2, 7, 3, generator=g, dtype=dtype)
    return [q], [k, None, gate]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clean_inputs_passes_finite_tensors_through(dtype):
    read, write = _inputs(dtype)
    r, w, marks = clean_inputs(read, write)
    assert marks is None
    assert r[0] is read[0] and w[0] is write[0] and w[1] is None and w[2] is write[2]


@pytest.mark.parametrize("where,value", [("read", float("nan")), ("write", float("inf")),
                                         ("gate", float("-inf"))])
def test_clean_inputs_marks_like_finite_inputs(where, value):
    read, write = _inputs()
    t = {"read": read[0], "write": write[0], "gate": write[2]}[where]
    t[1, 4].view(-1)[0] = value
    r, w, marks = clean_inputs(read, write)
    r0, w0, want = finite_inputs(read, write)
    assert marks is not None
    assert torch.equal(marks.outputs, want.outputs) and torch.equal(marks.state, want.state)
    assert marks.outputs[1, 4] and not marks.outputs[0].any()
    assert all(torch.isfinite(x).all() for x in r + [x for x in w if x is not None])


def test_clean_inputs_whole_sum_overflow_marks_nothing():
    """Large finite entries whose total overflows float32 but no step's sum does: the
    marking path runs and finds no step to mark (outputs are what the clean input gives)."""
    read, write = _inputs()
    write[0][0, :, 0, 0] = 1e38
    r, w, marks = clean_inputs(read, write)
    assert marks is not None and not marks.outputs.any() and not marks.state.any()
    assert torch.equal(w[0], write[0])
