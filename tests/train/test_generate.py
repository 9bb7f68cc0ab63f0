"""rnnzoo generate: a text run continues a prompt; characters it never saw are one line."""

from __future__ import annotations

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

