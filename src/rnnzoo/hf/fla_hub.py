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
    retnet          `FlaRetNet`, rnnzoo's `retnet` with fla's rotary frequencies
                    theta_j = 10000^(-2j/K) (GPT-NeoX pairs (j, j + K/2): q, k rows reordered to
                    rnnzoo's adjacent pairs) and a per-head RMSNorm in place of the GroupNorm
    hgrn2           `FlaHGRN2`, rnnzoo's `hgrn2` with fla's per-channel lower bound
                    (beta_l = cumsum(softmax_layers(lower_bounds))_l - its first term, so 0 at
                    layer 0) and one RMSNorm over all heads; fla's q k^T scale K^-1/2 is folded
                    into i_proj (o is linear in v)
    rwkv7           its own layout (`build_rwkv7`): per layer two blocks with LayerNorm pre-norms,
                    `FlaRWKV7` (rnnzoo's `rwkv7` plus the value residual: later layers mix
                    their v with layer 0's, handed over by a `ValueCarrier` the layers share;
                    the decay / learning-rate / gate low-rank factors zero-padded to one width)
                    and `FeedForward7` (token-shifted relu^2 channel mixing); layer 0's extra
                    LayerNorm of the embeddings folded into the embedding matrix; LayerNorm head

Layers the config's `attn` names (fla's hybrids) are rnnzoo's `attention` (GQA, rotary over
the whole head, optional window). The options fla's models read from the config but
rnnzoo's layers do not cover are refused by name (hf.load.UnsupportedCheckpoint): attention
residuals (`attnres_block_size`), short convolutions on GLA / RetNet / HGRN2, feature maps,
GQA (num_kv_heads), non-swish gates, RWKV-7's norm_eps other than 1e-5 or per-layer
value_dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.hf.load import need
from rnnzoo.hf.model import GatedMLP, PretrainedModel, block
from rnnzoo.hf.rwkv import ChannelMix, mix
from rnnzoo.layers.hgrn2 import HGRN2
from rnnzoo.layers.norms import HeadNorm
from rnnzoo.layers.retnet import RetNet
from rnnzoo.layers.rotary import frequencies
from rnnzoo.layers.rwkv7 import RWKV7
from rnnzoo.models.blocks import RMSNorm

# model_type -> the rnnzoo layer its mixer maps onto
LAYERS = {"gla": "gla", "gated_deltanet": "gated_deltanet", "delta_net": "deltanet",
          "retnet": "retnet", "hgrn2": "hgrn2", "rwkv7": "rwkv7"}


class ValueCarrier:
    """Layer 0's values v (B, T, H, K) of the tokens the stack is reading, for RWKV-7's
    value residual in the later layers (`FlaRWKV7`)."""

    v = None


class FlaRWKV7(RWKV7):
    """rnnzoo's rwkv7 with RWKV-7's value residual as fla computes it (Peng et al. 2025,
    arXiv:2503.14456): layer 0 keeps its v in the stack's `carrier`; a later layer's values
    are v + (v_0 - v) sigmoid(v_b + x_v W_v1 W_v2), x_v its token-shifted v input.
    x: (B, T, d_model) -> y; state as rwkv7's. The layers of one stack share the carrier, so
    they run in order on the same tokens: forward and step; right-padded `lengths` and
    packed `cu_seqlens` (whose generic paths re-run a layer on part of the batch) are refused.
    """

    def __init__(self, d_model: int, carrier: ValueCarrier, first: bool, v_rank: int = 1,
                 **options):
        super().__init__(d_model, **options)
        self.carrier, self.first = carrier, first
        if not first:
            D = self.num_heads * self.head_dim
            self.v0 = nn.Parameter(torch.zeros(D))
            self.v1, self.v2 = nn.Parameter(torch.zeros(d_model, v_rank)), nn.Parameter(torch.zeros(v_rank, D))

    def forward(self, x, state=None, *, lengths=None, cu_seqlens=None, **kwargs):
        if lengths is not None or cu_seqlens is not None:
            raise ValueError("fla RWKV-7 checkpoints (value residual across layers): lengths and "
                             "cu_seqlens are not supported; run each sequence alone")
        return super().forward(x, state, **kwargs)

    def op_inputs(self, x, x_last):
        r, w, k, v, a, b, g, new_last = super().op_inputs(x, x_last)
        if self.first:
            self.carrier.v = v
        else:
            shifted = torch.cat([x_last[:, None].to(x.dtype), x[:, :-1]], 1)
            xv = (x + (shifted - x) * self.mix[3]).to(v.dtype)
            mixing = torch.sigmoid(self.v0.to(v.dtype) + xv @ self.v1.to(v.dtype) @ self.v2.to(v.dtype))
            v = torch.lerp(v, self.carrier.v, mixing.view(v.shape))
        return r, w, k, v, a, b, g, new_last


