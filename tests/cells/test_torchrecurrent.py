"""Oracles: each cell torchrecurrent 0.2.5 ships against torchrecurrent's cell of the same
weights, in float64: equal outputs, final states and gradients (inputs, initial state and
every parameter) over a short sequence.

Two tables: `CASES` copies our parameters into the peer one by one and adapts its step's
signature; `ORACLES` loads our state_dict into the peer (with a row map where the layouts
differ). Where torchrecurrent deviates from the paper the comparison runs in the
configuration where the two agree (coRNN with `implicit_damping=False`, FastGRNN with
torchrecurrent's gate set to sigmoid, IndRNN with ReLU), and the family's test file pins
the paper's equations; LEM and SCRN are tested there only (torchrecurrent's LEM y-update
reads z_{n-1} instead of the paper's z_n; its SCRN feeds y_t back in place of h_t).
The bench baselines of peers/torchrecurrent.py run the same layer.
"""

from __future__ import annotations

import pytest
import torch
from peers import torchrecurrent

from rnnzoo.registry import CELLS


# -- step oracles: our parameters copied one by one into the peer's cell ---------------------
def _single(peer, x_t, s):
    h = peer(x_t, s[0])
    return h, (h,)


def _double(peer, x_t, s):
    h, c = peer(x_t, (s[0], s[1]))
    return h, (h, c)


def _janet(peer, x_t, s):  # JANET's h equals c: torchrecurrent carries both
    h, c = peer(x_t, (s[0], s[0]))
    return h, (c,)


def _intersection(peer, x_t, s):  # ours (y, h), torchrecurrent returns (y, h) from h
    y, h = peer(x_t, s[1])
    return y, (y, h)


def _mclstm(peer, x_t, s):  # ours (h, v, c), torchrecurrent returns (h, (v, c)) from (v, c)
    h, (v, c) = peer(x_t, (s[1], s[2]))
    return h, (h, v, c)


