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
