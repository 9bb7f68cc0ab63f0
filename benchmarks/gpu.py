"""GPU benchmark, one CUDA device, under 6 minutes: parity of every layer on CUDA, ops (ours
in Triton, ours in PyTorch, fla-core's Triton kernel when installed, the memory floor), the
classic cells' fused kernels against cuDNN, Newton against the loop, and every registered
layer against torch.nn.LSTM.

    PYTHONPATH=src python benchmarks/gpu.py [--only parity|ops|chunk|cells|steps|newton|layers]
                                            [--repeat 10] [--budget 330]

Parity: every registered layer at its registry `tiny` size, float32, auto mode on CUDA
against the same weights on CPU (output and every gradient), and CUDA step decoding against
CUDA's parallel output; relative errors, over 1e-3 flagged. Ops (float32 scans; chunk ops
B=4 T=4096 H=16 K=V=128 with bfloat16 inputs): forward (no grad) and forward+backward,
milliseconds (median of CUDA-event timings). "torch" rows run inside
`ops.backend.force("torch")`, "triton" rows call the kernel module directly, "fla" rows
fla-core's chunk_* kernels. The floor is torch.add over the op's input arrays (reads
them once, writes one output: what a one-pass kernel cannot beat), and three such passes for
fwd+bwd. Cells: lstm / gru / slstm layers (B=8, T=2048, d_model=512) in mode "fused" under
force("triton") and force("torch") (cuDNN for lstm and gru; the deferred-gradient loop for
slstm). Steps: mgu, ln_lstm, slstm in mode "sequential" with the step loop as
Python ("loop"), a torch.compile'd step ("compiled") and CUDA graphs ("graph"), against
torch.nn.LSTM (cuDNN), with the first call's seconds and the difference from the loop (the
evidence for rnnzoo.ops.backend.AUTO_STEPS). Newton: paragru (B=8, width 64) newton vs sequential, forward+backward, at T = 1k ..
64k; a loop run predicted past its share of the budget is not run (said so). Layers: B=8,
T=2048, d_model=512, mode "auto", fwd+bwd ms and peak memory. Each case runs in its own
try/except; a failure prints one line and the table goes on. `--budget` is the whole
script's time: a section past it prints SKIPPED rows.
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


def _torch_path(fn):
    """fn run inside ops.backend.force("torch"): the PyTorch op, though the inputs are CUDA."""
    def run(*args, **kwargs):
        from rnnzoo.ops import backend
        with backend.force("torch"):
            return fn()(*args, **kwargs)
    return run


def _op(module, name):
    return lambda: getattr(__import__(module, fromlist=[name]), name)


_torch_scan = _torch_path(_op("rnnzoo.ops.scan", "linear_scan"))
_torch_selective = _torch_path(_op("rnnzoo.layers.mamba", "selective_scan"))


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


def _fla(module, name):
    """fla-core's kernel `name` from fla.ops.<module>; ImportError when fla is absent."""
    import importlib
    return getattr(importlib.import_module(f"fla.ops.{module}"), name)


