"""flash-linear-attention's own checkpoints (the `fla-hub` models, written by fla.models'
classes) -> rnnzoo blocks.

fla's language models share one layout (fla.models.modeling_utils.FLAModel):

    h = embeddings(tokens)
    per layer:  h = h + attn(attn_norm(h));  h = h + mlp(mlp_norm(h))     (RMSNorms, eps norm_eps)
    logits = lm_head(norm(h))                  (lm_head tied to the embedding if tie_word_embeddings)
    mlp(x) = down_proj(swish(gate_proj x) * up_proj x),  width intermediate_size or
             256 * ceil(int(hidden_size * hidden_ratio * 2/3) / 256)

which is hf.model's stack with GatedMLP. Each `attn` is the registered rnnzoo layer:

    gla             `gla`: q/k/v, low-rank gk_proj (logsigmoid / 16), per-head RMSNorm * swish(g_proj x)
    gated_deltanet  `gated_deltanet`: short convs, fla's l2norm (`sqrt_eps`), grouped value heads
                    (num_v_heads, rnnzoo's num_heads over num_key_heads), gated per-head RMSNorm
    delta_net       `deltanet`: the same without the decay (and the output gate only with use_gate)

The options fla's models read from the config but rnnzoo's layers do not cover are refused
by name (hf.load.UnsupportedCheckpoint): softmax attention layers (`attn`), attention
residuals (`attnres_block_size`), short convolutions on GLA, feature maps, GQA (num_kv_heads),
non-swish gates. RWKV-7, RetNet and HGRN2 checkpoints are refused with the reason (see
`REFUSED`).
"""

from __future__ import annotations

import torch

from rnnzoo.hf.load import UnsupportedCheckpoint, need
from rnnzoo.hf.model import GatedMLP, PretrainedModel, block

# model_type -> the rnnzoo layer its mixer maps onto
LAYERS = {"gla": "gla", "gated_deltanet": "gated_deltanet", "delta_net": "deltanet"}

# model_types fla writes whose mixers rnnzoo's layers do not compute (yet), and why
REFUSED = {
    "rwkv7": "RWKV-7's value residual (each layer mixes its values with layer 0's, v_first, "
             "a tensor passed between layers) and its per-map low-rank widths",
    "retnet": "fla's retention (GPT-NeoX rotary with base-10000 frequencies and a gated "
              "per-head RMSNorm; rnnzoo's retnet has torchscale's frequencies and a GroupNorm)",
    "hgrn2": "fla's HGRN2 (a per-channel lower bound learned per layer, lower_bounds, and one "
             "RMSNorm over all heads; rnnzoo's hgrn2 has a scalar bound and per-head norms)",
}


