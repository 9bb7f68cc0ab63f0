"""Lorenz-63 / Lorenz-96: the generated series against an independent integration (the
equations written out again, a Runge-Kutta of order 2 at a hundredth of the step), the
batches as windows of the z-scored series, and the state-space divergence."""

import numpy as np
import pytest

from rnnzoo.tasks import get_task
from rnnzoo.tasks.lorenz import rk4, state_space_divergence, trajectory


def l63(v):
    x, y, z = v
    return np.array([10 * (y - x), x * (28 - z) - y, x * y - 8 / 3 * z])


def l96(v, F=8.0):
    n = len(v)
    return np.array([(v[(i + 1) % n] - v[(i - 2) % n]) * v[(i - 1) % n] - v[i] + F
                     for i in range(n)])


def midpoint(f, x, dt, steps, sub=100):
    """An independent integrator: explicit midpoint at dt / sub."""
    h = dt / sub
    out = [x]
    for _ in range(steps):
        for _ in range(sub):
            x = x + h * f(x + 0.5 * h * f(x))
        out.append(x)
    return np.array(out)


@pytest.mark.parametrize("system,field,n", [("lorenz63", l63, 3), ("lorenz96", l96, 6)])
def test_series_follows_the_equations(system, field, n):
    series = trajectory(system, 60, dt=0.01, seed=3, dim=n, transient=10)
    assert series.shape == (60, n)
    ref = midpoint(field, series[0], 0.01, 59)
    err = np.abs(ref - series).max() / np.abs(series).max()
    assert err < 1e-4, err  # the midpoint reference's own error, O((dt / sub)^2)
    # and it is fourth order: halving the step changes a 50-step run by ~1/16 as much
    x0 = series[0]
    fine = rk4(lambda v: field(v), x0, 0.0025, 200)[-1]
    e1 = np.abs(rk4(lambda v: field(v), x0, 0.01, 50)[-1] - fine).max()
    e2 = np.abs(rk4(lambda v: field(v), x0, 0.005, 100)[-1] - fine).max()
    assert 10 < e1 / e2 < 20


def test_lorenz63_stays_on_the_attractor_and_is_seeded():
    a = trajectory("lorenz63", 3000, seed=1)
    assert np.array_equal(a, trajectory("lorenz63", 3000, seed=1))
    assert not np.array_equal(a, trajectory("lorenz63", 3000, seed=2))
    assert (a[:, 2] > 0).all() and np.abs(a[:, :2]).max() < 30 and a[:, 2].max() < 55
    assert (a[:, 0] > 5).any() and (a[:, 0] < -5).any()  # visits both wings


def test_batches_are_consecutive_windows_of_the_zscored_series():
    task = get_task("lorenz63", series_length=2000, train_length=30, test_fraction=0.25)
    raw = trajectory("lorenz63", 2000)
    train = raw[:1500]
    scaled = (raw - train.mean(0)) / train.std(0)
    b = task.sample(np.random.default_rng(0), 8)
    assert b.inputs.shape == (8, 30, 3) and b.targets.shape == (8, 30, 3) and b.mask.all()
    assert np.allclose(b.inputs[:, 1:], b.targets[:, :-1])
    for row in b.inputs.numpy():
        hit = np.flatnonzero(np.abs(scaled[:1500, 0] - row[0, 0]) < 1e-5)
        assert any(np.allclose(scaled[s:s + 30], row, atol=1e-5) for s in hit)
    t = task.sample(np.random.default_rng(0), 4, split="test")
    for row in t.inputs.numpy():
        hit = np.flatnonzero(np.abs(scaled[1500:, 0] - row[0, 0]) < 1e-5)
        assert any(np.allclose(scaled[1500 + s:1530 + s], row, atol=1e-5) for s in hit)
    assert get_task("lorenz96", dim=5, series_length=500, train_length=20).input_dim == 5


