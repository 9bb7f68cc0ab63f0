"""torchrecurrent 0.2.5 as the speed baseline of the second half of its catalogue
(MiRU1 ... WMCLSTM): its multi-layer class of the same sizes, holding our cell's
weights, followed by the layer's own output map. Used only by `rnnzoo bench`."""

from __future__ import annotations

import torch

from rnnzoo.bench import register_baseline

# rnnzoo layer name -> (torchrecurrent class name, options taken from our cell)
PEERS = {
    "miru1": ("MiRU1", ("update_coefficient",)),
    "miru2": ("MiRU2", ("update_coefficient", "reset_coefficient")),
    "multiplicative_lstm": ("MultiplicativeLSTM", ()),
    "mut1": ("MUT1", ()),
    "mut2": ("MUT2", ()),
    "mut3": ("MUT3", ()),
    "nas": ("NAS", ()),
    "original_lstm": ("OriginalLSTM", ()),
    "peephole_lstm": ("PeepholeLSTM", ()),
    "ran": ("RAN", ()),
    "res_lstm": ("ResLSTM", ()),
    "scrn": ("SCRN", ()),
    "sgrn": ("SGRN", ()),
    "sgu": ("SGU", ()),
    "dsgu": ("DSGU", ()),
    "star": ("STAR", ()),
    "taugru": ("tauGRU", ("delay",)),
    "trnn": ("TRNN", ()),
    "tgru": ("TGRU", ()),
    "tlstm": ("TLSTM", ()),
    "unicornn": ("UnICORNN", ("dt", "alpha")),
    "wmclstm": ("WMCLSTM", ()),
}


def _peer_state_dict(name: str, cell) -> dict:
    """Our cell's parameters under torchrecurrent's names and row orders."""
    sd = {k: v.detach() for k, v in cell.state_dict().items()}
    if name == "taugru":  # ours [u; g; a; z], theirs [u; z; g; a]
        sd = {k: torch.cat([v.chunk(4, 0)[i] for i in (0, 3, 1, 2)], 0) for k, v in sd.items()}
    return sd


def _factory(name: str, peer_name: str, options: tuple[str, ...]):
    def factory(layer, x):
        import torchrecurrent

        cell = layer.cell
        kw = {k: getattr(cell, k) for k in options}
        peer = getattr(torchrecurrent, peer_name)(layer.d_model, layer.hidden_size,
                                                  batch_first=True, **kw)
        peer.cells[0].load_state_dict(_peer_state_dict(name, cell), strict=False)
        if name == "scrn":  # a learned scalar there, a fixed option here
            peer.cells[0].alpha.data.fill_(cell.alpha)
        peer = peer.to(x.device, x.dtype)
        return lambda: layer.out_proj(peer(x)[0])
    return factory


for _name, (_peer, _opts) in PEERS.items():
    register_baseline(_name, "torchrecurrent")(_factory(_name, _peer, _opts))
