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


# -- kernels whose helpers need the flag before triton's own import -----------------------
# The chunk kernels call triton's tl.sum / tl.cumsum, which triton decorates when it is
# imported, so they interpret only in a process started with TRITON_INTERPRET=1 (as
# `make test` starts pytest). Elsewhere their tests run on CUDA, or once in a child process.

import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
CUDA = torch.cuda.is_available() and not INTERPRETED
DEVICE = "cuda" if CUDA else "cpu"
needs_kernels = pytest.mark.skipif(not (INTERPRETED or CUDA),
                                   reason="run by test_interpreted_in_a_child_process")


def rerun_in_child(path: str):
    """A test that runs the test file `path` in a fresh process with TRITON_INTERPRET=1; a
    file defines it only where its kernels can run neither here nor on CUDA."""
    def test_interpreted_in_a_child_process():
        env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p",
                              "no:cacheprovider", "-p", "no:xdist", path], env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    return test_interpreted_in_a_child_process
