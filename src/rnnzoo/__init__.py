"""rnnzoo: every recurrent sequence model in one PyTorch library, one contract for all.

    import rnnzoo
    layer = rnnzoo.create("mingru", d_model=64)
    y, state = layer(x)                  # x: (batch, time, 64)
    y_t, state = layer.step(x_t, state)  # x_t: (batch, 64)
"""

from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.registry import LayerInfo, create, list_layers, register

__version__ = "0.1.0"
__all__ = ["RecurrentLayer", "LayerInfo", "create", "list_layers", "register"]
