"""RecurrentGemma (Griffin) checkpoints (transformers' `recurrent_gemma`) -> rnnzoo blocks.

RecurrentGemma (Botev et al. 2024, arXiv:2404.07839) is Griffin (De et al. 2024,
arXiv:2402.19427): blocks cycle through `block_types` (recurrent, recurrent, attention),
each x + mixer(norm(x)) then h + GeGLU(norm(h)) (with biases). The recurrent mixer is
rnnzoo's `hawk` (RG-LRU, block-diagonal gates of num_attention_heads blocks, the first
step unnormalised, gate GELU-tanh); the attention mixer is rnnzoo's `attention`,
local (window = attention_window_size), multi-query (num_key_value_heads), rotary on
partial_rotary_factor of each head, W_o with bias. Norms are Gemma's x_hat (1 + w);
the embedding is scaled by sqrt(hidden_size) (rounded to bfloat16, as the reference),
logits soft-capped at logits_soft_cap, the head tied to the embedding.
"""

from __future__ import annotations

import torch

from rnnzoo.hf.load import need
from rnnzoo.hf.model import GatedMLP, PretrainedModel, block, gemma_norm, split_layers


def kinds(c: dict) -> list[str]:
    types = list(c.get("block_types") or ("recurrent", "recurrent", "attention"))
    return [types[i % len(types)] for i in range(c["num_hidden_layers"])]


def build(c: dict, max_len: int = 4096) -> PretrainedModel:
    t, d = c["model_type"], c["hidden_size"]
    need(c.get("hidden_activation", "gelu_pytorch_tanh") in ("gelu_pytorch_tanh", "gelu_tanh"), t,
         f"hidden_activation={c.get('hidden_activation')!r}")
    need(not c.get("attention_bias", False), t, "attention_bias=True")
    rope = c.get("rope_parameters") or {}
    need(rope.get("rope_type", "default") == "default", t, f"rope_type={rope.get('rope_type')!r}")
    heads = c["num_attention_heads"]
    head_dim = c.get("head_dim") or d // heads
    lru = c.get("lru_width") or d
    rec = dict(d_rnn=lru, num_heads=heads, d_conv=c.get("conv1d_width", 4), gate_act="gelu_tanh",
               normalize_first=False)
    att = dict(num_heads=heads, head_dim=head_dim, num_kv_heads=c.get("num_key_value_heads") or heads,
               window=c.get("attention_window_size", 2048), out_bias=True,
               rotary_dim=int(head_dim * rope.get("partial_rotary_factor", 0.5)),
               rope_base=rope.get("rope_theta", 10000.0))
    eps, names = c.get("rms_norm_eps", 1e-6), kinds(c)
    layers = ["hawk" if k == "recurrent" else "attention" for k in names]
    blocks = [block(name, d, rec if name == "hawk" else att, layer_idx=i, num_layers=len(layers),
                    norm_eps=eps, mlp=GatedMLP(d, c["intermediate_size"] // 2, "gelu_tanh", bias=True))
              for i, name in enumerate(layers)]
    scale = float(torch.tensor(d ** 0.5, dtype=torch.bfloat16))
    return PretrainedModel(vocab_size=c["vocab_size"], d_model=d, layers=layers, blocks=blocks,
                           norm_eps=eps, tie=c.get("tie_word_embeddings", True), model_type=t,
                           source_config=c, embed_scale=scale,
                           logit_softcap=c.get("logits_soft_cap"))


def rename(tensors: dict, c: dict) -> dict:
    out, layers = split_layers(tensors, "model.final_norm.weight")
    for i, w in layers.items():
        p = f"blocks.{i}."
        out[p + "norm.weight"] = gemma_norm(w.pop("temporal_pre_norm.weight"))
        out[p + "mlp_norm.weight"] = gemma_norm(w.pop("channel_pre_norm.weight"))
        for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
            for kind in ("weight", "bias"):
                out[f"{p}mlp.{ours}.{kind}"] = w.pop(f"mlp_block.{theirs}.{kind}")
        m, tb = p + "mixer.", "temporal_block."
        if tb + "q_proj.weight" in w:
            out[m + "qkv.weight"] = torch.cat([w.pop(tb + f"{x}_proj.weight") for x in "qkv"])
            out[m + "out_proj.weight"] = w.pop(tb + "o_proj.weight")
            out[m + "out_proj.bias"] = w.pop(tb + "o_proj.bias")
        else:
            for kind in ("weight", "bias"):  # gate branch (linear_y) first, then linear_x
                out[m + f"in_proj.{kind}"] = torch.cat([w.pop(tb + f"linear_y.{kind}"),
                                                        w.pop(tb + f"linear_x.{kind}")])
                out[m + f"out_proj.{kind}"] = w.pop(tb + f"linear_out.{kind}")
            out[m + "conv.weight"] = w.pop(tb + "conv_1d.weight").squeeze(1)
            out[m + "conv.bias"] = w.pop(tb + "conv_1d.bias")
            lru = tb + "rg_lru."
            out[m + "gate_weight"] = torch.stack([w.pop(lru + "recurrent_gate_weight"),
                                                  w.pop(lru + "input_gate_weight")])
            out[m + "gate_bias"] = torch.stack([w.pop(lru + "recurrent_gate_bias").flatten(),
                                                w.pop(lru + "input_gate_bias").flatten()])
            out[m + "a_logit"] = -w.pop(lru + "recurrent_param")  # a = sigma(-param)
        out.update({f"model.layers.{i}.{k}": v for k, v in w.items()})  # leftovers: named
    if c.get("tie_word_embeddings", True):
        out["head.weight"] = out["embed.weight"]
    return out
