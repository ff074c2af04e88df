"""What a run looks like to callers, whatever the backend: the status words of docs/product.md and the mapping
from every status spelling Azure ML uses (pipelines service, run history, graph nodes)."""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline_def.azureml.history_run import HistoryRun
from pipeline_def.errors import ServiceError

STATUSES = ("queued", "running", "canceling", "completed", "failed", "canceled")
TERMINAL = frozenset({"completed", "failed", "canceled"})

# How the platforms wrap the message of a step that failed (step_scripts: one `error: <message>` line on stderr,
# then StepFailed(<message>)). Azure ML v1: azureml-core's RunStatusContext records the exception leaving the
# script through RunHistoryFacade._error_details_to_dictionary,
# "User program failed with {type(exception).__name__}: {str(exception)}".
_V1_STEP_FAILED = re.compile(r"User program failed with StepFailed: (?P<message>.+)", re.DOTALL)
# Azure ML v2's common runtime: "Execution failed. User process '<program>' exited with status code <n>. Please
# check log file 'user_logs/std_log.txt' for error details. Error: <the end of the process's stderr>".
_V2_USER_PROCESS_FAILED = re.compile(
    r"Execution failed\. User process '[^']*' exited with status code -?\d+\..*?Error: (?P<stderr>.*)",
    re.DOTALL,
)
_STEP_ERROR_LINE = "error: "
# A parallel step (v1 ParallelRunStep, v2 parallel node) that fails leaves Azure ML's parallel-run driver with
# exit code 42 (`SystemExit: 42` in driver/amlbi_main.py): run history then says only that, on v1 azureml-core's
# "User program failed with SystemExit: 42", on v2 "... exited with status code 42 ...". The entry script's own
# error is in the step run's logs (docs/parallel-run-notes.md section 3), which the backends then read.
_PARALLEL_EXIT = re.compile(r"SystemExit: 42\b|exited with status code 42\b")
# The step run's artifacts that say why a parallel step failed, in the order they are read: the entry script's
# errors (tracebacks), then the driver's summary ("Job failed: <reason>").
PARALLEL_ERROR_LOGS = ("logs/user/error.txt", "logs/job_result.txt")
_OWN_ERRORS = re.compile(r"^(?:[\w.]+\.)?(?:StepError|StepFailed): ")
_CHAINED = ("During handling of the above exception", "The above exception was the direct cause")

# A run id is 1 to 300 letters, digits, '-' and '_': nothing that could change the URL it is put into.
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,300}")

_AML_STATUS = {
    # pipelines service (StatusCode), with its legacy integer codes 0..4
    "notstarted": "queued",
    "running": "running",
    "failed": "failed",
    "finished": "completed",
    "canceled": "canceled",
    "0": "queued",
    "1": "running",
    "2": "failed",
    "3": "completed",
    "4": "canceled",
    # run history
    "queued": "queued",
    "preparing": "queued",
    "provisioning": "queued",
    "starting": "queued",
    "unapproved": "queued",
    "finalizing": "running",
    "notresponding": "running",
    "pausing": "running",
    "paused": "running",
    "cancelrequested": "canceling",
    "completed": "completed",
    "cancelled": "canceled",
    # graph node statuses
    "partiallyexecuted": "failed",
    "bypassed": "completed",
}


def is_valid_run_id(run_id: str) -> bool:
    return RUN_ID_PATTERN.fullmatch(run_id) is not None


def readable_step_error(message: str) -> str:
    """A failed step's error in the step's own words, taken out of the platform's wrapping: on Azure ML v1
    `User program failed with StepFailed: <message>`, on v2 the last `error: <message>` line of the stderr the
    runtime quotes. Any other message (another exception type, a step that died without its error line, a
    message of the service's own) is returned as it is."""
    text = message.strip()
    v1 = _V1_STEP_FAILED.match(text)
    if v1:
        return v1["message"].strip()
    v2 = _V2_USER_PROCESS_FAILED.match(text)
    if v2:
        said = [
            line.strip()[len(_STEP_ERROR_LINE) :].strip()
            for line in v2["stderr"].splitlines()
            if line.strip().startswith(_STEP_ERROR_LINE)
        ]
        if said and said[-1]:
            return said[-1]
    return message


def is_parallel_exit(message: str | None) -> bool:
    """Whether a failed step's run-history error is only the parallel-run driver's exit code 42."""
    return bool(message) and _PARALLEL_EXIT.search(str(message)) is not None


def parallel_step_error(path: str, text: str) -> str | None:
    """The error a parallel step's log says: from logs/user/error.txt the final line of its first traceback
    (`Type: message`; the steps' own StepError/StepFailed without the type), from logs/job_result.txt the
    driver's reason (`Job failed: <reason>`)."""
    lines = text.splitlines()
    if path.endswith("job_result.txt"):
        for line in lines:
            if line.startswith("Job failed"):
                reason = line.split(":", 1)[1].strip() if ":" in line else line.strip()
                return reason or None
        return None
    # each traceback: its frames (indented), then its exception's first line; one that another was raised from
    # is followed by a chaining line before the next traceback
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    for number, start in enumerate(starts):
        end = starts[number + 1] if number + 1 < len(starts) else len(lines)
        block = lines[start + 1 : end]
        error = next((line for line in block if line.strip() and not line[0].isspace()), None)
        if error is None or any(line.startswith(_CHAINED) for line in block):
            continue
        return _OWN_ERRORS.sub("", error.strip())
    return None


