"""torchrecurrent 0.2.5 as the speed baseline of the classic cells it ships.

Each factory builds torchrecurrent's multi-layer class of the same sizes
(batch_first), copies the rnnzoo cell's weights into it, and returns a run
function that feeds its output through the rnnzoo layer's own output map, so
both sides do the same work. torchrecurrent is imported inside the factory;
without it the bench reports the row as skipped.

Where torchrecurrent's maths differs from the paper (coRNN's damping, LEM's
y-update, FastGRNN's default gate, SCRN's feedback) its layer runs its own
equations at the same sizes: the comparison is of cost; the correctness oracle
is tests/cells/test_torchrecurrent.py.

The classic cells torchrecurrent lacks and that have no torch kernel of their
own are timed against torch.nn.LSTM of the same sizes (`VS_TORCH_LSTM`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from rnnzoo.bench import register_baseline, torch_rnn_baseline


def _taugru_rows(sd: dict) -> dict:
    """Ours [u; g; a; z], theirs [u; z; g; a]."""
    return {k: torch.cat([v.chunk(4, 0)[i] for i in (0, 3, 1, 2)], 0) for k, v in sd.items()}


class Peer(NamedTuple):
    cls: str                        # torchrecurrent's multi-layer class
    options: tuple[str, ...] = ()   # our cell's options passed to it under the same name
    fixed: tuple = ()               # (name, value) constructor options of its own
    rename: tuple = ()              # (ours, its) parameter names that differ
    convert: Callable[[dict], dict] | None = None  # our parameters -> its layout


PEERS = {
    "antisymmetric_rnn": Peer("AntisymmetricRNN", ("epsilon", "gamma")),
    "gated_antisymmetric_rnn": Peer("GatedAntisymmetricRNN", ("epsilon", "gamma")),
    "atr": Peer("ATR"),
    "br": Peer("BR"),
    "nbr": Peer("NBR"),
    "cfn": Peer("CFN"),
    "cornn": Peer("coRNN", ("dt", "gamma", "epsilon")),
    "fastrnn": Peer("FastRNN"),
    "fastgrnn": Peer("FastGRNN", fixed=(("nonlinearity", "sigmoid"),)),
    "indrnn": Peer("IndRNN", fixed=(("nonlinearity", "relu"),), rename=(("weight_hh", "vector_u"),)),
    "intersection_rnn": Peer("IntersectionRNN"),
    "ugrnn": Peer("UGRNN"),
    "janet": Peer("JANET", ("beta",)),
    "lem": Peer("LEM", ("dt",)),
    "ligru": Peer("LiGRU"),
    "lightru": Peer("LightRU"),
    "mclstm": Peer("MCLSTM"),
    "mgu": Peer("MGU"),
    "minimal_rnn": Peer("MinimalRNN"),
    "miru1": Peer("MiRU1", ("update_coefficient",)),
    "miru2": Peer("MiRU2", ("update_coefficient", "reset_coefficient")),
    "multiplicative_lstm": Peer("MultiplicativeLSTM"),
    "mut1": Peer("MUT1"),
    "mut2": Peer("MUT2"),
    "mut3": Peer("MUT3"),
    "nas": Peer("NAS"),
    "original_lstm": Peer("OriginalLSTM"),
    "peephole_lstm": Peer("PeepholeLSTM"),
    "ran": Peer("RAN"),
    "res_lstm": Peer("ResLSTM"),
    "scrn": Peer("SCRN"),
    "sgrn": Peer("SGRN"),
    "sgu": Peer("SGU"),
    "dsgu": Peer("DSGU"),
    "star": Peer("STAR"),
    "taugru": Peer("tauGRU", ("delay",), convert=_taugru_rows),
    "trnn": Peer("TRNN"),
    "tgru": Peer("TGRU"),
    "tlstm": Peer("TLSTM"),
    "unicornn": Peer("UnICORNN", ("dt", "alpha")),
    "wmclstm": Peer("WMCLSTM"),
}

# options that are fixed here and learned there (JANET's beta, SCRN's alpha): the peer's
# parameter of that name starts at our value
_LEARNED_THERE = ("beta", "alpha")


def _factory(name: str, peer: Peer):
    def factory(layer, x):
        import torchrecurrent

        cell = layer.cell
        if name == "intersection_rnn" and cell.hidden_size != cell.input_size:
            raise ImportError("torchrecurrent's IntersectionRNN needs hidden_size == d_model")
        kw = dict(peer.fixed, **{k: getattr(cell, k) for k in peer.options})
        theirs = getattr(torchrecurrent, peer.cls)(cell.input_size, cell.hidden_size,
                                                   batch_first=True, **kw)
        theirs = theirs.to(x.device, x.dtype)
        target, rename = theirs.cells[0], dict(peer.rename)
        params = {rename.get(n, n): p.detach() for n, p in cell.named_parameters()}
        with torch.no_grad():
            for n, p in (peer.convert or dict)(params).items():
                getattr(target, n).copy_(p)
            for opt in _LEARNED_THERE:
                if isinstance(getattr(target, opt, None), torch.nn.Parameter) \
                        and isinstance(getattr(cell, opt, None), float):
                    getattr(target, opt).fill_(getattr(cell, opt))
        return lambda: layer.out_proj(theirs(x)[0])

    return factory


for _name, _peer in PEERS.items():
    register_baseline(_name, "torchrecurrent")(_factory(_name, _peer))


VS_TORCH_LSTM = ("cifg_lstm", "gru_v3", "ln_lstm", "ln_gru", "rhn", "sru", "qrnn", "exprnn",
                 "lipschitz_rnn", "ltc", "cfc", "slstm")
for _name in VS_TORCH_LSTM:
    register_baseline(_name, "torch.nn.LSTM")(torch_rnn_baseline(torch.nn.LSTM))


@register_baseline("lstm", "torchrecurrent")
def torchrecurrent_peephole_lstm(layer, x):
    """lstm with peepholes (the same cell as peephole_lstm) against torchrecurrent's
    PeepholeLSTM; torchrecurrent has no plain LSTM, GRU or Elman RNN."""
    import torchrecurrent  # the peer, imported only when timed

    if getattr(layer.cell, "weight_ph", None) is None:
        raise ImportError("torchrecurrent has no plain LSTM; its PeepholeLSTM is timed "
                          "against lstm with --options '{\"lstm\": {\"peepholes\": true}}'")
    peer = torchrecurrent.PeepholeLSTM(layer.d_model, layer.hidden_size, batch_first=True)
    peer = peer.to(x.device, x.dtype)
    return lambda: layer.out_proj(peer(x)[0])
