"""mamba_ssm's `selective_scan_ref` (the PyTorch reference of the selective scan) as an
oracle for rnnzoo's `mamba` and as its CPU speed baseline.

mamba_ssm's package `__init__` imports its CUDA extension and Triton kernels, so
on a CPU machine `import mamba_ssm` fails. `load_selective_scan_ref` finds the
installed file mamba_ssm/ops/selective_scan_interface.py without importing the
package and executes only the `selective_scan_ref` function from it (its only
dependencies are torch and einops). Install: see .ci/install-peers.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path

from rnnzoo.bench import register_baseline


@functools.lru_cache(maxsize=1)
def load_selective_scan_ref():
    """mamba_ssm.ops.selective_scan_interface.selective_scan_ref, loaded without the package."""
    spec = importlib.util.find_spec("mamba_ssm")  # locates the package, does not run it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("mamba_ssm is not installed (see .ci/install-peers)")
    path = Path(next(iter(spec.submodule_search_locations))) / "ops" / "selective_scan_interface.py"
    import einops
    import torch
    import torch.nn.functional as F

    tree = ast.parse(path.read_text(), str(path))
    found = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "selective_scan_ref"]
    if not found:
        raise ImportError(f"no selective_scan_ref in {path}")
    namespace = {"torch": torch, "F": F, "rearrange": einops.rearrange, "repeat": einops.repeat}
    exec(compile(ast.Module(body=found, type_ignores=[]), str(path), "exec"), namespace)
    return namespace["selective_scan_ref"]


def mamba_forward_with_ref(layer, x):
    """rnnzoo's Mamba block on x with its selective scan done by mamba_ssm's reference."""
    ref = load_selective_scan_ref()
    conv_state, _ = layer.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    u, delta, A, B, C, z, _ = layer.ssm_inputs(x, conv_state)
    y = ref(u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2),
            layer.D.float(), z.transpose(1, 2))
    return layer.out_proj(y.transpose(1, 2).to(x.dtype))


@register_baseline("mamba", "mamba_ssm.selective_scan_ref", max_length=2048,
                   why="its loop indexes the (B, d_inner, T, d_state) tensors exp(delta A) "
                       "and delta B u at each step, and each index's backward zero-fills a "
                       "whole one, so its backward grows as T^2 (hours at T=8192 on a CPU); "
                       "benchmarks/mamba_ref.py measures its forward and memory there")
def _selective_scan_ref_baseline(layer, x):
    load_selective_scan_ref()  # ImportError here marks the baseline as skipped
    return lambda: mamba_forward_with_ref(layer, x)