def chunk_case(kind, B=4, T=4096, H=16, K=128, V=128, dtype=torch.bfloat16):
    """One chunk op at fla's benchmark size: kind in gla_vector, gla_scalar, gated_delta,
    mlstm, rwkv7. Inputs bfloat16 (gates float32), ours and fla's on the same tensors."""
    F = torch.nn.functional

    def make(dev):
        g = torch.Generator(device=dev).manual_seed(0)

        def rnd(*shape, dt=dtype, scale=1.0):
            return (scale * torch.randn(*shape, generator=g, device=dev)).to(dt).requires_grad_()
        q, k, v = rnd(B, T, H, K), rnd(B, T, H, K), rnd(B, T, H, V)
        if kind == "gla_vector":
            args = (q, k, v, F.logsigmoid(rnd(B, T, H, K, dt=torch.float32) + 4)
                    .div(16).detach().requires_grad_())
        elif kind == "gla_scalar":
            args = (q, k, v, F.logsigmoid(rnd(B, T, H, dt=torch.float32) + 4)
                    .detach().requires_grad_())
        elif kind == "gated_delta":
            kn = F.normalize(k.detach().float(), dim=-1).to(dtype).requires_grad_()
            beta = torch.sigmoid(rnd(B, T, H, dt=torch.float32)).detach().requires_grad_()
            gate = F.logsigmoid(rnd(B, T, H, dt=torch.float32) + 4).detach().requires_grad_()
            args = (q, kn, v, beta, gate)
        elif kind == "mlstm":
            args = (q, k, v, rnd(B, T, H, dt=torch.float32),
                    F.logsigmoid(rnd(B, T, H, dt=torch.float32) + 3).detach().requires_grad_())
        else:  # rwkv7: w log-decay in (-e^-1/2, 0), a = -kappa, b = kappa * a
            w = (-0.6065 * torch.sigmoid(rnd(B, T, H, K, dt=torch.float32))).to(dtype)
            kappa = F.normalize(rnd(B, T, H, K).detach().float(), dim=-1)
            a_lr = torch.sigmoid(rnd(B, T, H, K, dt=torch.float32)).detach()
            args = (q, w.detach().requires_grad_(), k, v,
                    (-kappa).to(dtype).requires_grad_(), (kappa * a_lr).to(dtype).requires_grad_())
        return args, (q, k, v)

    ours = {"gla_vector": ("chunk_linear", "rnnzoo.ops.chunk.linear", "gated_linear_attention"),
            "gla_scalar": ("chunk_linear", "rnnzoo.ops.chunk.linear", "gated_linear_attention"),
            "gated_delta": ("chunk_delta", "rnnzoo.ops.chunk.delta", "delta_rule"),
            "mlstm": ("chunk_mlstm", "rnnzoo.ops.chunk.linear", "mlstm"),
            "rwkv7": ("chunk_rwkv7", "rnnzoo.ops.chunk.delta", "rwkv7")}[kind]
    tmod, pmod, fn = ours
    impls = {"triton": lambda *x: _op(f"rnnzoo.ops.triton.{tmod}", fn)()(*x),
             "torch": _torch_path(_op(pmod, fn))}
    if kind == "gla_vector":
        impls["fla"] = lambda q, k, v, g: _fla("gla", "chunk_gla")(q, k, v, g)
    elif kind == "gla_scalar":
        impls["fla"] = lambda q, k, v, g: _fla("simple_gla", "chunk_simple_gla")(q, k, v, g)
    elif kind == "gated_delta":
        impls["fla"] = lambda q, k, v, beta, g: _fla(
            "gated_delta_rule", "chunk_gated_delta_rule")(q, k, v, g, beta)
    elif kind == "rwkv7":
        impls["fla"] = lambda *x: _fla("rwkv7", "chunk_rwkv7")(*x)
    # mlstm: fla-core has no mLSTM kernel (xlstm's own kernels are not a dependency here)
    return OpCase(f"{kind} B={B} T={T} H={H} K={K} bf16", make, impls)


OP_CASES = [
    scan_case(8, 4096, 1024),
    scan_case(1, 65536, 256),
    selective_case(8, 2048, 1024, 16),
]
CHUNK_CASES = [chunk_case(k) for k in ("gla_vector", "gla_scalar", "gated_delta", "mlstm",
                                       "rwkv7")]


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
    """The sum of every tensor in out (nested tuples too, as mLSTM's (h, (C, n, m)))."""
    return sum(t.float().sum() for t in _tensors(out))


def _tensors(out):
    """Every tensor in out (nested tuples too), in order."""
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return [out] if isinstance(out, torch.Tensor) else []


def _zero_grads(xs):
    for x in xs:
        if isinstance(x, torch.Tensor):
            x.grad = None


def run_ops(repeat, cases, title, deadline):
    print(f"\n{title}, ms (floor: torch.add of the input arrays; fwd+bwd: three of them)")
    print(f"{'op':<48}{'impl':<8}{'fwd':>10}{'fwd+bwd':>10}{'x floor':>9}{'x floor f+b':>13}"
          f"{'err':>11}")
    for case in cases:
        if time.perf_counter() > deadline:
            print(f"{case.name:<48}SKIPPED: time budget spent")
            continue
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
    with torch.no_grad():
        ref = _tensors(case.impls["torch"](*inputs))
    for label, impl in case.impls.items():
        try:
            with torch.no_grad():
                err = max(((a.float() - b.float()).abs().max() / (b.float().abs().max() + 1e-6))
                          .item() for a, b in zip(_tensors(impl(*inputs)), ref))

            def fwd():
                with torch.no_grad():
                    impl(*inputs)

            def fwd_bwd():
                _zero_grads(inputs)
                _loss(impl(*inputs)).backward()
            f = cuda_time(fwd, repeat)
            fb = cuda_time(fwd_bwd, repeat)
            print(f"{'':<48}{label:<8}{f:>10.3f}{fb:>10.3f}{f / fl:>9.1f}{fb / fl_fb:>13.1f}"
                  f"{err:>11.1e}")
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