def test_state_space_divergence():
    a = trajectory("lorenz63", 4000, seed=0)
    b = trajectory("lorenz63", 4000, seed=5)  # the same attractor, another orbit
    same = state_space_divergence(a, b, bins=10)
    fixed_point = np.tile(a[:1], (4000, 1))
    gone = np.full_like(a, np.nan)
    assert 0 <= same < 0.5 < state_space_divergence(a, fixed_point, bins=10)
    assert state_space_divergence(a, gone, bins=10) > 10
    assert state_space_divergence(a, a, bins=10) < 1e-6


def test_options_are_checked():
    with pytest.raises(ValueError, match="dt"):
        get_task("lorenz63", dt=0.0)
    with pytest.raises(ValueError, match="shorter than train_length"):
        get_task("lorenz63", series_length=300, train_length=200)
    with pytest.raises(ValueError, match="dim"):
        get_task("lorenz96", dim=3)


# -- the reconstruction measures (tasks/dsr_metrics.py) --------------------------------------

def test_gmm_state_space_divergence_against_closed_forms():
    from rnnzoo.tasks.dsr_metrics import state_space_divergence_gmm as dstsp
    # one point each: KL of two Gaussians of the same sigma = |mu1 - mu2|^2 / (2 sigma^2)
    a, b = np.array([[0.0, 1.0, 2.0]]), np.array([[1.0, -1.0, 2.5]])
    exact = ((a - b) ** 2).sum() / (2 * 0.7 ** 2)
    assert abs(dstsp(a, b, sigma=0.7, samples=200_000) - exact) < 0.03 * exact
    # two-point mixtures in 1-D: KL by quadrature on a fine grid
    p_pts, q_pts = np.array([[-1.0], [2.0]]), np.array([[0.5], [3.0]])
    x = np.linspace(-12, 14, 200_001)

    def mix(pts):
        return np.mean([np.exp(-(x - c) ** 2 / 2) / np.sqrt(2 * np.pi) for c in pts[:, 0]], 0)
    p, q = mix(p_pts), mix(q_pts)
    kl = np.sum(p * np.log(p / q)) * (x[1] - x[0])
    assert abs(dstsp(p_pts, q_pts, sigma=1.0, samples=200_000) - kl) < 0.03 * kl
    t = trajectory("lorenz63", 500)
    assert dstsp(t, t) == 0.0
    assert dstsp(t, np.full_like(t, np.nan)) == float("inf")
    with pytest.raises(ValueError, match="variables"):
        dstsp(t, t[:, :2])


def test_power_spectrum_distance_against_a_direct_dft():
    from rnnzoo.tasks.dsr_metrics import power_spectrum_distance
    rng = np.random.default_rng(0)
    T, sigma = 64, 1.5
    a, b = rng.normal(size=(T, 2)).cumsum(0), rng.normal(size=(T, 2))

    def spectrum(x):  # the DFT as a sum, then the Gaussian smoothing as a loop
        x = x - x.mean()
        n = np.arange(T)
        power = np.array([abs(np.sum(x * np.exp(-2j * np.pi * k * n / T))) ** 2
                          for k in range(T // 2 + 1)])
        half = int(np.ceil(4 * sigma))
        w = {j: np.exp(-0.5 * (j / sigma) ** 2) for j in range(-half, half + 1)}
        norm = sum(w.values())
        smooth = np.array([sum(w[j] * power[k - j] for j in w if 0 <= k - j < len(power))
                           for k in range(len(power))]) / norm
        return smooth / smooth.sum()
    ref = np.mean([np.sqrt(1 - np.sum(np.sqrt(spectrum(a[:, i]) * spectrum(b[:, i]))))
                   for i in range(2)])
    assert abs(power_spectrum_distance(a, b, smoothing=sigma) - ref) < 1e-10
    t = np.arange(2000) * 0.05
    slow, fast = np.sin(t)[:, None], np.sin(7 * t)[:, None]
    assert power_spectrum_distance(slow, np.sin(t + 1.0)[:, None]) < 0.05
    assert power_spectrum_distance(slow, fast) > 0.95
    assert power_spectrum_distance(slow, np.full_like(slow, np.inf)) == 1.0
    with pytest.raises(ValueError, match="same length"):
        power_spectrum_distance(slow, slow[:-1])
