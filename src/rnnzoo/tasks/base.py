"""The task protocol: a task makes batches from a seed and scores a model's outputs.

    task = rnnzoo.tasks.get_task("parity", test_lengths=(40, 256))
    batch = task.sample(np.random.default_rng(0), batch_size=32)               # training lengths
    batch = task.sample(rng, 32, length=256, split="test")                      # one test length
    outputs, _ = model(batch.inputs)                                            # (B, T, output_dim)
    loss_sum, count = task.loss(outputs, batch)
    sums = task.score(outputs, batch); task.summarize(sums)  # {"acc": .., "scaled_acc": ..}

Every model output is per position; a batch says which positions count:
`targets` (-100 = ignored) for the loss, `metric_mask` for the metric (e.g.
state tracking trains on every prefix and is scored on the final answer).
Regression tasks carry float targets (B, T, output_dim) and a `mask`.

The test split: `task.test_batches(batch_size, length)` yields batches that
cover it exactly once; final metrics are computed on all of it (training's
periodic evaluation samples `sample(..., split="test")` instead). A generated
task has no split of its own: its test split is `test_size` examples per test
length, drawn from a fixed seed (TEST_SEED, the length, the chunk index) in
chunks of TEST_CHUNK, so it is the same for every run, seed and batch size. A
task that holds a real split (the file tasks) overrides `test_batches`.

`task.baselines()`: {baseline name: {metric: value}} on the whole test split
(forecasting's seasonal naive, ...); {} when the task has none.

A task registers itself under its name with a family (for listing):

    @task("parity", family="state_tracking")
    class Parity(Task): ...

    @task("s5", family="state_tracking", group="s5")   # fixed constructor options:
    class PermutationComposition(Task): ...            # the entry is a factory
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from rnnzoo.checks import int_in
from rnnzoo.registry import TASKS, Info

IGNORE = -100
TEST_SEED = 0x7E57    # the generated test splits' seed (with the length and chunk index)
TEST_CHUNK = 256      # rows drawn per seed: the split does not depend on the batch size
FAMILIES = ("recall", "state_tracking", "formal", "hierarchical", "dynamics", "grid", "files")


def task(name: str, *, family: str, **fixed):
    """Class decorator: register a `Task` subclass as `name` in `registry.TASKS`.

    `fixed`: constructor options the entry always passes (S3, S5 and A5 are one
    class with `group` fixed); the entry is then `functools.partial(cls, **fixed)`
    and the instance names itself.
    """
    if family not in FAMILIES:
        raise ValueError(f"task family must be one of {FAMILIES}, got {family!r}")

    def decorate(cls):
        if fixed:
            TASKS.add(Info(name, functools.partial(cls, **fixed), family=family))
        else:
            cls.name = name
            TASKS.add(Info(name, cls, family=family))
        return cls
    return decorate


@dataclass
class Batch:
    inputs: torch.Tensor                     # (B, T) int64 tokens or (B, T, input_dim) float32
    targets: torch.Tensor                    # (B, T) int64 (IGNORE where no loss) or (B, T, out) float
    metric_mask: torch.Tensor | None = None  # (B, T) bool; default: targets != IGNORE
    mask: torch.Tensor | None = None         # (B, T) bool, regression positions that count

    def to(self, device) -> "Batch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Batch(move(self.inputs), move(self.targets), move(self.metric_mask), move(self.mask))

    def slice(self, start: int, stop: int) -> "Batch":
        """Rows start:stop (a data-parallel rank's share of a global batch)."""
        part = lambda t: None if t is None else t[start:stop]  # noqa: E731
        return Batch(part(self.inputs), part(self.targets), part(self.metric_mask), part(self.mask))


def check_lengths(name: str, lengths, lo: int = 1) -> tuple[int, ...]:
    if isinstance(lengths, (int, np.integer)):
        lengths = (lengths,)
    if isinstance(lengths, str):
        try:
            lengths = tuple(int(v) for v in lengths.replace(",", " ").split())
        except ValueError:
            raise ValueError(f"{name} must be comma-separated ints, got {lengths!r}") from None
    try:
        lengths = tuple(lengths)
    except TypeError:  # None, a float: not a length nor a list of them
        raise ValueError(f"{name} must be an int or comma-separated ints, got {lengths!r}") \
            from None
    if not lengths:
        raise ValueError(f"{name} must list at least one length")
    return tuple(int_in(f"{name} entry", v, lo) for v in lengths)


def check_range(name: str, value, lo: int = 1) -> tuple[int, int]:
    """(min, max) from "MIN,MAX", a pair, or one int (a fixed length: (v, v))."""
    got = check_lengths(name, value, lo)
    if len(got) == 1:
        got = got * 2
    if len(got) != 2 or got[0] > got[1]:
        raise ValueError(f"{name} must be MIN,MAX with MIN <= MAX, got {value!r}")
    return got


class Task:
    """Base class. Subclasses set the class attributes and implement `sample`."""

    name = "?"
    kind = "classify"          # "classify" (token targets) or "regress" (float targets)
    metric = "acc"             # headline metric: a key of `summarize`
    higher_is_better = True
    chance = 0.0               # accuracy of guessing, for scaled accuracy
    vocab_size: int | None = None
    input_dim: int | None = None
    output_dim: int = 2
    train_lengths: tuple[int, int] | None = None   # (min, max) sampled during training
    test_lengths: tuple = (None,)                  # eval keys: lengths, or None for "test"
    test_size = 1024                               # generated tasks: test examples per length

    def sample(self, rng: np.random.Generator, batch_size: int, length: int | None = None,
               split: str = "train") -> Batch:
        raise NotImplementedError

    def test_batches(self, batch_size: int, length: int | None = None):
        """Batches of at most `batch_size` rows covering the test split (at `length`, a key
        of `test_lengths`) exactly once. Here: the generated split described above."""
        int_in("batch_size", batch_size)
        for start in range(0, self.test_size, TEST_CHUNK):
            rows = min(TEST_CHUNK, self.test_size - start)
            rng = np.random.default_rng([TEST_SEED, length or 0, start // TEST_CHUNK])
            chunk = self.sample(rng, rows, length=length, split="test")
            for i in range(0, rows, batch_size):
                yield chunk.slice(i, min(i + batch_size, rows))

    def baselines(self) -> dict[str, dict[str, float]]:
        """{baseline name: {metric: value}} on the whole test split; none by default."""
        return {}

    def max_length(self) -> int:
        """Longest sequence the task makes (sizes attention's KV cache)."""
        lengths = [v for v in (*self.test_lengths, *(self.train_lengths or ())) if v]
        return max(lengths, default=1024)

    def options(self) -> dict:
        return {}

    # -- loss and metrics -------------------------------------------------------------------
    def loss(self, outputs: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, int]:
        """(sum of the loss over counted positions, their number)."""
        if self.kind == "regress":
            m = batch.mask
            return F.mse_loss(outputs.float()[m], batch.targets[m], reduction="sum"), int(m.sum()) \
                * outputs.shape[-1]
        flat = outputs.float().reshape(-1, outputs.shape[-1])
        tgt = batch.targets.reshape(-1)
        return F.cross_entropy(flat, tgt, ignore_index=IGNORE, reduction="sum"), \
            int((tgt != IGNORE).sum())

    @torch.no_grad()
    def score(self, outputs: torch.Tensor, batch: Batch) -> dict[str, float]:
        """Sums over one batch, to add up and pass to `summarize`."""
        if self.kind == "regress":
            m = batch.mask
            err = outputs.float()[m] - batch.targets[m]
            return {"se": float((err ** 2).sum()), "ae": float(err.abs().sum()),
                    "count": err.numel()}
        m = batch.metric_mask if batch.metric_mask is not None else batch.targets != IGNORE
        logits, tgt = outputs.float()[m], batch.targets[m]
        return {"correct": float((logits.argmax(-1) == tgt).sum()), "count": int(m.sum()),
                "nll": float(F.cross_entropy(logits, tgt, reduction="sum")) if len(tgt) else 0.0}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums.get("count", 0), 1)
        if self.kind == "regress":
            return {"mse": sums["se"] / n, "mae": sums["ae"] / n}
        acc = sums["correct"] / n
        out = {"acc": acc, "loss": sums["nll"] / n}
        if self.metric == "bpc":  # language modelling: the loss in bits per symbol
            out["bpc"] = sums["nll"] / n / math.log(2)
        if self.chance:
            out["scaled_acc"] = (acc - self.chance) / (1 - self.chance)
        return out


def add_sums(a: dict, b: dict) -> dict:
    return {k: a.get(k, 0) + b.get(k, 0) for k in set(a) | set(b)}


def tokens_batch(inputs: np.ndarray, targets: np.ndarray, metric_mask: np.ndarray | None = None
                 ) -> Batch:
    return Batch(torch.from_numpy(np.ascontiguousarray(inputs)).long(),
                 torch.from_numpy(np.ascontiguousarray(targets)).long(),
                 None if metric_mask is None else torch.from_numpy(metric_mask).bool())


def last_position_mask(batch_size: int, length: int) -> np.ndarray:
    mask = np.zeros((batch_size, length), dtype=bool)
    mask[:, -1] = True
    return mask


def pick_length(rng, task: Task, length: int | None) -> int:
    if length is not None:
        return int_in("length", length)
    lo, hi = task.train_lengths
    return int(rng.integers(lo, hi + 1))
