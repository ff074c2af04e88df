"""Six-field NCRONTAB expressions (second minute hour day month day-of-week), read the way the Functions
host reads them, and the latest time at or before a moment that one fires (UTC)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

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


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
