"""Mamba-2 checkpoints (transformers' `mamba2`) -> rnnzoo `mamba2` blocks.

Block x + Mixer(RMSNorm(x)), no MLP, head tied unless untied. Each mixer is rnnzoo's
`mamba2` (Dao & Gu 2024, arXiv:2405.21060) with d_state = state_size, head_dim,
expand, d_conv = conv_kernel, n_groups, norm_eps = layer_norm_epsilon (the gated norm's).
"""

from __future__ import annotations

from rnnzoo.hf.load import need, number
from rnnzoo.hf.model import PretrainedModel, block


def options(c: dict, t: str, d: int) -> dict:
    """rnnzoo mamba2 options of a Mamba-2 mixer config (shared by the Mamba-2 hybrids)."""
    need(not c.get("use_bias", False), t, "use_bias=True (bias in in_proj / out_proj)")
    need(c.get("use_conv_bias", True), t, "use_conv_bias=False")
    need(c.get("hidden_act", "silu") == "silu", t, f"hidden_act={c.get('hidden_act')!r}")
    limit = [number(v) for v in c.get("time_step_limit") or (0.0, float("inf"))]
    need(limit[0] == 0 and limit[1] == float("inf"), t,
         f"time_step_limit={limit} (a clamped dt)")
    expand, head_dim = c.get("expand", 2), c.get("head_dim", 64)
    need(c.get("num_heads", expand * d // head_dim) * head_dim == expand * d, t,
         "num_heads * head_dim != expand * hidden_size")
    return dict(d_state=c.get("state_size", 128), head_dim=head_dim, expand=expand,
                d_conv=c.get("conv_kernel", 4), n_groups=c.get("n_groups", 1),
                norm_eps=c.get("layer_norm_epsilon", 1e-5), chunk_size=min(64, c.get(
                    "chunk_size", 64)))


def build(c: dict, max_len: int = 4096) -> PretrainedModel:
    t, d = c["model_type"], c["hidden_size"]
    opts = options(c, t, d)
    n, eps = c["num_hidden_layers"], c.get("layer_norm_epsilon", 1e-5)
    blocks = [block("mamba2", d, opts, layer_idx=i, num_layers=n, norm_eps=eps)
              for i in range(n)]
    return PretrainedModel(vocab_size=c["vocab_size"], d_model=d, layers=["mamba2"] * n,
                           blocks=blocks, norm_eps=eps, tie=c.get("tie_word_embeddings", True),
                           model_type=t, source_config=c)


MIXER = {"conv1d.weight": "conv.weight", "conv1d.bias": "conv.bias", "norm.weight": "norm_weight"}


def mixer_name(rest: str) -> str:
    """A Mamba-2 mixer's tensor name (after 'mixer.') -> rnnzoo mamba2's."""
    return MIXER.get(rest, rest)


def rename(tensors: dict, c: dict) -> dict:
    out = {}
    for name, t in tensors.items():
        if ".mixer." in name:
            head, rest = name.split(".mixer.", 1)
            name = head + ".mixer." + mixer_name(rest)
            if rest == "conv1d.weight":
                t = t.squeeze(1)
        new = (name.replace("backbone.embeddings.", "embed.").replace("backbone.embedding.", "embed.")
               .replace("backbone.norm_f.", "norm.").replace("backbone.layers.", "blocks.")
               .replace("lm_head.", "head."))
        out[new] = t
    if c.get("tie_word_embeddings", True):
        out["head.weight"] = out["embed.weight"]
    return out
