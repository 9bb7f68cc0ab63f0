"""The training loop: `train(TrainConfig(...))`, one model on one task.

AdamW (no decay on norms, biases and other 1-D parameters), linear warm-up then
cosine decay to 10% of the peak (config.lr_at), gradient clipping, bfloat16
autocast on GPU, evaluation every `eval_every` steps on each test length, early
stop when the headline metric reaches `target`.

Evaluation: the periodic one samples `eval_batches` x `batch_size` test
examples per length (and says so); the final metrics, in final.json and the
printed line, are on the whole test split (Task.test_batches).

A non-finite loss or gradient norm stops the run before the optimiser step, with
NonFiniteLoss naming the step; the checkpoint keeps the last evaluated step.

Determinism: the batch of step s is drawn from the seed (seed, s), and
evaluation from its own seeds, so `resume=True` from a checkpoint continues
exactly as if the run had not stopped.

Distributed (dist.py): each rank trains on its rows of the global batch; the
loss is normalised by the global count of scored positions, so the loss curve
is that of one process on the global batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from rnnzoo.grid.chimera import ChimeraConfig, ChimeraForecaster
from rnnzoo.models.dsr import DSRConfig, DSRModel
from rnnzoo.models.stack import ModelConfig, SequenceModel
from rnnzoo.ops import sequence_parallel
from rnnzoo.tasks import Task, get_task
from rnnzoo.tasks.base import Batch, add_sums
from rnnzoo.tasks.dsr_metrics import reconstruction
from rnnzoo.train import dist as ddp
from rnnzoo.train.checkpoints import CHECKPOINT, RunFolder
from rnnzoo.train.config import TrainConfig, lr_at


class NonFiniteLoss(RuntimeError):
    """The training loss (or its gradient) became NaN or infinite; the run stopped."""


def build(config: TrainConfig) -> tuple[Task, SequenceModel]:
    """The task and a freshly initialised model (seeded by `config.seed`)."""
    task = get_task(config.task, **config.task_options)
    torch.manual_seed(config.seed)
    if config.model == "dsr":
        return task, _build_dsr(config, task)
    if config.model == "chimera":
        return task, _build_chimera(config, task)
    model = SequenceModel(ModelConfig(
        layer=config.layer, d_model=config.d_model, num_layers=config.num_layers,
        vocab_size=task.vocab_size, input_dim=task.input_dim, output_dim=task.output_dim,
        mlp_ratio=config.mlp_ratio, layer_options=dict(config.layer_options),
        hybrid=config.hybrid, attention_options=dict(config.attention_options),
        max_len=task.max_length()))
    return task, model


def _build_dsr(config: TrainConfig, task: Task) -> DSRModel:
    if task.kind != "regress" or task.input_dim is None or task.input_dim != task.output_dim:
        raise ValueError(f"--model dsr reconstructs an observed series: task {config.task!r} "
                         f"does not predict its own next input (the dynamics tasks do)")
    return DSRModel(DSRConfig(
        cell=config.layer, observation_dim=task.input_dim, latent_size=config.d_model,
        cell_options=dict(config.layer_options),
        alpha=1.0 if config.gtf_alpha is None else config.gtf_alpha,
        anneal=config.gtf_anneal, gamma=config.gtf_gamma))


def _build_chimera(config: TrainConfig, task: Task) -> ChimeraForecaster:
    if task.kind != "regress" or not task.input_dim or task.output_dim % task.input_dim:
        raise ValueError(f"--model chimera reads a multivariate series (time x variates): task "
                         f"{config.task!r} is not one (forecast with --data CSV, lorenz63, "
                         f"lorenz96 are)")
    return ChimeraForecaster(ChimeraConfig(
        channels=task.input_dim, horizon=task.output_dim // task.input_dim,
        d_model=config.d_model, num_layers=config.num_layers,
        layer_options=dict(config.layer_options)))


def make_optimizer(model, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)


def train_batch(task: Task, config: TrainConfig, step: int):
    """The global batch of `step`: a function of (seed, step) only."""
    return task.sample(np.random.default_rng([config.seed, step]), config.batch_size)


EVAL_ROWS = 256


def eval_rows(config: TrainConfig) -> int:
    """Rows per batch of the final evaluation: at least EVAL_ROWS (no gradients are kept,
    so a batch this size costs less memory than a training batch of a deep model)."""
    return max(config.batch_size, EVAL_ROWS)


def _sampled_batches(task: Task, config: TrainConfig, key):
    rng = np.random.default_rng([config.seed, 1_000_003, key or 0])
    for _ in range(config.eval_batches):
        yield task.sample(rng, config.batch_size, length=key, split="test")


@torch.no_grad()
def evaluate(model, task: Task, config: TrainConfig, device, autocast, *,
             whole: bool = False) -> dict:
    """{"eval": {length or "test": metrics}, task.metric: mean headline over lengths,
    "examples": {length or "test": examples scored}}. `whole`: on the whole test split
    (task.test_batches); else on `eval_batches` sampled batches (periodic evaluation)."""
    was_training = model.training
    model.eval()
    per_key, examples = {}, {}
    for key in task.test_lengths:
        batches = task.test_batches(eval_rows(config), key) if whole \
            else _sampled_batches(task, config, key)
        sums, n = {}, 0
        for batch in batches:
            batch = batch.to(device)
            with autocast():
                outputs, _ = model(batch.inputs)
            sums = add_sums(sums, task.score(outputs, batch))
            n += batch.inputs.shape[0]
        name = str(key) if key else "test"
        per_key[name], examples[name] = task.summarize(sums), n
    model.train(was_training)
    headline = float(np.mean([m[task.metric] for m in per_key.values()]))
    return {"eval": per_key, task.metric: headline, "examples": examples}


@dataclass
class _Run:
    """Everything one run holds while it trains."""

    config: TrainConfig
    task: Task
    model: SequenceModel
    net: torch.nn.Module           # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    device: torch.device
    dist: ddp.Dist
    folder: RunFolder
    say: Callable
    started: float = field(default_factory=time.perf_counter)
    saved_step: int | None = None    # the step of the checkpoint in the run folder

    def plain(self):
        """(model, optimizer) as ordinary modules: under FSDP gathered from the shards
        on every rank (dist.plain_copy), for checkpoints and plots."""
        if not self.sharded:
            return self.model, self.optimizer
        return ddp.plain_copy(self.model, self.optimizer,
                              lambda m: make_optimizer(m, self.config))

    @property
    def sharded(self) -> bool:
        return self.config.fsdp and self.dist.world > 1

    def autocast(self):
        on = self.config.amp and self.device.type == "cuda"
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=on)

    def reached(self, value: float) -> bool:
        target = self.config.target
        if target is None:
            return False
        return value >= target if self.task.higher_is_better else value <= target


def _start(config: TrainConfig, quiet: bool, resume: bool, overwrite: bool) -> _Run:
    """Process group, device, threads, task and model (every check of the settings that
    needs them), then the run folder (created and claimed only once they pass, so a run
    refused for its settings leaves no folder behind), then the wrapper and optimizer."""
    dist = ddp.setup(config.device, config.dist_timeout)
    device = ddp.pick_device(config.device, dist)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if config.batch_size % dist.world and not config.sequence_parallel:
        raise ValueError(f"--batch-size ({config.batch_size}) must be a multiple of the number "
                         f"of processes ({dist.world})")
    say = (lambda *a: print(*a, flush=True)) if dist.main and not quiet else (lambda *a: None)
    task, model = _build_checked(config, device)
    folder = RunFolder(config.out, writes=dist.main)
    folder.claim(config, resume=resume, overwrite=overwrite, say=say)
    try:
        return _wrap(config, task, model, dist, device, folder, say)
    except BaseException:
        folder.release()
        raise


def _build_checked(config: TrainConfig, device) -> tuple[Task, torch.nn.Module]:
    """The task and the model on `device`; raises ValueError for settings they refuse."""
    task, model = build(config)
    model.to(device)
    if config.sequence_parallel:
        ddp.check_sequence_parallel(model.config.layer_names())
        if config.task_options.get("pack"):
            raise ValueError("--sequence-parallel with packed batches (--pack) is not supported "
                             "yet: pick one")
    return task, model


def _wrap(config, task, model, dist, device, folder, say) -> _Run:
    """The run: under several processes the model wrapped (FSDP2 or DDP; collectives)."""
    net = model
    # sequence parallelism: every rank a time slice of the same model, no wrapper
    if config.fsdp and dist.world > 1:  # FSDP2 shards the model in place
        net = model = ddp.shard(model)
    elif dist.world > 1 and not config.sequence_parallel:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return _Run(config, task, model, net, make_optimizer(model, config), device, dist, folder,
                say)


def _step(run: _Run, step: int) -> tuple[float, torch.Tensor, float, int]:
    """One optimiser step on this rank's rows of the global batch of `step`.
    Returns (lr, this rank's loss sum, global count of scored positions, tokens)."""
    config, dist = run.config, run.dist
    lr = lr_at(step, config)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    batch = train_batch(run.task, config, step)
    split_time = config.sequence_parallel and dist.world > 1
    if split_time:  # all rows, this rank's steps
        if type(batch) is not Batch:
            raise ValueError(f"--sequence-parallel: task {run.task.name!r} reads whole rows "
                             f"({type(batch).__name__}); it splits plain token batches only")
        local = ddp.time_slice(batch, dist).to(run.device)
    else:
        share = config.batch_size // dist.world
        local = batch.slice(dist.rank * share, (dist.rank + 1) * share).to(run.device)
    cu = getattr(local, "cu_seqlens", None)  # a packed batch (tasks/files.py PackedBatch)
    with run.autocast():
        if split_time:
            with sequence_parallel.scope():
                outputs, _ = run.net(local.inputs)  # each layer's auto mode: chunk or scan
        else:
            outputs, _ = run.net(local.inputs) if cu is None else run.net(local.inputs,
                                                                          cu_seqlens=cu)
    loss_sum, count = run.task.loss(outputs, local)
    total = dist.sum(count, run.device)
    # DDP and FSDP average the gradients over ranks; sequence parallelism sums them
    loss = loss_sum / max(total, 1) * (1 if split_time else dist.world)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if split_time:
        ddp.sum_gradients(run.model)
    # the norm is needed anyway to clip; max_norm=inf only measures it
    norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip or float("inf"))
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a DTensor
    finite = torch.isfinite(loss_sum.detach()) & torch.isfinite(norm)
    if dist.sum(float(~finite), run.device):  # every rank stops at the same step
        mean_loss = dist.sum(float(loss_sum.detach()), run.device) / max(total, 1)
        _stop_non_finite(run, step + 1, mean_loss, float(norm))
    run.optimizer.step()
    return lr, loss_sum.detach(), total, batch.inputs.shape[0] * batch.inputs.shape[1]


