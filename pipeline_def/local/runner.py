"""Executing a local run: the steps of a run record in order, each a process, with the record updated as they go.
It runs in a detached runner (`python -m pipeline_def.local.runner execute RUN_DIR`, started by
LocalBackend.submit) or in the CLI's own process (LocalBackend.run).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline_def.errors import LocalRunError
from pipeline_def.local.commands import PREDICTIONS_FILE, destination_folder, settings_from_record
from pipeline_def.local.model import ensure_model, model_folder, why_train
from pipeline_def.local.processes import write_pid
from pipeline_def.local.records import (
    CANCEL_FILE,
    SUMMARY_FILE,
    RunRecord,
    StepRecord,
    finish_record,
    read_record,
    utc_now,
    write_record,
)
from pipeline_def.settings import PROJECT_ROOT, STEP_SCRIPTS_DIR, Settings

# The variable that tells save_predictions where to record the run's summary (batchpred_steps/run_summary.py).
SUMMARY_VARIABLE = "BATCHPRED_SUMMARY_FILE"
# How often a running step looks for a cancel request made by another process.
CANCEL_POLL_SECONDS = 0.25

Progress = Callable[[str], None]


class _Canceled(BaseException):
    """The run was canceled: raised by SIGTERM in a detached runner, or when a step sees the cancel request.
    A BaseException, so that no `except Exception` on the way swallows it."""


def _quiet(_line: str) -> None:
    pass


def execute_run(run_dir: Path, progress: Progress | None = None) -> RunRecord:
    """Run the steps of the record in `run_dir` in order, updating the record as they go; return it ended.
    A Ctrl-C in the foreground is recorded as a cancel and then raised on."""
    say = progress or _quiet
    record = read_record(run_dir)
    settings = settings_from_record(record.settings)
    try:
        _run_steps(run_dir, record, settings, say)
    except (_Canceled, KeyboardInterrupt) as stop:
        interrupted = isinstance(stop, KeyboardInterrupt)
        _end_running_step(record, status="canceled")
        finish_record(run_dir, record, "canceled", "interrupted" if interrupted else "canceled on request")
        say(f"run {record.id}: canceled")
        if interrupted:
            raise
    except Exception as error:  # the runner itself broke (disk full, a step that cannot start): say so
        _end_running_step(record, status="failed", error=str(error))
        finish_record(run_dir, record, "failed", f"the local runner failed: {error}")
    return record


def _run_steps(run_dir: Path, record: RunRecord, settings: Settings, say: Progress) -> None:
    """The run from queued to its end: the model first, then each step, stopping at the first failure."""
    _raise_if_canceled(run_dir)
    record.status, record.started_at = "running", utc_now()
    write_record(run_dir, record)
    say(f"run {record.id}: running")
    if not _prepare_model(run_dir, record, settings, say):
        return
    for step in record.steps:
        if not _run_step(run_dir, record, step, say):
            return
    # The CSV; a run above the CSV's row limit published Parquet parts only, named by the manifest.
    output = destination_folder(settings) / PREDICTIONS_FILE
    record.output_path = str(output if output.is_file() else output.with_name("manifest.json"))
    finish_record(run_dir, record, "completed", None)


def _prepare_model(run_dir: Path, record: RunRecord, settings: Settings, say: Progress) -> bool:
    """Train the baseline model if none is registered yet; False (the run is then failed) if that fails."""
    try:
        why = why_train(model_folder(settings))
        if why:
            say(f"run {record.id}: {settings.model_name}: {why}; training the baseline model")
        ensure_model(settings)
    except Exception as error:
        finish_record(run_dir, record, "failed", f"the model could not be prepared: {error}")
        return False
    return True


def _run_step(run_dir: Path, record: RunRecord, step: StepRecord, say: Progress) -> bool:
    """Run one step as a process to its end; False (the run is then failed) if it failed."""
    _raise_if_canceled(run_dir)
    step.status, step.started_at = "running", utc_now()
    write_record(run_dir, record)
    say(f"  {step.name:<18} running")
    started = time.monotonic()
    process = _start_step(run_dir, step)
    try:
        code = _wait_step(process, run_dir)
    finally:
        _terminate(process)  # when the wait was cut short by a cancel or an error
    step.ended_at, step.exit_code = utc_now(), code
    step.seconds = round(time.monotonic() - started, 3)
    record.summary = _read_summary(run_dir) or record.summary
    if code != 0:
        step.status, step.error = "failed", _step_error(run_dir / step.log, code)
        say(f"  {step.name:<18} failed: {step.error}")
        finish_record(run_dir, record, "failed", f"step {step.name} failed: {step.error}")
        return False
    step.status = "completed"
    write_record(run_dir, record)
    say(f"  {step.name:<18} completed in {step.seconds:.1f} s")
    return True


def _read_summary(run_dir: Path) -> dict[str, str] | None:
    """The tags save_predictions recorded in the run's summary file, if it wrote one (a failed gate does too)."""
    try:
        tags = json.loads((run_dir / SUMMARY_FILE).read_text(encoding="utf-8")).get("tags")
    except (OSError, ValueError, AttributeError):
        return None
    return {str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else None


def _raise_if_canceled(run_dir: Path) -> None:
    if (run_dir / CANCEL_FILE).exists():
        raise _Canceled


def _terminate(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        process.wait()


def _end_running_step(record: RunRecord, status: str, error: str | None = None) -> None:
    """Mark the step that was running when the run stopped (its process is already ended)."""
    step = record.running_step()
    if step is not None:
        step.status, step.ended_at = status, utc_now()
        if error is not None:
            step.error = error


def _start_step(run_dir: Path, step: StepRecord) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env[SUMMARY_VARIABLE] = str(run_dir / SUMMARY_FILE)
    # The steps run as they would on Azure ML: from their own folder, without pipeline_def on the path.
    paths = [
        p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != PROJECT_ROOT
    ]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    log_path = run_dir / step.log
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        try:
            return subprocess.Popen(
                [sys.executable, *step.command],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=STEP_SCRIPTS_DIR,
                env=env,
            )
        except OSError as error:
            raise LocalRunError(f"step {step.name} could not be started: {error}") from error


def _wait_step(process: subprocess.Popen, run_dir: Path) -> int:
    """The step's exit code; a cancel request (from any process) terminates it instead."""
    while True:
        try:
            return process.wait(timeout=CANCEL_POLL_SECONDS)
        except subprocess.TimeoutExpired:
            if (run_dir / CANCEL_FILE).exists():
                raise _Canceled from None


def _step_error(log_path: Path, code: int) -> str:
    """The step's own `error: ...` line when it wrote one, else its exit code and last log line."""
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: ") :].strip()
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    reason = f"exited with code {code}" if code >= 0 else f"killed by signal {-code}"
    return f"{reason}: {last}" if last else reason


def _on_sigterm(_signum: int, _frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the clean-up
    raise _Canceled


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline_def.local.runner execute RUN_DIR`: the detached runner."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "execute":
        print("usage: python -m pipeline_def.local.runner execute RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(args[1])
    signal.signal(signal.SIGTERM, _on_sigterm)
    write_pid(run_dir, os.getpid())
    record = execute_run(run_dir, progress=lambda line: print(line, flush=True))
    return 0 if record.status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
