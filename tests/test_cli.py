"""The rnnzoo command: a train run, the tasks listing, and its one-line errors."""

from __future__ import annotations

import json

import pytest

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


def test_tasks_lists_names_and_options(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "mqar" in out and "num_pairs" in out and "forecast" in out
