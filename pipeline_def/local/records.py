"""Run records: one folder per run under `<local_work_dir>/runs/`, holding run.json (replaced atomically), the
steps' logs and the cancel marker. `RunRecord` and `StepRecord` are run.json's shape; the file keeps the keys
it always had, so records written before these classes existed still read."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline_def.runs import TERMINAL

RUNS_DIR = "runs"
RECORD_FILE = "run.json"
CANCEL_FILE = "cancel.requested"
LOGS_DIR = "logs"
# Where save_predictions records the run's summary (its BATCHPRED_SUMMARY_FILE): the runner copies it into the
# record as `summary`, the local counterpart of the step-run tags Azure ML keeps.
SUMMARY_FILE = "summary.json"

# Written only once they have a value, as before these classes existed.
_OPTIONAL_STEP_KEYS = ("seconds", "note")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_run_id(now: datetime | None = None) -> str:
    """`local_<YYYYmmddTHHMMSS>_<6 hex>`: sorts by start time and is a valid run id everywhere."""
    return f"local_{(now or datetime.now(UTC)):%Y%m%dT%H%M%S}_{secrets.token_hex(3)}"


@dataclass
class StepRecord:
    """One step of a run: its command line, its log (relative to the run folder) and how it went."""

    name: str
    command: list[str]
    log: str
    status: str = "queued"
    started_at: str | None = None
    ended_at: str | None = None
    exit_code: int | None = None
    error: str | None = None
    seconds: float | None = None
    note: str | None = None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> StepRecord:
        return cls(**_known_fields(cls, raw))

    def to_json(self) -> dict[str, Any]:
        raw = dataclasses.asdict(self)
        return {k: v for k, v in raw.items() if v is not None or k not in _OPTIONAL_STEP_KEYS}


@dataclass
class RunRecord:
    """run.json: what was asked (parameters, tags, the Settings of the creating process), the steps, and
    how the run went. `settings` is kept as plain JSON values; local.commands turns it back into Settings."""

    id: str
    status: str
    mode: str  # "detached" (submit: a runner process) or "foreground" (run: the caller's process)
    parameters: dict[str, str]
    tags: dict[str, str]
    fingerprint: str
    settings: dict[str, Any]
    steps: list[StepRecord] = field(default_factory=list)
    error: str | None = None
    output_path: str | None = None
    summary: dict[str, str] | None = None
    created_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RunRecord:
        values = _known_fields(cls, raw)
        values["steps"] = [StepRecord.from_json(step) for step in raw.get("steps") or []]
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        raw = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        raw["steps"] = [step.to_json() for step in self.steps]
        if raw["summary"] is None:
            del raw["summary"]  # a run that never saved keeps the record shape of earlier versions
        return raw

    def running_step(self) -> StepRecord | None:
        return next((step for step in self.steps if step.status == "running"), None)


def _known_fields(cls: type, raw: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in raw.items() if k in names}


def write_record(run_dir: Path, record: RunRecord) -> None:
    """Replace run.json atomically: a reader sees the old or the new record, never half of one."""
    fd, temp = tempfile.mkstemp(prefix=".run.", suffix=".json", dir=run_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(record.to_json(), out, indent=2)
        os.replace(temp, run_dir / RECORD_FILE)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def read_record(run_dir: Path) -> RunRecord:
    """The record in `run_dir`; FileNotFoundError when there is none, ValueError when it is malformed."""
    raw = json.loads((run_dir / RECORD_FILE).read_text(encoding="utf-8"))
    try:
        return RunRecord.from_json(raw)
    except (TypeError, AttributeError) as error:  # a missing key, or JSON of another shape
        raise ValueError(f"{run_dir / RECORD_FILE} is not a run record: {error}") from error


def finish_record(run_dir: Path, record: RunRecord, status: str, error: str | None) -> None:
    """End the run as `status`: the steps that never started count as canceled, as Azure ML shows them."""
    for step in record.steps:
        if step.status == "queued":
            step.status = "canceled"
            step.note = "not run: an earlier step failed" if status == "failed" else "not run"
    record.status, record.error, record.ended_at = status, error, utc_now()
    write_record(run_dir, record)
