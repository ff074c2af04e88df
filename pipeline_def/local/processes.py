"""Process supervision of local runs: the runner's pid file, and /proc to tell a live runner from a recycled pid
or a zombie."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

PID_FILE = "runner.pid"


@dataclass(frozen=True)
class RunnerPid:
    """What runner.pid holds: the runner's pid and the kernel's start time of that process."""

    pid: int
    start: str | None


def write_pid(run_dir: Path, pid: int) -> None:
    """Record `pid` as the run's runner (atomically: a reader never sees half a file)."""
    text = json.dumps({"pid": pid, "start": process_start(pid)})
    fd, temp = tempfile.mkstemp(prefix=".pid.", dir=run_dir)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(temp, run_dir / PID_FILE)


def read_pid(run_dir: Path) -> RunnerPid | None:
    """The run's runner, or None when no (readable) pid file was written yet."""
    try:
        info = json.loads((run_dir / PID_FILE).read_text())
        return RunnerPid(pid=int(info["pid"]), start=info.get("start"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def is_running(runner: RunnerPid) -> bool:
    """Whether the process in `runner` still runs: it exists, is not a zombie, and is the same process
    (a pid recycled since has another start time). A process of another user counts as running."""
    try:
        os.kill(runner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = process_start(runner.pid)
    if start is not None and runner.start is not None and start != runner.start:
        return False
    return not is_zombie(runner.pid)


def process_start(pid: int) -> str | None:
    """The kernel's start time of `pid`, so a recycled pid is not taken for the runner."""
    return _proc_stat(pid, 19)


def is_zombie(pid: int) -> bool:
    return _proc_stat(pid, 0) == "Z"


def _proc_stat(pid: int, field: int) -> str | None:
    """One field of /proc/<pid>/stat (Linux), counted after the command name; None if unreadable."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[field]
    except (OSError, IndexError):
        return None
