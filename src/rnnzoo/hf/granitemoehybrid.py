"""Granite-4.0-H checkpoints (transformers' `granitemoehybrid`) -> rnnzoo blocks (hf.hybrid).

Every layer is x + m * mixer(RMSNorm(x)) then h + m * FFN(RMSNorm(h)), m = residual_multiplier,
the mixer a Mamba-2 or attention (`layer_types`) and the FFN a softmax-routed MoE plus an
ungated shared SwiGLU (the shared SwiGLU alone without experts). Granite's multipliers are
folded into the weights, so the blocks are rnnzoo's plain ones:

    m into each mixer's W_out and each FFN's W_down (experts' too);
    attention's score scale attention_multiplier (not 1/sqrt(head_dim)) into W_q, as
        attention_multiplier * sqrt(head_dim), so that rnnzoo's 1/sqrt(head_dim) gives it;
    logits / logits_scaling into the head (untied from the embedding then);
    embedding_multiplier: the embedding's scale.

Attention has rotary positions where position_embedding_type = "rope", none otherwise.
"""

from __future__ import annotations

from rnnzoo.hf import hybrid
from rnnzoo.hf.bamba import MAMBA
from rnnzoo.hf.load import need
from rnnzoo.hf.model import GatedMLP, SparseMoE


def sublayers(c: dict) -> list[hybrid.Sublayer]:
    types = c.get("layer_types") or c.get("layers_block_type") or (
        ["linear_attention"] * c["num_hidden_layers"])
    out = []
    for i, kind in enumerate(types):
        p = f"model.layers.{i}."
        mixer = ("attention", p + "self_attn.") if kind == "attention" or kind == "full_attention" \
            else ("mamba2", p + "mamba.")
        out += [hybrid.Sublayer(mixer[0], p + "input_layernorm.weight", mixer[1]),
                hybrid.Sublayer("moe" if c.get("num_local_experts", 0) else "mlp",
                                p + "post_attention_layernorm.weight", p)]
    return out


def ffn(c: dict, s: hybrid.Sublayer):
    d, shared = c["hidden_size"], c["shared_intermediate_size"]
    if s.kind == "mlp":
        return GatedMLP(d, shared)
    return SparseMoE(d, c["intermediate_size"], c["num_local_experts"], c["num_experts_per_tok"],
                     True, shared, shared_gate=False)


def build(c: dict, max_len: int = 4096):
    t = c["model_type"]
    need(c.get("hidden_act", "silu") == "silu", t, f"hidden_act={c.get('hidden_act')!r}")
    pos = c.get("position_embedding_type")
    need(pos in (None, "rope", "nope"), t, f"position_embedding_type={pos!r}")
    attention = hybrid.attention_options(c, t, rope=pos == "rope", max_len=max_len)
    return hybrid.build(c, sublayers(c), mixers=dict(mamba2=hybrid.mamba2_options(c, MAMBA, t),
                                                     attention=attention),
                        ffn=lambda s: ffn(c, s), norm_eps=c.get("rms_norm_eps", 1e-6),
                        tie=c.get("tie_word_embeddings", False) and c.get("logits_scaling", 1) == 1,
                        max_len=max_len, embed_scale=c.get("embedding_multiplier", 1.0))


def ffn_tensors(s, own: dict, p: str) -> dict:
    out = hybrid.gated_split(own.pop("shared_mlp.input_linear.weight"),
                             p + ("shared." if s.kind == "moe" else ""))
    out[p + ("shared.down.weight" if s.kind == "moe" else "down.weight")] = own.pop(
        "shared_mlp.output_linear.weight")
    if s.kind == "moe":
        m = "block_sparse_moe."
        if m + "input_linear.weight" in own:  # the released layout
            gate_up, down = own.pop(m + "input_linear.weight"), own.pop(m + "output_linear.weight")
            router = m + "router.layer."
        else:  # transformers' own
            gate_up, down = own.pop(m + "experts.gate_up_proj"), own.pop(m + "experts.down_proj")
            router = m + "router."
        out.update(hybrid.unpack_moe(own, p, router, gate_up, down))
    return out


def rename(tensors: dict, c: dict) -> dict:
    out = hybrid.rename(tensors, sublayers(c), c, embed="model.embed_tokens.weight",
                        final_norm="model.norm.weight", ffn_tensors=ffn_tensors)
    m = c.get("residual_multiplier", 1.0)
    heads = c["num_attention_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    q_scale = c.get("attention_multiplier", 1.0) * head_dim ** 0.5
    for name in list(out):
        if name.endswith(("mixer.out_proj.weight", "mlp.down", "mlp.down.weight",
                          "mlp.shared.down.weight")):
            out[name] = out[name] * m
        elif name.endswith("mixer.qkv.weight"):
            q = out[name].clone()
            q[:heads * head_dim] *= q_scale
            out[name] = q
    out["head.weight"] = out["head.weight"] / c.get("logits_scaling", 1.0)
    return out
