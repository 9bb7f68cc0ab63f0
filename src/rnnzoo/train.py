"""Training: `rnnzoo train --task TASK --layer NAME ...` and `train(TrainConfig(...))`.

One run = one folder:

    config.json              the model's config (rnnzoo.load reads it) and the run's
    model.safetensors        the model, loadable with rnnzoo.load(folder)
    checkpoint.safetensors   model + AdamW state + step, for --resume
    metrics.jsonl            {"step", "loss", "lr", "tokens_per_s"} and {"step", "eval": ...}
    final.json               the final metrics (a suite skips runs that have it)
    curve.png                learning curve and metric vs test length (`plot` extra)

The loop: AdamW (no decay on norms, biases and embeddings' 1-D params), linear
warm-up then cosine decay to 10% of the peak, gradient clipping, bfloat16
autocast on GPU, evaluation every `eval_every` steps on each test length,
early stop when the headline metric reaches `target`.

Determinism: the batch of step s is drawn from the seed (seed, s), and
evaluation from its own seeds, so `--resume` from a checkpoint continues
exactly as if the run had not stopped.

Distributed: under `torchrun --nproc_per_node=N -m rnnzoo train ...` each rank
takes its 1/N rows of the same global batch and DistributedDataParallel averages
gradients (gloo on CPU, nccl on GPU); the loss is normalised by the global
count of scored positions, so the loss curve is that of one process on the
global batch.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from rnnzoo.io import atomic_write_text
from rnnzoo.models.checkpoint import load_tensors, save, save_tensors
from rnnzoo.models.stack import ModelConfig, SequenceModel
from rnnzoo.registry import get_layer_info
from rnnzoo.tasks import Task, get_task
from rnnzoo.tasks.base import add_sums

CHECKPOINT, METRICS, FINAL, PLOT = ("checkpoint.safetensors", "metrics.jsonl", "final.json",
                                    "curve.png")


@dataclass
class TrainConfig:
    task: str
    layer: str
    task_options: dict = field(default_factory=dict)
    layer_options: dict = field(default_factory=dict)
    d_model: int = 64
    layers: int = 2
    mlp_ratio: float = 0.0
    hybrid: str | None = None
    attention_options: dict = field(default_factory=dict)
    lr: float = 1e-3
    steps: int = 1000
    batch_size: int = 32
    warmup: int | None = None        # default: 10% of steps
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    threads: int | None = None       # CPU threads (torch.set_num_threads); None: torch's default
    amp: bool = True                 # bfloat16 autocast on GPU (no effect on CPU)
    eval_every: int = 200
    eval_batches: int = 4
    target: float | None = None      # stop when the headline metric reaches it
    log_every: int = 50
    out: str | None = None

    def validate(self) -> "TrainConfig":
        get_layer_info(self.layer)  # unknown layer: lists the registered ones
        for name, lo in (("d_model", 1), ("layers", 1), ("steps", 1), ("batch_size", 1),
                         ("eval_every", 1), ("eval_batches", 1), ("log_every", 1), ("seed", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"--{name.replace('_', '-')} must be an int >= {lo}, got {v!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"--threads must be an int >= 1, got {self.threads!r}")
        if self.warmup is not None and (not isinstance(self.warmup, int) or not
                                        0 <= self.warmup <= self.steps):
            raise ValueError(f"--warmup must be an int in [0, steps={self.steps}], got {self.warmup!r}")
        for name, lo, hi in (("lr", 0, 10), ("weight_decay", 0, 10), ("grad_clip", 0, 1e9),
                             ("mlp_ratio", 0, 64)):
            v = getattr(self, name)
            strict = name in ("lr", "grad_clip")
            if not isinstance(v, (int, float)) or v < lo or v > hi or (strict and v == lo):
                bound = "(" if strict else "["
                raise ValueError(f"--{name.replace('_', '-')} must lie in {bound}{lo}, {hi}], "
                                 f"got {v!r}")
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up to `lr`, then cosine decay to lr / 10 at the last step."""
    warmup = config.warmup if config.warmup is not None else config.steps // 10
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, config.steps - warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


# -- distributed ----------------------------------------------------------------------------
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, value: float, device) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return float(t.item())


