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
    # --window without --hybrid was ignored, --window 0 even with it (a falsy int)
    (["--task", "parity", "--layer", "lstm", "--window", "4"],
     r"--window sets the attention blocks of --hybrid, and this model has none"),
    (["--task", "parity", "--layer", "lstm", "--window", "0"], r"--window sets the attention"),
    (["--task", "parity", "--layer", "lstm", "--hybrid", "1:1", "--window", "0"],
     r"window must be a positive int or None, got 0"),
    # was "invalid literal for int() with base 10: 'abc'", naming no option
    (["--task", "parity", "--layer", "lstm", "--task-option", "train_lengths=abc"],
     r"train_lengths must be comma-separated ints, got 'abc'"),
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


# -- bad input at the command line: one line, exit code 2 ----------------------------------------
def _subparsers():
    import argparse

    from rnnzoo.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_help_shows_every_options_default(capsys):
    """Every option of every command says its default (or that it is required) in --help;
    on/off switches are off unless given."""
    import argparse
    for name, parser in _subparsers().items():
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if not action.option_strings or isinstance(
                    action, (argparse._HelpAction, argparse._StoreTrueAction)) \
                    or action.help == argparse.SUPPRESS:
                continue
            formatter = parser._get_formatter()
            shown = " ".join(formatter._expand_help(action).split())
            assert "(default: " in shown or "required" in shown, (name, action.option_strings)
            assert shown in text, (name, shown)
    assert "--d-model D_MODEL model width (default: 64)" in " ".join(
        _subparsers()["train"].format_help().split())


