"""Run records: one folder per run under `<local_work_dir>/runs/`, holding run.json (replaced atomically), the
steps' logs and the cancel marker."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RUNS_DIR = "runs"
RECORD_FILE = "run.json"
PID_FILE = "runner.pid"
CANCEL_FILE = "cancel.requested"
LOGS_DIR = "logs"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_run_id(now: datetime | None = None) -> str:
    """`local_<YYYYmmddTHHMMSS>_<6 hex>`: sorts by start time and is a valid run id everywhere."""
    return f"local_{(now or datetime.now(UTC)):%Y%m%dT%H%M%S}_{secrets.token_hex(3)}"


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    """Replace run.json atomically: a reader sees the old or the new record, never half of one."""
    fd, temp = tempfile.mkstemp(prefix=".run.", suffix=".json", dir=run_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(record, out, indent=2)
        os.replace(temp, run_dir / RECORD_FILE)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def read_record(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / RECORD_FILE).read_text(encoding="utf-8"))


def finish_record(run_dir: Path, record: dict[str, Any], status: str, error: str | None) -> None:
    for step in record["steps"]:
        if step["status"] == "queued":
            step["status"] = "canceled"  # never started; Azure ML shows such nodes as canceled too
            step["note"] = "not run: an earlier step failed" if status == "failed" else "not run"
    record.update(status=status, error=error, ended_at=utc_now())
    write_record(run_dir, record)
