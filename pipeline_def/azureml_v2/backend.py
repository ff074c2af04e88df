"""The Azure ML v2 backend of the service, plain REST through AzureMLV2Client: register the components when stale
(timer, CLI), submit a pipeline job of the registered pipeline component under a name the app chooses (the
idempotency key), resolve `latest` data and model at submit time, read a job and its steps, list and look back
through run history's bounded query on the `batchpred_pipeline` tag, cancel. No azureml, no azure.ai.ml."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from pipeline_def.azureml.history_run import HistoryRun
from pipeline_def.azureml.odata import ACTIVE_HISTORY_STATUSES, runs_filter
from pipeline_def.azureml_v2 import components, publisher
from pipeline_def.azureml_v2.client import AzureMLV2Client, Job, is_already_exists
from pipeline_def.backend import (
    LookBack,
    OccurrenceRun,
    Progress,
    Published,
    Target,
    follow_run,
    look_back_through,
)
from pipeline_def.errors import (
    AzureMLError,
    InvalidRequest,
    NotFound,
    NotPublished,
    RunNotFound,
)
from pipeline_def.runs import (
    TERMINAL,
    RunInfo,
    history_error,
    history_run_info,
    is_valid_run_id,
    normalize_status,
    with_predictions,
    with_steps,
)
from pipeline_def.settings import STEP_SCRIPTS_DIR, Settings
from pipeline_def.steps import STEPS, Step

log = logging.getLogger(__name__)

# The tags every job carries: what list and look back query, and what the job ran.
PIPELINE_TAG = "batchpred_pipeline"
FINGERPRINT_TAG = "batchpred_fingerprint"
MODEL_TAG = "batchpred_model"
DATA_TAG = "batchpred_data"
# How often `run` reads a job it waits for.
POLL_SECONDS = 15.0
_MAX_STEM = 200


_STEP_NAMES = tuple(step.name for step in STEPS)


class AzureMLV2Backend:
    """The `Backend` of service.py on Azure ML v2. It keeps nothing between calls: the pipeline component
    version a submit runs travels in the Target's handle (a publisher.PipelineVersion)."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: AzureMLV2Client | None = None,
        step_folder: Path = STEP_SCRIPTS_DIR,
        sleep: Callable[[float], None] = time.sleep,
        poll_seconds: float = POLL_SECONDS,
        new_suffix: Callable[[], str] = lambda: uuid.uuid4().hex[:12],
    ) -> None:
        self.settings = settings
        self.client = client or AzureMLV2Client(settings)
        self.step_folder = Path(step_folder)
        self.steps: tuple[Step, ...] = STEPS
        self._sleep = sleep
        self._poll_seconds = poll_seconds
        self._new_suffix = new_suffix

    def current_fingerprint(self) -> str:
        """The v2 fingerprint of the step folder, hashed anew on each call (a millisecond)."""
        return publisher.v2_fingerprint(self.settings, self.step_folder)

    # ----- published

    def ensure_published(self) -> Published:
        version, published = publisher.ensure_published(
            self.client, self.settings, self.current_fingerprint(), folder=self.step_folder, steps=self.steps
        )
        return Published(_target(version), published)

    def published_target(self) -> Target:
        """The pipeline component version a submit runs now, current or the newest registered; never
        registers anything."""
        found = publisher.read_published(self.client, self.settings, self.current_fingerprint(), self.steps)
        if isinstance(found, publisher.Unpublished):
            raise NotPublished(found.reason)
        return _target(found)

    # ----- submit

    def job_name(self, tags: dict[str, str]) -> str:
        """The job's name, the key that makes a submit idempotent: a scheduled tick's is its occurrence's
        (`{endpoint}-timer-20261201t013000z`), so every tick of one occurrence, on any instance, names one
        job; a past-due tick, a CLI or an HTTP run gets a random suffix (one per submit, kept on retries)."""
        trigger = re.sub(r"[^a-z0-9]", "", (tags.get("trigger") or "run").lower())[:20] or "run"
        stem = f"{self.settings.endpoint_name[:_MAX_STEM]}-{trigger}".lower()
        occurrence = re.sub(r"[^0-9a-z]", "", (tags.get("scheduled_for") or "").lower())
        if trigger == "timer" and occurrence and tags.get("past_due") != "true":
            name = f"{stem}-{occurrence}"
        else:
            name = "-".join(p for p in (stem, occurrence, self._new_suffix()) if p)
        assert is_valid_run_id(name), name
        return name

    def submit(self, target: Target, parameters: dict[str, str], tags: dict[str, str]) -> RunInfo:
        """Resolve the data and model versions, then PUT the job under the name job_name gives."""
        return self._put(target, parameters, tags)[0]

    def submit_for_occurrence(
        self, target: Target, tags: dict[str, str], scheduled_for: str
    ) -> OccurrenceRun:
        """The occurrence's one job: every tick of `scheduled_for` (not past due) PUTs the same job name, so
        Azure ML starts one job and each tick gets it; `joined` when the job was there already."""
        run, created = self._put(target, {}, {**tags, "scheduled_for": scheduled_for})
        return OccurrenceRun(run, joined=not created)

    def _put(self, target: Target, parameters: dict[str, str], tags: dict[str, str]) -> tuple[RunInfo, bool]:
        """Submit, and say whether this call created the job. A retry of the PUT, or another instance's PUT
        of the same name, finds the job there (identical: 200; otherwise "already exists"): that job is the
        answer."""
        version = _pipeline_version(target)
        name = self.job_name(tags)
        model_name, model_version, model_id = self._resolve_model(parameters.get("model_version"))
        data_version, data_id = self._resolve_data()
        literals = {
            "dataset_name": self.settings.dataset_name,
            "dataset_version": data_version,
            "model_version": model_version,
            "run_id": name,
            "fingerprint": version.version,
        }
        literals.update(
            {
                k: parameters[k]
                for k in ("sample_size", "accept_drift", components.NODE_COUNT_INPUT)
                if k in parameters
            }
        )
        all_tags = {
            **tags,
            PIPELINE_TAG: self.settings.endpoint_name,
            FINGERPRINT_TAG: version.version,
            MODEL_TAG: f"{model_name}:{model_version}",
            DATA_TAG: f"{self.settings.dataset_name}:{data_version}",
        }
        body = components.job_body(
            self.settings,
            version.component_id,
            name,
            components.JobInputs(data_id, model_id, literals),
            all_tags,
            display_name=f"{self.settings.endpoint_name} ({tags.get('trigger') or 'run'})",
        )
        budget = self.client.budget()
        try:
            job, created = self.client.put_job(name, body, budget)
        except AzureMLError as error:
            if not is_already_exists(error):
                raise
            log.info("job %s exists already (a retry, or another tick of the same occurrence)", name)
            job, created = self.client.get_job(name, budget), False
        return self._job_info(job), created

    def _resolve_model(self, wanted: str | None) -> tuple[str, str, str]:
        """(name, version, ARM id) of the model a run uses: `latest` is the most recently created version;
        an explicit version that is not registered is the caller's mistake and submits nothing."""
        name = self.settings.model_name
        wanted = wanted or self.settings.model_version
        if wanted == "latest":
            found = self.client.latest_model(name)
            if found is None:
                raise NotFound(f"model {name} has no registered version (AML_MODEL_NAME)")
        else:
            found = self.client.get_version("models", name, wanted)
            if found is None:
                raise InvalidRequest(
                    f"model version {wanted} of {name} is not registered; nothing was submitted"
                )
        version = found.name or wanted
        return name, version, f"{self.settings.workspace_path}/models/{name}/versions/{version}"

    def _resolve_data(self) -> tuple[str, str]:
        """(version, ARM id) of the newest version of the data asset (its container's latestVersion)."""
        name = self.settings.dataset_name
        container = self.client.get_container("data", name)
        latest = container.latest_version if container else None
        if not latest:
            raise NotFound(
                f"data asset {name} is not registered (AML_DATASET_NAME): register the CSV as a uri_file "
                "data asset (docs/migrate-to-v2.md)"
            )
        return latest, f"{self.settings.workspace_path}/data/{name}/versions/{latest}"

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

    # ----- reading runs

    def get_run(self, run_id: str) -> RunInfo:
        """The job (ARM: status, tags), its times and error (run history) and its steps (run-history
        children). A node of a pipeline (ARM answers it without properties) is not a run of this app."""
        try:
            job = self.client.get_job(run_id)
        except NotFound:
            raise RunNotFound(run_id) from None
        if job.child:
            raise RunNotFound(run_id)
        experiment = job.experiment or self.settings.experiment_name
        try:
            history: HistoryRun | None = self.client.get_history_run(experiment, run_id)
        except NotFound:
            history = None  # run history has not seen the job yet
        children = self.client.find_step_runs(experiment, run_id) or []
        info = self._job_info(job, history)
        return with_predictions(
            with_steps(info, children, self.client.get_step_log, _STEP_NAMES),
            children,
            self.settings.datastore_url,
        )

    def list_runs(self, limit: int) -> list[RunInfo]:
        """The newest `limit` jobs of this endpoint (tagged batchpred_pipeline), newest first: one bounded
        run-history query whatever the history."""
        dtos = self.client.query_runs(
            self.settings.experiment_name,
            runs_filter(tags={PIPELINE_TAG: self.settings.endpoint_name}),
            top=limit,
        )
        return [self._history_run_info(dto) for dto in dtos]

    def look_back(self, target: Target, need_active: bool) -> LookBack:
        """The job still going (when `need_active`) and the newest scheduled job of this endpoint, one run at
        most per query whatever the history; a failed previous job comes with its steps."""
        mine = {PIPELINE_TAG: self.settings.endpoint_name}
        return look_back_through(
            self._newest_run,
            runs_filter(tags=mine, any_of_tags={"trigger": "timer"}, statuses=ACTIVE_HISTORY_STATUSES),
            runs_filter(tags={**mine, "trigger": "timer"}),
            need_active,
            self._with_steps,
        )

    def cancel(self, run_id: str) -> None:
        try:
            self.client.cancel_job(run_id)
        except NotFound:
            raise RunNotFound(run_id) from None

    def _newest_run(self, filter_expression: str) -> RunInfo | None:
        found = self.client.query_runs(self.settings.experiment_name, filter_expression, top=1)
        return self._history_run_info(found[0]) if found else None

    def _with_steps(self, run: RunInfo) -> RunInfo:
        """`run` (from run history) with its steps, and the failing step's error when it failed."""
        children = self.client.find_step_runs(self.settings.experiment_name, run.run_id)
        return run if children is None else with_steps(run, children, self.client.get_step_log, _STEP_NAMES)

    # ----- mapping Azure ML's answers to RunInfo

    def _job_info(self, job: Job, history: HistoryRun | None = None) -> RunInfo:
        """A run as the ARM job says it (`aml_status` is the JobStatus word), with run history's times and
        error when it was read (`aml_history_status`)."""
        normalized = normalize_status(job.status)
        history = history or HistoryRun()
        history_status = history.status
        if normalized not in TERMINAL and normalize_status(history_status) in ("canceling", "canceled"):
            normalized = "canceling"  # run history knows of a cancel before the job has wound down
        return RunInfo(
            run_id=job.name,
            status=normalized,
            aml_status=job.status,
            created_at=history.created_utc or job.created_at,
            ended_at=history.end_time_utc,
            portal_url=job.studio_url or self.settings.portal_url(job.name),
            error=history_error(history.error) if normalized == "failed" else None,
            trigger=job.tags.get("trigger"),
            aml_history_status=history_status or None,
        )

    def _history_run_info(self, dto: HistoryRun) -> RunInfo:
        """A run as run history's RunDto describes it (the answer of the run query), linked to its studio page
        (the RunDto's own link when it gives one)."""
        return history_run_info(dto, lambda run_id: dto.portal_url or self.settings.portal_url(run_id))


def _target(version: publisher.PipelineVersion) -> Target:
    return Target(version=version.version, current=version.current, handle=version)


def _pipeline_version(target: Target) -> publisher.PipelineVersion:
    if not isinstance(target.handle, publisher.PipelineVersion):
        raise TypeError(f"not a target of the Azure ML v2 backend: {target!r}")
    return target.handle


__all__ = ["DATA_TAG", "FINGERPRINT_TAG", "MODEL_TAG", "PIPELINE_TAG", "AzureMLV2Backend"]
