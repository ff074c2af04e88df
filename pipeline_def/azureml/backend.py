"""The Azure ML backend of the service: publish when stale (timer, CLI), submit to the PipelineEndpoint's
current default, read runs and their steps, list and look back through run history's bounded query, cancel.
Plain REST through AzureMLClient; the SDK is imported only to publish."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from pipeline_def.azureml import publisher
from pipeline_def.azureml.client import SUBMISSION_TAG, AzureMLClient
from pipeline_def.azureml.odata import ACTIVE_HISTORY_STATUSES, runs_filter
from pipeline_def.backend import LookBack, PublishOutcome
from pipeline_def.errors import NotFound, NotPublished, RunNotFound, ServiceError
from pipeline_def.fingerprint import compute_fingerprint
from pipeline_def.runs import TERMINAL, RunInfo, StepStatus, normalize_status
from pipeline_def.settings import STEP_SCRIPTS_DIR, Settings
from pipeline_def.steps import STEPS

log = logging.getLogger(__name__)

_STEP_ORDER = {step.name: index for index, step in enumerate(STEPS)}


class AzureMLBackend:
    """The `Backend` of service.py on Azure ML. A steady-state tick costs four calls: endpoint and default
    pipeline (ensure_published), one run-history query (look_back: the run still going and the previous
    scheduled run), the submit; a fifth, the previous run's steps, only when that run failed. An HTTP
    submission costs three: endpoint, default pipeline (published_target), submit."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: AzureMLClient | None = None,
        step_folder: Path = STEP_SCRIPTS_DIR,
        publish_fn: publisher.PublishFn | None = None,
    ):
        self.settings = settings
        self.client = client or AzureMLClient(settings)
        self.step_folder = Path(step_folder)
        self._publish_fn = publish_fn
        # What the last ensure_published found: the endpoint and its default pipeline, reused by the submit
        # that follows it in the same tick or request.
        self._current: PublishOutcome | None = None

    @property
    def fingerprint(self) -> str:
        # Recomputed on each use (a millisecond of hashing), so an edited step script republishes without a
        # restart of a long-lived host such as `func start`.
        return compute_fingerprint(self.settings, self.step_folder)

    def ensure_published(self) -> PublishOutcome:
        publish_fn = self._publish_fn
        if publish_fn is None and self.step_folder != STEP_SCRIPTS_DIR:
            client, folder = self.client, self.step_folder

            def publish_fn(settings: Settings, fingerprint: str) -> str:
                from pipeline_def.azureml.definition import publish_pipeline

                return publish_pipeline(settings, client.credential, fingerprint, folder)

        outcome = publisher.ensure_published(
            self.settings, self.client, self.fingerprint, publish_fn=publish_fn
        )
        self._current = outcome
        return outcome

    def published_target(self) -> PublishOutcome:
        """The endpoint and the default pipeline a submit runs now, stale or not; never publishes. Two
        calls: the endpoint by name, its default pipeline."""
        name = self.settings.endpoint_name
        endpoint = self.client.get_endpoint_by_name(name)
        if endpoint is None:
            raise NotPublished(f"pipeline endpoint {name!r} does not exist")
        if not publisher.is_active(endpoint):
            raise NotPublished(f"pipeline endpoint {name!r} is disabled")
        pipeline_id = publisher.default_pipeline_id(endpoint)
        if not pipeline_id:
            raise NotPublished(f"pipeline endpoint {name!r} has no default pipeline")
        try:
            pipeline = self.client.get_pipeline(pipeline_id)
        except NotFound:
            raise NotPublished(
                f"the default pipeline {pipeline_id} of endpoint {name!r} does not exist"
            ) from None
        if not publisher.is_active(pipeline):
            raise NotPublished(f"the default pipeline {pipeline_id} of endpoint {name!r} is disabled")
        version = pipeline.get("Version")
        version = None if version is None else str(version)
        self._current = PublishOutcome(
            False,
            pipeline_id,
            version,
            endpoint["Id"],
            publisher.previous_pipeline_id(endpoint),
            current=version == self.fingerprint,
            endpoint_pipeline_ids=publisher.endpoint_pipeline_ids(endpoint),
        )
        return self._current

    def _endpoint_target(self) -> PublishOutcome:
        """The endpoint and its default pipeline: from the last ensure_published or published_target in
        this tick or request, else looked up (without publishing)."""
        if self._current is not None and self._current.endpoint_id:
            return self._current
        return self.published_target()

    def look_back(self, need_active: bool) -> LookBack:
        """The run still going and the previous scheduled run, from run history's query, one run at most
        per query whatever the history. With `need_active` (the `skip` policy) one query asks for the
        newest of the endpoint's runs that is tagged trigger=timer or has not ended: under `skip` a tick
        submits only when nothing is going, so a run still going is newer than the newest scheduled run and
        the newest match answers both questions; only when it is a run still going that was not scheduled
        is the newest scheduled run asked for apart. The previous scheduled run's steps are read only when
        it failed (its failing step and error)."""
        target = self._endpoint_target()
        pipeline_ids = target.endpoint_pipeline_ids or tuple(
            p for p in (target.pipeline_id, target.previous_pipeline_id) if p
        )
        if not pipeline_ids:
            return LookBack()
        active = previous = None
        if need_active:
            newest = self._newest_run(
                runs_filter(
                    pipeline_ids=pipeline_ids,
                    any_of_tags={"trigger": "timer"},
                    statuses=ACTIVE_HISTORY_STATUSES,
                )
            )
            if newest is not None and not newest.terminal:
                active = newest
            if newest is not None and newest.extra.get("trigger") == "timer":
                previous = newest
        if previous is None and (not need_active or active is not None):
            previous = self._newest_run(runs_filter(pipeline_ids=pipeline_ids, tags={"trigger": "timer"}))
        if previous is not None and previous.status == "failed":
            previous = self._with_steps(previous)
        return LookBack(active=active, previous_scheduled=previous)

    def _newest_run(self, filter_expression: str) -> RunInfo | None:
        found = self.client.query_runs(self.settings.experiment_name, filter_expression, top=1)
        return self._history_run_info(found[0]) if found else None

    def submit(self, parameters: dict[str, str], tags: dict[str, str]) -> RunInfo:
        target = self._endpoint_target()
        entity = self.client.submit_to_endpoint(
            target.endpoint_id, self.settings.experiment_name, parameters, tags
        )
        return self._run_info(entity)

    def get_run(self, run_id: str) -> RunInfo:
        """The run with its steps. While the pipelines service has not ended the run, run history is asked
        too: it says `CancelRequested` as soon as a cancel is asked for, long before the pipelines service
        says `Canceled`, and that is reported as `canceling`."""
        try:
            entity = _require_run(self.client.get_pipeline_run(run_id))
        except NotFound:
            raise RunNotFound(run_id) from None
        experiment = entity.get("RunHistoryExperimentName") or self.settings.experiment_name
        history_status = None
        if normalize_status(_status_code(entity)) not in TERMINAL:
            history_status = self._history_status(experiment, run_id)
        try:
            children = self.client.get_step_runs(experiment, run_id)
        except NotFound:
            children = []  # run history has not seen the run yet (just submitted)
        info = self._run_info(entity, steps=self._steps(children), history_status=history_status)
        return _with_step_error(info)

    def list_runs(self, limit: int) -> list[RunInfo]:
        """The newest `limit` runs of the endpoint's pipelines (its newest versions), newest first: the
        endpoint, then one run-history query of at most `limit` runs, whatever the history. Statuses are
        run history's (`aml_status` is its word, e.g. `Completed`, `CancelRequested`)."""
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
            dto = self.client.get_history_run(experiment, run_id)
        except NotFound:
            return None
        status = dto.get("status") if isinstance(dto, dict) else None
        return str(status) if status else None

    def _with_steps(self, run: RunInfo) -> RunInfo:
        """`run` (from run history) with its steps, and the failing step's error when it failed."""
        try:
            children = self.client.get_step_runs(self.settings.experiment_name, run.run_id)
        except NotFound:
            return run
        return _with_step_error(dataclasses.replace(run, steps=self._steps(children)))

    # ----- mapping Azure ML entities to RunInfo

    def _history_run_info(self, dto: Any) -> RunInfo:
        """A run as run history's RunDto (camelCase) describes it: the answer of the run query."""
        if not isinstance(dto, dict) or not isinstance(dto.get("runId"), str) or not dto["runId"]:
            raise ServiceError("Azure ML answered a run query with a run without a runId")
        status = dto.get("status")
        normalized = normalize_status(status)
        extra = _tag_extras(dto.get("tags"))
        return RunInfo(
            run_id=dto["runId"],
            status=normalized,
            aml_status=None if status is None else str(status),
            created_at=dto.get("createdUtc") or None,
            ended_at=dto.get("endTimeUtc") or None,
            portal_url=self.settings.portal_url(dto["runId"]),
            error=_error_message(dto.get("error")) if normalized == "failed" else None,
            extra=extra,
        )

    def _run_info(
        self, entity: dict, steps: list[StepStatus] | None = None, history_status: str | None = None
    ) -> RunInfo:
        """`aml_status` is always the pipelines service's StatusCode; `history_status`, when run history
        was read, is reported beside it as `aml_history_status`."""
        entity = _require_run(entity)
        status = entity.get("Status") or {}
        code = _status_code(entity)
        aml_status = None if code is None else str(code)
        normalized = normalize_status(code)
        extra = _tag_extras(entity.get("tags") or entity.get("Tags"))
        if history_status is not None:
            extra["aml_history_status"] = history_status
            # Only a run the pipelines service has not ended can be canceling: if it finished or failed
            # before the cancel took effect, that outcome stands. Run history may also reach Canceled
            # first; the run is still winding down until the pipelines service agrees.
            if normalize_status(history_status) in ("canceling", "canceled") and normalized not in TERMINAL:
                normalized = "canceling"
        detail = status.get("StatusDetail") if isinstance(status, dict) else None
        return RunInfo(
            run_id=entity["Id"],
            status=normalized,
            aml_status=aml_status,
            created_at=_created(entity) or None,
            ended_at=(status.get("EndTime") if isinstance(status, dict) else None) or None,
            steps=steps,
            portal_url=self.settings.portal_url(entity["Id"]),
            error=str(detail)[:500] if normalized == "failed" and detail else None,
            extra=extra,
        )

    @staticmethod
    def _steps(children: list[dict]) -> list[StepStatus]:
        found = []
        for child in children:
            tags = child.get("tags") or {}
            name = (
                child.get("displayName")
                or child.get("name")
                or tags.get("azureml.nodeid")
                or child.get("runId")
            )
            status = normalize_status(child.get("status"))
            error = _error_message(child.get("error")) if status == "failed" else None
            found.append(StepStatus(str(name), status, error))
        return sorted(found, key=lambda s: (_STEP_ORDER.get(s.name, len(_STEP_ORDER)), s.name))


