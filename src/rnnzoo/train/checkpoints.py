"""The run folder: what a run writes, and how `--resume` reads it back.

    config.json              the model's config (rnnzoo.load reads it)
    model.safetensors        the model, loadable with rnnzoo.load(folder)
    checkpoint.safetensors   model + AdamW state + step, for --resume
    train_config.json        the TrainConfig of the run
    metrics.jsonl            {"step", "loss", "lr", "tokens_per_s"} and {"step", "eval": ...}
    final.json               the final record (a suite skips runs that have it)
    curve.png                learning curve and metric vs test length (`plot` extra)

A checkpoint written by an older rnnzoo resumes when its names can be
translated (TrainConfig.from_dict, models/checkpoint.upgrade_options) and
otherwise fails in one line saying what differs.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from rnnzoo.io import atomic_write_text
from rnnzoo.models.checkpoint import load_state, load_tensors, save, save_tensors
from rnnzoo.tasks import Task
from rnnzoo.train.config import TrainConfig
from rnnzoo.train.plots import PLOT, plot_run

CHECKPOINT, METRICS, FINAL, TRAIN_CONFIG = ("checkpoint.safetensors", "metrics.jsonl",
                                            "final.json", "train_config.json")
# what a resumed run must share with the run that wrote the checkpoint
MODEL_FIELDS = ("task", "layer", "d_model", "num_layers", "mlp_ratio", "layer_options", "hybrid",
                "attention_options")

__all__ = ["CHECKPOINT", "METRICS", "FINAL", "PLOT", "TRAIN_CONFIG", "RunFolder",
           "save_checkpoint", "load_checkpoint", "read_metrics"]


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
            raise ValueError(f"--resume: {path} holds optimizer state for {owner!r}, which "
                             f"the model does not have")
        if v.dim() and v.shape != params[owner].shape:
            raise ValueError(f"--resume: {path} was written by an older rnnzoo whose "
                             f"parameter order differs; its optimizer state for parameter "
                             f"{index[owner]} has shape {tuple(v.shape)}, not "
                             f"{tuple(params[owner].shape)} ({owner}): the model loads "
                             f"(rnnzoo.load), but this run cannot be resumed")
        state.setdefault(index[owner], {})[key] = v
    return state


def _check_same_model(path: Path, meta: dict, config: TrainConfig) -> None:
    if "train_config" not in meta:
        return
    saved = asdict(TrainConfig.from_dict(json.loads(meta["train_config"]), source=path))
    given = json.loads(json.dumps(asdict(config)))
    for name in MODEL_FIELDS:
        if saved[name] != given[name]:
            raise ValueError(f"--resume: {path} was trained with {name}={saved[name]!r}, "
                             f"this run has {name}={given[name]!r}")


def load_checkpoint(out: Path, model, optimizer, config: TrainConfig) -> int:
    """Restore model and optimizer from `out`/checkpoint.safetensors; returns its step."""
    path = out / CHECKPOINT
    tensors, meta = load_tensors(path)
    _check_same_model(path, meta, config)
    load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path,
               strict=True)
    state = _optimizer_state(path, model, optimizer, tensors, meta)
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    return int(meta["step"])


def read_metrics(out: Path, up_to_step: int) -> list[dict]:
    """The metrics rows of `out` up to `up_to_step` (those a resumed run keeps)."""
    path = out / METRICS
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] <= up_to_step]


class RunFolder:
    """The files of one run. `history` holds the metrics rows; without a folder, or on a
    rank other than the main one (`writes=False`), nothing is written."""

    def __init__(self, out: str | None, writes: bool = True):
        self.path = Path(out) if out else None
        self.writes = self.path is not None and writes
        self.history: list[dict] = []

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
            self.path.mkdir(parents=True, exist_ok=True)
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

    def finish(self, record: dict, task: Task, say=print) -> None:
        """final.json and curve.png."""
        if self.writes:
            atomic_write_text(self.path / FINAL, json.dumps(record, indent=2) + "\n")
            plot_run(self.path, self.history, task, say)
