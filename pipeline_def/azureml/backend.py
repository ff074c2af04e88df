"""The Azure ML backend of the service: publish when stale (timer, CLI), submit to the PipelineEndpoint's
current default, read runs and their steps, list and look back through run history's bounded query, cancel.
Plain REST through AzureMLClient; the SDK is imported only to publish.

One run per scheduled occurrence. Two ticks of one occurrence can fire at once (two Functions instances, or a
staging and a production app on one workspace); both pass the overlap check before either submits, and v1's
submit has no idempotency key the service would hold them to. So a timer tick settles it after the fact:

1. it submits with the tag `batchpred_occurrence` = `<endpoint name>@<scheduled_for>`;
2. it asks run history, in one bounded query (the filter `(Tags/batchpred_occurrence eq "...")`, `top` 5,
   `CreatedUtc asc`), for the earliest runs of that occurrence;
3. the occurrence's run is the earliest of them that was not canceled (`CancelRequested` or `Canceled`),
   "earliest" meaning run history's `createdUtc`, then the run id as a tie-break; this tick's own run counts
   with its pipelines-service creation time while run history has not listed it yet;
4. if that is not this tick's run, the tick cancels its own (the pipelines service's cancel, as `cancel`
   does), retags it (`trigger=timer-duplicate`, `batchpred_duplicate_of=<the run that stays>`) so that later
   ticks neither report it as the previous scheduled run nor alert on its cancel, and reports the run that
   stays.

Every tick of the occurrence ranks the same runs in the same total order, and the earliest one never cancels
itself, so once every tick has checked exactly one run is left going. A run canceled by anyone never stays: a
later tick of the same occurrence ranks it out and keeps its own run. Why this design: it needs nothing but
run history (no lease, no storage account of its own, no clock shared between apps), so it also holds across
two apps on one workspace; it costs one bounded query per timer tick (two more calls, cancel and retag, only
for the tick that lost). Its limits: both runs exist, and may start, for the moment between the losing
submit and its check; it relies on run history listing a run as soon as its submit is answered (inferred,
not seen, in docs/aml-v1-rest.md), and a run it has not listed yet can leave both ticks keeping their runs;
two apps share an occurrence only with the same endpoint name and experiment; at most the 5 earliest runs of
an occurrence are read; a check that fails (Azure ML down past the retry budget) keeps the tick's run and
logs a warning. HTTP and command-line runs are not occurrences and are not checked.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pipeline_def.azureml import publisher
from pipeline_def.azureml.client import SUBMISSION_TAG, AzureMLClient, PipelineRunInfo
from pipeline_def.azureml.history_run import HistoryRun
from pipeline_def.azureml.odata import ACTIVE_HISTORY_STATUSES, runs_filter
from pipeline_def.backend import (
    LookBack,
    OccurrenceRun,
    Progress,
    Published,
    Target,
    follow_run,
    look_back_through,
)
from pipeline_def.errors import NotFound, NotPublished, PipelineError, RunNotFound
from pipeline_def.fingerprint import compute_fingerprint
from pipeline_def.runs import (
    TERMINAL,
    RunInfo,
    history_run_info,
    normalize_status,
    with_predictions,
    with_steps,
)
from pipeline_def.settings import STEP_SCRIPTS_DIR, Settings
from pipeline_def.steps import STEPS

log = logging.getLogger(__name__)

# The tag that names a timer run's occurrence (`<endpoint name>@<scheduled_for>`): ticks of one occurrence find
# each other's runs by it.
OCCURRENCE_TAG = "batchpred_occurrence"
# How many of an occurrence's earliest runs the check after a timer submit reads (one query).
OCCURRENCE_QUERY_TOP = 5
# The trigger tag of a run canceled as the duplicate of its occurrence's run, and the tag naming that run.
DUPLICATE_TRIGGER = "timer-duplicate"
DUPLICATE_OF_TAG = "batchpred_duplicate_of"
_CANCELED = ("canceling", "canceled")
_INSTANT = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})?")

_STEP_NAMES = tuple(step.name for step in STEPS)
# How often `run` reads a run it waits for.
POLL_SECONDS = 15.0


class AzureMLBackend:
    """The `Backend` of service.py on Azure ML. It keeps nothing between calls: the endpoint a submit or a
    look back acts on travels in the Target's handle (an EndpointState), so one backend serves every thread
    of the process."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: AzureMLClient | None = None,
        step_folder: Path = STEP_SCRIPTS_DIR,
        publish_fn: publisher.PublishFn | None = None,
        sleep: Callable[[float], None] = time.sleep,
        poll_seconds: float = POLL_SECONDS,
    ):
        self.settings = settings
        self.client = client or AzureMLClient(settings)
        self.step_folder = Path(step_folder)
        self._publish_fn = publish_fn
        self._sleep = sleep
        self._poll_seconds = poll_seconds

    def current_fingerprint(self) -> str:
        """The fingerprint of the steps in the step folder, hashed anew on each call (a millisecond), so an
        edited step script republishes without a restart of a long-lived host such as `func start`."""
        return compute_fingerprint(self.settings, self.step_folder)

    def ensure_published(self) -> Published:
        state, published = publisher.ensure_published(
            self.settings,
            self.client,
            self.current_fingerprint(),
            folder=self.step_folder,
            publish_fn=self._publish_fn,
        )
        return Published(_target(state), published)

    def published_target(self) -> Target:
        """The endpoint and the default pipeline a submit runs now, stale or not; never publishes."""
        found = publisher.read_endpoint(self.client, self.settings.endpoint_name, self.current_fingerprint())
        if isinstance(found, publisher.Unpublished):
            raise NotPublished(found.reason)
        return _target(found)

    def look_back(self, target: Target, need_active: bool) -> LookBack:
        """The run still going (when `need_active`) and the newest scheduled run of the endpoint's
        pipelines, one run at most per run-history query whatever the history; a failed previous run comes
        with its steps and the failing step's error."""
        state = _endpoint_state(target)
        pipeline_ids = state.endpoint_pipeline_ids or tuple(
            p for p in (state.pipeline_id, state.previous_pipeline_id) if p
        )
        if not pipeline_ids:
            return LookBack()
        return look_back_through(
            self._newest_run,
            runs_filter(
                pipeline_ids=pipeline_ids, any_of_tags={"trigger": "timer"}, statuses=ACTIVE_HISTORY_STATUSES
            ),
            runs_filter(pipeline_ids=pipeline_ids, tags={"trigger": "timer"}),
            need_active,
            self._with_steps,
        )

    def _newest_run(self, filter_expression: str) -> RunInfo | None:
        found = self.client.query_runs(self.settings.experiment_name, filter_expression, top=1)
        return self._history_run_info(found[0]) if found else None

    def submit(self, target: Target, parameters: dict[str, str], tags: dict[str, str]) -> RunInfo:
        entity = self.client.submit_to_endpoint(
            _endpoint_state(target).endpoint_id, self.settings.experiment_name, parameters, tags
        )
        return self._run_info(entity)

    def submit_for_occurrence(
        self, target: Target, tags: dict[str, str], scheduled_for: str
    ) -> OccurrenceRun:
        """Submit with the occurrence's tag, then keep this run only if it is the earliest of the occurrence's
        runs not canceled; otherwise cancel it, retag it as a duplicate, and report the earlier run (the
        module docstring gives the design and its limits)."""
        occurrence = self.occurrence(scheduled_for)
        own = self.submit(target, {}, {**tags, OCCURRENCE_TAG: occurrence})
        experiment = self.settings.experiment_name
        try:
            found = self.client.query_runs(
                experiment,
                runs_filter(tags={OCCURRENCE_TAG: occurrence}),
                top=OCCURRENCE_QUERY_TOP,
                orderby="CreatedUtc asc",
            )
            seen = [self._history_run_info(dto) for dto in found]
        except PipelineError as error:
            log.warning(
                "could not check for another run of occurrence %s (%s); keeping run %s",
                occurrence,
                error.message,
                own.run_id,
            )
            return OccurrenceRun(own)
        stays = _occurrence_run(own, seen)
        if stays.run_id == own.run_id:
            return OccurrenceRun(own)
        try:
            self.cancel(own.run_id)
        except PipelineError as error:
            log.error(
                "run %s duplicates run %s of occurrence %s but could not be canceled: %s",
                own.run_id,
                stays.run_id,
                occurrence,
                error.message,
            )
            raise
        try:
            self.client.tag_run(
                experiment, own.run_id, {"trigger": DUPLICATE_TRIGGER, DUPLICATE_OF_TAG: stays.run_id}
            )
        except PipelineError as error:
            log.warning("canceled duplicate run %s could not be tagged as one: %s", own.run_id, error.message)
        canceled = dataclasses.replace(own, status="canceling", trigger=DUPLICATE_TRIGGER)
        return OccurrenceRun(stays, joined=True, canceled=canceled)

    def occurrence(self, scheduled_for: str) -> str:
        """The value of OCCURRENCE_TAG for the timer's occurrence `scheduled_for` of this app's endpoint."""
        return f"{self.settings.endpoint_name}@{scheduled_for}"

    def run(
        self,
        target: Target,
        parameters: dict[str, str],
        tags: dict[str, str],
        progress: Progress | None = None,
    ) -> RunInfo:
        """Submit, then follow the run every `poll_seconds` until it ends (backend.follow_run)."""
        run = self.submit(target, parameters, tags)
        return follow_run(run, self.get_run, self._sleep, self._poll_seconds, progress)

    def get_run(self, run_id: str) -> RunInfo:
        """The run with its steps. While the pipelines service has not ended the run, run history is asked
        too: it says `CancelRequested` as soon as a cancel is asked for, long before the pipelines service
        says `Canceled`, and that is reported as `canceling`."""
        try:
            entity = self.client.get_pipeline_run(run_id)
        except NotFound:
            raise RunNotFound(run_id) from None
        experiment = entity.experiment or self.settings.experiment_name
        history_status = None
        if normalize_status(entity.status_code) not in TERMINAL:
            history_status = self._history_status(experiment, run_id)
        children = self.client.find_step_runs(experiment, run_id) or []
        info = self._run_info(entity, history_status=history_status)
        return with_predictions(
            with_steps(info, children, self.client.get_step_log, _STEP_NAMES),
            children,
            self.settings.datastore_url,
        )

    def list_runs(self, limit: int) -> list[RunInfo]:
        """The newest `limit` runs of the endpoint's pipelines (its newest versions), newest first, read in
        a bounded amount whatever the history. Statuses are run history's (`aml_status` is its word, e.g.
        `Completed`, `CancelRequested`)."""
        try:
            endpoint = self.client.get_endpoint_by_name(self.settings.endpoint_name)
        except NotFound:
            endpoint = None
        if endpoint is None:
            return []
        pipeline_ids = publisher.endpoint_pipeline_ids(endpoint)
        if not pipeline_ids:
            return []
        dtos = self.client.query_runs(
            self.settings.experiment_name, runs_filter(pipeline_ids=pipeline_ids), top=limit
        )
        return [self._history_run_info(dto) for dto in dtos]

    def cancel(self, run_id: str) -> None:
        try:
            self.client.cancel_run(run_id)
        except NotFound:
            raise RunNotFound(run_id) from None

    def _history_status(self, experiment: str, run_id: str) -> str | None:
        """The parent run's status in run history; None while run history has not seen the run yet."""
        try:
            return self.client.get_history_run(experiment, run_id).status or None
        except NotFound:
            return None

    def _with_steps(self, run: RunInfo) -> RunInfo:
        """`run` (from run history) with its steps, and the failing step's error when it failed."""
        children = self.client.find_step_runs(self.settings.experiment_name, run.run_id)
        return run if children is None else with_steps(run, children, self.client.get_step_log, _STEP_NAMES)

    # ----- mapping Azure ML entities to RunInfo

    def _history_run_info(self, dto: HistoryRun) -> RunInfo:
        """A run as run history's RunDto describes it (the answer of the run query), with its submission id."""
        return history_run_info(dto, self.settings.portal_url, SUBMISSION_TAG)

    def _run_info(self, entity: PipelineRunInfo, history_status: str | None = None) -> RunInfo:
        """`aml_status` is always the pipelines service's StatusCode; `history_status`, when run history
        was read, is reported beside it as `aml_history_status`."""
        normalized = normalize_status(entity.status_code)
        # Only a run the pipelines service has not ended can be canceling: if it finished or failed before the
        # cancel took effect, that outcome stands. Run history may also reach Canceled first; the run is still
        # winding down until the pipelines service agrees.
        canceling = history_status is not None and normalize_status(history_status) in (
            "canceling",
            "canceled",
        )
        if canceling and normalized not in TERMINAL:
            normalized = "canceling"
        detail = entity.status_detail
        return RunInfo(
            run_id=entity.id,
            status=normalized,
            aml_status=entity.status_code,
            created_at=entity.created,
            ended_at=entity.end_time,
            portal_url=self.settings.portal_url(entity.id),
            error=detail[:500] if normalized == "failed" and detail else None,
            aml_history_status=history_status,
            trigger=entity.tags.get("trigger"),
            submission_id=entity.tags.get(SUBMISSION_TAG),
        )


