"""Zamba2 checkpoints (transformers' `zamba2`) -> rnnzoo blocks with shared transformer blocks.

Zamba2 (Zyphra 2024, "The Zamba2 Suite", arXiv:2411.15242; the shared block of Zamba,
Glorioso et al. 2024, arXiv:2405.16712) is a Mamba-2 stack into which a few transformer
blocks are woven, their weights shared across depths. With e the token embeddings:

    mamba layer:        x <- x + Mamba2(RMSNorm(x))
    hybrid layer i, the u-th hybrid layer, using shared block b = u mod num_mem_blocks:
        a = Attn_b(RMSNorm_2d([x ; e]))       attention 2d wide in, d out; q, k, v each plus
                                              this use's adapter U_u D_u [x ; e]' (rank r)
        t = W_i (W_down (act(g) * h)),  [g ; h] = (W_gate_up + U'_u D'_u) RMSNorm(a)
        x <- x + Mamba2(RMSNorm(x + t))       (the residual skips t)
    logits = W_head RMSNorm(x)

No residual inside the shared block; W_i (d x d) is each hybrid layer's own. Attention
scores are scaled by 1 / sqrt(head_dim / 2), head_dim = 2d / heads: the sqrt(2) is folded
into W_q and the q adapters' U. Rotary positions on whole heads when use_mem_rope, else
none. The Mamba-2 is rnnzoo's `mamba2` (head_dim = expand d / n_mamba_heads, the gated
norm after the gate, dt >= time_step_min as transformers' forward clamps it: `dt_floor`).

Sharing is true sharing: every use of block b holds the same modules (norms, W_qkv, W_o,
W_gate_up, W_down: one set of Parameters, so a gradient step moves all uses) plus its own
adapters and its own attention state (KV cache): `step` carries one cache per use. Like a
tied head, a shared module appears in `state_dict` under each use's name.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rnnzoo.hf.hybrid import attention_options, mamba2_options, mixer_tensors, take
from rnnzoo.hf.load import need, number
from rnnzoo.hf.model import PretrainedModel, activation, block
from rnnzoo.layers.attention import Attention
from rnnzoo.models.blocks import Block, RMSNorm, build_mixer

ACTS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "silu": "silu", "swish": "silu"}
KINDS = {"mamba": "mamba", "linear_attention": "mamba", "hybrid": "hybrid"}


class Adapted(nn.Module):
    """x (..., n) -> base(x) + [U_1 D_1 x ; U_2 D_2 x ; ...]: a (shared) linear map plus one
    use's low-rank adapters (LoRA-style, Hu et al. 2021, arXiv:2106.09685), one per part of
    the output (`parts`: their widths, summing to base's out width); adapters.j = (D_j, U_j)."""

    def __init__(self, base: nn.Linear, rank: int, parts: list[int]):
        super().__init__()
        if sum(parts) != base.out_features:
            raise ValueError(f"adapter parts {parts} do not add up to {base.out_features}")
        self.base = base
        self.adapters = nn.ModuleList(
            nn.Sequential(nn.Linear(base.in_features, rank, bias=False),
                          nn.Linear(rank, p, bias=False)) for p in parts)

    def forward(self, x):
        return self.base(x) + torch.cat([a(x) for a in self.adapters], -1)


class SharedWeights(nn.Module):
    """One shared transformer block's weights (built once, held by each of its uses):
    norm (2d), qkv (2d -> (H + 2 KV) Dh), out_proj (H Dh -> d), ffn_norm (d),
    gate_up (d -> 2 ffn), down (ffn -> d)."""

    def __init__(self, d: int, heads: int, kv_heads: int, head_dim: int, ffn: int, eps: float):
        super().__init__()
        self.norm = RMSNorm(2 * d, eps=eps)
        self.qkv = nn.Linear(2 * d, (heads + 2 * kv_heads) * head_dim, bias=False)
        self.out_proj = nn.Linear(heads * head_dim, d, bias=False)
        self.ffn_norm = RMSNorm(d, eps=eps)
        self.gate_up = nn.Linear(d, 2 * ffn, bias=False)
        self.down = nn.Linear(ffn, d, bias=False)


class AdaptedMLP(nn.Module):
    """x (..., d) -> W_down (act(g) * h), [g ; h] = gate_up(x) (gate_up: the shared W_gate_up,
    with this use's adapter when it has one)."""

    def __init__(self, gate_up: nn.Module, down: nn.Linear, act: str):
        super().__init__()
        self.gate_up, self.down, self.act = gate_up, down, act

    def forward(self, x):
        g, h = self.gate_up(x).chunk(2, -1)
        return self.down(activation(self.act, g) * h)


class HybridBlock(Block):
    """One use of a shared block, then the layer's Mamba-2 (the module docstring's hybrid
    layer). x, emb: (B, T, d) -> (B, T, d); state (attention's, mamba2's).

    `mixer` is the Mamba-2 (its modes are the block's: `sequential` runs the attention
    token by token too, `chunk` and `parallel` run it in parallel); `attention` is rnnzoo's
    `attention` 2d wide with the shared W_qkv (plus adapters) and W_o (2d -> d)."""

    def __init__(self, mamba: nn.Module, shared: SharedWeights, attention: dict, *,
                 rank: int, attn_adapter: bool, act: str, d: int, eps: float,
                 max_len: int):
        super().__init__(mamba, d, mlp_ratio=0)
        self.norm = RMSNorm(d, eps=eps)
        with torch.device("meta"):  # its projections are replaced by the shared ones below
            att = Attention(2 * d, max_len=max_len, **attention)
        H, KV, Dh = att.num_heads, att.num_kv_heads, att.head_dim
        att.qkv = (Adapted(shared.qkv, rank, [H * Dh, KV * Dh, KV * Dh]) if attn_adapter
                   else shared.qkv)
        att.out_proj = shared.out_proj
        self.attn_norm, self.attention, self.ffn_norm = shared.norm, att, shared.ffn_norm
        self.ffn = AdaptedMLP(Adapted(shared.gate_up, rank, [shared.gate_up.out_features]),
                              shared.down, act)
        self.linear = nn.Linear(d, d, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        return (self.attention.init_state(batch_size, device, dtype),
                self.mixer.init_state(batch_size, device, dtype))

    def forward(self, x, state=None, *, emb, mode="auto", lengths=None, cu_seqlens=None,
                max_seqlen=None):
        s_a, s_m = state if state is not None else (None, None)
        kw = dict(lengths=lengths)
        if cu_seqlens is not None:
            kw = dict(cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
        a, s_a = self.attention(self.attn_norm(torch.cat([x, emb], -1)), s_a,
                                mode=mode if mode in ("auto", "sequential") else "parallel", **kw)
        t = self.linear(self.ffn(self.ffn_norm(a)))
        y, s_m = self.mixer(self.norm(x + t), s_m, mode=mode, **kw)
        return x + y, (s_a, s_m)

    def step(self, x_t, state=None, *, emb):
        s_a, s_m = state if state is not None else (None, None)
        a, s_a = self.attention.step(self.attn_norm(torch.cat([x_t, emb], -1)), s_a)
        t = self.linear(self.ffn(self.ffn_norm(a)))
        y, s_m = self.mixer.step(self.norm(x_t + t), s_m)
        return x_t + y, (s_a, s_m)


class Zamba2Model(PretrainedModel):
    """tokens (B, T) -> logits (B, T, vocab), state: a PretrainedModel whose hybrid blocks
    also read the token embeddings. The state: one entry per block, (attention's, mamba2's)
    for a hybrid block."""

    def init_state(self, batch_size, device=None, dtype=None):
        return tuple((b if isinstance(b, HybridBlock) else b.mixer).init_state(
            batch_size, device=device, dtype=dtype) for b in self.blocks)

    def forward(self, inputs, state=None, *, mode="auto", lengths=None, cu_seqlens=None,
                max_seqlen=None):
        x = emb = self._embed(inputs)
        state = state if state is not None else (None,) * len(self.blocks)
        packed = {} if cu_seqlens is None else dict(cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
        new = []
        for b, s in zip(self.blocks, state):
            extra = dict(emb=emb) if isinstance(b, HybridBlock) else {}
            x, s = b(x, s, mode=mode, lengths=lengths, **packed, **extra)
            new.append(s)
        return self.head(self.norm(x)), tuple(new)

    def step(self, inputs_t, state=None):
        x = emb = self._embed(inputs_t)
        state = state if state is not None else (None,) * len(self.blocks)
        new = []
        for b, s in zip(self.blocks, state):
            x, s = b.step(x, s, emb=emb) if isinstance(b, HybridBlock) else b.step(x, s)
            new.append(s)
        return self.head(self.norm(x)), tuple(new)


def kinds(c: dict) -> list[str]:
    """'mamba' or 'hybrid' for each layer, bottom first."""
    t = c["model_type"]
    types = c.get("layers_block_type")
    need(isinstance(types, list) and len(types) == c["num_hidden_layers"], t,
         "a config without layers_block_type (one entry per layer)")
    for k in types:
        need(k in KINDS, t, f"layer type {k!r}")
    return [KINDS[k] for k in types]


def build(c: dict, max_len: int = 4096) -> PretrainedModel:
    t, d = c["model_type"], c["hidden_size"]
    need(not c.get("add_bias_linear", False), t, "add_bias_linear=True")
    act = ACTS.get(c.get("hidden_act", "gelu"))
    need(act is not None, t, f"hidden_act={c.get('hidden_act')!r}")
    H = c["num_attention_heads"]
    KV = c.get("num_key_value_heads") or H
    need(2 * d % H == 0, t, "num_attention_heads not dividing 2 * hidden_size")
    Dh = 2 * d // H
    attn_adapter = bool(c.get("use_shared_attention_adapter", False))
    need(not attn_adapter or KV == H, t, "shared attention adapters with num_key_value_heads "
         "!= num_attention_heads")
    rope = bool(c.get("use_mem_rope", False))
    att = attention_options({**c, "head_dim": Dh, "num_key_value_heads": KV}, t, rope=rope,
                            max_len=max_len)
    att = {k: att[k] for k in ("num_heads", "head_dim", "num_kv_heads", "rotary_dim", "rope_base")}
    heads, expand = c.get("n_mamba_heads", 8), c.get("mamba_expand", 2)
    mam = mamba2_options({**c, "mamba_headdim": int(expand * d) // heads}, dict(
        num_heads="n_mamba_heads", head_dim="mamba_headdim", expand="mamba_expand",
        n_groups="mamba_ngroups", state_size="mamba_d_state", conv_kernel="mamba_d_conv",
        chunk_size="chunk_size"), t)
    mam["dt_floor"] = number(c.get("time_step_min", 1e-3))
    eps, rank, M = c.get("rms_norm_eps", 1e-5), c.get("adapter_rank", 128), c.get("num_mem_blocks", 1)
    types = kinds(c)
    shared = [SharedWeights(d, H, KV, Dh, c.get("intermediate_size") or 4 * d, eps)
              for _ in range(min(M, types.count("hybrid")))]
    blocks, names, uses = [], [], 0
    n = len(types)
    for i, kind in enumerate(types):
        if kind == "mamba":
            blocks.append(block("mamba2", d, mam, layer_idx=i, num_layers=n, norm_eps=eps))
            names.append("mamba2")
            continue
        mamba = build_mixer("mamba2", d, mam, layer_idx=i, num_layers=n, max_len=max_len)
        blocks.append(HybridBlock(mamba, shared[uses % M], att, rank=rank,
                                  attn_adapter=attn_adapter, act=act, d=d, eps=eps,
                                  max_len=max_len))
        names.append("shared_attention+mamba2")
        uses += 1
    return Zamba2Model(vocab_size=c["vocab_size"], d_model=d, layers=names, blocks=blocks,
                       norm_eps=eps, tie=c.get("tie_word_embeddings", True), model_type=t,
                       source_config=c)


def rename(tensors: dict, c: dict) -> dict:
    w = dict(tensors)
    types, M = kinds(c), c.get("num_mem_blocks", 1)
    hybrid = [i for i, k in enumerate(types) if k == "hybrid"]
    out = {"embed.weight": w.pop("model.embed_tokens.weight"),
           "norm.weight": w.pop("model.final_layernorm.weight")}
    if c.get("tie_word_embeddings", True):
        w.pop("lm_head.weight", None)
        out["head.weight"] = out["embed.weight"]
    elif "lm_head.weight" in w:
        out["head.weight"] = w.pop("lm_head.weight")
    # shared block b is stored at its first use; copies at later uses (the tied duplicates
    # some checkpoints hold) are dropped, as transformers ties them to the first
    shared = [take(w, f"model.layers.{i}.shared_transformer.") for i in hybrid[:M]]
    for i in hybrid[M:]:
        take(w, f"model.layers.{i}.shared_transformer.")
    used = [set() for _ in shared]
    root2 = math.sqrt(2.0)  # the 1 / sqrt(head_dim / 2) scores: into W_q and the q adapters' U

    def get(b, name):
        used[b].add(name)
        return shared[b][name]

    for u, i in enumerate(hybrid):
        b, p, s = u % M, f"blocks.{i}.", f"model.layers.{i}."
        qkv = torch.cat([get(b, "self_attn.q_proj.weight") * root2,
                         get(b, "self_attn.k_proj.weight"), get(b, "self_attn.v_proj.weight")])
        attn_adapter = c.get("use_shared_attention_adapter", False)
        out[p + ("attention.qkv.base.weight" if attn_adapter else "attention.qkv.weight")] = qkv
        if attn_adapter:
            for j, x in enumerate("qkv"):
                a = f"self_attn.linear_{x}_adapter_list.{u}."
                out[p + f"attention.qkv.adapters.{j}.0.weight"] = get(b, a + "0.weight")
                out[p + f"attention.qkv.adapters.{j}.1.weight"] = get(b, a + "1.weight") * (
                    root2 if x == "q" else 1.0)
        out[p + "attention.out_proj.weight"] = get(b, "self_attn.o_proj.weight")
        out[p + "attn_norm.weight"] = get(b, "input_layernorm.weight")
        out[p + "ffn_norm.weight"] = get(b, "pre_ff_layernorm.weight")
        f = "feed_forward."
        out[p + "ffn.gate_up.base.weight"] = get(b, f + "gate_up_proj.weight")
        for k in "01":
            out[p + f"ffn.gate_up.adapters.0.{k}.weight"] = get(
                b, f + f"gate_up_proj_adapter_list.{u}.{k}.weight")
        out[p + "ffn.down.weight"] = get(b, f + "down_proj.weight")
        out[p + "linear.weight"] = w.pop(s + "linear.weight")
        out[p + "norm.weight"] = w.pop(s + "mamba_decoder.input_layernorm.weight")
        out.update(mixer_tensors("mamba2", take(w, s + "mamba_decoder.mamba."), p + "mixer."))
    for i, kind in enumerate(types):
        if kind == "mamba":
            p, s = f"blocks.{i}.", f"model.layers.{i}."
            out[p + "norm.weight"] = w.pop(s + "input_layernorm.weight")
            out.update(mixer_tensors("mamba2", take(w, s + "mamba."), p + "mixer."))
    for b, i in enumerate(hybrid[:M]):  # leftovers keep their names (from_pretrained names them)
        out.update({f"model.layers.{i}.shared_transformer.{k}": v
                    for k, v in shared[b].items() if k not in used[b]})
    out.update(w)
    return out