def test_tasks_shows_each_options_meaning_and_default(capsys):
    from rnnzoo.tasks import list_tasks
    from rnnzoo.tasks.command import option_defaults, option_help
    for name in list_tasks():
        for option in option_defaults(name):
            assert option_help(name, option), f"task {name!r}: option {option!r} has no meaning"
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "  num_pairs     key-value pairs per sequence (default: 4)" in out
    assert "  test_lengths   sequence lengths of the test split (comma list); each is scored " \
        "(default: 40,64,128,256)" in out
    assert main(["tasks", "forecast"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("forecast  (files; metric mse)") and "mqar" not in out


def test_readme_documents_the_file_formats_of_the_file_tasks():
    from pathlib import Path

    from rnnzoo.registry import TASKS
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Task files", 1)[1].split("\n## ", 1)[0]
    for info in TASKS.values():
        if info.family == "files":
            assert f"`{info.name}`" in section, f"the README's Task files omit {info.name!r}"


@pytest.mark.parametrize("flag,value", [("--target", "nan"), ("--target", "inf")])
def test_float_options_must_be_finite(tmp_path, capsys, flag, value):
    assert main(["train", "--task", "parity", "--layer", "lstm", flag, value, "--out",
                 str(tmp_path)]) == 2
    assert f"{flag} must be a finite real number, got {value}" in capsys.readouterr().err
    assert not tmp_path.exists() or not list(tmp_path.iterdir())


def test_device_cuda_without_cuda_is_one_line(tmp_path, capsys, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["train", "--task", "parity", "--layer", "lstm", "--device", "cuda", "--out",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cuda: CUDA is not available here" in err


def test_a_diverged_run_is_one_line_and_exit_code_1(tmp_path, capsys, monkeypatch):
    from rnnzoo.train import loop
    monkeypatch.setattr(loop, "lr_at", lambda s, c: float("nan"))
    assert main(["train", "--task", "parity", "--layer", "lstm", "--depth", "1", *TINY,
                 "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rnnzoo train: error: the training loss is nan at step 2 ")
    assert err.count("\n") == 1


def test_train_needs_task_and_layer_without_resume(tmp_path, capsys):
    assert main(["train", "--layer", "lstm", "--out", str(tmp_path)]) == 2
    assert "--task required (or --resume --out RUN to continue a run)" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--weight-decay", "--grad-clip", "--mlp-ratio", "--lr"])
def test_the_float_options_issue_13_names_stay_refused_when_nan(tmp_path, capsys, flag):
    """Refused by checks.real: kept as a guard."""
    assert main(["train", "--task", "parity", "--layer", "lstm", flag, "nan", "--out",
                 str(tmp_path)]) == 2
    assert f"{flag} must be a finite real number, got nan" in capsys.readouterr().err


# -- options of the wrong type: one line and exit 2, not a TypeError traceback (s21) -------------
@pytest.mark.parametrize("argv,message", [
    # tasks.base.check_lengths: tuple(None) / tuple(1.5)
    (["--task", "parity", "--task-option", "test_lengths=null"],
     "test_lengths must be an int or comma-separated ints, got None"),
    (["--task", "parity", "--task-option", "train_lengths=1.5"],
     "train_lengths must be an int or comma-separated ints, got 1.5"),
    # 0 < op_p < 1 and 0 < power_a <= 1 compared a string with an int
    (["--task", "listops", "--task-option", "op_p=abc"], "op_p must be a finite real number"),
    (["--task", "mqar", "--task-option", "power_a=null"], "power_a must be a finite real number"),
    # Path(1)
    (["--task", "classify", "--task-option", "path=1"], "path must be a file path, got 1"),
    (["--task", "forecast", "--data", "CSV", "--task-option", "test_path=[1]"],
     r"test_path must be a file path, got \[1\]"),
    # a layer's eps kept as given, a TypeError at the first forward (C kernel or torch)
    (["--task", "parity", "--layer", "gsa", "--layer-option", "norm_eps=abc"],
     "norm_eps must be a finite real number, got 'abc'"),
    (["--task", "parity", "--layer", "deltanet", "--layer-option", "norm_eps=[1]"],
     r"norm_eps must be a finite real number, got \[1\]"),
    (["--task", "parity", "--layer", "lightnet", "--layer-option", "norm_eps=null"],
     "norm_eps must be a finite real number, got None"),
    (["--task", "parity", "--layer", "lightning_attention", "--layer-option", "norm_eps=abc"],
     "norm_eps must be a finite real number"),
    (["--task", "parity", "--layer", "linear_attention", "--layer-option", "eps=abc"],
     "eps must be a finite real number, got 'abc'"),
    # num_heads % num_heads: ZeroDivisionError
    (["--task", "parity", "--layer", "deltanet", "--layer-option", "num_heads=0"],
     "num_heads must be a positive int, got 0"),
    (["--task", "parity", "--layer", "attention", "--layer-option", "num_heads=0"],
     "num_heads must be a positive int, got 0"),
])
def test_options_of_the_wrong_type_are_one_line(tmp_path, capsys, argv, message):
    if "--layer" not in argv:
        argv = [*argv, "--layer", "lstm"]
    if "CSV" in argv:
        csv = tmp_path / "series.csv"
        csv.write_text("".join(f"{i % 7},{i % 5}\n" for i in range(300)))
        argv = [str(csv) if a == "CSV" else a for a in argv]
    assert main(["train", *argv, *TINY[:8], "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnzoo train: error: ") and err.count("\n") == 1, err
    import re
    assert re.search(message, err), err


def test_bench_device_that_is_not_one_is_one_line(capsys):
    assert main(["bench", "--layers", "lstm", "--device", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err == "rnnzoo bench: error: --device must be cpu, cuda or cuda:N, got 'nosuch'\n"


@pytest.mark.parametrize("device, message", [
    ("mps", "--device mps: MPS is not available here"),
    ("cuda:3", "--device cuda:3: there are 1 GPUs"),
])
def test_bench_device_not_here_is_one_line(capsys, monkeypatch, device, message):
    """A device torch can name but this machine lacks (MPS, a GPU index past the count) is one
    line and exit 2, as for rnnzoo train (train.dist.pick_device), not a torch traceback."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert main(["bench", "--layers", "lstm", "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
