"""Falcon-H1 checkpoints (transformers' `falcon_h1`) -> rnnzoo blocks.

Falcon-H1 (TII 2025, arXiv:2507.22448) runs attention and a Mamba-2 side by side in every
layer, on the same normed input, and sums them:

    h = RMSNorm(x);  x = x + m_so Mamba2(m_si h) + m_ao Attention(m_ai h)
    y = x + m_d W_down (silu(m_g W_gate RMSNorm(x)) * W_up RMSNorm(x))

`ParallelHybrid` is that mixer: rnnzoo's `attention` (GQA, rotary) and `mamba2` (its own
width `d_inner` = mamba_d_ssm; no gated norm unless mamba_rms_norm, then the norm before
the gate as mamba_norm_before_gate says), its state the pair. Every multiplier is linear
and sits next to a weight, so each is folded into it (exact up to rounding):

    m_ai into W_q, W_k, W_v, key_multiplier into W_k, m_ao into W_o;
    m_si and the per-part ssm_multipliers (z, x, B, C, dt) into the rows of the Mamba's
        W_in (dt's before dt_bias is added, as transformers scales it), m_so into its W_out;
    m_g into W_gate, m_d into W_down; lm_head_multiplier into the head (untied then);
    embedding_multiplier: the embedding's scale.
"""

from __future__ import annotations

import torch

from rnnzoo.hf import mamba2
from rnnzoo.hf.hybrid import attention_options
from rnnzoo.hf.load import need, number
from rnnzoo.hf.model import GatedMLP, PretrainedModel, block, split_layers
from rnnzoo.layers.base import RecurrentLayer, _as_tuple
from rnnzoo.models.blocks import build_mixer


class ParallelHybrid(RecurrentLayer):
    """x: (B, T, d_model) -> attention(x) + mamba(x); state: attention's tensors then
    mamba's, one flat tuple.

    Modes: `sequential` (both sublayers' reference), `chunk` (Mamba-2's chunkwise, attention
    in parallel) and `parallel` (both in parallel)."""

    modes = ("sequential", "chunk", "parallel")

    def __init__(self, attention: RecurrentLayer, mamba: RecurrentLayer):
        super().__init__(attention.d_model)
        self.attention, self.mamba = attention, mamba
        self._split = len(_as_tuple(attention.init_state(1, torch.device("meta"))))

    def init_state(self, batch_size, device=None, dtype=None):
        return (*_as_tuple(self.attention.init_state(batch_size, device, dtype)),
                *_as_tuple(self.mamba.init_state(batch_size, device, dtype)))

    def _parts(self, state):
        """The flat state -> (attention's, mamba's) in each layer's own form."""
        a, m = state[:self._split], state[self._split:]
        return a if len(a) > 1 else a[0], m if len(m) > 1 else m[0]

    def _forward(self, x, state, mode):
        s_a, s_m = self._parts(state)
        y_a, s_a = self.attention(x, s_a, mode="sequential" if mode == "sequential"
                                  else "parallel")
        y_m, s_m = self.mamba(x, s_m, mode=mode)
        return y_m + y_a, (*_as_tuple(s_a), *_as_tuple(s_m))

    def _step(self, x_t, state):
        s_a, s_m = self._parts(state)
        y_a, s_a = self.attention.step(x_t, s_a)
        y_m, s_m = self.mamba.step(x_t, s_m)
        return y_m + y_a, (*_as_tuple(s_a), *_as_tuple(s_m))


def d_ssm(c: dict) -> int:
    return c.get("mamba_d_ssm") or int(c.get("mamba_expand", 2) * c["hidden_size"])


def mamba_options(c: dict, t: str) -> dict:
    need(not c.get("mamba_proj_bias", False), t, "mamba_proj_bias=True")
    need(not c.get("projectors_bias", False), t, "projectors_bias=True")
    need(c.get("mamba_conv_bias", True), t, "mamba_conv_bias=False")
    limit = [number(v) for v in c.get("time_step_limit") or (0.0, float("inf"))]
    need(limit[0] == 0 and limit[1] == float("inf"), t, f"time_step_limit={limit} (a clamped dt)")
    width, heads = d_ssm(c), c.get("mamba_n_heads", 128)
    head_dim = c.get("mamba_d_head", "auto")
    head_dim = width // heads if head_dim == "auto" else head_dim
    need(heads * head_dim == width, t, "mamba_n_heads * mamba_d_head != mamba_d_ssm")
    return dict(d_state=c.get("mamba_d_state", 256), head_dim=head_dim,
                expand=c.get("mamba_expand", 2), d_inner=width, d_conv=c.get("mamba_d_conv", 4),
                n_groups=c.get("mamba_n_groups", 1), norm_eps=c.get("rms_norm_eps", 1e-5),
                chunk_size=min(64, c.get("mamba_chunk_size", 256)),
                gated_norm=bool(c.get("mamba_rms_norm", False)),
                norm_before_gate=bool(c.get("mamba_norm_before_gate", True)))


