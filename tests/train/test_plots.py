"""curve.png says something: the evaluation metric over the steps,
the training loss in a named unit (bits for text), no panel with a single point."""

from __future__ import annotations

import math

import pytest

from rnnzoo.tasks import get_task
from rnnzoo.train.plots import loss_unit, panels


def history(evals: int, keys=("8",), metric="scaled_acc"):
    rows = [{"step": s, "loss": 2.0 / s, "lr": 1e-3, "tokens_per_s": 1.0} for s in range(1, 7)]
    rows += [{"step": 3 * i, "eval": {k: {metric: 0.1 * i, "acc": 0.5} for k in keys},
              metric: 0.1 * i} for i in range(1, evals + 1)]
    return sorted(rows, key=lambda r: r["step"])


def final(keys=("8",)):
    return {"steps": 6, "eval": {k: {"scaled_acc": 0.3, "acc": 0.6} for k in keys}}


def test_the_metric_over_steps_is_drawn_with_the_final_whole_split_value():
    task = get_task("parity", test_lengths=(8,))
    drawn = {p["title"]: p for p in panels(history(2), task, final())}
    evaluation = drawn["scaled_acc during training (sampled evaluation)"]
    assert evaluation["ylabel"] == "scaled_acc" and evaluation["xlabel"] == "step"
    (label, xs, ys, _), (flabel, fx, fy, _) = evaluation["series"]
    assert (xs, ys) == ([3, 6], [pytest.approx(0.1), pytest.approx(0.2)])
    assert flabel == "final, whole test split" and (fx, fy) == ([6], [0.3])
    assert drawn[f"{task.name}: training loss"]["ylabel"] == "training loss (cross-entropy, nats)"


def test_no_panel_has_a_single_point():
    task = get_task("parity", test_lengths=(8,))
    titles = [p["title"] for p in panels(history(1), task, final())]
    assert titles == ["parity: training loss"]  # one evaluation, one test length: no more
    titles = [p["title"] for p in panels(history(2, ("8", "16")), task, final(("8", "16")))]
    assert titles == ["parity: training loss", "scaled_acc during training (sampled evaluation)",
                      "final, whole test split"]
    assert panels(history(0)[:1], task) == []


def test_text_loss_is_drawn_in_bits(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abcd" * 100)
    task = get_task("text", path=str(corpus), seq_len=8)
    assert loss_unit(task) == ("training loss (bits per symbol)", 1 / math.log(2))
    loss = next(p for p in panels(history(2, ("test",), "bpc"), task) if p["title"].endswith("training loss"))
    assert loss["series"][0][2][0] == pytest.approx(2.0 / math.log(2))
    forecast_like = type("R", (), {"kind": "regress", "metric": "mse"})()
    assert loss_unit(forecast_like)[0] == "training loss (MSE)"


def test_a_forecast_run_draws_forecast_vs_actual_with_its_baselines(tmp_path, monkeypatch):
    """The run's curve.png carries the forecast task's own panel: the trained model's
    forecasts over the test part next to the actual series and both baselines."""
    pytest.importorskip("matplotlib", reason="the plot extra (installed by make test)")
    import numpy as np

    from rnnzoo.tasks.files import Forecast
    from rnnzoo.train import TrainConfig, train
    drawn = []
    original = Forecast.plot_predictions
    monkeypatch.setattr(Forecast, "plot_predictions",
                        lambda self, ax, model, **kw: drawn.append(original(self, ax, model, **kw)))
    path = tmp_path / "series.csv"
    t = np.arange(200)
    np.savetxt(path, np.sin(t / 5.0)[:, None], delimiter=",")
    config = TrainConfig(task="forecast", layer="lstm", d_model=8, num_layers=1, steps=4,
                         batch_size=4, eval_every=2, log_every=1, threads=1,
                         out=str(tmp_path / "run"),
                         task_options=dict(path=str(path), window=12, horizon=3))
    train(config, quiet=True)
    assert (tmp_path / "run" / "curve.png").is_file() and len(drawn) == 1
    assert set(drawn[0]) == {"actual", "model", "seasonal_naive", "linear"}
    assert len(drawn[0]["model"]) == len(drawn[0]["actual"]) > 0
