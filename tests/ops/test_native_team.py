"""ops.native.run on torch's OpenMP team (ops.native.team: libgomp's GOMP_parallel and team.c)
gives bit-identical results to its thread pool, float32 and float64 (team.c passes the
floating arguments as float or double), the team path is the one taken where torch runs on
libgomp, and arguments team.c cannot pass are left to the pool."""

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


@pytest.mark.skipif(not on_gomp, reason="torch not on libgomp here: ops.native.run uses its pool")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_run_takes_the_team_and_equals_the_pool(monkeypatch, dtype):
    assert team.team(native.load) is not None
    with threads(3):  # 3 ranges of 6 (batch row, head) pairs: the delta kernels' 18 and 23
        monkeypatch.setattr(team, "_team", None)  # arguments, 12 and 17 of them on the stack
        pool = _delta(dtype)
        monkeypatch.undo()
        taken, real = [], team.run
        monkeypatch.setattr(team, "run", lambda fn, a, load: taken.append(real(fn, a, load)) or taken[-1])
        got = _delta(dtype)
    assert taken and all(taken), taken  # every call of ops.native.run went to the team
    for a, b in zip(got, pool):
        assert torch.equal(a, b)


def test_arguments_team_c_cannot_pass_are_left_to_the_pool():
    class Fn:  # stands in for a ctypes function: only argtypes is read before refusing
        argtypes = [ctypes.c_void_p, ctypes.c_float, ctypes.c_double, ctypes.c_long]

    def refused(args):
        return team.run(Fn, args, native.load) is False
    assert refused([(None, 1.0, 2.0, 0), (None, 1.0, 2.0, 1)])  # float and double
    Fn.argtypes = [ctypes.c_long] * (team.TEAM_NI + 1)
    assert refused([(0,) * (team.TEAM_NI + 1)] * 2)             # too many integers
    Fn.argtypes = [ctypes.c_long, ctypes.POINTER(ctypes.c_float)]
    assert refused([(0, None)] * 2)                             # a type it does not know
    assert refused([(0, None)])                                 # one range


def test_integer_arguments_as_team_c_passes_them():
    """Pointers arrive as addresses whether given as None, an int, c_void_p, a ctypes array
    (a kernel's table of row pointers) or a pointer; other objects leave the call to the pool."""
    table = (ctypes.c_void_p * 3)(1, 2, 3)
    assert team._value(None) == 0 and team._value(7) == 7 and team._value(ctypes.c_int(-2)) == -2
    assert team._value(ctypes.c_void_p(16)) == 16 and team._value(ctypes.c_void_p()) == 0
    assert team._value(table) == ctypes.addressof(table)
    assert team._value(ctypes.pointer(table)) == ctypes.addressof(table)
    with pytest.raises(TypeError):
        team._value(b"row")

    class Fn:
        argtypes = [ctypes.c_void_p, ctypes.c_long]
    assert team.run(Fn, [(b"row", 0), (b"row", 1)], native.load) is False
