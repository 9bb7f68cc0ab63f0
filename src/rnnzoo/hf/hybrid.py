"""The Mamba hybrids' one assembly (Bamba, Nemotron-H, Granite-4.0-H, Jamba): checkpoint
layers -> rnnzoo blocks.

These checkpoints are stacks of pre-norm residual sublayers, each x + f(RMSNorm(x)) with f a
Mamba(-2) mixer, softmax attention, an MLP or a MoE. Bamba and Granite put a mixer and an
FFN in every layer; Nemotron-H gives each its own layer. Either way a mixer sublayer and
the FFN sublayer right after it are one rnnzoo `Block` (x + mixer(norm(x)), then h +
mlp(mlp_norm(h))); a mixer followed by another mixer is a block without MLP. An FFN with
no mixer before it has no rnnzoo block to join and is refused.

A model's mapping module lists its sublayers (`Sublayer`: kind, where its tensors are)
and gives the options and FFN modules; `build` and `rename` here do the rest. Mixers:
rnnzoo's `mamba2` (tensors renamed as for `mamba2` checkpoints) and `attention` (q, k,
v concatenated; rotary on part of each head, or none); Jamba's Mamba-1 is rnnzoo `mamba`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rnnzoo.hf import mamba2
from rnnzoo.hf.load import UnsupportedCheckpoint, need
from rnnzoo.hf.model import PretrainedModel, block

MIXERS = ("mamba", "mamba2", "attention")


@dataclass(frozen=True)
class Sublayer:
    """One residual sublayer of a checkpoint: `kind` (mamba2, attention, mlp, moe), `norm`
    (its pre-norm's weight name) and `module` (the prefix of its module's tensors)."""
    kind: str
    norm: str
    module: str


def group(sublayers: list[Sublayer], model_type: str) -> list[tuple[Sublayer, Sublayer | None]]:
    """(mixer, the FFN right after it or None) for each mixer, bottom first."""
    blocks = []
    for s in sublayers:
        if s.kind in MIXERS:
            blocks.append((s, None))
        elif blocks and blocks[-1][1] is None:
            blocks[-1] = (blocks[-1][0], s)
        else:
            raise UnsupportedCheckpoint(f"{model_type} checkpoint: an {s.kind} layer ({s.module}) "
                                        f"with no mixer layer before it is not supported")
    return blocks


def mamba2_options(c: dict, keys: dict, t: str) -> dict:
    """rnnzoo mamba2 options from a hybrid config whose Mamba-2 keys are named as `keys`
    maps them (Mamba2Config's name -> this config's)."""
    own = {ours: c[theirs] for ours, theirs in keys.items() if c.get(theirs) is not None}
    if own.get("head_dim") == "auto":  # Bamba / Granite: expand * hidden_size / num_heads
        own["head_dim"] = own.get("expand", 2) * c["hidden_size"] // own["num_heads"]
    own["time_step_limit"] = c.get("time_step_limit")
    return mamba2.options(own, t, c["hidden_size"])


def attention_options(c: dict, t: str, *, rope: bool, max_len: int, window=None) -> dict:
    """rnnzoo attention options of a Llama-style attention config (GQA; rotary on
    partial_rotary_factor of each head, or no positions)."""
    need(not c.get("attention_bias", False), t, "attention_bias=True")
    heads = c["num_attention_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    params = c.get("rope_parameters") or {}
    need(not rope or params.get("rope_type", "default") == "default", t,
         f"rope_type={params.get('rope_type')!r}")
    return dict(num_heads=heads, head_dim=head_dim,
                num_kv_heads=c.get("num_key_value_heads") or heads,
                rotary_dim=int(head_dim * params.get("partial_rotary_factor", 1.0)) if rope else 0,
                rope_base=params.get("rope_theta", c.get("rope_theta", 10000.0)),
                max_len=max_len, window=window)


def build(c: dict, sublayers: list[Sublayer], *, mixers: dict, ffn, norm_eps: float,
          tie: bool, max_len: int, embed_scale: float = 1.0) -> PretrainedModel:
    """The model of `sublayers`; mixers: each mixer kind's rnnzoo options; ffn(sublayer)
    builds an FFN module."""
    blocks, names = [], []
    pairs = group(sublayers, c["model_type"])
    for i, (mix, f) in enumerate(pairs):
        names.append(mix.kind)
        blocks.append(block(mix.kind, c["hidden_size"], mixers[mix.kind],
                            layer_idx=i, num_layers=len(pairs), norm_eps=norm_eps,
                            mlp=None if f is None else ffn(f), max_len=max_len))
    return PretrainedModel(vocab_size=c["vocab_size"], d_model=c["hidden_size"], layers=names,
                           blocks=blocks, norm_eps=norm_eps, tie=tie, model_type=c["model_type"],
                           source_config=c, embed_scale=embed_scale)


def take(w: dict, prefix: str) -> dict:
    """Pop every tensor of w under `prefix`, keyed by the rest of its name."""
    keys = [k for k in w if k.startswith(prefix)]
    return {k[len(prefix):]: w.pop(k) for k in keys}


def mixer_tensors(kind: str, own: dict, p: str) -> dict:
    """A mixer's tensors (keyed after its module prefix) -> rnnzoo's under p."""
    if kind == "mamba2":
        return {p + mamba2.mixer_name(k): t.squeeze(1) if k == "conv1d.weight" else t
                for k, t in own.items()}
    if kind == "mamba":  # Jamba's weighted dt, B, C norms are mamba's bcdt_weight
        out = {p + k.replace("conv1d.", "conv."): t.squeeze(1) if k == "conv1d.weight" else t
               for k, t in own.items() if not k.endswith("layernorm.weight")}
        if "dt_layernorm.weight" in own:
            out[p + "bcdt_weight"] = torch.cat([own[f"{x}_layernorm.weight"] for x in ("dt", "b", "c")])
        return out
    out = {p + "qkv.weight": torch.cat([own.pop(f"{x}_proj.weight") for x in "qkv"]),
           p + "out_proj.weight": own.pop("o_proj.weight")}
    return {**out, **{p + "unplaced." + k: t for k, t in own.items()}}


def rename(tensors: dict, sublayers: list[Sublayer], c: dict, *, embed: str, final_norm: str,
           ffn_tensors, head: str = "lm_head.weight") -> dict:
    """The checkpoint's tensors -> the model's; ffn_tensors(sublayer, own, p) maps an FFN's
    tensors (keyed after its module prefix). Tensors left over keep their names (from_pretrained
    then names them)."""
    w = dict(tensors)
    out = {"embed.weight": w.pop(embed), "norm.weight": w.pop(final_norm)}
    if head in w:
        out["head.weight"] = w.pop(head)
    for i, (mix, f) in enumerate(group(sublayers, c["model_type"])):
        p = f"blocks.{i}."
        out[p + "norm.weight"] = w.pop(mix.norm)
        out.update(mixer_tensors(mix.kind, take(w, mix.module), p + "mixer."))
        if f is not None:
            out[p + "mlp_norm.weight"] = w.pop(f.norm)
            out.update(ffn_tensors(f, take(w, f.module), p + "mlp."))
    out.update(w)
    if "head.weight" not in out:
        out["head.weight"] = out["embed.weight"]
    return out


def stacked(own: dict, prefix: str, name: str) -> torch.Tensor:
    """Per-expert tensors own[prefix + 'e.' + name], e = 0, 1, ..., popped and stacked (E, ...)."""
    n = sum(1 for k in own if k.startswith(prefix) and k.endswith("." + name)
            and k[len(prefix):].split(".")[0].isdigit())
    return torch.stack([own.pop(f"{prefix}{e}.{name}") for e in range(n)])


def unpack_moe(own: dict, p: str, router: str, gate_up: torch.Tensor, down: torch.Tensor,
               shared: str = "shared_experts.") -> dict:
    """A MoE's router (and its balancing bias), experts (E, ...) and shared expert (its
    {gate,up,down}_proj under `shared`) -> SparseMoE's under p."""
    out = {p + "router.weight": own.pop(router + "weight"), p + "gate_up": gate_up, p + "down": down}
    if router + "e_score_correction_bias" in own:
        out[p + "score_bias"] = own.pop(router + "e_score_correction_bias")
    for k in list(own):
        if k.startswith(shared):
            x = k[len(shared):].split("_proj")[0]
            out[p + f"shared.{x}.weight"] = own.pop(k)
    return {**out, **{p + "unplaced." + k: t for k, t in own.items()}}


def gated_split(t: torch.Tensor, p: str) -> dict:
    """A fused [gate; up] input projection (Granite's input_linear) -> GatedMLP's gate, up."""
    gate, up = t.chunk(2)
    return {p + "gate.weight": gate, p + "up.weight": up}
