"""The speed harness: `rnnzoo bench` (and `python -m rnnzoo.bench`, the same command).

For each chosen layer, mode and sequence length it times the forward pass
(no grad) and forward+backward (median of `--repeat` runs after warm-up),
reports tokens per second and peak memory, and the speedup over a named
baseline run in the same process on the same input:

- a registered baseline for the layer (`register_baseline`, kept in `BASELINES`):
  torch.nn.LSTM/GRU/RNN for `lstm`, `gru`, `rnn_tanh`, `rnn_relu`; a peer
  library's implementation once its adapter module is imported (from a checkout,
  `python benchmarks/layers.py` imports those of benchmarks/peers);
- otherwise the layer's own reference mode.

Peak memory is torch.cuda's high-water mark on GPU; on CPU it is the growth of
the process's peak resident set during one forward+backward, measured in a
fresh subprocess so that earlier cases do not hide it.

The two measurements are public for the scripts under benchmarks/:
`median_time(fn, device, repeat, warmup)` and `peak_memory(case)` (with
`resident_memory()`, the process's resident set).

`rnnzoo bench --vs-lstm` (benchmarks/cpu.py) prints another table: every chosen layer's
`auto` mode, forward+backward, against `torch.nn.LSTM(d_model, d_model)` timed in the same
process (interleaved, median of the ratios), with its FLOPs and its utilisation

    utilisation = FLOPs(forward + backward) / time / peak,

peak being a measured float32 (n, n) @ (n, n) matmul rate at the same thread count. A
layer's FLOPs are counted from the shapes of the matrix products its `auto` mode runs
(`layer_flops`: torch.utils.flop_counter over one forward+backward on the CPU, of the
PyTorch form of what runs there, a convolution's backward counted group-aware, twice its
forward; elementwise work and FFTs are not counted; an op whose CPU path does other work
than its PyTorch form counts that path, its C kernels reporting their products through
ops.flop_count); nn.LSTM's are the formula
`lstm_flops`, 3 x 8 B T h (d_in + h) (its fused CPU kernel is invisible to the counter; the
backward is twice the forward).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from rnnzoo.registry import (
    FAMILIES,
    GRID_LAYERS,
    Info,
    Registry,
    create,
    get_layer_info,
    list_layers,
)

BASELINES = Registry("baseline", names=r"[a-z0-9_]+/\S.*")
"""'layer/label' -> `Info` whose `cls` is the factory: factory(layer, x) returns a callable
of no arguments that runs the baseline forward on x and returns a tensor to backpropagate,
or raises ImportError when the peer it needs is not installed. `extra` holds the layer's
name, the label, and `max_length` / `why` (see `register_baseline`)."""


def register_baseline(layer_name: str, label: str, max_length: int | None = None,
                      why: str = ""):
    """Decorator: register `factory(layer, x) -> run` as a speed baseline for a layer.

    The factory raises ImportError when its peer is not installed. `rnnzoo bench` skips
    the baseline for T > max_length (printing `why`); `peak_memory` still runs it."""
    def decorate(factory):
        BASELINES.add(Info(f"{layer_name}/{label}", factory, extra=dict(
            layer=layer_name, label=label, max_length=max_length, why=why)))
        return factory
    return decorate


def baselines_for(layer_name: str) -> dict[str, Info]:
    """label -> `Info` of every baseline registered for a layer, in registration order."""
    return {i.extra["label"]: i for i in BASELINES.values() if i.extra["layer"] == layer_name}


def torch_rnn_baseline(cls):
    """torch.nn.LSTM/GRU/RNN of the layer's sizes, followed by the layer's own output map."""
    def factory(layer, x):
        peer = cls(layer.d_model, layer.hidden_size, batch_first=True).to(x.device, x.dtype)
        return lambda: layer.out_proj(peer(x)[0])
    return factory


def _relu_rnn(input_size, hidden_size, **kw):
    return torch.nn.RNN(input_size, hidden_size, nonlinearity="relu", **kw)


register_baseline("lstm", "torch.nn.LSTM")(torch_rnn_baseline(torch.nn.LSTM))
register_baseline("gru", "torch.nn.GRU")(torch_rnn_baseline(torch.nn.GRU))
register_baseline("rnn_tanh", "torch.nn.RNN")(torch_rnn_baseline(torch.nn.RNN))
register_baseline("rnn_relu", "torch.nn.RNN")(torch_rnn_baseline(_relu_rnn))


@dataclass
class Case:
    layer: str
    mode: str
    batch: int
    length: int
    d_model: int
    options: dict
    dtype: str = "float32"
    device: str = "cpu"
    baseline: str | None = None  # None: the layer itself in `mode`
    grid: bool = False  # a 2-D layer (rnnzoo.grid): x (B, side, side, d_model), side^2 = length

    def build(self):
        """(run, x): run() does one forward and returns the output to backpropagate."""
        torch.manual_seed(0)
        dtype = getattr(torch, self.dtype)
        if self.grid:
            from rnnzoo.grid import create_grid
            side = math.isqrt(self.length)
            layer = create_grid(self.layer, d_model=self.d_model, **self.options)
            shape = (self.batch, side, side, self.d_model)
        else:
            layer = create(self.layer, d_model=self.d_model, **self.options)
            shape = (self.batch, self.length, self.d_model)
        layer = layer.to(self.device, dtype)
        x = torch.randn(*shape, device=self.device, dtype=dtype)
        x.requires_grad_()
        if self.baseline is None:
            return (lambda: layer(x, mode=self.mode)[0]), x
        return BASELINES[f"{self.layer}/{self.baseline}"].cls(layer, x), x


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def median_time(fn, device="cpu", repeat: int = 5, warmup: int = 1) -> float:
    """Median seconds of `repeat` calls of fn() after `warmup` untimed ones (on a CUDA
    `device`, each call is waited for)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_case(case: Case, repeat: int = 5, warmup: int = 1, backward: bool = True) -> dict:
    """Median seconds of forward (no grad) and forward+backward for one case."""
    run, x = case.build()

    def fwd():
        with torch.no_grad():
            run()

    def fwd_bwd():
        x.grad = None
        run().float().sum().backward()

    out = {"fwd": median_time(fwd, case.device, repeat, warmup)}
    if backward:
        out["fwd_bwd"] = median_time(fwd_bwd, case.device, repeat, warmup)
    return out


