"""MiniMax-01 checkpoints (transformers' `minimax`) -> rnnzoo blocks.

MiniMax-01 (MiniMax 2025, arXiv:2501.08313) interleaves lightning attention with softmax
attention (`layer_types`), each followed by a Mixtral-style MoE (softmax router, top-k
renormalised, SwiGLU experts). Its layers keep the normalised stream as the residual and
scale both branches (DeepNorm-like alpha / beta per kind of layer):

    h = RMSNorm(x);  h = alpha h + beta mixer(h);  h = RMSNorm(h);  y = alpha_m h + beta_m MoE(h)

`MiniMaxBlock` is that wiring around rnnzoo mixers: `lightning_attention` (its slopes as
MiniMax's code computes them, depth_eps=1e-5; the checkpoint's slope_rate is checked
against them) and `attention` (GQA, full rotary).
"""

from __future__ import annotations

import torch

from rnnzoo.hf.load import UnsupportedCheckpoint, need
from rnnzoo.hf.model import PretrainedModel, SparseMoE, split_layers
from rnnzoo.layers.lightning_attention import minimax_slopes
from rnnzoo.models.blocks import Block, RMSNorm, build_mixer


class MiniMaxBlock(Block):
    """x: (B, T, d) -> (B, T, d): the wiring above; the mixer's state passes through."""

    def __init__(self, mixer, d_model: int, mlp, norm_eps: float, alpha: float, beta: float,
                 mlp_alpha: float, mlp_beta: float):
        super().__init__(mixer, d_model, mlp_ratio=0)
        self.norm, self.mlp_norm, self.mlp = RMSNorm(d_model, norm_eps), RMSNorm(d_model, norm_eps), mlp
        self.alpha, self.beta, self.mlp_alpha, self.mlp_beta = alpha, beta, mlp_alpha, mlp_beta

    def _out(self, h, y):
        h = self.mlp_norm(self.alpha * h + self.beta * y)
        return self.mlp_alpha * h + self.mlp_beta * self.mlp(h)

    def forward(self, x, state=None, *, mode="auto", lengths=None, cu_seqlens=None,
                max_seqlen=None):
        packed = {} if cu_seqlens is None else dict(cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
        h = self.norm(x)
        y, state = self.mixer(h, state, mode=mode, lengths=lengths, **packed)
        return self._out(h, y), state

    def step(self, x_t, state=None):
        h = self.norm(x_t)
        y_t, state = self.mixer.step(h, state)
        return self._out(h, y_t), state


def kinds(c: dict) -> list[str]:
    return c.get("layer_types") or ["full_attention" if (i + 1) % 2 else "linear_attention"
                                    for i in range(c["num_hidden_layers"])]


def build(c: dict, max_len: int = 4096) -> PretrainedModel:
    t, d = c["model_type"], c["hidden_size"]
    need(c.get("hidden_act", "silu") == "silu", t, f"hidden_act={c.get('hidden_act')!r}")
    need(c.get("sliding_window") is None, t, "sliding_window")
    rope = c.get("rope_parameters") or {}
    need(rope.get("rope_type", "default") == "default", t, f"rope_type={rope.get('rope_type')!r}")
    need(rope.get("partial_rotary_factor", 1.0) == 1.0, t, "partial_rotary_factor != 1")
    heads, eps = c["num_attention_heads"], c.get("rms_norm_eps", 1e-5)
    head_dim = c.get("head_dim") or d // heads
    types = kinds(c)
    blocks = []
    for i, kind in enumerate(types):
        lin = kind == "linear_attention"
        name = "lightning_attention" if lin else "attention"
        opts = (dict(num_heads=heads, head_dim=head_dim, depth_eps=1e-5) if lin else
                dict(num_heads=heads, head_dim=head_dim, max_len=max_len,
                     num_kv_heads=c.get("num_key_value_heads") or heads,
                     rope_base=rope.get("rope_theta", 1e6)))
        mixer = build_mixer(name, d, opts, layer_idx=i, num_layers=len(types), max_len=max_len)
        moe = SparseMoE(d, c["intermediate_size"], c["num_local_experts"], c["num_experts_per_tok"])
        ab = "linear_attn" if lin else "full_attn"
        blocks.append(MiniMaxBlock(mixer, d, moe, eps, c.get(f"{ab}_alpha_factor", 1),
                                   c.get(f"{ab}_beta_factor", 1), c.get("mlp_alpha_factor", 1),
                                   c.get("mlp_beta_factor", 1)))
    return PretrainedModel(vocab_size=c["vocab_size"], d_model=d,
                           layers=["lightning_attention" if k == "linear_attention" else "attention"
                                   for k in types], blocks=blocks, norm_eps=eps,
                           tie=c.get("tie_word_embeddings", False), model_type=t, source_config=c)


def lightning(w: dict, c: dict, i: int, p: str) -> dict:
    a, H = "self_attn.", c["num_attention_heads"]
    slopes = w.pop(a + "slope_rate").flatten()
    want = minimax_slopes(H, i, len(kinds(c)), dtype=slopes.dtype, depth_eps=1e-5)
    if not torch.allclose(slopes, want, rtol=1e-5, atol=0):
        raise UnsupportedCheckpoint(f"minimax checkpoint: layer {i}'s slope_rate {slopes.tolist()} "
                                    f"is not MiniMax's formula {want.tolist()}")
    for x in ("query_decay", "key_decay", "diagonal_decay"):  # derived from the slopes
        w.pop(a + x)
    qkv = w.pop(a + "qkv_proj.weight")  # [q_h, k_h, v_h] per head -> [q; k; v]
    return {p + "qkv_proj.weight": qkv.view(H, 3, -1, qkv.shape[-1]).transpose(0, 1).flatten(0, 2),
            p + "norm_weight": w.pop(a + "norm.weight"), p + "g_proj.weight": w.pop(a + "output_gate.weight"),
            p + "o_proj.weight": w.pop(a + "out_proj.weight")}


def rename(tensors: dict, c: dict) -> dict:
    out, layers = split_layers(tensors, "model.norm.weight", centred=False)
    for i, w in layers.items():
        p, a = f"blocks.{i}.", "self_attn."
        out[p + "norm.weight"] = w.pop("input_layernorm.weight")
        out[p + "mlp_norm.weight"] = w.pop("post_attention_layernorm.weight")
        if a + "qkv_proj.weight" in w:
            out.update(lightning(w, c, i, p + "mixer."))
        else:
            out[p + "mixer.qkv.weight"] = torch.cat([w.pop(a + f"{x}_proj.weight") for x in "qkv"])
            out[p + "mixer.out_proj.weight"] = w.pop(a + "o_proj.weight")
        m = "block_sparse_moe."
        out[p + "mlp.router.weight"] = w.pop(m + "gate.weight")
        if m + "experts.gate_up_proj" in w:  # transformers' fused layout
            out[p + "mlp.gate_up"] = w.pop(m + "experts.gate_up_proj")
            out[p + "mlp.down"] = w.pop(m + "experts.down_proj")
        else:  # the released one: w1 (gate), w3 (up), w2 (down) per expert
            E = c["num_local_experts"]
            out[p + "mlp.gate_up"] = torch.stack([torch.cat([
                w.pop(f"{m}experts.{e}.w1.weight"), w.pop(f"{m}experts.{e}.w3.weight")])
                for e in range(E)])
            out[p + "mlp.down"] = torch.stack([w.pop(f"{m}experts.{e}.w2.weight") for e in range(E)])
        out.update({f"model.layers.{i}.{k}": v for k, v in w.items()})  # leftovers: named
    if "head.weight" not in out:
        out["head.weight"] = out["embed.weight"]
    return out