def read_parallel_error(read: Callable[[str], str | None]) -> str | None:
    """The error of a failed parallel step from its logs, `read(path)` giving a step-run artifact's text (None
    when it has none): the first of PARALLEL_ERROR_LOGS that says one, first line, at most 300 characters."""
    for path in PARALLEL_ERROR_LOGS:
        text = read(path)
        said = parallel_step_error(path, text) if text else None
        if said:
            return said.splitlines()[0][:300]
    return None


def normalize_status(aml_status: str | int | None) -> str:
    """Map any Azure ML status spelling to one of STATUSES. A missing status means not started yet; a word
    this code has never seen is taken as still running, so nothing treats an unknown run as finished."""
    if aml_status is None or aml_status == "":
        return "queued"
    return _AML_STATUS.get(str(aml_status).strip().lower(), "running")


@dataclass(frozen=True)
class StepStatus:
    """One step of a run; `error` is the first line of what a failed step said."""

    name: str
    status: str
    error: str | None = None

    def to_dict(self) -> dict[str, str]:
        body = {"name": self.name, "status": self.status}
        if self.error:
            body["error"] = self.error
        return body


# The tags save_predictions gives its own step run (step_scripts/batchpred_steps/run_summary.py), and the tag the
# app gives a run started with accept_drift=true.
SUMMARY_TAG_PREFIX = "batchpred_"
ACCEPT_DRIFT_TAG = "batchpred_accept_drift"


@dataclass(frozen=True)
class GateVerdict:
    """The quality gate's verdict on a run: `verdict` passed, passed-drift-accepted or failed; the report's
    datastore path; the check that failed first, when one did."""

    verdict: str
    report_path: str | None = None
    failed_check: str | None = None
    report_url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"verdict": self.verdict, "report_path": self.report_path}
        if self.failed_check:
            body["failed_check"] = self.failed_check
        if self.report_url:
            body["report_url"] = self.report_url
        return body


@dataclass(frozen=True)
class Predictions:
    """Where a finished run's predictions went: `rows`, the history copy's datastore path, the latest's when the
    run replaced it, a `url` a person can open (studio's datastore browser on Azure ML, a file URL locally)
    and the quality gate's verdict."""

    rows: int | None
    history_path: str | None
    latest_path: str | None = None
    url: str | None = None
    gate: GateVerdict | None = None

    @property
    def promoted(self) -> bool:
        return self.latest_path is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "history_path": self.history_path,
            "latest_path": self.latest_path,
            "url": self.url,
            "gate": None if self.gate is None else self.gate.to_dict(),
        }


def predictions_from_tags(tags: Any) -> Predictions | None:
    """The summary save_predictions recorded as `batchpred_*` tags (of its step run, or a local run's summary
    file); None when there is none (a run that never reached the save, or saved before the gate existed)."""
    if not isinstance(tags, dict):
        return None

    def get(key: str) -> str | None:
        value = tags.get(f"{SUMMARY_TAG_PREFIX}{key}")
        return str(value) if value else None

    history, verdict = get("history_path"), get("gate")
    if history is None and verdict is None:
        return None
    rows = get("rows")
    return Predictions(
        rows=int(rows) if rows is not None and rows.isdigit() else None,
        history_path=history,
        latest_path=get("latest_path"),
        gate=None if verdict is None else GateVerdict(verdict, get("gate_report"), get("gate_failed_check")),
    )


def predictions_of_steps(children: Sequence[HistoryRun]) -> Predictions | None:
    """The summary among a run's step runs: the step that recorded one."""
    for child in children:
        found = predictions_from_tags(child.tags)
        if found is not None:
            return found
    return None


# The optional facts of a run, in the order its JSON gives them, each only when known.
OPTIONAL_FIELDS = ("predictions_path", "trigger", "submission_id", "aml_history_status", "failed_step")


@dataclass(frozen=True)
class RunInfo:
    """One run as the HTTP API and the CLI report it. Times are ISO 8601 UTC strings or None.

    Optional facts: `trigger` (the run's trigger tag), `submission_id` (the tag that guards an Azure ML submit
    against duplicates), `aml_history_status` (run history's status word, when it was read), `failed_step`
    (the step that failed), `predictions_path` (where a completed local run wrote its predictions),
    `predictions` (where a finished run's predictions went and the quality gate's verdict, on every backend)."""

    run_id: str
    status: str
    aml_status: str | None
    created_at: str | None = None
    ended_at: str | None = None
    steps: list[StepStatus] | None = None
    portal_url: str | None = None
    error: str | None = None
    trigger: str | None = None
    submission_id: str | None = None
    aml_history_status: str | None = None
    failed_step: str | None = None
    predictions_path: str | None = None
    predictions: Predictions | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "run_id": self.run_id,
            "status": self.status,
            "aml_status": self.aml_status,
            "terminal": self.terminal,
            "created_at": self.created_at,
            "ended_at": self.ended_at,
            "portal_url": self.portal_url,
        }
        if self.steps is not None:
            body["steps"] = [step.to_dict() for step in self.steps]
        if self.error:
            body["error"] = self.error
        for name in OPTIONAL_FIELDS:
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        if self.predictions is not None:
            body["predictions"] = self.predictions.to_dict()
        return body