# name: (torchrecurrent cell, our options, its options, step adapter, {ours: its} renames)
CASES = {
    "antisymmetric_rnn": ("AntisymmetricRNNCell", dict(epsilon=0.3, gamma=0.2),
                          dict(epsilon=0.3, gamma=0.2), _single, {}),
    "gated_antisymmetric_rnn": ("GatedAntisymmetricRNNCell", dict(epsilon=0.3, gamma=0.2),
                                dict(epsilon=0.3, gamma=0.2), _single, {}),
    "atr": ("ATRCell", {}, {}, _single, {}),
    "br": ("BRCell", {}, {}, _single, {}),
    "nbr": ("NBRCell", {}, {}, _single, {}),
    "cfn": ("CFNCell", {}, {}, _single, {}),
    "cornn": ("coRNNCell", dict(dt=0.3, gamma=0.7, epsilon=0.9, implicit_damping=False),
              dict(dt=0.3, gamma=0.7, epsilon=0.9), _double, {}),
    "fastrnn": ("FastRNNCell", {}, {}, _single, {}),
    "fastgrnn": ("FastGRNNCell", {}, dict(nonlinearity="sigmoid"), _single, {}),
    "indrnn": ("IndRNNCell", {}, dict(nonlinearity="relu"), _single, {"weight_hh": "vector_u"}),
    "intersection_rnn": ("IntersectionRNNCell", {}, {}, _intersection, {}),
    "ugrnn": ("UGRNNCell", {}, {}, _single, {}),
    "janet": ("JANETCell", dict(beta=0.7), dict(beta=0.7), _janet, {}),
    "ligru": ("LiGRUCell", {}, {}, _single, {}),
    "lightru": ("LightRUCell", {}, {}, _single, {}),
    "mclstm": ("MCLSTMCell", {}, {}, _mclstm, {}),
    "mgu": ("MGUCell", {}, {}, _single, {}),
    "minimal_rnn": ("MinimalRNNCell", {}, {}, _single, {}),
}
SIZES = {"intersection_rnn": (5, 5)}  # torchrecurrent requires input_size == hidden_size


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torchrecurrent(name, bias):
    tr = pytest.importorskip("torchrecurrent", reason="torchrecurrent==0.2.5 is the oracle "
                             "(installed by .ci/install-peers)")
    B, T = 3, 6
    peer_cls, ours_kw, peer_kw, step, rename = CASES[name]
    n_in, n_h = SIZES.get(name, (4, 5))
    torch.manual_seed(0)
    ours = CELLS[name].cls(n_in, n_h, bias=bias, **ours_kw).double()
    if not bias:  # torchrecurrent keeps zero buffers in place of the biases
        peer_kw = dict(peer_kw, bias=False, recurrent_bias=False)
        if name == "cornn":
            peer_kw["cell_bias"] = False
    with torch.no_grad():  # move every parameter off its init: biases nonzero, gates mixed
        for p in ours.parameters():
            p.copy_(0.6 * torch.randn_like(p))
    peer = getattr(tr, peer_cls)(n_in, n_h, **peer_kw).double()
    with torch.no_grad():
        for n, p in ours.named_parameters():
            getattr(peer, rename.get(n, n)).copy_(p)
        for k, v in ours_kw.items():  # options torchrecurrent keeps as parameters (JANET's beta)
            if isinstance(getattr(peer, k, None), torch.nn.Parameter):
                getattr(peer, k).fill_(v)

    x = torch.randn(B, T, n_in, dtype=torch.float64, requires_grad=True)
    s0 = tuple((0.5 * torch.randn(B, n, dtype=torch.float64)).requires_grad_()
               for n in ours.state_sizes)
    y, s = ours.loop(x, s0)
    outs, ps = [], s0
    for t in range(T):
        out, ps = step(peer, x[:, t], ps)
        outs.append(out)
    y_peer = torch.stack(outs, 1)

    torch.testing.assert_close(y, y_peer, rtol=1e-10, atol=1e-12)
    assert len(s) == len(ps)
    for a, b in zip(s, ps):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

    w_y = torch.randn_like(y)
    w_s = [torch.randn_like(a) for a in s]

    def grads(y, s, params):
        loss = (y * w_y).sum() + sum((a * w).sum() for a, w in zip(s, w_s))
        return torch.autograd.grad(loss, [x, *s0, *params], allow_unused=True)

    names = [n for n, _ in ours.named_parameters()]
    g_ours = grads(y, s, [p for _, p in ours.named_parameters()])
    g_peer = grads(y_peer, ps, [getattr(peer, rename.get(n, n)) for n in names])
    for what, a, b in zip(["x"] + [f"state[{i}]" for i in range(len(s0))] + names, g_ours, g_peer):
        if a is None or b is None:  # e.g. MC-LSTM's carried output h is never read
            assert a is None and b is None or (a if b is None else b).abs().max() == 0, what
            continue
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=f"grad of {what}")


def test_every_cell_torchrecurrent_ships_is_covered():
    stepwise = {"antisymmetric_rnn", "gated_antisymmetric_rnn", "atr", "br", "nbr", "cfn",
                "cornn", "fastrnn", "fastgrnn", "indrnn", "intersection_rnn", "ugrnn", "janet",
                "lem", "ligru", "lightru", "mclstm", "mgu", "minimal_rnn"}
    assert stepwise <= set(CELLS)
    assert stepwise - set(CASES) == {"lem"}  # LEM: see test_oscillator.py
    # SCRN (torchrecurrent feeds y_t back): see test_scrn.py
    assert set(torchrecurrent.PEERS) - set(CASES) - set(ORACLES) == {"lem", "scrn"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bench_baseline_runs_the_same_layer(name):
    """peers.torchrecurrent builds torchrecurrent's layer with our weights."""
    pytest.importorskip("torchrecurrent", reason="torchrecurrent==0.2.5 is the bench baseline")
    from rnnzoo.bench import BASELINES
    from rnnzoo.registry import create

    torch.manual_seed(0)
    layer = create(name, d_model=5, hidden_size=5 if name == "intersection_rnn" else 4,
                   **CASES[name][1]).double()
    x = torch.randn(2, 6, 5, dtype=torch.float64)
    run = BASELINES[f"{name}/torchrecurrent"].cls(layer, x)
    with torch.no_grad():
        torch.testing.assert_close(run(), layer(x)[0], rtol=1e-10, atol=1e-12)


# -- whole-state oracles: the peer's state_dict loads ours; equal to 1e-12 -----------------
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
    tr = pytest.importorskip("torchrecurrent", reason="torchrecurrent==0.2.5 is the oracle "
                             "(installed by .ci/install-peers)")
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
