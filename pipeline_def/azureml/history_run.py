"""A run as run history describes it (its camelCase RunDto, the same on Azure ML v1 and v2; docs/aml-v1-rest.md),
parsed once where run_history.py reads it, so the backends and runs.py read attributes, not JSON. It sits low in
the layers (below runs.py, which maps it to a RunInfo) and imports nothing of the app."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class HistoryRun:
    """The fields of a RunDto the app reads; each None (tags empty) when the answer lacks it, so a consumer
    decides what a missing field means, as it did with the JSON. `error` is the message of its ErrorResponse
    (the code when there is no message); `portal_url` is the RunDto's own studio link (v2 gives one)."""

    run_id: str | None = None
    status: str | None = None
    created_utc: str | None = None
    end_time_utc: str | None = None
    error: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    display_name: str | None = None
    name: str | None = None
    portal_url: str | None = None

    @classmethod
    def from_wire(cls, dto: Any) -> HistoryRun:
        """Parse a RunDto. Anything but a JSON object is a run with no fields, and a field of the wrong shape
        counts as missing: run history's own failures are told by the consumers (a run query's run without a
        runId is a ServiceError in runs.history_run_info). `status` keeps an empty word (it reads as queued);
        an empty time, name, link or tag value is None or left out, as every consumer read it."""
        if not isinstance(dto, dict):
            return cls()
        run_id, tags = dto.get("runId"), dto.get("tags")
        return cls(
            run_id=run_id if isinstance(run_id, str) else None,
            status=_text(dto.get("status")),
            created_utc=_text(dto.get("createdUtc")) or None,
            end_time_utc=_text(dto.get("endTimeUtc")) or None,
            error=_error_message(dto.get("error")),
            tags={str(k): str(v) for k, v in tags.items() if v} if isinstance(tags, dict) else {},
            display_name=_text(dto.get("displayName")) or None,
            name=_text(dto.get("name")) or None,
            portal_url=_text(dto.get("portalUrl")) or None,
        )


def _text(value: Any) -> str | None:
    """A scalar field as text (run history writes strings; a number is taken as its text); None when absent or
    not a scalar."""
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)


def _error_message(error: Any) -> str | None:
    """The message of run history's `error` (an ErrorResponse, {"error": {"code", "message"}}, or its inner
    object), its code when it has no message; None when there is neither."""
    if not isinstance(error, dict):
        return None
    nested = error.get("error")
    inner = nested if isinstance(nested, dict) else error
    message = inner.get("message") or inner.get("code")
    return str(message) if message else None


__all__ = ["HistoryRun"]
