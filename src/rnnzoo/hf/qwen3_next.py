"""Qwen3-Next checkpoints (transformers' `qwen3_next`) -> rnnzoo blocks.

Qwen3-Next interleaves Gated DeltaNet (Yang et al. 2025, arXiv:2412.06464) with gated
softmax attention (`layer_types`: three linear_attention then one full_attention by
default). Every block is x + mixer(norm(x)) then h + MLP(norm(h)), the MLP a sparse MoE
(top-k softmax router, SwiGLU experts, a sigmoid-gated shared expert) on the layers
`decoder_sparse_step` and `mlp_only_layers` select, a SwiGLU MLP elsewhere. Norms are
zero-centred ((1 + w), as Gemma's), q_norm and k_norm too.

The linear-attention mixer is rnnzoo's `gated_deltanet` (q, k L2-normalised, conv + SiLU,
beta = sigmoid, Mamba-2 decay, RMSNorm(o) * silu(z)); the checkpoint packs q, k, v, z per
key head ([q_h, k_h, v_h, z_h] for each of the linear_num_key_heads) and b, a likewise:
`rename` unpacks them. linear_num_value_heads may be a multiple of linear_num_key_heads
(grouped value heads: `gated_deltanet`'s num_key_heads). The attention mixer is rnnzoo's `attention` with num_kv_heads,
rotary on partial_rotary_factor of each head, qk_norm_eps and output_gate.
"""

from __future__ import annotations

import torch

from rnnzoo.hf.load import need
from rnnzoo.hf.model import GatedMLP, PretrainedModel, SparseMoE, block, gemma_norm, split_layers


def layer_types(c: dict) -> list[str]:
    n = c["num_hidden_layers"]
    return c.get("layer_types") or ["full_attention" if (i + 1) % c.get(
        "full_attention_interval", 4) == 0 else "linear_attention" for i in range(n)]


def is_moe(c: dict, i: int) -> bool:
    return (i not in (c.get("mlp_only_layers") or []) and c.get("num_experts", 0) > 0
            and (i + 1) % c.get("decoder_sparse_step", 1) == 0)


def mlp(c: dict, i: int):
    d = c["hidden_size"]
    if is_moe(c, i):
        return SparseMoE(d, c["moe_intermediate_size"], c["num_experts"], c["num_experts_per_tok"],
                         c.get("norm_topk_prob", True), c.get("shared_expert_intermediate_size", 0))
    return GatedMLP(d, c["intermediate_size"])


def build(c: dict, max_len: int = 4096) -> PretrainedModel:
    t, d = c["model_type"], c["hidden_size"]
    need(c.get("hidden_act", "silu") == "silu", t, f"hidden_act={c.get('hidden_act')!r}")
    need(not c.get("attention_bias", False), t, "attention_bias=True")
    hk, hv = c["linear_num_key_heads"], c["linear_num_value_heads"]
    need(hv % hk == 0, t, f"linear_num_value_heads={hv} not a multiple of linear_num_key_heads={hk}")
    K, V = c["linear_key_head_dim"], c["linear_value_head_dim"]
    need(V % K == 0, t, f"linear_value_head_dim={V} not a multiple of linear_key_head_dim={K}")
    rope = c.get("rope_parameters") or {}
    need(rope.get("rope_type", "default") == "default", t, f"rope_type={rope.get('rope_type')!r}")
    eps = c.get("rms_norm_eps", 1e-6)
    gdn = dict(num_heads=hv, num_key_heads=hk, head_dim=K, expand_v=V // K, d_conv=c.get("linear_conv_kernel_dim", 4),
               norm_eps=eps, sqrt_eps=True)
    heads = c["num_attention_heads"]
    head_dim = c.get("head_dim") or d // heads
    att = dict(num_heads=heads, head_dim=head_dim, num_kv_heads=c.get("num_key_value_heads") or heads,
               rotary_dim=int(head_dim * rope.get("partial_rotary_factor", 0.25)),
               rope_base=rope.get("rope_theta", 10000.0), qk_norm_eps=eps, output_gate=True,
               max_len=max_len)
    layers = ["gated_deltanet" if k == "linear_attention" else "attention" for k in layer_types(c)]
    blocks = [block(name, d, gdn if name == "gated_deltanet" else att, layer_idx=i,
                    num_layers=len(layers), norm_eps=eps, mlp=mlp(c, i))
              for i, name in enumerate(layers)]
    return PretrainedModel(vocab_size=c["vocab_size"], d_model=d, layers=layers, blocks=blocks,
                           norm_eps=eps, tie=c.get("tie_word_embeddings", False), model_type=t,
                           source_config=c)