def run_cells(repeat, deadline):
    """lstm / gru / slstm layers in mode fused: the Triton kernel vs the PyTorch path."""
    import rnnzoo
    from rnnzoo.ops import backend
    B, T, D = 8, 2048, 512
    print(f"\nclassic cells, fused mode, B={B} T={T} d_model={D}, float32, fwd+bwd")
    print(f"{'cell':<12}{'backend':<34}{'ms':>10}{'peak MiB':>10}")
    x = torch.randn(B, T, D, device="cuda")
    torch_label = {"lstm": "torch (cuDNN)", "gru": "torch (cuDNN)",
                   "slstm": "torch (loop, deferred dW)"}
    for name in ("lstm", "gru", "slstm"):
        try:  # the same weights through both backends, T=256: max |triton - torch| / max |torch|
            torch.manual_seed(0)
            model = _Fused(rnnzoo.create(name, d_model=D)).cuda()
            with torch.no_grad():
                ys = []
                for which in ("triton", "torch"):
                    with backend.force(which):
                        ys.append(_tensors(model(x[:, :256])))
            err = max(((a - b).abs().max() / (b.abs().max() + 1e-6)).item() for a, b in zip(*ys))
            print(f"{name:<12}{'triton vs torch, max rel err':<34}{err:>10.1e}")
        except Exception as e:
            print(f"{name:<12}{'triton vs torch':<34}FAILED: {type(e).__name__}: "
                  f"{str(e).splitlines()[0][:100] if str(e) else ''}")
        for which in ("triton", "torch"):
            label = "triton (ops.triton.rnn)" if which == "triton" else torch_label[name]
            if time.perf_counter() > deadline:
                print(f"{name:<12}{label:<34}SKIPPED: time budget spent")
                continue
            try:
                with backend.force(which):
                    def make():
                        return _Fused(rnnzoo.create(name, d_model=D))
                    ms, peak = _layer_row(name, make, x, repeat, deadline)
                print(f"{name:<12}{label:<34}{ms:>10.2f}{peak:>10.0f}")
            except Exception as e:
                print(f"{name:<12}{label:<34}FAILED: {type(e).__name__}: "
                      f"{str(e).splitlines()[0][:100] if str(e) else ''}")
            torch.cuda.empty_cache()


STEP_CELLS = ("mgu", "ln_lstm", "slstm")  # no fused kernel (mgu, ln_lstm); slstm's loop


