"""Sequence parallelism (LASP-2, ops/sequence_parallel.py): the time axis split across 2 and
4 gloo processes on the CPU gives one process's outputs, final state and gradients, for
every layer of SEQUENCE_PARALLEL_LAYERS (the chunk ops, Mamba's selective scan and the
diagonal layers on ops.scan.linear_scan) and for the reverse scan."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _gloo import spawn

from rnnzoo.models.checkpoint import load_tensors
from rnnzoo.train.dist import SEQUENCE_PARALLEL_LAYERS

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _flat(s):
    return list(s) if isinstance(s, (tuple, list)) else [s]


def _real(t):
    """A complex state (lru, s5, linoss) as its real and imaginary parts, for a real loss."""
    return torch.view_as_real(t) if t.is_complex() else t


def _make(name):
    import rnnzoo
    info = rnnzoo.registry.get_layer_info(name)
    options = dict(info.tiny)
    d = options.pop("d_model", 8)
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=d, **options).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return layer


def _grads(layer, x, s0, w, ws, mode, world=1):
    x = x.clone().requires_grad_()
    s0 = [t.clone().requires_grad_() for t in s0]
    y, s = layer(x, tuple(s0) if len(s0) > 1 else s0[0], mode=mode)
    # the final state is the same on every rank: each adds 1/world of its term
    loss = (y * w).sum() + sum((_real(t) * u).sum() for t, u in zip(_flat(s), ws)) / world
    params = [p for p in layer.parameters()]
    got = torch.autograd.grad(loss, [x, *s0, *params], allow_unused=True)
    return y, _flat(s), [torch.zeros_like(t) if g is None else g
                         for t, g in zip([x, *s0, *params], got)]


def _worker(rank, world, errors, names):
    import torch.distributed as td

    from rnnzoo.ops import sequence_parallel as sp
    for name in names:
        name, _, control = name.partition(":")  # "name:local": the exchange switched off
        layer = _make(name)
        assert layer.auto_mode(None) in ("chunk", "scan"), name  # a mode with the hook
        mode = "auto"  # what `rnnzoo train --sequence-parallel` runs: chunk or scan
        g = torch.Generator().manual_seed(2)
        T = 4 * world + 3  # uneven slices, several chunks per rank
        x = torch.randn(2, T, layer.d_model, generator=g, dtype=torch.float64)
        with torch.no_grad():
            _, s0 = layer(torch.randn(2, 3, layer.d_model, generator=g,
                                      dtype=torch.float64), mode=mode)
        s0 = _flat(s0)
        w = torch.randn(x.shape, generator=g, dtype=torch.float64)
        ws = [torch.randn(_real(t).shape, generator=g, dtype=torch.float64) for t in s0]
        y_ref, s_ref, g_ref = _grads(layer, x, s0, w, ws, mode)
        with sp.scope(), (sp._local_only() if control else contextlib.nullcontext()):
            y, s, grads = _grads(layer, sp.split(x), s0, sp.split(w), ws, mode, world)
        grads = [t.contiguous() for t in grads]
        for t in grads[1:]:  # states and parameters: each rank holds its part of the sum
            td.all_reduce(t)
        err = max((y - sp.split(y_ref)).abs().max().item(),
                  *((a - b).abs().max().item() for a, b in zip(s, s_ref)),
                  (grads[0] - sp.split(g_ref[0])).abs().max().item(),
                  *((a - b).abs().max().item() for a, b in zip(grads[1:], g_ref[1:])))
        name += ":local" if control else ""
        print(f"sequence parallel {name} rank {rank}/{world}: max error {err:.3g}", flush=True)
        if not err < 1e-9:
            errors.put(f"{name} rank {rank}/{world}: max error {err:.3g}")
    _reverse_scan(rank, world, errors)


def _reverse_scan(rank, world, errors):
    """linear_scan from the end (S5's bidirectional direction): the fold runs from the last
    rank down; real and complex, values and gradients of a, b and h0."""
    import torch.distributed as td

    from rnnzoo.ops import sequence_parallel as sp
    from rnnzoo.ops.scan import linear_scan
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    for dtype in (torch.float64, torch.complex128):
        T = 2 * world + 1
        a, b, h0 = (torch.complex(r(*s), r(*s)) if dtype.is_complex else r(*s)
                    for s in ((2, T, 3), (2, T, 3), (2, 3)))
        a = 0.9 * a / a.abs()
        w, wl = r(2, T, 3, 2), r(2, 3, 2)
        leaves = [t.clone().requires_grad_() for t in (a, b, h0)]

        def run(a, b, h0, w, world=1):
            h, last = linear_scan(a, b, h0, reverse=True)
            h, last = (torch.view_as_real(t) if t.is_complex() else t[..., None] for t in (h, last))
            loss = (h * w[..., :h.shape[-1]]).sum() + (last * wl[..., :last.shape[-1]]).sum() / world
            return h, last, torch.autograd.grad(loss, (a, b, h0))

        h_ref, last_ref, g_ref = run(*leaves, w)
        with sp.scope():
            h, last, grads = run(sp.split(leaves[0]), sp.split(leaves[1]), leaves[2], sp.split(w),
                                 world)
        grads = [gr.contiguous() for gr in grads]
        td.all_reduce(grads[2])
        err = max((h - sp.split(h_ref)).abs().max().item(), (last - last_ref).abs().max().item(),
                  *((gr - sp.split(gw)).abs().max().item() for gr, gw in zip(grads[:2], g_ref)),
                  (grads[2] - g_ref[2]).abs().max().item())
        print(f"sequence parallel reverse linear_scan {dtype} rank {rank}/{world}: "
              f"max error {err:.3g}", flush=True)
        if not err < 1e-12:
            errors.put(f"reverse linear_scan {dtype} rank {rank}/{world}: max error {err:.3g}")


@pytest.mark.parametrize("world", [2, 4])
def test_sequence_parallel_equals_one_process(world):
    """Every listed layer is exact; the control (gdn2 with the exchange switched off: every
    rank starts from the initial state, as without sequence parallelism) is not, so the
    check can tell."""
    names = SEQUENCE_PARALLEL_LAYERS + (("gdn2:local",) if world == 2 else ())
    found = spawn(_worker, world, names)
    wrong = [f for f in found if not f.startswith("gdn2:local ")]
    assert not wrong, "\n".join(wrong)
    assert len(found) == len(wrong) + (world if world == 2 else 0)  # the control, every rank


def _losses(out):
    rows = [json.loads(r) for r in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r and "eval" not in r]


def test_train_sequence_parallel_under_torchrun_matches_one_process(tmp_path):
    """mamba: a layer whose parallel mode is scan, not chunk (the loop runs the auto mode)."""
    args = ["train", "--task", "mqar", "--layer", "mamba", "--d-model", "16",
            "--depth", "2", "--steps", "3", "--batch-size", "4", "--log-every", "1",
            "--eval-every", "3", "--eval-batches", "1", "--lr", "1e-2", "--threads", "1",
            "--task-option", "vocab_size=32", "--task-option", "seq_len=16",
            "--task-option", "num_pairs=2", "--layer-option", "chunk_size=4"]
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, "-m", "rnnzoo", *args, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "-m", "rnnzoo", *args, "--sequence-parallel",
                          "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3]
    for (_, x), (_, y) in zip(a, b):
        assert abs(x - y) < 1e-5 * max(1, abs(x))
    wa, _ = load_tensors(tmp_path / "one" / "model.safetensors")
    wb, _ = load_tensors(tmp_path / "two" / "model.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4


def test_sequence_parallel_refuses_a_layer_it_cannot_split(tmp_path):
    from rnnzoo.train import TrainConfig, train
    config = TrainConfig(task="mqar", layer="lstm", steps=1, sequence_parallel=True,
                         out=str(tmp_path / "r"))
    with pytest.raises(ValueError, match="--sequence-parallel runs the layers .* this model has lstm"):
        train(config, quiet=True)
