"""Tasks on the user's own files.

- text: character or byte language modelling on any text file; metric bits per
  character (bits per byte in `byte` mode). The last `val_fraction` is held out.
  Baseline: a unigram model of the training part. With `pack=True` the training
  part is read as documents (separated by blank lines) and a training batch is
  `batch_size` of them (each a random window of at most seq_len + 1 symbols)
  packed end to end without padding: inputs (1, total), cu_seqlens (N + 1,) their
  boundaries, the model's state restarting at each (PackedBatch). Evaluation
  stays on consecutive windows of the held-out part.
- classify: sequence classification. A CSV (one sequence per row, the label in
  the last column; a non-numeric first row is a header), a .npy array of shape
  (N, T + 1) laid out the same way, or a .npz with arrays `x` (N, T) or
  (N, T, D) and `y` (N,). Values are z-normalised with the training split's
  statistics; the label is read at the last step. Baseline: the majority class.
- forecast: a CSV time series (one column per variable; a non-numeric header
  row is skipped). Windows of `window` steps predict the next `horizon` steps.
- regress (tasks/regression.py): one float target, or a vector, per sequence.

Every number of a data file must be finite: a NaN or inf cell is refused with
the file, the line (CSV; row for .npy, index for .npz) and the column.

Fixed splits. classify and regress hold out a random `test_fraction` of the
sequences (drawn with `seed`) unless the split is given: `test_path` names a
second file in the same format, or the .npz holds `x_test` and `y_test` too
(MNIST-1D's published split: `np.savez(f, x=d["x"], y=d["y"], x_test=d["x_test"],
y_test=d["y_test"])`). forecast holds out the last `test_fraction` of the series,
or reads the test part from `test_path`: the series' continuation, whose first
windows take their context from the end of the training file.

Forecasting. The series is z-scored with the training part's mean and std,
z = (s - mean) / std; the metrics (MSE, MAE) and the baselines are on this
scale. The model sees each window u (T steps, C channels) through reversible
instance normalisation (RevIN, Kim et al. 2022, ICLR, "Reversible Instance
Normalization for Accurate Time-Series Forecasting against Distribution Shift";
without its learnable affine), per window and channel:

    mu = mean_t u_t,   sigma = sqrt(var_t u_t + 1e-5)
    model input (u - mu) / sigma;   forecast  z^_{t+h} = sigma * o_h + mu

so a test part that lies outside the training range (a trend) looks like the
training windows. `norm="global"` feeds z itself (mu = 0, sigma = 1).
`difference=True` feeds the first differences u_t = z_t - z_{t-1} (T = window - 1)
and integrates the forecast from the last value: z^_{t+h} = z_t + sum_{k<=h} d^_k.
The loss is the MSE of z^ against the targets. Baselines on the whole test part
(`baselines()`): seasonal naive (the value one `season` earlier; `season=1` is
"repeat the last value") and a linear model (least squares from the flattened
window to the horizon, fitted on the training windows; as in Zeng et al. 2023,
arXiv:2205.13504). `plot_predictions(ax, model)` draws the test part with the
model's and the baselines' forecasts.

Shapes: classify/regress batches hold inputs (B, T, D) and targets at the last
step; forecast batches inputs (B, window, C) (window - 1 with `difference`) and
targets (B, T, horizon * C) at the last step. `test_batches(batch_size)` yields
the whole test split once, in order, for final metrics.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import torch

from rnnzoo.checks import choice, flag, int_in, real
from rnnzoo.tasks.base import IGNORE, Batch, Task, task, tokens_batch

REVIN_EPS = 1e-5


# -- reading -----------------------------------------------------------------------------------
def _existing(path, name: str = "path") -> Path:
    if path is None:
        raise ValueError("this task reads a file: give its path (rnnzoo train --data PATH)")
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{name} must be a file path, got {path!r}")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {p}")
    return p


def _column(j: int, header: list[str] | None) -> str:
    name = f" ({header[j]!r})" if header and j < len(header) and header[j] else ""
    return f"column {j + 1}{name}"


def read_csv(path: Path) -> np.ndarray:
    """A numeric CSV -> (rows, columns) float64. A non-numeric first row is a header;
    blank lines are skipped; a non-numeric or non-finite cell, or a row of another
    width, raises ValueError naming the file, line and column."""
    rows, header, width = [], None, None
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            for row in reader:
                if not any(c.strip() for c in row):
                    continue
                line = reader.line_num
                values = []
                for j, cell in enumerate(row):
                    try:
                        values.append(float(cell))
                    except ValueError:
                        if not rows and header is None:
                            break  # the header
                        raise ValueError(f"{path}, line {line}, {_column(j, header)}: "
                                         f"{cell.strip()!r} is not a number") from None
                    if not math.isfinite(values[-1]):
                        raise ValueError(f"{path}, line {line}, {_column(j, header)}: "
                                         f"{cell.strip()!r} is not a finite number")
                if len(values) < len(row):
                    header = [c.strip() for c in row]
                    continue
                if width is not None and len(values) != width:
                    raise ValueError(f"{path}, line {line}: {len(values)} columns, where the "
                                     f"first data row has {width}")
                width = len(values)
                rows.append(values)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if not rows:
        raise ValueError(f"{path} holds no numeric rows")
    return np.array(rows, dtype=np.float64)


def numeric(path, name: str, a, where=None) -> np.ndarray:
    """`a` as finite float64; ValueError naming the file and the first bad element.
    `where(index) -> str` names an element (default: `name[i, j, ...]`)."""
    try:
        a = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: {name} holds non-numeric values (dtype "
                         f"{np.asarray(a).dtype})") from None
    bad = np.argwhere(~np.isfinite(a))
    if len(bad):
        idx = tuple(int(i) for i in bad[0])
        at = where(idx) if where else f"{name}[{', '.join(map(str, idx))}]"
        raise ValueError(f"{path}: {at} is {a[idx]}, not a finite number")
    return a


def _table_cell(idx) -> str:
    return f"row {idx[0] + 1}, column {idx[1] + 1}"


def read_sequences(path: Path, n_targets: int, numeric_y: bool) -> dict[str, np.ndarray]:
    """A sequence file -> {"x": (N, T, D) float64, "y": (N, n_targets) or (N,), and
    "x_test", "y_test" when a .npz holds them}. CSV and .npy: one sequence per row,
    the last `n_targets` columns the targets. `numeric_y`: the targets must be finite
    numbers (else labels of any dtype)."""
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.keys()}
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        if "x" not in arrays or "y" not in arrays:
            raise ValueError(f"{path} must hold arrays 'x' and 'y', has {list(arrays)}")
        if ("x_test" in arrays) != ("y_test" in arrays):
            raise ValueError(f"{path} holds only one of 'x_test' and 'y_test'")
        out = {}
        for k in ("x", "y", "x_test", "y_test"):
            if k in arrays:
                is_y = k.startswith("y")
                out[k] = numeric(path, k, arrays[k]) if numeric_y or not is_y else arrays[k]
    else:
        if path.suffix == ".npy":
            try:
                table = np.load(path, allow_pickle=False)
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
            table = numeric(path, "the table", table, _table_cell if table.ndim == 2 else None)
        else:
            table = read_csv(path)
        if table.ndim != 2 or table.shape[1] < n_targets + 1:
            last = "the label last" if n_targets == 1 and not numeric_y \
                else f"the {n_targets} target column(s) last"
            raise ValueError(f"{path} must be a table (N, T + {n_targets}) with {last}, got "
                             f"shape {table.shape}")
        out = {"x": table[:, :-n_targets], "y": table[:, -n_targets:]}
    for k in ("x", "x_test"):
        if k in out and out[k].ndim == 2:
            out[k] = out[k][..., None]
    for kx, ky in (("x", "y"), ("x_test", "y_test")):
        if kx in out and (out[kx].ndim != 3 or len(out[kx]) != len(out[ky])):
            raise ValueError(f"{path}: {kx} must be (N, T) or (N, T, D) with N targets in {ky}, "
                             f"got {kx} {out[kx].shape}, {ky} {out[ky].shape}")
    return out


def split_sequences(path: Path, arrays: dict, test_path, test_fraction, seed: int,
                    n_targets: int, numeric_y: bool):
    """(x_train, y_train, x_test, y_test): the given split (`test_path`, or the .npz's
    x_test / y_test), else a random `test_fraction` of the sequences drawn with `seed`."""
    if test_path is not None:
        tp = _existing(test_path, "test_path")
        test = read_sequences(tp, n_targets, numeric_y)
        if "x_test" in test:
            raise ValueError(f"{tp}: a test file holds 'x' and 'y' only, not 'x_test'")
        x_test, y_test, where = test["x"], test["y"], tp
    elif "x_test" in arrays:
        x_test, y_test, where = arrays["x_test"], arrays["y_test"], f"{path} x_test"
    else:
        x, y = arrays["x"], arrays["y"]
        order = np.random.default_rng(int_in("seed", seed, 0)).permutation(len(x))
        n_test = max(1, int(len(x) * real("test_fraction", test_fraction, 0, 1, lo_open=True,
                                          hi_open=True)))
        if n_test >= len(x):
            raise ValueError(f"{path}: {len(x)} sequences are too few to split off a test part")
        test, train = order[:n_test], order[n_test:]
        return x[train], y[train], x[test], y[test]
    x, y = arrays["x"], arrays["y"]
    if x_test.shape[1:] != x.shape[1:] or y_test.shape[1:] != y.shape[1:]:
        raise ValueError(f"{where}: test sequences of shape {x_test.shape[1:]} (targets "
                         f"{y_test.shape[1:]}), the training ones {x.shape[1:]} (targets "
                         f"{y.shape[1:]})")
    if not len(x_test):
        raise ValueError(f"{where} holds no test sequences")
    return x, y, x_test, y_test


def standardise(train: np.ndarray, axes) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) over `axes` of the training data; a constant feature gets std 1."""
    mean, std = train.mean(axes), train.std(axes)
    return mean, np.where(std > 0, std, 1.0)


