"""What the triggers and the command line call: tick, start_run, get_run, list_runs, cancel.

The service holds the behaviour of docs/product.md (publish if needed, the overlap policy, validation of run
parameters, tags) and delegates the work to a backend: Azure ML over REST, or local processes. Backends are
imported only when built, so importing this module stays cheap (no azureml, pandas or scikit-learn).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any

from pipeline_def.backend import Backend, PublishOutcome, TickOutcome
from pipeline_def.errors import ConfigError, InvalidRequest, RunNotFound
from pipeline_def.runs import RunInfo, is_valid_run_id
from pipeline_def.settings import Settings, load_settings
from pipeline_def.steps import validate_parameters

log = logging.getLogger(__name__)

MAX_LIST_LIMIT = 100
DEFAULT_LIST_LIMIT = 20


def make_backend(settings: Settings) -> Backend:
    if settings.backend == "local":
        from pipeline_def.local.backend import LocalBackend

        return LocalBackend(settings)
    from pipeline_def.azureml.backend import AzureMLBackend

    return AzureMLBackend(settings)


class Service:
    def __init__(self, settings: Settings, backend: Backend):
        self.settings = settings
        self.backend = backend

    def tick(
        self,
        scheduled_for: str | None = None,
        past_due: bool = False,
        on_previous: Callable[[RunInfo | None], None] | None = None,
    ) -> TickOutcome:
        """One timer tick: publish if needed, look back (the run still going, the previous scheduled run),
        apply the overlap policy, submit. `on_previous` hears of the previous scheduled run as soon as it
        is known, so it is reported even when the submit then fails."""
        publish = self.backend.ensure_published()
        look = self.backend.look_back(need_active=self.settings.overlap == "skip")
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
        if scheduled_for:
            tags["scheduled_for"] = scheduled_for
        run = self.backend.submit({}, tags)
        return TickOutcome(
            action="submitted", publish=publish, run=run, previous_scheduled=look.previous_scheduled
        )

    def start_run(self, parameters: Any = None, trigger: str = "http") -> RunInfo:
        """Start a run now of what the endpoint runs today, stale or not: never publishes (a publish can
        outlast an HTTP call). The run says which version it runs (`pipeline_version`) and whether that is
        the current fingerprint (`current`). `parameters` is validated before anything is sent; with
        nothing published, NotPublished and nothing is submitted."""
        checked = validate_parameters(parameters)
        target = self.backend.published_target()
        run = self.backend.submit(checked, {"trigger": trigger})
        return dataclasses.replace(
            run, extra={**run.extra, "pipeline_version": target.version, "current": target.current}
        )

    def get_run(self, run_id: str) -> RunInfo:
        return self.backend.get_run(check_run_id(run_id))

    def list_runs(self, limit: int = DEFAULT_LIST_LIMIT) -> list[RunInfo]:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequest(f"'limit' must be a whole number from 1 to {MAX_LIST_LIMIT}")
        return self.backend.list_runs(limit)

    def cancel(self, run_id: str) -> None:
        self.backend.cancel(check_run_id(run_id))


def check_run_id(run_id: str) -> str:
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
    "Backend",
    "PublishOutcome",
    "RunNotFound",
    "Service",
    "TickOutcome",
    "check_run_id",
    "get_service",
    "make_backend",
    "reset_service",
]
