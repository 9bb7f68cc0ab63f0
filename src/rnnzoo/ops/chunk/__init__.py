"""Chunkwise-parallel matrix-state recurrences, each next to its recurrent reference.

delta.py: the delta rule (DeltaNet, Gated DeltaNet, negative eigenvalues), DeltaProduct and
RWKV-7's generalised delta rule.
"""

from rnnzoo.ops.chunk.delta import (delta_product, delta_product_recurrent, delta_rule,
                                    delta_rule_recurrent, delta_rule_step, rwkv7,
                                    rwkv7_recurrent, rwkv7_step)

__all__ = ["delta_rule", "delta_rule_recurrent", "delta_rule_step",
           "delta_product", "delta_product_recurrent",
           "rwkv7", "rwkv7_recurrent", "rwkv7_step"]
