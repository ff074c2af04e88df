"""A small Azure ML REST client: the verbs of the pipelines service (see docs/aml-v1-rest.md), and run
history's from run_history.py, sent through transport.py (ARM token, time budget, retries, typed errors). It
imports no azureml module, so the steady-state path stays fast."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Unpack

import requests

from pipeline_def.azureml.odata import runs_filter
from pipeline_def.azureml.run_history import MAX_QUERY_TOP, RunHistory
from pipeline_def.azureml.transport import NOT_TAKEN, CallBudget, TransportOptions, json_body, path_segment
from pipeline_def.errors import AzureMLError, NotFound, ServiceError
from pipeline_def.settings import Settings

log = logging.getLogger(__name__)

# The tag that makes a submit idempotent: after an ambiguous failure the run is looked up by it.
SUBMISSION_TAG = "batchpred_submission_id"


@dataclass(frozen=True)
class EndpointVersion:
    """One entry of an endpoint's PipelineVersionList: its version (a number as text, e.g. "0"; None when it
    has none) and the published pipeline behind it."""

    version: str | None
    pipeline_id: str | None

    @property
    def number(self) -> int | None:
        """The version as a number; None when it is not one (such a version is never ranked)."""
        return int(self.version) if self.version is not None and self.version.isdigit() else None


@dataclass(frozen=True)
class Endpoint:
    """A PipelineEndpointEntity (PascalCase, docs/aml-v1-rest.md) as the app reads it: `status` is its
    EntityStatus (None when absent, which means active), `default_version` its DefaultVersion ("" when it has
    none), `versions` its PipelineVersionList."""

    id: str
    name: str | None
    status: str | None
    default_version: str
    versions: tuple[EndpointVersion, ...]
    etag: str | None
    # The whole entity as the service answered it, kept on purpose for one reader: update_endpoint. The service
    # replaces an endpoint with what a PUT sends, so a write sends this back unchanged except for what the app
    # changes. Nothing else reads it.
    wire: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_wire(cls, entity: Any) -> Endpoint:
        """Parse a PipelineEndpointEntity. One that is not an object or has no Id is Azure ML's fault
        (ServiceError, 502), as a pipeline run without an Id is; every other field may be missing."""
        if not isinstance(entity, dict) or not isinstance(entity.get("Id"), str) or not entity["Id"]:
            raise ServiceError("Azure ML answered a pipeline endpoint without an Id")
        items = entity.get("PipelineVersionList") or []
        etag, status, name = entity.get("Etag"), entity.get("EntityStatus"), entity.get("Name")
        return cls(
            id=entity["Id"],
            name=str(name) if name else None,
            status=None if status is None else str(status),
            default_version=str(entity.get("DefaultVersion") or ""),
            versions=tuple(
                EndpointVersion(
                    version=None if item.get("Version") is None else str(item["Version"]),
                    pipeline_id=str(item["PipelineId"]) if item.get("PipelineId") else None,
                )
                for item in items
                if isinstance(item, dict)
            ),
            etag=str(etag) if etag else None,
            wire=dict(entity),
        )


@dataclass(frozen=True)
class PublishedPipelineInfo:
    """A published pipeline (PipelineEntity) as the app reads it: its Id, its Version (the fingerprint it was
    published with) and its EntityStatus (None when absent, which means active); each None when missing."""

    id: str | None
    version: str | None
    status: str | None

    @classmethod
    def from_wire(cls, entity: Any) -> PublishedPipelineInfo:
        """Parse a PipelineEntity; one that is not an object is Azure ML's fault (ServiceError, 502)."""
        if not isinstance(entity, dict):
            raise ServiceError("Azure ML answered a published pipeline with something that is not one")
        pipeline_id, version, status = entity.get("Id"), entity.get("Version"), entity.get("EntityStatus")
        return cls(
            id=str(pipeline_id) if pipeline_id else None,
            version=None if version is None else str(version),
            status=None if status is None else str(status),
        )


@dataclass(frozen=True)
class PipelineRunInfo:
    """A PipelineRunEntity (what a submit and a run read answer, docs/aml-v1-rest.md) as the app reads it:
    `status_code` is its Status.StatusCode as text (a word, or a legacy integer "0".."4"; None when it has
    none yet), `experiment` its RunHistoryExperimentName; every field but `id` None (tags empty) when
    missing."""

    id: str
    status_code: str | None = None
    status_detail: str | None = None
    created: str | None = None
    end_time: str | None = None
    experiment: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_wire(cls, entity: Any) -> PipelineRunInfo:
        """Parse a PipelineRunEntity. One that is not an object or has no Id is Azure ML's fault (ServiceError,
        502). A Status that is not an object is taken as the code itself; `created` is Status.CreationTime,
        else the entity's CreatedDate or CreationTime; an empty field or tag value is None or left out."""
        if not isinstance(entity, dict) or not isinstance(entity.get("Id"), str) or not entity["Id"]:
            raise ServiceError("Azure ML answered a pipeline run without an Id")
        status = entity.get("Status")
        details = status if isinstance(status, dict) else {}
        code = status.get("StatusCode") if isinstance(status, dict) else status
        detail, end = details.get("StatusDetail"), details.get("EndTime")
        created = details.get("CreationTime") or entity.get("CreatedDate") or entity.get("CreationTime")
        experiment = entity.get("RunHistoryExperimentName")
        tags = entity.get("tags") or entity.get("Tags")
        return cls(
            id=entity["Id"],
            status_code=None if code is None else str(code),
            status_detail=str(detail) if detail else None,
            created=str(created) if created else None,
            end_time=str(end) if end else None,
            experiment=str(experiment) if experiment else None,
            tags={str(k): str(v) for k, v in tags.items() if v} if isinstance(tags, dict) else {},
        )


