"""Parallel-in-time (ops.newton) against the sequential loop: forward + backward, float32.

    PYTHONPATH=src python benchmarks/newton.py [--device cuda] [--lengths 1024,4096]

Rows: paragru / paralstm `newton` vs `sequential` at T in {1024, 4096, 16384, 65536},
B=8, d_model = hidden = 64; and a dense cell (`gru` when registered, else the Elman
`rnn_tanh` as a stand-in, said so in the table) at T=4096. A sequential run predicted
(linearly in T from the previous length) to take more than --budget seconds is not run:
its time is extrapolated and marked `~`. Prints one table; times are one run each after
a short warm-up (this is a shared CPU: read the ratios, not the third digit).
"""

from __future__ import annotations

import argparse

import torch

import rnnzoo
from rnnzoo.bench import median_time
from rnnzoo.registry import CELLS


def fwd_bwd(layer, x, mode):
    """Seconds of one forward+backward, and the layer's solve info."""
    def run():
        y, _ = layer(x, mode=mode)
        y.float().square().mean().backward()
    return median_time(run, x.device, repeat=1, warmup=0), getattr(layer, "solve_info", None)


def bench(name, lengths, args, note=""):
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=args.width, hidden_size=args.width).to(args.device)
    warm = torch.randn(args.batch, 64, args.width, device=args.device)
    for mode in ("sequential", "newton"):
        fwd_bwd(layer, warm, mode)
    rows, per_step = [], None
    for T in lengths:
        x = torch.randn(args.batch, T, args.width, device=args.device)
        t_new, info = fwd_bwd(layer, x, "newton")
        if per_step is not None and per_step * T > args.budget:
            t_seq, mark = per_step * T, "~"
        else:
            t_seq, mark = fwd_bwd(layer, x, "sequential")[0], ""
            per_step = t_seq / T
        it = f"{info.iterations}{' (fell back)' if info.fell_back else ''}"
        rows.append(f"| {name}{note} | {T} | {mark}{t_seq:.3f} | {t_new:.3f} | "
                    f"{mark}{t_seq / t_new:.2f}x | {it} |")
        print(rows[-1], flush=True)
        layer.zero_grad(set_to_none=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--lengths", default="1024,4096,16384,65536")
    p.add_argument("--dense-length", type=int, default=4096)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (0: torch's default); 1 avoids thread "
                        "oversubscription on a shared machine")
    p.add_argument("--budget", type=float, default=60.0,
                   help="seconds: longer sequential runs are extrapolated, not run")
    args = p.parse_args()
    lengths = [int(t) for t in args.lengths.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {args.device} ({torch.get_num_threads()} threads), float32, B={args.batch}, d_model=hidden={args.width}, "
          f"fwd+bwd seconds (one run; ~ = extrapolated from the previous length)")
    print("| layer | T | sequential | newton | speedup | newton iterations |")
    print("|---|---|---|---|---|---|")
    for name in ("paragru", "paralstm"):
        bench(name, lengths, args)
    dense, note = ("gru", "") if "gru" in CELLS else ("rnn_tanh", " (stand-in for gru)")
    bench(dense, [args.dense_length], args, note)


if __name__ == "__main__":
    main()
