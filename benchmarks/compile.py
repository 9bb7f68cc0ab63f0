"""torch.compile sweep over every registered layer: does its auto (parallel) mode trace
whole (`fullgraph=True`, backend "aot_eager": dynamo + AOT autograd, the part that breaks on
a data-dependent branch), and do the output and gradients (input and parameters) equal
eager's? With --inductor, also the C++ code generator's compile time and the eager vs
compiled speed of forward+backward at a realistic size (B=16, T=512, d_model=128, 1 thread,
float32, default options).

    PYTHONPATH=src python benchmarks/compile.py                    # every layer, aot_eager
    PYTHONPATH=src python benchmarks/compile.py --layers gla,mingru --inductor
    PYTHONPATH=src python benchmarks/compile.py --json tests/compile_fullgraph.json

Columns: layer, mode, fullgraph ("ok", "break: <dynamo's reason>", "mismatch: <max
error>", "error: <exception>"), then with --inductor: compile s (first fwd+bwd call of the
compiled function less one eager call), eager ms, compiled ms, speed-up (eager / compiled).
--json writes {"fullgraph": [layers that traced whole and matched], "results": {...}} (after
each layer), the list tests/test_compile.py's slow tier runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "conformance"))


def tiny_layer(name, options=None):
    """The registered layer at its tiny config (conformance's), perturbed like conformance's."""
    from test_conformance import _perturb_

    import rnnzoo
    info = rnnzoo.registry.get_layer_info(name)
    options = {**info.tiny, **(options or {})}
    d_model = options.pop("d_model", 8)
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=d_model, **options)
    _perturb_(layer, 0)
    return layer


def _reason(exc) -> str:
    """One line: dynamo's first line and where in rnnzoo it stopped."""
    import re
    text = str(exc).strip().splitlines()
    head = text[0] if text else type(exc).__name__
    caused = [t.split("Caused by:", 1)[1].strip() for t in text if "Caused by:" in t]
    if caused:
        return f"{head[:90]} | {caused[0][:150]}"
    where = [m.group(1) + ":" + m.group(2) for t in text
             for m in [re.search(r"rnnzoo/([\w/]+\.py)\", line (\d+)", t)] if m]
    return f"{head[:150]}" + (f" at {where[-1]}" if where else "")


def fullgraph_check(name, options=None, backend="aot_eager"):
    """(status, detail): ("ok", mode), ("break", reason), ("mismatch", error), ("error", ...).
    Compiles layer(x, mode=auto) with fullgraph=True and compares y and every gradient."""
    from test_conformance import inputs
    torch._dynamo.reset()
    layer = tiny_layer(name, options)
    x = inputs(layer, dtype=torch.float32)
    mode = layer.auto_mode(x)

    def eager(xi):
        return layer(xi, mode=mode)[0]

    def run(f):
        xi = x.clone().requires_grad_()
        y = f(xi)
        params = [p for p in layer.parameters() if p.requires_grad]
        grads = torch.autograd.grad(y.square().sum(), [xi, *params], allow_unused=True)
        return [y, *grads]

    try:
        got = run(torch.compile(eager, fullgraph=True, backend=backend))
    except Exception as exc:  # noqa: BLE001 (the sweep records every failure)
        kind = "break" if isinstance(exc, (torch._dynamo.exc.Unsupported,
                                           torch._dynamo.exc.UserError)) else "error"
        return kind, _reason(exc)
    want = run(eager)
    err = 0.0
    for a, b in zip(got, want):
        if (a is None) != (b is None):
            return "mismatch", "a gradient is missing on one side"
        if a is not None:
            err = max(err, (a - b).abs().max().item() / (b.abs().max().item() + 1e-6))
    if not err < 1e-4:
        return "mismatch", f"relative error {err:.2g}"
    return "ok", mode


def _fwd_bwd(f, x, params):
    xi = x.clone().requires_grad_()
    y = f(xi)
    torch.autograd.grad(y.square().mean(), [xi, *params], allow_unused=True)


def _best(f, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def inductor_speed(name, B=16, T=512, d_model=128, repeat=3):
    """(compile s, eager s, compiled s) of forward+backward, default options, 1 thread."""
    import rnnzoo
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=d_model)
    x = torch.randn(B, T, d_model)
    mode = layer.auto_mode(x)
    params = [p for p in layer.parameters() if p.requires_grad]

    def eager(xi):
        return layer(xi, mode=mode)[0]

    compiled = torch.compile(eager, backend="inductor")
    _fwd_bwd(eager, x, params)  # warm
    eager_s = _best(lambda: _fwd_bwd(eager, x, params), repeat)
    t = time.perf_counter()
    _fwd_bwd(compiled, x, params)
    first = time.perf_counter() - t
    compiled_s = _best(lambda: _fwd_bwd(compiled, x, params), repeat)
    return first - eager_s, eager_s, compiled_s


def main(argv=None) -> int:
    import rnnzoo
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", help="comma-separated names (default: every registered layer)")
    p.add_argument("--inductor", action="store_true",
                   help="also time inductor's compile and eager vs compiled fwd+bwd")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = sorted(rnnzoo.registry.LAYERS)
    if args.layers:
        wanted = args.layers.split(",")
        unknown = [n for n in wanted if n not in names]
        if unknown:
            print(f"compile.py: unknown layer(s) {', '.join(unknown)}", file=sys.stderr)
            return 2
        names = wanted
    results = {}
    head = f"{'layer':22s} {'fullgraph (aot_eager)':60s}"
    if args.inductor:
        head += f" {'compile s':>9s} {'eager ms':>9s} {'comp. ms':>9s} {'speed-up':>8s}"
    print(head, flush=True)
    for name in names:
        t = time.perf_counter()
        status, detail = fullgraph_check(name)
        row = {"status": status, "detail": detail, "check_s": round(time.perf_counter() - t, 1)}
        line = f"{name:22s} {(status if status == 'ok' else status + ': ' + detail)[:60]:60s}"
        if args.inductor:
            try:
                c, e, k = inductor_speed(name, args.batch, args.length, args.d_model, args.repeat)
                row.update(compile_s=round(c, 1), eager_ms=round(1e3 * e, 1),
                           compiled_ms=round(1e3 * k, 1), speedup=round(e / k, 2))
                line += f" {c:9.1f} {1e3 * e:9.1f} {1e3 * k:9.1f} {e / k:8.2f}"
            except Exception as exc:  # noqa: BLE001
                row["inductor"] = _reason(exc)
                line += f" inductor failed: {_reason(exc)[:60]}"
        results[name] = row
        print(line, flush=True)
        if args.json:  # after every layer: a long sweep stopped early keeps what it has
            _write(args.json, results)
    ok = [n for n, r in results.items() if r["status"] == "ok"]
    print(f"\n{len(ok)}/{len(results)} trace whole and match eager", flush=True)
    return 0


def _write(path, results):
    ok = [n for n, r in results.items() if r["status"] == "ok"]
    Path(path).write_text(json.dumps({"fullgraph": ok, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
