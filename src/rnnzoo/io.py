"""Files: writes that never leave a half-written file, reads that name the file they fail on.

    atomic_write_bytes(path, data)   write a temporary file next to `path`, then rename it
    atomic_write_text(path, text)
    read_text(path)                  UTF-8 text; bad bytes fail in one line naming the file
    parse_json(text, source)         JSON; a syntax error fails in one line naming `source`

The temporary file is `.NAME.HOST.PID.TOKEN.tmp` in the target's folder (a rename is atomic
only within one file system). It is created with mode 0o666 and the process umask, as
`open(path, "w")` would create `path` (0644 under the usual umask 022); a file that already
exists keeps its mode. A write that raises removes its temporary file; a process killed
mid-write cannot, so each write first removes the temporary files of the same target left
by processes of this host that no longer run.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import stat
import sys
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "parse_json", "read_text"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists (another user's process: PermissionError)
        return True
    return True


def _remove_stale_temps(path: Path, host: str) -> None:
    """Delete `.NAME.HOST.PID.TOKEN.tmp` next to `path` whose PID is gone (POSIX only:
    elsewhere os.kill(pid, 0) does not merely probe)."""
    if os.name != "posix":
        return
    prefix = f".{path.name}."
    try:
        entries = os.listdir(path.parent)
    except OSError:
        return
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(".tmp")):
            continue
        parts = entry[len(prefix):].rsplit(".", 3)  # HOST, PID, TOKEN, "tmp"
        if len(parts) != 4 or parts[0] != host or not parts[1].isdigit():
            continue
        if int(parts[1]) != os.getpid() and not _pid_alive(int(parts[1])):
            try:
                os.unlink(path.parent / entry)
            except OSError:
                pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (a reader sees the old file or the new one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().replace(os.sep, "_") or "host"
    _remove_stale_temps(path, host)
    tmp = path.parent / f".{path.name}.{host}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            try:  # an existing file keeps its mode
                os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
            except FileNotFoundError:
                pass
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def read_text(path: str | os.PathLike) -> str:
    """The UTF-8 text of `path`; bytes that are not UTF-8 raise ValueError naming the file and
    the offset."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text: byte 0x{data[e.start]:02x} at offset "
                         f"{e.start} ({e.reason})") from None


def parse_json(text: str | bytes, source) -> object:
    """json.loads(text); bad JSON (or bytes that are not UTF-8) raise ValueError naming
    `source` (a file, or what the text is) and where."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{source} is not UTF-8 text: byte 0x{text[e.start]:02x} at "
                             f"offset {e.start} ({e.reason})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source} is not valid JSON: {e.msg} at line {e.lineno}, "
                         f"column {e.colno}") from None
    except RecursionError:  # arrays or objects nested deeper than Python's recursion limit
        raise ValueError(f"{source} is not JSON rnnzoo reads: nested deeper than "
                         f"{sys.getrecursionlimit()} levels") from None
