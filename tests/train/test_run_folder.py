"""One run per folder: a folder holding another run is refused
unless --resume or --overwrite; a lock keeps a second process out; --resume takes the
saved settings and refuses others in one line; damaged run folders fail in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rnnzoo.cli import main
from rnnzoo.models.checkpoint import load_tensors, save_tensors
from rnnzoo.train import TrainConfig, train

SRC = str(Path(__file__).resolve().parents[2] / "src")
FLAGS = ["--task", "parity", "--layer", "mingru", "--d-model", "8", "--depth", "2", "--steps",
         "6", "--batch-size", "4", "--eval-every", "3", "--eval-batches", "1", "--log-every", "1",
         "--lr", "0.01", "--threads", "1", "--task-option", "test_lengths=8",
         "--task-option", "train_lengths=3,10"]


def tiny(out, **kw):
    base = dict(task="parity", layer="mingru", d_model=8, num_layers=2, steps=6, batch_size=4,
                eval_every=3, eval_batches=1, log_every=1, lr=1e-2, threads=1, out=str(out),
                task_options=dict(test_lengths=8, train_lengths=(3, 10)))  # as FLAGS give them
    base.update(kw)
    return TrainConfig(**base)


def one_line_error(capsys, command="train") -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"rnnzoo {command}: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


# -- item 3: one run per folder ----------------------------------------------------------------
def test_a_folder_holding_another_run_is_refused_and_left_alone(tmp_path):
    train(tiny(tmp_path), quiet=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match=r"holds another run \(trained with seed=0, this run has "
                                         r"seed=1\); continue it with --resume, replace it with "
                                         r"--overwrite"):
        train(tiny(tmp_path, seed=1), quiet=True)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before


def test_overwrite_replaces_every_run_file(tmp_path):
    train(tiny(tmp_path, steps=6), quiet=True)
    (tmp_path / "notes.txt").write_text("mine")
    record = train(tiny(tmp_path, steps=3, seed=1), overwrite=True, quiet=True)
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["steps"] == record["steps"] == 3
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()]
    assert max(steps) == 3  # nothing of the 6-step run is left
    assert json.loads((tmp_path / "train_config.json").read_text())["seed"] == 1
    assert (tmp_path / "notes.txt").read_text() == "mine"  # not a run file: kept


def test_run_files_without_settings_are_another_run(tmp_path):
    (tmp_path / "final.json").write_text("{}")
    with pytest.raises(ValueError, match="holds another run .run files without train_config"):
        train(tiny(tmp_path), quiet=True)


def test_the_same_settings_start_the_run_over_and_say_so(tmp_path, capsys):
    first = train(tiny(tmp_path), quiet=True)
    again = train(tiny(tmp_path))
    assert f"started over: the run files in {tmp_path}" in capsys.readouterr().out
    assert again["value"] == first["value"] and again["eval"] == first["eval"]


def test_a_second_process_into_the_same_folder_is_refused(tmp_path, capsys):
    """A process holds the folder's lock (as a running `rnnzoo train` does); another run
    into it stops in one line; once the holder is gone (killed: no stale lock), it runs."""
    tmp_path.mkdir(exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from rnnzoo.train.checkpoints import _Lock; lock = _Lock(Path(sys.argv[1])); "
         "print('locked', flush=True); time.sleep(120)", str(tmp_path)],
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", *FLAGS, "--out", str(tmp_path)]) == 2
        err = one_line_error(capsys)
        assert f"is in use by another rnnzoo run (process {holder.pid})" in err
        assert not (tmp_path / "final.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(["train", *FLAGS, "--out", str(tmp_path)]) == 0


def test_the_lock_is_held_for_the_run_and_released_after(tmp_path, monkeypatch):
    from rnnzoo.train import checkpoints
    seen = []

    def save_and_try_the_lock(self, *args):
        with pytest.raises(ValueError, match="in use by another rnnzoo run"):
            checkpoints._Lock(self.path)
        seen.append(True)
    monkeypatch.setattr(checkpoints.RunFolder, "save", save_and_try_the_lock)
    train(tiny(tmp_path), quiet=True)
    assert seen
    checkpoints._Lock(tmp_path).release()  # free again after the run


# -- item 4: --resume takes the saved settings -------------------------------------------------
def test_resume_from_the_command_line_needs_only_the_folder(tmp_path, capsys):
    whole = train(tiny(tmp_path / "whole", seed=3), quiet=True)
    train(tiny(tmp_path / "split", seed=3), stop_at=3, quiet=True)
    assert main(["train", "--resume", "--out", str(tmp_path / "split")]) == 0
    final = json.loads((tmp_path / "split" / "final.json").read_text())
    assert final["value"] == whole["value"] and final["eval"] == whole["eval"]
    assert json.loads((tmp_path / "split" / "train_config.json").read_text())["seed"] == 3
    # the flags a resumed run may repeat: the same values
    train(tiny(tmp_path / "again", seed=3), stop_at=3, quiet=True)
    assert main(["train", *FLAGS, "--seed", "3", "--resume", "--out", str(tmp_path / "again")]) == 0


@pytest.mark.parametrize("flag,value,field,old", [
    ("--seed", "1", "seed", "0"), ("--lr", "0.003", "lr", "0.01"),
    ("--d-model", "16", "d_model", "8"), ("--layer", "gru", "layer", "'mingru'"),
    ("--steps", "9", "steps", "6"), ("--depth", "1", "num_layers", "2"),
])
def test_resume_refuses_other_settings_in_one_line(tmp_path, capsys, flag, value, field, old):
    train(tiny(tmp_path), stop_at=3, quiet=True)
    saved = (tmp_path / "checkpoint.safetensors").read_bytes()
    assert main(["train", "--resume", "--out", str(tmp_path), flag, value]) == 2
    err = one_line_error(capsys)
    assert f"was trained with {field}={old}, this run has {field}=" in err
    assert "a resumed run keeps its settings" in err
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == saved
    assert json.loads((tmp_path / "train_config.json").read_text())["seed"] == 0


def test_resume_refuses_other_settings_from_python(tmp_path):
    train(tiny(tmp_path), stop_at=3, quiet=True)
    with pytest.raises(ValueError, match="was trained with seed=0, this run has seed=1"):
        train(tiny(tmp_path, seed=1), resume=True, quiet=True)


# -- item 5: the run folder's errors are one line -----------------------------------------------
def test_out_that_is_a_file_or_under_a_file(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["train", *FLAGS, "--out", str(afile)]) == 2
    assert f"--out {afile} is a file, not a folder" in one_line_error(capsys)
    assert main(["train", *FLAGS, "--out", str(afile / "run")]) == 2
    assert f"--out {afile / 'run'}: {afile} is a file, not a folder" in one_line_error(capsys)


def test_unwritable_out(tmp_path, capsys, monkeypatch):
    def refuse(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(Path, "mkdir", refuse)
    assert main(["train", *FLAGS, "--out", str(tmp_path / "run")]) == 2
    assert "permission denied (cannot create the folder)" in one_line_error(capsys)


def _rewrite(path, tensors_change=None, meta_change=None):
    tensors, meta = load_tensors(path)
    if tensors_change:
        tensors_change(tensors)
    if meta_change:
        meta_change(meta)
    save_tensors(path, tensors, meta)


DEEP = "[" * 100_000 + "]" * 100_000


def _shrink_an_exp_avg(tensors):
    key = next(k for k, v in sorted(tensors.items())
               if k.startswith("optim.") and k.endswith(".exp_avg") and v.shape[0] > 1)
    tensors[key] = tensors[key][:1]


@pytest.mark.parametrize("damage,message", [
    (lambda m: m.pop("step"), r"is damaged \(KeyError: 'step'\)"),
    (lambda m: m.__setitem__("step", "many"), r"is damaged \(ValueError"),
    (lambda m: m.__setitem__("param_groups", "5"), r"is damaged \(TypeError"),
    (lambda m: m.__setitem__("param_groups", "[[1]]"), r"is damaged \("),
    (lambda m: m.__setitem__("param_groups", DEEP), r"is damaged: RecursionError"),
    (lambda m: m.__setitem__("train_config", "[]"), "is damaged: it holds a list"),
    (lambda m: m.__setitem__("train_config", DEEP), r"is damaged: RecursionError"),
    (lambda m: m.__setitem__("train_config", '{"task": "parity"}'), "'layer' is None, not a name"),
])
def test_damaged_checkpoint_under_resume_is_one_line(tmp_path, capsys, damage, message):
    import re
    train(tiny(tmp_path), stop_at=3, quiet=True)
    _rewrite(tmp_path / "checkpoint.safetensors", meta_change=damage)
    assert main(["train", "--resume", "--out", str(tmp_path)]) == 2
    assert re.search(message, one_line_error(capsys))


@pytest.mark.parametrize("damage,message", [
    (lambda t: t.__setitem__("optim.x.exp_avg", next(iter(t.values()))),
     r"optimizer state for 'x', which the model does not have"),
    (lambda t: t.__setitem__("optim.5", next(iter(t.values()))), r"not enough values to unpack"),
    (lambda t: _shrink_an_exp_avg(t), r"optim\..*\.exp_avg has shape"),
])
def test_damaged_optimizer_state_is_one_line(tmp_path, capsys, damage, message):
    import re
    train(tiny(tmp_path), stop_at=3, quiet=True)
    _rewrite(tmp_path / "checkpoint.safetensors", tensors_change=damage)
    assert main(["train", "--resume", "--out", str(tmp_path)]) == 2
    err = one_line_error(capsys)
    assert "checkpoint.safetensors is damaged" in err and re.search(message, err)


def test_damaged_metrics_under_resume_name_the_line(tmp_path, capsys):
    train(tiny(tmp_path), stop_at=3, quiet=True)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write("[1, 2]\n")
    assert main(["train", "--resume", "--out", str(tmp_path)]) == 2
    assert "metrics.jsonl, line" in one_line_error(capsys)


def test_a_torn_last_metrics_line_does_not_stop_resume(tmp_path, capsys):
    """A run killed while appending to metrics.jsonl leaves its last line cut short, with no
    newline: --resume refused the folder as damaged ("line 10 ... not valid JSON"). The torn
    line is dropped (it is a row after the checkpoint) and the run ends as one that never
    stopped; a complete damaged line is still refused."""
    whole = train(tiny(tmp_path / "whole"), quiet=True)
    train(tiny(tmp_path / "split"), stop_at=3, quiet=True)
    with open(tmp_path / "split" / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 0.6')
    assert main(["train", "--resume", "--out", str(tmp_path / "split")]) == 0
    final = json.loads((tmp_path / "split" / "final.json").read_text())
    assert final["value"] == whole["value"] and final["eval"] == whole["eval"]
    def steps(run):
        return [json.loads(r)["step"] for r in (tmp_path / run / "metrics.jsonl").open()]
    assert steps("split") == steps("whole")


# -- a run refused for its settings creates no --out (s21) ---------------------------------------
@pytest.mark.parametrize("argv", [
    ["--task", "nosuch", "--layer", "lstm"],                                # unknown task
    ["--task", "parity", "--layer", "lstm", "--layer-option", "bogus=1"],   # the layer refuses
    ["--task", "parity", "--layer", "mingru", "--task-option", "modulus=3"],
    ["--task", "parity", "--layer", "lstm", "--model", "dsr"],              # not a dsr cell
    ["--task", "parity", "--layer", "plrnn", "--model", "dsr"],             # not a dynamics task
])
def test_a_run_refused_for_its_settings_leaves_no_folder(tmp_path, capsys, argv):
    """The task and model are built (and refuse bad settings) before --out is created:
    before, such a call left --out (and its missing parents) holding an empty .lock."""
    out = tmp_path / "new" / "run"
    assert main(["train", *argv, "--out", str(out), "--steps", "1"]) == 2
    one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_refused_run_leaves_an_existing_folder_as_it_was(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["train", "--task", "nosuch", "--layer", "lstm", "--out", str(tmp_path)]) == 2
    one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
