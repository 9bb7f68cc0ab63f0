"""torchrecurrent 0.2.5 as the speed baseline of the catalogue's first half.

Each factory builds torchrecurrent's layer of the same sizes (batch_first),
copies the rnnzoo cell's weights into it, and returns a run function that
feeds its output through the rnnzoo layer's own output map, so both sides do
the same work. torchrecurrent is imported inside the factory; without it the
bench reports the row as skipped.

Where torchrecurrent's maths differs from the paper (coRNN's damping, LEM's
y-update, FastGRNN's default gate) its layer runs its own equations at the same
sizes: the comparison is of cost, the correctness oracle is in
tests/cells/test_tr_a_oracle.py.
"""

from __future__ import annotations

import torch

from rnnzoo.bench import register_baseline

# layer name -> (torchrecurrent layer class, its constructor options, {ours: its} renames)
PEERS = {
    "antisymmetric_rnn": ("AntisymmetricRNN", {}, {}),
    "gated_antisymmetric_rnn": ("GatedAntisymmetricRNN", {}, {}),
    "atr": ("ATR", {}, {}),
    "br": ("BR", {}, {}),
    "nbr": ("NBR", {}, {}),
    "cfn": ("CFN", {}, {}),
    "cornn": ("coRNN", {}, {}),
    "fastrnn": ("FastRNN", {}, {}),
    "fastgrnn": ("FastGRNN", {"nonlinearity": "sigmoid"}, {}),
    "indrnn": ("IndRNN", {"nonlinearity": "relu"}, {"weight_hh": "vector_u"}),
    "intersection_rnn": ("IntersectionRNN", {}, {}),
    "ugrnn": ("UGRNN", {}, {}),
    "janet": ("JANET", {}, {}),
    "lem": ("LEM", {}, {}),
    "ligru": ("LiGRU", {}, {}),
    "lightru": ("LightRU", {}, {}),
    "mclstm": ("MCLSTM", {}, {}),
    "mgu": ("MGU", {}, {}),
    "minimal_rnn": ("MinimalRNN", {}, {}),
}

_CELL_OPTIONS = ("epsilon", "gamma", "dt", "beta")  # scalar options both sides share


def _factory(name: str):
    cls_name, options, rename = PEERS[name]

    def factory(layer, x):
        import torchrecurrent

        cell = layer.cell
        if name == "intersection_rnn" and cell.hidden_size != cell.input_size:
            raise ImportError("torchrecurrent's IntersectionRNN needs hidden_size == d_model")
        kw = dict(options)
        for opt in _CELL_OPTIONS:
            if isinstance(getattr(cell, opt, None), float):
                kw[opt] = getattr(cell, opt)
        peer = getattr(torchrecurrent, cls_name)(cell.input_size, cell.hidden_size,
                                                 batch_first=True, **kw)
        peer = peer.to(x.device, x.dtype)
        target = peer.cells[0]
        with torch.no_grad():
            for n, p in cell.named_parameters():
                getattr(target, rename.get(n, n)).copy_(p)
            for opt, value in kw.items():  # JANET's beta: a float here, a parameter there
                if isinstance(getattr(target, opt, None), torch.nn.Parameter):
                    getattr(target, opt).fill_(value)
        return lambda: layer.out_proj(peer(x)[0])

    return factory


for _name in PEERS:
    register_baseline(_name, "torchrecurrent")(_factory(_name))
