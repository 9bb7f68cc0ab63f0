"""LRU (Orvieto et al. 2023): ring initialisation and gamma normalisation."""

import math

import pytest
import torch

import rnnzoo


@pytest.mark.parametrize("r_min,r_max,max_phase", [(0.9, 0.999, 2 * math.pi), (0.0, 0.5, 0.3)])
def test_ring_initialisation(r_min, r_max, max_phase):
    torch.manual_seed(0)
    layer = rnnzoo.create("lru", d_model=8, d_state=4000, r_min=r_min, r_max=r_max,
                          max_phase=max_phase)
    lam = layer.eigenvalues(torch.float64)
    r, phase = lam.abs(), lam.angle() % (2 * math.pi)
    assert r.min() >= r_min - 1e-9 and r.max() <= r_max + 1e-9
    assert phase.max() <= max_phase + 1e-6
    # uniform on the ring by area: |lambda|^2 is uniform on [r_min^2, r_max^2]
    r2 = (r ** 2 - r_min ** 2) / (r_max ** 2 - r_min ** 2)
    assert abs(r2.mean().item() - 0.5) < 0.03 and abs((phase / max_phase).mean().item() - 0.5) < 0.03
    assert torch.allclose(layer.gamma_log.double().exp(), (1 - r ** 2).sqrt(), atol=1e-5)


def _white_noise_variances(layer):
    x = torch.randn(4, 6000, layer.d_model)
    with torch.no_grad():
        layer.D.zero_()
        y, _ = layer(x)
        lam, b = layer._coefficients(x)
        from rnnzoo.ops.scan import linear_scan
        hs, _ = linear_scan(lam.view(1, 1, -1), b)
    burn = 2000  # |lambda| <= 0.99 forgets the zero start within ~500 steps
    return hs[:, burn:].abs().pow(2).mean().item(), y[:, burn:].var().item()


def test_gamma_normalisation_gives_unit_variance_for_white_noise():
    torch.manual_seed(0)
    layer = rnnzoo.create("lru", d_model=64, d_state=128, r_min=0.5, r_max=0.99)
    state_var, out_var = _white_noise_variances(layer)
    assert 0.85 < state_var < 1.15 and 0.7 < out_var < 1.3
    with torch.no_grad():  # without gamma the variance is E 1/(1-|lambda|^2) >> 1
        layer.gamma_log.zero_()
    state_var, out_var = _white_noise_variances(layer)
    assert state_var > 3 and out_var > 3


def test_bad_options():
    with pytest.raises(ValueError, match="r_min < r_max"):
        rnnzoo.create("lru", d_model=4, r_min=0.9, r_max=0.5)
    with pytest.raises(ValueError, match="d_state must be a positive int, got 0"):
        rnnzoo.create("lru", d_model=4, d_state=0)