def run_steps(repeat, deadline):
    """Launch-bound step loops: classic layers in mode sequential under
    ops.backend.force_steps("loop" / "compiled" / "graph") against torch.nn.LSTM (cuDNN).
    "first s": the first call (compile or capture included); "max err": the largest
    difference from the loop over outputs and input gradient (what AUTO_STEPS needs)."""
    import rnnzoo
    from rnnzoo.ops import backend
    B, T, D = 8, 2048, 512
    print(f"\nclassic cells, step loops, B={B} T={T} d_model={D}, float32, fwd+bwd, mode "
          "sequential")
    print(f"{'cell':<12}{'steps':<12}{'ms':>10}{'peak MiB':>10}{'x cuDNN':>9}{'first s':>9}"
          f"{'max err y/dx':>18}")
    x = torch.randn(B, T, D, device="cuda")
    try:
        lstm_ms, peak = _layer_row("lstm", lambda: torch.nn.LSTM(D, D, batch_first=True), x,
                                   repeat, deadline)
        print(f"{'nn.LSTM':<12}{'cuDNN':<12}{lstm_ms:>10.2f}{peak:>10.0f}{1.0:>9.1f}")
    except Exception as e:
        lstm_ms = None
        print(f"{'nn.LSTM':<12}{'cuDNN':<12}FAILED: {type(e).__name__}: {e}")
    for name in STEP_CELLS:
        torch.manual_seed(0)
        layer = _Fused(rnnzoo.create(name, d_model=D).cuda(), "sequential")
        ref = None
        for how in ("loop", "compiled", "graph"):
            if time.perf_counter() > deadline:
                print(f"{name:<12}{how:<12}SKIPPED: time budget spent")
                continue
            try:
                # "graph": any synchronising op inside the capture warns with its location
                torch.cuda.set_sync_debug_mode("warn" if how == "graph" else "default")
                with backend.force_steps(how):
                    xg = x.clone().requires_grad_()
                    t0 = time.perf_counter()
                    y, _ = layer(xg)
                    y.square().mean().backward()
                    torch.cuda.synchronize()
                    first = time.perf_counter() - t0
                    got = (y.detach(), xg.grad)
                    ref = got if how == "loop" else ref
                    err = "/".join(f"{(a - b).abs().max().item():.1e}"
                                   for a, b in zip(got, ref))
                    ms, peak = _layer_row(name, lambda: layer, x, repeat, deadline)
                # no autograd graph of this call may outlive it: torch warned of a live
                # AccumulateGrad node of another stream just before mgu's capture failed on
                # the H200 (2026-11-30)
                del y, xg, got
                rel = f"{ms / lstm_ms:>9.1f}" if lstm_ms else f"{'-':>9}"
                print(f"{name:<12}{how:<12}{ms:>10.2f}{peak:>10.0f}{rel}{first:>9.1f}"
                      f"{err:>18}")
            except Exception as e:
                print(f"{name:<12}{how:<12}FAILED: {type(e).__name__}: "
                      f"{str(e).splitlines()[0][:100] if str(e) else ''}")
                print("".join(traceback.format_exc().splitlines(True)[-14:]))
            torch.cuda.set_sync_debug_mode("default")
            torch.cuda.empty_cache()


class _Fused(torch.nn.Module):
    def __init__(self, layer, mode="fused"):
        super().__init__()
        self.layer, self.mode = layer, mode

    def forward(self, x):
        return self.layer(x, mode=self.mode)


def run_newton(deadline):
    """paragru: newton vs sequential, fwd+bwd, T = 1k .. 64k (the loop only while its
    predicted time fits the budget left)."""
    import rnnzoo
    B, W = 8, 64
    print(f"\nNewton vs loop, paragru, B={B} width={W}, float32, fwd+bwd, ms (one run each "
          f"after a warm-up)")
    print(f"{'T':>8}{'newton':>12}{'sequential':>14}{'x faster':>10}")
    layer = rnnzoo.create("paragru", d_model=W, hidden_size=W).cuda()
    per_step = None
    for T in (1024, 4096, 16384, 65536):
        if time.perf_counter() > deadline:
            print(f"{T:>8}  SKIPPED: time budget spent")
            continue
        x = torch.randn(B, T, W, device="cuda")
        row = {}
        for mode in ("newton", "sequential"):
            left = deadline - time.perf_counter()
            if mode == "sequential" and per_step is not None and per_step * T * 2 > left / 3:
                row[mode] = None  # would take more than its share of what is left
                continue
            try:
                def run():
                    y, _ = layer(x, mode=mode)
                    y.square().mean().backward()
                layer.zero_grad(set_to_none=True)
                row[mode] = cuda_time(run, 1)
                if mode == "sequential":
                    per_step = row[mode] / 1000 / T
            except Exception as e:
                row[mode] = f"{type(e).__name__}"
        n, s_ = row.get("newton"), row.get("sequential")
        fmt = lambda v: f"{v:.1f}" if isinstance(v, float) else (v or "not run")  # noqa: E731
        ratio = f"{s_ / n:.0f}" if isinstance(n, float) and isinstance(s_, float) else "-"
        print(f"{T:>8}{fmt(n):>12}{fmt(s_):>14}{ratio:>10}")
        torch.cuda.empty_cache()


def _grads(layer, x, mode="auto"):
    """Output and the gradients of sum(y * w) w.r.t. x and every parameter (w fixed by seed)."""
    x = x.clone().requires_grad_()
    y, _ = layer(x, mode=mode)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(y.device)
    params = [p for p in layer.parameters() if p.requires_grad]
    grads = torch.autograd.grad((y * w).sum(), [x, *params], allow_unused=True)
    return [y.detach().cpu()] + [g.cpu() for g in grads if g is not None]


