"""rnnzoo.from_pretrained on flash-linear-attention's own checkpoints (fla-hub format): tiny
random fla models (fla.models, flash-linear-attention 0.6.0) saved with save_pretrained load
into rnnzoo's registered layers and give fla's own logits on the same weights (float32,
1e-4 relative); rnnzoo's step decoding equals its forward.

The reference is fla's model forward itself on the CPU: its Triton kernels under
TRITON_INTERPRET=1 (as `make test` runs pytest), each autotuner kept to its first config
(autotuning times kernels on a GPU). Without the interpreter the comparison is skipped.
"""

from __future__ import annotations

import json
import os
import warnings

import pytest
import test_layer_options as contract
import torch

import rnnzoo
from rnnzoo.hf import UnsupportedCheckpoint
from rnnzoo.hf.fla_hub import LAYERS, FeedForward7, FlaHGRN2, FlaRetNet
from rnnzoo.hf.load import TYPES

models = pytest.importorskip("fla.models", reason="flash-linear-attention 0.6.0 is the oracle "
                             "(see .ci/install-peers)")
interpreted = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                 reason="fla's kernels run on the CPU under TRITON_INTERPRET=1")

VOCAB = 100
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, intermediate_size=48,
              bos_token_id=None, eos_token_id=None)
TINY = {  # (config class, model class, options): 2 layers, hidden 32
    "gla": ("GLAConfig", "GLAForCausalLM", dict(num_heads=2)),
    # grouped value heads: 2 value heads (16 wide) over 1 q/k head (8 wide)
    "gated_deltanet": ("GatedDeltaNetConfig", "GatedDeltaNetForCausalLM",
                       dict(num_heads=1, num_v_heads=2, head_dim=8, expand_v=2, conv_size=3)),
    # heads of 8 keys, 16 values; the output gate on; tied head
    "delta_net": ("DeltaNetConfig", "DeltaNetForCausalLM",
                  dict(num_heads=2, expand_k=0.5, expand_v=1.0, conv_size=3, use_gate=True,
                       tie_word_embeddings=True)),
    "retnet": ("RetNetConfig", "RetNetForCausalLM", dict(num_heads=2)),
    # 4 heads of 8 channels (expand_ratio); per-channel lower bounds per layer
    "hgrn2": ("HGRN2Config", "HGRN2ForCausalLM", dict(expand_ratio=8)),
    # 2 heads of 16; low-rank widths 8 (decay), 4 (learning rate), 12 (gate), 4 (value residual)
    "rwkv7": ("RWKV7Config", "RWKV7ForCausalLM",
              dict(head_dim=16, decay_low_rank_dim=8, a_low_rank_dim=4, gate_low_rank_dim=12,
                   v_low_rank_dim=4)),
}


def rel_err(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


@pytest.fixture
def first_config_only(monkeypatch):
    """Triton's autotuners keep their first config (no GPU to time the others on)."""
    from triton.runtime import autotuner
    run = autotuner.Autotuner.run

    def first(self, *args, **kwargs):
        self.configs = self.configs[:1]
        return run(self, *args, **kwargs)

    monkeypatch.setattr(autotuner.Autotuner, "run", first)


def save_fla(model_type, folder, **changes):
    """A tiny random fla model of `model_type` saved into `folder`; returns it (eval)."""
    config_cls, model_cls, opts = TINY[model_type]
    config = getattr(models, config_cls)(**{**COMMON, **opts, **changes})
    torch.manual_seed(0)
    model = getattr(models, model_cls)(config).eval()
    with torch.no_grad():  # fla initialises norms to 1, biases to 0: perturb all so that a
        for p in model.parameters():  # misplaced one shows
            p.add_(0.1 * torch.randn_like(p))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder)
    return model


def test_every_fla_type_is_tested():
    fla_types = sorted(t for t, module in TYPES.items() if module == "fla_hub")
    assert fla_types == sorted(TINY) == sorted(LAYERS)


@interpreted
@pytest.mark.parametrize("model_type", sorted(TINY))
def test_logits_equal_fla(model_type, tmp_path, first_config_only):
    fla = save_fla(model_type, tmp_path)
    ours = rnnzoo.from_pretrained(tmp_path)
    assert ours.layers[0] == LAYERS[model_type]
    # one sequence of 12: fla's interpreted kernels cost seconds per program instance
    tokens = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = fla(tokens).logits
        modes = set.intersection(*(set(b.mixer.modes) for b in ours.blocks))
        errors = {mode: rel_err(want, ours(tokens, mode=mode)[0])
                  for mode in ["auto", *sorted(modes)]}  # auto: each layer's fastest mode
        state, steps = ours.init_state(1), []
        for t in range(tokens.shape[1]):
            logits, state = ours.step(tokens[:, t], state)
            steps.append(logits)
        errors["step"] = rel_err(want, torch.stack(steps, 1))
    print(model_type, {k: f"{v:.1e}" for k, v in errors.items()})
    assert max(errors.values()) < 1e-4, errors