class FeedForward7(ChannelMix):
    """RWKV-7's channel mixing: W_v relu(W_k mix_k(x, x'))^2 (RWKV-4's without the receptance
    gate; mix_k = 1 - fla's x_k). x: (B, T, d_model) -> y; state x' (B, d_model)."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__(d_model, hidden)
        del self.receptance, self.mix_r

    def _forward(self, x, state, mode):
        shifted = torch.cat([state[:, None].to(x.dtype), x[:, :-1]], 1)
        y = self.value(F.relu(self.key(mix(self.mix_k, x, shifted))).square())
        return y, x[:, -1].to(state.dtype)


def rwkv7_ranks(c: dict) -> dict:
    """fla's low-rank widths of the decay, learning-rate, gate and value-residual maps."""
    d, K = c["hidden_size"], c.get("head_dim") or c["hidden_size"] // c["num_heads"]
    f = K / 64

    def default(x, scale):
        return x if x is not None else max(32, int(round(scale * d ** 0.5 * f / 32) * 32))
    return dict(w=default(c.get("decay_low_rank_dim"), 2.5), a=default(c.get("a_low_rank_dim"), 2.5),
                g=c.get("gate_low_rank_dim") or max(32, int(round(5 * d ** 0.5 / 32) * 32)),
                v=default(c.get("v_low_rank_dim"), 1.7))


