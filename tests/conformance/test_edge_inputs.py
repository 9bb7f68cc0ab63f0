"""Edge inputs of the layer protocol (docs/design.md section 4) on every registered layer:
each is refused with one clear error naming what was wrong, or handled, never a raw error
from deep inside a kernel."""

from __future__ import annotations

import pytest
import torch
from test_conformance import NAMES, make


@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_is_refused(name):
    """Batch 0 in every mode, step and lengths: one ValueError (60 layers raised
    IndexError / RuntimeError from reshapes, FFTs or reductions before)."""
    layer = make(name, torch.float32)
    d = layer.d_model
    for mode in ("auto", *layer.modes):
        with pytest.raises(ValueError, match=r"x must hold at least one sequence .*\(0, 5, "):
            layer(torch.randn(0, 5, d), mode=mode)
    with pytest.raises(ValueError, match=r"x must hold at least one sequence"):
        layer(torch.randn(0, 5, d), lengths=torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x_t must hold at least one sequence"):
        layer.step(torch.randn(0, d))
