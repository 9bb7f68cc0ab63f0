"""Tests that spawn gloo ranks on this machine: `spawn(worker, world, *args)` runs
worker(rank, world, errors, *args) in `world` processes of one gloo group and returns what
the ranks put on `errors` (a queue of strings).

The group is torn down after a barrier, so that no rank starts closing its connections while
a peer is still in a collective with it: a 3-rank run without one died at teardown, after
every rank had printed a correct result (SIGABRT, "terminate called without an active
exception"), once in a CI run and once in 40 runs here."""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank, world, port, errors, worker, args):
    import torch.distributed as td

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    td.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    done = False
    try:
        worker(rank, world, errors, *args)
        done = True
    finally:
        if done:  # a rank that raised skips it: its peers would wait for it forever
            td.barrier()
        td.destroy_process_group()


def spawn(worker, world: int, *args) -> list[str]:
    """worker(rank, world, errors, *args) on `world` gloo ranks; the strings they reported."""
    errors = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_rank, args=(world, _free_port(), errors, worker, args), nprocs=world,
                       start_method="spawn")
    found = []
    while not errors.empty():
        found.append(errors.get())
    return found