def _stop_non_finite(run: _Run, step: int, loss: float, norm: float):
    what = f"the training loss is {loss}" if not np.isfinite(loss) else \
        f"the gradient norm is {norm} (loss {loss:.4g})"
    if run.saved_step is None:
        kept = "no checkpoint was written before it"
    else:
        kept = f"{run.folder.path / CHECKPOINT} keeps step {run.saved_step}" if run.folder.path \
            else f"the last good evaluation was at step {run.saved_step}"
    raise NonFiniteLoss(f"{what} at step {step} (lr {lr_at(step - 1, run.config):.2e}); the run "
                        f"stopped, {kept}; try a lower --lr or --grad-clip")


def _log_loss(run: _Run, done: int, lr: float, loss_sum, total: float, rate: float) -> None:
    mean_loss = run.dist.sum(float(loss_sum), run.device) / max(total, 1)
    run.folder.log({"step": done, "loss": mean_loss, "lr": lr, "tokens_per_s": rate})
    bar = "#" * int(20 * done / run.config.steps)
    run.say(f"[{bar:<20}] step {done:>6}/{run.config.steps}  loss {mean_loss:.4f}  "
            f"lr {lr:.2e}  {rate / 1e3:.1f}k tok/s")


def _evaluate_and_save(run: _Run, done: int) -> dict:
    """Evaluate, log, checkpoint; returns the evaluation."""
    task = run.task
    result = evaluate(run.model, task, run.config, run.device, run.autocast)
    run.folder.log({"step": done, **result})
    per = "  ".join(f"{k}: {v[task.metric]:.3f}" for k, v in result["eval"].items())
    n = run.config.eval_batches * run.config.batch_size
    run.say(f"  eval step {done} (sampled: {n} test examples per length): {task.metric} "
            f"{result[task.metric]:.4f}  ({per})")
    run.folder.save(*run.plain(), done, run.config)
    run.saved_step = done
    return result


