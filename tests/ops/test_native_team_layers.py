"""Every C kernel a registered layer's `auto` mode calls at 2 threads (forward and backward)
takes torch's OpenMP team (ops.native.team), not ops.native.run's pool: a kernel whose
arguments team.c cannot pass (over 32 integer-class or 4 floating ones, float and double
mixed, a type it does not know) runs its second range on a pool thread of ours beside
libgomp's spinning worker. Observed by wrapping team.run (no hook in ops.native.run);
benchmarks/team_audit.py lists the same at the #17 size. Skipped where the team path is
unusable (torch not on libgomp, another platform)."""

from __future__ import annotations

import pytest
import torch
from _native_check import threads

from rnnzoo import create, list_layers
from rnnzoo.ops import native
from rnnzoo.ops.native import team


@pytest.mark.parametrize("name", [i.name for i in list_layers()])
def test_layer_kernels_take_the_team(name, monkeypatch):
    if team.team(native.load) is None:
        pytest.skip("no team path here (libgomp not loaded or another platform)")
    off, real = set(), team.run

    def spy(fn, arg_lists, load):
        ok = real(fn, arg_lists, load)
        if not ok:
            off.add(fn.__name__)
        return ok

    monkeypatch.setattr(team, "run", spy)
    torch.manual_seed(0)
    with threads(2):
        layer = create(name, d_model=64)
        x = torch.randn(2, 48, 64, requires_grad=True)
        layer(x, mode=layer.auto_mode(x))[0].sum().backward()
    assert not off, f"{name}: {sorted(off)} ran on the pool"
