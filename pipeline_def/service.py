"""What the triggers and the command line call: publish, tick, start_run, get_run, list_runs, cancel.

The service holds the behaviour of docs/product.md (publish if needed, the overlap policy, validation of run
parameters, tags) and delegates the work to a backend: Azure ML (SDK v1's services, or v2's) over REST, or local processes. Backends are
imported only when built, so importing this module stays cheap (no azureml, pandas or scikit-learn).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline_def.backend import Backend, Progress, Published, TickOutcome
from pipeline_def.errors import ConfigError, InvalidRequest
from pipeline_def.runs import ACCEPT_DRIFT_TAG, RunInfo, is_valid_run_id
from pipeline_def.settings import Settings, load_settings
from pipeline_def.steps import validate_parameters

log = logging.getLogger(__name__)

MAX_LIST_LIMIT = 100
DEFAULT_LIST_LIMIT = 20


def make_backend(settings: Settings, *, sleep: Callable[[float], None] = time.sleep) -> Backend:
    """The backend `settings` name; `sleep` passes the time while a run is waited for on Azure ML (a local
    run is waited for in this process)."""
    if settings.backend == "local":
        from pipeline_def.local.backend import LocalBackend

        return LocalBackend(settings)
    if settings.backend == "azureml-v2":
        from pipeline_def.azureml_v2.backend import AzureMLV2Backend

        return AzureMLV2Backend(settings, sleep=sleep)
    from pipeline_def.azureml.backend import AzureMLBackend

    return AzureMLBackend(settings, sleep=sleep)


@dataclass(frozen=True)
class StartedRun:
    """A run started by start_run, with the published `version` it runs and whether that is the `current`
    fingerprint."""

    run: RunInfo
    version: str | None
    current: bool

    def to_dict(self) -> dict[str, Any]:
        return {**self.run.to_dict(), "pipeline_version": self.version, "current": self.current}


class Service:
    def __init__(self, settings: Settings, backend: Backend):
        self.settings = settings
        self.backend = backend

    def publish(self) -> Published:
        """Publish unless the published pipeline is current (what `python -m pipeline_def publish` does)."""
        return self.backend.ensure_published()

    def tick(
        self,
        scheduled_for: str | None = None,
        past_due: bool = False,
        on_previous: Callable[[RunInfo | None], None] | None = None,
    ) -> TickOutcome:
        """One timer tick: publish if needed, look back (the run still going, the previous scheduled run),
        apply the overlap policy, submit. A tick for an occurrence (`scheduled_for`) leaves one run going for
        it even when another instance ticks for it at the same time: it may join that instance's run
        (`joined`). `on_previous` hears of the previous scheduled run as soon as it is known, so it is
        reported even when the submit then fails."""
        publish = self.backend.ensure_published()
        look = self.backend.look_back(publish.target, need_active=self.settings.overlap == "skip")
        if on_previous is not None:
            on_previous(look.previous_scheduled)
        if look.active is not None:
            return TickOutcome(
                action="skipped",
                publish=publish,
                active_run=look.active,
                previous_scheduled=look.previous_scheduled,
            )
        tags = {"trigger": "timer", "past_due": "true" if past_due else "false"}
        if not scheduled_for:
            run = self.backend.submit(publish.target, {}, tags)
            return TickOutcome(
                action="submitted", publish=publish, run=run, previous_scheduled=look.previous_scheduled
            )
        tags["scheduled_for"] = scheduled_for
        placed = self.backend.submit_for_occurrence(publish.target, tags, scheduled_for)
        return TickOutcome(
            action="joined" if placed.joined else "submitted",
            publish=publish,
            run=placed.run,
            previous_scheduled=look.previous_scheduled,
            canceled_duplicate=placed.canceled,
        )

    def start_run(
        self,
        parameters: Any = None,
        trigger: str = "http",
        wait: bool = False,
        progress: Progress | None = None,
    ) -> StartedRun:
        """Start a run now of what the endpoint runs today, stale or not: never publishes (a publish can
        outlast an HTTP call). `parameters` is checked before anything is sent; with nothing published,
        NotPublished and nothing is submitted. With `wait`, returns once the run has ended, telling
        `progress` as it goes. A run with accept_drift=true is tagged so (runs.ACCEPT_DRIFT_TAG); the timer
        never sets it (tick submits the published defaults)."""
        checked = check_parameters(parameters)
        target = self.backend.published_target()
        tags = {"trigger": trigger}
        if checked.get("accept_drift") == "true":
            tags[ACCEPT_DRIFT_TAG] = "true"  # the run's own record that it may publish despite drift
        if wait:
            run = self.backend.run(target, checked, tags, progress)
        else:
            run = self.backend.submit(target, checked, tags)
        return StartedRun(run, target.version, target.current)

    def get_run(self, run_id: str) -> RunInfo:
        return self.backend.get_run(check_run_id(run_id))

    def list_runs(self, limit: int = DEFAULT_LIST_LIMIT) -> list[RunInfo]:
        return self.backend.list_runs(check_limit(limit))

    def cancel(self, run_id: str) -> None:
        self.backend.cancel(check_run_id(run_id))


# The checks of what a caller sends, pure (no settings, no backend), so a trigger can refuse bad input before
# it builds the service.


def check_parameters(raw: object) -> dict[str, str]:
    """Run parameters as a caller sent them (None for none), checked and as the backends want them."""
    return validate_parameters(raw)


def check_limit(limit: object) -> int:
    """How many runs to list: a whole number from 1 to MAX_LIST_LIMIT (None is not one)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidRequest(f"'limit' must be a whole number from 1 to {MAX_LIST_LIMIT}")
    return limit


def check_run_id(run_id: object) -> str:
    if not isinstance(run_id, str) or not is_valid_run_id(run_id):
        raise InvalidRequest("a run id is 1 to 300 letters, digits, '-' or '_'")
    return run_id


_lock = threading.Lock()
_cached: Service | ConfigError | None = None


def get_service() -> Service:
    """The process-wide service, built from the environment on first use. A configuration error is kept
    and raised again on every call, so each trigger reports the same message without re-reading settings."""
    global _cached
    with _lock:
        if _cached is None:
            try:
                settings = load_settings()
                _cached = Service(settings, make_backend(settings))
            except ConfigError as error:
                log.error("%s", error.message)
                _cached = error
    if isinstance(_cached, ConfigError):
        raise _cached
    return _cached


def reset_service() -> None:
    """Forget the process-wide service (settings are read again on next use)."""
    global _cached
    with _lock:
        _cached = None


__all__ = [
    "Service",
    "StartedRun",
    "check_limit",
    "check_parameters",
    "check_run_id",
    "get_service",
    "make_backend",
    "reset_service",
]