class SequenceTable(Task):
    """Fixed-length sequences read from a file, one target per sequence, scored at the
    last step (classify, regress). Subclasses call `_load` and implement `_batch`."""

    test_lengths = (None,)

    def _load(self, path, test_path, test_fraction, seed, n_targets, numeric_y):
        p = _existing(path)
        self.path, self.test_path = str(p), None if test_path is None else str(test_path)
        arrays = read_sequences(p, n_targets, numeric_y)
        x, y, x_test, y_test = split_sequences(p, arrays, test_path, test_fraction, seed,
                                               n_targets, numeric_y)
        mean, std = standardise(x, (0, 1))
        norm = lambda a: ((a - mean) / std).astype(np.float32)  # noqa: E731
        self.input_dim = x.shape[2]
        self.train_lengths = (x.shape[1], x.shape[1])
        return norm(x), y, norm(x_test), y_test

    def max_length(self):
        return self.train_lengths[0]

    def _batch(self, x: np.ndarray, y: np.ndarray) -> Batch:
        raise NotImplementedError

    def sample(self, rng, batch_size, length=None, split="train"):
        x, y = self.splits["train" if split == "train" else "test"]
        idx = rng.integers(0, len(x), size=batch_size)
        return self._batch(x[idx], y[idx])

    def test_batches(self, batch_size: int, length=None):
        """The whole test split once, in file order, in batches of `batch_size` (the last
        may be smaller); `length` is ignored: the file sets the lengths."""
        batch_size = int_in("batch_size", batch_size)
        x, y = self.splits["test"]
        for s in range(0, len(x), batch_size):
            yield self._batch(x[s:s + batch_size], y[s:s + batch_size])


