"""What every backend offers the service (the Backend protocol) and what its calls report back (Target,
Published, LookBack, TickOutcome). Backends and the service both import this; it imports neither.

A backend keeps no state between calls: what a submit or a look back acts on is the Target the service got
from `ensure_published()` or `published_target()` and passes on, so one backend can serve many threads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pipeline_def.runs import RunInfo

# Hears one line of a run's progress (a status or a step that changed).
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    """What a submit runs now: the published `version` (None when the backend cannot tell), whether it is the
    `current` fingerprint, and `handle`, what the backend needs to act on it (opaque to the service)."""

    version: str | None
    current: bool
    handle: object | None = None


@dataclass(frozen=True)
class Published:
    """What ensure_published found or did: the `target` a submit runs, and whether this call `published`
    it."""

    target: Target
    published: bool


@dataclass(frozen=True)
class LookBack:
    """What a tick needs to know of earlier runs: a run that has not ended (only when asked for, for the
    `skip` overlap policy) and the newest scheduled run (tagged trigger=timer), with its steps and the
    failing step's error when it failed."""

    active: RunInfo | None = None
    previous_scheduled: RunInfo | None = None


@dataclass(frozen=True)
class OccurrenceRun:
    """What a submit for a scheduled occurrence left going: `run`, the occurrence's one run. `joined` when
    another tick of the same occurrence (another instance, another app on the workspace) had started it;
    then `canceled` is the run this submit started and canceled as its duplicate, if it started one."""

    run: RunInfo
    joined: bool = False
    canceled: RunInfo | None = None


@dataclass(frozen=True)
class TickOutcome:
    """What one timer tick did: `submitted` (with the run), `joined` (with `run`, the occurrence's run that
    another tick started, and `canceled_duplicate`, this tick's own run, canceled) or `skipped` (with the run
    still active), and the scheduled run before this tick's (`previous_scheduled`), if there was one."""

    action: str
    publish: Published
    run: RunInfo | None = None
    active_run: RunInfo | None = None
    previous_scheduled: RunInfo | None = None
    canceled_duplicate: RunInfo | None = None


class Backend(Protocol):
    def ensure_published(self) -> Published:
        """Publish unless current (the timer and the command line's `publish` only)."""
        ...

    def published_target(self) -> Target:
        """What a submit would run now, stale or not, without publishing anything. Raises NotPublished when
        nothing is published."""
        ...

    def look_back(self, target: Target, need_active: bool) -> LookBack:
        """The run still going (when `need_active`) and the newest scheduled run of `target`'s pipeline,
        read in a bounded amount whatever the history."""
        ...

    def submit(self, target: Target, parameters: dict[str, str], tags: dict[str, str]) -> RunInfo:
        """Start a run of `target` and return it as soon as it is accepted."""
        ...

    def submit_for_occurrence(
        self, target: Target, tags: dict[str, str], scheduled_for: str
    ) -> OccurrenceRun:
        """Start the run of `target` for the timer's occurrence `scheduled_for` (default parameters): ticks of
        one occurrence fired at once (two instances, two apps on one workspace) leave one run going, and
        each reports that run."""
        ...

    def run(
        self,
        target: Target,
        parameters: dict[str, str],
        tags: dict[str, str],
        progress: Progress | None = None,
    ) -> RunInfo:
        """Start a run of `target` and return it once it has ended, telling `progress` as it goes."""
        ...

    def get_run(self, run_id: str) -> RunInfo:
        """Raises RunNotFound for an unknown id."""
        ...

    def list_runs(self, limit: int) -> list[RunInfo]:
        """The most recent runs, newest first."""
        ...

    def cancel(self, run_id: str) -> None:
        """Raises RunNotFound for an unknown id."""
        ...


def follow_run(
    run: RunInfo,
    read: Callable[[str], RunInfo],
    wait: Callable[[float], None],
    every: float,
    progress: Progress | None = None,
) -> RunInfo:
    """Read `run` again every `every` seconds until it has ended, telling `progress` one line for the run and
    one for each step whenever what it says changes; return the ended run. What a remote backend's `run`
    does after its submit."""
    say = progress or (lambda _line: None)
    said: dict[str, str] = {}
    while True:
        for key, line in _progress_lines(run):
            if said.get(key) != line:
                said[key] = line
                say(line)
        if run.terminal:
            return run
        wait(every)
        run = read(run.run_id)


def look_back_through(
    newest: Callable[[str], RunInfo | None],
    going_or_timer: str,
    timer: str,
    need_active: bool,
    with_steps: Callable[[RunInfo], RunInfo],
) -> LookBack:
    """What `look_back` answers from a store queried for its newest run (`newest(query)`, one run at most
    whatever the history; run history on both Azure ML backends): `going_or_timer` asks for a run still going or
    scheduled, `timer` for a scheduled one. A failed previous run comes `with_steps`."""
    active = previous = None
    if need_active:
        # Under `skip` a tick submits only when nothing is going, so a run still going is newer than the newest
        # scheduled run: the newest run that is either answers both questions.
        found = newest(going_or_timer)
        if found is not None and not found.terminal:
            active = found
        if found is not None and found.trigger == "timer":
            previous = found
    if previous is None and (not need_active or active is not None):
        previous = newest(timer)
    if previous is not None and previous.status == "failed":
        previous = with_steps(previous)
    return LookBack(active=active, previous_scheduled=previous)


def _progress_lines(run: RunInfo) -> list[tuple[str, str]]:
    """The lines that describe where `run` is, each keyed by what it is about (the run, or one step)."""
    lines = [("", f"run {run.run_id}: {run.status}")]
    for step in run.steps or []:
        detail = f": {step.error}" if step.status == "failed" and step.error else ""
        lines.append((step.name, f"  {step.name:<18} {step.status}{detail}"))
    return lines


__all__ = [
    "Backend",
    "LookBack",
    "OccurrenceRun",
    "Progress",
    "Published",
    "Target",
    "TickOutcome",
    "follow_run",
    "look_back_through",
]
