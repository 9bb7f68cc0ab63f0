"""`rnnzoo train`: its flags, and the flags it shares with `rnnzoo suite`.

    rnnzoo train --task parity --layer lstm --depth 1 --d-model 64 --steps 2000 --out runs/x

`--layer` names one layer and `--depth` the number of blocks; `rnnzoo suite`
and `rnnzoo bench` take a list of layers as `--layers`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from rnnzoo.train import dist
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


def add_model_arguments(p) -> None:
    """The model, task-option and optimiser flags of `train` and `suite`."""
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--depth", type=int, default=2, help="number of blocks")
    p.add_argument("--mlp-ratio", type=float, default=0.0, help="gated MLP width / d_model; 0: none")
    p.add_argument("--hybrid", help="R:A, e.g. 2:1 = 2 recurrent blocks then 1 attention block")
    p.add_argument("--window", type=int, help="sliding window of the hybrid's attention blocks")
    p.add_argument("--layer-option", action="append", metavar="KEY=VALUE", help="layer option")
    p.add_argument("--task-option", action="append", metavar="KEY=VALUE", help="task option")
    p.add_argument("--data", help="data file of the file tasks (text, classify, forecast)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup", type=int, help="warm-up steps (default: 10%% of --steps)")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="CPU threads (1 is fastest for tiny models)")
    p.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on GPU")
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--target", type=float, help="stop when the task's metric reaches this")
    p.add_argument("--log-every", type=int, default=50)


def config_from_args(args, task: str, layer: str, lr: float, out: str | None) -> TrainConfig:
    task_options = parse_options(args.task_option, "task-option")
    if args.data:
        task_options["path"] = args.data
    attention_options = {"window": args.window} if args.window else {}
    return TrainConfig(
        task=task, layer=layer, task_options=task_options,
        layer_options=parse_options(args.layer_option, "layer-option"),
        d_model=args.d_model, num_layers=args.depth, mlp_ratio=args.mlp_ratio,
        hybrid=args.hybrid, attention_options=attention_options, lr=lr, steps=args.steps,
        batch_size=args.batch_size, warmup=args.warmup, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip, seed=args.seed, device=args.device,
        threads=args.threads, amp=not args.no_amp,
        eval_every=args.eval_every, eval_batches=args.eval_batches, target=args.target,
        log_every=args.log_every, out=out)


def add_arguments(p) -> None:
    p.add_argument("--task", required=True, help="a task name (rnnzoo tasks lists them)")
    p.add_argument("--layer", required=True, help="a registered layer (rnnzoo list)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--out", help="run folder (default runs/TASK-LAYER-lrLR-seedS)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    add_model_arguments(p)
    # the depth was --layers before; say so instead of "unrecognized arguments"
    p.add_argument("--layers", dest="old_layers", help=argparse.SUPPRESS)


def main(args) -> None:
    if args.old_layers is not None:
        raise ValueError(f"--layers is now --depth (the number of blocks): use --depth "
                         f"{args.old_layers}; --layers lists layer names in suite and bench")
    out = args.out or f"runs/{args.task}-{args.layer}-lr{args.lr:g}-seed{args.seed}"
    config = config_from_args(args, args.task, args.layer, args.lr, out)
    try:
        record = train(config, resume=args.resume)
        if int(os.environ.get("RANK", "0")) != 0:
            return
        if "baselines" in record:
            print("baselines on the test part: " + ", ".join(
                f"{k} " + " ".join(f"{m} {x:.4f}" for m, x in v.items())
                for k, v in record["baselines"].items()))
        print(f"{record['metric']} {record['value']:.4f} after {record['steps']} steps "
              f"({record['seconds']:.1f} s); run folder {out}")
    finally:
        dist.teardown()
    sys.stdout.flush()
