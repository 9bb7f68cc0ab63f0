"""rnnzoo: every recurrent sequence model in one PyTorch library, one contract for all.

    import rnnzoo
    layer = rnnzoo.create("mingru", d_model=64)
    y, state = layer(x)                  # x: (batch, time, 64)
    y_t, state = layer.step(x_t, state)  # x_t: (batch, 64)
    lstm = rnnzoo.nn.LSTM(32, 64, num_layers=2)  # a drop-in for torch.nn.LSTM
"""

from rnnzoo import nn
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.registry import Info, create, list_layers, register


def load(path, device=None):
    """Rebuild a model saved by `rnnzoo.models.save` or `rnnzoo train` (a run folder or its
    model.safetensors). Reads safetensors and JSON only; never unpickles."""
    from rnnzoo.models.checkpoint import load as _load
    return _load(path, device=device)


def from_pretrained(path, *, device=None, dtype=None, max_len=4096):
    """Build the rnnzoo model of a Hugging Face checkpoint folder (config.json + safetensors;
    mamba, mamba2, recurrent_gemma, ...: docs/hf.md), each recurrent layer a registered
    rnnzoo layer with the checkpoint's weights. Reads JSON and safetensors only. max_len:
    the token capacity of full-attention KV caches."""
    from rnnzoo.hf.load import from_pretrained as _from_pretrained
    return _from_pretrained(path, device=device, dtype=dtype, max_len=max_len)


__version__ = "0.1.0"
__all__ = ["nn", "RecurrentLayer", "Info", "create", "list_layers", "register", "load",
           "from_pretrained"]
