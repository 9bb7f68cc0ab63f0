"""Mamba checkpoints (transformers' `mamba`, `falcon_mamba`) -> rnnzoo `mamba` blocks.

Mamba's block is x + Mixer(RMSNorm(x)) with no MLP; the head is tied to the embedding
unless the config unties it. Each mixer is rnnzoo's `mamba` (Gu & Dao 2023,
arXiv:2312.00752) with d_state = state_size, d_conv = conv_kernel, expand, dt_rank =
time_step_rank. Falcon-Mamba adds an RMSNorm without weight on dt, B and C after the x
projection (`mixer_rms_eps`), rnnzoo mamba's option `bcdt_rms_eps`.
"""

from __future__ import annotations

import math

from rnnzoo.hf.load import need
from rnnzoo.hf.model import PretrainedModel, block


def build(c: dict, max_len: int = 4096) -> PretrainedModel:
    t = c["model_type"]
    need(not c.get("use_bias", False), t, "use_bias=True (bias in in_proj / out_proj)")
    need(c.get("use_conv_bias", True), t, "use_conv_bias=False")
    need(c.get("hidden_act", "silu") == "silu", t, f"hidden_act={c.get('hidden_act')!r}")
    d = c["hidden_size"]
    expand = c.get("expand", 2)
    need(c.get("intermediate_size", expand * d) == expand * d, t, "intermediate_size != expand * "
         "hidden_size")
    rank = c.get("time_step_rank", "auto")
    options = dict(d_state=c.get("state_size", 16), d_conv=c.get("conv_kernel", 4),
                   expand=expand, dt_rank=math.ceil(d / 16) if rank == "auto" else rank)
    if t == "falcon_mamba":
        options["bcdt_rms_eps"] = c.get("mixer_rms_eps", 1e-6)
    n, eps = c["num_hidden_layers"], c.get("layer_norm_epsilon", 1e-5)
    blocks = [block("mamba", d, options, layer_idx=i, num_layers=n, norm_eps=eps)
              for i in range(n)]
    return PretrainedModel(vocab_size=c["vocab_size"], d_model=d, layers=["mamba"] * n,
                           blocks=blocks, norm_eps=eps, tie=c.get("tie_word_embeddings", True),
                           model_type=t, source_config=c)


def rename(tensors: dict, c: dict) -> dict:
    out = {}
    for name, t in tensors.items():
        new = (name.replace("backbone.embeddings.", "embed.").replace("backbone.embedding.", "embed.")
               .replace("backbone.norm_f.", "norm.").replace("backbone.layers.", "blocks.")
               .replace("lm_head.", "head.").replace(".mixer.conv1d.", ".mixer.conv."))
        if new.endswith("mixer.conv.weight"):
            t = t.squeeze(1)  # (d_inner, 1, d_conv) -> (d_inner, d_conv)
        out[new] = t
    if c.get("tie_word_embeddings", True):
        out["head.weight"] = out["embed.weight"]
    return out
