"""`rnnzoo train`: its flags, and the flags it shares with `rnnzoo suite`.

    rnnzoo train --task parity --layer lstm --depth 1 --d-model 64 --steps 2000 --out runs/x

`--layer` names one layer and `--depth` the number of blocks; `rnnzoo suite`
and `rnnzoo bench` take a list of layers as `--layers`. A flag left out takes
TrainConfig's default, or under `--resume` the run folder's saved setting.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import MISSING, asdict, fields
from pathlib import Path

from rnnzoo.train import dist
from rnnzoo.train.checkpoints import CHECKPOINT, saved_config
from rnnzoo.train.config import TrainConfig
from rnnzoo.train.loop import train


def parse_options(items: list[str] | None, what: str) -> dict:
    """['k=v', ...] -> {k: v}; values are JSON where they parse ('3', '[3, 40]', 'true'),
    comma lists become tuples ('3,40'), anything else stays a string."""
    options = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--{what} must be KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        options[key.strip()] = _parse_value(value.strip())
    return options


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if "," in text:
        return tuple(_parse_value(p) for p in text.split(","))
    return text


DEFAULTS = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}


def _default(name: str, shown=None) -> str:
    """' (default: X)' for the help of a flag whose default is TrainConfig's."""
    return f" (default: {shown if shown is not None else DEFAULTS[name]})"


def add_model_arguments(p) -> None:
    """The model, task-option and optimiser flags of `train` and `suite`. Their argparse
    default is None ("not given"): the value then comes from TrainConfig (or, under
    --resume, from the run folder), and the help shows TrainConfig's default."""
    p.add_argument("--d-model", type=int, help="model width" + _default("d_model"))
    p.add_argument("--depth", type=int, help="number of blocks" + _default("num_layers"))
    p.add_argument("--mlp-ratio", type=float,
                   help="gated MLP width / d_model; 0: no MLP" + _default("mlp_ratio"))
    p.add_argument("--hybrid", help="R:A, e.g. 2:1 = 2 recurrent blocks then 1 attention block"
                   + _default("hybrid", "none"))
    p.add_argument("--window", type=int, help="sliding window of the hybrid's attention blocks"
                   + _default("attention_options", "full attention"))
    p.add_argument("--layer-option", action="append", metavar="KEY=VALUE",
                   help="a layer option, repeatable (default: the layer's own defaults)")
    p.add_argument("--task-option", action="append", metavar="KEY=VALUE",
                   help="a task option, repeatable; `rnnzoo tasks` lists them with their "
                        "defaults (default: the task's own defaults)")
    p.add_argument("--data", help="data file of the file tasks: text, classify, forecast; the "
                   "README describes each format (default: none)")
    p.add_argument("--steps", type=int, help="training steps" + _default("steps"))
    p.add_argument("--batch-size", type=int, help="sequences per step" + _default("batch_size"))
    p.add_argument("--warmup", type=int, help="warm-up steps" + _default("warmup", "10%% of --steps"))
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay of the matrices"
                   + _default("weight_decay"))
    p.add_argument("--grad-clip", type=float, help="clip the gradient norm to this"
                   + _default("grad_clip"))
    p.add_argument("--seed", type=int, help="seed of the initialisation and the batches"
                   + _default("seed"))
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N; auto: cuda when available"
                   + _default("device"))
    p.add_argument("--threads", type=int, help="CPU threads; 1 is fastest for tiny models"
                   + _default("threads", "torch's default"))
    p.add_argument("--no-amp", action="store_true", default=None,
                   help="no bfloat16 autocast on GPU (default: autocast on GPU)")
    p.add_argument("--eval-every", type=int, help="evaluate (sampled) and checkpoint every N "
                   "steps" + _default("eval_every"))
    p.add_argument("--eval-batches", type=int, help="batches per test length in the periodic "
                   "evaluation; the final one covers the whole test split"
                   + _default("eval_batches"))
    p.add_argument("--target", type=float, help="stop when the periodic evaluation's metric "
                   "reaches this" + _default("target", "none: train all --steps"))
    p.add_argument("--model", help="stack: blocks of --layer between "
                   "an input map and a head; dsr: dynamical-systems reconstruction, a latent "
                   "plrnn/al_rnn of --d-model units read out on its first N, for the dynamics "
                   "tasks (docs/dynamics.md); chimera: --depth Chimera 2-D layers over time x "
                   "variates, for forecast and the dynamics tasks, --layer left out "
                   "(docs/2d.md)" + _default("model"))
    p.add_argument("--gtf-alpha", type=float, help="--model dsr: generalized teacher forcing, "
                   "the forced state alpha x_t + (1 - alpha) z_t; alpha at the start, in [0, 1]"
                   + _default("gtf_alpha", "1: teacher forcing"))
    p.add_argument("--gtf-anneal", type=int, help="--model dsr: every N steps alpha <- "
                   "max(gamma alpha, alpha*), alpha* from the Jacobians; 0: alpha fixed"
                   + _default("gtf_anneal"))
    p.add_argument("--gtf-gamma", type=float, help="--model dsr: the annealing's gamma"
                   + _default("gtf_gamma"))
    p.add_argument("--log-every", type=int, help="print and log the loss every N steps"
                   + _default("log_every"))


