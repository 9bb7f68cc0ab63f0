"""linear_scan: the parallel (chunked) scan vs the sequential loop, forward and forward+backward,
float32, and the float32 error of both against a float64 loop.

    python benchmarks/scan.py [--shapes 8x4096x256,1x65536x64] [--repeat 5]
"""

import argparse

import torch

from rnnzoo.bench import median_time
from rnnzoo.ops.scan import linear_scan, sequential_scan


def timings(scan, a, b, repeat):
    def fwd():
        with torch.no_grad():
            scan(a, b)

    def fwd_bwd():
        a.grad = b.grad = None
        h, last = scan(a, b)
        (h.sum() + last.sum()).backward()

    return median_time(fwd, "cpu", repeat), median_time(fwd_bwd, "cpu", repeat)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shapes", default="8x4096x256,1x65536x64")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, "
          f"a ~ U(0.5, 1), b ~ N(0, 1)")
    print(f"{'B x T x D':<16}{'par fwd':>10}{'loop fwd':>10}{'par f+b':>10}{'loop f+b':>10}"
          f"{'speedup f+b':>13}{'par err':>11}{'loop err':>11}")
    for shape in args.shapes.split(","):
        B, T, D = (int(v) for v in shape.split("x"))
        g = torch.Generator().manual_seed(0)
        a64 = 0.5 + 0.5 * torch.rand(B, T, D, generator=g, dtype=torch.float64)
        b64 = torch.randn(B, T, D, generator=g, dtype=torch.float64)
        a, b = a64.float().requires_grad_(), b64.float().requires_grad_()
        tf, tfb = timings(linear_scan, a, b, args.repeat)
        sf, sfb = timings(sequential_scan, a, b, max(1, args.repeat // 2))
        with torch.no_grad():
            exact = sequential_scan(a64, b64)[0]
            err_tree = (linear_scan(a, b)[0].double() - exact).abs().max().item()
            err_loop = (sequential_scan(a, b)[0].double() - exact).abs().max().item()
        print(f"{shape:<16}{tf * 1e3:>8.1f}ms{sf * 1e3:>8.1f}ms{tfb * 1e3:>8.1f}ms"
              f"{sfb * 1e3:>8.1f}ms{sfb / tfb:>12.1f}x{err_tree:>11.1e}{err_loop:>11.1e}")


if __name__ == "__main__":
    main()
