"""The timer's schedule (six-field NCRONTAB, UTC, read the way the Functions host reads it) and what one timer
tick does around Service.tick: the occurrence it is for, the log lines, the failure that ends the invocation."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pipeline_def.errors import AzureMLError, PipelineError
from pipeline_def.settings import DEFAULT_SCHEDULE

if TYPE_CHECKING:
    from pipeline_def.service import TickOutcome

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# (name, low, high, names) of the six NCRONTAB fields: second minute hour day month day-of-week
_FIELDS = (
    ("second", 0, 59, ()),
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 6, _DAYS),
)
# How far back `latest_occurrence` looks: long enough for a 29 February on a given weekday.
_SEARCH_DAYS = 366 * 40


@dataclass(frozen=True)
class CronSchedule:
    """A parsed six-field NCRONTAB expression. As in NCrontab (what the Functions host uses), day-of-month and
    day-of-week must both match when both are restricted."""

    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]

    def matches_day(self, day: datetime) -> bool:
        # Python counts Monday as 0; NCRONTAB counts Sunday as 0.
        return day.month in self.months and day.day in self.days and (day.weekday() + 1) % 7 in self.weekdays

    def latest_occurrence(self, now: datetime) -> datetime | None:
        """The latest time at or before `now` (whole seconds, UTC) the schedule fires, or None if it never
        fired in the search window (for example 30 February)."""
        now = _as_utc(now).replace(microsecond=0)
        times = sorted(
            ((h, m, s) for h in self.hours for m in self.minutes for s in self.seconds), reverse=True
        )
        today = now.replace(hour=0, minute=0, second=0)
        for back in range(_SEARCH_DAYS):
            day = today - timedelta(days=back)
            if not self.matches_day(day):
                continue
            for hour, minute, second in times:
                candidate = day.replace(hour=hour, minute=minute, second=second)
                if candidate <= now:
                    return candidate
        return None


def parse_schedule(expression: str) -> CronSchedule:
    """Parse a six-field NCRONTAB expression; ValueError (naming the field) if it is not one."""
    fields = expression.split()
    if len(fields) != 6:
        raise ValueError("a schedule has six fields: second minute hour day month day-of-week")
    values = [
        _parse_field(text, name, low, high, names)
        for text, (name, low, high, names) in zip(fields, _FIELDS, strict=True)
    ]
    return CronSchedule(expression, *values)


def is_valid_schedule(expression: str) -> bool:
    try:
        parse_schedule(expression)
    except ValueError:
        return False
    return True


def _parse_field(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            if not step_text.isdigit() or int(step_text) < 1:
                raise ValueError(f"{name}: step {step_text!r} is not a positive whole number")
            step = int(step_text)
        if part == "*":
            first, last = low, high
        elif "-" in part:
            start_text, end_text = part.split("-", 1)
            first = _parse_value(start_text, name, low, high, names)
            last = _parse_value(end_text, name, low, high, names)
            if first > last:
                raise ValueError(f"{name}: range {part!r} runs backwards")
        else:
            first = _parse_value(part, name, low, high, names)
            # NCrontab reads "5/15" as "from 5 to the end, every 15".
            last = high if step > 1 else first
        values.update(range(first, last + 1, step))
    return frozenset(values)


def _parse_value(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> int:
    lowered = text.lower()
    if names and lowered in names:
        return names.index(lowered) + low
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"{name}: {text!r} is not a number from {low} to {high}")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{name}: {value} is outside {low}..{high}")
    return value


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
    from pipeline_def.service import get_service

    try:
        service = get_service()
        occurrence = scheduled_for(service.settings.schedule, clock)
        if past_due:
            log.warning("timer is past due: running once now for the missed occurrence %s", occurrence)
        outcome = service.tick(scheduled_for=occurrence, past_due=past_due)
    except PipelineError as error:
        log.error("timer tick failed: %s", describe_error(error))
        raise
    except Exception:
        log.exception("timer tick failed with an unexpected error")
        raise
    publish = outcome.publish
    if publish.published:
        log.info(
            "published pipeline %s (version %s) as the endpoint default", publish.pipeline_id, publish.version
        )
    else:
        log.info("pipeline is current (version %s): nothing published", publish.version)
    if outcome.action == "skipped" and outcome.active_run is not None:
        log.warning(
            "tick for %s skipped: run %s is still active (%s) and PIPELINE_OVERLAP is skip",
            occurrence,
            outcome.active_run.run_id,
            outcome.active_run.status,
        )
    elif outcome.run is not None:
        log.info("tick for %s submitted run %s (%s)", occurrence, outcome.run.run_id, outcome.run.status)
    return outcome


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


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
