"""Tasks on the user's own files.

- text: character or byte language modelling on any text file; metric bits per
  character (bits per byte in `byte` mode). The last `val_fraction` is held out.
- classify: sequence classification. A CSV (one sequence per row, the label in
  the last column), a .npy array of shape (N, T + 1) laid out the same way, or a
  .npz with arrays `x` (N, T) or (N, T, D) and `y` (N,). Values are z-normalised
  with the training split's statistics; the label is read at the last step.
- forecast: a CSV time series (one column per variable; a non-numeric header
  row is skipped). Windows of `window` steps predict the next `horizon` steps;
  data are z-normalised with the training part's statistics (the first
  1 - `test_fraction` of the series, in time order) and MSE/MAE are reported on
  that scale, next to two baselines computed here: seasonal naive (the value one
  `season` earlier; `season=1` is "repeat the last value") and a linear model
  (least squares from the flattened window to the horizon, fitted on the
  training windows; as in Zeng et al. 2023, arXiv:2205.13504).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from rnnzoo.checks import int_in
from rnnzoo.tasks.base import IGNORE, Batch, Task, task, tokens_batch


def _existing(path) -> Path:
    if path is None:
        raise ValueError("this task reads a file: give its path (rnnzoo train --data PATH)")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {p}")
    return p


def _read_csv(path: Path) -> np.ndarray:
    rows = []
    with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row:
                continue
            try:
                rows.append([float(v) for v in row])
            except ValueError:
                if i == 0:
                    continue  # header
                raise ValueError(f"{path}, line {i + 1}: non-numeric value in {row}") from None
    if not rows:
        raise ValueError(f"{path} holds no numeric rows")
    if len({len(r) for r in rows}) != 1:
        raise ValueError(f"{path}: rows have different numbers of columns")
    return np.array(rows, dtype=np.float64)


def _fraction(name, value):
    if not 0 < value < 1:
        raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
    return float(value)


@task("text", family="files")
class TextLM(Task):
    metric, higher_is_better = "bpc", False
    test_lengths = (None,)

    def __init__(self, path=None, mode: str = "byte", seq_len: int = 128, val_fraction: float = 0.1):
        p = _existing(path)
        if mode not in ("byte", "char"):
            raise ValueError(f"mode must be 'byte' or 'char', got {mode!r}")
        self.path, self.mode = str(p), mode
        self.seq_len = int_in("seq_len", seq_len, lo=2)
        if mode == "byte":
            data = np.frombuffer(p.read_bytes(), dtype=np.uint8).astype(np.int64)
            self.vocab = None
            self.vocab_size = 256
        else:
            text = p.read_text(encoding="utf-8")
            self.vocab = sorted(set(text))
            index = {c: i for i, c in enumerate(self.vocab)}
            data = np.array([index[c] for c in text], dtype=np.int64)
            self.vocab_size = len(self.vocab)
        self.output_dim = self.vocab_size
        n_val = int(len(data) * _fraction("val_fraction", val_fraction))
        self.train_data, self.val_data = data[:len(data) - n_val], data[len(data) - n_val:]
        for split, d in (("training", self.train_data), ("validation", self.val_data)):
            if len(d) < self.seq_len + 1:
                raise ValueError(f"{p}: the {split} part has {len(d)} symbols, fewer than "
                                 f"seq_len + 1 = {self.seq_len + 1}; lower seq_len")
        self.train_lengths = (self.seq_len, self.seq_len)

    def options(self):
        return dict(path=self.path, mode=self.mode, seq_len=self.seq_len)

    def max_length(self):
        return self.seq_len

    def sample(self, rng, batch_size, length=None, split="train"):
        data = self.train_data if split == "train" else self.val_data
        starts = rng.integers(0, len(data) - self.seq_len, size=batch_size)
        windows = np.stack([data[s:s + self.seq_len + 1] for s in starts])
        return tokens_batch(windows[:, :-1], windows[:, 1:])

    def decode(self, tokens) -> str:
        tokens = [int(t) for t in tokens]
        if self.vocab is None:
            return bytes(tokens).decode("utf-8", errors="replace")
        return "".join(self.vocab[t] for t in tokens)


@task("classify", family="files")
class SequenceClassification(Task):
    test_lengths = (None,)

    def __init__(self, path=None, test_fraction: float = 0.2, seed: int = 0):
        p = _existing(path)
        self.path = str(p)
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as f:
                if "x" not in f or "y" not in f:
                    raise ValueError(f"{p} must hold arrays 'x' and 'y', has {list(f.keys())}")
                x, y = f["x"].astype(np.float64), f["y"]
        else:
            table = np.load(p, allow_pickle=False) if p.suffix == ".npy" else _read_csv(p)
            if table.ndim != 2 or table.shape[1] < 2:
                raise ValueError(f"{p} must be a table (N, T + 1) with the label last, got shape "
                                 f"{table.shape}")
            x, y = table[:, :-1].astype(np.float64), table[:, -1]
        if x.ndim == 2:
            x = x[..., None]
        if x.ndim != 3 or len(x) != len(y):
            raise ValueError(f"{p}: x must be (N, T) or (N, T, D) with N labels, got x {x.shape}, "
                             f"y {y.shape}")
        classes, labels = np.unique(y, return_inverse=True)
        self.classes = classes.tolist()
        order = np.random.default_rng(seed).permutation(len(x))
        n_test = max(1, int(len(x) * _fraction("test_fraction", test_fraction)))
        if n_test >= len(x):
            raise ValueError(f"{p}: {len(x)} sequences are too few to split off a test part")
        test, train = order[:n_test], order[n_test:]
        mean, std = x[train].mean((0, 1)), x[train].std((0, 1)) + 1e-8
        x = ((x - mean) / std).astype(np.float32)
        self.splits = {"train": (x[train], labels[train]), "test": (x[test], labels[test])}
        self.input_dim, self.output_dim = x.shape[2], len(classes)
        self.chance = float(np.bincount(labels[train]).max() / len(train))  # majority class
        self.train_lengths = (x.shape[1], x.shape[1])

    def options(self):
        return dict(path=self.path)

    def max_length(self):
        return self.train_lengths[0]

    def sample(self, rng, batch_size, length=None, split="train"):
        x, y = self.splits["train" if split == "train" else "test"]
        idx = rng.integers(0, len(x), size=batch_size)
        targets = np.full((batch_size, x.shape[1]), IGNORE, dtype=np.int64)
        targets[:, -1] = y[idx]
        return Batch(torch.from_numpy(x[idx]), torch.from_numpy(targets))


@task("forecast", family="files")
class Forecast(Task):
    kind, metric, higher_is_better = "regress", "mse", False
    test_lengths = (None,)

    def __init__(self, path=None, window: int = 48, horizon: int = 12, season: int = 1,
                 test_fraction: float = 0.3):
        p = _existing(path)
        self.path = str(p)
        series = _read_csv(p)
        self.window = int_in("window", window)
        self.horizon = int_in("horizon", horizon)
        self.season = int_in("season", season, hi=self.window)
        n_test = int(len(series) * _fraction("test_fraction", test_fraction))
        train = series[:len(series) - n_test]
        need = self.window + self.horizon
        if len(train) < need or n_test < need:
            raise ValueError(f"{p}: {len(series)} rows are too few for window + horizon = {need} "
                             f"in both the training and the test part")
        mean, std = train.mean(0), train.std(0) + 1e-8
        z = ((series - mean) / std).astype(np.float32)
        self.parts = {"train": z[:len(train)], "test": z[len(train) - self.window:]}
        self.channels = series.shape[1]
        self.input_dim, self.output_dim = self.channels, self.horizon * self.channels
        self.train_lengths = (self.window, self.window)

    def options(self):
        return dict(path=self.path, window=self.window, horizon=self.horizon, season=self.season)

    def max_length(self):
        return self.window

    def windows(self, split):
        """All (window, horizon) pairs of a part: x (N, window, C), y (N, horizon, C)."""
        z = self.parts[split]
        n = len(z) - self.window - self.horizon + 1
        idx = np.arange(n)[:, None]
        x = z[idx + np.arange(self.window)]
        y = z[idx + self.window + np.arange(self.horizon)]
        return x, y

    def _batch(self, x, y):
        B = len(x)
        targets = np.zeros((B, self.window, self.output_dim), dtype=np.float32)
        targets[:, -1] = y.reshape(B, -1)
        mask = np.zeros((B, self.window), dtype=bool)
        mask[:, -1] = True
        return Batch(torch.from_numpy(x), torch.from_numpy(targets), mask=torch.from_numpy(mask))

    def sample(self, rng, batch_size, length=None, split="train"):
        x, y = self.windows("train" if split == "train" else "test")
        idx = rng.integers(0, len(x), size=batch_size)
        return self._batch(x[idx], y[idx])

    def baselines(self) -> dict[str, dict[str, float]]:
        """MSE and MAE on the whole test part of seasonal naive and linear forecasts."""
        x, y = self.windows("test")
        steps = np.arange(self.horizon)
        # seasonal naive: y_{t+h} = x_{t+h-s*ceil((h+1)/s)}, the same phase one season back
        back = self.window + steps - self.season * ((steps // self.season) + 1)
        naive = x[:, back]
        xt, yt = self.windows("train")
        X = np.concatenate([xt.reshape(len(xt), -1), np.ones((len(xt), 1))], 1)
        W = np.linalg.lstsq(X, yt.reshape(len(yt), -1), rcond=None)[0]
        Xs = np.concatenate([x.reshape(len(x), -1), np.ones((len(x), 1))], 1)
        linear = (Xs @ W).reshape(y.shape)
        return {name: {"mse": float(((f - y) ** 2).mean()), "mae": float(np.abs(f - y).mean())}
                for name, f in (("seasonal_naive", naive), ("linear", linear))}
