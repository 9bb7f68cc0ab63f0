"""ops.native.team.run: the C kernels' ranges on torch's OpenMP team (libgomp's GOMP_parallel
and team.c) give bit-identical results to ops.native.run's thread pool, float32 and float64
(team.c passes the floating arguments as float or double), the team path is the one taken
where torch runs on libgomp, and arguments team.c cannot pass go to ops.native.run."""

from __future__ import annotations

import ctypes
import platform
import sys

import pytest
import torch
import torch.nn.functional as F
from _native_check import outputs_and_grads, threads

from rnnzoo.ops import native
from rnnzoo.ops.native import delta_scan, team

on_gomp = (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "aarch64")
           and "OpenMP" in torch.__config__.parallel_info() and team.gomp_path() is not None)


def _delta(dtype, B=3, T=21, n=2, H=2, K=19, V=20):
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    ins = [F.normalize(r(B, T, H, K), dim=-1), F.normalize(r(B, T * n, H, K), dim=-1),
           r(B, T * n, H, V), torch.rand(B, T * n, H, generator=gen, dtype=dtype),
           -0.3 * torch.rand(B, T, H, generator=gen, dtype=dtype), r(B, H, K, V)]
    ins = [t.requires_grad_() for t in ins]
    lib = delta_scan.load()
    assert lib is not None
    return outputs_and_grads(delta_scan.delta(lib, *ins, 0.7, n), ins)


@pytest.mark.skipif(not on_gomp, reason="torch not on libgomp here: team.run is ops.native.run")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_team_run_equals_the_pool_and_is_taken(monkeypatch, dtype):
    assert team.team() is not None
    with threads(3):  # 3 ranges of 6 (batch row, head) pairs: the delta kernels' 18 and 23
        monkeypatch.setattr(team, "_team", None)  # arguments, 12 and 17 of them on the stack
        pool = _delta(dtype)
        monkeypatch.undo()

        def refuse(fn, arg_lists):
            raise AssertionError("ops.native.run called: the team path was not taken")
        monkeypatch.setattr(native, "run", refuse)
        got = _delta(dtype)
    for a, b in zip(got, pool):
        assert torch.equal(a, b)


def test_arguments_team_c_cannot_pass_go_to_the_pool(monkeypatch):
    calls = []
    monkeypatch.setattr(native, "run", lambda fn, arg_lists: calls.append(len(arg_lists)))

    class Fn:  # stands in for a ctypes function: only argtypes is read before the fallback
        argtypes = [ctypes.c_void_p, ctypes.c_float, ctypes.c_double, ctypes.c_long]
    team.run(Fn, [(None, 1.0, 2.0, 0), (None, 1.0, 2.0, 1)])       # float and double
    Fn.argtypes = [ctypes.c_long] * (team.TEAM_NI + 1)
    team.run(Fn, [(0,) * (team.TEAM_NI + 1)] * 2)                      # too many integers
    Fn.argtypes = [ctypes.c_long, ctypes.POINTER(ctypes.c_float)]
    team.run(Fn, [(0, None)] * 2)                                      # a type it does not know
    team.run(Fn, [(0, None)])                                          # one range
    assert calls == [2, 2, 2, 1]
