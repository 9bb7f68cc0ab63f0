"""RnnzooForCausalLM: an rnnzoo stack as a transformers model; save/load round trip through
the Auto classes, and generate() equal to rnnzoo's own greedy decode, stepping the state."""

from __future__ import annotations

import warnings

import pytest
import torch

from rnnzoo.hf import RnnzooConfig, RnnzooForCausalLM
from rnnzoo.models.stack import build_model

STACKS = [
    dict(layer="gla", d_model=16, num_layers=2, vocab_size=40, mlp_ratio=2,
         layer_options=dict(num_heads=2)),
    dict(layer="mamba", d_model=8, num_layers=2, vocab_size=40, hybrid="1:1",
         layer_options=dict(d_state=4, d_conv=3), attention_options=dict(num_heads=2)),
]


@pytest.fixture(params=STACKS, ids=[s["layer"] for s in STACKS])
def stack(request):
    torch.manual_seed(0)
    return build_model(**request.param).eval()


def test_round_trip_through_auto_classes(stack, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM
    lm = RnnzooForCausalLM.from_stack(stack)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), RnnzooConfig)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(back, RnnzooForCausalLM)
    tokens = torch.randint(0, 40, (2, 11))
    with torch.no_grad():
        assert torch.equal(back(tokens).logits, stack(tokens)[0])


def test_generate_equals_rnnzoo_greedy_and_steps_the_state(stack, monkeypatch):
    lm = RnnzooForCausalLM.from_stack(stack).eval()
    prompt = torch.randint(0, 40, (3, 6), generator=torch.Generator().manual_seed(1))
    steps, step = [], lm.model.step
    monkeypatch.setattr(lm.model, "step", lambda x, s: steps.append(x.shape) or step(x, s))
    got = lm.generate(prompt, max_new_tokens=9, do_sample=False, pad_token_id=0,
                      eos_token_id=None)
    assert torch.equal(got, stack.generate(prompt, 9, temperature=0))
    assert steps == [torch.Size([3])] * 8  # the prompt read once, then one step per token


def test_loss_is_next_token_cross_entropy(stack):
    lm = RnnzooForCausalLM.from_stack(stack)
    tokens = torch.randint(0, 40, (2, 7))
    out = lm(tokens, labels=tokens)
    want = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 40),
                                             tokens[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, want)
    out.loss.backward()
    assert lm.model.embed.weight.grad is not None


def test_padded_prompt_is_refused(stack):
    lm = RnnzooForCausalLM.from_stack(stack)
    with pytest.raises(ValueError, match="unpadded"):
        lm(torch.ones(2, 3, dtype=torch.long), attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]))


def test_config_without_a_stack_is_refused():
    with pytest.raises(ValueError, match="vocab_size"):
        RnnzooForCausalLM(RnnzooConfig())


def test_without_transformers_one_clear_error(monkeypatch):
    import importlib
    import sys
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "rnnzoo.hf.causal_lm")
    with pytest.raises(ImportError, match=r"rnnzoo\[hf\]"):
        importlib.import_module("rnnzoo.hf.causal_lm")


def test_import_rnnzoo_does_not_import_transformers():
    import os
    import subprocess
    import sys
    from pathlib import Path

    import rnnzoo
    code = ("import sys, rnnzoo; rnnzoo.list_layers(); import rnnzoo.hf; "
            "print('transformers' in sys.modules)")
    src = str(Path(rnnzoo.__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": src}, check=True)
    assert out.stdout.strip() == "False"
