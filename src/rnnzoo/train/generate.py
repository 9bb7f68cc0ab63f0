"""`rnnzoo generate RUN --prompt TEXT`: continue a prompt with a model trained on the
text task. The prompt is read once (parallel forward), then one `step` per token
on the constant-size state (models.stack.SequenceModel.generate)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rnnzoo.models.checkpoint import load
from rnnzoo.tasks import get_task
from rnnzoo.train.checkpoints import TRAIN_CONFIG
from rnnzoo.train.config import TrainConfig


def add_arguments(p) -> None:
    p.add_argument("run_dir", metavar="RUN", help="a run folder of `rnnzoo train --task text`")
    p.add_argument("--prompt", default="\n", help="text to continue")
    p.add_argument("--tokens", type=int, default=200, help="how many characters (bytes) to add")
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--top-k", type=int, help="sample among the k most likely")
    p.add_argument("--seed", type=int, default=0)


def main(args) -> None:
    run = Path(args.run_dir)
    config_path = run / TRAIN_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"no run folder at {run} ({config_path} is missing)")
    config = TrainConfig.from_dict(json.loads(config_path.read_text()), source=config_path)
    if config.task != "text":
        raise ValueError(f"generate needs a run of the text task, {run} trained {config.task!r}")
    task = get_task("text", **config.task_options)
    model = load(run)
    if task.vocab is None:
        prompt = list(args.prompt.encode("utf-8"))
    else:
        missing = sorted(set(args.prompt) - set(task.vocab))
        if missing:
            raise ValueError(f"--prompt has characters the model never saw: {missing}")
        prompt = [task.vocab.index(c) for c in args.prompt]
    generator = torch.Generator().manual_seed(args.seed)
    out = model.generate(torch.tensor([prompt]), args.tokens, temperature=args.temperature,
                         top_k=args.top_k, generator=generator)
    print(task.decode(out[0].tolist()))
