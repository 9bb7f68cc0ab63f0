"""HGRN2 (Qin et al. 2024, "HGRN2: Gated Linear RNNs with State Expansion", arXiv:2404.07904).

HGRN's gated recurrence with its forget gate f_t and input gate 1 - f_t, the
elementwise product replaced by an outer product (state expansion, section 3):

    f_t = beta + (1 - beta) sigmoid(x_t W_f)          (forget gate with lower bound beta)
    S_t = diag(f_t) S_{t-1} + (1 - f_t) i_t^T,  i_t = x_t W_i
    o_t = S_t^T q_t,  q_t = swish(x_t W_q)             (the output gate acts as the query)
    y_t = RMSNorm_h(o_t) W_O

so it is gated linear attention with k = 1 - f and log decay log f. In a stack
the lower bound beta grows with depth (HGRN); one layer takes it as `lower_bound`.
`d_state` is the key width per head (the state expansion, the paper's expand ratio),
as Mamba-2's d_state. Modes: `sequential`, `chunk`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rnnzoo.checks import positive_int
from rnnzoo.dtypes import state_dtype
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.norms import HeadNorm
from rnnzoo.ops import first_order
from rnnzoo.ops.chunk.linear import gated_linear_attention, gated_linear_attention_recurrent
from rnnzoo.ops.native.head_norm import rms_gate
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import register


def _gates_plain(qf):
    """`_Gates`'s forward in plain differentiable ops (its `twice`)."""
    a, b = qf.unbind(2)
    return F.silu(a), F.logsigmoid(b), torch.sigmoid(-b)


class _Gates(first_order.Function):
    """q = silu(a), log f = logsigmoid(b), k = 1 - f = sigmoid(-b) (lower bound 0) from the
    projection's output qf (B, T, 2, H, K) = (a, b), whose gradient is written into one
    buffer: d a = silu'(a) dq,  d b = sigma(-b) (d log f - sigma(b) dk)  (autograd would run a
    pass per op and stack the two halves' gradients)."""

    @staticmethod
    def forward(ctx, qf):
        a, b = qf.unbind(2)
        ctx.save_for_backward(qf)
        return F.silu(a), F.logsigmoid(b), torch.sigmoid(-b)

    @staticmethod
    def twice(ctx, dq, dlog_f, dk):  # under create_graph: autograd through the plain form
        return first_order.replay(_gates_plain, ctx.saved_tensors, (dq, dlog_f, dk),
                                  ctx.needs_input_grad)

    @staticmethod
    def backward(ctx, dq, dlog_f, dk):
        (qf,) = ctx.saved_tensors
        a, b = qf.unbind(2)
        d = torch.zeros_like(qf) if dq is None or dlog_f is None or dk is None \
            else torch.empty_like(qf)
        da, db = d.unbind(2)
        if dq is not None:
            torch.ops.aten.silu_backward.grad_input(dq, a, grad_input=da)
        if dlog_f is not None or dk is not None:
            s = torch.sigmoid(b)  # f
            t = (torch.zeros_like(s) if dlog_f is None else dlog_f) - (0 if dk is None else dk * s)
            torch.addcmul(t, s, t, value=-1, out=db)  # (1 - f) t
        return d


@register("hgrn2", family="matrix", paper="Qin et al. 2024, arXiv:2404.07904",
          tiny=dict(d_model=8, num_heads=2, d_state=4, chunk_size=4, subchunk_size=2,
                    lower_bound=0.3))
class HGRN2(RecurrentLayer):
    """x: (B, T, d_model) -> y; state S: (B, num_heads, d_state, d_model // num_heads)."""

    modes = ("sequential", "chunk")

    def __init__(self, d_model: int, num_heads: int = 4, d_state: int = 64,
                 lower_bound: float = 0.0, chunk_size: int = 32, subchunk_size: int = 16):
        super().__init__(d_model)
        for name, value in (("num_heads", num_heads), ("d_state", d_state),
                            ("chunk_size", chunk_size), ("subchunk_size", subchunk_size)):
            positive_int(name, value)
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be a multiple of num_heads={num_heads}")
        if not 0.0 <= lower_bound < 1.0:
            raise ValueError(f"lower_bound must lie in [0, 1), got {lower_bound!r}")
        self.num_heads, self.key_dim, self.value_dim = num_heads, d_state, d_model // num_heads
        self.lower_bound, self.chunk_size, self.subchunk_size = lower_bound, chunk_size, subchunk_size
        H, K = num_heads, d_state
        self.qf = Linear(d_model, 2 * H * K, bias=False)
        self.i_proj = Linear(d_model, d_model, bias=False)
        self.norm = HeadNorm(H, self.value_dim, kind="rms")
        self.out_proj = Linear(d_model, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        return torch.zeros(batch_size, self.num_heads, self.key_dim, self.value_dim,
                           device=device, dtype=state_dtype(dtype))

    def lion_inputs(self, x):
        """q, k = 1 - f, v, log f (per key channel) and scale 1: the op's inputs (also those of
        bidirectional=True, layers/bidirectional.py)."""
        B, T, _ = x.shape
        H, K, V = self.num_heads, self.key_dim, self.value_dim
        qf = self.qf(x).view(B, T, 2, H, K)
        beta = self.lower_bound
        if beta == 0.0 and qf.dtype == state_dtype(qf.dtype):  # one Function, one gradient
            q, log_f, k = _Gates.apply(qf)
            return q, k, self.i_proj(x).view(B, T, H, V), log_f, 1.0
        q, f = qf.unbind(2)
        q, f = F.silu(q), f.to(state_dtype(x.dtype))
        if beta == 0.0:  # log f and 1 - f without cancellation
            log_f, k = F.logsigmoid(f), torch.sigmoid(-f)
        else:
            forget = beta + (1 - beta) * torch.sigmoid(f)
            log_f, k = forget.log(), (1 - beta) * torch.sigmoid(-f)
        return q, k, self.i_proj(x).view(B, T, H, V), log_f, 1.0

    def lion_output(self, o, x):
        """Per-head norm, then the output projection."""
        return self.out_proj(rms_gate(o.flatten(2), self.norm.weight, self.value_dim,
                                      self.norm.eps))  # ops.native.head_norm

    def _forward(self, x, state, mode):
        q, k, v, log_f, _ = self.lion_inputs(x)
        kw = dict(scale=1.0, initial_state=state)
        if mode == "chunk":
            o, state = gated_linear_attention(q, k, v, log_f, chunk_size=self.chunk_size,
                                              subchunk_size=self.subchunk_size, **kw)
        else:
            o, state = gated_linear_attention_recurrent(q, k, v, log_f, **kw)
        return self.lion_output(o, x), state
