"""`rnnzoo generate RUN --prompt TEXT`: continue a prompt with a model trained on the
text task. The prompt is read once (parallel forward), then one `step` per token
on the constant-size state (models.stack.SequenceModel.generate).

A byte-level run (mode=byte, the default) needs nothing but its run folder: bytes
are their own vocabulary. A character-level run reads its vocabulary from the
training text, so that file must still be where the run found it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rnnzoo.checks import int_in, real
from rnnzoo.models.checkpoint import load
from rnnzoo.tasks import get_task
from rnnzoo.train.checkpoints import TRAIN_CONFIG
from rnnzoo.train.config import TrainConfig


def add_arguments(p) -> None:
    p.add_argument("run_dir", metavar="RUN", help="a run folder of `rnnzoo train --task text`")
    p.add_argument("--prompt", default="\n", help="text to continue")
    p.add_argument("--tokens", type=int, default=200, help="how many characters (bytes) to add")
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--top-k", type=int, help="sample among the k most likely (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling")


def _read_config(path: Path) -> TrainConfig:
    try:
        saved = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path} is damaged: {type(e).__name__}: {e}") from None
    return TrainConfig.from_dict(saved, source=path).validate()


def _load_model(run: Path):
    """rnnzoo.load, with a damaged folder as one line."""
    try:
        return load(run)
    except (KeyError, TypeError, AttributeError, IndexError, RecursionError) as e:
        text = f"{type(e).__name__}: {e}".replace("\n", " ")
        raise ValueError(f"{run} holds a damaged model ({text})") from None


def main(args) -> None:
    real("--temperature", args.temperature, lo=0)
    int_in("--tokens", args.tokens, lo=0)
    int_in("--seed", args.seed, lo=0)
    if not args.prompt:
        raise ValueError("--prompt must hold at least one character: the model continues it")
    run = Path(args.run_dir)
    config_path = run / TRAIN_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"no run folder at {run} ({config_path} is missing)")
    config = _read_config(config_path)
    if config.task != "text":
        raise ValueError(f"generate needs a run of the text task, {run} trained {config.task!r}")
    model = _load_model(run)
    if config.task_options.get("mode", "byte") == "byte":
        prompt = list(args.prompt.encode("utf-8"))
        decode = lambda tokens: bytes(tokens).decode("utf-8", errors="replace")  # noqa: E731
    else:
        text = config.task_options.get("path")
        if not text or not Path(text).is_file():
            raise FileNotFoundError(f"{run} is a character-level run: its vocabulary is the "
                                    f"characters of its training text {text}, which is not there "
                                    f"any more (byte-level runs need no text)")
        task = get_task("text", **config.task_options)
        missing = sorted(set(args.prompt) - set(task.vocab))
        if missing:
            raise ValueError(f"--prompt has characters the model never saw: {missing}")
        prompt = [task.vocab.index(c) for c in args.prompt]
        decode = task.decode
    vocab = model.config.vocab_size
    if max(prompt, default=0) >= (vocab or 0):
        raise ValueError(f"{run}: the model's vocabulary ({vocab}) does not hold the prompt's "
                         f"tokens; is it a text run?")
    generator = torch.Generator().manual_seed(args.seed)
    out = model.generate(torch.tensor([prompt]), args.tokens, temperature=args.temperature,
                         top_k=args.top_k, generator=generator)
    print(decode(out[0].tolist()))
