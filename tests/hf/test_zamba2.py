"""Zamba2 (hf/zamba2.py): shared transformer blocks are one set of weights used at several
depths, each use with its own adapters and its own KV cache; the options (no adapters, GQA,
no rotary, one shared block, Mamba-2's dt floor) give transformers' logits. The common
checks (logits in every mode, greedy generation, 96 decoding steps) run for zamba2 in
test_from_pretrained.py."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from _models import VOCAB, save_tiny, tiny

import rnnzoo
from rnnzoo.hf import UnsupportedCheckpoint
from rnnzoo.hf.zamba2 import HybridBlock


def rel_err(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zamba2")
    hf = save_tiny("zamba2", folder)
    return hf, rnnzoo.from_pretrained(folder, max_len=64)


def save_variant(folder, **options):
    """The tiny zamba2 with config `options` changed, perturbed as save_tiny does."""
    config, cls = tiny("zamba2")
    for k, v in options.items():
        setattr(config, k, v)
    config.eos_token_id = config.bos_token_id = config.pad_token_id = None
    torch.manual_seed(0)
    hf = cls(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf.save_pretrained(folder)
    return hf


def test_shared_blocks_are_one_set_of_weights(pair):
    """Layers 1 and 4 use shared block 0, layer 3 block 1: the shared modules are the same
    Parameters at both uses of block 0 (so the model counts as many parameters as
    transformers'), the adapters and the projection back are each use's own."""
    hf, ours = pair
    first, other, second = (ours.blocks[i] for i in (1, 3, 4))
    assert all(isinstance(b, HybridBlock) for b in (first, other, second))

    def shared(b):
        return [b.attn_norm.weight, b.attention.qkv.base.weight, b.attention.out_proj.weight,
                b.ffn_norm.weight, b.ffn.gate_up.base.weight, b.ffn.down.weight]

    def own(b):
        return [b.attention.qkv.adapters[0][0].weight, b.ffn.gate_up.adapters[0][1].weight,
                b.linear.weight, b.mixer.in_proj.weight]

    assert all(p is q for p, q in zip(shared(first), shared(second)))
    assert not any(p is q for p, q in zip(shared(first), shared(other)))
    assert not any(p is q for p, q in zip(own(first), own(second)))
    assert (sum(p.numel() for p in ours.parameters())
            == sum(p.numel() for p in hf.parameters()))


def test_each_use_keeps_its_own_cache(pair):
    """The two uses of block 0 read different inputs, so their KV caches differ; each has
    seen every token."""
    _, ours = pair
    tokens = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        _, state = ours(tokens)
    (k1, _, pos1), _ = state[1]
    (k4, _, pos4), _ = state[4]
    assert torch.equal(pos1, pos4) and pos1.tolist() == [11.0, 11.0]
    assert (k1[:, :, :11] - k4[:, :, :11]).abs().max() > 1e-3
    # decoding on from this state equals the forward over the longer sequence
    nxt = torch.randint(0, VOCAB, (2,), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        got, _ = ours.step(nxt, state)
        want = ours(torch.cat([tokens, nxt[:, None]], 1))[0][:, -1]
    assert rel_err(want, got) < 1e-5


def test_packed_documents_equal_each_alone(pair):
    _, ours = pair
    tokens = torch.randint(0, VOCAB, (1, 13), generator=torch.Generator().manual_seed(7))
    cu = torch.tensor([0, 5, 13])
    with torch.no_grad():
        packed, _ = ours(tokens, cu_seqlens=cu)
        alone = torch.cat([ours(tokens[:, :5])[0], ours(tokens[:, 5:])[0]], 1)
    assert rel_err(alone, packed) < 1e-5


@pytest.mark.parametrize("options", [
    # no attention adapters, grouped-query attention, no rotary, one block at every use, GeLU-tanh
    dict(use_shared_attention_adapter=False, num_key_value_heads=2, use_mem_rope=False,
         num_mem_blocks=1, hidden_act="gelu_pytorch_tanh"),
    # dt below time_step_min is common: transformers' forward clamps it (rnnzoo: dt_floor)
    dict(time_step_min=0.5, time_step_max=1.0),
])
def test_options_equal_transformers(tmp_path, options):
    hf = save_variant(tmp_path, **options)
    ours = rnnzoo.from_pretrained(tmp_path, max_len=64)
    tokens = torch.randint(0, VOCAB, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(tokens).logits
        for mode in ("sequential", "chunk", "parallel"):
            assert rel_err(want, ours(tokens, mode=mode)[0]) < 1e-4, mode
        state, steps = ours.init_state(2), []
        for t in range(tokens.shape[1]):
            logits, state = ours.step(tokens[:, t], state)
            steps.append(logits)
        assert rel_err(want, torch.stack(steps, 1)) < 1e-4
        if "time_step_min" in options:  # without the floor the logits fail the 1e-4 bound
            for b in ours.blocks:
                b.mixer.dt_floor = 0.0
            assert rel_err(want, ours(tokens)[0]) > 1e-4  # fails the bound above


@pytest.mark.parametrize("option, value", [("add_bias_linear", True), ("hidden_act", "relu6")])
def test_unsupported_option_is_named(pair, tmp_path, option, value):
    hf, _ = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, option: value}))
    with pytest.raises(UnsupportedCheckpoint, match=f"{option}="):
        rnnzoo.from_pretrained(tmp_path)
