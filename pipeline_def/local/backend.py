"""The `local` backend: the pipeline's step scripts (from steps.py) run as local processes, one after the other,
with one run record per run in `<local_work_dir>/runs/<run_id>/run.json`. No Azure needed.

`submit` starts the run in a detached runner process (`python -m pipeline_def.local.runner execute RUN_DIR`)
and returns at once; `run` does the same work in this process and returns when the run has ended.
The record is written only by the runner (atomically), except that a reader finding a record whose runner
has died marks it failed (or canceled, when a cancel was asked for).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline_def.backend import LookBack, OccurrenceRun, Published, Target
from pipeline_def.errors import LocalRunError, RunNotFound
from pipeline_def.local.commands import (
    PREDICTIONS_FILE,
    destination_folder,
    settings_to_record,
    step_command,
)
from pipeline_def.local.processes import PID_FILE, is_running, read_pid, write_pid
from pipeline_def.local.records import (
    CANCEL_FILE,
    LOGS_DIR,
    RECORD_FILE,
    RUNS_DIR,
    RunRecord,
    StepRecord,
    finish_record,
    new_run_id,
    read_record,
    utc_now,
    write_record,
)
from pipeline_def.local.runner import Progress, execute_run
from pipeline_def.runs import (
    Predictions,
    RunInfo,
    StepStatus,
    is_valid_run_id,
    predictions_from_tags,
    with_urls,
)
from pipeline_def.settings import PROJECT_ROOT, Settings
from pipeline_def.steps import STEPS

# A queued record whose runner has not written its pid yet is given this long before it counts as dead.
START_GRACE_SECONDS = 60.0
# How long a reader waits for the runner of an ended run to exit (it is about to).
RUNNER_EXIT_SECONDS = 10.0


class LocalBackend:
    """The Backend of service.py for PIPELINE_BACKEND=local."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runs_dir = settings.local_work_dir / RUNS_DIR
        self._children: dict[int, subprocess.Popen] = {}

    def ensure_published(self) -> Published:
        """Nothing to publish locally: the steps are read from step_scripts/ when they run."""
        return Published(self.published_target(), published=False)

    def published_target(self) -> Target:
        """Locally the steps run from step_scripts/ as they are: always the current fingerprint."""
        from pipeline_def.fingerprint import compute_fingerprint

        return Target(version=compute_fingerprint(self.settings), current=True)

    def look_back(self, target: Target, need_active: bool) -> LookBack:
        runs = self.list_runs(limit=10_000)  # local run records: a folder listing, no service to spare
        active = next((run for run in runs if not run.terminal), None) if need_active else None
        previous = next((run for run in runs if run.trigger == "timer"), None)
        return LookBack(active=active, previous_scheduled=previous)

    def submit(self, target: Target, parameters: dict[str, str], tags: dict[str, str]) -> RunInfo:
        """Start a run in a detached runner process and return it queued (or already running)."""
        self._reap()
        run_dir, record = self._create_run(parameters, tags, mode="detached")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
        (run_dir / LOGS_DIR).mkdir(exist_ok=True)
        with open(run_dir / LOGS_DIR / "runner.log", "ab") as log:
            try:
                process = subprocess.Popen(
                    [sys.executable, "-m", "pipeline_def.local.runner", "execute", str(run_dir)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=PROJECT_ROOT,
                    env=env,
                    start_new_session=True,  # its own process group: cancel terminates it and its step
                )
            except OSError as error:
                finish_record(run_dir, record, "failed", f"the local runner could not be started: {error}")
                raise LocalRunError(f"the local runner could not be started: {error}") from error
        self._children[process.pid] = process
        write_pid(run_dir, process.pid)
        return self._info(run_dir, record)

    def submit_for_occurrence(
        self, target: Target, tags: dict[str, str], scheduled_for: str
    ) -> OccurrenceRun:
        """A plain submit: local runs belong to one machine's process, with no second instance to race."""
        return OccurrenceRun(self.submit(target, {}, tags))

    def run(
        self,
        target: Target,
        parameters: dict[str, str],
        tags: dict[str, str],
        progress: Progress | None = None,
    ) -> RunInfo:
        """Run the pipeline in this process and return the ended run (the CLI's `run`)."""
        run_dir, _ = self._create_run(parameters, tags, mode="foreground")
        write_pid(run_dir, os.getpid())
        execute_run(run_dir, progress)
        return self.get_run(run_dir.name)

    def get_run(self, run_id: str) -> RunInfo:
        run_dir = self._run_dir(run_id)
        return self._info(run_dir, self._load(run_dir))

    def list_runs(self, limit: int) -> list[RunInfo]:
        records = []
        for run_dir in self._all_run_dirs():
            try:
                records.append((run_dir, self._load(run_dir)))
            except (OSError, ValueError, RunNotFound):
                continue  # a run being created, or a stray folder
        records.sort(key=lambda item: (item[1].created_at or "", item[1].id), reverse=True)
        return [self._info(run_dir, record) for run_dir, record in records[:limit]]

    def cancel(self, run_id: str) -> None:
        """Ask the run to stop: a marker the runner watches for, and SIGTERM to a detached runner's process
        group (runner and current step). The runner records the run as canceled."""
        run_dir = self._run_dir(run_id)
        record = self._load(run_dir)
        if record.terminal:
            return
        (run_dir / CANCEL_FILE).write_text(utc_now())
        pid = self._live_runner_pid(run_dir)
        if record.mode == "detached" and pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(pid) == pid:  # still the group leader we started, not a recycled pid
                    os.killpg(pid, signal.SIGTERM)
        elif pid is None:
            self._load(run_dir)  # the runner is gone: this marks the record canceled

    # -- helpers --

    def _reap(self) -> None:
        """Forget (and reap) runner processes of earlier submits that have ended."""
        for pid, process in list(self._children.items()):
            if process.poll() is not None:
                del self._children[pid]

    def _create_run(
        self, parameters: Mapping[str, str], tags: Mapping[str, str], mode: str
    ) -> tuple[Path, RunRecord]:
        from pipeline_def.fingerprint import compute_fingerprint

        self.runs_dir.mkdir(parents=True, exist_ok=True)
        while True:
            run_id = new_run_id()
            run_dir = self.runs_dir / run_id
            try:
                run_dir.mkdir()
                break
            except FileExistsError:
                continue
        fingerprint = compute_fingerprint(self.settings)
        parameters = {k: str(v) for k, v in parameters.items()}
        steps = [
            StepRecord(
                name=step.name,
                command=step_command(step, self.settings, parameters, run_dir, fingerprint),
                log=f"{LOGS_DIR}/{step.name}.log",
            )
            for step in STEPS
        ]
        record = RunRecord(
            id=run_id,
            status="queued",
            mode=mode,
            parameters={**self.settings.parameter_defaults, **parameters},
            tags=dict(tags),
            fingerprint=fingerprint,
            settings=settings_to_record(self.settings),
            steps=steps,
            created_at=utc_now(),
        )
        write_record(run_dir, record)
        return run_dir, record

    def _run_dir(self, run_id: str) -> Path:
        if not isinstance(run_id, str) or not is_valid_run_id(run_id):
            raise RunNotFound(str(run_id)[:100])
        run_dir = self.runs_dir / run_id
        if not (run_dir / RECORD_FILE).is_file():
            raise RunNotFound(run_id)
        return run_dir

    def _all_run_dirs(self) -> list[Path]:
        if not self.runs_dir.is_dir():
            return []
        return [p for p in self.runs_dir.iterdir() if p.is_dir() and (p / RECORD_FILE).is_file()]

    def _load(self, run_dir: Path) -> RunRecord:
        """The record, with a dead runner's unfinished run marked as ended."""
        try:
            record = read_record(run_dir)
        except FileNotFoundError as error:
            raise RunNotFound(run_dir.name) from error
        if record.terminal:
            self._reap_runner(run_dir)
            return record
        if self._runner_alive(run_dir, record):
            return record
        # Read again: the runner may have written its last record just before it exited.
        record = read_record(run_dir)
        if not record.terminal:
            if (run_dir / CANCEL_FILE).exists():
                finish_record(run_dir, record, "canceled", "canceled on request")
            else:
                finish_record(
                    run_dir,
                    record,
                    "failed",
                    f"the local runner process ended before the run did (see {run_dir / LOGS_DIR})",
                )
        return record

    def _reap_runner(self, run_dir: Path) -> None:
        """Wait for our own runner of an ended run to exit (it writes the last record just before), so it
        leaves no zombie behind."""
        runner = read_pid(run_dir)
        process = self._children.pop(runner.pid, None) if runner is not None else None
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=RUNNER_EXIT_SECONDS)

    def _runner_alive(self, run_dir: Path, record: RunRecord) -> bool:
        if self._live_runner_pid(run_dir) is not None:
            return True
        if not (run_dir / PID_FILE).exists():
            # Created, runner not started yet (or it never will be: then it is dead after the grace time).
            created = datetime.fromisoformat((record.created_at or "").replace("Z", "+00:00"))
            return (datetime.now(UTC) - created).total_seconds() < START_GRACE_SECONDS
        return False

    def _live_runner_pid(self, run_dir: Path) -> int | None:
        runner = read_pid(run_dir)
        if runner is None:
            return None
        pid = runner.pid
        if pid == os.getpid():
            return pid
        child = self._children.get(pid)
        if child is not None:  # our own child: poll() also reaps it, so it does not linger as a zombie
            if child.poll() is None:
                return pid
            del self._children[pid]
            return None
        return pid if is_running(runner) else None

    def _info(self, run_dir: Path, record: RunRecord) -> RunInfo:
        status = record.status
        if not record.terminal and (run_dir / CANCEL_FILE).exists():
            status = "canceling"
        steps = [StepStatus(step.name, step.status, _first_line(step.error)) for step in record.steps]
        failed = next((step for step in steps if step.status == "failed"), None)
        return RunInfo(
            run_id=record.id,
            status=status,
            aml_status=None,
            created_at=record.created_at,
            ended_at=record.ended_at,
            steps=steps,
            portal_url=None,
            error=record.error,
            trigger=record.tags.get("trigger") or None,
            failed_step=failed.name if status == "failed" and failed is not None else None,
            predictions_path=(record.output_path or None) if status == "completed" else None,
            predictions=self._predictions(record),
        )

    def _predictions(self, record: RunRecord) -> Predictions | None:
        """Where the run's predictions went, from the summary its save step recorded; the URLs are files: the
        latest CSV when the run replaced it, else its history copy's, and the gate's report."""
        found = predictions_from_tags(record.summary)
        if found is None:
            return None
        root = destination_folder(self.settings)

        def file_url(path: str) -> str:
            target = root / path
            return (target / PREDICTIONS_FILE.name if not target.suffix else target).resolve().as_uri()

        return with_urls(found, file_url)


def _first_line(text: Any) -> str | None:
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    return lines[0][:300] if lines else None