def _dist_setup(device: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return _Dist()
    import torch.distributed as td
    if not td.is_initialized():
        td.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return _Dist(td.get_rank(), td.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _pick_device(name: str, dist: _Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and dist.world > 1:
        name = f"cuda:{dist.local_rank}"
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") \
            from None


# -- building blocks -------------------------------------------------------------------------
def build(config: TrainConfig) -> tuple[Task, SequenceModel]:
    task = get_task(config.task, **config.task_options)
    torch.manual_seed(config.seed)
    model = SequenceModel(ModelConfig(
        layer=config.layer, d_model=config.d_model, num_layers=config.layers,
        vocab_size=task.vocab_size, input_dim=task.input_dim, output_dim=task.output_dim,
        mlp_ratio=config.mlp_ratio, layer_options=dict(config.layer_options),
        hybrid=config.hybrid, attention_options=dict(config.attention_options),
        max_len=task.max_length()))
    return task, model


def make_optimizer(model, config: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)


def train_batch(task: Task, config: TrainConfig, step: int):
    """The global batch of `step`: a function of (seed, step) only."""
    return task.sample(np.random.default_rng([config.seed, step]), config.batch_size)


@torch.no_grad()
def evaluate(model, task: Task, config: TrainConfig, device, autocast) -> dict:
    """{"eval": {length or "test": metrics}, "metric": mean headline over lengths}."""
    was_training = model.training
    model.eval()
    per_key = {}
    for key in task.test_lengths:
        rng = np.random.default_rng([config.seed, 1_000_003, key or 0])
        sums = {}
        for _ in range(config.eval_batches):
            batch = task.sample(rng, config.batch_size, length=key, split="test").to(device)
            with autocast():
                outputs, _ = model(batch.inputs)
            sums = add_sums(sums, task.score(outputs, batch))
        per_key[str(key) if key else "test"] = task.summarize(sums)
    model.train(was_training)
    headline = float(np.mean([m[task.metric] for m in per_key.values()]))
    return {"eval": per_key, task.metric: headline}


def _reached(value: float, config: TrainConfig, task: Task) -> bool:
    if config.target is None:
        return False
    return value >= config.target if task.higher_is_better else value <= config.target


# -- checkpoints -------------------------------------------------------------------------------
def _save_checkpoint(out: Path, model, optimizer, step: int, config: TrainConfig) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    state = optimizer.state_dict()
    for i, s in state["state"].items():
        for k, v in s.items():
            tensors[f"optim.{i}.{k}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
    meta = {"step": str(step), "train_config": json.dumps(asdict(config)),
            "param_groups": json.dumps(state["param_groups"])}
    save_tensors(out / CHECKPOINT, tensors, meta)
    save(model, out)


def _load_checkpoint(out: Path, model, optimizer) -> int:
    tensors, meta = load_tensors(out / CHECKPOINT)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    return int(meta["step"])


def _read_metrics(out: Path, up_to_step: int) -> list[dict]:
    path = out / METRICS
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] <= up_to_step]


# -- the loop ----------------------------------------------------------------------------------
def train(config: TrainConfig, *, resume: bool = False, stop_at: int | None = None,
          quiet: bool = False) -> dict:
    """Train one model; returns the final record (also written to `out`/final.json).

    `stop_at` stops after that step as an interruption would (checkpoint written,
    no final.json); `resume=True` continues from `out`'s checkpoint.
    """
    config.validate()
    dist = _dist_setup(config.device if config.device != "auto" else
                       ("cuda" if torch.cuda.is_available() else "cpu"))
    device = _pick_device(config.device, dist)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if config.batch_size % dist.world:
        raise ValueError(f"--batch-size ({config.batch_size}) must be a multiple of the number "
                         f"of processes ({dist.world})")
    task, model = build(config)
    model.to(device)
    optimizer = make_optimizer(model, config)
    out = Path(config.out) if config.out else None
    say = (lambda *a: print(*a, flush=True)) if dist.main and not quiet else (lambda *a: None)

    start, history = 0, []
    if resume:
        if out is None or not (out / CHECKPOINT).is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {(out or Path('?')) / CHECKPOINT}")
        start = _load_checkpoint(out, model, optimizer)
        history = _read_metrics(out, start)
        say(f"resumed from {out / CHECKPOINT} at step {start}")
    if out is not None and dist.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "train_config.json", json.dumps(asdict(config), indent=2) + "\n")
        atomic_write_text(out / METRICS, "".join(json.dumps(r) + "\n" for r in history))

    def log(record):
        history.append(record)
        if out is not None and dist.main:
            with open(out / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")

    net = model
    if dist.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    use_amp = config.amp and device.type == "cuda"

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp)

    n_params = sum(p.numel() for p in model.parameters())
    say(f"rnnzoo train: task {task.name}, layer {config.layer}, {config.layers} layers x "
        f"d_model {config.d_model}, {n_params / 1e3:.1f}k parameters, {config.steps} steps, "
        f"device {device}{f', {dist.world} processes' if dist.world > 1 else ''}")

    share = config.batch_size // dist.world
    t0, tokens, last = time.perf_counter(), 0, None
    run_t0 = time.perf_counter()
    stopped_early, step = False, start
    model.train()
    for step in range(start, config.steps):
        lr = lr_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = train_batch(task, config, step)
        local = batch.slice(dist.rank * share, (dist.rank + 1) * share).to(device)
        with autocast():
            outputs, _ = net(local.inputs)
        loss_sum, count = task.loss(outputs, local)
        total = dist.sum(count, device)
        loss = loss_sum / max(total, 1) * dist.world  # DDP averages over ranks
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        tokens += batch.inputs.shape[0] * batch.inputs.shape[1]
        done = step + 1
        if done % config.log_every == 0 or done == config.steps or done == stop_at:
            mean_loss = dist.sum(float(loss_sum.detach()), device) / max(total, 1)
            elapsed = time.perf_counter() - t0
            rate = tokens / max(elapsed, 1e-9)
            log({"step": done, "loss": mean_loss, "lr": lr, "tokens_per_s": rate})
            bar = "#" * int(20 * done / config.steps)
            say(f"[{bar:<20}] step {done:>6}/{config.steps}  loss {mean_loss:.4f}  "
                f"lr {lr:.2e}  {rate / 1e3:.1f}k tok/s")
            t0, tokens = time.perf_counter(), 0
        if done % config.eval_every == 0 or done == config.steps or done == stop_at:
            last = evaluate(model, task, config, device, autocast)
            log({"step": done, **last})
            per = "  ".join(f"{k}: {v[task.metric]:.3f}" for k, v in last["eval"].items())
            say(f"  eval step {done}: {task.metric} {last[task.metric]:.4f}  ({per})")
            if out is not None and dist.main:
                _save_checkpoint(out, model, optimizer, done, config)
            if _reached(last[task.metric], config, task):
                say(f"  target {task.metric} {config.target} reached at step {done}")
                stopped_early = True
                break
        if done == stop_at:
            return {"stopped_at": done}
    if last is None:  # resumed a run that had already finished its steps
        last = evaluate(model, task, config, device, autocast)
    record = {"task": task.name, "layer": config.layer, "lr": config.lr, "metric": task.metric,
              "value": last[task.metric], "eval": last["eval"], "steps": step + 1,
              "early_stop": stopped_early, "seconds": time.perf_counter() - run_t0,
              "parameters": n_params}
    if hasattr(task, "baselines"):
        record["baselines"] = task.baselines()
    if out is not None and dist.main:
        atomic_write_text(out / FINAL, json.dumps(record, indent=2) + "\n")
        plot_run(out, history, task, say)
    return record


def plot_run(out: Path, history: list[dict], task: Task, say=print) -> None:
    """curve.png: training loss vs step, and the headline metric vs test length."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("note: matplotlib is not installed (pip install 'rnnzoo[plot]'); no curve.png")
        return
    losses = [(r["step"], r["loss"]) for r in history if "loss" in r and "eval" not in r]
    evals = [r for r in history if "eval" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    if losses:
        axes[0].plot(*zip(*losses))
    axes[0].set(xlabel="step", ylabel="training loss", title=f"{task.name}: learning curve")
    axes[0].set_yscale("log")
    if evals:
        keys = list(evals[-1]["eval"])
        values = [evals[-1]["eval"][k][task.metric] for k in keys]
        axes[1].plot(range(len(keys)), values, marker="o")
        axes[1].set_xticks(range(len(keys)), keys)
    axes[1].set(xlabel="test length", ylabel=task.metric, title="final evaluation")
    fig.tight_layout()
    tmp = out / f".{PLOT}.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out / PLOT)


# -- the command ---------------------------------------------------------------------------------
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


def add_model_arguments(p, depth_flag: str = "--layers") -> None:
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument(depth_flag, dest="depth", type=int, default=2, help="number of blocks")
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
        d_model=args.d_model, layers=args.depth, mlp_ratio=args.mlp_ratio, hybrid=args.hybrid,
        attention_options=attention_options, lr=lr, steps=args.steps,
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


def main(args) -> None:
    out = args.out or f"runs/{args.task}-{args.layer}-lr{args.lr:g}-seed{args.seed}"
    config = config_from_args(args, args.task, args.layer, args.lr, out)
    try:
        record = train(config, resume=args.resume)
        if int(os.environ.get("RANK", "0")) != 0:
            return
        if "baselines" in record:
            print("baselines on the test part: " + ", ".join(
                f"{k} mse {v['mse']:.4f} mae {v['mae']:.4f}" for k, v in record["baselines"].items()))
        print(f"{record['metric']} {record['value']:.4f} after {record['steps']} steps "
              f"({record['seconds']:.1f} s); run folder {out}")
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    sys.stdout.flush()


# -- rnnzoo generate ---------------------------------------------------------------------------
def add_generate_arguments(p) -> None:
    p.add_argument("run_dir", metavar="RUN", help="a run folder of `rnnzoo train --task text`")
    p.add_argument("--prompt", default="\n", help="text to continue")
    p.add_argument("--tokens", type=int, default=200, help="how many characters (bytes) to add")
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--top-k", type=int, help="sample among the k most likely")
    p.add_argument("--seed", type=int, default=0)


def main_generate(args) -> None:
    """Continue a prompt with a text model; the prompt is read once, then one step a token."""
    run = Path(args.run_dir)
    config_path = run / "train_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no run folder at {run} ({config_path} is missing)")
    config = TrainConfig.from_dict(json.loads(config_path.read_text()))
    if config.task != "text":
        raise ValueError(f"generate needs a run of the text task, {run} trained {config.task!r}")
    task = get_task("text", **config.task_options)
    model = __import__("rnnzoo").load(run)
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