def last_step_regression(x: np.ndarray, y: np.ndarray) -> Batch:
    """x (B, T, D), y (B, K) -> a Batch with float targets (B, T, K) scored at the last step."""
    B, T = x.shape[:2]
    targets = np.zeros((B, T, y.shape[1]), dtype=np.float32)
    targets[:, -1] = y
    mask = np.zeros((B, T), dtype=bool)
    mask[:, -1] = True
    return Batch(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(targets),
                 mask=torch.from_numpy(mask))


# -- text --------------------------------------------------------------------------------------
@dataclasses.dataclass
class PackedBatch(Batch):
    """Documents laid end to end in one row: inputs and targets (1, total), cu_seqlens
    (N + 1,) int64 on the CPU (0, then each document's end), passed to the model as
    `cu_seqlens`. A "row" of the global batch is a document: `slice` takes documents."""

    cu_seqlens: torch.Tensor | None = None

    def to(self, device) -> "PackedBatch":  # cu_seqlens stays on the CPU: checked for free
        return PackedBatch(self.inputs.to(device), self.targets.to(device),
                           cu_seqlens=self.cu_seqlens)

    def slice(self, start: int, stop: int) -> "PackedBatch":
        cu = self.cu_seqlens[start:stop + 1]
        a, b = int(cu[0]), int(cu[-1])
        return PackedBatch(self.inputs[:, a:b], self.targets[:, a:b], cu_seqlens=cu - a)

    def padded(self) -> tuple[Batch, torch.Tensor]:
        """The same documents right-padded, one a row (targets IGNORE on the padding), and
        their lengths: the batch packing spares."""
        cu = self.cu_seqlens.tolist()
        lengths = torch.tensor([b - a for a, b in zip(cu, cu[1:])])
        n, L = len(lengths), int(lengths.max())
        x = self.inputs.new_zeros(n, L)
        y = self.targets.new_full((n, L), IGNORE)
        for i, (a, b) in enumerate(zip(cu, cu[1:])):
            x[i, :b - a], y[i, :b - a] = self.inputs[0, a:b], self.targets[0, a:b]
        return Batch(x, y), lengths