_PROBE = "import sys; from rnnzoo.bench import _memory_probe; _memory_probe(*sys.argv[1:])"


def peak_memory(case: Case, time_limit: float | None = None) -> tuple[float, bool]:
    """(peak extra memory in bytes of one forward+backward of `case`, whether it finished).

    On CPU the probe runs in a fresh process, which imports the module that registered
    the case's baseline (found on this process's sys.path); past `time_limit` seconds it
    is stopped and the peak so far is returned with False: a lower bound (for a reference
    whose backward would take hours). nan if the probe failed.
    """
    if case.device.startswith("cuda"):
        run, x = case.build()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run().float().sum().backward()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base), True
    modules = [] if case.baseline is None else \
        [BASELINES[f"{case.layer}/{case.baseline}"].cls.__module__]
    _release_memory()  # so that the probe's process has the memory this one held
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    probe = subprocess.Popen([sys.executable, "-c", _PROBE, json.dumps(case.__dict__),
                              *modules], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, env=env)
    try:
        before = int(probe.stdout.readline())  # printed once the case is built
        out, _ = probe.communicate(timeout=time_limit)
        return float(int(out.split()[-1]) - before), probe.returncode == 0
    except subprocess.TimeoutExpired:
        peak = resident_memory(probe.pid)
        probe.kill()
        probe.communicate()
        return float(peak - before), False
    except (ValueError, IndexError):  # the probe died (e.g. out of memory) before printing
        probe.kill()
        probe.wait()
        return float("nan"), False


