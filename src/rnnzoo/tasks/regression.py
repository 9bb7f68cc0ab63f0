"""Sequence regression from a file: one float target, or a vector of `targets`, per sequence.

The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015,
arXiv:1504.00941) or any sequence-to-value problem. Files as for `classify`
(tasks/files.py): a CSV or .npy table (N, T + K), one sequence per row with its
K = `targets` values in the last columns, or a .npz with `x` (N, T) or (N, T, D)
and `y` (N,) or (N, K); a fixed split through `test_path` or the .npz's
`x_test` / `y_test`, else a random `test_fraction`.

Inputs are z-normalised per feature with the training split's statistics; the
model is trained on standardised targets, y' = (y - mean_y) / std_y, read at the
last step, and the metrics are in the targets' own units:

    mse = mean (std_y * (o - y'))^2,    mae = mean |std_y * (o - y')|

Baselines on the whole test split (`baselines()`): `mean` (the training targets'
mean; its MSE is the test targets' spread) and `linear` (least squares from the
flattened normalised sequence, with an intercept; only up to 4096 input features).
"""

from __future__ import annotations

import numpy as np
import torch

from rnnzoo.checks import int_in
from rnnzoo.tasks.base import Batch, task
from rnnzoo.tasks.files import SequenceTable, last_step_regression, standardise

LINEAR_MAX_FEATURES = 4096


@task("regress", family="files")
class SequenceRegression(SequenceTable):
    kind, metric, higher_is_better = "regress", "mse", False

    def __init__(self, path=None, targets: int = 1, test_fraction: float = 0.2, seed: int = 0,
                 test_path=None):
        k = int_in("targets", targets)
        x, y, x_test, y_test = self._load(path, test_path, test_fraction, seed, k, True)
        y, y_test = y.reshape(len(y), -1), y_test.reshape(len(y_test), -1)
        self.y_mean, self.y_std = standardise(y, 0)
        std = lambda a: ((a - self.y_mean) / self.y_std).astype(np.float32)  # noqa: E731
        self.splits = {"train": (x, std(y)), "test": (x_test, std(y_test))}
        self.targets = y.shape[1]
        self.output_dim = self.targets

    def options(self):
        return dict(path=self.path, test_path=self.test_path, targets=self.targets)

    def _batch(self, x, y) -> Batch:
        return last_step_regression(x, y)

    @torch.no_grad()
    def score(self, outputs, batch):
        """Sums of squared and absolute errors in the targets' units."""
        m = batch.mask
        scale = torch.tensor(self.y_std, dtype=torch.float32, device=outputs.device)
        err = (outputs.float()[m] - batch.targets[m]) * scale
        return {"se": float((err ** 2).sum()), "ae": float(err.abs().sum()), "count": err.numel()}

    def baselines(self) -> dict[str, dict[str, float]]:
        """MSE and MAE, in the targets' units, on the whole test split."""
        (x, y), (xs, ys) = self.splits["train"], self.splits["test"]
        guesses = {"mean": np.zeros_like(ys)}
        if x.shape[1] * x.shape[2] <= LINEAR_MAX_FEATURES:
            X = np.concatenate([x.reshape(len(x), -1), np.ones((len(x), 1))], 1).astype(np.float64)
            W = np.linalg.lstsq(X, y, rcond=None)[0]
            guesses["linear"] = np.concatenate([xs.reshape(len(xs), -1),
                                                np.ones((len(xs), 1))], 1) @ W
        out = {}
        for name, g in guesses.items():
            err = (g - ys) * self.y_std
            out[name] = {"mse": float((err ** 2).mean()), "mae": float(np.abs(err).mean())}
        return out
