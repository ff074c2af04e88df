"""What every backend offers the service (the Backend protocol) and what the service's calls report back
(PublishOutcome, TickOutcome). Backends and the service both import this; it imports neither."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pipeline_def.runs import RunInfo


@dataclass(frozen=True)
class PublishOutcome:
    """What ensure_published found or did. `published` is True when this call published a new pipeline;
    `previous_pipeline_id` is the pipeline the endpoint's default superseded, if any."""

    published: bool
    pipeline_id: str | None = None
    version: str | None = None
    endpoint_id: str | None = None
    previous_pipeline_id: str | None = None


@dataclass(frozen=True)
class TickOutcome:
    """What one timer tick did: `submitted` (with the run) or `skipped` (with the run still active)."""

    action: str
    publish: PublishOutcome
    run: RunInfo | None = None
    active_run: RunInfo | None = None


class Backend(Protocol):
    def ensure_published(self) -> PublishOutcome: ...

    def find_active_run(self) -> RunInfo | None:
        """A run of the current pipeline that has not ended yet, if any (for the `skip` overlap policy)."""
        ...

    def submit(self, parameters: dict[str, str], tags: dict[str, str]) -> RunInfo: ...

    def get_run(self, run_id: str) -> RunInfo:
        """Raises RunNotFound for an unknown id."""
        ...

    def list_runs(self, limit: int) -> list[RunInfo]:
        """The most recent runs, newest first."""
        ...

    def cancel(self, run_id: str) -> None:
        """Raises RunNotFound for an unknown id."""
        ...


__all__ = ["Backend", "PublishOutcome", "TickOutcome"]