def _examples(result: dict) -> str:
    """'1024 examples per length', or '300 examples' for one split."""
    counts = set(result["examples"].values())
    n = counts.pop() if len(counts) == 1 else "/".join(map(str, result["examples"].values()))
    return f"{n} examples" + (" per length" if len(result["examples"]) > 1 else "")


def _record(run: _Run, last: dict, steps: int, early_stop: bool) -> dict:
    """The final record (final.json; what a suite tabulates)."""
    task, config = run.task, run.config
    record = {"task": task.name, "layer": config.layer, "lr": config.lr, "metric": task.metric,
              "higher_is_better": task.higher_is_better, "value": last[task.metric],
              "eval": last["eval"], "test_examples": last["examples"], "steps": steps,
              "early_stop": early_stop, "seconds": time.perf_counter() - run.started,
              "parameters": sum(p.numel() for p in run.model.parameters())}
    series = getattr(task, "parts", {}).get("test")
    if isinstance(run.model, DSRModel) and series is not None:  # its free run vs the test part
        record["reconstruction"] = reconstruction(run.model.generate, series)
    baselines = task.baselines()
    if baselines:
        record["baselines"] = baselines
    return record


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          stop_at: int | None = None, quiet: bool = False) -> dict:
    """Train one model; returns the final record (also written to `out`/final.json).

    `stop_at` stops after that step as an interruption would (checkpoint written,
    no final.json); `resume=True` continues from `out`'s checkpoint (with the same
    settings); `overwrite=True` deletes the run files of another run in `out`
    (checkpoints.RunFolder.claim). Raises NonFiniteLoss when the loss diverges.
    """
    run = _start(config.validate(), quiet, resume, overwrite)
    try:
        return _train(run, resume, stop_at)
    finally:
        run.folder.release()


