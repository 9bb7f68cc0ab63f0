"""Which C kernels take torch's OpenMP team (ops.native.team) and which fall back to
ops.native.run's thread pool, for each layer's `auto` mode forward+backward at 2 threads
(B=16, T=512, d_model=128, float32 unless given).

    PYTHONPATH=src python benchmarks/team_audit.py                  # every registered layer
    PYTHONPATH=src python benchmarks/team_audit.py --layers mamba,gla --threads 2

Prints one line per (layer, kernel): the kernel, how many calls took the team / the pool,
its argument counts (integer-class, floating) and, for the pool, why (team.py's conditions).
Only calls with more than one range reach the team path; a kernel called with one range
runs on the calling thread and is not listed.
"""

import argparse
from collections import defaultdict

import torch

from rnnzoo import create, list_layers
from rnnzoo.ops.native import load, team


def why_not(fn, arg_lists) -> str:
    """The first of team.run's conditions that fn's call fails ('' when it fits)."""
    types = fn.argtypes or []
    floats = [t for t in types if t in team._FLOAT]
    ints = [t for t in types if t in team._INT]
    if len(ints) + len(floats) != len(types):
        odd = {t.__name__ for t in types if t not in team._FLOAT + team._INT}
        return f"argument types {sorted(odd)}"
    if len(ints) > team.TEAM_NI:
        return f"{len(ints)} integer-class > {team.TEAM_NI}"
    if len(floats) > team.TEAM_NF:
        return f"{len(floats)} floating > {team.TEAM_NF}"
    if len(set(floats)) > 1:
        return "float and double mixed"
    try:
        for args in arg_lists:
            for ty, a in zip(types, args, strict=True):
                if ty not in team._FLOAT:
                    team._value(a)
    except TypeError as e:
        return str(e)
    return "team unusable" if team.team(load) is None else ""


def audit(names, threads=2, B=16, T=512, D=128):
    """{layer: {kernel: [team calls, pool calls, n_int, n_float, reason]}}."""
    seen = {}
    orig = team.run

    def spy(fn, arg_lists, ld):
        ok = orig(fn, arg_lists, ld)
        types = fn.argtypes or []
        row = seen.setdefault(fn.__name__, [0, 0, sum(t in team._INT for t in types),
                                            sum(t in team._FLOAT for t in types), ""])
        row[0 if ok else 1] += 1
        if not ok:
            row[4] = why_not(fn, arg_lists)
        return ok

    team.run = spy
    torch.set_num_threads(threads)
    out = {}
    try:
        for name in names:
            seen.clear()
            torch.manual_seed(0)
            try:
                layer = create(name, d_model=D)
                x = torch.randn(B, T, D, requires_grad=True)
                layer(x, mode=layer.auto_mode(x))[0].sum().backward()
            except Exception as e:  # noqa: BLE001 - a layer that cannot run here is reported
                out[name] = {"(error)": [0, 0, 0, 0, f"{type(e).__name__}: {e}"[:80]]}
                continue
            out[name] = {k: list(v) for k, v in seen.items()}
    finally:
        team.run = orig
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--layers", help="comma-separated (default: every registered layer)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--T", type=int, default=512)
    a = p.parse_args()
    names = a.layers.split(",") if a.layers else [i.name for i in list_layers()]
    print(f"team path usable: {team.team(load) is not None}")
    res = audit(names, a.threads, T=a.T)
    off = defaultdict(set)
    for name, ks in res.items():
        if not ks:
            print(f"{name:<26}(no multi-range kernel call)")
        for k, (nt, npl, ni, nf, why) in sorted(ks.items()):
            tag = "team" if npl == 0 else ("POOL" if nt == 0 else "MIXED")
            print(f"{name:<26}{k:<34}{tag:<6}team {nt:3d} pool {npl:3d}  ints {ni:2d} "
                  f"floats {nf}  {why}", flush=True)
            if npl:
                off[k].add(name)
    print("\noff the team:")
    for k, ls in sorted(off.items()):
        print(f"  {k}: {', '.join(sorted(ls))}")


if __name__ == "__main__":
    main()
