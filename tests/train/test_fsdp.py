"""FSDP2 (`rnnzoo train --fsdp` under torchrun): 2 gloo processes on the CPU train as one
process on the global batch (the same losses and updated parameters)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rnnzoo.models.checkpoint import load_tensors

SRC = str(Path(__file__).resolve().parents[2] / "src")
ARGS = ["train", "--task", "mqar", "--layer", "gla", "--d-model", "16", "--depth", "2",
        "--mlp-ratio", "2", "--steps", "4", "--batch-size", "8", "--log-every", "1",
        "--eval-every", "2", "--eval-batches", "1", "--lr", "1e-2", "--threads", "1",
        "--task-option", "vocab_size=32", "--task-option", "seq_len=16",
        "--task-option", "num_pairs=2"]


def _losses(out):
    import json
    rows = [json.loads(r) for r in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r and "eval" not in r]


def test_fsdp_two_processes_match_one_process(tmp_path):
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, "-m", "rnnzoo", *ARGS, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "-m", "rnnzoo", *ARGS, "--fsdp",
                          "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 processes" in two.stdout
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4]
    for (_, x), (_, y) in zip(a, b):
        assert abs(x - y) < 1e-5 * max(1, abs(x))
    # the checkpoint is whole (gathered from the shards), AdamW state included
    wa, _ = load_tensors(tmp_path / "one" / "checkpoint.safetensors")
    wb, _ = load_tensors(tmp_path / "two" / "checkpoint.safetensors")
    assert set(wa) == set(wb) and any(k.startswith("optim.") for k in wa)
    assert max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa) < 1e-4
