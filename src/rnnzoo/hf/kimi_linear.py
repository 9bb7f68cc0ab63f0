"""Kimi Linear checkpoints (transformers' `kimi_linear`) -> rnnzoo blocks.

Kimi Linear (Kimi Team 2025, arXiv:2510.26692) interleaves Kimi Delta Attention with
multi-head latent attention without positions (`layer_types`: linear_attention /
full_attention). Every block is x + mixer(RMSNorm(x)) then h + MLP(RMSNorm(h)); the MLP is
a SwiGLU on the `dense` layers (the first `first_k_dense_replace`) and on the `sparse`
ones a DeepSeek-V3-style MoE: sigmoid router scores, experts chosen by score + a
balancing bias within the best expert groups, weights renormalised and scaled by
routed_scaling_factor, plus ungated shared experts.

The linear mixer is rnnzoo's `kda` (`sqrt_eps`: fla's l2norm of q, k; its low-rank decay and output-gate projections of rank
linear_head_dim, the gate's up projection without bias); the attention mixer is
`hf.mla.LatentAttention`. The released config.json nests the KDA options in
`linear_attn_config` (1-based `kda_layers` / `full_attn_layers`); transformers' saved
configs name them at the top level: both are read.
"""

from __future__ import annotations

import torch

from rnnzoo.hf.load import need
from rnnzoo.hf.mla import LatentAttention
from rnnzoo.hf.model import GatedMLP, PretrainedModel, SparseMoE, block, split_layers


def first(c: dict, *names, default=None):
    """The value of the first of `names` the config has (configs spell some keys two ways)."""
    return next((c[n] for n in names if c.get(n) is not None), default)


def kinds(c: dict) -> tuple[list[str], list[str]]:
    """(layer_types, mlp_layer_types) of the config, as transformers derives them."""
    n, lin = c["num_hidden_layers"], c.get("linear_attn_config") or {}
    types = c.get("layer_types")
    if types is None and "kda_layers" in lin:
        types = ["full_attention" if i + 1 in lin.get("full_attn_layers", ()) else
                 "linear_attention" for i in range(n)]
    types = types or ["full_attention" if i and i % 4 == 0 else "linear_attention"
                      for i in range(n)]
    mlp = c.get("mlp_layer_types") or ["dense" if i < c.get("first_k_dense_replace", 1) else
                                       "sparse" for i in range(n)]
    return types, mlp


def build(c: dict, max_len: int = 4096) -> PretrainedModel:
    t, d = c["model_type"], c["hidden_size"]
    need(c.get("hidden_act", "silu") == "silu", t, f"hidden_act={c.get('hidden_act')!r}")
    need(not c.get("attention_bias", False), t, "attention_bias=True")
    lin, eps = c.get("linear_attn_config") or {}, c.get("rms_norm_eps", 1e-5)
    heads = c["num_attention_heads"]
    need(first(c, "num_key_value_heads", default=heads) == heads, t, "num_key_value_heads != "
         "num_attention_heads (MLA expands every head from the latent)")
    kda = dict(num_heads=first(lin, "num_heads", default=c.get("linear_num_heads", 32)),
               head_dim=first(lin, "head_dim", default=c.get("linear_head_dim", 128)),
               d_conv=first(lin, "short_conv_kernel_size",
                            default=c.get("linear_conv_kernel_dim", 4)), norm_eps=eps,
               sqrt_eps=True)
    E = first(c, "num_experts", "num_local_experts", "n_routed_experts")
    hidden = c["moe_intermediate_size"]
    types, mlp_types = kinds(c)
    blocks = []
    for i, (kind, mlp) in enumerate(zip(types, mlp_types)):
        if mlp == "sparse":
            shared = first(c, "num_shared_experts", "n_shared_experts", default=1) * hidden
            ffn = SparseMoE(d, hidden, E, first(c, "num_experts_per_token", "num_experts_per_tok"),
                            first(c, "moe_renormalize", "norm_topk_prob", default=True), shared,
                            score="sigmoid", shared_gate=False, score_bias=True,
                            routed_scale=c.get("routed_scaling_factor", 1.0), norm_eps=1e-20,
                            num_groups=first(c, "num_expert_group", "n_group", default=1),
                            topk_group=c.get("topk_group") or 1)
        else:
            ffn = GatedMLP(d, c["intermediate_size"])
        mixer = "kda" if kind == "linear_attention" else LatentAttention(
            d, heads, c["kv_lora_rank"], c["qk_nope_head_dim"], c["qk_rope_head_dim"],
            c.get("v_head_dim") or c["qk_nope_head_dim"], c.get("q_lora_rank"), max_len,
            norm_eps=1e-6)  # transformers' latent norms keep their default eps
        blocks.append(block(mixer, d, kda, layer_idx=i, num_layers=len(types), norm_eps=eps,
                            mlp=ffn, max_len=max_len))
    layers = ["kda" if k == "linear_attention" else "mla" for k in types]
    return PretrainedModel(vocab_size=c["vocab_size"], d_model=d, layers=layers, blocks=blocks,
                           norm_eps=eps, tie=c.get("tie_word_embeddings", False), model_type=t,
                           source_config=c)