def resident_memory(pid: int | str = "self", peak: bool = True) -> int:
    """A process's resident set in bytes: its peak (VmHWM: unlike ru_maxrss, it starts
    afresh at exec instead of inheriting the parent's peak) or, with peak=False, its
    current size (VmRSS). Without /proc, this process's peak from getrusage."""
    key = "VmHWM:" if peak else "VmRSS:"
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _release_memory() -> None:
    """Give freed heap memory back to the system (glibc keeps it otherwise: after a long
    sequential case this process would hold gigabytes the next probe needs)."""
    import ctypes
    import gc
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _memory_probe(spec: str, *modules: str) -> None:
    """The probe process: import the baseline's module, build the case, print the peak
    resident set, run one forward+backward, print it again."""
    import importlib
    for m in modules:
        importlib.import_module(m)
    case = Case(**json.loads(spec))
    run, x = case.build()
    print(resident_memory(), flush=True)
    run().float().sum().backward()
    print(resident_memory())


def _accepted(cls, options: dict) -> dict:
    """The subset of `options` that `cls`'s constructor takes (for "*" options)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in options.items() if k in params}


def cases_for(layers, modes, lengths, batch, d_model, options, dtype, device,
              baselines=True, grid=False) -> list[list[Case]]:
    """Groups of cases; the first case of each group is the one the others are compared to.
    With `grid`, the names are 2-D layers (GRID_LAYERS) timed on side x side grids,
    side = isqrt(length)."""
    groups = []
    for name in layers:
        info = GRID_LAYERS[name] if grid else get_layer_info(name)
        opts = {**_accepted(info.cls, options.get("*", {})), **options.get(name, {})}
        all_modes = info.modes
        if grid:  # an instance's modes (scan2d's are its 1-D layer's)
            from rnnzoo.grid import create_grid
            all_modes = _built(name, lambda: create_grid(name, d_model=d_model, **opts),
                               opts).modes
        else:  # a bad option fails here in one line, not as a traceback while timing
            _built(name, lambda: create(name, d_model=d_model, **opts), opts)
        chosen = [m for m in all_modes if modes is None or m in modes]
        if not chosen:
            continue
        for T in lengths:
            base = dict(layer=name, batch=batch, length=T, d_model=d_model, options=opts,
                        dtype=dtype, device=device, grid=grid)
            group = [Case(mode=m, **base) for m in chosen]
            peers = list(baselines_for(name)) if baselines and not grid else []
            ref = info.reference_mode
            if peers:
                group = [Case(mode=ref, baseline=label, **base) for label in peers] + group
            elif ref not in chosen and len(chosen) < len(all_modes):
                group = [Case(mode=ref, **base)] + group
            else:
                group = [c for c in group if c.mode == ref] + [c for c in group if c.mode != ref]
            groups.append(group)
    return groups


def run_table(groups, repeat=5, warmup=1, backward=True, memory=True, out=print) -> list[dict]:
    """Time every case and print one table; returns its rows."""
    head = (f"{'layer':<18}{'mode':<22}{'T':>7}{'fwd ms':>10}{'fwd+bwd ms':>12}"
            f"{'tok/s':>11}{'peak MB':>9}  speedup vs baseline")
    out(head)
    out("-" * len(head))
    rows = []
    for group in groups:
        base_time = None
        base_label = None
        for case in group:
            if case.baseline is not None:
                extra = BASELINES[f"{case.layer}/{case.baseline}"].extra
                limit = extra["max_length"]
                if limit is not None and case.length > limit:
                    out(f"{case.layer:<18}{case.baseline:<22}{case.length:>7}  skipped: "
                        f"T > {limit}: {extra['why']}")
                    continue
            try:
                t = time_case(case, repeat, warmup, backward)
            except ImportError as e:
                out(f"{case.layer:<18}{case.baseline or case.mode:<22}{case.length:>7}  skipped: {e}")
                continue
            except Exception as e:  # a peer's own failure is its row's, not the table's
                if case.baseline is None:  # (a layer of ours that fails raises)
                    raise
                out(f"{case.layer:<18}{case.baseline:<22}{case.length:>7}  failed: "
                    f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                continue
            total = t.get("fwd_bwd", t["fwd"])
            mem = peak_memory(case)[0] / 2**20 if memory else float("nan")
            label = case.baseline or case.mode
            if base_time is None:
                base_time, base_label, speed = total, label, "(baseline)"
            else:
                speed = f"{base_time / total:.2f}x vs {base_label}"
            toks = case.batch * case.length / total
            out(f"{case.layer:<18}{label:<22}{case.length:>7}{t['fwd'] * 1e3:>10.2f}"
                f"{t.get('fwd_bwd', float('nan')) * 1e3:>12.2f}{toks:>11.0f}{mem:>9.1f}  {speed}")
            rows.append(dict(case.__dict__, **t, peak_mb=mem, speedup=base_time / total,
                             baseline_label=base_label))
    return rows


def lstm_flops(batch: int, length: int, d_in: int, hidden: int) -> int:
    """Forward+backward FLOPs of torch.nn.LSTM(d_in, hidden): the forward multiplies
    (B, d_in + h) by (d_in + h, 4h) at each of T steps, 2 * B * (d_in + h) * 4h FLOPs; the
    backward computes the gradients of both factors, twice that."""
    return 3 * 8 * batch * length * hidden * (d_in + hidden)


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding,
                         _dilation, transposed, _output_padding, _groups, output_mask,
                         out_shape=None, **kwargs) -> int:
    """FLOPs of aten.convolution_backward: each gradient it makes (input, weight) takes the
    forward's multiply-adds again, 2 B T_out prod(w_shape) for an (out, in / groups, K...)
    weight. torch.utils.flop_counter's own formula forgets the groups in the weight
    gradient and books a depthwise conv's as dense, `groups` times too much."""
    from torch.utils.flop_counter import conv_flop_count
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _complex_aware(formula):
    """`formula` (torch.utils.flop_counter's registered formula of a matrix product, which
    takes the op's tensors) counting a complex product as the 4 real multiply-adds it is."""
    def count(*args, out_val=None, **kwargs):
        n = formula(*args, out_val=out_val, **kwargs)
        return 4 * n if isinstance(args[0], torch.Tensor) and args[0].is_complex() else n
    count._get_raw = True
    return count


