"""The `local` backend: the pipeline's step scripts (from steps.py) run as local processes, one after the other,
with one run record per run in `<local_work_dir>/runs/<run_id>/run.json`. No Azure needed.

`submit` starts the run in a detached runner process (`python -m pipeline_def.local.runner execute RUN_DIR`)
and returns at once; `run` does the same work in this process and returns when the run has ended.
The record is written only by the runner (atomically), except that a reader finding a record whose runner
has died marks it failed (or canceled, when a cancel was asked for).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline_def.backend import LookBack, Published, Target
from pipeline_def.errors import LocalRunError, RunNotFound
from pipeline_def.local.model import ensure_model, model_folder, registered_versions
from pipeline_def.runs import TERMINAL, RunInfo, StepStatus, is_valid_run_id
from pipeline_def.settings import PROJECT_ROOT, STEP_SCRIPTS_DIR, Settings
from pipeline_def.steps import STEPS, BuildValue, DataIn, DataOut, Param, Step

RUNS_DIR = "runs"
RECORD_FILE = "run.json"
PID_FILE = "runner.pid"
CANCEL_FILE = "cancel.requested"
LOGS_DIR = "logs"
PREDICTIONS_FILE = Path("latest_predictions") / "predictions.csv"
# How often a running step looks for a cancel request made by another process.
CANCEL_POLL_SECONDS = 0.25
# A queued record whose runner has not written its pid yet is given this long before it counts as dead.
START_GRACE_SECONDS = 60.0
# How long a reader waits for the runner of an ended run to exit (it is about to).
RUNNER_EXIT_SECONDS = 10.0

Progress = Callable[[str], None]


class _Canceled(BaseException):
    """The run was canceled: raised by SIGTERM in a detached runner, or when a step sees the cancel request.
    A BaseException, so that no `except Exception` on the way swallows it."""


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_run_id(now: datetime | None = None) -> str:
    """`local_<YYYYmmddTHHMMSS>_<6 hex>`: sorts by start time and is a valid run id everywhere."""
    return f"local_{(now or datetime.now(UTC)):%Y%m%dT%H%M%S}_{secrets.token_hex(3)}"


# --- turning steps.py into command lines -----------------------------------------------------------------


def destination_folder(settings: Settings) -> Path:
    return settings.local_work_dir / "datastore"


def resolve_argument(
    argument: Any, settings: Settings, parameters: Mapping[str, str], run_dir: Path, fingerprint: str
) -> str:
    """One steps.py argument as the local backend passes it (local_contract.md)."""
    if isinstance(argument, str):
        return argument
    if isinstance(argument, Param):
        return str(parameters.get(argument.name, settings.parameter_defaults[argument.name]))
    if isinstance(argument, BuildValue):
        values = {
            "dataset": str(settings.local_dataset_path),
            "model": str(model_folder(settings)),
            "destination": str(destination_folder(settings)),
            "fingerprint": fingerprint,
        }
        if argument.name not in values:
            raise LocalRunError(f"steps.py uses a setting the local backend does not know: {argument.name!r}")
        return values[argument.name]
    if isinstance(argument, DataIn | DataOut):
        return str(run_dir / "data" / argument.name)
    raise LocalRunError(f"steps.py holds an argument the local backend cannot resolve: {argument!r}")


def step_command(
    step: Step, settings: Settings, parameters: Mapping[str, str], run_dir: Path, fingerprint: str
) -> list[str]:
    """The script and arguments of `step` (the interpreter is added when it runs)."""
    arguments = [resolve_argument(a, settings, parameters, run_dir, fingerprint) for a in step.arguments]
    return [str(STEP_SCRIPTS_DIR / step.script), *arguments]


def _settings_to_record(settings: Settings) -> dict[str, Any]:
    return {
        f.name: str(value) if isinstance(value := getattr(settings, f.name), Path) else value
        for f in dataclasses.fields(settings)
    }


def _settings_from_record(raw: Mapping[str, Any]) -> Settings:
    known = {f.name for f in dataclasses.fields(Settings)}
    values = {k: v for k, v in raw.items() if k in known}
    for name in ("local_dataset_path", "local_work_dir"):
        if name in values:
            values[name] = Path(values[name])
    return Settings(**values)


# --- run records -----------------------------------------------------------------------------------------


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


def _proc_stat(pid: int, field: int) -> str | None:
    """One field of /proc/<pid>/stat (Linux), counted after the command name; None if unreadable."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[field]
    except (OSError, IndexError):
        return None


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid`, so a recycled pid is not taken for the runner."""
    return _proc_stat(pid, 19)


def _write_pid(run_dir: Path, pid: int) -> None:
    text = json.dumps({"pid": pid, "start": _process_start(pid)})
    fd, temp = tempfile.mkstemp(prefix=".pid.", dir=run_dir)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(temp, run_dir / PID_FILE)


# --- executing a run (in the runner: a detached process, or the CLI's own) --------------------------------


def execute_run(run_dir: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Run the steps of the record in `run_dir` in order, updating the record as they go; return it."""
    say = progress or (lambda _line: None)
    record = read_record(run_dir)
    settings = _settings_from_record(record["settings"])
    current: subprocess.Popen | None = None
    step: dict[str, Any] | None = None
    try:
        if (run_dir / CANCEL_FILE).exists():
            raise _Canceled
        record.update(status="running", started_at=utc_now())
        write_record(run_dir, record)
        say(f"run {record['id']}: running")
        try:
            if not registered_versions(model_folder(settings)):
                say(
                    f"run {record['id']}: no {settings.model_name} model yet, training the baseline model once"
                )
            ensure_model(settings)
        except Exception as error:
            _finish(run_dir, record, "failed", f"the model could not be prepared: {error}")
            return record
        for step in record["steps"]:
            if (run_dir / CANCEL_FILE).exists():
                raise _Canceled
            step.update(status="running", started_at=utc_now())
            write_record(run_dir, record)
            say(f"  {step['name']:<18} running")
            started = time.monotonic()
            current = _start_step(run_dir, record["id"], step)
            code = _wait_step(current, run_dir)
            current = None
            step.update(ended_at=utc_now(), exit_code=code, seconds=round(time.monotonic() - started, 3))
            if code != 0:
                step.update(status="failed", error=_step_error(run_dir / step["log"], code))
                say(f"  {step['name']:<18} failed: {step['error']}")
                _finish(run_dir, record, "failed", f"step {step['name']} failed: {step['error']}")
                return record
            step["status"] = "completed"
            write_record(run_dir, record)
            say(f"  {step['name']:<18} completed in {step['seconds']:.1f} s")
        record["output_path"] = str(destination_folder(settings) / PREDICTIONS_FILE)
        _finish(run_dir, record, "completed", None)
        return record
    except (_Canceled, KeyboardInterrupt) as stop:
        _stop_step(current, step, status="canceled")
        interrupted = isinstance(stop, KeyboardInterrupt)
        _finish(run_dir, record, "canceled", "interrupted" if interrupted else "canceled on request")
        say(f"run {record['id']}: canceled")
        if interrupted:
            raise
        return record
    except Exception as error:  # the runner itself broke (disk full, a step that cannot start): say so
        _stop_step(current, step, status="failed", error=str(error))
        _finish(run_dir, record, "failed", f"the local runner failed: {error}")
        return record


def _stop_step(
    process: subprocess.Popen | None, step: dict[str, Any] | None, status: str, **details: Any
) -> None:
    """End the step that was running when the run stopped: its process, and its entry in the record."""
    if process is not None and process.poll() is None:
        process.terminate()
        process.wait()
    if step is not None and step["status"] == "running":
        step.update(status=status, ended_at=utc_now(), **details)


def _start_step(run_dir: Path, run_id: str, step: dict[str, Any]) -> subprocess.Popen:
    env = dict(os.environ)
    env["PIPELINE_RUN_ID"] = run_id
    env["PYTHONUNBUFFERED"] = "1"
    # The steps run as they would on Azure ML: from their own folder, without pipeline_def on the path.
    paths = [
        p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != PROJECT_ROOT
    ]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    log_path = run_dir / step["log"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        try:
            return subprocess.Popen(
                [sys.executable, *step["command"]],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=STEP_SCRIPTS_DIR,
                env=env,
            )
        except OSError as error:
            raise LocalRunError(f"step {step['name']} could not be started: {error}") from error


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


def _finish(run_dir: Path, record: dict[str, Any], status: str, error: str | None) -> None:
    for step in record["steps"]:
        if step["status"] == "queued":
            step["status"] = "canceled"  # never started; Azure ML shows such nodes as canceled too
            step["note"] = "not run: an earlier step failed" if status == "failed" else "not run"
    record.update(status=status, error=error, ended_at=utc_now())
    write_record(run_dir, record)


# --- the backend -----------------------------------------------------------------------------------------


class LocalBackend:
    """The Backend of service.py for PIPELINE_BACKEND=local."""

    def __init__(self, settings: Settings):
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
                _finish(run_dir, record, "failed", f"the local runner could not be started: {error}")
                raise LocalRunError(f"the local runner could not be started: {error}") from error
        self._children[process.pid] = process
        _write_pid(run_dir, process.pid)
        return self._info(run_dir, record)

    def run(
        self,
        target: Target,
        parameters: dict[str, str],
        tags: dict[str, str],
        progress: Progress | None = None,
    ) -> RunInfo:
        """Run the pipeline in this process and return the ended run (the CLI's `run`)."""
        run_dir, _ = self._create_run(parameters, tags, mode="foreground")
        _write_pid(run_dir, os.getpid())
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
        records.sort(key=lambda item: (item[1].get("created_at") or "", item[1]["id"]), reverse=True)
        return [self._info(run_dir, record) for run_dir, record in records[:limit]]

    def find_active_run(self) -> RunInfo | None:
        active = [run for run in self.list_runs(limit=10_000) if not run.terminal]
        return active[0] if active else None

    def cancel(self, run_id: str) -> None:
        """Ask the run to stop: a marker the runner watches for, and SIGTERM to a detached runner's process
        group (runner and current step). The runner records the run as canceled."""
        run_dir = self._run_dir(run_id)
        record = self._load(run_dir)
        if record["status"] in TERMINAL:
            return
        (run_dir / CANCEL_FILE).write_text(utc_now())
        pid = self._live_runner_pid(run_dir)
        if record.get("mode") == "detached" and pid is not None:
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
    ) -> tuple[Path, dict[str, Any]]:
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
        record = {
            "id": run_id,
            "status": "queued",
            "mode": mode,
            "parameters": {**self.settings.parameter_defaults, **parameters},
            "tags": dict(tags),
            "fingerprint": fingerprint,
            "settings": _settings_to_record(self.settings),
            "steps": [
                {
                    "name": step.name,
                    "command": step_command(step, self.settings, parameters, run_dir, fingerprint),
                    "status": "queued",
                    "log": f"{LOGS_DIR}/{step.name}.log",
                    "started_at": None,
                    "ended_at": None,
                    "exit_code": None,
                    "error": None,
                }
                for step in STEPS
            ],
            "error": None,
            "output_path": None,
            "created_at": utc_now(),
            "started_at": None,
            "ended_at": None,
        }
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

    def _load(self, run_dir: Path) -> dict[str, Any]:
        """The record, with a dead runner's unfinished run marked as ended."""
        try:
            record = read_record(run_dir)
        except FileNotFoundError as error:
            raise RunNotFound(run_dir.name) from error
        if record["status"] in TERMINAL:
            self._reap_runner(run_dir)
            return record
        if self._runner_alive(run_dir, record):
            return record
        # Read again: the runner may have written its last record just before it exited.
        record = read_record(run_dir)
        if record["status"] not in TERMINAL:
            if (run_dir / CANCEL_FILE).exists():
                _finish(run_dir, record, "canceled", "canceled on request")
            else:
                _finish(
                    run_dir,
                    record,
                    "failed",
                    f"the local runner process ended before the run did (see {run_dir / LOGS_DIR})",
                )
        return record

    def _reap_runner(self, run_dir: Path) -> None:
        """Wait for our own runner of an ended run to exit (it writes the last record just before), so it
        leaves no zombie behind."""
        try:
            pid = int(json.loads((run_dir / PID_FILE).read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return
        process = self._children.pop(pid, None)
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=RUNNER_EXIT_SECONDS)

    def _runner_alive(self, run_dir: Path, record: Mapping[str, Any]) -> bool:
        if self._live_runner_pid(run_dir) is not None:
            return True
        if not (run_dir / PID_FILE).exists():
            # Created, runner not started yet (or it never will be: then it is dead after the grace time).
            created = datetime.fromisoformat(record["created_at"].replace("Z", "+00:00"))
            return (datetime.now(UTC) - created).total_seconds() < START_GRACE_SECONDS
        return False

    def _live_runner_pid(self, run_dir: Path) -> int | None:
        try:
            info = json.loads((run_dir / PID_FILE).read_text())
        except (OSError, ValueError):
            return None
        pid = int(info["pid"])
        if pid == os.getpid():
            return pid
        child = self._children.get(pid)
        if child is not None:  # our own child: poll() also reaps it, so it does not linger as a zombie
            if child.poll() is None:
                return pid
            del self._children[pid]
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        start = _process_start(pid)
        if start is not None and info.get("start") is not None and start != info["start"]:
            return None  # the pid now belongs to another process
        if _is_zombie(pid):
            return None
        return pid

    def _info(self, run_dir: Path, record: Mapping[str, Any]) -> RunInfo:
        status = record["status"]
        if status not in TERMINAL and (run_dir / CANCEL_FILE).exists():
            status = "canceling"
        tags = record.get("tags") or {}
        steps = [
            StepStatus(step["name"], step["status"], _first_line(step.get("error")))
            for step in record["steps"]
        ]
        failed = next((step for step in steps if step.status == "failed"), None)
        return RunInfo(
            run_id=record["id"],
            status=status,
            aml_status=None,
            created_at=record.get("created_at"),
            ended_at=record.get("ended_at"),
            steps=steps,
            portal_url=None,
            error=record.get("error"),
            trigger=tags.get("trigger") or None,
            failed_step=failed.name if status == "failed" and failed is not None else None,
            predictions_path=(record.get("output_path") or None) if status == "completed" else None,
        )


def _first_line(text: Any) -> str | None:
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    return lines[0][:300] if lines else None


def _is_zombie(pid: int) -> bool:
    return _proc_stat(pid, 0) == "Z"


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
    _write_pid(run_dir, os.getpid())
    record = execute_run(run_dir, progress=lambda line: print(line, flush=True))
    return 0 if record["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
