"""Mamba's scan mode against mamba_ssm's `selective_scan_ref` on the same inputs.

    PYTHONPATH=src python benchmarks/mamba_ref.py [--lengths 1024,8192] [--batch 8]

float32, B=8, d_model 256, d_state 16, expand 2 by default; medians of --repeat runs.
- "scan": the selective scan alone, rnnzoo.layers.mamba.selective_scan (mode "scan",
  and the autograd loop "sequential") vs selective_scan_ref, on the same u, delta, A,
  B, C, D taken from a Mamba layer;
- "block": the whole Mamba block, with its scan done by each.
The reference's backward grows as T^2 (each step indexes a (B, d_inner, T, d_state)
tensor; the index's backward zero-fills all of it), so its forward+backward is timed
once, and only for T <= --ref-backward-max; longer lengths print the forward only.
Peak memory of one block forward+backward (fresh process, as `rnnzoo bench`) is
printed for --memory-lengths; the reference's probe stops after --ref-memory-seconds,
and then its figure is the peak so far, a lower bound.
"""

from __future__ import annotations

import argparse

import torch
from peers.mamba_ssm import load_selective_scan_ref, mamba_forward_with_ref

from rnnzoo import create
from rnnzoo.bench import Case, median_time, peak_memory
from rnnzoo.layers.mamba import selective_scan


def scan_inputs(layer, B, T):
    x = torch.randn(B, T, layer.d_model)
    with torch.no_grad():
        conv_state, _ = layer.init_state(B)
        u, delta, A, Bm, C, _, _ = layer.ssm_inputs(x, conv_state)
    return [t.contiguous().requires_grad_() for t in (u, delta, A, Bm, C, layer.D.detach().clone())]


def timed(fn, leaves, repeat, backward=True):
    """Median seconds of fn() without grad, and of fn() + backward (None if not asked)."""
    def fwd():
        with torch.no_grad():
            fn()

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        fn().sum().backward()

    return (median_time(fwd, "cpu", repeat, 1),
            median_time(fwd_bwd, "cpu", repeat, 1 if repeat > 1 else 0) if backward else None)


def row(what, T, ref, mine):
    """One printed line: the reference's and ours' times and their ratios."""
    ms = lambda t: f"{t * 1e3:>12.1f}" if t is not None else f"{'not run':>12}"  # noqa: E731
    ratio = lambda a, b: f"{a / b:>7.1f}x" if a is not None else f"{'-':>8}"  # noqa: E731
    print(f"{what:<16}{T:>7}{ms(ref[0])}{ms(mine[0])}{ratio(ref[0], mine[0])}"
          f"{ms(ref[1])}{ms(mine[1])}{ratio(ref[1], mine[1])}", flush=True)


def compare_scans(layer, ref, batch, T, repeat, backward):
    """Rows for the selective scan alone: the reference vs each of our modes."""
    leaves = scan_inputs(layer, batch, T)
    u, delta, A, Bm, C, D = leaves
    theirs = timed(lambda: ref(u.transpose(1, 2), delta.transpose(1, 2), A, Bm.transpose(1, 2),
                               C.transpose(1, 2), D),
                   leaves, repeat if not backward else 1, backward)
    for mode in ("scan", "sequential"):
        ours = timed(lambda: selective_scan(u, delta, A, Bm, C, D, mode=mode,
                                            chunk_size=layer.chunk_size)[0], leaves, repeat)
        row(f"scan/{mode}", T, theirs, ours)
    with torch.no_grad():
        y_ref = ref(u.transpose(1, 2), delta.transpose(1, 2), A, Bm.transpose(1, 2),
                    C.transpose(1, 2), D).transpose(1, 2)
        err = (selective_scan(u, delta, A, Bm, C, D)[0] - y_ref).abs().max().item()
    print(f"{'':<16}{T:>7}  max |y_scan - y_ref| = {err:.1e}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="1024,8192")
    p.add_argument("--memory-lengths", default="1024,8192")
    p.add_argument("--ref-backward-max", type=int, default=1024)
    p.add_argument("--ref-memory-seconds", type=float, default=120)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--expand", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    ref = load_selective_scan_ref()
    opts = dict(d_state=args.d_state, expand=args.expand)
    torch.manual_seed(0)
    layer = create("mamba", d_model=args.d_model, **opts)
    print(f"Mamba vs mamba_ssm.selective_scan_ref: B={args.batch} d_model={args.d_model} "
          f"d_inner={layer.d_inner} d_state={args.d_state} float32 cpu, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'what':<16}{'T':>7}{'ref fwd ms':>12}{'ours fwd ms':>12}{'fwd x':>8}"
          f"{'ref f+b ms':>12}{'ours f+b ms':>12}{'f+b x':>8}")
    for T in [int(v) for v in args.lengths.split(",") if v]:
        backward = T <= args.ref_backward_max
        compare_scans(layer, ref, args.batch, T, args.repeat, backward)
        x = torch.randn(args.batch, T, args.d_model, requires_grad=True)
        block_leaves = [x, *layer.parameters()]
        theirs = timed(lambda: mamba_forward_with_ref(layer, x), block_leaves,
                       args.repeat if not backward else 1, backward)
        ours = timed(lambda: layer(x, mode="scan")[0], block_leaves, args.repeat)
        row("block/scan", T, theirs, ours)
    for T in [int(v) for v in args.memory_lengths.split(",") if v]:
        base = dict(layer="mamba", batch=args.batch, length=T, d_model=args.d_model, options=opts)
        mine = {m: peak_memory(Case(mode=m, **base))[0] / 2**20 for m in ("scan", "sequential")}
        theirs, done = peak_memory(Case(mode="sequential", baseline="mamba_ssm.selective_scan_ref",
                                        **base), time_limit=args.ref_memory_seconds)
        theirs /= 2**20
        bound = "" if done else (f" (at least: stopped after {args.ref_memory_seconds:.0f} s, "
                                 f"its backward unfinished)")
        print(f"peak memory, one block forward+backward, T={T}: rnnzoo scan {mine['scan']:.0f} MB, "
              f"rnnzoo sequential {mine['sequential']:.0f} MB, with selective_scan_ref "
              f"{theirs:.0f} MB{bound}: {theirs / mine['scan']:.1f}x the scan mode's", flush=True)


if __name__ == "__main__":
    main()
