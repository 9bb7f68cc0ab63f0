"""rnnzoo generate: a text run continues a prompt; characters it never saw are one line."""

from __future__ import annotations

import pytest

from rnnzoo.cli import main


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



def _text_run(tmp_path, mode):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abcabcabd " * 200)
    run = tmp_path / f"run-{mode}"
    assert main(["train", "--task", "text", "--data", str(corpus), "--task-option", f"mode={mode}",
                 "--task-option", "seq_len=16", "--layer", "lstm", "--depth", "1", "--d-model",
                 "16", "--steps", "3", "--batch-size", "4", "--eval-every", "3", "--threads", "1",
                 "--out", str(run)]) == 0
    return corpus, run


def test_a_byte_run_generates_after_its_text_moved(tmp_path, capsys):
    corpus, run = _text_run(tmp_path, "byte")
    corpus.rename(tmp_path / "elsewhere.txt")
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "abc", "--tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("abc")


def test_a_char_run_whose_text_moved_says_why_in_one_line(tmp_path, capsys):
    corpus, run = _text_run(tmp_path, "char")
    corpus.unlink()
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "abc"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a character-level run: its vocabulary is the characters " \
        f"of its training text {corpus}, which is not there any more" in err


@pytest.mark.parametrize("flag,value", [("--temperature", "nan"), ("--temperature", "inf"),
                                        ("--temperature", "-1"), ("--tokens", "-1"),
                                        ("--prompt", "")])  # was "prompt must have shape"
def test_generate_options_are_checked(tmp_path, capsys, flag, value):
    _, run = _text_run(tmp_path, "byte")
    capsys.readouterr()
    assert main(["generate", str(run), flag, value]) == 2
    assert f"{flag} must" in capsys.readouterr().err


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("name,text,message", [
    ("train_config.json", "[]", "is damaged: it holds a list"),
    ("train_config.json", DEEP, "is damaged: RecursionError"),
    ("train_config.json", '{"task": "text", "layer": "lstm", "task_options": 5}',
     "'task_options' is 5, not a dict"),
    ("train_config.json", '{"task": "text", "layer": "lstm", "d_model": "x"}',
     "--d-model must be an int"),
    ("model.safetensors", DEEP, "its rnnzoo.config metadata is not JSON rnnzoo reads: nested "
                                "deeper than"),
])
def test_a_damaged_run_folder_is_one_line(tmp_path, capsys, name, text, message):
    from rnnzoo.models.checkpoint import load_tensors, save_tensors
    _, run = _text_run(tmp_path, "byte")
    if name == "model.safetensors":  # the model's config, in the weights' metadata
        tensors, meta = load_tensors(run / name)
        save_tensors(run / name, tensors, {**meta, "rnnzoo.config": text})
    else:
        (run / name).write_text(text)
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "a", "--tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnzoo generate: error: ") and err.count("\n") == 1, err
    assert message in err
