"""The run folder: what a run writes, who may write it, and how `--resume` reads it back.

    config.json              the model's config (rnnzoo.load reads it)
    model.safetensors        the model, loadable with rnnzoo.load(folder)
    checkpoint.safetensors   model + AdamW state + step, for --resume
    train_config.json        the TrainConfig of the run
    metrics.jsonl            {"step", "loss", "lr", "tokens_per_s"} and {"step", "eval": ...}
    final.json               the final record (a suite skips runs that have it)
    curve.png                loss and evaluation curves (`plot` extra; plots.py)
    .lock                    held (flock) by the process that runs in the folder

One folder holds one run. A run takes the folder's lock for its whole life (a
second process into the same folder stops with one line), and a folder that
holds another run (other settings in train_config.json, or run files without
it) is refused unless `--resume` continues it or `--overwrite` deletes its
files. The same settings again start the run over. Settings that say where a
run executes, not what it computes (NOT_THE_RUN), may differ.

A checkpoint written by an older rnnzoo resumes when its names can be
translated (TrainConfig.from_dict, models/checkpoint.upgrade_options) and
otherwise fails in one line saying what differs; a damaged one fails in one
line naming the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from rnnzoo.io import atomic_write_text
from rnnzoo.models.checkpoint import CONFIG, WEIGHTS, load_state, load_tensors, save, save_tensors
from rnnzoo.tasks import Task
from rnnzoo.train.config import TrainConfig, flag
from rnnzoo.train.plots import PLOT, plot_run

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

CHECKPOINT, METRICS, FINAL, TRAIN_CONFIG = ("checkpoint.safetensors", "metrics.jsonl",
                                            "final.json", "train_config.json")
LOCK = ".lock"
RUN_FILES = (TRAIN_CONFIG, CHECKPOINT, METRICS, FINAL, WEIGHTS, CONFIG, PLOT)
# TrainConfig fields that say where and how verbosely a run executes, not what it computes
NOT_THE_RUN = ("out", "threads", "device", "log_every", "dist_timeout")

__all__ = ["CHECKPOINT", "METRICS", "FINAL", "PLOT", "TRAIN_CONFIG", "LOCK", "RunFolder",
           "save_checkpoint", "load_checkpoint", "read_metrics", "saved_config",
           "first_difference"]


def save_checkpoint(out: Path, model, optimizer, step: int, config: TrainConfig) -> None:
    """checkpoint.safetensors (model, AdamW state, step, config) and the loadable model.
    The AdamW state is keyed by parameter name (`optim.<name>.<key>`), so it survives a
    change of parameter order."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    state = optimizer.state_dict()
    names = _optimizer_order(model, optimizer)
    for i, s in state["state"].items():
        for k, v in s.items():
            tensors[f"optim.{names[i]}.{k}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
    meta = {"step": str(step), "train_config": json.dumps(asdict(config)),
            "param_groups": json.dumps(state["param_groups"]), "optim_keys": "names"}
    save_tensors(out / CHECKPOINT, tensors, meta)
    save(model, out)


class OtherParameterOrder(ValueError):
    """A checkpoint from before the AdamW state was keyed by name, whose positions no longer
    fit the model's parameters."""


def _optimizer_order(model, optimizer) -> list[str]:
    """The names of `model`'s parameters in the order `optimizer` numbers them."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _optimizer_state(path: Path, model, optimizer, tensors: dict, meta: dict) -> dict:
    """The AdamW state of a checkpoint as {index: {key: tensor}}, numbered as `optimizer`
    numbers `model`'s parameters."""
    order = _optimizer_order(model, optimizer)
    params = dict(model.named_parameters())
    index = {n: i for i, n in enumerate(order)}
    state: dict = {}
    by_name = meta.get("optim_keys") == "names"
    for k, v in tensors.items():
        if not k.startswith("optim."):
            continue
        owner, key = k[len("optim."):].rsplit(".", 1)
        if not by_name:  # older checkpoints: keyed by the parameter's position
            owner = order[int(owner)] if int(owner) < len(order) else owner
        if owner not in index:
            raise ValueError(f"it holds optimizer state for {owner!r}, which the model does "
                             f"not have")
        if v.dim() and v.shape != params[owner].shape and by_name:
            raise ValueError(f"optim.{owner}.{key} has shape {tuple(v.shape)}, its parameter "
                             f"{tuple(params[owner].shape)}")
        if v.dim() and v.shape != params[owner].shape:
            raise OtherParameterOrder(f"--resume: {path} was written by an older rnnzoo whose "
                             f"parameter order differs; its optimizer state for parameter "
                             f"{index[owner]} has shape {tuple(v.shape)}, not "
                             f"{tuple(params[owner].shape)} ({owner}): the model loads "
                             f"(rnnzoo.load), but this run cannot be resumed")
        state.setdefault(index[owner], {})[key] = v
    return state


def _json(text: str, source):
    """JSON text -> value; a damaged text raises ValueError naming `source`."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{source} is damaged: {type(e).__name__}: {e}") from None


def saved_config(out: Path) -> TrainConfig | None:
    """The settings a run folder was trained with: its checkpoint's copy, else
    train_config.json; None when it has neither."""
    path = Path(out) / CHECKPOINT
    if path.is_file():
        _, meta = load_tensors(path)
        if "train_config" in meta:
            return TrainConfig.from_dict(_json(meta["train_config"], path), source=path)
    path = Path(out) / TRAIN_CONFIG
    if path.is_file():
        return TrainConfig.from_dict(_json(path.read_text(), path), source=path)
    return None


def first_difference(saved: TrainConfig, given: TrainConfig) -> tuple[str, object, object] | None:
    """(field, saved value, given value) of the first setting that makes `given` another run."""
    a, b = (json.loads(json.dumps(asdict(c))) for c in (saved, given))
    for name in a:
        if name not in NOT_THE_RUN and a[name] != b[name]:
            return name, a[name], b[name]
    return None


def _check_same_run(path: Path, meta: dict, config: TrainConfig) -> None:
    if "train_config" not in meta:
        return
    saved = TrainConfig.from_dict(_json(meta["train_config"], path), source=path)
    diff = first_difference(saved, config)
    if diff:
        name, old, new = diff
        raise ValueError(f"--resume: {path} was trained with {name}={old!r}, this run has "
                         f"{name}={new!r}; a resumed run keeps its settings (leave out "
                         f"{flag(name)}, or train a new run into another --out)")


def _damaged(path: Path, e: BaseException) -> ValueError:
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    return ValueError(f"--resume: {path} is damaged ({text}); train a new run or --overwrite")


def load_checkpoint(out: Path, model, optimizer, config: TrainConfig) -> int:
    """Restore model and optimizer from `out`/checkpoint.safetensors; returns its step.
    Settings other than the saved ones, and damaged files, raise one-line ValueErrors."""
    path = out / CHECKPOINT
    tensors, meta = load_tensors(path)
    _check_same_run(path, meta, config)
    load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path,
               strict=True)
    try:
        step = int(meta["step"])
        if not 0 <= step <= config.steps:
            raise ValueError(f"step {step} is outside [0, {config.steps}]")
        groups = _json(meta["param_groups"], path)
        state = _optimizer_state(path, model, optimizer, tensors, meta)
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except OtherParameterOrder:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as e:
        raise _damaged(path, e) from None
    return step


def read_metrics(out: Path, up_to_step: int) -> list[dict]:
    """The metrics rows of `out` up to `up_to_step` (those a resumed run keeps)."""
    path = out / METRICS
    if not path.is_file():
        return []
    rows = []
    text = path.read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):  # a torn append: the process was killed writing it
        try:
            json.loads(lines[-1])
        except ValueError:
            lines.pop()  # (every row is written after the checkpoint's own, or with it)
    for n, line in enumerate(lines, 1):
        if line.strip():
            row = _json(line, f"{path}, line {n}")
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError(f"{path}, line {n} is damaged: no step in {line[:80]!r}")
            rows.append(row)
    return [r for r in rows if r["step"] <= up_to_step]


class _Lock:
    """An exclusive lock on `folder`/.lock for this process's life (flock: released by the
    kernel when the process dies, so a killed run leaves no stale lock)."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK
        self.file = open(self.path, "a+")
        try:
            if fcntl is not None:
                fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                import msvcrt
                msvcrt.locking(self.file.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "?"
            self.file.close()
            raise ValueError(f"--out {folder} is in use by another rnnzoo run (process {holder}); "
                             f"wait for it to end or choose another --out") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()

    def release(self) -> None:
        if not self.file.closed:
            self.file.truncate(0)
            self.file.close()  # closing the last descriptor releases the lock


def _make_folder(path: Path) -> None:
    """mkdir -p, with one line for each way the path can be wrong."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        above = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        raise ValueError(f"--out {path}: {above} is a file, not a folder") from None
    except PermissionError:
        raise ValueError(f"--out {path}: permission denied (cannot create the folder)") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"--out {path}: permission denied (cannot write in the folder)")


class RunFolder:
    """The files of one run. `history` holds the metrics rows; without a folder, or on a
    rank other than the main one (`writes=False`), nothing is written.

        folder = RunFolder("runs/x")
        folder.claim(config, resume=False, overwrite=False)   # mkdir, lock, no other run
        ... folder.begin(config); folder.log(row); folder.save(...); folder.finish(...)
        folder.release()
    """

    def __init__(self, out: str | None, writes: bool = True):
        self.path = Path(out) if out else None
        self.writes = self.path is not None and writes
        self.history: list[dict] = []
        self._lock: _Lock | None = None

    def claim(self, config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
              say=print) -> None:
        """Create the folder, take its lock, and make sure it holds no other run: with
        `resume` it must hold this run's checkpoint; with `overwrite` the run files it
        holds are deleted (only those: the folder may hold the user's other files)."""
        if resume and overwrite:
            raise ValueError("--resume and --overwrite exclude each other")
        if self.path is None:
            if resume:
                raise FileNotFoundError("--resume: no run folder given (--out)")
            return
        if resume and not (self.path / CHECKPOINT).is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {self.path / CHECKPOINT}")
        if not self.writes:
            return
        _make_folder(self.path)
        self._lock = _Lock(self.path)
        try:
            held = [n for n in RUN_FILES if (self.path / n).exists()]
            if resume or not held:
                return
            if not overwrite:
                why = self._other_run(config)
                if why:
                    raise ValueError(f"--out {self.path} holds another run ({why}); continue it "
                                     f"with --resume, replace it with --overwrite, or choose "
                                     f"another --out")
            for name in held:  # the same run again, or --overwrite: start over
                (self.path / name).unlink()
            say(f"{'overwrote' if overwrite else 'started over'}: the run files in {self.path}")
        except BaseException:
            self.release()
            raise

    def _other_run(self, config: TrainConfig) -> str | None:
        """Why the folder's run is not `config`'s (None: it is the same run)."""
        try:
            saved = saved_config(self.path)
        except ValueError as e:
            return str(e)
        if saved is None:
            return f"run files without {TRAIN_CONFIG}"
        diff = first_difference(saved, config)
        if diff:
            name, old, new = diff
            return f"trained with {name}={old!r}, this run has {name}={new!r}"
        return None

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def resume(self, model, optimizer, config: TrainConfig) -> int:
        """Load the checkpoint and the metrics up to it; returns the step to continue from."""
        if self.path is None or not (self.path / CHECKPOINT).is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at "
                                    f"{(self.path or Path('?')) / CHECKPOINT}")
        step = load_checkpoint(self.path, model, optimizer, config)
        self.history = read_metrics(self.path, step)
        return step

    def begin(self, config: TrainConfig) -> None:
        """train_config.json, and metrics.jsonl cut back to `history`."""
        if self.writes:
            atomic_write_text(self.path / TRAIN_CONFIG, json.dumps(asdict(config), indent=2) + "\n")
            atomic_write_text(self.path / METRICS,
                              "".join(json.dumps(r) + "\n" for r in self.history))

    def log(self, record: dict) -> None:
        self.history.append(record)
        if self.writes:
            with open(self.path / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")

    def save(self, model, optimizer, step: int, config: TrainConfig) -> None:
        if self.writes:
            save_checkpoint(self.path, model, optimizer, step, config)

    def finish(self, record: dict, task: Task, say=print, model=None) -> None:
        """final.json and curve.png (with the trained `model`'s predictions where the task
        draws them)."""
        if self.writes:
            atomic_write_text(self.path / FINAL, json.dumps(record, indent=2) + "\n")
            plot_run(self.path, self.history, task, say, final=record, model=model)
