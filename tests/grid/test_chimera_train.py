"""`rnnzoo train --model chimera`: a short run through the CLI on a generated 3-variate CSV
lowers the whole-test-split MSE (checkpoints, final evaluation and run folder as for any
run); `rnnzoo.load` rebuilds both chimera and dsr run folders through one path; the
generated dynamics tasks take the route too; bad options are one line, exit 2."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch

from rnnzoo.cli import main


def three_variate_csv(path):
    """Two periods (16 and 8 steps), a lagged copy and noise: 300 rows, 3 columns."""
    rng = np.random.default_rng(0)
    n = np.arange(300)
    base = np.sin(2 * np.pi * n / 16)
    series = np.stack([base, 0.5 * np.roll(base, 3), base + 0.3 * np.cos(2 * np.pi * n / 8)], 1)
    series = series + 0.05 * rng.standard_normal(series.shape)
    path.write_text("a,b,c\n" + "\n".join(",".join(f"{v:.5f}" for v in row) for row in series))
    return path


@pytest.fixture(scope="module")
def chimera_run(tmp_path_factory):
    """One CLI run: forecast on the CSV (window 16, horizon 4), one Chimera layer with both
    heads (season 8) read both ways, 30 steps of 16."""
    tmp = tmp_path_factory.mktemp("chimera_run")
    out = tmp / "run"
    argv = ["train", "--task", "forecast", "--data", str(three_variate_csv(tmp / "m.csv")),
            "--model", "chimera", "--task-option", "window=16", "--task-option", "horizon=4",
            "--d-model", "8", "--depth", "1", "--layer-option", "d_state=4",
            "--layer-option", "season=8", "--steps", "30", "--batch-size", "16", "--lr", "1e-2",
            "--eval-every", "15", "--log-every", "15", "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    return out


def whole_test_mse(model, config):
    from rnnzoo.train.loop import build, evaluate
    task, _ = build(config)
    return evaluate(model, task, config, torch.device("cpu"), contextlib.nullcontext,
                    whole=True)["mse"]


def test_cli_run_lowers_the_whole_test_split_mse(chimera_run, capsys):
    """The run's final.json holds the whole held-out split's MSE; the same model untrained
    (the run's seed, `build`) scores at least twice that on the same split."""
    from rnnzoo.grid.chimera import ChimeraForecaster
    from rnnzoo.train.checkpoints import saved_config
    from rnnzoo.train.loop import build

    record = json.loads((chimera_run / "final.json").read_text())
    config = saved_config(chimera_run)
    assert config.model == "chimera" and config.layer == "chimera"
    assert record["metric"] == "mse" and record["steps"] == 30
    assert record["test_examples"] == {"test": 90 - 4 + 1}  # every window of the test part
    _, untrained = build(config)
    assert isinstance(untrained, ChimeraForecaster)
    assert untrained.layers[0].paths == [("trend", "forward"), ("trend", "backward"),
                                         ("seasonal", "forward"), ("seasonal", "backward")]
    before, after = whole_test_mse(untrained, config), record["value"]
    with capsys.disabled():
        print(f"\nchimera via rnnzoo train, forecast on a 3-variate CSV: whole-test-split MSE "
              f"{before:.4f} untrained -> {after:.4f} after 30 steps; baselines "
              f"{ {k: round(v['mse'], 4) for k, v in record['baselines'].items()} }")
    assert after < 0.5 * before


def test_load_rebuilds_chimera_and_dsr_run_folders(chimera_run, tmp_path):
    """rnnzoo.load reads a chimera run folder (the trained model: the final MSE again) and a
    dsr run folder (the DSRModel that load_dsr returns, the same weights)."""
    import rnnzoo
    from rnnzoo.grid.chimera import ChimeraForecaster
    from rnnzoo.models.dsr import DSRModel, load_dsr
    from rnnzoo.train.checkpoints import saved_config

    model = rnnzoo.load(chimera_run)
    assert isinstance(model, ChimeraForecaster)
    record = json.loads((chimera_run / "final.json").read_text())
    assert whole_test_mse(model, saved_config(chimera_run)) == pytest.approx(record["value"],
                                                                            rel=1e-6)
    assert main(["train", "--task", "lorenz63", "--model", "dsr", "--layer", "plrnn",
                 "--d-model", "5", "--steps", "2", "--batch-size", "2",
                 "--task-option", "series_length=600", "--task-option", "train_length=10",
                 "--threads", "1", "--out", str(tmp_path / "dsr")]) == 0
    dsr = rnnzoo.load(tmp_path / "dsr")
    assert isinstance(dsr, DSRModel)
    again = load_dsr(tmp_path / "dsr")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in dsr.state_dict().items())
    with pytest.raises(ValueError, match="holds no dsr model"):
        load_dsr(chimera_run)


def test_a_generated_dynamics_task_takes_the_route(tmp_path):
    """lorenz96 (generated, 6 variables, every step scored): per-step next states out."""
    from rnnzoo.train.config import TrainConfig
    from rnnzoo.train.loop import train

    record = train(TrainConfig(task="lorenz96", layer="chimera", model="chimera", d_model=4,
                               num_layers=1, layer_options={"d_state": 2, "season": 2},
                               steps=2, batch_size=2, eval_every=2, threads=1,
                               task_options={"dim": 6, "series_length": 300,
                                             "train_length": 8},
                               out=str(tmp_path / "l96")), quiet=True)
    assert np.isfinite(record["value"]) and record["test_examples"]["8"] > 0


@pytest.mark.parametrize("extra,message", [
    (["--layer", "lstm"], "--model chimera stacks chimera 2-D layers"),
    (["--layer-option", "season=0"], "season must be an int"),
    (["--layer-option", "d_sate=2"], "bad option for chimera"),
    (["--layer-option", "bidirectional=maybe"], "bidirectional must be a bool"),
    (["--hybrid", "1:1"], "--hybrid does not apply to --model chimera"),
    (["--gtf-alpha", "0.5"], "--gtf-alpha needs --model dsr"),
])
def test_bad_chimera_options_are_one_line_exit_2(tmp_path, capsys, extra, message):
    csv = three_variate_csv(tmp_path / "m.csv")
    code = main(["train", "--task", "forecast", "--data", str(csv), "--model", "chimera",
                 "--steps", "1", "--out", str(tmp_path / "r"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err, err


def test_a_task_that_is_not_a_multivariate_series_is_refused(tmp_path, capsys):
    code = main(["train", "--task", "parity", "--model", "chimera", "--steps", "1",
                 "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--model chimera reads a multivariate series" in err and \
        "\n" not in err, err
