"""The FLOPs an op's native CPU path does, reported to `bench.layer_flops`.

`bench.layer_flops` counts a layer's matrix products with torch.utils.flop_counter inside
`backend.force("torch")`, so a C kernel (invisible to the counter) is counted as the PyTorch
form of its op. Where an op's CPU path does different work from that form (MesaNet's C
recurrence solves each step on its own H_t and stops each solve at its tolerance, where the
chunk form runs (C, K) products for every step of a chunk until the slowest converges;
log-linear attention's aligned chunks read popcount(I) Fenwick blocks, not L - 1 slots), the
op asks `native(...)` instead of `backend.use_native(...)`: inside `counting()` it takes
the path the CPU timing takes, and a C kernel on it calls `add(n)` with the products it did
(2 FLOPs a multiply-add, as the counter books a matmul), forward and backward.

    with counting() as tally:   # bench.layer_flops
        ...                     # ops add(n); tally[0] is their sum
"""

from __future__ import annotations

import contextlib

import torch

from rnnzoo.ops import backend

__all__ = ["add", "counting", "native"]

_tallies: list[list[int]] = []


@contextlib.contextmanager
def counting():
    """Within: ops that report here run their CPU path (`native`) and add their kernels'
    FLOPs to the yielded one-element list."""
    tally = [0]
    _tallies.append(tally)
    try:
        yield tally
    finally:
        _tallies.pop()


def add(n: int) -> None:
    """Books n FLOPs a native kernel did, while counting (else nothing)."""
    if _tallies:
        _tallies[-1][0] += int(n)


def native(*tensors) -> bool:
    """backend.use_native(*tensors), except while counting: then whether the CPU timing's
    auto path would run natively (CPU tensors of one float32/float64 dtype, None skipped),
    whatever backend.force the counter is inside."""
    if not _tallies:
        return backend.use_native(*tensors)
    ts = [t for t in tensors if t is not None]
    return bool(ts) and all(isinstance(t, torch.Tensor) and t.device.type == "cpu"
                            and t.dtype == ts[0].dtype for t in ts) \
        and ts[0].dtype in (torch.float32, torch.float64)
