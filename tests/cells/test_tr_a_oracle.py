"""Oracle: each cell of the catalogue's first half against torchrecurrent 0.2.5's cell.

Our weights are copied into torchrecurrent's cell (same parameter names and
layouts); outputs, final states and the gradients of the inputs, initial state
and every parameter must agree in float64. Where torchrecurrent deviates from
the paper the comparison runs in the configuration where the two agree
(coRNN with `implicit_damping=False`, FastGRNN with torchrecurrent's gate set to
sigmoid, IndRNN with ReLU), and tests/cells/test_tr_a_paper.py pins the
paper's equations; LEM is tested there only (torchrecurrent's y-update reads
z_{n-1} instead of the paper's z_n).
"""

from __future__ import annotations

import pytest
import torch

import rnnzoo.layers.classic  # noqa: F401  (imports every cell module)
from rnnzoo.registry import CELLS

B, T = 3, 6


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


def test_every_cell_of_the_first_half_is_covered():
    first_half = {"antisymmetric_rnn", "gated_antisymmetric_rnn", "atr", "br", "nbr", "cfn",
                  "cornn", "fastrnn", "fastgrnn", "indrnn", "intersection_rnn", "ugrnn", "janet",
                  "lem", "ligru", "lightru", "mclstm", "mgu", "minimal_rnn"}
    assert first_half <= set(CELLS)
    assert first_half - set(CASES) == {"lem"}  # LEM: see test_tr_a_paper.py


@pytest.mark.parametrize("name", sorted(CASES))
def test_bench_baseline_runs_the_same_layer(name):
    """peers.torchrecurrent_a builds torchrecurrent's layer with our weights."""
    pytest.importorskip("torchrecurrent", reason="torchrecurrent==0.2.5 is the bench baseline")
    from peers import torchrecurrent_a  # noqa: F401  (registers the baselines)

    from rnnzoo.bench import _BASELINES
    from rnnzoo.registry import create

    torch.manual_seed(0)
    layer = create(name, d_model=5, hidden_size=5 if name == "intersection_rnn" else 4,
                   **CASES[name][1]).double()
    x = torch.randn(2, 6, 5, dtype=torch.float64)
    run = dict(_BASELINES[name])["torchrecurrent"](layer, x)
    with torch.no_grad():
        torch.testing.assert_close(run(), layer(x)[0], rtol=1e-10, atol=1e-12)
