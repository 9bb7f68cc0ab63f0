"""rnnzoo suite and rnnzoo demo: the grid, skipped runs, best over learning rates, tables."""

from __future__ import annotations

import csv

from rnnzoo import suite
from rnnzoo.cli import main

TINY = ["--d-model", "8", "--steps", "4", "--batch-size", "4", "--eval-every", "2",
        "--eval-batches", "1", "--log-every", "2", "--threads", "1",
        "--task-option", "test_lengths=8,12", "--task-option", "train_lengths=3,8"]


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


def test_a_finished_run_with_other_settings_is_refused_unless_overwrite(tmp_path, capsys):
    argv = ["suite", "--tasks", "parity", "--layers", "lstm", "--depth", "1", *TINY, "--out",
            str(tmp_path), "--quiet"]
    assert main(argv) == 0
    run = tmp_path / "parity" / "lstm" / "lr0.001"
    first = (run / "final.json").read_text()
    capsys.readouterr()
    assert main([*argv, "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{run} holds a finished run with other settings (seed=0, this suite has seed=1)" in err
    assert (run / "final.json").read_text() == first
    assert main([*argv, "--seed", "1", "--overwrite"]) == 0
    assert '"steps": 4' in (run / "final.json").read_text()
    assert (run / "final.json").read_text() != first
    import json
    assert json.loads((run / "train_config.json").read_text())["seed"] == 1


def test_a_diverged_run_is_left_out_and_the_others_go_on(tmp_path, capsys, monkeypatch):
    from rnnzoo.train import loop
    real_lr = loop.lr_at
    monkeypatch.setattr(loop, "lr_at", lambda s, c: float("nan") if c.lr > 5e-3 else real_lr(s, c))
    assert main(["suite", "--tasks", "parity", "--layers", "lstm", "--lrs", "1e-3,1e-2",
                 "--depth", "1", *TINY, "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "[2/2] parity / lstm / lr 0.01: diverged, left out of the table: the training loss " \
        "is nan at step 2" in out
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["lr"] for r in rows] == ["0.001"]


def test_a_damaged_final_json_of_a_done_run_is_one_line(tmp_path, capsys):
    """A finished run's final.json cut short (or missing its keys) was read by json.loads
    (a message naming no file) or indexed (a KeyError traceback); now one line naming it."""
    argv = ["suite", "--tasks", "parity", "--layers", "lstm", "--depth", "1", *TINY, "--out",
            str(tmp_path), "--quiet"]
    assert main(argv) == 0
    final = tmp_path / "parity" / "lstm" / "lr0.001" / "final.json"
    text = final.read_text()
    for damaged, message in ((text[: len(text) // 2], "is not valid JSON"),
                             ('{"task": "parity"}', "is damaged: it needs task, layer, lr")):
        final.write_text(damaged)
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("rnnzoo suite: error: ") and err.count("\n") == 1, err
        assert str(final) in err and message in err, err
