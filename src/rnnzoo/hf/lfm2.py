"""LFM2 checkpoints (transformers' `lfm2`) -> rnnzoo blocks.

LFM2 (Liquid AI 2025) interleaves gated short-convolution blocks with grouped-query
attention (`layer_types`: conv / full_attention); every layer is x + mixer(RMSNorm(x)) then
h + SwiGLU(RMSNorm(h)). The attention mixer is rnnzoo's `attention` (RMSNorm on each head
of q and k with weights, full rotary). The convolution mixer is `GatedShortConv` here, a
layer of the rnnzoo contract on rnnzoo's short convolution (layers/conv.py):

    b, c, u = split(W_in x)                 (three d_model-wide parts)
    y_t = W_out (c_t * sum_{k<L} w_k (b * u)_{t-L+1+k})         (depthwise, L = conv_L_cache)

state: the last L - 1 inputs of the convolution, (B, L - 1, d_model). Modes: `sequential`
(one step at a time) and `parallel` (one convolution over the sequence).
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.checks import flag, positive_int
from rnnzoo.dtypes import state_dtype
from rnnzoo.hf.load import need
from rnnzoo.hf.model import GatedMLP, PretrainedModel, block, split_layers
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.conv import ShortConv


class GatedShortConv(RecurrentLayer):
    """x: (B, T, d_model) -> y: (B, T, d_model); state (B, d_conv - 1, d_model)."""

    modes = ("sequential", "parallel")

    def __init__(self, d_model: int, d_conv: int = 3, bias: bool = False):
        super().__init__(d_model)
        bias = flag("bias", bias)
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.conv = ShortConv(d_model, positive_int("d_conv", d_conv), bias=bias, silu=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def init_state(self, batch_size, device=None, dtype=None):
        return self.conv.init_state(batch_size, device, state_dtype(dtype))

    def _forward(self, x, state, mode):
        b, c, u = self.in_proj(x).chunk(3, -1)
        if mode == "parallel":
            y, state = self.conv(b * u, state)
        else:
            ys = []
            for t in range(x.shape[1]):
                y_t, state = self.conv(b[:, t:t + 1] * u[:, t:t + 1], state)
                ys.append(y_t)
            y = torch.cat(ys, 1)
        return self.out_proj(c * y), state

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_conv={self.conv.d_conv}"


def kinds(c: dict) -> list[str]:
    types = c.get("layer_types")
    if types is None:
        full = c.get("full_attn_idxs")
        full = range(c["num_hidden_layers"]) if full is None else full
        types = ["full_attention" if i in full else "conv" for i in range(c["num_hidden_layers"])]
    return types


def ffn_size(c: dict) -> int:
    """The SwiGLU width, adjusted as LFM2's block_auto_adjust_ff_dim does."""
    size = c.get("block_ff_dim") or c["intermediate_size"]
    if c.get("block_auto_adjust_ff_dim", True):
        size = int(2 * size / 3)
        if c.get("block_ffn_dim_multiplier") is not None:
            m = c.get("block_multiple_of", 256)
            size = int(c["block_ffn_dim_multiplier"] * size)
            size = m * ((size + m - 1) // m)
    return size


def build(c: dict, max_len: int = 4096) -> PretrainedModel:
    t, d = c["model_type"], c["hidden_size"]
    rope = c.get("rope_parameters") or {}
    need(rope.get("rope_type", "default") == "default", t, f"rope_type={rope.get('rope_type')!r}")
    eps, heads = c.get("norm_eps", 1e-5), c["num_attention_heads"]
    att = dict(num_heads=heads, head_dim=d // heads, num_kv_heads=c.get("num_key_value_heads") or heads,
               rope_base=rope.get("rope_theta", 1e6), qk_norm_eps=eps, max_len=max_len)
    blocks, layers = [], []
    types = kinds(c)
    for i, kind in enumerate(types):
        mixer = "attention" if kind == "full_attention" else GatedShortConv(
            d, c.get("conv_L_cache", 3), c.get("conv_bias", False))
        layers.append("attention" if kind == "full_attention" else "gated_short_conv")
        blocks.append(block(mixer, d, att, layer_idx=i, num_layers=len(types), norm_eps=eps,
                            mlp=GatedMLP(d, ffn_size(c)), max_len=max_len))
    return PretrainedModel(vocab_size=c["vocab_size"], d_model=d, layers=layers, blocks=blocks,
                           norm_eps=eps, tie=c.get("tie_word_embeddings", c.get("tie_embedding", True)),
                           model_type=t, source_config=c)


def rename(tensors: dict, c: dict) -> dict:
    out, layers = split_layers(tensors, "model.embedding_norm.weight", centred=False)
    for i, w in layers.items():
        p = f"blocks.{i}."
        out[p + "norm.weight"] = w.pop("operator_norm.weight")
        out[p + "mlp_norm.weight"] = w.pop("ffn_norm.weight")
        for ours, theirs in (("gate", "w1"), ("up", "w3"), ("down", "w2")):
            out[f"{p}mlp.{ours}.weight"] = w.pop(f"feed_forward.{theirs}.weight")
        m = p + "mixer."
        if "self_attn.q_proj.weight" in w:
            a = "self_attn."
            out[m + "qkv.weight"] = torch.cat([w.pop(a + f"{x}_proj.weight") for x in "qkv"])
            out[m + "out_proj.weight"] = w.pop(a + "out_proj.weight")
            out[m + "q_norm"] = w.pop(a + "q_layernorm.weight")
            out[m + "k_norm"] = w.pop(a + "k_layernorm.weight")
        else:
            for k in [k for k in w if k.startswith("conv.")]:  # conv.{in_proj,conv,out_proj}
                t = w.pop(k)
                out[m + k[len("conv."):]] = t.squeeze(1) if k == "conv.conv.weight" else t
        out.update({f"model.layers.{i}.{k}": v for k, v in w.items()})  # leftovers: named
    if "head.weight" not in out:
        out["head.weight"] = out["embed.weight"]
    return out
