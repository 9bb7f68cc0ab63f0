"""ops.native.run's ranges on the threads of the OpenMP team torch runs its own ops on
(libgomp's GOMP_parallel calling team.c's `team_body`), instead of a thread pool of our own.

Why: after each of torch's parallel ops libgomp's idle workers spin for a while
(GOMP_SPINCOUNT, milliseconds) before they sleep. A pool thread of ours then shares a core
with a spinning worker wherever there are as many cores as threads, and a C kernel's second
range runs at part speed. Measured (2 threads on the 2-core machine, loaded): the delta_scan
forward at DeltaProduct's size right after a parallel torch op, pool / team, medians of 40
alternated: 81 / 72 and 83 / 72 ms; with GOMP_SPINCOUNT=0 both 57-58 ms.

    run(fn, arg_lists, load) -> bool   fn(*args) for each args on the team (bit-identical to the
                         pool: the same kernels and ranges) and True, when torch's libgomp
                         is loaded in the process (one libgomp mapped, found in
                         /proc/self/maps), the platform passes arguments as team.c expects
                         (x86-64 or AArch64 Linux) and fn's arguments fit (at most TEAM_NI
                         integer-class, TEAM_NF floating, one floating type); else False,
                         having run nothing (ops.native.run then uses its pool).
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

TEAM_NI, TEAM_NF = 32, 4  # team.c's argument rows
_INT = (ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_ulong, ctypes.c_uint)
_FLOAT = (ctypes.c_float, ctypes.c_double)
_team: tuple | None = None
_looked = False


class _Job(ctypes.Structure):
    _fields_ = [("fn", ctypes.c_void_p), ("parts", ctypes.c_long), ("dbl", ctypes.c_long),
                ("next", ctypes.c_long), ("ia", ctypes.c_void_p), ("fa", ctypes.c_void_p)]


def gomp_path() -> str | None:
    """The file of the one libgomp mapped into this process (torch's OpenMP runtime, under
    whatever name the wheel gave it), None when there is none or more than one."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split(None, 5)[-1].strip() for line in f if "libgomp" in line}
    except OSError:
        return None
    paths = {q for q in paths if os.path.basename(q).startswith("libgomp")}
    return paths.pop() if len(paths) == 1 else None


def team(load):
    """(GOMP_parallel, team_body's address) when the team path is usable, else None; load:
    ops.native.load (team.c is built like any kernel)."""
    global _team, _looked
    if not _looked:
        _looked = True
        path = gomp_path()
        if path and sys.platform.startswith("linux") and platform.machine() in ("x86_64",
                                                                                 "aarch64"):
            try:  # libgomp only if already loaded (torch's OpenMP runtime), never a second one
                gomp = ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_NOLOAD)
                par = gomp.GOMP_parallel
                par.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
                par.restype = None
                lib = load("team")
                if lib is not None:
                    _team = (par, ctypes.cast(lib.team_body, ctypes.c_void_p).value)
            except (OSError, AttributeError):
                _team = None
    return _team


def _value(a) -> int:
    """An integer-class argument as the long team.c passes: None, an int, a ctypes scalar, or
    the address of a ctypes pointer or array (kept alive by the caller's argument list)."""
    if type(a) is int:  # the common kinds first (sizes, native.ptr's c_void_p): run's hot loop
        return a
    if type(a) is ctypes.c_void_p:
        return a.value or 0
    if a is None:
        return 0
    if isinstance(a, (ctypes.Array, ctypes._Pointer, ctypes.c_void_p)):
        return ctypes.cast(a, ctypes.c_void_p).value or 0
    if isinstance(a, ctypes._SimpleCData):
        a = a.value
    if isinstance(a, int):
        return a
    raise TypeError(f"team.c cannot pass {type(a).__name__}")


_layouts: dict = {}


def _layout(types: tuple):
    """(integer-class positions, floating positions, whether double) of an argtypes tuple,
    None when team.c cannot pass it; kept per tuple (run's checks once, not a call)."""
    if types not in _layouts:
        floats = [i for i, t in enumerate(types) if t in _FLOAT]
        ints = [i for i, t in enumerate(types) if t in _INT]
        fits = (len(ints) + len(floats) == len(types) and len(ints) <= TEAM_NI
                and len(floats) <= TEAM_NF and len({types[i] for i in floats}) <= 1)
        _layouts[types] = ((ints, floats, bool(floats) and types[floats[0]] is ctypes.c_double)
                           if fits else None)
    return _layouts[types]


def run(fn, arg_lists, load) -> bool:
    """fn(*args) for each args in arg_lists on the OpenMP team, when the team path is usable
    for fn (see the module docstring); False, having run nothing, when it is not."""
    types = tuple(fn.argtypes or ())
    layout = _layout(types)
    t = team(load) if len(arg_lists) > 1 else None
    if t is None or layout is None:
        return False
    ints, floats, dbl = layout
    n = len(arg_lists)
    ia, fa = (ctypes.c_long * (TEAM_NI * n))(), (ctypes.c_double * (TEAM_NF * n))()
    try:
        for r, args in enumerate(arg_lists):
            if len(args) != len(types):
                raise ValueError(f"{len(args)} arguments for {len(types)} argtypes")
            ia[TEAM_NI * r:TEAM_NI * r + len(ints)] = [_value(args[i]) for i in ints]
            fa[TEAM_NF * r:TEAM_NF * r + len(floats)] = [float(args[i]) for i in floats]
    except TypeError:  # an argument only ctypes' own conversion knows: the pool runs it
        return False
    job = _Job(ctypes.cast(fn, ctypes.c_void_p).value, n, int(dbl), 0, ctypes.addressof(ia),
               ctypes.addressof(fa))
    t[0](t[1], ctypes.byref(job), n, 0)
    return True
