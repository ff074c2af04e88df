"""What one timer invocation does around Service.tick: the schedule the binding is declared with, the occurrence
a tick is for, the log lines, and the failure that ends the invocation."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pipeline_def.cron import is_valid_schedule, parse_schedule
from pipeline_def.errors import AzureMLError, PipelineError
from pipeline_def.service import get_service
from pipeline_def.settings import DEFAULT_SCHEDULE

if TYPE_CHECKING:
    from pipeline_def.backend import TickOutcome
    from pipeline_def.runs import RunInfo

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

# Every report of the previous scheduled run starts with this text: an alert queries the prefix.
PREVIOUS_RUN_PREFIX = "previous scheduled run "


def timer_schedule(environ: Mapping[str, str] | None = None) -> str:
    """The schedule the timer binding is declared with: PIPELINE_SCHEDULE when it is a valid NCRONTAB
    expression, the product default otherwise. A bad value is not hidden: the settings reject it, so every
    tick (at the default times) fails naming PIPELINE_SCHEDULE, and every route answers the same error."""
    env = os.environ if environ is None else environ
    value = (env.get("PIPELINE_SCHEDULE") or "").strip()
    if value and is_valid_schedule(value):
        return " ".join(value.split())
    if value:
        log.warning(
            "PIPELINE_SCHEDULE is not a six-field NCRONTAB expression; the timer uses %s", DEFAULT_SCHEDULE
        )
    return DEFAULT_SCHEDULE


def scheduled_for(expression: str, clock: Clock | None = None) -> str | None:
    """The occurrence a tick happening now is for: the latest time at or before now the schedule fires, as
    ISO 8601 UTC (`2026-01-31T13:30:00Z`). A past-due tick gets the occurrence it missed."""
    now = (clock or _utcnow)()
    occurrence = parse_schedule(expression).latest_occurrence(now)
    return occurrence.strftime("%Y-%m-%dT%H:%M:%SZ") if occurrence else None


def run_tick(past_due: bool = False, clock: Clock | None = None) -> TickOutcome:
    """One timer invocation: build the service, run Service.tick for the occurrence this tick is for, and log
    what happened. A failure is logged with what failed and why (and the Azure ML correlation id when there
    is one) and raised again, so the invocation ends as failed."""
    try:
        service = get_service()
        occurrence = scheduled_for(service.settings.schedule, clock)
        if past_due:
            log.warning("timer is past due: running once now for the missed occurrence %s", occurrence)
        outcome = service.tick(scheduled_for=occurrence, past_due=past_due, on_previous=report_previous_run)
    except PipelineError as error:
        log.error("timer tick failed: %s", describe_error(error))
        raise
    except Exception:
        log.exception("timer tick failed with an unexpected error")
        raise
    publish = outcome.publish
    if publish.published:
        log.info("published pipeline version %s as the endpoint default", publish.target.version)
    else:
        log.info("pipeline is current (version %s): nothing published", publish.target.version)
    if outcome.action == "skipped" and outcome.active_run is not None:
        log.warning(
            "tick for %s skipped: run %s is still active (%s) and PIPELINE_OVERLAP is skip",
            occurrence,
            outcome.active_run.run_id,
            outcome.active_run.status,
        )
    elif outcome.action == "joined" and outcome.run is not None:
        duplicate = outcome.canceled_duplicate
        log.warning(
            "tick for %s joined run %s started by another instance%s",
            occurrence,
            outcome.run.run_id,
            f"; canceled duplicate {duplicate.run_id}" if duplicate is not None else "",
        )
    elif outcome.run is not None:
        log.info("tick for %s submitted run %s (%s)", occurrence, outcome.run.run_id, outcome.run.status)
    return outcome


def report_previous_run(run: RunInfo | None) -> None:
    """Log how the previous scheduled run (the newest run tagged trigger=timer before this tick's) ended:
    ERROR when it failed or was canceled (with the failing step and its error), INFO when it completed,
    WARNING while it is still going. Every line starts with PREVIOUS_RUN_PREFIX."""
    if run is None:
        log.info("%sof this endpoint: none found", PREVIOUS_RUN_PREFIX)
        return
    if run.status in ("failed", "canceled"):
        failed = next((step for step in run.steps or [] if step.status == run.status), None)
        where = f" at step {failed.name}" if failed is not None else ""
        why = (failed.error if failed is not None and failed.error else None) or run.error
        log.error(
            "%s%s ended %s%s%s", PREVIOUS_RUN_PREFIX, run.run_id, run.status, where, f": {why}" if why else ""
        )
    elif run.status == "completed":
        log.info("%s%s ended completed at %s", PREVIOUS_RUN_PREFIX, run.run_id, run.ended_at or "?")
    else:
        log.warning("%s%s is still %s", PREVIOUS_RUN_PREFIX, run.run_id, run.status)


def describe_error(error: PipelineError) -> str:
    """One line for the log: the error's code and message, plus the Azure ML status and correlation id."""
    text = f"{error.code}: {error.message}"
    if isinstance(error, AzureMLError):
        if error.status is not None:
            text += f" (Azure ML answered {error.status}"
            text += f", code {error.aml_code})" if error.aml_code else ")"
        if error.correlation_id:
            text += f" [correlation id {error.correlation_id}]"
    return text


def _utcnow() -> datetime:
    return datetime.now(UTC)