def counted_flops(run) -> int:
    """FLOPs of the matrix products (mm, bmm, addmm, baddbmm, einsum, conv, sdpa) that
    `run().sum().backward()` performs, from their shapes (torch.utils.flop_counter, with
    the convolution backward counted group-aware, `_conv_backward_flops`, and a complex
    product as four real ones)."""
    from torch.utils import flop_counter
    from torch.utils.flop_counter import FlopCounterMode
    aten = torch.ops.aten
    mapping = {aten.convolution_backward: _conv_backward_flops}
    for op, formula in ((aten.mm, flop_counter.mm_flop), (aten.bmm, flop_counter.bmm_flop),
                        (aten.addmm, flop_counter.addmm_flop),
                        (aten.baddbmm, flop_counter.baddbmm_flop)):
        mapping[op] = _complex_aware(formula)
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        run().float().sum().backward()
    return int(counter.get_total_flops())


def layer_flops(name: str, batch: int, length: int, d_model: int, options=None,
                mode: str = "auto") -> int:
    """Forward+backward FLOPs of a registered layer's `mode` at (batch, length, d_model):
    one run on the CPU, the device the CPU table times, so the path counted is the path
    timed where layers choose by device (gsa's two-pass chunk form, the delta rule's CPU
    chunk size; on the meta device gsa took its generic form, 3.9x the products). Inside
    `ops.backend.force("torch")` and with oneDNN off, an op that a C kernel (ours, or
    oneDNN's fused RNNs) does when timed runs as the PyTorch products the counter sees,
    except in ops whose CPU path does other work than their PyTorch form (ops.flop_count:
    mesa's C recurrence, log-linear attention's aligned chunks): those take the timed path,
    and its C kernels add the products they did."""
    from rnnzoo.ops import backend, flop_count
    layer = create(name, d_model=d_model, **dict(options or {}))
    x = torch.randn(batch, length, d_model, requires_grad=True)
    with flop_count.counting() as native, backend.force("torch"), \
            torch.backends.mkldnn.flags(enabled=False, allow_tf32=None):
        counted = counted_flops(lambda: layer(x, mode=mode)[0])
    return counted + native[0]


