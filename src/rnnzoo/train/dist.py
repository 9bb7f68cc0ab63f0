"""Data-parallel training under `torchrun`: the process group, each rank's device.

Under `torchrun --nproc_per_node=N -m rnnzoo train ...` each rank takes its 1/N
rows of the same global batch and DistributedDataParallel averages gradients
(gloo on CPU, nccl on GPU). Without torchrun (WORLD_SIZE unset) it is one process.
"""

from __future__ import annotations

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


def setup(device: str) -> Dist:
    """Join the process group torchrun describes (WORLD_SIZE, LOCAL_RANK), if any."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    import torch.distributed as td
    if not td.is_initialized():
        td.init_process_group("nccl" if device.startswith("cuda") else "gloo")
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


def teardown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
