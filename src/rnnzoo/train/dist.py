"""Data-parallel training under `torchrun`: the process group, each rank's device.

Under `torchrun --nproc_per_node=N -m rnnzoo train ...` each rank takes its 1/N
rows of the same global batch and DistributedDataParallel averages gradients
(gloo on CPU, nccl on GPU). Without torchrun (WORLD_SIZE unset) it is one process.

`--fsdp` shards instead (FSDP2, `torch.distributed.fsdp.fully_shard`; Zhao et al.
2023, arXiv:2304.11277): each block, then the model's remaining parameters
(embedding, final norm, head), are split across the ranks; a block's parameters are
all-gathered for its forward and backward and its gradients reduce-scattered
(averaged), so each rank keeps 1/N of the parameters and of the AdamW state. The
rows of the batch are split as under DDP, so the run equals one process on the
global batch. Checkpoints are written whole: `plain_copy` gathers the sharded model
and optimizer into an ordinary model and AdamW on every rank (a collective), and
`load_plain` puts one back into the shards (`--resume`).

`--sequence-parallel` splits the time axis instead (LASP-2, ops/sequence_parallel.py):
every rank takes all rows of the global batch and its slice of the steps; the chunk
ops exchange their state summaries with one all-gather a layer, the short convolutions
their last d_conv - 1 inputs; the parameter gradients (each rank holds its part of the
sum) are summed with one all-reduce each. The layers it is exact for (tested against one
process, forward and backward, with 2 and 4 ranks) are SEQUENCE_PARALLEL_LAYERS.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The rank that writes files and prints."""
        return self.rank == 0

    def sum(self, value: float, device) -> float:
        """`value` summed over the ranks."""
        if self.world == 1:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return float(t.item())


def setup(device: str, timeout: float | None = None) -> Dist:
    """Join the process group torchrun describes (WORLD_SIZE, LOCAL_RANK), if any.
    `timeout` (seconds; None: torch's default, 30 minutes): how long forming the group and
    each collective may wait for the other ranks before raising."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    import torch.distributed as td
    if not td.is_initialized():
        wait = {} if timeout is None else {"timeout": datetime.timedelta(seconds=timeout)}
        td.init_process_group("nccl" if device.startswith("cuda") else "gloo", **wait)
    return Dist(td.get_rank(), td.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str, dist: Dist) -> torch.device:
    """'auto' -> cuda when available, else cpu; under DDP each rank its own GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and dist.world > 1:
        name = f"cuda:{dist.local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") \
            from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available here (this torch "
                             f"{torch.__version__} sees no GPU); use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: there are {torch.cuda.device_count()} GPUs "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available here; use --device cpu or auto")
    return device


# Exact under sequence parallelism (tests/train/test_sequence_parallel.py), in the mode
# `mode="auto"` picks (chunk or scan): the chunk ops ops.chunk's gated_linear_attention,
# delta_rule, kda, rwkv7 and erase_delta (gdn2, comba) exchange their slice transitions
# (sequence_parallel.lasp2), and so do the layers on them (based's and rebased's
# normaliser as a value column of ones, gsa's two passes one after the other, mamba3's
# SSD op started from its trapezoid term) and ops.momentum_delta
# (its (S; M) pair stacked as one state); mlstm its unnormalised (C, n, m) and total log
# forget, folding the stabiliser max-plus (mlstm_lasp2); the diagonal layers on
# ops.scan.linear_scan their slice's (prod a, h) (scan_lasp2), mamba's selective scan
# likewise and runs its slice again from the entering state (affine_lasp2). retnet
# offsets its rotary positions by the slices before it (offset), gateloop its phases and
# mamba3 its angles (prefix_sum); rwkv6's and rwkv7's token shift, mamba3's previous-step
# B and x and every short convolution read the previous rank's last inputs (halo). Not
# yet: s4d, liquid_s4 and gss (their auto mode is an FFT convolution), aaren (a running
# max), and every layer on another op (the test-time memories, the attention layers...).
SEQUENCE_PARALLEL_LAYERS = ("gla", "linear_attention", "lightning_attention", "hgrn2", "retnet",
                            "rwkv6", "rwkv7", "mamba2", "deltanet", "gated_deltanet",
                            "deltaproduct", "kda", "gdn2", "comba", "mlstm", "longhorn", "mamba",
                            "hawk", "hgrn", "lru", "s5", "mingru", "minlstm", "gateloop", "linoss",
                            "based", "rebased", "gsa", "mamba3",
                            "momentum_deltanet")


def check_sequence_parallel(layer_names) -> None:
    """ValueError naming the layers that sequence parallelism would not run exactly."""
    bad = sorted(set(layer_names) - set(SEQUENCE_PARALLEL_LAYERS))
    if bad:
        raise ValueError(f"--sequence-parallel runs the layers {', '.join(SEQUENCE_PARALLEL_LAYERS)}"
                         f"; this model has {', '.join(bad)}")


def time_slice(batch, dist: "Dist"):
    """This rank's slice of the time axis of every row (tensor_split: as even as can be)."""
    import dataclasses
    part = lambda t: None if t is None else torch.tensor_split(t, dist.world, 1)[dist.rank]  # noqa: E731
    return dataclasses.replace(batch, inputs=part(batch.inputs), targets=part(batch.targets),
                               metric_mask=part(batch.metric_mask), mask=part(batch.mask))


def sum_gradients(model) -> None:
    """Each parameter's gradient summed over the ranks (sequence parallelism: each rank
    holds its time slice's part)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if grads:
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        for g, part in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(part.view_as(g))


def shard(model):
    """FSDP2 over the process group: each block, then the root (embedding, norm, head)."""
    from torch.distributed.fsdp import fully_shard
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def plain_copy(model, optimizer, make_optimizer):
    """(an ordinary model, its AdamW) holding the sharded `model`'s full parameters and
    `optimizer`'s full state, on every rank (all ranks must call it: it gathers)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    from rnnzoo.models.stack import SequenceModel
    msd, osd = get_state_dict(model, optimizer,
                              options=StateDictOptions(full_state_dict=True))
    twin = SequenceModel(model.config)
    twin.load_state_dict(msd)
    twin_opt = make_optimizer(twin)
    index = {n: i for i, (n, _) in enumerate(_in_order(twin, twin_opt))}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in osd["param_groups"]]
    twin_opt.load_state_dict({"state": {index[n]: s for n, s in osd["state"].items()},
                              "param_groups": groups})
    return twin, twin_opt


def load_plain(model, optimizer, twin, twin_opt) -> None:
    """Put an ordinary model and AdamW (`plain_copy`'s layout) back into the shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
    names = [n for n, _ in _in_order(twin, twin_opt)]
    state = twin_opt.state_dict()
    osd = {"state": {names[i]: s for i, s in state["state"].items()},
           "param_groups": [{**g, "params": [names[i] for i in g["params"]]}
                            for g in state["param_groups"]]}
    set_state_dict(model, optimizer, model_state_dict=twin.state_dict(), optim_state_dict=osd,
                   options=StateDictOptions(full_state_dict=True))


def _in_order(model, optimizer):
    """(name, parameter) in the order `optimizer` numbers them."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [(name_of[id(p)], p) for g in optimizer.param_groups for p in g["params"]]


def teardown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