def matmul_peak(threads: int | None = None, n: int = 1024, repeat: int = 7) -> float:
    """FLOP/s of a float32 (n, n) @ (n, n) matmul on CPU, at `threads` threads (the
    current count if None): the best of `repeat` timings, 2 n^3 FLOPs each, of the faster of
    torch.mm (MKL's sgemm) and oneDNN's product (`ops.native.linear`, what the layers'
    projections and nn.LSTM run on; on AMD CPUs MKL takes its AVX2 code, oneDNN AVX-512)."""
    from rnnzoo.ops.native.linear import _LP
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        products = [lambda: torch.mm(a, b, out=out)]
        if _LP is not None:
            products.append(lambda: _LP(a, b, None, "none", [], ""))
        best = float("inf")
        for product in products:
            product()
            for _ in range(repeat):
                t0 = time.perf_counter()
                product()
                best = min(best, time.perf_counter() - t0)
        return 2 * n ** 3 / best
    finally:
        torch.set_num_threads(old)


def _fwd_bwd(run, x):
    def go():
        x.grad = None
        run().float().sum().backward()
    return go


def _compiled(layer, x, mode, eager_run, repeat) -> dict:
    """Compile time (the first forward+backward) and eager / compiled time of `layer`."""
    torch._dynamo.reset()
    for fullgraph in (True, False):
        fn = torch.compile(lambda xi: layer(xi, mode=mode)[0], fullgraph=fullgraph)
        run = _fwd_bwd(lambda: fn(x), x)
        t0 = time.perf_counter()
        try:
            run()
        except Exception:  # noqa: BLE001  (a graph break under fullgraph: try without)
            if not fullgraph:
                raise
            torch._dynamo.reset()
            continue
        compile_s = time.perf_counter() - t0
        ratios = [median_time(eager_run, repeat=1, warmup=0) / median_time(run, repeat=1, warmup=0)
                  for _ in range(repeat)]
        return dict(compile_s=compile_s, compiled_speedup=statistics.median(ratios),
                    fullgraph=fullgraph)
    raise AssertionError("unreachable")