def build(c: dict, max_len: int = 4096) -> PretrainedModel:
    t, d = c["model_type"], c["hidden_size"]
    need(c.get("hidden_act", "silu") == "silu", t, f"hidden_act={c.get('hidden_act')!r}")
    need(not c.get("mlp_bias", False), t, "mlp_bias=True")
    # transformers' attention here is d / heads wide per head, whatever head_dim says
    att = attention_options({**c, "head_dim": None}, t, rope=True, max_len=max_len)
    mam = mamba_options(c, t)
    n, eps = c["num_hidden_layers"], c.get("rms_norm_eps", 1e-5)
    blocks = []
    for i in range(n):
        mixer = ParallelHybrid(
            build_mixer("attention", d, att, layer_idx=i, num_layers=n, max_len=max_len),
            build_mixer("mamba2", d, mam, layer_idx=i, num_layers=n, max_len=max_len))
        blocks.append(block(mixer, d, {}, layer_idx=i, num_layers=n, norm_eps=eps,
                            mlp=GatedMLP(d, c["intermediate_size"]), max_len=max_len))
    return PretrainedModel(vocab_size=c["vocab_size"], d_model=d,
                           layers=["attention+mamba2"] * n, blocks=blocks, norm_eps=eps,
                           tie=c.get("tie_word_embeddings", False)
                           and c.get("lm_head_multiplier", 1.0) == 1.0,
                           model_type=t, source_config=c,
                           embed_scale=c.get("embedding_multiplier", 1.0))


def zxbcdt_scale(c: dict) -> torch.Tensor:
    """The per-row scale of the Mamba's W_in: ssm_in_multiplier times ssm_multipliers' part
    (z, x, B, C, dt) of each row."""
    width, gn = d_ssm(c), c.get("mamba_n_groups", 1) * c.get("mamba_d_state", 256)
    m = c.get("ssm_multipliers") or [1.0] * 5
    sizes = (width, width, gn, gn, c.get("mamba_n_heads", 128))
    return torch.cat([torch.full((s,), float(k)) for s, k in zip(sizes, m)]) * c.get(
        "ssm_in_multiplier", 1.0)


def rename(tensors: dict, c: dict) -> dict:
    out, layers = split_layers(tensors, "model.final_layernorm.weight", centred=False)
    a_in, k_mul = c.get("attention_in_multiplier", 1.0), c.get("key_multiplier", 1.0)
    g_mul, d_mul = c.get("mlp_multipliers") or (1.0, 1.0)
    scale = zxbcdt_scale(c)
    for i, w in layers.items():
        p = f"blocks.{i}."
        out[p + "norm.weight"] = w.pop("input_layernorm.weight")
        out[p + "mlp_norm.weight"] = w.pop("pre_ff_layernorm.weight")
        f = "feed_forward."
        out[p + "mlp.gate.weight"] = w.pop(f + "gate_proj.weight") * g_mul
        out[p + "mlp.up.weight"] = w.pop(f + "up_proj.weight")
        out[p + "mlp.down.weight"] = w.pop(f + "down_proj.weight") * d_mul
        a, m = "self_attn.", p + "mixer."
        out[m + "attention.qkv.weight"] = torch.cat([
            w.pop(a + "q_proj.weight") * a_in, w.pop(a + "k_proj.weight") * (a_in * k_mul),
            w.pop(a + "v_proj.weight") * a_in])
        out[m + "attention.out_proj.weight"] = w.pop(a + "o_proj.weight") * c.get(
            "attention_out_multiplier", 1.0)
        for k in [k for k in w if k.startswith("mamba.")]:
            rest, t = k[len("mamba."):], w.pop(k)
            if rest == "conv1d.weight":
                t = t.squeeze(1)
            elif rest == "in_proj.weight":
                t = t * scale.to(t.dtype)[:, None]
            elif rest == "out_proj.weight":
                t = t * c.get("ssm_out_multiplier", 1.0)
            out[m + "mamba." + mamba2.mixer_name(rest)] = t
        out.update({f"model.layers.{i}.{k}": v for k, v in w.items()})  # leftovers: named
    if "head.weight" not in out:
        out["head.weight"] = out["embed.weight"]
    out["head.weight"] = out["head.weight"] * c.get("lm_head_multiplier", 1.0)
    return out
