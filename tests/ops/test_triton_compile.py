"""Every Triton kernel of rnnzoo.ops.triton compiles to an sm_90 cubin, without a GPU.

The interpreter (the other tests/ops/test_triton_*.py) accepts more than the compiler does:
shapes of tl.dot operands, dtype promotion in tl.where, loop-carried types. Triton's bundled
ptxas builds a cubin for any target with no GPU present, so each kernel is compiled here
with the configuration its launcher picks on a GPU (by head/hidden size) and with the
flags that change its code (decay kind, gates, initial state, precision, complex, float64).

The same file runs as a script under any triton (`PYTHONPATH=src python
tests/ops/test_triton_compile.py [module ...]` prints one line per kernel and "compiled N of M"), which is
how it is checked against the GPU machine's triton 3.6 (docs/gpu.md)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def configs():
    """The compiles: (module, kernel name, constexprs, num_warps, pointer dtype), with the
    tile sizes each launcher picks on a GPU (its `_config` / `_blocks`) for head size 64 and
    128 (chunk ops, chunk_size 64) and hidden size 512 (rnn)."""
    import importlib
    mod = lambda m: importlib.import_module(f"rnnzoo.ops.triton.{m}")  # noqa: E731
    tiles = lambda m, K: dict(zip(("C", "BK", "BV"), mod(m)._config(K, K, 64)))  # noqa: E731
    ATTN, ATTN128 = tiles("chunk_linear", 64), tiles("chunk_linear", 128)
    MLSTM, DELTA, RWKV7 = tiles("chunk_mlstm", 64), tiles("chunk_delta", 128), \
        tiles("chunk_rwkv7", 128)
    out = []
    scan = dict(REVERSE=False, SHIFT=False, CONJ=False, CPLX=False, A_CPLX=False, F64=False,
                HAS_C0=True, STORE_H=True, STORE_END=False, GRAD_A=False, HAS_FH0=False,
                CT=32, BN=32)
    out.append(("scan", "_scan_kernel", scan, 4, "fp32"))
    out.append(("scan", "_scan_kernel", {**scan, "REVERSE": True, "SHIFT": True, "CONJ": True,
                                         "CPLX": True, "A_CPLX": True, "GRAD_A": True,
                                         "HAS_FH0": True, "STORE_END": True}, 4, "fp32"))
    out.append(("scan", "_scan_kernel", {**scan, "F64": True, "CT": 16}, 2, "fp64"))
    sel = dict(NEG=True, F64=False, CT=8, BD=16, DSP=16)
    out.append(("selective_scan", "_fwd_kernel", {**sel, "HAS_H0": True, "SAVE_CK": True}, 4,
                "fp32"))
    out.append(("selective_scan", "_bwd_kernel", {**sel, "HAS_DHT": True}, 4, "fp32"))
    for decay in (0, 1, 2):
        cfg = ATTN if decay != 2 else ATTN128
        out.append(("chunk_linear", "_gla_fwd_kernel",
                    dict(DECAY=decay, BONUS=decay == 2, HAS_H0=True, STORE=True, PREC="ieee",
                         **cfg), 4, "fp32"))
        out.append(("chunk_linear", "_gla_bwd_kernel",
                    dict(DECAY=decay, BONUS=decay == 2, HAS_DHT=True, PREC="ieee", **cfg), 4,
                    "fp32"))
    half = ("bf16", {"q_ptr", "k_ptr", "v_ptr", "beta_ptr", "g_ptr", "o_ptr", "do_ptr"})
    for prec, dt in (("ieee", "fp32"), ("tf32", half)):
        out.append(("chunk_delta", "_delta_fwd_kernel",
                    dict(GATE=True, HAS_H0=True, STORE=True, PREC=prec, **DELTA), 4, dt))
        out.append(("chunk_delta", "_delta_bwd_kernel",
                    dict(GATE=True, HAS_DHT=True, PREC=prec, **DELTA), 4, dt))
    out.append(("chunk_mlstm", "_mlstm_fwd_kernel", dict(STORE=True, PREC="ieee", **MLSTM), 4,
                "fp32"))
    out.append(("chunk_mlstm", "_mlstm_bwd_kernel", dict(PREC="ieee", **MLSTM), 4, "fp32"))
    out.append(("chunk_rwkv7", "_rwkv7_fwd_kernel",
                dict(HAS_H0=True, STORE=True, PREC="ieee", **RWKV7), 4, "fp32"))
    out.append(("chunk_rwkv7", "_rwkv7_bwd_kernel",
                dict(HAS_DHT=True, PREC="ieee", **RWKV7), 4, "fp32"))
    r = mod("rnn")
    BH, BK, warps = r._blocks(512, True)
    rnn = dict(PREC=r.DOT_PRECISION, BB=r.BB, BH=BH, BK=BK)
    for cell, G in ((r.LSTM, 4), (r.GRU, 3), (r.SLSTM, 4)):
        out.append(("rnn", "_fwd_kernel", dict(CELL=cell, G=G, HAS_BHN=cell == r.GRU, **rnn),
                    warps, "fp32"))
        out.append(("rnn", "_bwd_kernel", dict(CELL=cell, G=G, **rnn), warps, "fp32"))
    return out


FLOATS = {"scale", "eps"}  # the kernels' float scalars; any other scalar is an int


def compile_one(module, kernel, constexprs, warps, ptr_dtype):
    """Compile one kernel for sm_90; the signature from the kernel's own parameters.
    ptr_dtype: every pointer's element type, or (type, names): those pointers of that type
    (bfloat16 inputs and outputs), the others float32 (states and gradient buffers)."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(f"rnnzoo.ops.triton.{module}"), kernel)
    sig = {}
    for p in fn.params:
        if p.is_constexpr:
            sig[p.name] = "constexpr"
        elif p.name.endswith("_ptr"):
            kind, names = (ptr_dtype, None) if isinstance(ptr_dtype, str) else ptr_dtype
            sig[p.name] = f"*{kind}" if names is None or p.name in names else "*fp32"
        else:
            sig[p.name] = "fp32" if p.name in FLOATS else "i32"
    missing = {p.name for p in fn.params if p.is_constexpr} - set(constexprs)
    assert not missing, f"{module}.{kernel}: no value for constexpr {sorted(missing)}"
    k = triton.compile(ASTSource(fn, sig, constexprs=dict(constexprs)),
                       target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps))
    assert k.asm["cubin"], f"{module}.{kernel}: empty cubin"