def _train(run: _Run, resume: bool, stop_at: int | None) -> dict:
    config = run.config
    if resume and run.sharded:  # the checkpoint is whole: read it, then shard it
        twin, twin_opt = run.plain()
        done = run.folder.resume(twin, twin_opt, config)
        ddp.load_plain(run.model, run.optimizer, twin, twin_opt)
    else:
        done = run.folder.resume(run.model, run.optimizer, config) if resume else 0
    run.saved_step = done if resume else None
    if resume:
        run.say(f"resumed from {run.folder.path / CHECKPOINT} at step {done}")
    run.folder.begin(config)
    n_params = sum(p.numel() for p in run.model.parameters())
    world = run.dist.world
    run.say(f"rnnzoo train: task {run.task.name}, layer {config.layer}, {config.num_layers} "
            f"layers x d_model {config.d_model}, {n_params / 1e3:.1f}k parameters, "
            f"{config.steps} steps, device {run.device}"
            f"{f', {world} processes' if world > 1 else ''}")

    early_stop = False
    run.started = t0 = time.perf_counter()
    tokens = 0
    run.model.train()
    for step in range(done, config.steps):
        lr, loss_sum, total, n = _step(run, step)
        done, tokens = step + 1, tokens + n
        if isinstance(run.model, DSRModel):  # generalized teacher forcing: anneal alpha
            run.model.after_step(done)
        if done % config.log_every == 0 or done in (config.steps, stop_at):
            _log_loss(run, done, lr, loss_sum, total, tokens / max(time.perf_counter() - t0, 1e-9))
            t0, tokens = time.perf_counter(), 0
        if done % config.eval_every == 0 or done in (config.steps, stop_at):
            last = _evaluate_and_save(run, done)
            if run.reached(last[run.task.metric]):
                run.say(f"  target {run.task.metric} {config.target} reached at step {done} "
                        f"(on the sampled evaluation)")
                early_stop = True
                break
        if done == stop_at:
            return {"stopped_at": done}
    final = evaluate(run.model, run.task, config, run.device, run.autocast, whole=True)
    per = "  ".join(f"{k}: {v[run.task.metric]:.3f}" for k, v in final["eval"].items())
    run.say(f"  final evaluation on the whole test split ({_examples(final)}): {run.task.metric} "
            f"{final[run.task.metric]:.4f}  ({per})")
    record = _record(run, final, done, early_stop)
    run.folder.finish(record, run.task, run.say, model=run.plain()[0])
    return record