def steady_allocator() -> bool:
    """Pin glibc's malloc thresholds (mmap 256 MB, trim 1 GB) so that large temporaries are
    reused instead of mapped and unmapped on every call. Without it nn.LSTM's own time is
    bimodal (about 35 or 50 ms at the #17 size, by the allocator state earlier work left),
    and every ratio against it moves with it. Pinned, both sides run in the fast state and
    the ratios are the stricter ones. Returns False where there is no glibc mallopt."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 256 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


def speed_vs_lstm(layers, batch=16, length=512, d_model=128, threads=(1, 2), repeat=3,
                  options=None, out=print, compile: bool = False,
                  pin_allocator: bool = False) -> list[dict]:
    """For each thread count and layer: the layer's `auto` mode forward+backward time, its
    ratio to torch.nn.LSTM(d_model, d_model) (the two timed alternately, `repeat` pairs
    after one warm-up each, the median of the per-pair ratios: robust on a busy machine),
    FLOPs and utilisation. Prints one table per thread count; returns the rows.
    compile: also torch.compile the layer's forward (fullgraph where it traces whole) and
    report the compile time (first forward+backward) and the eager / compiled time ratio.
    pin_allocator: `steady_allocator()` first (for the whole process: the command sets it)."""
    options = options or {}
    rows = []
    pinned = pin_allocator and steady_allocator()
    old = torch.get_num_threads()
    try:
        for n in threads:
            torch.set_num_threads(n)
            peak = matmul_peak(n)
            torch.manual_seed(0)
            lstm = torch.nn.LSTM(d_model, d_model, batch_first=True)
            xl = torch.randn(batch, length, d_model, requires_grad=True)
            lstm_run = _fwd_bwd(lambda: lstm(xl)[0], xl)
            lstm_run()
            lf = lstm_flops(batch, length, d_model, d_model)
            out(f"rnnzoo bench --vs-lstm: B={batch} T={length} d_model={d_model} float32, "
                f"fwd+bwd, {n} thread(s), matmul peak {peak / 1e9:.1f} GFLOP/s, "
                f"torch {torch.__version__}, malloc thresholds "
                f"{'pinned' if pinned else 'default'}")
            head = (f"{'layer':<24}{'auto mode':<12}{'ms':>9}{'x LSTM':>8}{'GFLOP':>8}"
                    f"{'GFLOP/s':>9}{'util':>7}")
            if compile:
                head += f"{'compile s':>11}{'compiled x':>11}"
            out(head)
            out("-" * len(head))
            lstm_times = []
            for name in layers:
                opts = {**_accepted(get_layer_info(name).cls, options.get("*", {})),
                        **options.get(name, {})}
                torch.manual_seed(0)
                layer = _built(name, lambda: create(name, d_model=d_model, **opts), opts)
                x = torch.randn(batch, length, d_model, requires_grad=True)
                mode = layer.auto_mode(x)
                layer_run = _fwd_bwd(lambda: layer(x, mode=mode)[0], x)
                layer_run()
                ratios, times = [], []
                for _ in range(repeat):
                    tl = median_time(lstm_run, repeat=1, warmup=0)
                    tx = median_time(layer_run, repeat=1, warmup=0)
                    lstm_times.append(tl)
                    times.append(tx)
                    ratios.append(tx / tl)
                t = statistics.median(times)
                ratio = statistics.median(ratios)
                flops = layer_flops(name, batch, length, d_model, opts)
                row = dict(layer=name, mode=mode, threads=n, ms=t * 1e3, ratio=ratio,
                           flops=flops, gflops_per_s=flops / t / 1e9, utilisation=flops / t / peak,
                           peak_gflops=peak / 1e9)
                line = (f"{name:<24}{mode:<12}{t * 1e3:>9.1f}{ratio:>8.2f}{flops / 1e9:>8.2f}"
                        f"{flops / t / 1e9:>9.1f}{flops / t / peak:>7.2f}")
                if compile:
                    row.update(_compiled(layer, x, mode, layer_run, repeat))
                    line += f"{row['compile_s']:>11.1f}{row['compiled_speedup']:>10.2f}x"
                    if not row["fullgraph"]:
                        line += " (graph breaks)"
                rows.append(row)
                out(line)
            tl = statistics.median(lstm_times) if lstm_times else median_time(lstm_run, repeat=repeat)
            out(f"{'torch.nn.LSTM':<24}{'':<12}{tl * 1e3:>9.1f}{1.0:>8.2f}{lf / 1e9:>8.2f}"
                f"{lf / tl / 1e9:>9.1f}{lf / tl / peak:>7.2f}")
            over = [r["layer"] for r in rows if r["threads"] == n and r["ratio"] > 2]
            out(f"over 2x nn.LSTM at {n} thread(s): {', '.join(over) or 'none'}")
            out("")
    finally:
        torch.set_num_threads(old)
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", help="comma-separated layer names (default: all, or --family)")
    p.add_argument("--family", choices=(*FAMILIES, "all"),
                   help="every layer of one family (all: every layer)")
    p.add_argument("--grid", action="store_true",
                   help="time the 2-D layers (rnnzoo.grid; --layers among them, default all) "
                        "on (batch, side, side, d_model) grids, side = isqrt(each length)")
    p.add_argument("--modes", help="comma-separated modes to time (default: all of each layer)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lengths", default="256", help="comma-separated sequence lengths")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--options", default="{}",
                   help='JSON: constructor options per layer name, "*" for all: '
                        '{"*": {"hidden_size": 128}, "mingru": {"expand": 2}}')
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-backward", action="store_true", help="time the forward pass only")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probe")
    p.add_argument("--no-baselines", action="store_true", help="compare with the reference mode only")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--vs-lstm", action="store_true",
                   help="time each layer's auto mode (fwd+bwd) against torch.nn.LSTM(d, d) "
                        "with FLOPs and utilisation of the matmul peak; uses --batch, "
                        "--lengths (first), --d-model, --repeat, --threads")
    p.add_argument("--compile", action="store_true",
                   help="with --vs-lstm: also time torch.compile of each layer (compile "
                        "seconds, eager/compiled speed-up)")
    p.add_argument("--threads", default="1,2",
                   help="comma-separated thread counts for --vs-lstm")


def _parse_options(text: str, grid_layers=None) -> dict[str, dict]:
    """--options: a JSON object {"*" or a layer name: {option: value}}; anything else
    (bad JSON, another shape, an unknown layer name) is one ValueError line."""
    try:
        options = json.loads(text)
    except ValueError as e:
        raise ValueError(f"--options is not valid JSON ({e}): {text!r}") from None
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise ValueError(f'--options must be a JSON object of objects, {{"*" or a layer name: '
                         f'{{option: value}}}}, got {text!r}')
    for name in options:
        if name != "*":
            GRID_LAYERS[name] if grid_layers is not None else get_layer_info(name)
    return options


def _built(name: str, build, options: dict):
    """build(), a layer constructor's TypeError/ValueError (a bad option) as one ValueError."""
    try:
        return build()
    except (TypeError, ValueError) as e:
        raise ValueError(f"--options for layer {name!r} {options}: "
                         f"{' '.join(str(e).split())}") from None


