"""RWKV-4 checkpoints (transformers' `rwkv`) -> rnnzoo blocks.

RWKV-4 (Peng et al. 2023, "RWKV: Reinventing RNNs for the Transformer Era",
arXiv:2305.13048): each layer is x + TimeMix(LN(x)) then h + ChannelMix(LN(h)), both
sublayers reading the previous token through a token shift, so each is a stateful mixer and
a layer is two rnnzoo blocks (LayerNorm pre-norms, no MLP). With x' the previous input:

    TimeMix:  k, v, r = W_k mix_k(x, x'), W_v mix_v(x, x'), W_r mix_r(x, x')
              (mix_a(x, x') = mu_a x + (1 - mu_a) x', per channel)
              wkv_t = (sum_{s<t} e^{-(t-1-s) w + k_s} v_s + e^{u + k_t} v_t)
                      / (sum_{s<t} e^{-(t-1-s) w + k_s} + e^{u + k_t}),   w = exp(time_decay)
              y = W_o (sigmoid(r) * wkv)          (u = time_first; per channel)
    ChannelMix: y = sigmoid(W_r mix_r(x, x')) * W_v relu(W_k mix_k(x, x'))^2

The sums run in the max-shifted form of the reference (state (num, den, max)). The first
layer's LayerNorm of the embeddings is folded into the embedding matrix (it acts on each
row alone). States: TimeMix (x' (B, d), num, den, max (B, A)); ChannelMix x' (B, d).
Mode: `sequential`. transformers' inference rescaling (rescale_every: hidden states halved
every few layers, W_o and W_v doubled to match) is an exact identity up to the LayerNorms'
eps, and is not applied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.hf.load import need
from rnnzoo.hf.model import PretrainedModel, block
from rnnzoo.layers.base import RecurrentLayer


def mix(mu, x, prev):
    return x * mu + prev * (1 - mu)


class TimeMix(RecurrentLayer):
    """x: (B, T, d_model) -> y; state (x' (B, d_model), num, den, max (B, width))."""

    modes = ("sequential",)

    def __init__(self, d_model: int, width: int | None = None):
        super().__init__(d_model)
        A = width or d_model
        self.time_decay, self.time_first = nn.Parameter(torch.zeros(A)), nn.Parameter(torch.zeros(A))
        self.mix_k, self.mix_v, self.mix_r = (nn.Parameter(torch.full((d_model,), 0.5))
                                              for _ in range(3))
        self.key, self.value, self.receptance = (nn.Linear(d_model, A, bias=False) for _ in range(3))
        self.output = nn.Linear(A, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        sd, A = state_dtype(dtype), self.time_decay.shape[0]
        z = torch.zeros(batch_size, A, device=device, dtype=sd)
        return (torch.zeros(batch_size, self.d_model, device=device, dtype=sd), z, z.clone(),
                torch.full((batch_size, A), -1e38, device=device, dtype=sd))

    def _forward(self, x, state, mode):
        prev, num, den, top = state
        cdt = compute_dtype(x)
        shifted = torch.cat([prev[:, None].to(x.dtype), x[:, :-1]], 1)
        k = self.key(mix(self.mix_k, x, shifted)).to(cdt)
        v = self.value(mix(self.mix_v, x, shifted)).to(cdt)
        r = torch.sigmoid(self.receptance(mix(self.mix_r, x, shifted)).to(cdt))
        w, u = -self.time_decay.to(cdt).exp(), self.time_first.to(cdt)
        num, den, top = num.to(cdt), den.to(cdt), top.to(cdt)
        out = []
        for k_t, v_t in zip(k.unbind(1), v.unbind(1)):
            m = torch.maximum(top, k_t + u)
            e1, e2 = (top - m).exp(), (k_t + u - m).exp()
            out.append((e1 * num + e2 * v_t) / (e1 * den + e2))
            m = torch.maximum(top + w, k_t)
            e1, e2 = (top + w - m).exp(), (k_t - m).exp()
            num, den, top = e1 * num + e2 * v_t, e1 * den + e2, m
        y = self.output((r * torch.stack(out, 1)).to(x.dtype))
        return y, (x[:, -1].to(prev.dtype), num, den, top)


class ChannelMix(RecurrentLayer):
    """x: (B, T, d_model) -> y; state x' (B, d_model)."""

    modes = ("sequential",)

    def __init__(self, d_model: int, hidden: int):
        super().__init__(d_model)
        self.mix_k, self.mix_r = (nn.Parameter(torch.full((d_model,), 0.5)) for _ in range(2))
        self.key = nn.Linear(d_model, hidden, bias=False)
        self.receptance = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(hidden, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        return torch.zeros(batch_size, self.d_model, device=device, dtype=state_dtype(dtype))

    def _forward(self, x, state, mode):
        shifted = torch.cat([state[:, None].to(x.dtype), x[:, :-1]], 1)
        k = F.relu(self.key(mix(self.mix_k, x, shifted))).square()
        y = torch.sigmoid(self.receptance(mix(self.mix_r, x, shifted))) * self.value(k)
        return y, x[:, -1].to(state.dtype)


def build(c: dict, max_len: int = 4096) -> PretrainedModel:
    t, d, n = c["model_type"], c["hidden_size"], c["num_hidden_layers"]
    need(c.get("rescale_every", 6) >= 0, t, "rescale_every < 0")
    eps = c.get("layer_norm_epsilon", 1e-5)
    width, hidden = c.get("attention_hidden_size") or d, c.get("intermediate_size") or 4 * d
    blocks = []
    for i in range(n):
        for mixer in (TimeMix(d, width), ChannelMix(d, hidden)):
            b = block(mixer, d, {}, layer_idx=len(blocks), num_layers=2 * n, norm_eps=eps)
            b.norm = nn.LayerNorm(d, eps=eps)
            blocks.append(b)
    model = PretrainedModel(vocab_size=c["vocab_size"], d_model=d, layers=["rwkv4_time_mix",
                            "rwkv4_channel_mix"] * n, blocks=blocks, norm_eps=eps,
                            tie=c.get("tie_word_embeddings", False), model_type=t, source_config=c)
    model.norm = nn.LayerNorm(d)  # ln_out keeps nn.LayerNorm's default eps in transformers
    return model


def rename(tensors: dict, c: dict) -> dict:
    eps = c.get("layer_norm_epsilon", 1e-5)
    w = dict(tensors)
    emb = w.pop("rwkv.embeddings.weight")
    out = {"embed.weight": F.layer_norm(emb, emb.shape[-1:], w.pop("rwkv.blocks.0.pre_ln.weight"),
                                        w.pop("rwkv.blocks.0.pre_ln.bias"), eps),
           "norm.weight": w.pop("rwkv.ln_out.weight"), "norm.bias": w.pop("rwkv.ln_out.bias")}
    if "head.weight" in w:
        out["head.weight"] = w.pop("head.weight")
    for i in range(c["num_hidden_layers"]):
        p, a, f = f"rwkv.blocks.{i}.", f"blocks.{2 * i}.", f"blocks.{2 * i + 1}."
        for x in ("weight", "bias"):
            out[a + "norm." + x] = w.pop(p + "ln1." + x)
            out[f + "norm." + x] = w.pop(p + "ln2." + x)
        for x in ("time_decay", "time_first"):
            out[a + "mixer." + x] = w.pop(p + "attention." + x)
        for x in "kvr":
            name = {"k": "key", "v": "value", "r": "receptance"}[x]
            out[a + f"mixer.mix_{x}"] = w.pop(p + f"attention.time_mix_{name}").flatten()
            out[a + f"mixer.{name}.weight"] = w.pop(p + f"attention.{name}.weight")
        out[a + "mixer.output.weight"] = w.pop(p + "attention.output.weight")
        for x in "kr":
            name = {"k": "key", "r": "receptance"}[x]
            out[f + f"mixer.mix_{x}"] = w.pop(p + f"feed_forward.time_mix_{name}").flatten()
            out[f + f"mixer.{name}.weight"] = w.pop(p + f"feed_forward.{name}.weight")
        out[f + "mixer.value.weight"] = w.pop(p + "feed_forward.value.weight")
    out.update(w)  # leftovers: named
    if "head.weight" not in out:
        out["head.weight"] = out["embed.weight"]
    return out
