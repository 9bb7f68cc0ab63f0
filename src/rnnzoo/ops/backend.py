"""Which implementation an op runs: the PyTorch reference or a Triton kernel.

    use_triton(*tensors) -> bool   True when every tensor is on CUDA, triton imports,
                                   and the backend is not forced to "torch".

Every op with a Triton kernel asks it first (ops.scan.linear_scan, ops.chunk.linear's
gated_linear_attention and mlstm, ops.chunk.delta's delta_rule and rwkv7,
layers.mamba.selective_scan, the `fused` mode of the lstm, gru and slstm cells); the
kernels refuse float64, so those ops also keep float64 on the PyTorch path.

    use_triton(*tensors, auto=False)   only inside force("triton"): for kernels that are
                                   not the default on CUDA (the LSTM, GRU and sLSTM kernels
                                   of ops.triton.rnn, slower than cuDNN and than sLSTM's
                                   loop on an H200: docs/gpu.md)

    use_native(*tensors) -> bool   True when every tensor is a CPU float32 or float64 tensor
                                   (one dtype), for the C kernels of `ops.native`
                                   (layers.mamba.selective_scan); `RNNZOO_NATIVE=0`, force()
                                   and RNNZOO_BACKEND=torch keep the PyTorch path, and so
                                   does torch.compile's tracing.

    transforming() -> bool         True inside torch.func's transforms (grad, vjp, jvp,
                                   vmap): then no kernel runs (use_native and use_triton are
                                   False, host_readable too) and every node its plain form
                                   (ops.first_order.Transformable; docs/design.md, torch.func)

`RNNZOO_BACKEND=torch` in the environment forces the PyTorch path everywhere (read at
each call). `force("torch")` / `force("triton")` overrides both, inside a `with` block:
force("triton") runs the Triton path whatever the device, which lets the tests run the
kernels on CPU tensors under `TRITON_INTERPRET=1`. triton is imported only when a
decision needs it, never at `import rnnzoo`.

The same module decides how a classic cell's step loop runs (rnnzoo.cells.steps):

    step_runner(name, *tensors) -> "loop" | "compiled" | "graph"

"loop" is the reference Python loop; "compiled" a torch.compile'd step; "graph" the whole
loop captured as CUDA graphs (forward and backward) and replayed. `force_steps(how)` (a
`with` block) or `RNNZOO_STEPS=<how>` chooses; otherwise CUDA tensors get `AUTO_STEPS[name]`
for the layers a GPU benchmark (benchmarks/gpu.py) measured faster and correct, and every
other case the loop.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os

import torch

_BACKENDS = ("torch", "triton")
# True inside torch.func's transforms (grad, vjp, jvp, vmap): the tensors are wrapped, no C or
# Triton kernel can read them, and the package runs its plain PyTorch (docs/design.md, torch.func)
transforming = torch._C._are_functorch_transforms_active
_forced: list[str] = []  # a stack: the innermost force() wins
_triton_ok: bool | None = None


def triton_available() -> bool:
    """Whether triton can be imported (found once, then cached)."""
    global _triton_ok
    if _triton_ok is None:
        if importlib.util.find_spec("triton") is None:
            _triton_ok = False
        else:
            try:
                import triton  # noqa: F401
                _triton_ok = True
            except Exception:  # a broken install counts as absent
                _triton_ok = False
    return _triton_ok


@contextlib.contextmanager
def force(backend: str):
    """Run the ops in this block with `backend` ("torch" or "triton"), whatever the device."""
    if backend not in _BACKENDS:
        raise ValueError(f"force: backend must be one of {_BACKENDS}, got {backend!r}")
    _forced.append(backend)
    try:
        yield
    finally:
        _forced.pop()


def use_triton(*tensors: torch.Tensor, auto: bool = True) -> bool:
    """True when the Triton kernels should run on these tensors (None entries are skipped;
    anything not on CUDA, a non-tensor included, keeps the PyTorch path, whose checks then
    name it). auto=False: only when forced to "triton"."""
    if transforming():  # wrapped tensors: no kernel reads them
        return False
    if _forced:
        return _forced[-1] == "triton" and triton_available()
    if not auto:
        return False
    env = os.environ.get("RNNZOO_BACKEND", "").strip().lower()
    if env == "torch":
        return False
    ts = [t for t in tensors if t is not None]
    return bool(ts) and all(getattr(t, "is_cuda", False) for t in ts) and triton_available()


def use_native(*tensors: torch.Tensor) -> bool:
    """True when the native CPU kernels (ops.native) should run on these tensors (None
    entries skipped): all on the CPU, all float32 or all float64, not under force() or
    RNNZOO_BACKEND=torch or RNNZOO_NATIVE=0 (read at each call), nor inside torch.compile.
    The op still falls back when its kernel cannot be built (ops.native.load gives None)."""
    if _forced or os.environ.get("RNNZOO_NATIVE", "").strip() == "0":
        return False
    if os.environ.get("RNNZOO_BACKEND", "").strip().lower() == "torch":
        return False
    ts = [t for t in tensors if t is not None]
    if not ts or not all(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in ts):
        return False
    if ts[0].dtype not in (torch.float32, torch.float64) or any(t.dtype != ts[0].dtype for t in ts):
        return False
    return not (torch.compiler.is_compiling() or transforming())


def host_readable(t: torch.Tensor) -> bool:
    """Whether reading t's values on the host is free: on the CPU (no device sync) and in
    eager mode (no graph break under torch.compile). Ops take shortcuts that depend on values
    only there; elsewhere they run their general form, which gives the same result."""
    return t.device.type == "cpu" and not (torch.compiler.is_compiling()
                                           or transforming())


# -- how a classic cell's step loop runs (rnnzoo.cells.steps) --------------------------------
STEPS = ("loop", "compiled", "graph")
_forced_steps: list[str] = []
# layer name -> runner chosen for CUDA inputs, only from a GPU measurement (benchmarks/gpu.py,
# section "classic cells"): none has been measured on a GPU yet, so every layer keeps the loop.
AUTO_STEPS: dict[str, str] = {}


def _check_steps(how, where: str) -> str:
    if how not in STEPS:
        raise ValueError(f"{where}: step runner must be one of {STEPS}, got {how!r}")
    return how


@contextlib.contextmanager
def force_steps(how: str):
    """Run the classic cells' step loops in this block with `how` ("loop", "compiled",
    "graph"), whatever the device ("graph" then refuses non-CUDA tensors)."""
    _forced_steps.append(_check_steps(how, "force_steps"))
    try:
        yield
    finally:
        _forced_steps.pop()


def step_runner(name: str, *tensors: torch.Tensor) -> str:
    """How the step loop of the classic layer `name` runs on these tensors: the innermost
    force_steps(), else RNNZOO_STEPS, else AUTO_STEPS[name] when every tensor is on CUDA,
    else "loop"."""
    if transforming():  # torch.func: the plain loop
        return "loop"
    if _forced_steps:
        return _forced_steps[-1]
    env = os.environ.get("RNNZOO_STEPS", "").strip().lower()
    if env:
        return _check_steps(env, "RNNZOO_STEPS")
    ts = [t for t in tensors if t is not None]
    if ts and all(getattr(t, "is_cuda", False) for t in ts):
        return AUTO_STEPS.get(name, "loop")
    return "loop"