def documents(data: np.ndarray, newline: int | None) -> list[np.ndarray]:
    """The documents of a token array: the runs between blank lines (two or more
    newlines in a row), those of at least 2 symbols."""
    if newline is None:
        return [data] if len(data) >= 2 else []
    nl = data == newline
    blank = nl & (np.r_[nl[1:], False] | np.r_[False, nl[:-1]])
    edges = np.flatnonzero(np.diff(np.r_[0, (~blank).astype(np.int8), 0]))
    return [data[a:b] for a, b in zip(edges[::2], edges[1::2]) if b - a >= 2]


@task("text", family="files")
class TextLM(Task):
    metric, higher_is_better = "bpc", False
    test_lengths = (None,)

    def __init__(self, path=None, mode: str = "byte", seq_len: int = 128, val_fraction: float = 0.1,
                 pack: bool = False):
        p = _existing(path)
        self.pack = flag("pack", pack)
        if mode not in ("byte", "char"):
            raise ValueError(f"mode must be 'byte' or 'char', got {mode!r}")
        self.path, self.mode = str(p), mode
        self.seq_len = int_in("seq_len", seq_len, lo=2)
        if mode == "byte":
            data = np.frombuffer(p.read_bytes(), dtype=np.uint8).astype(np.int64)
            self.vocab = None
            self.vocab_size = 256
        else:
            try:
                text = p.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{p}: not UTF-8 text (byte {e.start}); mode 'byte' reads any "
                                 f"file") from None
            self.vocab = sorted(set(text))
            index = {c: i for i, c in enumerate(self.vocab)}
            data = np.array([index[c] for c in text], dtype=np.int64)
            self.vocab_size = len(self.vocab)
        self.output_dim = self.vocab_size
        n_val = int(len(data) * real("val_fraction", val_fraction, 0, 1, lo_open=True,
                                     hi_open=True))
        self.train_data, self.val_data = data[:len(data) - n_val], data[len(data) - n_val:]
        for split, d in (("training", self.train_data), ("validation", self.val_data)):
            if len(d) < self.seq_len + 1:
                raise ValueError(f"{p}: the {split} part has {len(d)} symbols, fewer than "
                                 f"seq_len + 1 = {self.seq_len + 1}; lower seq_len")
        self.train_lengths = (self.seq_len, self.seq_len)
        if self.pack:
            newline = 10 if mode == "byte" else (self.vocab.index("\n") if "\n" in self.vocab
                                                 else None)
            self.train_docs = documents(self.train_data, newline)
            if not self.train_docs:
                raise ValueError(f"{p}: pack=True found no document of 2 or more symbols in the "
                                 f"training part")

    def options(self):
        return dict(path=self.path, mode=self.mode, seq_len=self.seq_len, pack=self.pack)

    def max_length(self):
        return self.seq_len

    def sample(self, rng, batch_size, length=None, split="train"):
        if self.pack and split == "train":
            return self._packed(rng, batch_size)
        data = self.train_data if split == "train" else self.val_data
        starts = rng.integers(0, len(data) - self.seq_len, size=batch_size)
        windows = np.stack([data[s:s + self.seq_len + 1] for s in starts])
        return tokens_batch(windows[:, :-1], windows[:, 1:])

    def _packed(self, rng, batch_size) -> PackedBatch:
        """batch_size documents drawn at random, each cropped to a random window of at most
        seq_len + 1 symbols, end to end."""
        docs = [self.train_docs[i] for i in rng.integers(0, len(self.train_docs), batch_size)]
        windows = []
        for d in docs:
            s = int(rng.integers(0, len(d) - self.seq_len)) if len(d) > self.seq_len + 1 else 0
            windows.append(d[s:s + self.seq_len + 1])
        cu = np.cumsum([0] + [len(w) - 1 for w in windows])
        x = np.concatenate([w[:-1] for w in windows])[None]
        y = np.concatenate([w[1:] for w in windows])[None]
        return PackedBatch(torch.from_numpy(x), torch.from_numpy(y),
                           cu_seqlens=torch.from_numpy(cu).long())

    def test_batches(self, batch_size: int, length=None):
        """The whole held-out part once: consecutive windows of seq_len, so every symbol
        after the first is predicted exactly once; a shorter tail comes last, alone
        (`length` is ignored: seq_len sets it)."""
        batch_size = int_in("batch_size", batch_size)
        data, L = self.val_data, self.seq_len
        n = (len(data) - 1) // L
        windows = np.stack([data[s * L:s * L + L + 1] for s in range(n)])
        for s in range(0, n, batch_size):
            w = windows[s:s + batch_size]
            yield tokens_batch(w[:, :-1], w[:, 1:])
        tail = data[n * L:]
        if len(tail) >= 2:
            yield tokens_batch(tail[None, :-1], tail[None, 1:])

    def baselines(self) -> dict[str, dict[str, float]]:
        """Bits per symbol on the held-out part of a unigram model (the training part's
        symbol frequencies, add-one smoothed): what ignoring the context scores."""
        counts = np.bincount(self.train_data, minlength=self.vocab_size) + 1.0
        bits = -np.log2(counts / counts.sum())[self.val_data[1:]]
        return {"unigram": {"bpc": float(bits.mean())}}

    def decode(self, tokens) -> str:
        tokens = [int(t) for t in tokens]
        if self.vocab is None:
            return bytes(tokens).decode("utf-8", errors="replace")
        return "".join(self.vocab[t] for t in tokens)


