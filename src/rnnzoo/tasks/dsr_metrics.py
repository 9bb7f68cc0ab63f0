"""Measures of a dynamical-systems reconstruction: does the model's own (free-running)
trajectory reproduce the attractor's geometry and its temporal structure?

State-space divergence, the Gaussian-mixture reading (Koppe, Toutounji, Kirsch, Lis &
Durstewitz 2019, PLoS Comput. Biol.; used by Hess et al. 2023, arXiv:2306.04406, and
Brenner et al. 2024, arXiv:2410.14240, for high-dimensional systems): each trajectory
x_1..x_T (T, N) is smoothed into the occupation measure

    p(x) = 1/T sum_t N(x; x_t, sigma^2 I),

and D_stsp = KL(p_true || p_gen) = E_{x ~ p_true}[log p_true(x) - log p_gen(x)], estimated
by Monte Carlo from `samples` draws of p_true (seeded). The binned reading (a histogram on
a grid over the true trajectory's range) is `rnnzoo.tasks.lorenz.state_space_divergence`.

Power-spectrum distance (Mikhaeil, Monfared & Durstewitz 2022, NeurIPS; Hess et al. 2023):
per observed variable, the power spectrum |FFT(x_i - mean)|^2 of each trajectory, smoothed
by a Gaussian kernel of width `smoothing` frequency bins, cut to the first `cutoff` bins and
normalised to sum one (f, g), then the Hellinger distance

    H(f, g) = sqrt(1 - sum_w sqrt(f(w) g(w)))   in [0, 1],

D_H = the mean of H over the variables. Both trajectories must have the same length.
"""

from __future__ import annotations

import numpy as np

from rnnzoo.checks import int_in, positive


def _trajectory(name: str, x, n: int | None = None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name} must be a trajectory (T, N) with T >= 1, got shape {x.shape}")
    if n is not None and x.shape[1] != n:
        raise ValueError(f"{name} has {x.shape[1]} variables, the true trajectory {n}")
    return x


def _log_mixture(points: np.ndarray, centres: np.ndarray, sigma: float) -> np.ndarray:
    """log (1/T sum_t N(points_i; centres_t, sigma^2 I)) for each point (S,)."""
    N = points.shape[1]
    d2 = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    e = -d2 / (2 * sigma ** 2)
    top = e.max(1)
    return (top + np.log(np.exp(e - top[:, None]).sum(1)) - np.log(len(centres))
            - 0.5 * N * np.log(2 * np.pi * sigma ** 2))


def state_space_divergence_gmm(true, generated, sigma: float = 1.0, samples: int = 1000,
                               seed: int = 0, max_points: int = 2000) -> float:
    """KL(p_true || p_gen) of the Gaussian-smoothed occupation measures (module docstring).

    true (T, N), generated (T', N); `sigma` in the data's units (1 suits z-scored data);
    each trajectory is thinned to at most `max_points` evenly spaced states. A generated
    trajectory that is not finite anywhere is as far as it gets: inf."""
    true = _trajectory("true", true)
    generated = _trajectory("generated", generated, true.shape[1])
    sigma = positive("sigma", sigma)
    int_in("samples", samples, lo=1)
    int_in("max_points", max_points, lo=1)
    if not np.isfinite(generated).all():
        return float("inf")
    true, generated = (x[np.linspace(0, len(x) - 1, min(len(x), max_points)).round().astype(int)]
                       for x in (true, generated))
    rng = np.random.default_rng(seed)
    x = true[rng.integers(0, len(true), samples)] + sigma * rng.standard_normal(
        (samples, true.shape[1]))
    return float(np.mean(_log_mixture(x, true, sigma) - _log_mixture(x, generated, sigma)))


def power_spectra(x, smoothing: float = 2.0, cutoff: int | None = None) -> np.ndarray:
    """(N, F) normalised, Gaussian-smoothed power spectra of a trajectory (T, N), F the
    first `cutoff` frequency bins (default all T // 2 + 1)."""
    x = _trajectory("trajectory", x)
    spec = np.abs(np.fft.rfft(x - x.mean(0), axis=0).T) ** 2
    if smoothing > 0:
        half = int(np.ceil(4 * smoothing))
        k = np.exp(-0.5 * (np.arange(-half, half + 1) / smoothing) ** 2)
        spec = np.stack([np.convolve(s, k / k.sum(), mode="same") for s in spec])
    spec = spec[:, :cutoff]
    total = spec.sum(1, keepdims=True)
    return np.divide(spec, total, out=np.full_like(spec, 1.0 / spec.shape[1]), where=total > 0)


def power_spectrum_distance(true, generated, smoothing: float = 2.0,
                            cutoff: int | None = None) -> float:
    """D_H: the mean over variables of the Hellinger distance between the smoothed power
    spectra (module docstring). true and generated: (T, N), the same T. Not finite: 1."""
    true = _trajectory("true", true)
    generated = _trajectory("generated", generated, true.shape[1])
    if len(generated) != len(true):
        raise ValueError(f"the trajectories must have the same length for their spectra, got "
                         f"{len(true)} and {len(generated)}")
    positive("smoothing", smoothing, allow_zero=True)
    if cutoff is not None:
        int_in("cutoff", cutoff, lo=1)
    if not np.isfinite(generated).all():
        return 1.0
    f, g = power_spectra(true, smoothing, cutoff), power_spectra(generated, smoothing, cutoff)
    bc = np.sqrt(f * g).sum(1)
    return float(np.sqrt(np.clip(1 - bc, 0, 1)).mean())


def reconstruction(generate, series, transient: int = 1000, sigma: float = 1.0,
                   bins: int = 30, smoothing: float = 2.0) -> dict[str, float]:
    """The free run's measures against a held-out series (T, N): `generate(x0 (1, N),
    steps)` -> (1, steps, N) runs the model from the series' first state for `transient`
    + T steps; the last T are compared. {"dstsp": the Gaussian-mixture D_stsp,
    "dstsp_binned": the histogram one (`bins` per dimension), "dh": D_H}."""
    import torch

    from rnnzoo.tasks.lorenz import state_space_divergence

    series = _trajectory("series", series)
    int_in("transient", transient, lo=0)
    x0 = torch.as_tensor(series[:1], dtype=torch.float32)
    gen = generate(x0, transient + len(series))[0, transient:].double().cpu().numpy()
    return {"dstsp": state_space_divergence_gmm(series, gen, sigma),
            "dstsp_binned": state_space_divergence(series, gen, bins),
            "dh": power_spectrum_distance(series, gen, smoothing)}
