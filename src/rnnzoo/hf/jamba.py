"""Jamba checkpoints (transformers' `jamba`) -> rnnzoo blocks (hf.hybrid's assembly).

Jamba (Lieber et al. 2024, arXiv:2403.19887): Mamba-1 layers with attention every
attn_layer_period (at attn_layer_offset), each layer x + mixer(RMSNorm(x)) then h +
FFN(RMSNorm(h)), the FFN a MoE every expert_layer_period (at expert_layer_offset) and a
SwiGLU elsewhere. Mixers: rnnzoo `mamba` with weighted RMSNorms on dt, B, C
(`bcdt_rms_eps`, `bcdt_rms_weight`) and `attention` without positions. The MoE: softmax
router, top-k weights not renormalised, SwiGLU experts, no shared expert.
"""

from __future__ import annotations

import math

import torch

from rnnzoo.hf import hybrid
from rnnzoo.hf.load import need
from rnnzoo.hf.model import GatedMLP, SparseMoE


def sublayers(c: dict) -> list[hybrid.Sublayer]:
    out = []
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        attn = i % c.get("attn_layer_period", 8) == c.get("attn_layer_offset", 4)
        moe = i % c.get("expert_layer_period", 2) == c.get("expert_layer_offset", 1)
        mixer = ("attention", p + "self_attn.") if attn else ("mamba", p + "mamba.")
        out += [hybrid.Sublayer(mixer[0], p + "input_layernorm.weight", mixer[1]),
                hybrid.Sublayer("moe" if moe and c.get("num_experts", 16) > 1 else "mlp",
                                p + "pre_ff_layernorm.weight", p + "feed_forward.")]
    return out


def ffn(c: dict, s: hybrid.Sublayer):
    d, hidden = c["hidden_size"], c["intermediate_size"]
    if s.kind == "mlp":
        return GatedMLP(d, hidden)
    return SparseMoE(d, hidden, c["num_experts"], c["num_experts_per_tok"], norm_topk=False)


def build(c: dict, max_len: int = 4096):
    t, d = c["model_type"], c["hidden_size"]
    need(c.get("hidden_act", "silu") == "silu", t, f"hidden_act={c.get('hidden_act')!r}")
    need(not c.get("mamba_proj_bias", False), t, "mamba_proj_bias=True")
    need(c.get("mamba_conv_bias", True), t, "mamba_conv_bias=False")
    rank = c.get("mamba_dt_rank", "auto")
    eps = c.get("rms_norm_eps", 1e-6)
    mamba = dict(d_state=c.get("mamba_d_state", 16), d_conv=c.get("mamba_d_conv", 4),
                 expand=c.get("mamba_expand", 2), dt_rank=math.ceil(d / 16) if rank == "auto"
                 else rank, bcdt_rms_eps=eps, bcdt_rms_weight=True)
    attention = hybrid.attention_options(c, t, rope=False, max_len=max_len)
    return hybrid.build(c, sublayers(c), mixers=dict(mamba=mamba, attention=attention),
                        ffn=lambda s: ffn(c, s), norm_eps=eps,
                        tie=c.get("tie_word_embeddings", False), max_len=max_len)


def ffn_tensors(s, own: dict, p: str) -> dict:
    if s.kind == "mlp":
        return {p + f"{x}.weight": own.pop(f"{x}_proj.weight") for x in ("gate", "up", "down")}
    if "experts.gate_up_proj" in own:  # transformers' fused layout
        gate_up, down = own.pop("experts.gate_up_proj"), own.pop("experts.down_proj")
    else:  # the released one: a module per expert
        gate_up = torch.cat([hybrid.stacked(own, "experts.", f"{x}_proj.weight")
                             for x in ("gate", "up")], 1)
        down = hybrid.stacked(own, "experts.", "down_proj.weight")
    return hybrid.unpack_moe(own, p, "router.", gate_up, down)


def rename(tensors: dict, c: dict) -> dict:
    return hybrid.rename(tensors, sublayers(c), c, embed="model.embed_tokens.weight",
                         final_norm="model.final_layernorm.weight", ffn_tensors=ffn_tensors)
