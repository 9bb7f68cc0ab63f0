"""Hugging Face interop: published checkpoints into rnnzoo, rnnzoo stacks into transformers.

    model = rnnzoo.from_pretrained("folder/")        # hf.load: config.json + safetensors
    from rnnzoo.hf import RnnzooForCausalLM           # hf.causal_lm: needs `transformers`

Loading reads JSON and safetensors only; `RnnzooForCausalLM` needs the `hf` extra
(pip install rnnzoo[hf]) and imports transformers when first used. See docs/hf.md.
"""

from __future__ import annotations

from rnnzoo.hf.load import UnsupportedCheckpoint, from_pretrained


def __getattr__(name):
    if name in ("RnnzooForCausalLM", "RnnzooConfig", "register_auto"):
        from rnnzoo.hf import causal_lm
        return getattr(causal_lm, name)
    raise AttributeError(f"module 'rnnzoo.hf' has no attribute {name!r}")


__all__ = ["from_pretrained", "UnsupportedCheckpoint", "RnnzooForCausalLM", "RnnzooConfig",
           "register_auto"]
