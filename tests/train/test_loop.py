"""The training loop: resume == not stopping (old run folders too), early stop, the run
folder, DDP == one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rnnzoo
from rnnzoo.models.checkpoint import load_tensors
from rnnzoo.train import TrainConfig, train

SRC = str(Path(__file__).resolve().parents[2] / "src")


def tiny(out, **kw):
    base = dict(task="parity", layer="mingru", d_model=8, num_layers=2, steps=6, batch_size=4,
                eval_every=3, eval_batches=1, log_every=1, lr=1e-2, threads=1, out=str(out),
                task_options=dict(test_lengths=(8,), train_lengths=(3, 10)))
    base.update(kw)
    return TrainConfig(**base)


def losses(out):
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r and "eval" not in r]


@pytest.mark.parametrize("layer", ["mingru", "attention"])
def test_resume_gives_the_same_result_as_not_stopping(tmp_path, layer):
    whole = train(tiny(tmp_path / "whole", layer=layer), quiet=True)
    part = train(tiny(tmp_path / "split", layer=layer), stop_at=4, quiet=True)
    assert part == {"stopped_at": 4}
    assert not (tmp_path / "split" / "final.json").exists()
    resumed = train(tiny(tmp_path / "split", layer=layer), resume=True, quiet=True)
    a, _ = load_tensors(tmp_path / "whole" / "model.safetensors")
    b, _ = load_tensors(tmp_path / "split" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert losses(tmp_path / "whole") == losses(tmp_path / "split")
    assert resumed["value"] == whole["value"] and resumed["eval"] == whole["eval"]


def test_resume_without_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint.safetensors"):
        train(tiny(tmp_path / "none"), resume=True, quiet=True)


def test_lstm_learns_parity_and_stops_early(tmp_path):
    config = tiny(tmp_path, layer="lstm", num_layers=1, d_model=32, steps=600, batch_size=32,
                  lr=3e-3, eval_every=50, eval_batches=2, log_every=50, target=0.99,
                  task_options=dict(test_lengths=(60,)))
    record = train(config, quiet=True)
    assert record["early_stop"] and record["steps"] < 600
    assert record["value"] >= 0.99
    # the saved model is the trained one: it scores the same when loaded
    model = rnnzoo.load(tmp_path)
    from rnnzoo.tasks import get_task
    task = get_task("parity", test_lengths=(60,))
    import numpy as np
    batch = task.sample(np.random.default_rng(5), 64, length=60, split="test")
    sums = task.score(model(batch.inputs)[0], batch)
    assert task.summarize(sums)["scaled_acc"] >= 0.9


def test_run_folder(tmp_path):
    train(tiny(tmp_path), quiet=True)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "metrics.jsonl", "model.safetensors", "final.json",
            "checkpoint.safetensors"} <= names
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["metric"] == "scaled_acc" and set(final["eval"]) == {"8"}
    assert not [n for n in names if n.endswith(".tmp")]


def test_plot_written_with_matplotlib(tmp_path):
    pytest.importorskip("matplotlib", reason="the plot extra draws curve.png")
    train(tiny(tmp_path), quiet=True)
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_skipped_with_a_note_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    train(tiny(tmp_path))
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert not (tmp_path / "curve.png").exists() and (tmp_path / "final.json").exists()


@pytest.mark.parametrize("change,message", [
    (dict(lr=0.0), r"--lr must lie in \(0, 10\], got 0.0"),
    (dict(steps=0), "--steps must be an int >= 1, got 0"),
    (dict(batch_size=-2), "--batch-size must be an int >= 1, got -2"),
    (dict(warmup=50), r"--warmup must be an int in \[0, steps=6\], got 50"),
    (dict(layer="nope"), "unknown layer 'nope'; registered layers: .*lstm"),
    (dict(task="nope"), "unknown task 'nope'; tasks: mqar"),
])
def test_bad_config_names_the_option(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        train(tiny(tmp_path, **change), quiet=True)


def test_forecast_run_reports_baselines(tmp_path):
    import numpy as np
    path = tmp_path / "series.csv"
    t = np.arange(300)
    np.savetxt(path, np.sin(t / 5.0)[:, None] + 0.1 * np.cos(t / 2.0)[:, None], delimiter=",")
    record = train(tiny(tmp_path / "run", task="forecast", layer="lstm",
                        task_options=dict(path=str(path), window=12, horizon=3)), quiet=True)
    assert record["metric"] == "mse" and set(record["baselines"]) == {"seasonal_naive", "linear"}


def test_ddp_two_processes_match_one_process_on_the_global_batch(tmp_path):
    args = ["train", "--task", "mqar", "--layer", "mingru", "--d-model", "16", "--depth", "2",
            "--steps", "4", "--batch-size", "8", "--log-every", "1", "--eval-every", "4",
            "--eval-batches", "1", "--lr", "1e-2", "--threads", "1",
            "--task-option", "vocab_size=32", "--task-option", "seq_len=16",
            "--task-option", "num_pairs=2"]
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, "-m", "rnnzoo", *args, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "-m", "rnnzoo", *args, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 processes" in two.stdout
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4]
    for (_, x), (_, y) in zip(a, b):
        assert abs(x - y) < 1e-5 * max(1, abs(x))
    wa, _ = load_tensors(tmp_path / "one" / "model.safetensors")
    wb, _ = load_tensors(tmp_path / "two" / "model.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4


def _rewrite_checkpoint_config(path, change):
    from rnnzoo.models.checkpoint import save_tensors
    tensors, meta = load_tensors(path)
    meta["train_config"] = json.dumps(change(json.loads(meta["train_config"])))
    save_tensors(path, tensors, meta)


def test_old_run_folder_resumes_and_reads(tmp_path, monkeypatch):
    """Written before `layers` became `num_layers` and an option was renamed: both are
    translated, and the run continues as if nothing had changed."""
    from rnnzoo.layers import renames
    whole = train(tiny(tmp_path / "whole", layer_options={"expand": 2}), quiet=True)
    train(tiny(tmp_path / "split", layer_options={"expand": 2}), stop_at=4, quiet=True)

    def as_old(c):
        c["layers"] = c.pop("num_layers")
        c["layer_options"] = {"old_expand": c["layer_options"].pop("expand")}
        return c
    _rewrite_checkpoint_config(tmp_path / "split" / "checkpoint.safetensors", as_old)
    old = as_old(json.loads((tmp_path / "split" / "train_config.json").read_text()))
    monkeypatch.setitem(renames.RENAMED_OPTIONS, "mingru", {"old_expand": "expand"})
    read = TrainConfig.from_dict(old)
    assert (read.num_layers, read.layer_options) == (2, {"expand": 2})
    resumed = train(tiny(tmp_path / "split", layer_options={"expand": 2}), resume=True,
                    quiet=True)
    assert resumed["value"] == whole["value"] and resumed["eval"] == whole["eval"]


def test_resume_with_another_model_fails_in_one_line(tmp_path):
    train(tiny(tmp_path), stop_at=3, quiet=True)
    with pytest.raises(ValueError, match="was trained with num_layers=2, this run has "
                                         "num_layers=1") as e:
        train(tiny(tmp_path, num_layers=1), resume=True, quiet=True)
    assert "\n" not in str(e.value)


# -- stopping on a non-finite loss; whole-split metrics; baselines --------------------------------
def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path,
                                                                              monkeypatch):
    """The learning rate turns NaN after step 4 (as a diverging run's weights would): step 5
    makes the weights NaN, step 6's loss is NaN; the run stops there, before the step-6
    checkpoint, and checkpoint.safetensors keeps step 3, finite."""
    from rnnzoo.train import loop
    real_lr = loop.lr_at
    monkeypatch.setattr(loop, "lr_at", lambda s, c: float("nan") if s == 4 else real_lr(s, c))
    with pytest.raises(loop.NonFiniteLoss) as e:
        train(tiny(tmp_path), quiet=True)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("the training loss is nan at step 6 ")
    assert f"{tmp_path / 'checkpoint.safetensors'} keeps step 3" in message
    tensors, meta = load_tensors(tmp_path / "checkpoint.safetensors")
    assert meta["step"] == "3" and all(torch.isfinite(t).all() for t in tensors.values())
    assert not (tmp_path / "final.json").exists()
    assert max(s for s, _ in losses(tmp_path)) == 5  # no row for the step that diverged


def test_non_finite_loss_before_any_checkpoint_says_so(tmp_path, monkeypatch):
    from rnnzoo.train import loop
    monkeypatch.setattr(loop, "lr_at", lambda s, c: float("inf"))
    with pytest.raises(loop.NonFiniteLoss, match="at step 2 .*no checkpoint was written"):
        train(tiny(tmp_path), quiet=True)


def test_final_metrics_are_on_the_whole_test_split(tmp_path, monkeypatch, capsys):
    """The final record scores every example of the test split once (here 300 per length,
    neither a multiple of the batch nor of the chunk); the periodic evaluation says it
    samples. Recomputed from the saved model, the record's values come out."""
    import numpy as np

    from rnnzoo.tasks import get_task
    from rnnzoo.tasks.base import Task, add_sums
    monkeypatch.setattr(Task, "test_size", 300)
    record = train(tiny(tmp_path, task_options=dict(test_lengths=(8, 12), train_lengths=(3, 10))))
    out = capsys.readouterr().out
    assert "eval step 3 (sampled: 4 test examples per length)" in out
    assert "final evaluation on the whole test split (300 examples per length)" in out
    assert record["test_examples"] == {"8": 300, "12": 300}
    model = rnnzoo.load(tmp_path)
    task = get_task("parity", test_lengths=(8, 12), train_lengths=(3, 10))
    for length in (8, 12):
        sums, rows = {}, []
        for batch in task.test_batches(7, length):
            sums = add_sums(sums, task.score(model(batch.inputs)[0], batch))
            rows.append(batch.inputs)
        assert sum(len(r) for r in rows) == 300
        # the split is the same whatever the batch size
        assert torch.equal(torch.cat(rows), torch.cat([b.inputs for b in task.test_batches(300,
                                                                                           length)]))
        expected = task.summarize(sums)
        for k, v in record["eval"][str(length)].items():
            assert v == pytest.approx(expected[k], abs=1e-6)
    assert record["value"] == pytest.approx(np.mean([record["eval"][k]["scaled_acc"]
                                                     for k in ("8", "12")]))


def test_final_json_holds_only_the_tasks_metrics(tmp_path):
    final = train(tiny(tmp_path), quiet=True)
    assert set(final["eval"]["8"]) == {"acc", "loss", "scaled_acc"}  # no bpc for a classifier
    assert "baselines" not in final


def test_forecast_run_prints_the_model_next_to_its_baselines(tmp_path, capsys):
    import numpy as np

    from rnnzoo.cli import main
    path = tmp_path / "series.csv"
    t = np.arange(300)
    np.savetxt(path, np.sin(t / 5.0)[:, None] + 0.1 * np.cos(t / 2.0)[:, None], delimiter=",")
    assert main(["train", "--task", "forecast", "--data", str(path), "--task-option", "window=12",
                 "--task-option", "horizon=3", "--layer", "lstm", "--depth", "1", "--d-model", "8",
                 "--steps", "2", "--batch-size", "4", "--eval-every", "2", "--threads", "1",
                 "--out", str(tmp_path / "run")]) == 0
    lines = capsys.readouterr().out.splitlines()
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    width = max(len(n) for n in ("model", *final["baselines"]))
    model = [line for line in lines if line.strip().startswith("model ")]
    assert model == [f"  {'model':<{width}}  mse {final['value']:.4f}  mae "
                     f"{final['eval']['test']['mae']:.4f}"]
    for name, b in final["baselines"].items():
        assert f"  {name:<{width}}  mse {b['mse']:.4f}  mae {b['mae']:.4f}" in lines
        if final["value"] > b["mse"]:  # two steps of training: it loses to them
            assert (f"warning: the model loses to the {name} baseline on the test split (mse "
                    f"{final['value']:.4f} vs {b['mse']:.4f})") in lines


@pytest.mark.parametrize("higher,value,warned", [(True, 0.5, ["naive"]), (True, 0.9, []),
                                                 (False, 0.5, []), (False, 0.9, ["naive"])])
def test_the_summary_warns_when_the_model_loses_to_a_baseline(higher, value, warned):
    from rnnzoo.train.command import summary_lines
    record = dict(metric="m", value=value, higher_is_better=higher, steps=3, seconds=1.0,
                  eval={"test": {"m": value}}, test_examples={"test": 10},
                  baselines={"naive": {"m": 0.7}, "better": {"m": 0.0 if higher else 1.0}})
    lines = summary_lines(record, "runs/x")
    assert lines[0] == "m %.4f on the whole test split (10 examples) after 3 steps (1.0 s); run " \
        "folder runs/x" % value
    assert [w.split(" baseline")[0].rsplit(" ", 1)[1] for w in lines if w.startswith("warning")] \
        == warned


def test_dist_timeout_stops_a_rank_whose_peer_never_joins(tmp_path):
    """--dist-timeout reaches init_process_group: rank 0 of 2 (WORLD_SIZE set by hand, as a
    launcher other than torchrun does), whose rank 1 never starts, stops with torch's
    timeout error after ~3 s instead of waiting torch's default 30 minutes (the subprocess
    limit, 120 s, only guards the test)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1", WORLD_SIZE="2", RANK="0",
               LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    run = subprocess.run([sys.executable, "-m", "rnnzoo", "train", "--task", "parity", "--layer",
                          "mingru", "--steps", "1", "--device", "cpu", "--dist-timeout", "3",
                          "--out", str(tmp_path / "run")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "Timed out after" in run.stderr and "1/2 clients joined" in run.stderr, run.stderr[-2000:]


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), "3"])
def test_dist_timeout_must_be_positive_seconds(tmp_path, value):
    with pytest.raises(ValueError, match="--dist-timeout must"):
        train(tiny(tmp_path, dist_timeout=value), quiet=True)


@pytest.mark.parametrize("value", [1e10, 1e20])
def test_dist_timeout_past_what_torch_can_wait_is_refused(tmp_path, value):
    """Seconds past ~9.2e9 overflow torch's int64 nanoseconds: 1e10 made the rendezvous fail
    at once ('Timed out after 0 seconds' / the client socket), 1e20 was an OverflowError
    traceback in timedelta; 1e9 waits. Refused by the settings' check instead."""
    with pytest.raises(ValueError, match="--dist-timeout must lie in"):
        train(tiny(tmp_path, dist_timeout=value), quiet=True)