# the released checkpoints' names -> transformers' (as its conversion mapping renames them)
RELEASED = {"self_attn.f_a_proj.": "self_attn.forget_gate.f_a_proj.",
            "self_attn.f_b_proj.": "self_attn.forget_gate.f_b_proj.",
            "self_attn.dt_bias": "self_attn.forget_gate.dt_bias",
            "self_attn.A_log": "self_attn.forget_gate.A_log", "block_sparse_moe.": "mlp."}


def transformers_names(w: dict) -> dict:
    for old, new in RELEASED.items():
        w = {(new + k[len(old):] if k.startswith(old) else k): t for k, t in w.items()}
    return w


def unpack_kda(w: dict, p: str) -> dict:
    a = "self_attn."
    up, norm = w.pop(a + "g_b_proj.weight"), w.pop(a + "o_norm.weight")
    if a + "conv1d.weight" in w:
        conv = w.pop(a + "conv1d.weight")
    else:  # released: one convolution per q, k, v
        conv = torch.cat([w.pop(a + f"{x}_conv1d.weight") for x in "qkv"])
    return {p + "qkv_proj.weight": torch.cat([w.pop(a + f"{x}_proj.weight") for x in "qkv"]),
            p + "conv.weight": conv.squeeze(1),
            p + "f_proj.0.weight": w.pop(a + "forget_gate.f_a_proj.weight"),
            p + "f_proj.1.weight": w.pop(a + "forget_gate.f_b_proj.weight"),
            p + "A_log": w.pop(a + "forget_gate.A_log").flatten(),
            p + "dt_bias": w.pop(a + "forget_gate.dt_bias"),
            p + "b_proj.weight": w.pop(a + "b_proj.weight"),
            p + "g_proj.0.weight": w.pop(a + "g_a_proj.weight"), p + "g_proj.1.weight": up,
            p + "g_proj.1.bias": up.new_zeros(up.shape[0]),  # the checkpoint's gate has none
            # one norm weight shared by the heads; rnnzoo's HeadNorm has one per head
            p + "norm.weight": norm.expand(up.shape[0] // norm.shape[0], -1).clone(),
            p + "o_proj.weight": w.pop(a + "o_proj.weight")}


def unpack_mla(w: dict, p: str) -> dict:
    a, out = "self_attn.", {}
    if a + "q_proj.weight" in w:
        out[p + "q_proj.weight"] = w.pop(a + "q_proj.weight")
    else:
        out[p + "q_proj.0.weight"] = w.pop(a + "q_a_proj.weight")
        out[p + "q_proj.1.weight"] = w.pop(a + "q_a_layernorm.weight")
        out[p + "q_proj.2.weight"] = w.pop(a + "q_b_proj.weight")
    out.update({p + "kv_down.weight": w.pop(a + "kv_a_proj_with_mqa.weight"),
                p + "kv_norm.weight": w.pop(a + "kv_a_layernorm.weight"),
                p + "kv_up.weight": w.pop(a + "kv_b_proj.weight"),
                p + "out_proj.weight": w.pop(a + "o_proj.weight")})
    return out


def unpack_mlp(w: dict, c: dict, p: str) -> dict:
    if "mlp.gate.weight" not in w:
        return {p + f"{x}.weight": w.pop(f"mlp.{x}_proj.weight") for x in ("gate", "up", "down")}
    out = {p + "router.weight": w.pop("mlp.gate.weight"),
           p + "score_bias": w.pop("mlp.gate.e_score_correction_bias")}
    if "mlp.experts.gate_up_proj" in w:  # transformers' fused layout
        out[p + "gate_up"] = w.pop("mlp.experts.gate_up_proj")
        out[p + "down"] = w.pop("mlp.experts.down_proj")
    else:  # the released layout: w1 (gate), w3 (up), w2 (down) per expert
        E = len([k for k in w if k.startswith("mlp.experts.") and k.endswith(".w1.weight")])
        out[p + "gate_up"] = torch.stack([torch.cat([w.pop(f"mlp.experts.{e}.w1.weight"),
                                                     w.pop(f"mlp.experts.{e}.w3.weight")])
                                          for e in range(E)])
        out[p + "down"] = torch.stack([w.pop(f"mlp.experts.{e}.w2.weight") for e in range(E)])
    for x in ("gate", "up", "down"):
        out[p + f"shared.{x}.weight"] = w.pop(f"mlp.shared_experts.{x}_proj.weight")
    return out


def rename(tensors: dict, c: dict) -> dict:
    out, layers = split_layers(tensors, "model.norm.weight", centred=False)
    for i, w in layers.items():
        p, w = f"blocks.{i}.", transformers_names(w)
        out[p + "norm.weight"] = w.pop("input_layernorm.weight")
        out[p + "mlp_norm.weight"] = w.pop("post_attention_layernorm.weight")
        kda = "self_attn.forget_gate.A_log" in w
        out.update(unpack_kda(w, p + "mixer.") if kda else unpack_mla(w, p + "mixer."))
        out.update(unpack_mlp(w, c, p + "mlp."))
        out.update({f"model.layers.{i}.{k}": v for k, v in w.items()})  # leftovers: named
    if c.get("tie_word_embeddings", False):
        out["head.weight"] = out["embed.weight"]
    return out
