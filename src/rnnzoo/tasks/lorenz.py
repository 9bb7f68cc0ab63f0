"""Chaotic trajectories generated offline, for forecasting and dynamical-systems
reconstruction: Lorenz-63 (Lorenz 1963) and Lorenz-96 (Lorenz 1996).

    Lorenz-63:  x' = sigma (y - x),  y' = x (rho - z) - y,  z' = x y - beta z
                (sigma, rho, beta) = (10, 28, 8/3)
    Lorenz-96:  x_i' = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F   (indices mod dim), F = 8

integrated by classical fourth-order Runge-Kutta with step dt, from a seeded random start,
after a discarded transient. The series is z-scored with its training part's statistics;
the last `test_fraction` of it is the test part. A batch is `train_length` consecutive
states (inputs) and each one's successor (targets, every step scored).

`state_space_divergence` is the geometric measure of reconstructions (Koppe et al. 2019;
Hess et al. 2023): the Kullback-Leibler divergence between the occupation histograms of
the true and the generated trajectory, `bins` per dimension over the true one's range.
"""

from __future__ import annotations

import numpy as np
import torch

from rnnzoo.checks import int_in, positive, real
from rnnzoo.tasks.base import Batch, Task, task


def lorenz63_field(x: np.ndarray, sigma=10.0, rho=28.0, beta=8.0 / 3.0) -> np.ndarray:
    """dx/dt of Lorenz-63 at x (3,)."""
    a, b, c = x.tolist()
    return np.array([sigma * (b - a), a * (rho - c) - b, a * b - beta * c])


def lorenz96_field(x: np.ndarray, forcing=8.0) -> np.ndarray:
    """dx/dt of Lorenz-96 at x (dim,)."""
    i = np.arange(len(x))
    return (x[(i + 1) % len(x)] - x[i - 2]) * x[i - 1] - x + forcing


def rk4(field, x0: np.ndarray, dt: float, steps: int) -> np.ndarray:
    """(steps + 1, N) states from x0 (N,) by classical Runge-Kutta of order 4."""
    out = np.empty((steps + 1, len(x0)))
    out[0] = x = np.asarray(x0, dtype=np.float64)
    h = 0.5 * dt
    for t in range(steps):
        k1 = field(x)
        k2 = field(x + h * k1)
        k3 = field(x + h * k2)
        k4 = field(x + dt * k3)
        out[t + 1] = x = x + dt / 6 * (k1 + 2 * (k2 + k3) + k4)
    return out


def trajectory(system: str, steps: int, dt: float = 0.01, seed: int = 0, dim: int = 10,
               transient: int = 1000) -> np.ndarray:
    """(steps, N) states of "lorenz63" (N = 3) or "lorenz96" (N = dim) after `transient`."""
    rng = np.random.default_rng(seed)
    if system == "lorenz63":
        x0, field = rng.normal(0, 1, 3) + np.array([0.0, 0.0, 25.0]), lorenz63_field
    else:
        x0, field = 8.0 + rng.normal(0, 0.5, dim), lorenz96_field
    return rk4(field, x0, dt, transient + steps - 1)[transient:]


def state_space_divergence(true: np.ndarray, generated: np.ndarray, bins: int = 30,
                           eps: float = 1e-7) -> float:
    """KL(p_true || p_generated) of occupation histograms (T, N) on a grid of `bins` per
    dimension spanning the true trajectory's range; eps smooths empty bins. Generated points
    outside the grid (or not finite) count in no bin but in the total: a trajectory that
    leaves the attractor's box diverges from it."""
    lo, hi = true.min(0), true.max(0)
    edges = [np.linspace(a, b, bins + 1) for a, b in zip(lo, hi)]
    p = np.histogramdd(true, bins=edges)[0].ravel()
    q = np.histogramdd(generated[np.isfinite(generated).all(1)], bins=edges)[0].ravel()
    p, q = p / p.sum(), (q + eps) / (len(generated) + eps * q.size)
    keep = p > 0
    return float((p[keep] * np.log(p[keep] / q[keep])).sum())


class _Lorenz(Task):
    kind, metric, higher_is_better = "regress", "mse", False
    system = "?"
    option_help = {
        "dt": "integration step (RK4) and sampling interval",
        "series_length": "states generated (after a discarded transient of 1000)",
        "train_length": "consecutive states per training window",
        "test_fraction": "the last fraction of the series, held out for testing",
        "seed": "seed of the random initial state",
    }

    def __init__(self, dt: float = 0.01, series_length: int = 20000, train_length: int = 200,
                 test_fraction: float = 0.2, seed: int = 0):
        self.dt = positive("dt", dt)
        self.series_length = int_in("series_length", series_length, lo=100)
        self.train_length = int_in("train_length", train_length, lo=2)
        self.test_fraction = real("test_fraction", test_fraction, 0, 1, lo_open=True,
                                  hi_open=True)
        self.seed = int_in("seed", seed, lo=0)
        series = trajectory(self.system, self.series_length, self.dt, self.seed,
                            getattr(self, "dim", 3))
        n_test = int(round(self.series_length * self.test_fraction))
        if min(n_test, self.series_length - n_test) <= self.train_length:
            raise ValueError(f"series_length {series_length} with test_fraction {test_fraction}"
                             f" leaves a part shorter than train_length + 1")
        train = series[:-n_test]
        self.mean, self.std = train.mean(0), train.std(0)
        scaled = ((series - self.mean) / self.std).astype(np.float32)
        self.parts = {"train": scaled[:-n_test], "test": scaled[-n_test:]}
        self.input_dim = self.output_dim = series.shape[1]
        self.test_lengths = (self.train_length,)

    def options(self):
        return dict(dt=self.dt, series_length=self.series_length, train_length=self.train_length,
                    test_fraction=self.test_fraction, seed=self.seed)

    def sample(self, rng, batch_size, length=None, split="train"):
        T = self.train_length if length is None else int_in("length", length, lo=1)
        part = self.parts["test" if split == "test" else "train"]
        if T + 1 > len(part):
            raise ValueError(f"length {T} exceeds the {split} part ({len(part)} states)")
        starts = rng.integers(0, len(part) - T, size=batch_size)
        idx = starts[:, None] + np.arange(T + 1)
        windows = torch.from_numpy(part[idx])
        return Batch(windows[:, :-1], windows[:, 1:],
                     mask=torch.ones(batch_size, T, dtype=torch.bool))


@task("lorenz63", family="dynamics")
class Lorenz63(_Lorenz):
    """Lorenz-63, 3 variables; predict the next state."""

    system = "lorenz63"

    def __init__(self, dt: float = 0.01, series_length: int = 20000, train_length: int = 200,
                 test_fraction: float = 0.2, seed: int = 0):
        super().__init__(dt, series_length, train_length, test_fraction, seed)


@task("lorenz96", family="dynamics")
class Lorenz96(_Lorenz):
    """Lorenz-96 with `dim` variables and forcing 8; predict the next state."""

    system = "lorenz96"
    option_help = dict(_Lorenz.option_help, dim="number of variables on the ring (>= 4)")

    def __init__(self, dim: int = 10, dt: float = 0.01, series_length: int = 20000,
                 train_length: int = 200, test_fraction: float = 0.2, seed: int = 0):
        self.dim = int_in("dim", dim, lo=4)
        super().__init__(dt, series_length, train_length, test_fraction, seed)

    def options(self):
        return dict(super().options(), dim=self.dim)
