"""mamba_ssm 2.3.2's Mamba-3 (`mamba_ssm/modules/mamba3.py`) as the oracle of rnnzoo's
`mamba3`, and its step references as the CPU speed baseline.

On a CPU machine three things stand in the way, and each is worked around here without
changing the peer's maths:

- `import mamba_ssm` runs the package `__init__`, which imports the CUDA extension. The
  package is registered as a bare namespace over its installed folder instead, so its
  submodules import without the `__init__` (only when the real import fails).
- The SISO Triton kernels (ops/triton/mamba3) call PTX inline assembly for cos, sin and tanh
  (`cos_approx`, `sin_approx`, `tanh_approx` in mamba3/utils.py), which Triton's interpreter
  cannot run, and autotune over configs, which needs a GPU benchmarker. Under
  TRITON_INTERPRET=1 the three helpers are replaced by exact Triton ones and each autotuner
  keeps its first config. mamba3_siso_combined casts its inputs to bfloat16; the oracle
  calls its autograd Function directly, in the inputs' dtype (float32).
- The gated RMSNorm (B_norm, C_norm, norm) is a Triton kernel launched under
  torch.cuda.device; off CUDA it runs the package's own `rms_norm_ref` instead.
- MIMO runs on TileLang kernels and the decoding step on a CuTe kernel, both CUDA-only. The
  package ships pure-PyTorch references for the step (`selective_state_update_fused_ref_v2`
  in ops/cute/mamba3/mamba3_step_fn.py, read from the file since its module imports
  cutlass, and `apply_rotary_qk_inference_reference`); `peer_step` is Mamba3.step with its
  two kernels replaced by them, and a loop of it is the MIMO oracle.

Install: see .ci/install-peers (mamba-ssm 2.3.2.post1 without its CUDA build).
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types
from pathlib import Path

from rnnzoo.bench import register_baseline


def _package_dir() -> Path:
    spec = importlib.util.find_spec("mamba_ssm")  # locates the package, does not run it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("mamba_ssm is not installed (see .ci/install-peers)")
    return Path(next(iter(spec.submodule_search_locations)))


@functools.lru_cache(maxsize=1)
def _bare_package():
    """mamba_ssm importable without its CUDA extension (a namespace over its folder)."""
    path = _package_dir()
    if "mamba_ssm" not in sys.modules:
        try:
            importlib.import_module("mamba_ssm")
        except ImportError:
            package = types.ModuleType("mamba_ssm")
            package.__path__ = [str(path)]
            package.__spec__ = importlib.machinery.ModuleSpec("mamba_ssm", None, is_package=True)
            package.__spec__.submodule_search_locations = [str(path)]
            sys.modules["mamba_ssm"] = package
    return path


@functools.lru_cache(maxsize=1)
def step_references():
    """(apply_rotary_qk_inference_reference, selective_state_update_fused_ref_v2)."""
    path = _bare_package() / "ops" / "cute" / "mamba3" / "mamba3_step_fn.py"
    import torch

    tree = ast.parse(path.read_text(), str(path))
    found = [n for n in tree.body if isinstance(n, ast.FunctionDef)
             and n.name == "selective_state_update_fused_ref_v2"]
    if not found:
        raise ImportError(f"no selective_state_update_fused_ref_v2 in {path}")
    namespace = {"torch": torch}
    exec(compile(ast.Module(body=found, type_ignores=[]), str(path), "exec"), namespace)
    rotary = importlib.import_module("mamba_ssm.ops.triton.mamba3.mamba3_mimo_rotary_step")
    return rotary.apply_rotary_qk_inference_reference, namespace["selective_state_update_fused_ref_v2"]


tl = None  # triton.language, imported by peer_class


def _exact_cos(x):
    return tl.cos(x)


def _exact_sin(x):
    return tl.sin(x)


def _exact_tanh(x):
    return 2 * tl.sigmoid(2 * x) - 1


@functools.lru_cache(maxsize=1)
def peer_class():
    """mamba_ssm.modules.mamba3.Mamba3, with its forward's SISO kernel call made runnable on
    CPU under TRITON_INTERPRET=1 (see the module docstring). Its MIMO forward stays CUDA-only:
    for MIMO use `peer_step`."""
    _bare_package()
    import triton

    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    fwd = importlib.import_module("mamba_ssm.ops.triton.mamba3.mamba3_siso_fwd")
    angle = importlib.import_module("mamba_ssm.ops.triton.mamba3.angle_dt")
    combined = importlib.import_module("mamba_ssm.ops.triton.mamba3.mamba3_siso_combined")
    module = importlib.import_module("mamba_ssm.modules.mamba3")
    if interpret:
        global tl
        import triton.language as tl  # the exact helpers below read it as a global

        _cos, _sin, _tanh = (triton.jit(f) for f in (_exact_cos, _exact_sin, _exact_tanh))
        for mod in (fwd, angle):
            for name, exact in (("cos_approx", _cos), ("sin_approx", _sin),
                                ("tanh_approx", _tanh)):
                if hasattr(mod, name):
                    setattr(mod, name, exact)
            for value in vars(mod).values():
                if type(value).__name__ == "Autotuner":
                    value.configs = value.configs[:1]

    def siso(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D=None, Z=None,
             chunk_size=64, Input_States=None, return_final_states=False, cu_seqlens=None):
        """mamba3_siso_combined without its cast to bfloat16."""
        states = Input_States if Input_States is not None else (None,) * 4
        return combined._Mamba3Function.apply(
            Q, K, V, ADT, DT, Trap.to(Q.dtype), Q_bias, K_bias, Angles.to(Q.dtype), D,
            None if Z is None else Z.to(Q.dtype), *states, cu_seqlens, chunk_size,
            return_final_states)

    module.mamba3_siso_combined = siso
    norm = importlib.import_module("mamba_ssm.ops.triton.layernorm_gated")
    if not getattr(norm.rmsnorm_fn, "cpu_reference", False):
        kernel = norm.rmsnorm_fn

        def rmsnorm_fn(x, weight, bias, z=None, eps=1e-6, group_size=None,
                       norm_before_gate=True):
            if x.is_cuda:
                return kernel(x, weight, bias, z=z, eps=eps, group_size=group_size,
                              norm_before_gate=norm_before_gate)
            return norm.rms_norm_ref(x, weight, bias, z=z, eps=eps, group_size=group_size,
                                     norm_before_gate=norm_before_gate)
        rmsnorm_fn.cpu_reference = True
        norm.rmsnorm_fn = rmsnorm_fn
    if module.mamba3_mimo_combined is None:  # TileLang absent: MIMO builds, runs via steps
        def _no_mimo(*args, **kwargs):
            raise ImportError("mamba_ssm's MIMO forward needs TileLang and CUDA; use peer_step")
        module.mamba3_mimo_combined = _no_mimo
    return module.Mamba3


def peer_of(layer):
    """A mamba_ssm Mamba3 with rnnzoo `layer`'s configuration and weights (float32)."""
    cls = peer_class()
    peer = cls(layer.d_model, d_state=layer.d_state, expand=layer.d_inner // layer.d_model,
               headdim=layer.head_dim, ngroups=layer.n_groups,
               rope_fraction=0.5 if 4 * layer.n_angles <= layer.d_state else 1.0,
               A_floor=layer.A_floor, is_outproj_norm=layer.is_outproj_norm,
               is_mimo=layer.is_mimo, mimo_rank=layer.mimo_rank, chunk_size=layer.chunk_size)
    weights = {k: v for k, v in layer.state_dict().items()}
    if layer.norm is not None:
        weights["norm.weight"] = weights["norm.weight"].flatten()  # HeadNorm's (H, P)
    peer.load_state_dict(weights)
    return peer.float()


