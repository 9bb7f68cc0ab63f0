"""`RnnzooForCausalLM`: any rnnzoo stack (models.stack.SequenceModel) as a transformers model.

    from rnnzoo.hf import RnnzooForCausalLM
    lm = RnnzooForCausalLM.from_stack(build_model(layer="gla", d_model=64, vocab_size=256))
    lm.save_pretrained("out/")                          # config.json (model_type "rnnzoo")
    lm = AutoModelForCausalLM.from_pretrained("out/")   # after rnnzoo.hf.register_auto()
    out = lm.generate(prompt, max_new_tokens=20, do_sample=False)

generate() keeps the stack's own layer states as its cache (`rnn_state`, one state per
block): the prompt is read once by the parallel forward, then each new token is one
`step` on a state whose size never grows. Needs the `hf` extra (transformers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

try:
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        GenerationMixin,
        PretrainedConfig,
        PreTrainedModel,
    )
    from transformers.utils import ModelOutput
except ImportError as e:  # one clear line instead of transformers' own traceback
    raise ImportError("rnnzoo.hf.RnnzooForCausalLM needs transformers: pip install "
                      "'rnnzoo[hf]' (transformers==5.23.0)") from e

import torch
from torch.nn import functional as F

from rnnzoo.models.stack import ModelConfig, SequenceModel


class RnnzooConfig(PretrainedConfig):
    """stack: the rnnzoo ModelConfig as a dict (layer, d_model, num_layers, vocab_size, ...)."""

    model_type = "rnnzoo"

    def __init__(self, stack: dict | None = None, **kwargs):
        self.stack = dict(stack or {})
        if self.stack:
            kwargs.setdefault("vocab_size", self.stack.get("vocab_size"))
            kwargs.setdefault("hidden_size", self.stack.get("d_model"))
            kwargs.setdefault("num_hidden_layers", self.stack.get("num_layers"))
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)


@dataclass
class RnnzooCausalLMOutput(ModelOutput):
    """logits (B, T, vocab); rnn_state: the stack's state after the input; loss if labels."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    rnn_state: tuple | None = None


class RnnzooForCausalLM(PreTrainedModel, GenerationMixin):
    """input_ids (B, T) -> RnnzooCausalLMOutput; `model` is the rnnzoo SequenceModel."""

    config_class = RnnzooConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _is_stateful = True  # no assisted decoding / contrastive search: the state cannot rewind

    def __init__(self, config: RnnzooConfig):
        super().__init__(config)
        if not config.stack or config.stack.get("vocab_size") is None:
            raise ValueError("RnnzooConfig.stack must describe a token model (a ModelConfig "
                             "dict with vocab_size)")
        self.model = SequenceModel(ModelConfig.from_dict(config.stack))
        self.post_init()

    def _init_weights(self, module):
        pass  # the rnnzoo layers initialise themselves

    @classmethod
    def from_stack(cls, stack: SequenceModel) -> "RnnzooForCausalLM":
        """Wrap a built SequenceModel (its weights are copied)."""
        lm = cls(RnnzooConfig(stack=asdict(stack.config)))
        lm.model.load_state_dict(stack.state_dict())
        return lm.to(next(stack.parameters()).dtype)

    def get_input_embeddings(self):
        return self.model.embed

    def set_input_embeddings(self, value):
        self.model.embed = value

    def forward(self, input_ids: torch.LongTensor, rnn_state: tuple | None = None,
                labels: torch.LongTensor | None = None, attention_mask=None, **kwargs):
        """Reads input_ids after `rnn_state` (None: from the start). A padded prompt is not
        supported (left padding would enter the state); attention_mask must be all ones."""
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("RnnzooForCausalLM reads unpadded prompts only: attention_mask "
                             "has zeros")
        if rnn_state is not None and input_ids.shape[1] == 1:
            logits, state = self.model.step(input_ids[:, 0], rnn_state)
            logits = logits[:, None]
        else:
            logits, state = self.model(input_ids, rnn_state)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                   ignore_index=-100)
        return RnnzooCausalLMOutput(loss=loss, logits=logits, rnn_state=state)

    def prepare_inputs_for_generation(self, input_ids, rnn_state=None, attention_mask=None,
                                      **kwargs):
        if rnn_state is not None:  # the state holds everything before the last token
            input_ids = input_ids[:, -1:]
        return {"input_ids": input_ids, "rnn_state": rnn_state, "attention_mask": attention_mask}

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False,
                                            num_new_tokens=1):
        model_kwargs["rnn_state"] = outputs.rnn_state
        mask = model_kwargs.get("attention_mask")
        if mask is not None:
            model_kwargs["attention_mask"] = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], -1)
        return model_kwargs


def register_auto() -> None:
    """Register model_type "rnnzoo" with AutoConfig and AutoModelForCausalLM (idempotent)."""
    try:
        AutoConfig.register("rnnzoo", RnnzooConfig)
        AutoModelForCausalLM.register(RnnzooConfig, RnnzooForCausalLM)
    except ValueError:  # already registered (by an earlier import)
        pass


register_auto()
