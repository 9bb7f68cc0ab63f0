"""The check test_bench_delta_flops.py and test_bench_linear_flops.py share: bench.layer_flops
counts a layer's C recurrence (what its kernels book through ops.flop_count) where the CPU
timing runs it, not its op's chunk form."""

from __future__ import annotations

import importlib

import torch

from rnnzoo import bench
from rnnzoo.ops import backend, flop_count
from rnnzoo.registry import create


def _torch_counted(run):
    with backend.force("torch"), torch.backends.mkldnn.flags(enabled=False, allow_tf32=None):
        return bench.counted_flops(run)


def check_booked(monkeypatch, name, opts, module, op_name, fwd, bwd, B, T, d, inputs=None):
    """(1) layer_flops(name, B, T, d, opts) books exactly [fwd, bwd]; (2) its count is the
    layer's chunk-form count less `module`.`op_name`'s chunk form at the very inputs the layer
    gave it, plus fwd + bwd. inputs(a, kw): a further check on those inputs."""
    booked = []
    add = flop_count.add
    monkeypatch.setattr(flop_count, "add", lambda n: (booked.append(n), add(n)))
    torch.manual_seed(0)
    got = bench.layer_flops(name, B, T, d, opts)
    assert booked == [fwd, bwd]

    # the chunk form: the layer's, and its op's alone at the inputs the layer gave it
    mod = importlib.import_module(f"rnnzoo.layers.{module}")
    op, calls = getattr(mod, op_name), []
    monkeypatch.setattr(mod, op_name, lambda *a, **kw: (calls.append((a, kw)), op(*a, **kw))[1])
    torch.manual_seed(0)
    layer = create(name, d_model=d, **opts)
    x = torch.randn(B, T, d, requires_grad=True)
    layer_chunks = _torch_counted(lambda: layer(x)[0])
    assert len(calls) == 1
    a, kw = calls[0]
    if inputs is not None:
        inputs(a, kw)
    leaf = lambda t: (t.detach().clone().requires_grad_(t.requires_grad)  # noqa: E731
                      if isinstance(t, torch.Tensor) else t)
    a, kw = [leaf(t) for t in a], {k: leaf(t) for k, t in kw.items()}
    op_chunks = _torch_counted(lambda: op(*a, **kw)[0])
    assert op_chunks > 0
    assert got == layer_chunks - op_chunks + fwd + bwd
    assert got != layer_chunks