# -- classify ----------------------------------------------------------------------------------
@task("classify", family="files")
class SequenceClassification(SequenceTable):

    def __init__(self, path=None, test_fraction: float = 0.2, seed: int = 0, test_path=None):
        x, y, x_test, y_test = self._load(path, test_path, test_fraction, seed, 1, False)
        y, y_test = y.reshape(len(y)), y_test.reshape(len(y_test))
        if y.dtype.kind == "f" or y_test.dtype.kind == "f":
            y = numeric(self.path, "the label column", y)
            y_test = numeric(self.test_path or self.path, "the label column", y_test)
        classes, labels = np.unique(np.concatenate([y, y_test]), return_inverse=True)
        labels = labels.reshape(-1)
        self.classes = classes.tolist()
        self.splits = {"train": (x, labels[:len(y)]), "test": (x_test, labels[len(y):])}
        self.output_dim = len(classes)
        self.chance = float(np.bincount(labels[:len(y)]).max() / len(y))  # majority class

    def options(self):
        return dict(path=self.path, test_path=self.test_path)

    def baselines(self) -> dict[str, dict[str, float]]:
        """Accuracy on the whole test split of always answering the training split's most
        frequent class."""
        majority = np.bincount(self.splits["train"][1]).argmax()
        return {"majority": {"acc": float((self.splits["test"][1] == majority).mean())}}

    def _batch(self, x, y):
        targets = np.full((len(x), x.shape[1]), IGNORE, dtype=np.int64)
        targets[:, -1] = y
        return Batch(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(targets))


# -- forecast ----------------------------------------------------------------------------------
@dataclasses.dataclass
class WindowBatch(Batch):
    """A forecast batch: each row's map from model outputs back to the z-scale.
    scale, shift, last: (B, C); the forecast is last + cumsum(scale * o + shift) with
    `integrate`, else scale * o + shift."""

    scale: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    last: torch.Tensor | None = None
    integrate: bool = False

    def _map(self, f) -> "WindowBatch":
        return dataclasses.replace(self, **{
            fl.name: f(getattr(self, fl.name)) for fl in dataclasses.fields(self)
            if isinstance(getattr(self, fl.name), torch.Tensor)})

    def to(self, device) -> "WindowBatch":
        return self._map(lambda t: t.to(device))

    def slice(self, start: int, stop: int) -> "WindowBatch":
        return self._map(lambda t: t[start:stop])


