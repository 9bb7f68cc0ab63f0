"""flash-linear-attention's (fla-core 0.6.0) LightNet ops as the speed baseline of rnnzoo's
`lightnet` (and its oracle in tests/layers/test_lightnet.py): rnnzoo's own block (projections,
gate, norm) with the additive gate and the recurrence done by fla.ops.lightnet on the same
tensors. fla has no pure-PyTorch LightNet: its ops are Triton kernels, which need a GPU, or
TRITON_INTERPRET=1 on the CPU (tiny shapes only).
"""

from __future__ import annotations

import importlib
import math
import os

from rnnzoo.bench import register_baseline


def lightnet_op(name: str = "fused_recurrent_lightnet"):
    """fla.ops.lightnet.<name>; ImportError when fla-core is not installed."""
    try:
        return getattr(importlib.import_module("fla.ops.lightnet"), name)
    except ImportError as e:
        raise ImportError(f"fla-core is not installed (see .ci/install-peers): {e}") from e


def lightnet_with_fla(layer, x, state=None, name: str = "fused_recurrent_lightnet"):
    """rnnzoo's LightNet block on x from `state` (S, z) (None: fresh), recurrence by fla's
    LightNet op -> (y, (S, z)). fla's log-normaliser state is (B, 1, H, K)."""
    q, k, v = layer.op_inputs(x)
    S, z = (None, None) if state is None else (state[0].float(), state[1].float()[:, None])
    o, (S, z) = lightnet_op(name)(q, k, v, scale=1 / math.sqrt(layer.key_dim),
                                  initial_state=(S, z), output_final_state=True)
    return layer.op_output(o.to(x.dtype), x), (S, z[:, 0])


@register_baseline("lightnet", "fla chunk (Triton)")
def _lightnet(layer, x):
    lightnet_op("chunk_lightnet")  # ImportError now: reported "skipped"
    if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ImportError("fla's LightNet is Triton only: it needs a CUDA device")
    return lambda: lightnet_with_fla(layer, x, name="chunk_lightnet")
