"""rnnzoo.from_pretrained: tiny random transformers checkpoints load into rnnzoo layers and
give transformers' own logits (float32, 1e-4 relative) and greedy tokens; rnnzoo then
decodes step by step in a state of constant size."""

from __future__ import annotations

import json

import pytest
import torch
from _models import VOCAB, save_tiny

import rnnzoo
from rnnzoo.hf import UnsupportedCheckpoint
from rnnzoo.hf.load import TYPES

TYPES_TESTED = ["mamba", "falcon_mamba", "mamba2", "recurrent_gemma", "qwen3_next", "kimi_linear",
                "bamba", "nemotron_h", "granitemoehybrid", "jamba", "lfm2", "minimax", "xlstm", "rwkv",
                "falcon_h1", "zamba2"]


def rel_err(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


@pytest.fixture(params=TYPES_TESTED)
def pair(request, tmp_path):
    hf = save_tiny(request.param, tmp_path)
    return request.param, hf, rnnzoo.from_pretrained(tmp_path, max_len=1100)


def test_every_supported_type_is_tested():
    # (flash-linear-attention's own format, hf/fla_hub.py, is tested in test_fla_hub.py)
    assert sorted(t for t in TYPES if TYPES[t] != "fla_hub") == sorted(TYPES_TESTED)


def test_logits_equal_transformers(pair):
    model_type, hf, ours = pair
    tokens = torch.randint(0, VOCAB, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(tokens).logits
        got, _ = ours(tokens)
    assert got.shape == want.shape
    assert rel_err(want, got) < 1e-4, model_type
    # the layers are rnnzoo's registered ones, in every mode all the model's layers have
    modes = set.intersection(*(set(b.mixer.modes) for b in ours.blocks))
    assert "sequential" in modes
    for mode in modes:
        with torch.no_grad():
            assert rel_err(want, ours(tokens, mode=mode)[0]) < 1e-4, mode


def test_greedy_generation_equals_transformers(pair):
    model_type, hf, ours = pair
    prompt = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(2))
    # transformers 5.23's cached RWKV generation leaves its own forward from the second new
    # token on (its uncached generation and a loop of forwards agree with each other): for
    # rwkv the reference is the uncached one
    extra = dict(use_cache=False) if model_type == "rwkv" else {}
    want = hf.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0, **extra)
    got = ours.generate(prompt, max_new_tokens=12, temperature=0)
    assert torch.equal(got, want), model_type


def state_numel(state):
    if isinstance(state, torch.Tensor):
        return state.numel()
    return sum(state_numel(s) for s in state)


@pytest.mark.parametrize("T", [96, pytest.param(1024, marks=pytest.mark.slow)])
def test_streaming_steps_constant_state_equal_logits(pair, T):
    """T tokens one step at a time: the state never grows and the logits at every step
    equal transformers' forward over the whole sequence."""
    model_type, hf, ours = pair
    tokens = torch.randint(0, VOCAB, (1, T), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = hf(tokens).logits[0]
        state, sizes, got = ours.init_state(1), set(), []
        for t in range(T):
            logits, state = ours.step(tokens[:, t], state)
            got.append(logits[0])
            sizes.add(state_numel(state))
    assert len(sizes) == 1
    assert rel_err(want, torch.stack(got)) < 1e-4, model_type


def test_unknown_model_type_is_one_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UnsupportedCheckpoint, match="'bert' is not supported"):
        rnnzoo.from_pretrained(tmp_path)


def test_unsupported_option_is_named(tmp_path):
    save_tiny("mamba", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "use_conv_bias": False}))
    with pytest.raises(UnsupportedCheckpoint, match="use_conv_bias=False"):
        rnnzoo.from_pretrained(tmp_path)