def intermediate(c: dict) -> int:
    """fla's GatedMLP width."""
    if c.get("intermediate_size"):
        return c["intermediate_size"]
    width = int(c["hidden_size"] * (c.get("hidden_ratio") or 4) * 2 / 3)
    return 256 * ((width + 255) // 256)


def integer(value: float, t: str, what: str) -> int:
    need(abs(value - round(value)) < 1e-9 and round(value) > 0, t, f"{what}={value} (not a "
         f"positive integer)")
    return round(value)


def options(c: dict) -> dict:
    """The rnnzoo layer options of the checkpoint's mixer (refusing what they do not cover)."""
    t, d, H = c["model_type"], c["hidden_size"], c["num_heads"]
    eps = c.get("norm_eps", 1e-6)
    if t == "gla":
        need(c.get("num_kv_heads") in (None, H), t, f"num_kv_heads={c.get('num_kv_heads')}")
        need(c.get("feature_map") is None, t, f"feature_map={c.get('feature_map')!r}")
        need(not c.get("use_short_conv", False), t, "use_short_conv=True")
        need(c.get("use_output_gate", True), t, "use_output_gate=False")
        need(c.get("clamp_min") is None, t, f"clamp_min={c.get('clamp_min')}")
        need(not c.get("use_gv", False), t, "use_gv=True")
        return dict(num_heads=H, expand_k=c.get("expand_k", 0.5), expand_v=c.get("expand_v", 1.0),
                    decay_rank=16, gate_normalizer=16)  # fla's GLA fixes both at 16
    need(c.get("use_short_conv", True), t, "use_short_conv=False")
    common = dict(d_conv=c.get("conv_size", 4), norm_eps=eps,
                  allow_neg_eigval=bool(c.get("allow_neg_eigval", False)))
    if t == "gated_deltanet":
        need(c.get("use_gate", True), t, "use_gate=False")
        act = c.get("output_gate_activation", "swish")
        need(act in ("swish", "silu"), t, f"output_gate_activation={act!r}")
        K = c.get("head_dim", 256)
        Hv = c.get("num_v_heads") or H
        need(Hv % H == 0, t, f"num_v_heads={Hv} not a multiple of num_heads={H}")
        return dict(num_heads=Hv, num_key_heads=H, head_dim=K, sqrt_eps=True,
                    expand_v=integer(c.get("expand_v", 2.0), t, "expand_v"), **common)
    need(c.get("qk_activation", "silu") == "silu", t, f"qk_activation={c.get('qk_activation')!r}")
    need(c.get("qk_norm", "l2") == "l2", t, f"qk_norm={c.get('qk_norm')!r}")
    need(c.get("use_beta", True), t, "use_beta=False")
    K = integer(d * c.get("expand_k", 1.0) / H, t, "hidden_size * expand_k / num_heads")
    V = integer(d * c.get("expand_v", 1.0) / H, t, "hidden_size * expand_v / num_heads")
    return dict(num_heads=H, head_dim=K, expand_v=integer(V / K, t, "expand_v / expand_k"),
                output_gate=bool(c.get("use_gate", False)), **common)


def build(c: dict, max_len: int = 4096) -> PretrainedModel:
    t, d, n = c["model_type"], c["hidden_size"], c["num_hidden_layers"]
    if t in REFUSED:
        raise UnsupportedCheckpoint(f"{t} checkpoint (flash-linear-attention): {REFUSED[t]} "
                                    f"is not supported")
    need(not c.get("attn"), t, f"attn={c.get('attn')} (softmax attention layers)")
    need(c.get("attnres_block_size") is None, t,
         f"attnres_block_size={c.get('attnres_block_size')} (attention residuals)")
    need(c.get("hidden_act", "swish") in ("swish", "silu"), t, f"hidden_act={c.get('hidden_act')!r}")
    need(c.get("elementwise_affine", True) is not False, t, "elementwise_affine=False")
    eps, opts, layer = c.get("norm_eps", 1e-6), options(c), LAYERS[t]
    blocks = [block(layer, d, opts, layer_idx=i, num_layers=n, norm_eps=eps,
                    mlp=GatedMLP(d, intermediate(c))) for i in range(n)]
    for b in blocks:  # fla's output norms use norm_eps and fla's l2norm: set where no option
        if layer == "gla":
            b.mixer.norm.eps = eps
        elif layer == "deltanet":
            b.mixer.sqrt_eps = True
    return PretrainedModel(vocab_size=c["vocab_size"], d_model=d, layers=[layer] * n,
                           blocks=blocks, norm_eps=eps, tie=c.get("tie_word_embeddings", False),
                           model_type=t, source_config=c)


def gla_tensors(w: dict, c: dict, p: str) -> dict:
    H = c["num_heads"]
    norm = w.pop("attn.g_norm_swish_gate.weight", None)
    norm = w.pop("attn.g_norm.weight") if norm is None else norm  # fuse_norm=False's name
    g = w.pop("attn.g_proj.weight")
    return {p + "qk.weight": torch.cat([w.pop("attn.q_proj.weight"), w.pop("attn.k_proj.weight")]),
            p + "v.weight": w.pop("attn.v_proj.weight"),
            p + "gate_down.weight": w.pop("attn.gk_proj.0.weight"),
            p + "gate_up.weight": w.pop("attn.gk_proj.1.weight"),
            p + "gate_up.bias": w.pop("attn.gk_proj.1.bias"),
            p + "out_gate.weight": g, p + "out_gate.bias": g.new_zeros(g.shape[0]),
            p + "norm.weight": norm.expand(H, -1).clone(),  # fla's norm weight is one per channel
            p + "out_proj.weight": w.pop("attn.o_proj.weight")}


def delta_tensors(w: dict, c: dict, p: str) -> dict:
    """(Gated) DeltaNet: q, k, v projections and their convolutions concatenated."""
    b = w.pop("attn.b_proj.weight")
    out = {p + "qkv_proj.weight": torch.cat([w.pop(f"attn.{x}_proj.weight") for x in "qkv"]),
           p + "conv.weight": torch.cat([w.pop(f"attn.{x}_conv1d.weight") for x in "qkv"]).squeeze(1),
           p + "b_proj.weight": b, p + "b_proj.bias": b.new_zeros(b.shape[0]),  # fla's has none
           p + "norm_weight": w.pop("attn.o_norm.weight"),
           p + "o_proj.weight": w.pop("attn.o_proj.weight")}
    for x in ("a_proj.weight", "A_log", "dt_bias", "g_proj.weight"):
        if "attn." + x in w:
            out[p + x] = w.pop("attn." + x)
    return out


def rename(tensors: dict, c: dict) -> dict:
    w = dict(tensors)
    out = {"embed.weight": w.pop("model.embeddings.weight"), "norm.weight": w.pop("model.norm.weight")}
    out["head.weight"] = w.pop("lm_head.weight", out["embed.weight"])
    if c.get("tie_word_embeddings", False):
        out["head.weight"] = out["embed.weight"]
    mixer = gla_tensors if c["model_type"] == "gla" else delta_tensors
    for i in range(c["num_hidden_layers"]):
        src, p = f"model.layers.{i}.", f"blocks.{i}."
        own = {k[len(src):]: w.pop(k) for k in [k for k in w if k.startswith(src)]}
        out[p + "norm.weight"] = own.pop("attn_norm.weight")
        out[p + "mlp_norm.weight"] = own.pop("mlp_norm.weight")
        for x in ("gate", "up", "down"):
            out[p + f"mlp.{x}.weight"] = own.pop(f"mlp.{x}_proj.weight")
        out.update(mixer(own, c, p + "mixer."))
        out.update({src + k: t for k, t in own.items()})  # leftovers: named by from_pretrained
    out.update(w)
    return out