class AzureMLClient(RunHistory):
    """The REST verbs of Azure ML for one workspace: the pipelines service's here, run history's from
    RunHistory. Thread-safe; keeps one HTTP session and one token."""

    def __init__(
        self, settings: Settings, credential: Any = None, **options: Unpack[TransportOptions]
    ) -> None:
        super().__init__(settings, credential, **options)
        self._pipelines = f"{settings.api_base}/pipelines/v1.0{settings.workspace_path}"

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

    def get_endpoint_by_name(self, name: str) -> Endpoint | None:
        """The PipelineEndpoint named `name`, or None when there is none (or the answer is empty)."""
        try:
            found = self._get_json(
                f"{self._pipelines}/PipelineEndpoints/Name",
                params={"Name": name},
                what=f"pipeline endpoint {name!r}",
            )
        except NotFound:
            return None
        return None if found is None else Endpoint.from_wire(found)

    def get_endpoint(self, endpoint_id: str) -> Endpoint:
        return Endpoint.from_wire(
            self._get_json(
                f"{self._pipelines}/PipelineEndpoints/Id/{path_segment(endpoint_id)}",
                what=f"endpoint {endpoint_id}",
            )
        )

    def create_endpoint(
        self, name: str, pipeline_id: str, description: str = "", properties: dict[str, str] | None = None
    ) -> Endpoint:
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
        return Endpoint.from_wire(json_body(response, "creating the endpoint"))

    def update_endpoint(
        self, endpoint: Endpoint, *, status: str | None = None, new_default: EndpointVersion | None = None
    ) -> None:
        """Write the endpoint back (PUT of the whole entity): `new_default` added to its versions and made its
        default, and its EntityStatus set to `status`, each when given. The rest is the entity as it was read
        (Endpoint.wire), since the service keeps only what it is sent.

        Sent with `If-Match: <Etag read>` so a service that honours it answers 412 (EntityChanged) when
        someone else wrote in between, instead of silently dropping their version."""
        entity = dict(endpoint.wire)
        if new_default is not None:
            added = {"Version": new_default.version, "PipelineId": new_default.pipeline_id}
            entity["PipelineVersionList"] = [*(entity.get("PipelineVersionList") or []), added]
            entity["DefaultVersion"] = new_default.version
        if status is not None:
            entity["EntityStatus"] = status
        response = self._send(
            "PUT",
            f"{self._pipelines}/PipelineEndpoints/{path_segment(endpoint.id)}",
            json_body=entity,
            what=f"endpoint {endpoint.name or endpoint.id}",
            headers={"If-Match": endpoint.etag} if endpoint.etag else None,
        )
        json_body(response, "the endpoint update")  # an answer that is not JSON is still a ServiceError

    def get_pipeline(self, pipeline_id: str) -> PublishedPipelineInfo:
        return PublishedPipelineInfo.from_wire(
            self._get_json(
                f"{self._pipelines}/Pipelines/{path_segment(pipeline_id)}",
                what=f"published pipeline {pipeline_id}",
            )
        )

    def list_pipelines(self, active_only: bool = True) -> list[PublishedPipelineInfo]:
        found = self._get_json(
            f"{self._pipelines}/Pipelines",
            params={"activeOnly": "true" if active_only else "false"},
            what="the published pipelines",
        )
        return [PublishedPipelineInfo.from_wire(pipeline) for pipeline in found or []]

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
    ) -> PipelineRunInfo:
        """Start a run of the endpoint's default version and return its PipelineRunEntity, parsed.

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
            run_id = str(found[0].run_id)
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
        return PipelineRunInfo.from_wire(json_body(response, what))

    def get_pipeline_run(self, run_id: str) -> PipelineRunInfo:
        """The pipelines service's PipelineRunEntity of a run (`Status.StatusCode`: NotStarted ... Finished)."""
        return PipelineRunInfo.from_wire(
            self._get_json(f"{self._pipelines}/PipelineRuns/{path_segment(run_id)}", what=f"run {run_id}")
        )

    def cancel_run(self, run_id: str) -> None:
        self._send(
            "DELETE", f"{self._pipelines}/PipelineRuns/{path_segment(run_id)}/Execution", what=f"run {run_id}"
        )


__all__ = [
    "MAX_QUERY_TOP",
    "SUBMISSION_TAG",
    "AzureMLClient",
    "Endpoint",
    "EndpointVersion",
    "PipelineRunInfo",
    "PublishedPipelineInfo",
]