def _error_message(error: Any) -> str | None:
    """The message of a run-history `error` (an ErrorResponse: {"error": {"code", "message"}}), first line
    only, at most 300 characters."""
    if not isinstance(error, dict):
        return None
    inner = error.get("error") if isinstance(error.get("error"), dict) else error
    message = inner.get("message") or inner.get("code")
    if not message:
        return None
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return lines[0][:300] if lines else None


def _with_step_error(run: RunInfo) -> RunInfo:
    """A failed run's `error` says which step failed and why (`step predict failed: <its error>`), and names
    the step in `failed_step`, when run history has a failed step."""
    if run.status != "failed" or not run.steps:
        return run
    failed = next((step for step in run.steps if step.status == "failed"), None)
    if failed is None:
        return run
    said = f"step {failed.name} failed" + (f": {failed.error}" if failed.error else "")
    return dataclasses.replace(run, error=said, extra={**run.extra, "failed_step": failed.name})


def _tag_extras(tags: Any) -> dict[str, Any]:
    """What a run's tags tell its caller: the trigger, and the submission id that guards against duplicates."""
    extra: dict[str, Any] = {}
    if isinstance(tags, dict) and tags.get("trigger"):
        extra["trigger"] = tags["trigger"]
    if isinstance(tags, dict) and tags.get(SUBMISSION_TAG):
        extra["submission_id"] = tags[SUBMISSION_TAG]
    return extra


def _status_code(entity: dict) -> str | int | None:
    """The pipelines service's StatusCode (a word, or a legacy integer); None when it has none yet."""
    status = entity.get("Status")
    return status.get("StatusCode") if isinstance(status, dict) else status


def _require_run(entity: Any) -> dict:
    """A PipelineRunEntity as Azure ML should answer it; any other shape is Azure ML's fault (502), not a
    crash of ours (500)."""
    if not isinstance(entity, dict) or not isinstance(entity.get("Id"), str) or not entity["Id"]:
        raise ServiceError("Azure ML answered a pipeline run without an Id")
    return entity


def _created(entity: dict) -> str:
    status = entity.get("Status")
    created = status.get("CreationTime") if isinstance(status, dict) else None
    return str(created or entity.get("CreatedDate") or entity.get("CreationTime") or "")


__all__ = ["AzureMLBackend"]
