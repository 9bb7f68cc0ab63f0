"""GPU benchmark, one CUDA device, a few minutes: ops (ours in Triton, ours in PyTorch, the
memory floor) and every registered layer against torch.nn.LSTM (cuDNN).

    python benchmarks/gpu.py [--only ops|layers] [--repeat 10] [--budget 330]

Ops, float32, forward (no grad) and forward+backward, milliseconds (median of CUDA-event
timings); the floor is torch.add over the op's input arrays (reads them once, writes one
output: what a one-pass kernel cannot beat), and three such passes for fwd+bwd. Layers: B=8, T=2048, d_model=512, mode
"auto", fwd+bwd ms and peak memory (max_memory_allocated above the inputs). Each case
runs in its own try/except; a failure prints one line and the table goes on. Add an op
by appending an `OpCase` to `OP_CASES`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class OpCase:
    """make(device) -> (inputs, floor_arrays); each impl(*inputs) returns a tensor or a tuple.
    impls: label -> callable; the floor is torch.add chained over floor_arrays."""
    name: str
    make: Callable
    impls: dict


def _triton_scan():
    from rnnzoo.ops.triton.scan import linear_scan
    return linear_scan


def _triton_selective():
    from rnnzoo.ops.triton.selective_scan import selective_scan
    return selective_scan


def _torch_scan(*args):
    from rnnzoo.ops.scan import linear_scan
    return linear_scan(*args)


def _torch_selective(*args):
    from rnnzoo.layers.mamba import selective_scan
    return selective_scan(*args)


def scan_case(B, T, D):
    def make(dev):
        a = (0.5 + 0.5 * torch.rand(B, T, D, device=dev)).requires_grad_()
        b = torch.randn(B, T, D, device=dev, requires_grad=True)
        return (a, b), (a, b)
    return OpCase(f"linear_scan {B}x{T}x{D}", make,
                  {"triton": lambda a, b: _triton_scan()(a, b), "torch": _torch_scan})


def selective_case(B, T, DI, DS):
    def make(dev):
        u = torch.randn(B, T, DI, device=dev, requires_grad=True)
        delta = (0.001 + 0.1 * torch.rand(B, T, DI, device=dev)).requires_grad_()
        A = (-torch.arange(1, DS + 1.0, device=dev).repeat(DI, 1)).requires_grad_()
        Bm = torch.randn(B, T, DS, device=dev, requires_grad=True)
        C = torch.randn(B, T, DS, device=dev, requires_grad=True)
        D = torch.ones(DI, device=dev, requires_grad=True)
        return (u, delta, A, Bm, C, D), (u, delta)  # floor: the (B, T, d_inner) arrays
    return OpCase(f"selective_scan B={B} T={T} d_inner={DI} d_state={DS}", make,
                  {"triton": lambda *x: _triton_selective()(*x), "torch": _torch_selective})


OP_CASES = [
    scan_case(8, 4096, 1024),
    scan_case(1, 65536, 256),
    selective_case(8, 2048, 1024, 16),
]


def cuda_time(fn, repeat):
    """Median milliseconds of fn() over `repeat` runs after one warm-up (CUDA events)."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _loss(out):
    outs = out if isinstance(out, tuple) else (out,)
    return sum(o.float().sum() for o in outs)


def _zero_grads(xs):
    for x in xs:
        if isinstance(x, torch.Tensor):
            x.grad = None