def main(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(torch.get_num_threads())
    if args.grid and (args.vs_lstm or args.family):
        raise ValueError("--grid takes --layers (2-D layers), not --family or --vs-lstm")
    if args.layers:
        layers = [n.strip() for n in args.layers.split(",") if n.strip()]
        for n in layers:
            GRID_LAYERS[n] if args.grid else get_layer_info(n)  # unknown: the valid list
    elif args.grid:
        layers = list(GRID_LAYERS)
    else:
        layers = [i.name for i in list_layers(None if args.family == "all" else args.family)]
    try:
        lengths = [int(v) for v in args.lengths.split(",")]
    except ValueError:
        raise ValueError(f"--lengths must be comma-separated ints, got {args.lengths!r}") from None
    options = _parse_options(args.options, GRID_LAYERS if args.grid else None)
    if any(T < 1 for T in lengths) or args.batch < 1 or args.d_model < 1 or args.repeat < 1:
        raise ValueError("--lengths, --batch, --d-model and --repeat must be >= 1")
    if args.device != "auto":
        try:  # torch's RuntimeError, with a traceback, at the first .to(device)
            torch.device(args.device)
        except RuntimeError:
            raise ValueError(f"--device must be cpu, cuda or cuda:N, got {args.device!r}") \
                from None
    from rnnzoo.train.dist import Dist, pick_device
    # 'auto' resolved; one line where CUDA, its index or MPS is not here (as rnnzoo train)
    args.device = str(pick_device(args.device, Dist()))
    if args.vs_lstm:
        try:
            threads = [int(v) for v in args.threads.split(",")]
        except ValueError:
            raise ValueError(f"--threads must be comma-separated ints, got "
                             f"{args.threads!r}") from None
        if any(n < 1 for n in threads) or args.device != "cpu" or args.dtype != "float32":
            raise ValueError("--vs-lstm runs float32 on cpu with --threads >= 1")
        rows = speed_vs_lstm(layers, args.batch, lengths[0], args.d_model, threads,
                             args.repeat, options, compile=args.compile, pin_allocator=True)
        if args.json:
            from rnnzoo.io import atomic_write_text
            atomic_write_text(args.json, json.dumps(rows, indent=1))
        return rows
    modes = set(args.modes.split(",")) if args.modes else None
    groups = cases_for(layers, modes, lengths, args.batch, args.d_model, options, args.dtype,
                       args.device, baselines=not args.no_baselines, grid=args.grid)
    print(f"rnnzoo bench: B={args.batch} d_model={args.d_model} {args.dtype} on {args.device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    rows = run_table(groups, args.repeat, args.warmup, not args.no_backward, not args.no_memory)
    if args.json:
        from rnnzoo.io import atomic_write_text
        atomic_write_text(args.json, json.dumps(rows, indent=1, default=str))
    return rows


def command(argv=None) -> int:
    """The `rnnzoo bench` command line on its own (`python -m rnnzoo.bench`,
    benchmarks/layers.py): parse `argv`, run, and print a bad name or option as one line."""
    p = argparse.ArgumentParser(prog="rnnzoo bench",
                                description="time layers and modes against their baselines")
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        main(args)
    except ValueError as e:
        print(f"rnnzoo bench: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(command())