def test_ffn_without_mixer_before_it_is_named(tmp_path):
    """Nemotron-H: an MLP layer joins the mixer before it; one with none is refused."""
    save_tiny("nemotron_h", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    types = ["mlp"] + config["layers_block_type"][1:]
    (tmp_path / "config.json").write_text(json.dumps({**config, "layers_block_type": types}))
    with pytest.raises(UnsupportedCheckpoint, match="mlp layer .* with no mixer"):
        rnnzoo.from_pretrained(tmp_path)


def test_missing_tensor_is_named(tmp_path):
    from rnnzoo.models.checkpoint import load_tensors, save_tensors
    save_tiny("mamba2", tmp_path)
    (f,) = tmp_path.glob("*.safetensors")
    tensors = load_tensors(f)[0]
    del tensors["backbone.layers.1.mixer.dt_bias"]
    save_tensors(f, tensors)
    with pytest.raises(ValueError, match=r"blocks\.1\.mixer\.dt_bias"):
        rnnzoo.from_pretrained(tmp_path)


def test_no_checkpoint_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        rnnzoo.from_pretrained(tmp_path)


def test_transformers_cache_grows_where_the_state_does_not(tmp_path):
    """Qwen3-Next's attention layers: transformers' cache holds every token read, the rnnzoo
    state keeps the size it was built with."""
    hf = save_tiny("qwen3_next", tmp_path)
    ours = rnnzoo.from_pretrained(tmp_path)
    tokens = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(4))
    sizes_hf, sizes_ours = [], []
    with torch.no_grad():
        for T in (10, 40):
            cache = hf(tokens[:, :T], use_cache=True).past_key_values
            sizes_hf.append(sum(layer.keys.numel() + layer.values.numel()
                                for layer in cache.layers if getattr(layer, "keys", None)
                                is not None))
            sizes_ours.append(state_numel(ours(tokens[:, :T])[1]))
    assert sizes_hf[1] == 4 * sizes_hf[0] > 0
    assert sizes_ours[0] == sizes_ours[1]


@pytest.mark.parametrize("before", [True, False])
def test_falcon_h1_gated_norm_equals_transformers(tmp_path, before):
    """Falcon-H1 with its Mamba's gated RMSNorm (mamba_rms_norm), the norm before the gate
    or after it: the same logits as transformers in every mode."""
    from _models import tiny
    config, cls = tiny("falcon_h1")
    config.mamba_rms_norm, config.mamba_norm_before_gate = True, before
    torch.manual_seed(0)
    hf = cls(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    ours = rnnzoo.from_pretrained(tmp_path)
    tokens = torch.randint(0, VOCAB, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(tokens).logits
        for mode in ours.blocks[0].mixer.modes:
            assert rel_err(want, ours(tokens, mode=mode)[0]) < 1e-4, mode


def test_forged_config_fails_before_building_the_model(tmp_path, monkeypatch):
    """A small checkpoint whose config.json says hidden_size 2**20 (a 4 TB mamba): the
    config's sizes are checked against the tensors on the meta device, so it fails in one
    line naming a tensor; before, the model was built at that size first (a RuntimeError
    from the allocator, or the OOM killer). An honest folder is built on meta, then for real."""
    import rnnzoo.hf.mamba as hf_mamba
    save_tiny("mamba", tmp_path)
    built, real = [], hf_mamba.build

    def spy(config, **kw):
        device = torch.empty(0).device.type
        built.append(device)
        if device != "meta" and config["hidden_size"] > 1000:
            raise AssertionError(f"built hidden_size={config['hidden_size']} on {device}")
        return real(config, **kw)

    monkeypatch.setattr(hf_mamba, "build", spy)
    rnnzoo.from_pretrained(tmp_path)
    assert built == ["meta", "cpu"]
    built.clear()
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_size": 2**20,
                                                      "intermediate_size": 2**21}))
    with pytest.raises(ValueError, match=r"tensor for .* has shape .*, the model needs .*"
                                         r"1048576") as e:
        rnnzoo.from_pretrained(tmp_path)
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)
    assert built == ["meta"]


def test_a_stale_consolidated_file_beside_shards(tmp_path):
    """A folder holding shards and a model.safetensors of another version: every
    *.safetensors was read and the last file's tensors silently won. A tensor in two files
    is now an error naming both; an index.json says which files to read."""
    from rnnzoo.models.checkpoint import load_tensors, save_tensors
    save_tiny("mamba", tmp_path)
    tokens = torch.tensor([[1, 2, 3, 4]])
    expected = rnnzoo.from_pretrained(tmp_path)(tokens)[0]
    (f,) = tmp_path.glob("*.safetensors")
    tensors = load_tensors(f)[0]
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, part in shards.items():
        save_tensors(tmp_path / shard, {k: tensors[k] for k in part})
    save_tensors(f, {k: torch.zeros_like(v) for k, v in tensors.items()})  # the stale one
    assert f.name == "model.safetensors"
    with pytest.raises(ValueError, match=r"tensor '.*' is in both model-0000.-of-00002"
                                         r"\.safetensors and model\.safetensors"):
        rnnzoo.from_pretrained(tmp_path)
    weight_map = {k: shard for shard, part in shards.items() for k in part}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map":
                                                                      weight_map}))
    assert torch.equal(rnnzoo.from_pretrained(tmp_path)(tokens)[0], expected)
