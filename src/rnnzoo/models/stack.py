"""A stack of residual blocks with an input map and a task head, plus generation.

    model = SequenceModel(ModelConfig(layer="mingru", d_model=64, num_layers=2, vocab_size=256))
    logits, state = model(tokens)                    # tokens (B, T) -> (B, T, output_dim)
    logits_t, state = model.step(tokens[:, t], state)
    out = model.generate(prompt, max_new_tokens=20, temperature=0)   # greedy

The input is an embedding (`vocab_size`) or a linear map (`input_dim`, for
real-valued sequences); the head is a linear map to `output_dim` (default:
the vocabulary) applied at every position; a task reads the positions it needs.

Hybrids: `hybrid="2:1"` makes every group of 3 blocks 2 `layer` blocks then 1
`attention` block (Griffin's pattern, De et al. 2024, arXiv:2402.19427);
`attention_options` (e.g. `{"window": 64}` for local attention) go to those.

The state of the stack is a tuple with one layer state per block, so it has a
constant size, and `generate` never re-reads the prompt.

Hooks for layers that need to know the stack (see blocks.build_mixer): a layer
whose constructor takes `layer_idx` and `num_layers` receives its depth (HGRN's
forget-gate lower bound rises with depth); one that takes `max_len` receives
the stack's `max_len` (attention sizes its KV cache with it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from rnnzoo.checks import int_in, real
from rnnzoo.layers.base import RecurrentLayer, valid_mask
from rnnzoo.models.blocks import Block, RMSNorm, build_mixer
from rnnzoo.ops.native.linear import Linear


def parse_ratio(hybrid: str) -> tuple[int, int]:
    """'2:1' -> (2, 1): recurrent blocks, then attention blocks, in each group."""
    try:
        rec, att = (int(p) for p in str(hybrid).split(":"))
        if rec < 0 or att < 1:
            raise ValueError
    except ValueError:
        raise ValueError(f"hybrid must be 'R:A' with R >= 0 recurrent and A >= 1 attention blocks "
                         f"per group, e.g. '2:1', got {hybrid!r}") from None
    return rec, att


@dataclass
class ModelConfig:
    layer: str
    d_model: int = 64
    num_layers: int = 2
    vocab_size: int | None = None      # token input (embedding); else `input_dim`
    input_dim: int | None = None       # real-valued input (linear map)
    output_dim: int | None = None      # head width; default vocab_size
    mlp_ratio: float = 0.0             # 0: no MLP (Mamba block); 4: Llama/Griffin block
    layer_options: dict = field(default_factory=dict)
    hybrid: str | None = None          # e.g. "2:1": 2 `layer` blocks, then 1 attention block
    attention_options: dict = field(default_factory=dict)
    max_len: int = 1024                # passed to layers that take it (attention's KV cache)

    def __post_init__(self):
        self.d_model = int_in("d_model", self.d_model)
        self.num_layers = int_in("num_layers", self.num_layers)
        self.max_len = int_in("max_len", self.max_len)
        if (self.vocab_size is None) == (self.input_dim is None):
            raise ValueError(f"give exactly one of vocab_size and input_dim, got vocab_size="
                             f"{self.vocab_size}, input_dim={self.input_dim}")
        for name in ("vocab_size", "input_dim", "output_dim"):
            if getattr(self, name) is not None:
                setattr(self, name, int_in(name, getattr(self, name)))
        if self.output_dim is None:
            if self.vocab_size is None:
                raise ValueError("output_dim is needed when the input is real-valued (input_dim)")
            self.output_dim = self.vocab_size
        if not isinstance(self.mlp_ratio, (int, float)) or self.mlp_ratio < 0:
            raise ValueError(f"mlp_ratio must be a number >= 0, got {self.mlp_ratio!r}")
        if self.hybrid is not None:
            parse_ratio(self.hybrid)

    def layer_names(self) -> list[str]:
        """The token mixer of each block, bottom first."""
        if self.hybrid is None:
            return [self.layer] * self.num_layers
        rec, att = parse_ratio(self.hybrid)
        return [self.layer if i % (rec + att) < rec else "attention" for i in range(self.num_layers)]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return cls(**d)


class SequenceModel(nn.Module):
    """inputs (B, T) tokens or (B, T, input_dim) -> outputs (B, T, output_dim), state."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        if c.vocab_size is not None:
            self.embed = nn.Embedding(c.vocab_size, c.d_model)
        else:
            self.embed = Linear(c.input_dim, c.d_model)
        names = c.layer_names()
        self.blocks = nn.ModuleList()
        for i, name in enumerate(names):
            options = c.attention_options if (c.hybrid and name == "attention") else c.layer_options
            mixer = build_mixer(name, c.d_model, options, layer_idx=i, num_layers=len(names),
                                max_len=c.max_len)
            self.blocks.append(Block(mixer, c.d_model, c.mlp_ratio))
        self.norm = RMSNorm(c.d_model)
        self.head = Linear(c.d_model, c.output_dim)

    def _embed(self, inputs):
        c = self.config
        if c.vocab_size is not None:
            if inputs.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
                raise TypeError(f"inputs must be integer tokens, got dtype {inputs.dtype}")
            return self.embed(inputs.long())
        if not inputs.is_floating_point() or inputs.shape[-1] != c.input_dim:
            raise ValueError(f"inputs must be floating point (..., {c.input_dim}), got "
                             f"{inputs.dtype} {tuple(inputs.shape)}")
        return self.embed(inputs.to(self.embed.weight.dtype))

    def init_state(self, batch_size: int, device=None, dtype=None) -> tuple:
        return tuple(b.mixer.init_state(batch_size, device=device, dtype=dtype) for b in self.blocks)

    def forward(self, inputs, state=None, *, mode="auto", lengths=None, cu_seqlens=None,
                max_seqlen=None):
        """inputs (B, T) or (B, T, input_dim) -> (B, T, output_dim), state (one per block).

        Packed documents: inputs (1, T) end to end, cu_seqlens (N + 1,) their boundaries
        (layers/base.py); every block restarts at each boundary, and the state has one row
        per document.

        Right padding, `lengths` (B,): the padded inputs are never read (tokens out of the
        vocabulary, NaN or inf there change no valid output, state or gradient) and the
        padded outputs are 0, as a layer's.
        """
        x, lengths, valid = self._embed_padded(inputs, lengths)
        state = state if state is not None else (None,) * len(self.blocks)
        new_state = []
        packed = {} if cu_seqlens is None else dict(cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
        for block, s in zip(self.blocks, state):
            x, s = block(x, s, mode=mode, lengths=lengths, **packed)
            new_state.append(s)
        return zero_padded(self.head(self.norm(x)), valid), tuple(new_state)

    def _embed_padded(self, inputs, lengths):
        """-> (embedded inputs, lengths checked (or None), valid (B, T) bool or None): padded
        inputs are 0 before the embedding (its weight gradient reads its inputs: NaN * 0 would
        be NaN there; a token out of the vocabulary would raise)."""
        if lengths is None:
            return self._embed(inputs), None, None
        lengths = RecurrentLayer._check_lengths(None, lengths, inputs)
        valid = valid_mask(lengths, inputs.shape[1])
        zero = torch.zeros((), dtype=inputs.dtype, device=inputs.device)
        inputs = torch.where(valid.view(*valid.shape, *(1,) * (inputs.dim() - 2)), inputs, zero)
        return self._embed(inputs), lengths, valid

    def step(self, inputs_t, state=None):
        """inputs_t (B,) or (B, input_dim) -> (B, output_dim), next state."""
        x = self._embed(inputs_t)
        state = state if state is not None else (None,) * len(self.blocks)
        new_state = []
        for block, s in zip(self.blocks, state):
            x, s = block.step(x, s)
            new_state.append(s)
        return self.head(self.norm(x)), tuple(new_state)

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue token prompts (B, T) by `max_new_tokens` -> (B, T + max_new_tokens).

        The prompt is read once (parallel forward); each new token is one `step`
        on the constant-size state. temperature 0 is greedy; top_k keeps the k
        most likely tokens before sampling.
        """
        if self.config.vocab_size is None:
            raise ValueError("generate needs a token model (vocab_size), this one has input_dim")
        int_in("max_new_tokens", max_new_tokens, lo=0)
        real("temperature", temperature, lo=0)
        if top_k is not None:
            int_in("top_k", top_k)
        if not isinstance(prompt, torch.Tensor) or prompt.dim() != 2 or prompt.shape[1] == 0:
            raise ValueError(f"prompt must have shape (batch, time >= 1), got "
                             f"{tuple(getattr(prompt, 'shape', ())) or type(prompt).__name__}")
        V = self.config.vocab_size
        if not prompt.dtype.is_floating_point and not prompt.is_complex() and \
                prompt.dtype != torch.bool and bool(((prompt < 0) | (prompt >= V)).any()):
            raise ValueError(f"prompt tokens must lie in [0, {V - 1}] (vocab_size {V}), got "
                             f"{int(prompt.min())}..{int(prompt.max())}")
        logits, state = self(prompt)
        logits, out = logits[:, -1], [prompt]
        for i in range(max_new_tokens):
            token = self._sample(logits, temperature, top_k, generator)
            out.append(token[:, None])
            if i + 1 < max_new_tokens:
                logits, state = self.step(token, state)
        return torch.cat(out, 1)

    @staticmethod
    def _sample(logits, temperature, top_k, generator):
        if temperature == 0:
            return logits.argmax(-1)
        # float64 and the largest logit at 0 first: a tiny temperature gives -inf, never NaN
        logits = logits.double()
        logits = (logits - logits.amax(-1, keepdim=True)) / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, -1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]


def zero_padded(y, valid):
    """y (B, T, ...) with the padded steps (valid False) set to 0 (valid None: y)."""
    if valid is None:
        return y
    return torch.where(valid.unsqueeze(-1), y, torch.zeros((), dtype=y.dtype, device=y.device))


def build_model(**config) -> SequenceModel:
    """SequenceModel(ModelConfig(**config))."""
    return SequenceModel(ModelConfig(**config))
