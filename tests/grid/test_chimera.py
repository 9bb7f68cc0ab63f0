"""Chimera: the wavefront form against the loop, continuation in time through the state,
its causal quadrant, a forecast task run on a generated multivariate CSV, errors.
ONE_PATH pins the layer to one trend head read in one variate order (its state one
(left, top) pair): the quadrant is that path's fact; tests/grid/test_chimera_heads.py has
the seasonal head and the bidirectional default."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnzoo.grid import create_grid
from rnnzoo.grid.chimera import VariateForecaster

ONE_PATH = dict(heads=("trend",), bidirectional=False)


def test_wavefront_equals_the_loop_with_gradients():
    torch.manual_seed(0)
    layer = create_grid("chimera", 4, d_state=3, **ONE_PATH).double()
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    (init,) = layer.init_state(2, 6, 3, dtype=torch.float64)
    state = (tuple(torch.randn_like(s) for s in init),)
    ref_y, ref_s = layer(x, state, mode="sequential")
    y, s = layer(x, state, mode="wavefront")
    torch.testing.assert_close(y, ref_y, rtol=0, atol=1e-12)
    for a, b in zip(s[0], ref_s[0]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    g1 = torch.autograd.grad(ref_y.square().sum(), [x, *layer.parameters()])
    g2 = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_the_series_continues_in_time_through_the_state():
    torch.manual_seed(1)
    layer = create_grid("chimera", 4, d_state=2, **ONE_PATH).double()
    x = torch.randn(2, 9, 3, 4, dtype=torch.float64)
    y, ((right, bottom),) = layer(x)
    y1, ((r1, b1),) = layer(x[:, :5])
    y2, ((r2, b2),) = layer(x[:, 5:], ((torch.zeros_like(right[:, 5:]), b1),))
    torch.testing.assert_close(torch.cat([y1, y2], 1), y)
    torch.testing.assert_close(b2, bottom)
    torch.testing.assert_close(torch.cat([r1, r2], 1), right)


def support(layer, x):
    """(T, V, T, V) bool: does y(t, v) depend on x(t', v')?"""
    J = torch.autograd.functional.jacobian(lambda t: layer(t)[0].sum(-1), x)
    return J.abs().sum(-1)[0, :, :, 0] > 0


def test_each_output_reads_exactly_its_causal_quadrant():
    """y(t, v) depends on x(t', v') exactly when t' <= t and v' <= v: nothing from the
    future, everything from the past of every earlier variate (through the cross terms).
    Without the cross terms (A2 = A3 = -inf) the support shrinks to the L of the same
    variate's past and the same time's earlier variates."""
    torch.manual_seed(2)
    layer = create_grid("chimera", 3, d_state=2, **ONE_PATH).double()
    T, V = 4, 3
    x = torch.randn(1, T, V, 3, dtype=torch.float64)
    t = torch.arange(T).reshape(T, 1, 1, 1)
    v = torch.arange(V).reshape(1, V, 1, 1)
    tp = torch.arange(T).reshape(1, 1, T, 1)
    vp = torch.arange(V).reshape(1, 1, 1, V)
    assert torch.equal(support(layer, x), (tp <= t) & (vp <= v))
    with torch.no_grad():
        layer.ssm[0].A_log[1:3] = 15.0    # exp(D A) underflows to 0: no path turns a corner
    assert torch.equal(support(layer, x), ((tp <= t) & (vp == v)) | ((tp == t) & (vp <= v)))


def multivariate_csv(tmp_path):
    rng = np.random.default_rng(0)
    n = np.arange(400)
    base = np.sin(2 * np.pi * n / 16)
    series = np.stack([base, 0.5 * np.roll(base, 3), base + 0.3 * np.cos(2 * np.pi * n / 8)], 1)
    series = series + 0.05 * rng.standard_normal(series.shape)
    path = tmp_path / "m.csv"
    path.write_text("a,b,c\n" + "\n".join(",".join(f"{v:.5f}" for v in row) for row in series))
    return path


def test_forecast_task_batches_fit_the_variate_grid(tmp_path):
    """The forecast task's batches (B, window, 3 columns) go through Chimera over
    (time, variate) and come out in the task's (B, T, horizon * C) layout: the loss is
    finite and reaches every parameter."""
    from rnnzoo.tasks import get_task

    task = get_task("forecast", path=multivariate_csv(tmp_path), window=12, horizon=4)
    model = VariateForecaster(create_grid("chimera", 4, d_state=2, season=4), task.channels,
                              task.horizon)
    b = task.sample(np.random.default_rng(0), 4)
    out = model(b.inputs)
    assert out.shape == (4, 12, 4 * 3)
    loss, count = task.loss(out, b)
    loss.backward()
    assert torch.isfinite(loss) and count == 4 * 4 * 3
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.slow
def test_forecast_task_on_a_generated_multivariate_csv(tmp_path):
    """Chimera over (time, variate) fits the 3-column series: its test-split MSE after 150
    steps is a quarter of its start or less. Figure printed (docs/2d.md)."""
    from rnnzoo.tasks import get_task

    rng = np.random.default_rng(0)
    task = get_task("forecast", path=multivariate_csv(tmp_path), window=24, horizon=4)
    torch.manual_seed(0)
    model = VariateForecaster(create_grid("chimera", 8, d_state=4), task.channels, task.horizon)

    def test_mse():
        sums = {}
        with torch.no_grad():
            for b in task.test_batches(64):
                for k, val in task.score(model(b.inputs), b).items():
                    sums[k] = sums.get(k, 0) + val
        return task.summarize(sums)["mse"]

    before = test_mse()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        b = task.sample(rng, 32)
        loss, count = task.loss(model(b.inputs), b)
        opt.zero_grad()
        (loss / count).backward()
        opt.step()
    after = test_mse()
    print(f"chimera forecast test MSE: {before:.4f} -> {after:.4f}")
    assert after < 0.25 * before


def test_errors_dtypes_devices():
    layer = create_grid("chimera", 4, d_state=2)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, height, width, d_model=4\)"):
        layer(torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match=r"state must be \(left, top\) of shapes"):
        layer(torch.randn(1, 5, 3, 4), state=(torch.zeros(1, 5, 4, 2), torch.zeros(1, 2, 4, 2)))
    with pytest.raises(ValueError, match="d_state must be a positive int"):
        create_grid("chimera", 4, d_state=0)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, time, channels=3\)"):
        VariateForecaster(layer, 3, 2)(torch.randn(2, 5, 4))
    y, s = layer.to(torch.bfloat16)(torch.randn(1, 3, 2, 4, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and all(t.dtype == torch.float32 for pair in s for t in pair)
    meta = create_grid("chimera", 4, d_state=2).to("meta")
    for mode in ("sequential", "wavefront"):
        y, s = meta(torch.empty(1, 3, 2, 4, device="meta"), mode=mode)
        assert y.device.type == "meta" and all(t.device.type == "meta" for pair in s for t in pair)