def peer_init_state(peer, batch_size, device=None):
    """mamba_ssm's decoding state (angle, ssm (B, H, P, N), k (B, R, H, N), v (B, H, P))."""
    import torch
    return peer.allocate_inference_cache(batch_size, 0, device=device, dtype=torch.float32)


def peer_step(peer, u, angle_state, ssm_state, k_state, v_state):
    """Mamba3.step (u (B, d_model)) with its rotary and CuTe step kernels replaced by the
    package's references -> (out (B, d_model), next angle, ssm, k, v state)."""
    import einops
    import torch

    rotary_ref, step_ref = step_references()
    R = peer.mimo_rank
    z, x, B, C, dd_dt, dd_A, trap, angles = torch.split(
        peer.in_proj(u), [peer.d_inner, peer.d_inner,
                          peer.d_state * peer.num_bc_heads * R,
                          peer.d_state * peer.num_bc_heads * R,
                          peer.nheads, peer.nheads, peer.nheads, peer.num_rope_angles], -1)
    DT, B, C, x, z, trap, A, angles = peer._preprocess(dd_A, dd_dt, B, C, x, z, trap, angles)
    C, B, angle_next = rotary_ref(
        C, B, angle_state, angles, DT, bias_q=einops.rearrange(peer.C_bias, "h r n -> r h n"),
        bias_k=einops.rearrange(peer.B_bias, "h r n -> r h n"), rotate_pairwise=not peer.is_mimo)
    ones = torch.ones(R, peer.nheads, peer.headdim, dtype=x.dtype, device=x.device)
    if peer.is_mimo:
        xproj, zproj, oproj = (einops.rearrange(w, "h r p -> r h p")
                               for w in (peer.mimo_x, peer.mimo_z, peer.mimo_o))
    else:
        xproj, zproj, oproj = ones, ones, ones
    # the reference's state is (B, H, P, N), as the kernel's
    if peer.is_outproj_norm:
        y, ssm_next = step_ref(ssm_state, A, B, C, xproj, x, None, None, DT, k_state, v_state,
                               trap, peer.D, None)
        y = peer._postprocess(y, oproj, z, zproj, peer.headdim)
    else:
        y, ssm_next = step_ref(ssm_state, A, B, C, xproj, x, zproj, z, DT, k_state, v_state,
                               trap, peer.D, oproj)
    out = peer.out_proj(einops.rearrange(y, "b h p -> b (h p)").to(u.dtype))
    return out, angle_next, ssm_next, B, x


def peer_decode(peer, u):
    """u (B, T, d_model) through T calls of `peer_step` from a zero state -> (y, states)."""
    import torch

    state = peer_init_state(peer, u.shape[0], u.device)
    ys = []
    for t in range(u.shape[1]):
        y, *state = peer_step(peer, u[:, t], *state)
        ys.append(y)
    return torch.stack(ys, 1), tuple(state)


@register_baseline("mamba3", "mamba_ssm Mamba3.step references (loop)", max_length=2048,
                   why="a Python loop of the package's per-step PyTorch references (its chunk "
                       "kernels are CUDA-only or run only under Triton's interpreter)")
def _mamba3_step_baseline(layer, x):
    peer = peer_of(layer)  # ImportError here marks the baseline as skipped
    return lambda: peer_decode(peer, x.float())[0]
