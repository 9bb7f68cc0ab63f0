"""Nemotron-H checkpoints (transformers' `nemotron_h`) -> rnnzoo blocks (hf.hybrid's assembly).

Nemotron-H (NVIDIA 2025, arXiv:2504.03624) gives every sublayer its own layer, x + f(RMSNorm(x)),
f one of `layers_block_type` (or the released `hybrid_override_pattern`: M Mamba-2, *
attention, - MLP, E MoE): each mixer and the FFN after it are one rnnzoo block. Mixers:
rnnzoo `mamba2` and `attention` without positions (rotary_dim 0, as Nemotron-H has none).
FFNs: a relu^2 MLP without gate; the MoE is DeepSeek-V3-routed (sigmoid scores, balancing
bias, groups, routed_scaling_factor) over relu^2 experts, plus a shared relu^2 expert.
"""

from __future__ import annotations

from rnnzoo.hf import hybrid
from rnnzoo.hf.load import need
from rnnzoo.hf.model import ACTIVATIONS, MLP, SparseMoE

MAMBA = dict(num_heads="mamba_num_heads", head_dim="mamba_head_dim", n_groups="n_groups",
             state_size="ssm_state_size", conv_kernel="conv_kernel", expand="expand",
             chunk_size="chunk_size", use_conv_bias="use_conv_bias", use_bias="use_bias",
             hidden_act="mamba_hidden_act", layer_norm_epsilon="layer_norm_epsilon")
PATTERN = {"M": "mamba2", "*": "attention", "-": "mlp", "E": "moe"}
KINDS = {"linear_attention": "mamba2", "full_attention": "attention", "mlp": "mlp", "moe": "moe"}


def sublayers(c: dict) -> list[hybrid.Sublayer]:
    types = c.get("layers_block_type") or c.get("layer_types")
    kinds = ([PATTERN[x] for x in c["hybrid_override_pattern"]] if types is None
             else [KINDS[x] for x in types])
    return [hybrid.Sublayer(k, f"model.layers.{i}.norm.weight", f"model.layers.{i}.mixer.")
            for i, k in enumerate(kinds)]


def act(c: dict) -> str:
    a = c.get("mlp_hidden_act", "relu2")
    return "gelu_tanh" if a in ("gelu_pytorch_tanh", "gelu_tanh") else a


def ffn(c: dict, s: hybrid.Sublayer):
    d = c["hidden_size"]
    if s.kind == "mlp":
        return MLP(d, c["intermediate_size"], act(c), bias=c.get("mlp_bias", False))
    return SparseMoE(d, c["moe_intermediate_size"], c["n_routed_experts"], c["num_experts_per_tok"],
                     c.get("norm_topk_prob", True), c.get("moe_shared_expert_intermediate_size", 0),
                     score="sigmoid", shared_gate=False,
                     score_bias=True, routed_scale=c.get("routed_scaling_factor", 1.0),
                     norm_eps=1e-20, num_groups=c.get("n_group", 1),
                     topk_group=c.get("topk_group", 1), gated=False, act=act(c))


def build(c: dict, max_len: int = 4096):
    t = c["model_type"]
    need(act(c) in ACTIVATIONS, t, f"mlp_hidden_act={c.get('mlp_hidden_act')!r}")
    need(not c.get("mlp_bias", False), t, "mlp_bias=True")
    need(c.get("moe_latent_size") is None, t, "moe_latent_size (latent expert projections)")
    need(not c.get("num_nextn_predict_layers"), t, "num_nextn_predict_layers > 0 (MTP layers)")
    need(c.get("sliding_window") is None, t, "sliding_window")
    attention = hybrid.attention_options(c, t, rope=False, max_len=max_len)
    return hybrid.build(c, sublayers(c), mixers=dict(mamba2=hybrid.mamba2_options(c, MAMBA, t),
                                                     attention=attention),
                        ffn=lambda s: ffn(c, s), norm_eps=c.get("layer_norm_epsilon", 1e-5),
                        tie=c.get("tie_word_embeddings", False), max_len=max_len)


def ffn_tensors(s, own: dict, p: str) -> dict:
    if s.kind == "mlp":
        return {p + f"{x}.weight": own.pop(f"{x}_proj.weight") for x in ("up", "down")}
    if "experts.up_proj" in own:  # transformers' fused layout
        up, down = own.pop("experts.up_proj"), own.pop("experts.down_proj")
    else:  # the released one: a module per expert
        up = hybrid.stacked(own, "experts.", "up_proj.weight")
        down = hybrid.stacked(own, "experts.", "down_proj.weight")
    return hybrid.unpack_moe(own, p, "gate.", up, down)


def rename(tensors: dict, c: dict) -> dict:
    # the released checkpoints name the model `backbone` (transformers renames it `model`)
    tensors = {("model." + k[len("backbone."):] if k.startswith("backbone.") else k): v
               for k, v in tensors.items()}
    return hybrid.rename(tensors, sublayers(c), c, embed="model.embeddings.weight",
                         final_norm="model.norm_f.weight", ffn_tensors=ffn_tensors)