def run_ops(repeat):
    print("\nops, float32, ms (floor: torch.add of the input arrays; fwd+bwd: three of them)")
    print(f"{'op':<48}{'impl':<8}{'fwd':>10}{'fwd+bwd':>10}{'x floor':>9}{'x floor f+b':>13}")
    for case in OP_CASES:
        try:
            _run_op_case(case, repeat)
        except Exception as e:
            print(f"{case.name:<48}FAILED: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        torch.cuda.empty_cache()


def _run_op_case(case, repeat):
    inputs, floor_arrays = case.make("cuda")

    def floor():
        out = floor_arrays[0].detach()
        for x in floor_arrays[1:]:
            out = torch.add(out, x.detach())
        return out
    fl = cuda_time(floor, repeat)
    # fwd+bwd floor: the forward's bytes three times (a scan's backward reads a, g, h
    # and writes two gradients: about twice the forward's traffic)
    fl_fb = cuda_time(lambda: [floor() for _ in range(3)], repeat)
    print(f"{case.name:<48}{'floor':<8}{fl:>10.3f}{fl_fb:>10.3f}")
    for label, impl in case.impls.items():
        try:
            def fwd():
                with torch.no_grad():
                    impl(*inputs)

            def fwd_bwd():
                _zero_grads(inputs)
                _loss(impl(*inputs)).backward()
            f = cuda_time(fwd, repeat)
            fb = cuda_time(fwd_bwd, repeat)
            print(f"{'':<48}{label:<8}{f:>10.3f}{fb:>10.3f}{f / fl:>9.1f}{fb / fl_fb:>13.1f}")
        except Exception as e:
            print(f"{'':<48}{label:<8}FAILED: {type(e).__name__}: {str(e).splitlines()[0][:120]}")


def _layer_row(name, make, x, repeat, deadline):
    model = make().cuda()
    xg = x.clone().requires_grad_()

    def fwd_bwd():
        xg.grad = None
        model.zero_grad(set_to_none=True)
        out = model(xg)
        _loss(out[0] if isinstance(out, tuple) else out).backward()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fwd_bwd()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    n = max(1, min(repeat, int((deadline - time.perf_counter()) / max(first, 1e-3) / 4)))
    if first > 1.0:
        n = 1
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ms = cuda_time(fwd_bwd, n)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return ms, peak


def run_layers(repeat, budget):
    import rnnzoo
    B, T, D = 8, 2048, 512
    print(f"\nlayers, B={B} T={T} d_model={D}, float32, mode auto, fwd+bwd")
    print(f"{'layer':<28}{'ms':>10}{'peak MiB':>10}{'x cuDNN LSTM':>14}")
    x = torch.randn(B, T, D, device="cuda")
    deadline = time.perf_counter() + budget
    lstm_ms = None
    try:
        lstm = lambda: torch.nn.LSTM(D, D, batch_first=True)  # noqa: E731
        lstm_ms, peak = _layer_row("torch.nn.LSTM", lstm, x, repeat, deadline)
        print(f"{'torch.nn.LSTM (cuDNN)':<28}{lstm_ms:>10.2f}{peak:>10.0f}{1.0:>14.1f}")
    except Exception as e:
        print(f"{'torch.nn.LSTM (cuDNN)':<28}FAILED: {type(e).__name__}: {e}")
    for info in rnnzoo.list_layers():
        if time.perf_counter() > deadline:
            print(f"{info.name:<28}SKIPPED: time budget ({budget:.0f} s) spent")
            continue
        try:
            ms, peak = _layer_row(info.name, lambda: rnnzoo.create(info.name, d_model=D), x,
                                  repeat, deadline)
            rel = f"{ms / lstm_ms:>14.1f}" if lstm_ms else f"{'-':>14}"
            print(f"{info.name:<28}{ms:>10.2f}{peak:>10.0f}{rel}")
        except Exception as e:
            msg = str(e).splitlines()[0][:100] if str(e) else ""
            print(f"{info.name:<28}FAILED: {type(e).__name__}: {msg}")
        torch.cuda.empty_cache()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("ops", "layers"), default=None, help="run one part")
    p.add_argument("--repeat", type=int, default=10, help="timed runs per case (median)")
    p.add_argument("--budget", type=float, default=300.0,
                   help="seconds for the layer table; layers past it are listed as skipped")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py needs a CUDA device; torch.cuda.is_available() is False "
              f"(torch {torch.__version__}). Nothing was run.", file=sys.stderr)
        return 2
    try:
        import triton
        tv = triton.__version__
    except Exception:
        tv = "not importable (the triton rows will fail)"
    print(f"torch {torch.__version__}, triton {tv}, {torch.cuda.get_device_name()}")
    torch.backends.cuda.matmul.allow_tf32 = False
    start = time.perf_counter()
    if args.only in (None, "ops"):
        try:
            run_ops(args.repeat)
        except Exception:
            traceback.print_exc()
    if args.only in (None, "layers"):
        run_layers(args.repeat, args.budget)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
