"""The failed-run alert's KQL query (infra/failed-scheduled-run.kql) as a predicate over Application Insights
trace records, so tests can hold the query against the log lines the timer really writes."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

ALERT_QUERY_FILE = Path(__file__).resolve().parent.parent / "infra" / "failed-scheduled-run.kql"

# App Insights severityLevel of a Python log record forwarded by the Functions host.
SEVERITY = {logging.DEBUG: 0, logging.INFO: 1, logging.WARNING: 2, logging.ERROR: 3, logging.CRITICAL: 4}


def kql_filter(query: str) -> Callable[[dict[str, Any]], bool]:
    """The alert query as a predicate over App Insights trace records. It knows only the clauses the query uses
    today: a clause it does not know fails the test, so a changed query gets looked at."""
    lines = [line.strip() for line in query.strip().splitlines()]
    assert lines[0] == "traces", "the alert reads App Insights traces"
    predicates: list[Callable[[dict[str, Any]], bool]] = []
    for line in lines[1:]:
        assert line.startswith("| "), line
        clause = line[2:]
        if match := re.fullmatch(r'where (\w+) startswith "([^"]*)"', clause):
            column, prefix = match[1], match[2]
            predicates.append(lambda r, c=column, p=prefix: str(r[c]).lower().startswith(p.lower()))
        elif match := re.fullmatch(r"where (\w+) >= (\d+)", clause):
            column, floor = match[1], int(match[2])
            predicates.append(lambda r, c=column, f=floor: r[c] >= f)
        elif not clause.startswith("project "):
            raise AssertionError(f"this test does not know the KQL clause {line!r}")
    return lambda record: all(predicate(record) for predicate in predicates)


def trace(record: logging.LogRecord) -> dict[str, Any]:
    """The trace row the Functions host makes of a Python log record."""
    return {"message": record.getMessage(), "severityLevel": SEVERITY[record.levelno]}


def alert_fires_on(record: logging.LogRecord) -> bool:
    return kql_filter(ALERT_QUERY_FILE.read_text())(trace(record))
