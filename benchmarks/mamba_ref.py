"""Mamba's parallel scan against mamba_ssm's `selective_scan_ref` on the same inputs.

    PYTHONPATH=src python benchmarks/mamba_ref.py [--lengths 1024,8192] [--batch 8]

Two comparisons, float32, forward and forward+backward (median of --repeat runs):
- "scan": the selective scan alone, rnnzoo.layers.mamba.selective_scan (chunked
  linear_scan) vs selective_scan_ref (a Python loop over time), on the same
  u, delta, A, B, C, D taken from a Mamba layer;
- "block": the whole Mamba block, with its scan done by each.
Peak memory (one forward+backward of the block, fresh subprocess, as
`rnnzoo bench`) is printed for each length in --memory-lengths.
"""

from __future__ import annotations

import argparse

import torch

from rnnzoo import create
from rnnzoo.bench import Case, _median_time, peak_memory
from rnnzoo.layers.mamba import selective_scan
from rnnzoo.peers.mamba_ssm import load_selective_scan_ref, mamba_forward_with_ref


def scan_inputs(layer, B, T):
    x = torch.randn(B, T, layer.d_model)
    with torch.no_grad():
        conv_state, _ = layer.init_state(B)
        u, delta, A, Bm, C, _, _ = layer.ssm_inputs(x, conv_state)
    return [t.contiguous().requires_grad_() for t in (u, delta, A, Bm, C, layer.D.detach().clone())]


def time_pair(fn, leaves, repeat):
    def fwd():
        with torch.no_grad():
            fn()

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        fn().sum().backward()

    return _median_time(fwd, "cpu", repeat, 1), _median_time(fwd_bwd, "cpu", repeat, 1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="1024,8192")
    p.add_argument("--memory-lengths", default="8192")
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
    print(f"{'what':<8}{'T':>7}{'ref fwd ms':>12}{'ours fwd ms':>13}{'fwd x':>8}"
          f"{'ref f+b ms':>12}{'ours f+b ms':>13}{'f+b x':>8}")
    for T in [int(v) for v in args.lengths.split(",")]:
        leaves = scan_inputs(layer, args.batch, T)

        def ours(u=leaves[0], delta=leaves[1], A=leaves[2], Bm=leaves[3], C=leaves[4], D=leaves[5]):
            return selective_scan(u, delta, A, Bm, C, D, chunk_size=layer.chunk_size)[0]

        def theirs(u=leaves[0], delta=leaves[1], A=leaves[2], Bm=leaves[3], C=leaves[4],
                   D=leaves[5]):
            return ref(u.transpose(1, 2), delta.transpose(1, 2), A, Bm.transpose(1, 2),
                       C.transpose(1, 2), D)

        with torch.no_grad():
            err = (ours() - theirs().transpose(1, 2)).abs().max().item()
        rf, rb = time_pair(theirs, leaves, args.repeat)
        of, ob = time_pair(ours, leaves, args.repeat)
        print(f"{'scan':<8}{T:>7}{rf * 1e3:>12.1f}{of * 1e3:>13.1f}{rf / of:>7.2f}x"
              f"{rb * 1e3:>12.1f}{ob * 1e3:>13.1f}{rb / ob:>7.2f}x   max |diff| {err:.1e}")
        del leaves, ours, theirs
        x = torch.randn(args.batch, T, args.d_model, requires_grad=True)
        block_leaves = [x, *layer.parameters()]
        rf, rb = time_pair(lambda: mamba_forward_with_ref(layer, x), block_leaves, args.repeat)
        of, ob = time_pair(lambda: layer(x, mode="scan")[0], block_leaves, args.repeat)
        print(f"{'block':<8}{T:>7}{rf * 1e3:>12.1f}{of * 1e3:>13.1f}{rf / of:>7.2f}x"
              f"{rb * 1e3:>12.1f}{ob * 1e3:>13.1f}{rb / ob:>7.2f}x")
    for T in [int(v) for v in args.memory_lengths.split(",") if v]:
        base = dict(layer="mamba", batch=args.batch, length=T, d_model=args.d_model, options=opts)
        mine = peak_memory(Case(mode="scan", **base)) / 2**20
        theirs = peak_memory(Case(mode="sequential", baseline="mamba_ssm.selective_scan_ref",
                                  **base)) / 2**20
        print(f"peak memory of one block forward+backward at T={T}: rnnzoo scan {mine:.0f} MB, "
              f"with selective_scan_ref {theirs:.0f} MB ({theirs / mine:.1f}x)")


if __name__ == "__main__":
    main()