# flag dest -> TrainConfig field, where they differ (the options flags are handled apart)
_FIELDS = {"depth": "num_layers", "no_amp": "amp"}
_SIMPLE = ("d_model", "depth", "mlp_ratio", "hybrid", "steps", "batch_size", "warmup",
           "weight_decay", "grad_clip", "seed", "device", "threads", "no_amp", "eval_every",
           "eval_batches", "target", "log_every", "model", "gtf_alpha", "gtf_anneal", "gtf_gamma",
           "dist_timeout")


def given_settings(args) -> dict:
    """The TrainConfig fields the command line sets (flags left out are absent)."""
    given = {}
    for dest in _SIMPLE:
        value = getattr(args, dest, None)
        if value is not None:
            given[_FIELDS.get(dest, dest)] = (not value) if dest == "no_amp" else value
    task_options = parse_options(args.task_option, "task-option")
    if args.data:
        task_options["path"] = args.data
    if getattr(args, "pack", None):
        task_options["pack"] = True
    if task_options:
        given["task_options"] = task_options
    if args.layer_option:
        given["layer_options"] = parse_options(args.layer_option, "layer-option")
    if args.window is not None:
        given["attention_options"] = {"window": args.window}
    for name in ("fsdp", "sequence_parallel"):
        if getattr(args, name, None):
            given[name] = True
    return given


def config_from_args(args, task: str, layer: str, lr: float, out: str | None) -> TrainConfig:
    return TrainConfig(task=task, layer=layer, lr=lr, out=out, **given_settings(args))


def add_arguments(p) -> None:
    p.add_argument("--task", help="a task name; `rnnzoo tasks` lists them (required, except "
                   "with --resume: the run folder's)")
    p.add_argument("--layer", help="a registered layer; `rnnzoo list` lists them (required, "
                   "except with --resume: the run folder's)")
    p.add_argument("--lr", type=float, help="peak learning rate" + _default("lr"))
    p.add_argument("--out", help="run folder (default: runs/TASK-LAYER-lrLR-seedS)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, with its saved settings; "
                        "a flag that contradicts them is refused")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the run files of another run in --out first (without it, a "
                        "folder holding another run is refused)")
    p.add_argument("--pack", action="store_true", default=None,
                   help="text task: training batches of whole documents packed end to end "
                        "without padding (cu_seqlens), the state restarting at each")
    p.add_argument("--fsdp", action="store_true", default=None,
                   help="under torchrun: shard parameters, gradients and AdamW state across "
                        "the processes (FSDP2) instead of replicating them (DDP)")
    p.add_argument("--sequence-parallel", action="store_true", default=None,
                   help="under torchrun: every process takes a slice of the time axis of the "
                        "whole batch (LASP-2; chunkwise layers), docs/distributed.md")
    p.add_argument("--dist-timeout", type=float, metavar="SECONDS",
                   help="several processes: how long forming the process group and each "
                        "collective may wait for a rank before the run stops with an error "
                        "(docs/distributed.md)" + _default("dist_timeout", "torch's, 30 minutes"))
    add_model_arguments(p)
    # the depth was --layers before; say so instead of "unrecognized arguments"
    p.add_argument("--layers", dest="old_layers", help=argparse.SUPPRESS)


