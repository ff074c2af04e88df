"""A small Azure ML REST client: the verbs of the pipelines and run-history services (see
docs/aml-v1-rest.md), sent through transport.py (ARM token, time budget, retries, typed errors). It imports no
azureml module, so the steady-state path stays fast."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import requests

from pipeline_def.azureml.odata import runs_filter
from pipeline_def.azureml.transport import NOT_TAKEN, CallBudget, Transport, json_body, path_segment
from pipeline_def.errors import AzureMLError, NotFound, ServiceError
from pipeline_def.settings import Settings

log = logging.getLogger(__name__)

# The tag that makes a submit idempotent: after an ambiguous failure the run is looked up by it.
SUBMISSION_TAG = "batchpred_submission_id"
MAX_QUERY_TOP = 100


class AzureMLClient:
    """The REST verbs of Azure ML for one workspace. Thread-safe; keeps one HTTP session and one token."""

    def __init__(
        self,
        settings: Settings,
        credential: Any = None,
        *,
        session: requests.Session | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self._transport = Transport(settings, credential, session=session, monotonic=monotonic, sleep=sleep)
        self._send = self._transport.send
        self._pipelines = f"{settings.api_base}/pipelines/v1.0{settings.workspace_path}"
        self._history = f"{settings.api_base}/history/v1.0{settings.workspace_path}"

    @property
    def credential(self) -> Any:
        """The azure-identity credential (DefaultAzureCredential unless one was given); the SDK shares it."""
        return self._transport.tokens.credential

    def token(self, deadline: float | None = None) -> str:
        """An ARM-audience bearer token, reused until five minutes before it expires. With a `deadline` (an
        HTTP request's), getting a new one gives up at the deadline whatever the credential is doing."""
        return self._transport.tokens.token(deadline)

    def _get_json(
        self, url: str, *, what: str, params: dict[str, str] | None = None, budget: CallBudget | None = None
    ) -> Any:
        """GET `url` (retried within the budget) and return its JSON body."""
        return json_body(self._send("GET", url, params=params, what=what, budget=budget), what)

    # ----- published pipelines and endpoints

    def get_endpoint_by_name(self, name: str) -> dict[str, Any] | None:
        """The PipelineEndpoint named `name`, or None when there is none."""
        try:
            return self._get_json(
                f"{self._pipelines}/PipelineEndpoints/Name",
                params={"Name": name},
                what=f"pipeline endpoint {name!r}",
            )
        except NotFound:
            return None

    def get_endpoint(self, endpoint_id: str) -> dict[str, Any]:
        return self._get_json(
            f"{self._pipelines}/PipelineEndpoints/Id/{path_segment(endpoint_id)}",
            what=f"endpoint {endpoint_id}",
        )

    def create_endpoint(
        self, name: str, pipeline_id: str, description: str = "", properties: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Create a PipelineEndpoint whose first (default) version is `pipeline_id`. Not retried blindly: the
        caller re-reads the endpoint by name after a failure."""
        body = {
            "Name": name,
            "Description": description,
            "PipelineId": pipeline_id,
            "Properties": properties or {},
        }
        response = self._send(
            "POST",
            f"{self._pipelines}/PipelineEndpoints/Create",
            json_body=body,
            what=f"creating endpoint {name!r}",
            retry_statuses=NOT_TAKEN,
            retry_no_answer=False,
        )
        return json_body(response, "creating the endpoint")

    def update_endpoint(self, entity: dict[str, Any]) -> dict[str, Any] | None:
        """Write a whole PipelineEndpoint entity back (add a version, change the default, enable or disable).

        Sent with `If-Match: <Etag read>` so a service that honours it answers 412 (EntityChanged) when
        someone else wrote in between, instead of silently dropping their version."""
        etag = entity.get("Etag")
        response = self._send(
            "PUT",
            f"{self._pipelines}/PipelineEndpoints/{path_segment(entity['Id'])}",
            json_body=entity,
            what=f"endpoint {entity.get('Name') or entity['Id']}",
            headers={"If-Match": str(etag)} if etag else None,
        )
        return json_body(response, "the endpoint update")

    def get_pipeline(self, pipeline_id: str) -> dict[str, Any]:
        return self._get_json(
            f"{self._pipelines}/Pipelines/{path_segment(pipeline_id)}",
            what=f"published pipeline {pipeline_id}",
        )

    def list_pipelines(self, active_only: bool = True) -> list[dict[str, Any]]:
        found = self._get_json(
            f"{self._pipelines}/Pipelines",
            params={"activeOnly": "true" if active_only else "false"},
            what="the published pipelines",
        )
        return list(found or [])

    def set_pipeline_status(self, pipeline_id: str, status: str) -> None:
        """Disable or re-enable a published pipeline (`"Disabled"` or `"Active"`)."""
        if status not in ("Disabled", "Active"):
            raise ValueError(f"unknown pipeline status {status!r}")
        self._send(
            "PUT",
            f"{self._pipelines}/Pipelines/{path_segment(pipeline_id)}/status",
            json_body=status,
            what=f"published pipeline {pipeline_id}",
        )

    # ----- runs

    def submit_to_endpoint(
        self, endpoint_id: str, experiment: str, parameters: dict[str, str], tags: dict[str, str]
    ) -> dict[str, Any]:
        """Start a run of the endpoint's default version and return its PipelineRunEntity (`Id` = run id).

        The submit carries a unique tag. When it may have reached the service but no answer came back
        (timeout, dropped connection, 5xx), run history is asked for the run of `experiment` with that tag
        (one bounded query) before trying again, so one call never starts two runs. A 429 or a refused
        connection never started anything: they are retried within the budget.
        """
        submission_id = uuid.uuid4().hex
        body: dict[str, Any] = {
            "ExperimentName": experiment,
            "RunSource": "API",
            "ParameterAssignments": {str(k): str(v) for k, v in parameters.items()},
            "tags": {**{str(k): str(v) for k, v in tags.items()}, SUBMISSION_TAG: submission_id},
        }
        budget = self._transport.budget()

        def find_submission(failure: AzureMLError) -> requests.Response | None:
            """The run the submission started, if run history has it, read back as the pipelines service's
            entity (what a submit answers)."""
            found = self.query_runs(
                experiment, runs_filter(tags={SUBMISSION_TAG: submission_id}), top=1, budget=budget
            )
            if not found:
                return None
            run_id = str(found[0].get("runId"))
            log.info("the submission reached Azure ML despite %s; run %s", failure.message, run_id)
            return self._send(
                "GET",
                f"{self._pipelines}/PipelineRuns/{path_segment(run_id)}",
                what=f"run {run_id}",
                budget=budget,
            )

        what = "the run submission"
        response = self._send(
            "POST",
            f"{self._pipelines}/PipelineRuns/PipelineEndpointSubmit/Id/{path_segment(endpoint_id)}",
            json_body=body,
            what=what,
            budget=budget,
            on_ambiguous=find_submission,
        )
        return json_body(response, what)

    def get_pipeline_run(self, run_id: str) -> dict[str, Any]:
        """The pipelines service's PipelineRunEntity of a run (`Status.StatusCode`: NotStarted ... Finished)."""
        return self._get_json(f"{self._pipelines}/PipelineRuns/{path_segment(run_id)}", what=f"run {run_id}")

    def query_runs(
        self,
        experiment: str,
        filter_expression: str,
        *,
        top: int,
        orderby: str = "CreatedUtc desc",
        budget: CallBudget | None = None,
    ) -> list[dict[str, Any]]:
        """At most `top` run-history RunDtos of `experiment` matching an OData filter (see odata.runs_filter),
        newest first: one page of `POST .../experiments/{name}/runs:query`, the call azureml-core makes for
        Run.list and Experiment.get_runs. What it reads is bounded by `top`, whatever the history. An
        experiment run history does not know yet has no runs."""
        if not 1 <= top <= MAX_QUERY_TOP:
            raise ValueError(f"top must be 1 to {MAX_QUERY_TOP}")
        try:
            response = self._send(
                "POST",
                f"{self._history}/experiments/{path_segment(experiment)}/runs:query",
                json_body={"filter": filter_expression, "orderby": orderby, "top": top},
                what=f"runs of experiment {experiment}",
                budget=budget,
            )
        except NotFound:
            return []
        body = json_body(response, "the run query")
        if isinstance(body, list):
            runs = body
        elif isinstance(body, dict):
            runs = body.get("value") or []
        else:
            raise ServiceError("Azure ML answered the run query with something that is not a page of runs")
        return [run for run in runs if isinstance(run, dict)][:top]

    def get_history_run(self, experiment: str, run_id: str) -> dict[str, Any]:
        """Run history's camelCase RunDto of a run. Its `status` moves to `CancelRequested` as soon as a
        cancel is asked for, while the pipelines service still says `Running`."""
        return self._get_json(
            f"{self._history}/experiments/{path_segment(experiment)}/runs/{path_segment(run_id)}",
            what=f"run {run_id} in run history",
        )

    def get_step_runs(self, experiment: str, run_id: str) -> list[dict[str, Any]]:
        """The run-history children (step runs) of a pipeline run, camelCase RunDto dicts."""
        url = f"{self._history}/experiments/{path_segment(experiment)}/runs/{path_segment(run_id)}/children"
        params: dict[str, str] = {"$orderby": "StartTimeUtc desc", "$top": "500"}
        children: list[dict[str, Any]] = []
        for _page in range(10):
            body = self._get_json(url, params=params, what=f"steps of run {run_id}") or {}
            if isinstance(body, list):
                return children + body
            children.extend(body.get("value") or [])
            token = body.get("continuationToken")
            if not token:
                break
            params = {**params, "$continuationToken": token}
        return children

    def tag_run(self, experiment: str, run_id: str, tags: dict[str, str]) -> None:
        """Add or overwrite tags of a run in run history (`PATCH .../runs/{runId}` with `{"tags": ...}`, what
        azureml-core's `Run.set_tags` sends); the run's other tags stay."""
        self._send(
            "PATCH",
            f"{self._history}/experiments/{path_segment(experiment)}/runs/{path_segment(run_id)}",
            json_body={"runId": run_id, "tags": {str(k): str(v) for k, v in tags.items()}},
            what=f"tags of run {run_id}",
        )

    def cancel_run(self, run_id: str) -> None:
        self._send(
            "DELETE", f"{self._pipelines}/PipelineRuns/{path_segment(run_id)}/Execution", what=f"run {run_id}"
        )


__all__ = ["MAX_QUERY_TOP", "SUBMISSION_TAG", "AzureMLClient"]