def _occurrence_run(own: RunInfo, seen: list[RunInfo]) -> RunInfo:
    """The run that stays for an occurrence: the earliest (creation time, then run id) of the runs `seen` in
    run history that were not canceled, with `own` (just submitted) among them even before run history lists
    it; `own` when no other run qualifies."""
    listed = {run.run_id: run for run in seen}
    candidates = [run for run in seen if run.status not in _CANCELED]
    if own.run_id not in listed:
        candidates.append(own)  # run history has not listed it yet: its pipelines-service creation time
    if not candidates:
        return own  # its own run was canceled already (by someone else): nothing earlier to join
    return min(candidates, key=lambda run: (_instant(run.created_at), run.run_id))


def _instant(text: str | None) -> datetime:
    """An Azure ML timestamp (ISO 8601, any number of fraction digits, `Z` or an offset; UTC when it has
    neither) as an aware datetime; an absent or unreadable one sorts last."""
    last = datetime.max.replace(tzinfo=UTC)
    found = _INSTANT.fullmatch(text.strip()) if text else None
    if found is None:
        return last
    whole, fraction, zone = found.groups()
    micro = (fraction or "")[:6].ljust(6, "0")
    offset = "+00:00" if zone in (None, "Z") else zone
    try:
        return datetime.fromisoformat(f"{whole}.{micro}{offset}").astimezone(UTC)
    except (ValueError, OverflowError):  # e.g. month 13
        return last


def _target(state: publisher.EndpointState) -> Target:
    return Target(version=state.version, current=state.current, handle=state)


def _endpoint_state(target: Target) -> publisher.EndpointState:
    """The endpoint a Target of this backend stands for."""
    if not isinstance(target.handle, publisher.EndpointState):
        raise TypeError(f"not a target of the Azure ML backend: {target!r}")
    return target.handle


__all__ = ["AzureMLBackend"]