def run_parity(deadline):
    """Every registered layer (registry `tiny` options, float32, B=2, T=37 or its max_len): its
    auto mode on CUDA (the Triton kernels where the backend picks them) against the same
    weights on CPU, output and every gradient; and CUDA `step` decoding against CUDA's parallel output.
    Errors are max |a - b| / max |b|; over 1e-3 is flagged."""
    import copy

    import rnnzoo
    print("\nparity, CUDA vs CPU (auto mode, fwd+bwd) and CUDA step vs CUDA parallel, float32")
    print(f"{'layer':<28}{'fwd+bwd rel':>14}{'step rel':>12}")
    bad = 0
    for info in rnnzoo.list_layers():
        if time.perf_counter() > deadline:
            print(f"{info.name:<28}SKIPPED: time budget spent")
            continue
        try:
            opts = dict(info.tiny)
            d = opts.pop("d_model", 8)
            torch.manual_seed(0)
            cpu = rnnzoo.create(info.name, d_model=d, **opts)
            with torch.no_grad():
                g = torch.Generator().manual_seed(1)
                for p in cpu.parameters():
                    if p.is_floating_point():
                        p.add_(0.1 * torch.randn(p.shape, generator=g))
            gpu = copy.deepcopy(cpu).cuda()
            T = min(37, getattr(cpu, "max_len", None) or 37)
            x = torch.randn(2, T, d, generator=torch.Generator().manual_seed(2))
            ref, got = _grads(cpu, x), _grads(gpu, x.cuda())
            rel = max(((a - b).abs().max() / (b.abs().max() + 1e-6)).item()
                      for a, b in zip(got, ref))
            with torch.no_grad():
                xs = x.cuda()
                y, _ = gpu(xs)
                s, outs = None, []
                for t in range(xs.shape[1]):
                    y_t, s = gpu.step(xs[:, t], s)
                    outs.append(y_t)
                srel = ((torch.stack(outs, 1) - y).abs().max() / (y.abs().max() + 1e-6)).item()
            flag = "  <-- over 1e-3" if max(rel, srel) > 1e-3 else ""
            bad += bool(flag)
            print(f"{info.name:<28}{rel:>14.2e}{srel:>12.2e}{flag}")
        except Exception as e:
            bad += 1
            msg = str(e).splitlines()[0][:100] if str(e) else ""
            print(f"{info.name:<28}FAILED: {type(e).__name__}: {msg}")
    print(f"parity: {bad} layers over 1e-3 or failed")


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
    p.add_argument("--only", choices=("parity", "ops", "chunk", "cells", "steps", "newton",
                                      "layers"),
                   default=None, help="run one part")
    p.add_argument("--repeat", type=int, default=10, help="timed runs per case (median)")
    p.add_argument("--budget", type=float, default=330.0,
                   help="seconds for the whole script; cases past it are listed as skipped")
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
    try:
        import fla
        fv = getattr(fla, "__version__", "?")
    except Exception:
        fv = "not installed (no fla rows)"
    print(f"torch {torch.__version__}, triton {tv}, fla {fv}, {torch.cuda.get_device_name()}")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False  # cuDNN's RNNs too: float32 against float32
    start = time.perf_counter()
    end = start + args.budget
    # shares of the budget: parity 25%, ops 8%, chunk ops 15%, cells 8%, newton 8%, layers
    # the rest but the 12% of steps
    share = lambda f: min(end, time.perf_counter() + f * args.budget)  # noqa: E731
    sections = [
        ("parity", lambda: run_parity(share(0.25))),
        ("ops", lambda: run_ops(args.repeat, OP_CASES, "scans, float32", share(0.08))),
        ("chunk", lambda: run_ops(args.repeat, CHUNK_CASES, "chunk ops, bf16 inputs",
                                  share(0.15))),
        ("cells", lambda: run_cells(args.repeat, share(0.08))),
        ("newton", lambda: run_newton(share(0.08))),
        ("layers", lambda: run_layers(args.repeat, max(0.0, end - time.perf_counter()
                                                           - 0.12 * args.budget))),
        # last: a failed CUDA-graph capture can leave the CUDA context unusable
        ("steps", lambda: run_steps(args.repeat, share(0.12))),
    ]
    for name, run in sections:
        if args.only in (None, name):
            try:
                run()
            except Exception:
                traceback.print_exc()
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
