"""Load an rnnzoo.ops.triton kernel module with its kernels under Triton's interpreter.

triton reads TRITON_INTERPRET when `@triton.jit` decorates a function (at the kernel
module's import), not when triton itself is imported nor at launch. So the variable is
set before the import, and a module that was already imported with compiled (GPU)
kernels, by another test in the same process, is reloaded.
"""

import importlib
import os


def interpreted(name: str):
    os.environ["TRITON_INTERPRET"] = "1"
    scan = importlib.import_module("rnnzoo.ops.triton.scan")
    if type(scan._scan_kernel).__name__ != "InterpretedFunction":
        scan = importlib.reload(scan)
    mod = importlib.import_module(name)
    kernels = [v for v in vars(mod).values() if type(v).__name__ in ("JITFunction",
                                                                      "InterpretedFunction")]
    if any(type(k).__name__ != "InterpretedFunction" for k in kernels):
        mod = importlib.reload(mod)
    return mod