@task("forecast", family="files")
class Forecast(Task):
    kind, metric, higher_is_better = "regress", "mse", False
    test_lengths = (None,)

    def __init__(self, path=None, window: int = 48, horizon: int = 12, season: int = 1,
                 test_fraction: float = 0.3, test_path=None, norm: str = "revin",
                 difference: bool = False):
        p = _existing(path)
        self.path = str(p)
        series = read_csv(p)
        self.window = int_in("window", window, lo=2 if difference is True else 1)
        self.horizon = int_in("horizon", horizon)
        self.season = int_in("season", season, hi=self.window)
        self.norm = choice("norm", norm, ("revin", "global"))
        if not isinstance(difference, bool):
            raise ValueError(f"difference must be true or false, got {difference!r}")
        self.difference = difference
        need = self.window + self.horizon
        if test_path is not None:
            tp = _existing(test_path, "test_path")
            self.test_path = str(tp)
            test = read_csv(tp)
            if test.shape[1] != series.shape[1]:
                raise ValueError(f"{tp}: {test.shape[1]} columns, the training file {p} has "
                                 f"{series.shape[1]}")
            train, n_test = series, len(test)
            series = np.concatenate([series, test])
            if len(train) < need or n_test < self.horizon:
                raise ValueError(f"{p} needs at least window + horizon = {need} rows (has "
                                 f"{len(train)}) and {tp} at least horizon = {self.horizon} "
                                 f"(has {n_test})")
        else:
            self.test_path = None
            n_test = int(len(series) * real("test_fraction", test_fraction, 0, 1, lo_open=True,
                                            hi_open=True))
            train = series[:len(series) - n_test]
            if len(train) < need or n_test < self.horizon:
                raise ValueError(f"{p}: {len(series)} rows are too few for window + horizon = "
                                 f"{need} in the training part and horizon = {self.horizon} "
                                 f"in the test part")
        self.mean, self.std = standardise(train, 0)
        z = ((series - self.mean) / self.std).astype(np.float32)
        # the test part's first windows take their context from the training part's end
        self.parts = {"train": z[:len(train)], "test": z[len(train) - self.window:]}
        self.channels = series.shape[1]
        self.input_dim, self.output_dim = self.channels, self.horizon * self.channels
        steps = self.window - 1 if difference else self.window
        self.train_lengths = (steps, steps)

    def options(self):
        return dict(path=self.path, test_path=self.test_path, window=self.window,
                    horizon=self.horizon, season=self.season, norm=self.norm,
                    difference=self.difference)

    def max_length(self):
        return self.window

    def windows(self, split):
        """All (window, horizon) pairs of a part, z-scale: x (N, window, C), y (N, horizon, C)."""
        z = self.parts[split]
        n = len(z) - self.window - self.horizon + 1
        idx = np.arange(n)[:, None]
        x = z[idx + np.arange(self.window)]
        y = z[idx + self.window + np.arange(self.horizon)]
        return x, y

    def model_inputs(self, x: np.ndarray):
        """Windows x (B, window, C) -> (model inputs (B, T, C), scale, shift, last (B, C))."""
        last = x[:, -1]
        u = np.diff(x, axis=1) if self.difference else x
        if self.norm == "revin":
            shift = u.mean(1)
            scale = np.sqrt(u.var(1) + REVIN_EPS)
        else:
            shift, scale = np.zeros_like(last), np.ones_like(last)
        u = (u - shift[:, None]) / scale[:, None]
        f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
        return f32(u), f32(scale), f32(shift), f32(last)

    def _batch(self, x, y):
        inputs, scale, shift, last = self.model_inputs(x)
        B, T = inputs.shape[:2]
        targets = torch.zeros(B, T, self.output_dim)
        targets[:, -1] = torch.from_numpy(np.ascontiguousarray(y)).reshape(B, -1)
        mask = torch.zeros(B, T, dtype=torch.bool)
        mask[:, -1] = True
        return WindowBatch(inputs, targets, mask=mask, scale=scale, shift=shift, last=last,
                           integrate=self.difference)

    def forecast(self, outputs: torch.Tensor, batch: WindowBatch) -> torch.Tensor:
        """Model outputs (B, T, horizon * C) -> the forecasts on the z-scale, same shape
        (every step mapped with its row's scale and shift; only the last step counts)."""
        B, T = outputs.shape[:2]
        o = outputs.float().reshape(B, T, self.horizon, self.channels)
        f = o * batch.scale[:, None, None] + batch.shift[:, None, None]
        if batch.integrate:
            f = batch.last[:, None, None] + f.cumsum(2)
        return f.reshape(B, T, -1)

    def loss(self, outputs, batch):
        return super().loss(self.forecast(outputs, batch), batch)

    @torch.no_grad()
    def score(self, outputs, batch):
        return super().score(self.forecast(outputs, batch), batch)

    def sample(self, rng, batch_size, length=None, split="train"):
        x, y = self.windows("train" if split == "train" else "test")
        idx = rng.integers(0, len(x), size=batch_size)
        return self._batch(x[idx], y[idx])

    def test_batches(self, batch_size: int, length=None):
        """Every window of the test part once, in time order (`length` is ignored)."""
        batch_size = int_in("batch_size", batch_size)
        x, y = self.windows("test")
        for s in range(0, len(x), batch_size):
            yield self._batch(x[s:s + batch_size], y[s:s + batch_size])

    # -- baselines and plots ---------------------------------------------------------------
    def baseline_forecasts(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Windows x (N, window, C) -> {baseline: forecasts (N, horizon, C)}, z-scale."""
        steps = np.arange(self.horizon)
        # seasonal naive: y_{t+h} = x_{t+h-s*ceil((h+1)/s)}, the same phase one season back
        back = self.window + steps - self.season * ((steps // self.season) + 1)
        xt, yt = self.windows("train")
        X = np.concatenate([xt.reshape(len(xt), -1), np.ones((len(xt), 1))], 1)
        W = np.linalg.lstsq(X, yt.reshape(len(yt), -1), rcond=None)[0]
        Xs = np.concatenate([x.reshape(len(x), -1), np.ones((len(x), 1))], 1)
        return {"seasonal_naive": x[:, back],
                "linear": (Xs @ W).reshape(len(x), self.horizon, self.channels)}

    def baselines(self) -> dict[str, dict[str, float]]:
        """MSE and MAE on the whole test part of seasonal naive and linear forecasts."""
        x, y = self.windows("test")
        return {name: {"mse": float(((f - y) ** 2).mean()), "mae": float(np.abs(f - y).mean())}
                for name, f in self.baseline_forecasts(x).items()}

    @torch.no_grad()
    def predict(self, model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """The model's forecasts for windows x (N, window, C): (N, horizon, C), z-scale."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out = []
        for s in range(0, len(x), batch_size):
            batch = self._batch(x[s:s + batch_size], np.zeros((len(x[s:s + batch_size]),
                                self.horizon, self.channels), np.float32)).to(device)
            outputs, _ = model(batch.inputs)
            out.append(self.forecast(outputs, batch)[:, -1].cpu().numpy())
        model.train(was_training)
        return np.concatenate(out).reshape(len(x), self.horizon, self.channels)

    def plot_predictions(self, ax, model, channel: int = 0) -> dict[str, np.ndarray]:
        """Draw on the matplotlib axes `ax` the test part of `channel` (in the file's
        units) and the forecasts of the model and the baselines, issued every `horizon`
        steps (each covers the next `horizon` steps). Returns the drawn series
        {"actual", "model", "seasonal_naive", "linear"}: (steps,) each."""
        channel = int_in("channel", channel, 0, self.channels - 1)
        x, y = self.windows("test")
        origins = np.arange(0, len(x), self.horizon)
        x, y = x[origins], y[origins]
        lines = {"actual": y, "model": self.predict(model, x), **self.baseline_forecasts(x)}
        lines = {k: v[..., channel].reshape(-1) * self.std[channel] + self.mean[channel]
                 for k, v in lines.items()}
        t = np.arange(len(lines["actual"]))
        ax.plot(t, lines["actual"], color="black", lw=1.5, label="actual")
        for name, style in (("model", "-"), ("seasonal_naive", ":"), ("linear", "--")):
            mse = float(np.mean(((lines[name] - lines["actual"]) / self.std[channel]) ** 2))
            ax.plot(t, lines[name], style, lw=1, label=f"{name} (mse {mse:.3g})")
        for o in range(0, len(t), self.horizon):
            ax.axvline(o, color="0.85", lw=0.5, zorder=0)
        ax.set(xlabel=f"test step (forecasts of {self.horizon} from each grey line)",
               ylabel=f"column {channel + 1}", title=f"forecast vs actual ({Path(self.path).name})")
        ax.legend(fontsize="small")
        return lines
