"""What every backend offers the service (the Backend protocol) and what the service's calls report back
(PublishOutcome, LookBack, TickOutcome). Backends and the service both import this; it imports neither."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pipeline_def.runs import RunInfo


@dataclass(frozen=True)
class PublishOutcome:
    """What ensure_published (or published_target) found or did. `published` is True when this call
    published a new pipeline; `version` is the default pipeline's Version and `current` whether it equals
    the fingerprint; `previous_pipeline_id` is the pipeline the endpoint's default superseded, if any;
    `endpoint_pipeline_ids` the pipelines of the endpoint's newest versions, newest first (whose runs are
    the endpoint's runs)."""

    published: bool
    pipeline_id: str | None = None
    version: str | None = None
    endpoint_id: str | None = None
    previous_pipeline_id: str | None = None
    current: bool = True
    endpoint_pipeline_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class LookBack:
    """What a tick needs to know of earlier runs: a run that has not ended (only when asked for, for the
    `skip` overlap policy) and the newest scheduled run (tagged trigger=timer), with its steps and the
    failing step's error when it failed."""

    active: RunInfo | None = None
    previous_scheduled: RunInfo | None = None


@dataclass(frozen=True)
class TickOutcome:
    """What one timer tick did: `submitted` (with the run) or `skipped` (with the run still active), and
    the scheduled run before this tick's (`previous_scheduled`), if there was one."""

    action: str
    publish: PublishOutcome
    run: RunInfo | None = None
    active_run: RunInfo | None = None
    previous_scheduled: RunInfo | None = None


class Backend(Protocol):
    def ensure_published(self) -> PublishOutcome:
        """Publish unless current (the timer and the command line's `publish` only)."""
        ...

    def published_target(self) -> PublishOutcome:
        """What a submit would run now, stale or not, without publishing anything. Raises NotPublished when
        nothing is published."""
        ...

    def look_back(self, need_active: bool) -> LookBack:
        """The run still going (when `need_active`) and the newest scheduled run, read in a bounded amount
        whatever the history."""
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


__all__ = ["Backend", "LookBack", "PublishOutcome", "TickOutcome"]
