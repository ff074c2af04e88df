"""Process supervision of local runs: the runner's pid file, and /proc to tell a live runner from a recycled pid
or a zombie."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

PID_FILE = "runner.pid"


def _proc_stat(pid: int, field: int) -> str | None:
    """One field of /proc/<pid>/stat (Linux), counted after the command name; None if unreadable."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[field]
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> str | None:
    """The kernel's start time of `pid`, so a recycled pid is not taken for the runner."""
    return _proc_stat(pid, 19)


def write_pid(run_dir: Path, pid: int) -> None:
    text = json.dumps({"pid": pid, "start": process_start(pid)})
    fd, temp = tempfile.mkstemp(prefix=".pid.", dir=run_dir)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(temp, run_dir / PID_FILE)


def is_zombie(pid: int) -> bool:
    return _proc_stat(pid, 0) == "Z"