def _resumed_config(args, out: str) -> TrainConfig:
    """The run folder's saved settings with the flags given; train() refuses any that
    contradict the checkpoint, in one line."""
    saved = saved_config(Path(out))
    if saved is None:
        raise FileNotFoundError(f"--resume: no run folder at {out} (no {CHECKPOINT})")
    merged = asdict(saved)
    for name, value in given_settings(args).items():
        if name.endswith("_options"):
            value = {**merged[name], **value}
        merged[name] = value
    for name in ("task", "layer", "lr"):
        if getattr(args, name) is not None:
            merged[name] = getattr(args, name)
    merged["out"] = out
    return TrainConfig(**merged)


def main(args) -> None:
    if args.old_layers is not None:
        raise ValueError(f"--layers is now --depth (the number of blocks): use --depth "
                         f"{args.old_layers}; --layers lists layer names in suite and bench")
    lr = args.lr if args.lr is not None else DEFAULTS["lr"]
    if args.layer is None and args.model == "chimera" and not args.resume:
        args.layer = "chimera"  # --model chimera: its own 2-D layer
    if args.out:
        out = args.out
    elif args.task and args.layer:
        out = f"runs/{args.task}-{args.layer}-lr{lr:g}-seed{args.seed or DEFAULTS['seed']}"
    else:
        out = None
    if args.resume:
        if out is None:
            raise ValueError("--resume needs the run folder: --out PATH")
        config = _resumed_config(args, out)
    else:
        missing = [f"--{n}" for n in ("task", "layer") if getattr(args, n) is None]
        if missing:
            raise ValueError(f"{' and '.join(missing)} required (or --resume --out RUN to continue "
                             f"a run)")
        config = config_from_args(args, args.task, args.layer, lr, out)
    try:
        record = train(config, resume=args.resume, overwrite=args.overwrite)
        if int(os.environ.get("RANK", "0")) != 0:
            return
        for line in summary_lines(record, out):
            print(line)
    finally:
        dist.teardown()
    sys.stdout.flush()


def _model_metrics(record: dict) -> dict[str, float]:
    """Each metric of the final evaluation, averaged over the test lengths."""
    per = list(record["eval"].values())
    return {k: sum(m[k] for m in per) / len(per) for k in per[0]}


def summary_lines(record: dict, out: str | None = None) -> list[str]:
    """The final line (headline metric on the whole test split), the model next to each
    baseline (task.baselines()), and a warning line for each baseline it loses to."""
    counts = set(record.get("test_examples", {}).values())
    n = f"{counts.pop()} examples" if len(counts) == 1 else "all examples"
    where = f"; run folder {out}" if out else ""
    lines = [f"{record['metric']} {record['value']:.4f} on the whole test split ({n}"
             f"{' per length' if len(record['eval']) > 1 else ''}) after {record['steps']} steps "
             f"({record['seconds']:.1f} s){where}"]
    rec = record.get("reconstruction")
    if rec:  # --model dsr: its free run against the test part
        lines.append(f"  free run vs the test part: D_stsp {rec['dstsp']:.4f} (binned "
                     f"{rec['dstsp_binned']:.2f}), D_H {rec['dh']:.4f}")
    baselines = record.get("baselines") or {}
    if not baselines:
        return lines
    model = _model_metrics(record)
    names = [k for k in model if any(k in b for b in baselines.values())]
    width = max(len(n) for n in ("model", *baselines))
    lines.append(f"  {'model':<{width}}  " + "  ".join(f"{k} {model[k]:.4f}" for k in names))
    for name, b in baselines.items():
        lines.append(f"  {name:<{width}}  " + "  ".join(f"{k} {b[k]:.4f}" for k in names if k in b))
    metric, value = record["metric"], record["value"]
    higher = record.get("higher_is_better", True)
    for name, b in baselines.items():
        if metric in b and (value < b[metric] if higher else value > b[metric]):
            lines.append(f"warning: the model loses to the {name} baseline on the test split "
                         f"({metric} {value:.4f} vs {b[metric]:.4f})")
    return lines
