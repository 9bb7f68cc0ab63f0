"""rnnzoo.io: atomic writes (mode, no temporary file left behind) and reads that name the
file they fail on."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys

import pytest

from rnnzoo.io import atomic_write_bytes, atomic_write_text, parse_json, read_text

posix = pytest.mark.skipif(os.name != "posix", reason="modes, umask and SIGKILL are POSIX")


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _temps(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@posix
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=["022", "077", "002"])
def test_new_file_has_the_mode_an_ordinary_write_gives(tmp_path, umask):
    """0644 under the usual umask 022 (mkstemp made them 0600), the umask respected."""
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "atomic.json", "{}")
        with open(tmp_path / "plain.json", "w") as f:
            f.write("{}")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "atomic.json") == _mode(tmp_path / "plain.json") == 0o666 & ~umask


@posix
def test_overwrite_keeps_the_files_mode(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("old")
    os.chmod(path, 0o640)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and _mode(path) == 0o640


@posix
def test_no_temporary_file_survives_a_failed_or_killed_write(tmp_path, monkeypatch):
    """A write that raises midway removes its temporary file; a process killed midway cannot,
    so the next write of the same file removes it (and never one of a live process)."""
    path = tmp_path / "model.safetensors"
    atomic_write_bytes(path, b"old")

    def fail(fd):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", fail)
        with pytest.raises(OSError, match="disk full"):
            atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and _temps(tmp_path) == []

    killed = ("import os, signal, sys\n"
              "from rnnzoo.io import atomic_write_bytes\n"
              "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
              "atomic_write_bytes(sys.argv[1], b'half')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    run = subprocess.run([sys.executable, "-c", killed, str(path)], env=env, timeout=120)
    assert run.returncode == -signal.SIGKILL
    assert path.read_bytes() == b"old" and len(_temps(tmp_path)) == 1  # left by the killed write
    live = tmp_path / f".{path.name}.{socket.gethostname()}.{os.getpid()}.0000.tmp"
    live.write_bytes(b"another write in progress")
    other = tmp_path / ".other.bin.tmp"
    other.write_bytes(b"not ours")
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert _temps(tmp_path) == sorted([live.name, other.name])


def test_read_text_names_the_file_and_the_byte(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b'{"a": "caf\xe9"}')
    with pytest.raises(ValueError, match=r"config\.json is not UTF-8 text: byte 0xe9 at offset 10"
                       ) as e:
        read_text(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    path.write_text("caf\u00e9")
    assert read_text(path) == "caf\u00e9"


def test_parse_json_names_its_source():
    assert parse_json('{"a": 1}', "x") == {"a": 1}
    with pytest.raises(ValueError, match=r"^run/config\.json is not valid JSON: Expecting value "
                                         r"at line 2, column 11$"):
        parse_json('{"a":\n  1, "b": }', "run/config.json")
    with pytest.raises(ValueError, match=r"^the header is not UTF-8 text: byte 0xff at offset 1"):
        parse_json(b"{\xff}", "the header")