def flash_attn_func(q, k, v, causal=True, window_size=(-1, -1)):
    """flash-attn's function (not installed on the CPU) for fla's Attention: q (B, T, H, D),
    k, v (B, T, KV, D); causal, each query reading window_size[0] tokens back (-1: all)."""
    T, D, g = q.shape[1], q.shape[-1], q.shape[2] // k.shape[2]
    k, v = (x.repeat_interleave(g, 2) for x in (k, v))
    i = torch.arange(T)
    back = i[:, None] - i[None]
    keep = (back >= 0) & ((back <= window_size[0]) if window_size[0] >= 0 else True)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / D ** 0.5
    p = scores.masked_fill(~keep, float("-inf")).softmax(-1)
    return torch.einsum("bhts,bshd->bthd", p, v)


@interpreted
def test_hybrid_attention_layer_equals_fla(tmp_path, first_config_only, monkeypatch):
    """A GLA model whose second layer is softmax attention (config.attn: GQA, a 5-token
    window): rnnzoo's `attention` with the same logits and step decoding."""
    import fla.layers.attn
    monkeypatch.setattr(fla.layers.attn, "flash_attn_func", flash_attn_func)
    fla_model = save_fla("gla", tmp_path, attn={"layers": [1], "num_heads": 4, "num_kv_heads": 2,
                                                "window_size": 5})
    ours = rnnzoo.from_pretrained(tmp_path)
    assert ours.layers == ["gla", "attention"]
    tokens = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = fla_model(tokens).logits
        got = ours(tokens)[0]
        state, steps = ours.init_state(1), []
        for t in range(tokens.shape[1]):
            logits, state = ours.step(tokens[:, t], state)
            steps.append(logits)
    errors = rel_err(want, got), rel_err(want, torch.stack(steps, 1))
    print("gla + attention", errors)
    assert max(errors) < 1e-4, errors


def hgrn2_with_bounds(d_model, **options):
    """FlaHGRN2 with per-channel lower bounds in (0, 0.5) (its buffer: not perturbed by make)."""
    layer = FlaHGRN2(d_model, **options)
    layer.bound.copy_(0.5 * torch.rand(layer.bound.shape, generator=torch.Generator().manual_seed(2)))
    return layer


@pytest.mark.parametrize("name,options", [
    (FlaRetNet, dict(num_heads=2, chunk_size=4, norm_eps=1e-6)),
    (hgrn2_with_bounds, dict(num_heads=2, d_state=4, chunk_size=4, subchunk_size=2)),
    (FeedForward7, dict(hidden=12)),
], ids=["FlaRetNet", "FlaHGRN2", "FeedForward7"])
def test_fla_layers_keep_the_contract(name, options):
    """The fla variants of rnnzoo layers: modes equal, split = whole, step = forward, padding
    (tests/hf/test_layer_options.py's check). FlaRWKV7 refuses lengths, see below."""
    contract.test_option_keeps_the_contract(name, options)


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize("model_type,changes,named", [
    ("gla", dict(use_short_conv=True), "use_short_conv=True"),
    ("gla", dict(feature_map="relu"), "feature_map='relu'"),
    ("gated_deltanet", dict(attn={"layers": [1], "num_heads": 2, "qkv_bias": True}),
     "attn qkv_bias=True"),
    ("gla", dict(attnres_block_size=2), "attention residuals"),
    ("delta_net", dict(qk_norm="sum"), "qk_norm='sum'"),
    ("rwkv7", dict(norm_eps=1e-6), "norm_eps=1e-06"),
])
def test_unsupported_option_is_named(tmp_path, model_type, changes, named):
    save_fla(model_type, tmp_path)
    edit_config(tmp_path, **changes)
    with pytest.raises(UnsupportedCheckpoint, match=named):
        rnnzoo.from_pretrained(tmp_path)


def test_rwkv7_value_residual_refuses_lengths(tmp_path):
    """fla's RWKV-7 layers share layer 0's values: a padded batch is one clear error."""
    save_fla("rwkv7", tmp_path)
    ours = rnnzoo.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="lengths and cu_seqlens are not supported"):
        ours(torch.zeros(2, 5, dtype=torch.long), lengths=torch.tensor([5, 3]))
