"""Speed baselines for the standard classic cells and the cells torchrecurrent lacks.

- every cell of `cells/{lstm,gru,normalized,highway,quasi,orthogonal,continuous,slstm}.py`
  that has no torch kernel of its own is timed against torch.nn.LSTM of the same sizes
  (the issue's yardstick: within 2x of it);
- `lstm` with `peepholes=True` against torchrecurrent 0.2.5's PeepholeLSTM, the one
  standard cell torchrecurrent also ships (it has no plain LSTM, GRU or Elman RNN).
"""

from __future__ import annotations

import torch

from rnnzoo.bench import register_baseline, torch_rnn_baseline

_VS_TORCH_LSTM = ("cifg_lstm", "gru_v3", "ln_lstm", "ln_gru", "rhn", "sru", "qrnn", "exprnn",
                  "lipschitz_rnn", "ltc", "cfc", "slstm")
for _name in _VS_TORCH_LSTM:
    register_baseline(_name, "torch.nn.LSTM")(torch_rnn_baseline(torch.nn.LSTM))


@register_baseline("lstm", "torchrecurrent")
def torchrecurrent_peephole_lstm(layer, x):
    import torchrecurrent  # the peer, imported only when timed

    if getattr(layer.cell, "weight_ph", None) is None:
        raise ImportError("torchrecurrent has no plain LSTM; its PeepholeLSTM is timed "
                          "against lstm with --options '{\"lstm\": {\"peepholes\": true}}'")
    peer = torchrecurrent.PeepholeLSTM(layer.d_model, layer.hidden_size, batch_first=True)
    peer = peer.to(x.device, x.dtype)
    return lambda: layer.out_proj(peer(x)[0])
