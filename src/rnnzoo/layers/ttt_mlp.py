"""TTT-MLP (Sun et al. 2024, "Learning to (Learn at Test Time): RNNs with Expressive Hidden
States", arXiv:2407.04620): TTT-Linear's block and inner loop (layers/ttt_linear.py,
ops/memory.py) with a two-layer MLP as the hidden state,

    f_res(x; W_1, b_1, W_2, b_2) = gelu(x W_1 + b_1) W_2 + b_2       (K -> 4K -> K, GELU tanh)

trained by the same mini-batch gradient descent on 1/2 |LN(f_res(k)) - (v - k)|^2 and read as
o = q + LN(f_res(q)). The dual form runs each dense layer's read as TTT-Linear's, the second
layer's input being the GELU of the first one's read. The paper's base rate for the MLP is 0.1.
"""

from __future__ import annotations

from rnnzoo.layers.ttt_linear import TTTLayer
from rnnzoo.registry import register


@register("ttt_mlp", family="matrix", paper="Sun et al. 2024, arXiv:2407.04620 (TTT-MLP)",
          tiny=dict(d_model=6, num_heads=2, head_dim=3, mini_batch_size=4, d_conv=2))
class TTTMLP(TTTLayer):
    __doc__ = TTTLayer.__doc__
    kind = "mlp"

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 mini_batch_size: int = 16, base_lr: float = 0.1, d_conv: int = 4,
                 inner_norm: bool = True, norm_eps: float = 1e-6, rope: bool = False,
                 rope_base: float = 10000.0):
        super().__init__(d_model, num_heads, head_dim, mini_batch_size, base_lr, d_conv,
                         inner_norm, norm_eps, rope, rope_base)