def history_error(message: str | None) -> str | None:
    """A run-history error's message (HistoryRun.error) in the step's own words when the platform wrapped them
    (`readable_step_error`), first line only, at most 300 characters. Both Azure ML backends read run history,
    so both read errors here."""
    if not message:
        return None
    lines = [line.strip() for line in readable_step_error(message).splitlines() if line.strip()]
    return lines[0][:300] if lines else None


def with_urls(found: Predictions, url_for: Callable[[str], str]) -> Predictions:
    """`found` with the URLs a person opens, `url_for` a datastore path: the latest folder when the run
    replaced it, else its history copy; and the gate's report."""
    where = found.latest_path or found.history_path
    gate = found.gate
    if gate is not None and gate.report_path:
        gate = dataclasses.replace(gate, report_url=url_for(gate.report_path))
    return dataclasses.replace(found, url=url_for(where) if where else None, gate=gate)


def with_predictions(run: RunInfo, children: Sequence[HistoryRun], url_for: Callable[[str], str]) -> RunInfo:
    """`run` with the summary its save step recorded (predictions_of_steps), with its URLs (`with_urls`)."""
    found = predictions_of_steps(children)
    return run if found is None else dataclasses.replace(run, predictions=with_urls(found, url_for))


def history_run_info(
    dto: HistoryRun, portal_url: Callable[[str], str], submission_tag: str | None = None
) -> RunInfo:
    """A run as run history's RunDto (the same on Azure ML v1 and v2) describes it: the answer of the run
    query. `portal_url(run_id)` is its studio link; `submission_tag`, when given, is the tag read as its
    submission id. A RunDto without a runId is Azure ML's fault (ServiceError)."""
    if not dto.run_id:
        raise ServiceError("Azure ML answered a run query with a run without a runId")
    normalized = normalize_status(dto.status)
    return RunInfo(
        run_id=dto.run_id,
        status=normalized,
        aml_status=dto.status,
        created_at=dto.created_utc,
        ended_at=dto.end_time_utc,
        portal_url=portal_url(dto.run_id),
        error=history_error(dto.error) if normalized == "failed" else None,
        trigger=run_tag(dto.tags, "trigger"),
        submission_id=run_tag(dto.tags, submission_tag) if submission_tag else None,
    )


def with_failed_step(run: RunInfo) -> RunInfo:
    """A failed run whose steps are known says which step failed and why (`step predict failed: <its
    error>`) in `error`, and names the step in `failed_step`."""
    if run.status != "failed" or not run.steps:
        return run
    failed = next((step for step in run.steps if step.status == "failed"), None)
    if failed is None:
        return run
    said = f"step {failed.name} failed" + (f": {failed.error}" if failed.error else "")
    return dataclasses.replace(run, error=said, failed_step=failed.name)


def step_statuses(
    children: Sequence[HistoryRun], read_log: Callable[[str, str], str | None], order: Sequence[str]
) -> list[StepStatus]:
    """The steps of a pipeline run from its run-history children (step runs, the same on Azure ML v1 and v2),
    in `order` (unknown names last): each named by its display name (else its node id or run id),
    with a failed step's error in its own words; a failed parallel step whose run history holds only the
    driver's exit 42 gets its error from its logs, `read_log(step_run_id, path)`."""
    found = []
    for child in children:
        name = child.display_name or child.name or child.tags.get("azureml.nodeid") or child.run_id
        status = normalize_status(child.status)
        error = history_error(child.error) if status == "failed" else None
        if is_parallel_exit(error) and child.run_id:
            error = read_parallel_error(functools.partial(read_log, child.run_id)) or error
        found.append(StepStatus(str(name), status, error))
    rank = {name: index for index, name in enumerate(order)}
    return sorted(found, key=lambda s: (rank.get(s.name, len(rank)), s.name))


def with_steps(
    run: RunInfo,
    children: Sequence[HistoryRun],
    read_log: Callable[[str, str], str | None],
    order: Sequence[str],
) -> RunInfo:
    """`run` with its steps read from its run-history children (step_statuses), and the failing step's error
    when it failed (with_failed_step)."""
    return with_failed_step(dataclasses.replace(run, steps=step_statuses(children, read_log, order)))


def run_tag(tags: Any, name: str) -> str | None:
    """One tag of a run (its trigger, the submission id...), when it has it."""
    value = tags.get(name) if isinstance(tags, dict) else None
    return str(value) if value else None
