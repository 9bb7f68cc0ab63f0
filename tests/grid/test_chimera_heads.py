"""Chimera's two heads and its bidirectional variate pass (grid/chimera.py): every mode
equals the loop with both (outputs, states, gradients, float64); the seasonal head is
`season` interleaved trend heads and reproduces a hand-built periodic response exactly;
the bidirectional default makes y(t, v) read every variate at every t' <= t and nothing
later, whatever the future holds; bad options are one line."""

from __future__ import annotations

import math

import pytest
import torch

from rnnzoo.grid import create_grid
from rnnzoo.grid.chimera import ChimeraConfig, ChimeraForecaster
from rnnzoo.layers._softplus import inverse_softplus


def flat(state):
    return [t for pair in state for t in pair]


def random_state(layer, B, T, V):
    return tuple(tuple(torch.randn_like(t) for t in pair)
                 for pair in layer.init_state(B, T, V, dtype=torch.float64))


def test_modes_equal_the_loop_with_both_heads_and_directions():
    """Default layer (trend + seasonal, both variate orders, gate), a season that does not
    divide T (padded phase grids), a random input state: outputs, states and gradients of
    x, the state and every parameter agree between wavefront and the loop."""
    torch.manual_seed(0)
    layer = create_grid("chimera", 4, d_state=3, season=3).double()
    assert layer.paths == [("trend", "forward"), ("trend", "backward"),
                           ("seasonal", "forward"), ("seasonal", "backward")]
    x = torch.randn(2, 7, 3, 4, dtype=torch.float64, requires_grad=True)
    state = random_state(layer, 2, 7, 3)
    leaves = [x, *flat(state), *layer.parameters()]
    for t in flat(state):
        t.requires_grad_(True)
    ref_y, ref_s = layer(x, state, mode="sequential")
    y, s = layer(x, state, mode="wavefront")
    torch.testing.assert_close(y, ref_y, rtol=0, atol=1e-12)
    assert [t.shape for t in flat(s)] == [t.shape for t in flat(state)]
    for a, b in zip(flat(s), flat(ref_s)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    loss = lambda y, s: y.square().sum() + sum(t.sin().sum() for t in flat(s))  # noqa: E731
    g1 = torch.autograd.grad(loss(ref_y, ref_s), leaves)
    g2 = torch.autograd.grad(loss(y, s), leaves)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert all(g.abs().sum() > 0 for g in g1)


def test_the_seasonal_head_is_season_interleaved_trend_heads():
    """With the same weights, the seasonal head (season m) on the series equals the trend
    head run on each phase x[:, p::m] by itself (an independent recomputation of the skip):
    outputs, the h2 leaving the last variate, and the h1 leaving the last m steps."""
    torch.manual_seed(1)
    m, T = 3, 8
    seasonal = create_grid("chimera", 4, d_state=2, heads="seasonal", season=m).double()
    trend = create_grid("chimera", 4, d_state=2, heads="trend").double()
    trend.load_state_dict(seasonal.state_dict())
    x = torch.randn(2, T, 3, 4, dtype=torch.float64)
    y, s = seasonal(x)
    for p in range(m):
        yp, sp = trend(x[:, p::m])
        torch.testing.assert_close(y[:, p::m], yp, rtol=0, atol=1e-12)
        for (right, bottom), (rp, bp) in zip(s, sp):
            torch.testing.assert_close(right[:, p::m], rp, rtol=0, atol=1e-12)
            last = T - 1 - (T - 1 - p) % m               # the phase's last time step
            torch.testing.assert_close(bottom[:, m - T + last], bp[:, 0], rtol=0, atol=1e-12)
    # and it is not the trend head on the whole series
    assert not torch.allclose(y, trend(x)[0])


@pytest.mark.parametrize("mode", ["sequential", "wavefront"])
def test_seasonal_head_reproduces_a_hand_built_periodic_response(mode):
    """One channel, one state, no cross terms, no gate, skip 0: the seasonal head is
    h1(t) = a h1(t - m) + beta x_t^2 (zero-order hold: a = exp(D A1), beta = expm1(D A1) /
    A1 * b for B1 = b x_t) read out as y(t) = c x_t h1(t). On an input of period m,
    x_t = q[t mod m], that is a geometric series per phase:
        y(p + k m) = c q_p^3 beta (1 - a^(k+1)) / (1 - a),
    reproduced to rounding. The trend head (m = 1) with the same weights is not."""
    m, T, delta, rate, b, c = 4, 13, 0.3, 0.7, 1.5, -0.8
    layer = create_grid("chimera", 1, d_state=1, heads="seasonal", season=m,
                        bidirectional=False, gate=False).double()
    with torch.no_grad():
        p = layer.ssm[0]
        p.dt_proj.weight.zero_()
        p.dt_proj.bias.copy_(inverse_softplus(torch.full((2,), delta, dtype=torch.float64)))
        p.A_log.copy_(torch.tensor([math.log(rate), 0.0, 50.0, 0.0],
                                 dtype=torch.float64).reshape(4, 1, 1))
        p.bc_proj.weight.copy_(torch.tensor([[b], [0.0], [c], [0.0]], dtype=torch.float64))
        layer.skip.zero_()
        layer.out.weight.fill_(1.0)
    q = torch.tensor([0.9, -0.4, 1.3, 0.6], dtype=torch.float64)
    t = torch.arange(T)
    x = q[t % m].reshape(1, T, 1, 1)
    a = math.exp(-delta * rate)
    beta = math.expm1(-delta * rate) / -rate * b
    k = (t // m).double()
    expected = c * q[t % m] ** 3 * beta * (1 - a ** (k + 1)) / (1 - a)
    y, _ = layer(x, mode=mode)
    torch.testing.assert_close(y.reshape(T), expected, rtol=1e-12, atol=1e-14)
    trend = create_grid("chimera", 1, d_state=1, heads="trend", bidirectional=False,
                        gate=False).double()
    trend.load_state_dict(layer.state_dict())
    assert not torch.allclose(trend(x, mode=mode)[0].reshape(T), expected)


def support(layer, x):
    """(T, V, T, V) bool: does y(t, v) depend on x(t', v')?"""
    J = torch.autograd.functional.jacobian(lambda t: layer(t)[0].sum(-1), x)
    return J.abs().sum(-1)[0, :, :, 0] > 0


def test_bidirectional_reads_every_variate_at_every_earlier_time():
    """The default layer: y(t, v) depends on x(t', v') exactly when t' <= t, for every
    variate v' on either side of v. Read in one variate order only, the variates after v
    are out of reach (the quadrant v' <= v)."""
    torch.manual_seed(2)
    T, V = 4, 3
    x = torch.randn(1, T, V, 3, dtype=torch.float64)
    t = torch.arange(T).reshape(T, 1, 1, 1)
    v = torch.arange(V).reshape(1, V, 1, 1)
    tp = torch.arange(T).reshape(1, 1, T, 1)
    vp = torch.arange(V).reshape(1, 1, 1, V)
    layer = create_grid("chimera", 3, d_state=2, season=2).double()
    assert torch.equal(support(layer, x), (tp <= t).expand(T, V, T, V))
    one_way = create_grid("chimera", 3, d_state=2, season=2, bidirectional=False).double()
    assert torch.equal(support(one_way, x), (tp <= t) & (vp <= v))


def test_the_seasonal_head_reads_its_own_phase():
    """The seasonal head alone, both variate orders: y(t, v) depends on x(t', v') exactly
    when t' <= t and t' = t (mod season), for every v'."""
    torch.manual_seed(3)
    T, V, m = 7, 2, 3
    layer = create_grid("chimera", 3, d_state=2, heads="seasonal", season=m).double()
    x = torch.randn(1, T, V, 3, dtype=torch.float64)
    t = torch.arange(T).reshape(T, 1, 1, 1)
    tp = torch.arange(T).reshape(1, 1, T, 1)
    assert torch.equal(support(layer, x), ((tp <= t) & ((t - tp) % m == 0)).expand(T, V, T, V))


@pytest.mark.parametrize("fill", [float("nan"), float("inf"), 1e30])
def test_the_future_never_reaches_the_past(fill):
    """Whatever the steps after t0 hold (NaN, inf, huge), every output and the right
    border at times <= t0 are bit-identical, in both modes, for the layer and the
    forecaster (season 3 does not divide T: the phase grids are padded)."""
    torch.manual_seed(4)
    layer = create_grid("chimera", 4, d_state=2, season=3)
    x = torch.randn(2, 8, 3, 4)
    for t0 in (0, 4, 6):
        x2 = x.clone()
        x2[:, t0 + 1:] = fill
        for mode in layer.modes:
            y, s = layer(x, mode=mode)
            y2, s2 = layer(x2, mode=mode)
            assert torch.equal(y[:, :t0 + 1], y2[:, :t0 + 1])
            for (r, _), (r2, _) in zip(s, s2):
                assert torch.equal(r[:, :t0 + 1], r2[:, :t0 + 1])
    model = ChimeraForecaster(ChimeraConfig(channels=3, horizon=2, d_model=4, num_layers=2,
                                            layer_options={"d_state": 2, "season": 3}))
    u = torch.randn(2, 8, 3)
    u2 = u.clone()
    u2[:, 5:] = fill
    assert torch.equal(model(u)[0][:, :5], model(u2)[0][:, :5])


def test_bad_options_are_one_line():
    for options, message in ((dict(heads=("trend", "trend")), "heads must be"),
                             (dict(heads="weekly"), "heads must be"),
                             (dict(heads=()), "heads must be"),
                             (dict(season=0), "season must be"),
                             (dict(bidirectional="yes"), "bidirectional must be a bool"),
                             (dict(gate=1), "gate must be a bool")):
        with pytest.raises((TypeError, ValueError), match=message) as err:
            create_grid("chimera", 4, **options)
        assert "\n" not in str(err.value)
    layer = create_grid("chimera", 4, d_state=2)
    with pytest.raises(ValueError, match=r"one pair per path \[\('trend', 'forward'\)"):
        layer(torch.randn(1, 2, 3, 4), state=layer.init_state(1, 2, 3)[:2])
    with pytest.raises(ValueError, match="bad option for chimera"):
        ChimeraForecaster(ChimeraConfig(layer_options={"d_sate": 2}))
