"""The rnnzoo command: train, suite, demo, tasks, and its error messages."""

from __future__ import annotations

import csv
import json

import pytest

from rnnzoo import suite
from rnnzoo.cli import main

TINY = ["--d-model", "8", "--steps", "4", "--batch-size", "4", "--eval-every", "2",
        "--eval-batches", "1", "--log-every", "2", "--threads", "1",
        "--task-option", "test_lengths=8,12", "--task-option", "train_lengths=3,8"]


def test_train_writes_a_run_folder(tmp_path, capsys):
    assert main(["train", "--task", "parity", "--layer", "lstm", "--depth", "1", *TINY,
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "step      4/4" in out and "tok/s" in out and "eval step 2" in out
    assert json.loads((tmp_path / "final.json").read_text())["steps"] == 4
    assert json.loads((tmp_path / "config.json").read_text())["num_layers"] == 1


@pytest.mark.parametrize("argv,message", [
    (["--task", "nope", "--layer", "lstm"], "unknown task 'nope'; tasks: mqar, selective_copy"),
    (["--task", "parity", "--layer", "nope"], "unknown layer 'nope'; registered layers: .*lstm"),
    (["--task", "parity", "--layer", "lstm", "--lr", "-1"], r"--lr must lie in \(0, 10\], got -1"),
    (["--task", "parity", "--layer", "lstm", "--task-option", "modulus=3"],
     r"unknown option\(s\) \['modulus'\] for task 'parity'; it accepts"),
    (["--task", "mqar", "--layer", "lstm", "--task-option", "num_pairs=0"],
     r"num_pairs must be an int in \[1, 16\], got 0"),
    (["--task", "text", "--layer", "lstm", "--data", "/no/such/corpus.txt"],
     "data file not found: /no/such/corpus.txt"),
    (["--task", "parity", "--layer", "mingru", "--layer-option", "expand=0"],
     "expand must be a positive int, got 0"),
    (["--task", "parity", "--layer", "lstm", "--layers", "1"],
     "--layers is now --depth .*: use --depth 1; --layers lists layer names in suite and bench"),
])
def test_errors_are_one_clear_line(tmp_path, capsys, argv, message):
    assert main(["train", *argv, "--out", str(tmp_path), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnzoo train: error: ")
    import re
    assert re.search(message, err), err


def test_suite_grid_tables_and_skips_done_runs(tmp_path, capsys):
    argv = ["suite", "--tasks", "parity,mqar", "--layers", "lstm,mingru", "--lrs", "1e-3,1e-2",
            "--depth", "1", *TINY, "--task-option", "vocab_size=16", "--task-option", "seq_len=16",
            "--task-option", "num_pairs=2", "--out", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == 8 and {r["lr"] for r in rows} == {"0.001", "0.01"}
    table = (tmp_path / "table.md").read_text()
    assert "| layer | parity (scaled_acc) | mqar (acc) |" in table and "`mingru`" in table
    assert "| layer |" in first
    try:
        import matplotlib  # noqa: F401  (the plot extra)
        assert (tmp_path / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    except ImportError:
        assert "no heatmap.png" in first
    assert main(argv) == 0
    assert capsys.readouterr().out.count("skipped") == 8
    # the table reports the best learning rate of each (task, layer)
    for task in ("parity", "mqar"):
        for layer in ("lstm", "mingru"):
            values = [float(r["value"]) for r in rows if r["task"] == task and r["layer"] == layer]
            assert f"{max(values):.3f}" in table


def test_best_over_lrs_minimises_lower_is_better_metrics():
    rows = [dict(task="text", layer="lstm", metric="bpc", higher_is_better=False, value=v, lr=lr)
            for v, lr in ((2.5, 1e-3), (1.5, 1e-2), (3.0, 1e-1))]
    assert suite.best_over_lrs(rows)[("text", "lstm")]["lr"] == 1e-2
    rows = [dict(r, metric="acc", higher_is_better=True) for r in rows]
    assert suite.best_over_lrs(rows)[("text", "lstm")]["lr"] == 1e-1


def test_records_without_the_direction_take_it_from_their_task():
    """final.json written before records carried `higher_is_better`: the task class says."""
    rows = [dict(task=task, layer="lstm", metric=metric, value=v, lr=lr)
            for task, metric in (("text", "bpc"), ("parity", "scaled_acc"))
            for v, lr in ((2.5, 1e-3), (1.5, 1e-2), (3.0, 1e-1))]
    best = suite.best_over_lrs(rows)
    assert best[("text", "lstm")]["lr"] == 1e-2 and best[("parity", "lstm")]["lr"] == 1e-1


def test_demo_uses_registered_layers_and_prints_the_table(monkeypatch, capsys):
    assert set(suite.demo_layers()) >= {"lstm", "mingru"}
    assert all(name in suite.DEMO_CANDIDATES for name in suite.demo_layers())
    full = suite.demo_configs

    def shorter(layers, seed=0):
        configs = full(layers, seed)
        for c in configs:
            c.steps, c.eval_every, c.d_model = 3, 3, 8
        return configs

    monkeypatch.setattr(suite, "demo_configs", shorter)
    assert main(["demo", "--layers", "lstm,mingru"]) == 0
    out = capsys.readouterr().out
    assert "| `lstm` |" in out and "| `mingru` |" in out and "4 runs in" in out


def test_tasks_lists_names_and_options(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "mqar" in out and "num_pairs" in out and "forecast" in out


def test_text_run_then_generate(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abcabcabd " * 200)
    run = tmp_path / "run"
    assert main(["train", "--task", "text", "--data", str(corpus), "--task-option", "mode=char",
                 "--task-option", "seq_len=16", "--layer", "lstm", "--depth", "1", "--d-model",
                 "16", "--steps", "3", "--batch-size", "4", "--eval-every", "3", "--threads", "1",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "abc", "--tokens", "12", "--top-k", "2"]) == 0
    text = capsys.readouterr().out.rstrip("\n")
    assert text.startswith("abc") and len(text) == 15 and set(text) <= set("abcd ")
    assert main(["generate", str(run), "--prompt", "xyz"]) == 2
    assert "never saw: ['x', 'y', 'z']" in capsys.readouterr().err
