"""xLSTM-7B checkpoints (transformers' `xlstm`) -> rnnzoo blocks.

xLSTM-7B (Beck et al. 2025, "xLSTM 7B", arXiv:2503.13427) is a stack of mLSTM-only blocks,
x + mLSTM(RMSNorm(x)) then h + SwiGLU(RMSNorm(h)), whose mLSTM layer is not the
pre-up-projection block of rnnzoo's `mlstm` (Beck et al. 2024): no up-projection, no
causal convolution, no block-diagonal q/k/v, no learnable skip; instead

    q, k = W_q x, W_k x (qk_dim_factor d wide),  v = W_v x,  o = sigmoid(W_o x)
    i~ = cap tanh((W_i x + b_i) / cap),  log f = logsigmoid(cap tanh((W_f x + b_f) / cap))
    h = mLSTM(q, k, v, i~, log f)   (the stabilised cell: rnnzoo.ops.chunk.linear.mlstm)
    y = W_out (LayerNorm_head(h) * o)        (per-head LayerNorm with weight, no bias)

`XLSTMLayer` is that layer on rnnzoo's mLSTM cell ops (the same recurrence and chunkwise
form `mlstm` uses), so it is a layer of the rnnzoo contract, not the registered `mlstm`.
The head soft-caps the logits at output_logit_soft_cap. State (C (B, H, K, V), n (B, H,
K), m (B, H)). Modes: `sequential`, `chunk`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import positive, positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.hf.load import need
from rnnzoo.hf.model import GatedMLP, PretrainedModel, block
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.norms import HeadNorm
from rnnzoo.ops.chunk.linear import mlstm, mlstm_recurrent


class XLSTMLayer(RecurrentLayer):
    """x: (B, T, d_model) -> y; state (C, n, m)."""

    modes = ("sequential", "chunk")

    def __init__(self, d_model: int, num_heads: int, qk_dim: int, v_dim: int,
                 gate_soft_cap: float = 15.0, norm_eps: float = 1e-6, eps: float = 1e-6,
                 chunk_size: int = 64):
        super().__init__(d_model)
        H = positive_int("num_heads", num_heads)
        if qk_dim % H or v_dim % H:
            raise ValueError(f"num_heads={H} must divide qk_dim={qk_dim} and v_dim={v_dim}")
        self.num_heads, self.qk_dim, self.v_dim = H, qk_dim, v_dim
        self.cap, self.eps = positive("gate_soft_cap", gate_soft_cap), eps
        self.chunk_size = positive_int("chunk_size", chunk_size)
        self.q = nn.Linear(d_model, qk_dim, bias=False)
        self.k = nn.Linear(d_model, qk_dim, bias=False)
        self.v = nn.Linear(d_model, v_dim, bias=False)
        self.o_gate = nn.Linear(d_model, v_dim, bias=False)
        self.i_gate = nn.Linear(d_model, H)
        self.f_gate = nn.Linear(d_model, H)
        self.norm = HeadNorm(H, v_dim // H, kind="layer", eps=norm_eps)
        self.out_proj = nn.Linear(v_dim, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        sd, H = state_dtype(dtype), self.num_heads
        K, V = self.qk_dim // H, self.v_dim // H
        return (torch.zeros(batch_size, H, K, V, device=device, dtype=sd),
                torch.zeros(batch_size, H, K, device=device, dtype=sd),
                torch.zeros(batch_size, H, device=device, dtype=sd))

    def _forward(self, x, state, mode):
        B, T, _ = x.shape
        H, cdt = self.num_heads, compute_dtype(x)
        q, k, v = (p(x).to(cdt).view(B, T, H, -1) for p in (self.q, self.k, self.v))
        log_i = self.cap * torch.tanh(self.i_gate(x).to(cdt) / self.cap)
        log_f = F.logsigmoid(self.cap * torch.tanh(self.f_gate(x).to(cdt) / self.cap))
        if mode == "chunk":
            h, state = mlstm(q, k, v, log_i, log_f, initial_state=state, eps=self.eps,
                             chunk_size=self.chunk_size)
        else:
            h, state = mlstm_recurrent(q, k, v, log_i, log_f, initial_state=state, eps=self.eps)
        h = self.norm(h).flatten(2) * torch.sigmoid(self.o_gate(x).to(cdt))
        return self.out_proj(h.to(x.dtype)), state

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, qk_dim={self.qk_dim}, "
                f"v_dim={self.v_dim}, gate_soft_cap={self.cap}")


def ffn_size(c: dict) -> int:
    m = c.get("ffn_round_up_to_multiple_of", 64)
    size = int(c["hidden_size"] * c.get("ffn_proj_factor", 2.667))
    return (size + m - 1) // m * m


def build(c: dict, max_len: int = 4096) -> PretrainedModel:
    t, d = c["model_type"], c.get("hidden_size") or c["embedding_dim"]
    need(c.get("weight_mode", "single") == "single", t, f"weight_mode={c.get('weight_mode')!r}")
    need(not c.get("use_bias", False), t, "use_bias=True")
    need(c.get("add_out_norm", True), t, "add_out_norm=False")
    H, n = c["num_heads"], c.get("num_blocks") or c["num_hidden_layers"]
    eps = c.get("norm_eps", 1e-6)
    blocks = [block(XLSTMLayer(d, H, int(d * c.get("qk_dim_factor", 0.5)),
                               int(d * c.get("v_dim_factor", 1.0)), c.get("gate_soft_cap", 15.0),
                               eps, c.get("eps", 1e-6), min(64, c.get("chunk_size", 64))),
                    d, {}, layer_idx=i, num_layers=n, norm_eps=eps, mlp=GatedMLP(d, ffn_size(c)))
              for i in range(n)]
    return PretrainedModel(vocab_size=c["vocab_size"], d_model=d, layers=["xlstm_7b"] * n,
                           blocks=blocks, norm_eps=eps, tie=c.get("tie_word_embeddings", False),
                           model_type=t, source_config=c,
                           logit_softcap=c.get("output_logit_soft_cap"))


NAMES = {"norm_mlstm.weight": "norm.weight", "norm_ffn.weight": "mlp_norm.weight",
         "mlstm_layer.ogate_preact.weight": "mixer.o_gate.weight",
         "mlstm_layer.igate_preact.weight": "mixer.i_gate.weight",
         "mlstm_layer.igate_preact.bias": "mixer.i_gate.bias",
         "mlstm_layer.fgate_preact.weight": "mixer.f_gate.weight",
         "mlstm_layer.fgate_preact.bias": "mixer.f_gate.bias",
         "ffn.proj_up_gate.weight": "mlp.gate.weight", "ffn.proj_up.weight": "mlp.up.weight",
         "ffn.proj_down.weight": "mlp.down.weight"}


def rename(tensors: dict, c: dict) -> dict:
    out, H = {}, c["num_heads"]
    for name, t in tensors.items():
        if name.startswith("backbone.blocks."):
            i, rest = name[len("backbone.blocks."):].split(".", 1)
            p = f"blocks.{i}."
            if rest == "mlstm_layer.multihead_norm.weight":
                out[p + "mixer.norm.weight"] = t.view(H, -1)
                out[p + "mixer.norm.bias"] = t.new_zeros(H, t.shape[0] // H)  # use_bias=False
            elif rest.startswith("mlstm_layer.") and rest not in NAMES:  # q, k, v, out_proj
                out[p + "mixer." + rest[len("mlstm_layer."):]] = t
            else:
                out[p + NAMES.get(rest, "unplaced." + rest)] = t
        else:
            out[{"backbone.embeddings.weight": "embed.weight", "backbone.out_norm.weight":
                 "norm.weight", "lm_head.weight": "head.weight"}.get(name, name)] = t
    if "head.weight" not in out:
        out["head.weight"] = out["embed.weight"]
    return out