def main(modules=()) -> int:
    """Compile every entry (of `modules` only, when given); one line each, then a total."""
    import triton
    failed = []
    todo = [c for c in configs() if not modules or c[0] in modules]
    for entry in todo:
        name = f"{entry[0]}.{entry[1]} {entry[2]}"
        try:
            compile_one(*entry)
            print("ok  ", name, flush=True)
        except Exception as e:  # report every kernel, then fail
            failed.append(name)
            print("FAIL", name, "\n    ", str(e).strip().splitlines()[-1][:400], flush=True)
    print(f"triton {triton.__version__}: compiled {len(todo) - len(failed)} of {len(todo)}")
    return 1 if failed else 0


def test_every_kernel_has_a_compile_entry():
    """Every @triton.jit kernel of every module (the functions named *_kernel) is in
    `configs()`, each constexpr given a value, so the compile check misses none."""
    pytest.importorskip("triton")
    import importlib
    names = {(m, k) for m, k, *_ in configs()}
    for m in ("scan", "selective_scan", "chunk_linear", "chunk_delta", "chunk_mlstm",
              "chunk_rwkv7", "rnn"):
        mod = importlib.import_module(f"rnnzoo.ops.triton.{m}")
        kernels = {n: v for n, v in vars(mod).items() if n.endswith("_kernel")
                   and type(v).__name__ in ("JITFunction", "InterpretedFunction")}
        assert kernels and set(kernels) <= {k for mm, k in names if mm == m}, (m, kernels)
    for m, k, constexprs, *_ in configs():
        fn = getattr(importlib.import_module(f"rnnzoo.ops.triton.{m}"), k)
        fn = getattr(fn, "fn", fn)  # the interpreter's wrapper holds the function
        import inspect
        wanted = {n for n, p in inspect.signature(fn).parameters.items()
                  if "constexpr" in str(p.annotation)}
        assert wanted == set(constexprs), (m, k, wanted ^ set(constexprs))


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90():
    """Each entry of `configs()` compiles to a cubin for sm_90. Slow:
    the chunk kernels take from 10 s to minutes each to compile on a loaded CPU (the RNN
    kernels alone stay in CI's fast set: tests/ops/test_triton_rnn.py)."""
    pytest.importorskip("triton.backends.nvidia")
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    p = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True,
                       timeout=3600)
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
