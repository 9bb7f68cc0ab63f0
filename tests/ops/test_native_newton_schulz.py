"""ops.native.newton_schulz under create_graph=True: _NewtonSchulz's `twice` (the Gram form in
PyTorch replayed over the saved input) gives the second derivative (its forward and first
order against the PyTorch form: tests/layers/test_atlas.py)."""

from __future__ import annotations

import pytest
import torch
from _native_check import threads
from _second_order import second_order

from rnnzoo.ops.atlas import MUON
from rnnzoo.ops.native import newton_schulz as native_ns


@pytest.mark.parametrize("shape", [(3, 2, 5), (2, 3, 7)])
def test_newton_schulz_second_derivative(shape):
    """float64, X a transposed view: against a central difference and the PyTorch form's
    own double backward."""
    lib = native_ns.load()
    if lib is None:
        pytest.skip("newton_schulz does not build")
    n, s, l_ = shape
    X = (0.5 * torch.randn(n, l_, s, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(1))).requires_grad_()
    coeffs = tuple(float(c) for c in MUON)

    def native(X):
        return native_ns.newton_schulz(lib, X.transpose(1, 2), 3, coeffs, 1e-7)

    def plain(X):
        return native_ns._torch_newton_schulz(X.transpose(1, 2), 3, coeffs, 1e-7)

    torch.testing.assert_close(native(X), plain(X), rtol=1e-12, atol=1e-12)
    with threads(2):
        second_order(native, [X], plain, eps=1e-6, tol=1e-6)
