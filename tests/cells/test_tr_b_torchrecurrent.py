"""Oracle tests: each cell of the second half of the torchrecurrent catalogue
(MiRU1 ... WMCLSTM) against torchrecurrent 0.2.5's cell of the same weights, in
float64: equal outputs, final states and gradients (inputs, initial state and
every parameter) over a short sequence.

Cells where torchrecurrent departs from the paper (SCRN) are pinned to the
paper's equations in test_tr_b_paper.py instead.
"""

from __future__ import annotations

import pytest
import torch

import rnnzoo.layers.classic  # noqa: F401  (imports every cell module)
from rnnzoo.registry import CELLS

tr = pytest.importorskip("torchrecurrent", reason="torchrecurrent==0.2.5 is the oracle "
                         "(installed by .ci/install-peers)")

B, T, D, H = 3, 7, 5, 4


def _same(name, **kw):
    """Peer of the same parameter names and layouts; one peer step per time step."""
    return dict(peer=name, peer_kw=kw, map=lambda sd: sd, step=_single_or_double)


def _single_or_double(peer, x_t, state):
    out = peer(x_t, state[0] if len(state) == 1 else state)
    return (out,) if isinstance(out, torch.Tensor) else tuple(out)


def _taugru_map(sd):
    """rnnzoo keeps tau-GRU's rows as [u, g, a, z] (the three gates of h first),
    torchrecurrent as [u, z, g, a]."""
    return {k: torch.cat([v.chunk(4, 0)[i] for i in (0, 3, 1, 2)], 0) for k, v in sd.items()}


def _taugru_unmap(sd):
    return {k: torch.cat([v.chunk(4, 0)[i] for i in (0, 2, 3, 1)], 0) for k, v in sd.items()}


def _taugru_step(peer, x_t, state):
    h, *history = state
    new = peer(x_t, h, history[-1])
    return (new, h, *history[:-1])


def _tlstm_step(peer, x_t, state):
    h, c, x_prev = state
    h, (c, x_prev) = peer(x_t, (c, x_prev))
    return (h, c, x_prev)


ORACLES = {
    "miru1": (dict(update_coefficient=0.3), _same("MiRU1Cell", update_coefficient=0.3)),
    "miru2": (dict(update_coefficient=0.3, reset_coefficient=0.7),
              _same("MiRU2Cell", update_coefficient=0.3, reset_coefficient=0.7)),
    "mut1": ({}, _same("MUT1Cell")),
    "mut2": ({}, _same("MUT2Cell")),
    "mut3": ({}, _same("MUT3Cell")),
    "nas": ({}, _same("NASCell")),
    "multiplicative_lstm": ({}, _same("MultiplicativeLSTMCell")),
    "original_lstm": ({}, _same("OriginalLSTMCell")),
    "peephole_lstm": ({}, _same("PeepholeLSTMCell")),
    "ran": ({}, _same("RANCell")),
    "res_lstm": ({}, _same("ResLSTMCell")),
    "sgrn": ({}, _same("SGRNCell")),
    "sgu": ({}, _same("SGUCell")),
    "dsgu": ({}, _same("DSGUCell")),
    "star": ({}, _same("STARCell")),
    "taugru": (dict(delay=2), dict(peer="tauGRUCell", peer_kw={}, map=_taugru_map,
                                   unmap=_taugru_unmap, step=_taugru_step)),
    "trnn": ({}, _same("TRNNCell")),
    "tgru": ({}, _same("TGRUCell")),
    "tlstm": ({}, dict(peer="TLSTMCell", peer_kw={}, map=lambda sd: sd, step=_tlstm_step)),
    "unicornn": (dict(dt=0.3, alpha=0.4), _same("UnICORNNCell", dt=0.3, alpha=0.4)),
    "wmclstm": ({}, _same("WMCLSTMCell")),
}


def _perturbed(cell, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in cell.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return cell


def _loss(outputs, state, seed=5):
    g = torch.Generator().manual_seed(seed)
    loss = (outputs * torch.randn(outputs.shape, generator=g, dtype=outputs.dtype)).sum()
    for s in state:
        loss = loss + (s * torch.randn(s.shape, generator=g, dtype=s.dtype)).sum()
    return loss


def _grads(loss, wrt):
    """Gradients, zero for an input the loss does not use (T-LSTM's initial h)."""
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    return [torch.zeros_like(w) if g is None else g for w, g in zip(wrt, grads)]


@pytest.mark.parametrize("name", sorted(ORACLES))
def test_equals_torchrecurrent(name):
    options, spec = ORACLES[name]
    torch.manual_seed(0)
    mine = _perturbed(CELLS[name].cls(D, H, **options).double())
    peer = getattr(tr, spec["peer"])(D, H, **spec["peer_kw"]).double()
    mapped = spec["map"]({k: v.detach() for k, v in mine.state_dict().items()})
    missing, unexpected = peer.load_state_dict(mapped, strict=False)
    assert not unexpected, unexpected
    peer_params = dict(peer.named_parameters())
    assert set(peer_params) == set(dict(mine.named_parameters())), \
        "every trainable parameter of the peer must come from ours"

    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, D, generator=g, dtype=torch.float64, requires_grad=True)
    s0 = tuple(torch.randn(B, n, generator=g, dtype=torch.float64).mul(0.5).requires_grad_()
               for n in mine.state_sizes)

    y, s = mine.loop(x, s0)
    state, ys = s0, []
    for t in range(T):
        state = spec["step"](peer, x[:, t], state)
        ys.append(state[0])
    y_peer = torch.stack(ys, 1)
    assert (y - y_peer).abs().max() < 1e-12
    for a, b in zip(s, state):
        assert (a - b).abs().max() < 1e-12

    mine_p = dict(mine.named_parameters())
    names = sorted(mine_p)
    ours = _grads(_loss(y, s), [x, *s0, *(mine_p[k] for k in names)])
    theirs = _grads(_loss(y_peer, state), [x, *s0, *(peer_params[k] for k in names)])
    unmap = spec.get("unmap", lambda sd: sd)
    n = 1 + len(s0)
    theirs = list(theirs[:n]) + [unmap(dict(zip(names, theirs[n:])))[k] for k in names]
    for a, b in zip(ours, theirs):
        assert (a - b).abs().max() < 1e-10 * (1 + b.abs().max())
