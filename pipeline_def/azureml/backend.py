"""The Azure ML backend of the service: publish when stale, submit to the PipelineEndpoint, read runs and
their steps, cancel. Plain REST through AzureMLClient; the SDK is imported only to publish."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline_def.azureml import publisher
from pipeline_def.azureml.client import SUBMISSION_TAG, AzureMLClient
from pipeline_def.backend import PublishOutcome
from pipeline_def.errors import NotFound, RunNotFound, ServiceError
from pipeline_def.fingerprint import compute_fingerprint
from pipeline_def.runs import TERMINAL, RunInfo, StepStatus, normalize_status
from pipeline_def.settings import STEP_SCRIPTS_DIR, Settings
from pipeline_def.steps import STEPS

log = logging.getLogger(__name__)

_STEP_ORDER = {step.name: index for index, step in enumerate(STEPS)}


class AzureMLBackend:
    """The `Backend` of service.py on Azure ML. A steady-state tick costs four calls: endpoint and default
    pipeline (ensure_published), the pipeline's runs (find_active_run), the submit."""

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

    def _endpoint_target(self) -> PublishOutcome:
        """The endpoint and its default pipeline: from the last ensure_published, else one lookup."""
        if self._current is not None and self._current.endpoint_id:
            return self._current
        endpoint = self.client.get_endpoint_by_name(self.settings.endpoint_name)
        if endpoint is None:
            raise NotFound(
                f"pipeline endpoint {self.settings.endpoint_name!r} does not exist yet: "
                "run `python -m pipeline_def publish` (or let the timer publish it)",
                status=404,
            )
        return PublishOutcome(
            False,
            publisher.default_pipeline_id(endpoint),
            None,
            endpoint["Id"],
            publisher.previous_pipeline_id(endpoint),
        )

    def find_active_run(self) -> RunInfo | None:
        target = self._endpoint_target()
        if not target.pipeline_id:
            return None
        runs = self.client.list_pipeline_runs(target.pipeline_id)
        if not runs and target.previous_pipeline_id:
            # The default pipeline has never run, so it was published since the last run: a run of the
            # pipeline it superseded may still be going, and it is a run of this endpoint too. This costs a
            # call only until the new pipeline's first run.
            try:
                runs = self.client.list_pipeline_runs(target.previous_pipeline_id)
            except NotFound:
                runs = []
        active = [run for run in runs if not self._run_info(run).terminal]
        if not active:
            return None
        return self._run_info(max(active, key=_created))

    def submit(self, parameters: dict[str, str], tags: dict[str, str]) -> RunInfo:
        target = self._endpoint_target()
        entity = self.client.submit_to_endpoint(
            target.endpoint_id,
            self.settings.experiment_name,
            parameters,
            tags,
            pipeline_id_for_dedupe=target.pipeline_id,
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
        return self._run_info(entity, steps=self._steps(children), history_status=history_status)

    def list_runs(self, limit: int) -> list[RunInfo]:
        try:
            endpoint = self.client.get_endpoint_by_name(self.settings.endpoint_name)
        except NotFound:
            endpoint = None
        if endpoint is None:
            return []
        versions = sorted(
            endpoint.get("PipelineVersionList") or [],
            key=lambda v: int(v["Version"]) if str(v.get("Version", "")).isdigit() else -1,
            reverse=True,
        )
        runs: list[dict] = []
        seen: set[str] = set()
        # Newest version first: an older version was disabled when it was superseded, so its runs are older;
        # stop as soon as there are enough.
        for version in versions:
            pipeline_id = version.get("PipelineId")
            if not pipeline_id or pipeline_id in seen:
                continue
            seen.add(pipeline_id)
            try:
                runs.extend(self.client.list_pipeline_runs(pipeline_id))
            except NotFound:
                continue
            if len(runs) >= limit:
                break
        runs.sort(key=_created, reverse=True)
        return [self._run_info(run) for run in runs[:limit]]

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

    # ----- mapping Azure ML entities to RunInfo

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
        extra: dict[str, Any] = {}
        if history_status is not None:
            extra["aml_history_status"] = history_status
            # Only a run the pipelines service has not ended can be canceling: if it finished or failed
            # before the cancel took effect, that outcome stands. Run history may also reach Canceled
            # first; the run is still winding down until the pipelines service agrees.
            if normalize_status(history_status) in ("canceling", "canceled") and normalized not in TERMINAL:
                normalized = "canceling"
        detail = status.get("StatusDetail") if isinstance(status, dict) else None
        tags = entity.get("tags") or entity.get("Tags") or {}
        if isinstance(tags, dict) and tags.get("trigger"):
            extra["trigger"] = tags["trigger"]
        if isinstance(tags, dict) and tags.get(SUBMISSION_TAG):
            extra["submission_id"] = tags[SUBMISSION_TAG]
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
            found.append(StepStatus(str(name), normalize_status(child.get("status"))))
        return sorted(found, key=lambda s: (_STEP_ORDER.get(s.name, len(_STEP_ORDER)), s.name))


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
