"""Chunkwise-parallel matrix-state recurrences, each next to its recurrent reference.

`linear`: gated linear attention (no / scalar / vector decay, RWKV-6 bonus) and mLSTM.
"""

from rnnzoo.ops.chunk.linear import (
    gated_linear_attention,
    gated_linear_attention_parallel,
    gated_linear_attention_recurrent,
    mlstm,
    mlstm_recurrent,
)

__all__ = [
    "gated_linear_attention", "gated_linear_attention_parallel",
    "gated_linear_attention_recurrent", "mlstm", "mlstm_recurrent",
]