def build_rwkv7(c: dict) -> PretrainedModel:
    """Two rnnzoo blocks per fla layer (time mixing, channel mixing), LayerNorm pre-norms."""
    t, d, n = c["model_type"], c["hidden_size"], c["num_hidden_layers"]
    eps = c.get("norm_eps", 1e-5)
    need(eps == 1e-5, t, f"norm_eps={eps} (rwkv7's GroupNorm eps is head_dim * 1e-5)")
    need(c.get("norm_first", True), t, "norm_first=False")
    need(c.get("hidden_act", "sqrelu") == "sqrelu", t, f"hidden_act={c.get('hidden_act')!r}")
    need(all(v == d for v in c.get("value_dim") or [d]), t, f"value_dim={c.get('value_dim')}")
    K = c.get("head_dim") or d // c["num_heads"]
    ranks, carrier = rwkv7_ranks(c), ValueCarrier()
    hidden = c.get("intermediate_size") or 32 * ((d * (c.get("hidden_ratio") or 4) + 31) // 32)
    blocks = []
    for i in range(n):
        for mixer in (FlaRWKV7(d, carrier, i == 0, ranks["v"], num_heads=d // K, head_dim=K,
                               low_rank=max(ranks["w"], ranks["a"], ranks["g"])),
                      FeedForward7(d, hidden)):
            b = block(mixer, d, {}, layer_idx=len(blocks), num_layers=2 * n, norm_eps=eps)
            b.norm = nn.LayerNorm(d, eps=eps, bias=c.get("norm_bias", True))
            blocks.append(b)
    model = PretrainedModel(vocab_size=c["vocab_size"], d_model=d, layers=["rwkv7", "rwkv7_ffn"] * n,
                            blocks=blocks, norm_eps=eps, tie=c.get("tie_word_embeddings", False),
                            model_type=t, source_config=c)
    model.norm = nn.LayerNorm(d, eps=eps, bias=c.get("norm_bias", True))
    return model


def pad(t: torch.Tensor, rank: int, dim: int) -> torch.Tensor:
    """A low-rank factor zero-padded to `rank` along dim (the extra rank-1 terms add 0:
    tanh(0) = 0, and the sigmoid gate's 1/2 meets zero rows)."""
    shape = list(t.shape)
    shape[dim] = rank - shape[dim]
    return torch.cat([t, t.new_zeros(shape)], dim)


def rename_rwkv7(tensors: dict, c: dict) -> dict:
    w = dict(tensors)
    eps, bias = c.get("norm_eps", 1e-5), c.get("norm_bias", True)
    emb = w.pop("model.embeddings.weight")
    pre = [w.pop("model.layers.0.pre_norm.weight"), w.pop("model.layers.0.pre_norm.bias", None)]
    # layer 0's pre_norm acts on each embedding row alone: folded into the table
    out = {"embed.weight": F.layer_norm(emb, emb.shape[-1:], *pre, eps)}
    out["norm.weight"] = w.pop("model.norm.weight")
    if bias:
        out["norm.bias"] = w.pop("model.norm.bias")
    out["head.weight"] = out["embed.weight"] if c.get("tie_word_embeddings", False) else w.pop(
        "lm_head.weight")
    ranks = rwkv7_ranks(c)
    R = max(ranks["w"], ranks["a"], ranks["g"])
    for i in range(c["num_hidden_layers"]):
        src, a, f = f"model.layers.{i}.", f"blocks.{2 * i}.", f"blocks.{2 * i + 1}."
        own = {k[len(src):]: w.pop(k) for k in [k for k in w if k.startswith(src)]}
        for x, p in (("attn_norm", a), ("ffn_norm", f)):
            out[p + "norm.weight"] = own.pop(x + ".weight")
            if bias:
                out[p + "norm.bias"] = own.pop(x + ".bias")
        m = a + "mixer."
        out[m + "mix"] = torch.stack([own.pop(f"attn.x_{x}").flatten() for x in "rwkvag"])
        for x in ("r", "k", "v", "o"):
            out[m + f"{x}_proj.weight"] = own.pop(f"attn.{x}_proj.weight")
        for x in ("k_k", "k_a", "r_k"):
            out[m + x] = own.pop("attn." + x)
        for x in "wag":
            out[m + f"{x}1"] = pad(own.pop(f"attn.{x}_lora.lora.0.weight").t(), R, 1)
            out[m + f"{x}2"] = pad(own.pop(f"attn.{x}_lora.lora.2.weight").t(), R, 0)
        out[m + "w0"], out[m + "a0"] = own.pop("attn.w_lora.lora.2.bias"), own.pop("attn.a_lora.lora.2.bias")
        if i > 0:
            out[m + "v1"] = own.pop("attn.v_lora.lora.0.weight").t()
            out[m + "v2"] = own.pop("attn.v_lora.lora.2.weight").t()
            out[m + "v0"] = own.pop("attn.v_lora.lora.2.bias")
        out[m + "norm_weight"], out[m + "norm_bias"] = own.pop("attn.g_norm.weight"), own.pop("attn.g_norm.bias")
        out[f + "mixer.mix_k"] = 1 - own.pop("ffn.x_k").flatten()
        out[f + "mixer.key.weight"] = own.pop("ffn.key.weight")
        out[f + "mixer.value.weight"] = own.pop("ffn.value.weight")
        out.update({src + k: t for k, t in own.items()})  # leftovers: named by from_pretrained
    out.update(w)
    return out


def rope_theta(head_dim: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """theta_j = 10000^(-2j / head_dim), j < head_dim / 2 (fla's RotaryEmbedding)."""
    return frequencies(head_dim // 2, 10000.0, dtype, device)


class FlaRetNet(RetNet):
    """rnnzoo's retnet as fla's MultiScaleRetention computes it: rotary frequencies
    `rope_theta`, the gated per-head norm an RMSNorm of eps `norm_eps` (weights (H, V)).
    x: (B, T, d_model) -> y; state as retnet's."""

    theta = staticmethod(rope_theta)

    def __init__(self, d_model: int, norm_eps: float = 1e-6, **options):
        super().__init__(d_model, **options)
        self.norm = HeadNorm(self.num_heads, self.value_dim, kind="rms", eps=norm_eps)


class FlaHGRN2(HGRN2):
    """rnnzoo's hgrn2 as fla's HGRN2Attention computes it: forget gate
    f = beta + (1 - beta) sigmoid(x W_f) with beta (d_state * num_heads,) a buffer per
    channel (`bound`), and one RMSNorm over all heads' outputs, of eps 1e-5 whatever the
    config's norm_eps (fla applies it through rms_norm_linear, at that function's default).
    x: (B, T, d_model) -> y; state as hgrn2's."""

    def __init__(self, d_model: int, norm_eps: float = 1e-5, **options):
        super().__init__(d_model, **options)
        self.register_buffer("bound", torch.zeros(self.num_heads, self.key_dim))
        self.norm = RMSNorm(d_model, eps=norm_eps)

    def lion_inputs(self, x):
        q, k, v, log_f, scale = super().lion_inputs(x)  # beta = 0: log sigmoid, sigmoid(-f)
        beta = self.bound.to(log_f.dtype)
        return q, (1 - beta) * k, v, torch.logaddexp(beta.log(), torch.log1p(-beta) + log_f), scale

    def lion_output(self, o, x):
        return self.out_proj(self.norm(o.flatten(2)))


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
    t, d, H = c["model_type"], c["hidden_size"], c.get("num_heads")
    eps = c.get("norm_eps", 1e-6)
    if t in ("gla", "retnet", "hgrn2"):
        need(not c.get("use_short_conv", False), t, "use_short_conv=True")
    if t == "hgrn2":
        r = c.get("expand_ratio") or d // H  # fla: num_heads = hidden_size // expand_ratio
        need(d % r == 0, t, f"hidden_size={d} not a multiple of expand_ratio={r}")
        return dict(num_heads=d // r, d_state=r)
    if t == "retnet":
        need(c.get("num_kv_heads") in (None, H), t, f"num_kv_heads={c.get('num_kv_heads')}")
        need(c.get("feature_map") is None, t, f"feature_map={c.get('feature_map')!r}")
        need(c.get("use_output_gate", True), t, "use_output_gate=False")
        K = integer(d * c.get("expand_k", 1.0) / H, t, "hidden_size * expand_k / num_heads")
        V = integer(d * c.get("expand_v", 2.0) / H, t, "hidden_size * expand_v / num_heads")
        need(K % 2 == 0, t, f"key head width {K} odd (rotary pairs)")
        return dict(num_heads=H, head_dim=K, expand_v=integer(V / K, t, "expand_v / expand_k"),
                    norm_eps=eps)
    if t == "gla":
        need(c.get("num_kv_heads") in (None, H), t, f"num_kv_heads={c.get('num_kv_heads')}")
        need(c.get("feature_map") is None, t, f"feature_map={c.get('feature_map')!r}")
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


def attention(c: dict, i: int) -> dict | None:
    """rnnzoo attention options of layer i where the config's `attn` makes it softmax
    attention (fla.layers.attn.Attention: GQA, rotary on the whole head of base rope_theta,
    a window of window_size tokens counting the current one), else None."""
    specs = c.get("attn") or []
    spec = next((s for s in ([specs] if isinstance(specs, dict) else specs)
                 if i in s["layers"]), None)
    if spec is None:
        return None
    t, H = c["model_type"], spec["num_heads"]
    need(not spec.get("qkv_bias", False), t, "attn qkv_bias=True")
    need(not spec.get("qk_norm", False), t, "attn qk_norm=True")
    Dh = c["hidden_size"] // H
    return dict(num_heads=H, head_dim=Dh, num_kv_heads=spec.get("num_kv_heads") or H,
                rotary_dim=Dh, rope_base=spec.get("rope_theta") or 10000.0,
                window=spec.get("window_size"))


def build(c: dict, max_len: int = 4096) -> PretrainedModel:
    t, d, n = c["model_type"], c["hidden_size"], c["num_hidden_layers"]
    if t == "rwkv7":
        need(not c.get("attn"), t, f"attn={c.get('attn')} (softmax attention layers)")
        return build_rwkv7(c)
    need(c.get("attnres_block_size") is None, t,
         f"attnres_block_size={c.get('attnres_block_size')} (attention residuals)")
    need(c.get("hidden_act", "swish") in ("swish", "silu"), t, f"hidden_act={c.get('hidden_act')!r}")
    need(c.get("elementwise_affine", True) is not False, t, "elementwise_affine=False")
    eps, opts, layer = c.get("norm_eps", 1e-6), options(c), LAYERS[t]
    own = {"retnet": FlaRetNet, "hgrn2": FlaHGRN2}.get(layer)
    names, blocks = [], []
    for i in range(n):
        spec = attention(c, i)
        names.append(layer if spec is None else "attention")
        mixer = own(d, **opts) if own is not None and spec is None else names[-1]
        blocks.append(block(mixer, d, opts if spec is None else spec, layer_idx=i, num_layers=n,
                            norm_eps=eps, mlp=GatedMLP(d, intermediate(c)), max_len=max_len))
    for name, b in zip(names, blocks):  # fla's output norm eps and l2norm, where no option sets them
        if name == "gla":
            b.mixer.norm.eps = eps
        elif name == "deltanet":
            b.mixer.sqrt_eps = True
    return PretrainedModel(vocab_size=c["vocab_size"], d_model=d, layers=names,
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


def retnet_tensors(w: dict, c: dict, p: str) -> dict:
    """fla pairs rotary channels (j, j + K/2), rnnzoo's retnet (2j, 2j + 1): the q and k rows
    of each head are reordered alike (q . k unchanged)."""
    H = c["num_heads"]
    K = round(c["hidden_size"] * c.get("expand_k", 1.0)) // H
    order = torch.arange(K).view(2, K // 2).t().flatten()  # 0, K/2, 1, K/2 + 1, ...
    qk = [w.pop(f"attn.{x}_proj.weight").view(H, K, -1)[:, order].flatten(0, 1) for x in "qk"]
    norm = w.pop("attn.g_norm_swish_gate.weight", None)
    norm = w.pop("attn.g_norm.weight") if norm is None else norm  # fuse_norm=False's name
    return {p + "qk.weight": torch.cat(qk), p + "v.weight": w.pop("attn.v_proj.weight"),
            p + "gate.weight": w.pop("attn.g_proj.weight"),
            p + "norm.weight": norm.expand(H, -1).clone(),
            p + "out_proj.weight": w.pop("attn.o_proj.weight")}


def hgrn2_tensors(w: dict, c: dict, p: str) -> dict:
    d = c["hidden_size"]
    K = c.get("expand_ratio") or d // c["num_heads"]
    return {p + "qf.weight": torch.cat([w.pop("attn.q_proj.weight"), w.pop("attn.f_proj.weight")]),
            p + "i_proj.weight": w.pop("attn.i_proj.weight") * K ** -0.5,  # fla's scale
            p + "norm.weight": w.pop("attn.g_norm.weight"),
            p + "out_proj.weight": w.pop("attn.o_proj.weight")}


def hgrn2_bounds(w: dict, c: dict) -> torch.Tensor:
    """fla's per-layer forget-gate lower bounds (L, hidden_size), zero without use_lower_bound."""
    if "model.lower_bounds" not in w:
        return torch.zeros(c["num_hidden_layers"], c["hidden_size"])
    bounds = w.pop("model.lower_bounds").float().softmax(0)
    return bounds.cumsum(0) - bounds[0]


MIXERS = {"gla": gla_tensors, "retnet": retnet_tensors, "hgrn2": hgrn2_tensors}


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
    if c["model_type"] == "rwkv7":
        return rename_rwkv7(tensors, c)
    w = dict(tensors)
    out = {"embed.weight": w.pop("model.embeddings.weight"), "norm.weight": w.pop("model.norm.weight")}
    out["head.weight"] = w.pop("lm_head.weight", out["embed.weight"])
    if c.get("tie_word_embeddings", False):
        out["head.weight"] = out["embed.weight"]
    t = c["model_type"]
    mixer = MIXERS.get(t, delta_tensors)
    bounds = hgrn2_bounds(w, c) if t == "hgrn2" else None
    for i in range(c["num_hidden_layers"]):
        src, p = f"model.layers.{i}.", f"blocks.{i}."
        own = {k[len(src):]: w.pop(k) for k in [k for k in w if k.startswith(src)]}
        out[p + "norm.weight"] = own.pop("attn_norm.weight")
        out[p + "mlp_norm.weight"] = own.pop("mlp_norm.weight")
        for x in ("gate", "up", "down"):
            out[p + f"mlp.{x}.weight"] = own.pop(f"mlp.{x}_proj.weight")
        if attention(c, i) is not None:
            out[p + "mixer.qkv.weight"] = torch.cat([own.pop(f"attn.{x}_proj.weight") for x in "qkv"])
            out[p + "mixer.out_proj.weight"] = own.pop("attn.o_proj.weight")
        else:
            out.update(mixer(own, c, p + "mixer."))
        if bounds is not None and attention(c, i) is None:
            out[p + "mixer.bound"] = bounds[i].view(-1, c["expand_ratio"] or c["hidden_size"]
                                                    // c["num_heads"])
        out.update({src + k: t for k, t in own.items()})  # leftovers: named by from_pretrained
    out.update(w)
    return out
