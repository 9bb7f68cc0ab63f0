"""The model a checkpoint loads into: rnnzoo's stack with the checkpoint's trimmings.

    embed (x sqrt(d_model) where the checkpoint scales it) -> blocks -> final norm -> head
    block: h = x + mixer(norm(x));  y = h + mlp(mlp_norm(h))   (models.blocks.Block)
    head: W_head y (the embedding matrix where tied), optionally cap * tanh(logits / cap)

It is a `SequenceModel`, so forward / step / generate / init_state are the stack's own:
the state is one layer state per block, of a size fixed by the model, whatever the
length of the text read so far.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from rnnzoo.models.blocks import Block, RMSNorm, build_mixer
from rnnzoo.models.stack import ModelConfig, SequenceModel


class ScaledEmbedding(nn.Embedding):
    """tokens (...) -> (..., d) embedding times `scale`, rounded to the weight's dtype first
    (as Gemma multiplies by sqrt(d_model) in the embedding's dtype)."""

    def __init__(self, num, dim, scale: float = 1.0):
        super().__init__(num, dim)
        self.scale = scale

    def forward(self, tokens):
        x = super().forward(tokens)
        return x if self.scale == 1.0 else x * torch.tensor(self.scale, dtype=x.dtype)


class Head(nn.Linear):
    """(..., d) -> (..., vocab) logits, soft-capped as cap * tanh(logits / cap) if `softcap`."""

    def __init__(self, d, vocab, bias=False, softcap: float | None = None):
        super().__init__(d, vocab, bias=bias)
        self.softcap = softcap

    def forward(self, x):
        y = super().forward(x)
        return y if self.softcap is None else self.softcap * torch.tanh(y / self.softcap)


def activation(name: str, x):
    """The checkpoints' activations: silu, gelu (exact, erf), gelu_tanh (GELU, tanh
    approximation), relu2 (relu^2)."""
    if name == "silu":
        return F.silu(x)
    if name == "gelu":
        return F.gelu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    return F.relu(x).square()


ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu2")


class GatedMLP(nn.Module):
    """W_down (act(W_gate x) * W_up x): SwiGLU (act silu) or GeGLU (gelu_tanh)."""

    def __init__(self, d, hidden, act="silu", bias=False):
        super().__init__()
        self.gate = nn.Linear(d, hidden, bias=bias)
        self.up = nn.Linear(d, hidden, bias=bias)
        self.down = nn.Linear(hidden, d, bias=bias)
        self.act = act

    def forward(self, x):
        return self.down(activation(self.act, self.gate(x)) * self.up(x))


class MLP(nn.Module):
    """W_down act(W_up x), no gate (Nemotron-H: act relu2)."""

    def __init__(self, d, hidden, act="relu2", bias=False):
        super().__init__()
        self.up = nn.Linear(d, hidden, bias=bias)
        self.down = nn.Linear(hidden, d, bias=bias)
        self.act = act

    def forward(self, x):
        return self.down(activation(self.act, self.up(x)))


def block(name: str | nn.Module, d_model: int, options: dict, *, layer_idx: int,
          num_layers: int, norm_eps: float, mlp: nn.Module | None = None,
          max_len: int = 4096) -> Block:
    """A residual block around the registered layer `name` (or a mixer module built by the
    mapping, options then unused), with RMSNorms of eps `norm_eps` and the given MLP (None:
    the mixer alone, Mamba's block)."""
    mixer = name if isinstance(name, nn.Module) else build_mixer(
        name, d_model, options, layer_idx=layer_idx, num_layers=num_layers, max_len=max_len)
    b = Block(mixer, d_model, mlp_ratio=0)
    b.norm = RMSNorm(d_model, eps=norm_eps)
    if mlp is not None:
        b.mlp_norm, b.mlp = RMSNorm(d_model, eps=norm_eps), mlp
    return b


class PretrainedModel(SequenceModel):
    """tokens (B, T) -> logits (B, T, vocab), state; built by a checkpoint's mapping module.

    blocks: the residual blocks, bottom first; tie: the head shares the embedding matrix.
    `model_type` and `source_config` (the checkpoint's config.json) say where it came from.
    """

    def __init__(self, *, vocab_size: int, d_model: int, layers: list[str], blocks: list[Block],
                 norm_eps: float, tie: bool, model_type: str, source_config: dict,
                 embed_scale: float = 1.0, logit_softcap: float | None = None):
        nn.Module.__init__(self)
        # a description for SequenceModel's methods (generate checks vocab_size)
        self.config = ModelConfig(layer=layers[0], d_model=d_model, num_layers=len(blocks),
                                  vocab_size=vocab_size)
        self.layers, self.model_type, self.source_config = layers, model_type, source_config
        self.embed = ScaledEmbedding(vocab_size, d_model, embed_scale)
        self.blocks = nn.ModuleList(blocks)
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.head = Head(d_model, vocab_size, softcap=logit_softcap)
        if tie:
            self.head.weight = self.embed.weight

    def extra_repr(self):
        return f"model_type={self.model_type!r}"


def gemma_norm(weight: torch.Tensor) -> torch.Tensor:
    """Gemma's RMSNorm scales by (1 + w): the same norm as ours with weight 1 + w."""
    return weight.float() + 1



class SparseMoE(nn.Module):
    """Top-k mixture of SwiGLU experts (Shazeer et al. 2017, arXiv:1701.06538), with an
    optional shared expert:

        s = softmax(W_r x)  or, with score="sigmoid", sigmoid(W_r x)   (DeepSeek-V3 style)
        chosen: the top-k of s + b (b: `score_bias`, a load-balancing bias used only to choose)
                within the top `topk_group` of `num_groups` expert groups (a group scores the
                sum of its best two), all experts when num_groups = 1
        p_e = s_e (renormalised over the chosen if norm_topk) * routed_scale
        y = sum_e p_e E_e(x) [+ g(x) E_shared(x)],  g = sigmoid(w_s . x) if shared_gate else 1

    Experts (and the shared one) are GatedMLPs of activation `act`, or with gated=False MLPs
    (Nemotron-H). gate_up: (E, 2 hidden, d) (gate rows first; the up rows alone when not
    gated), down: (E, d, hidden). x: (..., d).
    """

    def __init__(self, d, hidden, num_experts, top_k, norm_topk=True, shared_hidden=0,
                 *, score="softmax", shared_gate=True, routed_scale=1.0, score_bias=False,
                 num_groups=1, topk_group=1, norm_eps=0.0, gated=True, act="silu"):
        super().__init__()
        self.gated, self.act = gated, act
        self.top_k, self.norm_topk, self.score = top_k, norm_topk, score
        self.routed_scale, self.num_groups, self.topk_group = routed_scale, num_groups, topk_group
        self.norm_eps = norm_eps  # added to the renormalising sum (Kimi / DeepSeek: 1e-20)
        self.router = nn.Linear(d, num_experts, bias=False)
        # a buffer: the checkpoint's balancing bias is set by a rule, not by gradients
        self.register_buffer("score_bias", torch.zeros(num_experts) if score_bias else None)
        self.gate_up = nn.Parameter(torch.zeros(num_experts, (1 + gated) * hidden, d))
        self.down = nn.Parameter(torch.zeros(num_experts, d, hidden))
        ffn = GatedMLP if gated else MLP
        self.shared = ffn(d, shared_hidden, act) if shared_hidden else None
        self.shared_gate = nn.Linear(d, 1, bias=False) if shared_hidden and shared_gate else None

    def route(self, flat):
        """(N, d) tokens -> (weight (N, k), index (N, k)) of the experts each one uses."""
        logits = self.router(flat).float()
        probs = torch.softmax(logits, -1) if self.score == "softmax" else torch.sigmoid(logits)
        choice = probs if self.score_bias is None else probs + self.score_bias.float()
        if self.num_groups > 1:
            groups = choice.view(len(flat), self.num_groups, -1)
            best = groups.topk(2, -1)[0].sum(-1).topk(self.topk_group, -1)[1]
            keep = torch.zeros_like(groups[..., 0]).scatter_(1, best, 1).bool()
            choice = groups.masked_fill(~keep[..., None], float("-inf")).flatten(1)
        index = choice.topk(self.top_k, -1)[1]
        weight = probs.gather(1, index)
        if self.norm_topk:
            weight = weight / (weight.sum(-1, keepdim=True) + self.norm_eps)
        return weight * self.routed_scale, index

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        weight, index = self.route(flat)
        out = torch.zeros_like(flat)
        for e in index.unique().tolist():  # the experts some token chose
            token, slot = torch.where(index == e)
            h = F.linear(flat[token], self.gate_up[e])
            if self.gated:
                gate, up = h.chunk(2, -1)
                h = activation(self.act, gate) * up
            else:
                h = activation(self.act, h)
            y = F.linear(h, self.down[e]) * weight[token, slot, None].to(x.dtype)
            out.index_add_(0, token, y)
        if self.shared is not None:
            shared = self.shared(flat)
            out = out + (shared if self.shared_gate is None
                         else torch.sigmoid(self.shared_gate(flat)) * shared)
        return out.reshape(x.shape)


def split_layers(tensors: dict, final_norm: str, centred: bool = True) -> tuple[dict, dict]:
    """A Llama-style checkpoint's tensors as (out, layers): embedding, final norm (named
    `final_norm`, its weight stored as w - 1 if `centred`, as Gemma's) and head renamed to
    rnnzoo's, anything else kept under its own name (from_pretrained names what stays
    unplaced); layers maps each block index to its tensors, keyed by the name after
    'model.layers.i.'."""
    top = {"model.embed_tokens.weight": ("embed.weight", lambda t: t),
           final_norm: ("norm.weight", gemma_norm if centred else lambda t: t),
           "lm_head.weight": ("head.weight", lambda t: t)}
    out, layers = {}, {}
    for name, t in tensors.items():
        if name.startswith("model.layers."):
            i, rest = name[len("model.layers."):].split(".", 1)
            layers.setdefault(int(i), {})[rest] = t
        elif name in top:
            ours, how = top[name]
            out[ours] = how(t)
        else:
            out[name] = t
    return out, layers
