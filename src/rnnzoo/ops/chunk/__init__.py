"""Chunkwise-parallel matrix-state recurrences, each next to its recurrent reference.

`linear`: gated linear attention (no / scalar / vector decay, RWKV-6 bonus) and mLSTM.
`delta`: the delta rule (DeltaNet, Gated DeltaNet, negative eigenvalues), DeltaProduct and
RWKV-7's generalised delta rule.
"""

from rnnzoo.ops.chunk.delta import (
    delta_product,
    delta_product_recurrent,
    delta_rule,
    delta_rule_recurrent,
    delta_rule_step,
    rwkv7,
    rwkv7_recurrent,
    rwkv7_step,
)
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
    "delta_rule", "delta_rule_recurrent", "delta_rule_step",
    "delta_product", "delta_product_recurrent", "rwkv7", "rwkv7_recurrent", "rwkv7_step",
]
