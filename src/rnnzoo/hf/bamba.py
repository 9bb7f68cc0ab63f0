"""Bamba checkpoints (transformers' `bamba`) -> rnnzoo blocks (hf.hybrid's assembly).

Bamba (IBM 2024) is a Mamba-2 stack with full attention at `attn_layer_indices`: every layer
is x + mixer(RMSNorm(x)) then h + SwiGLU(RMSNorm(h)). Mixers: rnnzoo `mamba2` (per-group
gated norm) and `attention` (GQA, rotary on half of each head).
"""

from __future__ import annotations

from rnnzoo.hf import hybrid
from rnnzoo.hf.load import need
from rnnzoo.hf.model import GatedMLP

MAMBA = dict(num_heads="mamba_n_heads", head_dim="mamba_d_head", n_groups="mamba_n_groups",
             state_size="mamba_d_state", conv_kernel="mamba_d_conv", expand="mamba_expand",
             chunk_size="mamba_chunk_size", use_conv_bias="mamba_conv_bias",
             use_bias="mamba_proj_bias", layer_norm_epsilon="rms_norm_eps")


def sublayers(c: dict) -> list[hybrid.Sublayer]:
    attn = set(c.get("attn_layer_indices") or ())
    out = []
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        mixer = ("attention", p + "self_attn.") if i in attn else ("mamba2", p + "mamba.")
        out += [hybrid.Sublayer(mixer[0], p + "input_layernorm.weight", mixer[1]),
                hybrid.Sublayer("mlp", p + "pre_ff_layernorm.weight", p + "feed_forward.")]
    return out


def build(c: dict, max_len: int = 4096):
    t = c["model_type"]
    need(c.get("hidden_act", "silu") == "silu", t, f"hidden_act={c.get('hidden_act')!r}")
    need(not c.get("mlp_bias", False), t, "mlp_bias=True")
    rope = {**(c.get("rope_parameters") or {}), "partial_rotary_factor": 0.5}  # fixed in Bamba
    attention = hybrid.attention_options({**c, "rope_parameters": rope}, t, rope=True,
                                         max_len=max_len)
    return hybrid.build(c, sublayers(c), mixers=dict(mamba2=hybrid.mamba2_options(c, MAMBA, t),
                                                     attention=attention),
                        ffn=lambda s: GatedMLP(c["hidden_size"], c["intermediate_size"]),
                        norm_eps=c.get("rms_norm_eps", 1e-5),
                        tie=c.get("tie_word_embeddings", False), max_len=max_len)


def ffn_tensors(s, own: dict, p: str) -> dict:
    return {p + f"{x}.weight": own.pop(f"{x}_proj.weight") for x in ("gate", "up", "down")}


def rename(tensors: dict, c: dict) -> dict:
    return hybrid.rename(tensors, sublayers(c), c, embed="model.embed_tokens.weight",
                         final_norm="model.final_layernorm.weight", ffn_tensors=ffn_tensors)