def unpack_gdn(w: dict, c: dict, p: str) -> dict:
    """The packed per-key-head projections of Qwen3-Next's GatedDeltaNet -> rnnzoo's."""
    H, K, V = c["linear_num_key_heads"], c["linear_key_head_dim"], c["linear_value_head_dim"]
    g = c["linear_num_value_heads"] // H  # value heads per key head, packed after it
    qkvz = w.pop("linear_attn.in_proj_qkvz.weight").view(H, 2 * K + 2 * g * V, -1)
    q, k, v, z = qkvz.split([K, K, g * V, g * V], 1)
    b, a = (t.flatten(0, 1) for t in w.pop("linear_attn.in_proj_ba.weight").view(H, 2, g, -1)
            .unbind(1))
    return {p + "qkv_proj.weight": torch.cat([q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1)]),
            p + "g_proj.weight": z.flatten(0, 1), p + "b_proj.weight": b, p + "a_proj.weight": a,
            p + "b_proj.bias": b.new_zeros(H * g),  # the checkpoint's beta has no bias
            p + "conv.weight": w.pop("linear_attn.conv1d.weight").squeeze(1),
            p + "A_log": w.pop("linear_attn.A_log"), p + "dt_bias": w.pop("linear_attn.dt_bias"),
            p + "norm_weight": w.pop("linear_attn.norm.weight"),
            p + "o_proj.weight": w.pop("linear_attn.out_proj.weight")}


def unpack_attention(w: dict, c: dict, p: str) -> dict:
    heads = c["num_attention_heads"]
    qg = w.pop("self_attn.q_proj.weight").view(heads, 2, -1, c["hidden_size"])
    return {p + "qkv.weight": torch.cat([qg[:, 0].flatten(0, 1), w.pop("self_attn.k_proj.weight"),
                                         w.pop("self_attn.v_proj.weight")]),
            p + "g_proj.weight": qg[:, 1].flatten(0, 1),
            p + "q_norm": gemma_norm(w.pop("self_attn.q_norm.weight")),
            p + "k_norm": gemma_norm(w.pop("self_attn.k_norm.weight")),
            p + "out_proj.weight": w.pop("self_attn.o_proj.weight")}


def unpack_mlp(w: dict, c: dict, p: str) -> dict:
    if "mlp.gate.weight" in w:
        out = {p + "router.weight": w.pop("mlp.gate.weight")}
        if "mlp.experts.gate_up_proj" in w:  # transformers' fused layout
            out[p + "gate_up"] = w.pop("mlp.experts.gate_up_proj")
            out[p + "down"] = w.pop("mlp.experts.down_proj")
        else:  # the released layout: one set of projections per expert
            E = c["num_experts"]
            out[p + "gate_up"] = torch.stack([torch.cat([
                w.pop(f"mlp.experts.{e}.gate_proj.weight"),
                w.pop(f"mlp.experts.{e}.up_proj.weight")]) for e in range(E)])
            out[p + "down"] = torch.stack([w.pop(f"mlp.experts.{e}.down_proj.weight")
                                           for e in range(E)])
        if "mlp.shared_expert_gate.weight" in w:
            out[p + "shared_gate.weight"] = w.pop("mlp.shared_expert_gate.weight")
            for x in ("gate", "up", "down"):
                out[p + f"shared.{x}.weight"] = w.pop(f"mlp.shared_expert.{x}_proj.weight")
        return out
    return {p + f"{x}.weight": w.pop(f"mlp.{x}_proj.weight") for x in ("gate", "up", "down")}


def rename(tensors: dict, c: dict) -> dict:
    out, layers = split_layers(tensors, "model.norm.weight")
    for i, w in layers.items():
        p = f"blocks.{i}."
        out[p + "norm.weight"] = gemma_norm(w.pop("input_layernorm.weight"))
        out[p + "mlp_norm.weight"] = gemma_norm(w.pop("post_attention_layernorm.weight"))
        mix = unpack_gdn if "linear_attn.A_log" in w else unpack_attention
        out.update(mix(w, c, p + "mixer."))
        out.update(unpack_mlp(w, c, p + "mlp."))
        out.update({f"model.layers.{i}.{k}": v for k, v in w.items()})  # leftovers: named
    if c.get("tie_word_embeddings", False):
        out["head.weight"] = out["embed.weight"]
    return out
