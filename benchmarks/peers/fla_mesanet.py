"""flash-linear-attention's (fla-core 0.6.0) naive MesaNet (its chunkwise CG reference) as the
speed baseline of rnnzoo's `mesanet` (and its oracle in tests/layers/test_mesanet.py):
rnnzoo's own block with the readout done by fla.ops.mesa_net.naive.naive_mesa_net_CG on the
same tensors. fla's reference needs T to be a multiple of its chunk size (64 here).
"""

from __future__ import annotations

from peers.fla_delta import naive
from rnnzoo.bench import register_baseline


def mesanet_with_fla(layer, x, chunk_size=64):
    """rnnzoo's MesaNet block on x, readout by fla's naive chunkwise CG MesaNet."""
    Hkk, Hkv, conv = layer.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    q, k, v, g, beta, lamb, _ = layer.op_inputs(x, conv)
    o, _, _ = naive("mesa_net", "naive_mesa_net_CG")(
        q, k, v, g, lamb, beta, chunk_size=min(chunk_size, x.shape[1]),
        max_CG_iteration=layer.max_cg_steps, h_kk_init=Hkk, h_kv_init=Hkv)
    return layer.op_output(o.to(x.dtype), x)


@register_baseline("mesanet", "fla naive chunk CG")
def _mesanet(layer, x):
    naive("mesa_net", "naive_mesa_net_CG")  # ImportError now, so the bench table reports "skipped"
    return lambda: mesanet_with_fla(layer, x)
