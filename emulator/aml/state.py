"""The fake Azure ML service's state: published pipelines, endpoints, runs and their step runs, with the
status vocabularies of the pipelines service, run history and graph nodes kept apart as the real ones are."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

DEFAULT_STEP_NAMES = ("fetch_data", "predict", "save_predictions")

# pipelines service (PipelineRunEntity.Status.StatusCode)
PIPELINE_CODES = ("NotStarted", "Running", "Failed", "Finished", "Canceled")
# pipelines-service code -> run-history status
HISTORY_OF_PIPELINE = {
    "NotStarted": "NotStarted",
    "Running": "Running",
    "Finished": "Completed",
    "Failed": "Failed",
    "Canceled": "Canceled",
}
HISTORY_STATUSES = (
    "NotStarted",
    "Queued",
    "Preparing",
    "Provisioning",
    "Starting",
    "Running",
    "Finalizing",
    "CancelRequested",
    "Completed",
    "Failed",
    "Canceled",
    "NotResponding",
    "Unapproved",
    "Pausing",
    "Paused",
)
HISTORY_TERMINAL = frozenset({"Completed", "Failed", "Canceled"})
# run-history status of a step -> graph node StatusCode (Graph/AllNodes/Status)
NODE_OF_HISTORY = {
    "NotStarted": "NotStarted",
    "Queued": "Queued",
    "Preparing": "Queued",
    "Provisioning": "Queued",
    "Starting": "Queued",
    "Unapproved": "Queued",
    "Running": "Running",
    "Finalizing": "Running",
    "NotResponding": "Running",
    "Pausing": "Running",
    "Paused": "Running",
    "CancelRequested": "Running",
    "Completed": "Finished",
    "Failed": "Failed",
    "Canceled": "Canceled",
}
# a run-history spelling given to set_run_status -> the pipelines-service code it implies
PIPELINE_OF_HISTORY = {
    "NotStarted": "NotStarted",
    "Queued": "NotStarted",
    "Preparing": "NotStarted",
    "Provisioning": "NotStarted",
    "Starting": "NotStarted",
    "Unapproved": "NotStarted",
    "Running": "Running",
    "Finalizing": "Running",
    "NotResponding": "Running",
    "Pausing": "Running",
    "Paused": "Running",
    "Completed": "Finished",
    "Failed": "Failed",
    "Canceled": "Canceled",
}
ENTITY_STATUSES = ("Active", "Deprecated", "Disabled")
ARM_AUDIENCES = frozenset(
    {
        "https://management.azure.com",
        "https://management.azure.com/",
        "https://management.core.windows.net",
        "https://management.core.windows.net/",
    }
)

# The Azure ML audience: azure-ai-ml's `x-azureml-token` on a pipeline job PUT, the batch scoring URI.
ML_AUDIENCES = frozenset({"https://ml.azure.com", "https://ml.azure.com/"})


def new_id() -> str:
    return str(uuid.uuid4())


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Clock:
    """UTC time that never repeats a value, so entities created in one test have a strict order."""

    def __init__(self, now: Any = None) -> None:
        self._now = now or (lambda: datetime.now(UTC))
        self._last: datetime | None = None

    def __call__(self) -> datetime:
        moment = self._now()
        if self._last is not None and moment <= self._last:
            moment = self._last + timedelta(milliseconds=1)
        self._last = moment
        return moment


@dataclass
class FakeStep:
    """One step run of a pipeline run (a run-history child with its graph node)."""

    name: str
    node_id: str
    run_id: str
    status: str = "NotStarted"  # run-history spelling
    run_number: int = 0
    created: datetime | None = None
    started: datetime | None = None
    ended: datetime | None = None
    # a failed step's error message: what its own process posted to run history (executed runs: azureml-core's
    # RunStatusContext), else its last `error: ...` line, or what a test set
    error_message: str | None = None
    # the RootError the step's process posted with its Error event, as sent (code, message, detailsUri, ...)
    error: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)  # every run-history event it posted
    log_path: Path | None = None  # executed runs: the step's stdout and stderr (70_driver_log.txt)
    # what the step's own process added through run history (PATCH): tags, properties, and the rest of the
    # body as sent (e.g. the dataset lineage the SDK records when a step reads a registered dataset)
    tags: dict[str, str] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)
    patches: list[dict[str, Any]] = field(default_factory=list)

    @property
    def node_status(self) -> str:
        return NODE_OF_HISTORY.get(self.status, "Running")


@dataclass
class FakeRun:
    """A pipeline run. `status` is the pipelines-service code; `history_status` what run history says."""

    run_id: str
    pipeline_id: str
    experiment: str
    created: datetime
    tags: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)
    status: str = "NotStarted"
    history_status: str = "NotStarted"
    steps: list[FakeStep] = field(default_factory=list)
    description: str | None = None
    run_source: str = "SDK"
    run_type: str = "SDK"
    properties: dict[str, str] = field(default_factory=dict)
    endpoint_id: str | None = None
    continue_on_step_failure: bool | None = None
    graph_id: str | None = None
    started: datetime | None = None
    ended: datetime | None = None
    cancel_requested: bool = False
    error_message: str | None = None
    submission: dict[str, Any] | None = None  # the body the run was submitted with, as sent
    run_number: int = 0

    @property
    def id(self) -> str:
        return self.run_id

    @property
    def entity(self) -> dict[str, Any]:
        """The PipelineRunEntity the pipelines service returns for this run."""
        return {
            "Id": self.run_id,
            "Description": self.description,
            "Status": {
                "StatusCode": self.status,
                "StatusDetail": None,
                "CreationTime": iso(self.created),
                "EndTime": iso(self.ended),
            },
            "GraphId": self.graph_id,
            "IsSubmitted": True,
            "HasErrors": self.status == "Failed",
            "HasWarnings": False,
            "UploadState": "Completed",
            "ParameterAssignments": dict(self.parameters),
            "DataSetDefinitionValueAssignments": {},
            "RunHistoryExperimentName": self.experiment,
            "PipelineId": self.pipeline_id,
            "RunSource": self.run_source,
            "RunType": self.run_type,
            "TotalRunSteps": len(self.steps),
            "ScheduleId": None,
            "tags": dict(self.tags),
            "Properties": dict(self.properties),
            "EntityStatus": "Active",
            "Etag": f'"{self.run_id[:8]}-{len(self.status)}"',
            "CreatedDate": iso(self.created),
            "LastModifiedDate": iso(self.ended or self.started or self.created),
        }

    def history_dto(self, workspace_id: str) -> dict[str, Any]:
        """The run-history RunDto of the pipeline run."""
        error = None
        if self.history_status == "Failed":
            error = {
                "error": {
                    "code": "UserError",
                    "message": self.error_message or "A step of the pipeline failed.",
                    "details": [],
                    "innerError": None,
                },
                "correlation": None,
            }
        return run_history_dto(
            self,
            root=self,
            run_uuid=self.run_id,
            name=None,
            display_name=self.description or self.run_id,
            status=self.history_status,
            run_type="azureml.PipelineRun",
            # As a real pipeline run's record shows them (Event Grid's RunStatusChanged carries the same
            # runTags and runProperties): the published pipeline's id both as a tag and as a property.
            tags={
                **self.tags,
                "azureml.pipelineComponent": "pipelinerun",
                "azureml.pipelineid": self.pipeline_id,
            },
            properties={
                **self.properties,
                "azureml.runsource": "azureml.PipelineRun",
                "runSource": self.run_source,
                "runType": self.run_type,
                "azureml.parameters": _json_dumps(self.parameters),
                "azureml.pipelineid": self.pipeline_id,
            },
            placement={"target": None},
            error=error,
            workspace_id=workspace_id,
        )

    def step_dto(self, step: FakeStep) -> dict[str, Any]:
        """The run-history RunDto of one step run (a child of the pipeline run)."""
        return step_run_dto(
            step,
            root=self,
            run_uuid=step.run_id,
            properties={"StepType": "PythonScriptStep"},
            placement={"target": "cpu-cluster"},
            error=(
                {
                    "error": step.error
                    or {
                        "code": "UserError",
                        "message": step.error_message or f"{step.name} failed",
                        "details": [],
                    },
                    "correlation": None,
                }
                if step.status == "Failed"
                else None
            ),
        )

    def node_statuses(self) -> dict[str, dict[str, Any]]:
        """What Graph/AllNodes/Status returns: {nodeId: TaskStatus}."""
        return {
            step.node_id: {
                "StatusCode": step.node_status,
                "StatusDetail": None,
                "CreationTime": iso(step.created),
                "ScheduleTime": None,
                "StartTime": iso(step.started),
                "EndTime": iso(step.ended),
                "RequestId": None,
                "RunId": step.run_id,
                "RealTimeLogPath": None,
                "HasWarnings": False,
                "ReuseInfo": None,
            }
            for step in self.steps
        }

    def step(self, name: str) -> FakeStep:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"run {self.run_id} has no step {name!r}")


def run_history_dto(
    run: FakeRun | FakeStep,
    *,
    root: FakeRun,
    run_uuid: str,
    name: str | None,
    display_name: str,
    status: str,
    run_type: str,
    tags: dict[str, str],
    properties: dict[str, str],
    placement: dict[str, Any],
    error: dict[str, Any] | None,
    workspace_id: str | None = None,
) -> dict[str, Any]:
    """A run-history RunDto: of the pipeline run `root` itself (`run is root`: with its description, creator and
    portal URL in `workspace_id`), or of one of its step runs. `placement` is where it ran (`target`, and for
    v2 `compute`)."""
    is_root = run is root
    dto: dict[str, Any] = {
        "runId": run.run_id,
        "runNumber": run.run_number,
        "heartbeatEnabled": False,
        "runUuid": run_uuid,
        "rootRunId": root.run_id,
        "parentRunId": None if is_root else root.run_id,
        "experimentId": _experiment_id(root.experiment),
        "name": name,
        "displayName": display_name,
        "status": status,
        "runType": run_type,
        "createdUtc": iso(run.created),
        "startTimeUtc": iso(run.started),
        "endTimeUtc": iso(run.ended),
        "tags": tags,
        "properties": properties,
        **placement,
        "error": error,
    }
    if is_root:
        dto["warnings"] = None
    dto["hidden"] = False
    dto["dataContainerId"] = f"dcid.{run.run_id}"
    if is_root:
        dto["description"] = root.description
        dto["userId"] = "00000000-0000-0000-0000-0000000000aa"
        dto["createdBy"] = {
            "userName": "fake-identity",
            "userObjectId": "00000000-0000-0000-0000-0000000000aa",
        }
        dto["portalUrl"] = studio_url(root.run_id, workspace_id)
    return dto


def step_run_dto(
    step: FakeStep,
    *,
    root: FakeRun,
    run_uuid: str,
    properties: dict[str, str],
    placement: dict[str, Any],
    error: dict[str, Any] | None,
) -> dict[str, Any]:
    """The run-history RunDto of a step run of `root`: its node id and pipeline as tags and properties, then
    `properties`."""
    return run_history_dto(
        step,
        root=root,
        run_uuid=run_uuid,
        name=step.name,
        display_name=step.name,
        status=step.status,
        run_type="azureml.StepRun",
        tags={**step.tags, "azureml.nodeid": step.node_id, "azureml.pipeline": root.run_id},
        properties={
            **step.properties,
            "azureml.runsource": "azureml.StepRun",
            "azureml.nodeid": step.node_id,
            "azureml.pipelinerunid": root.run_id,
            **properties,
        },
        placement=placement,
        error=error,
    )


def history_error(
    code: str,
    message: str,
    *,
    time: str | None,
    component_name: str,
    correlation: dict[str, Any] | None = None,
    environment: str | None = None,
    location: str | None = None,
    message_parameters: dict[str, Any] | None = None,
    **error_fields: Any,
) -> dict[str, Any]:
    """Run history's ErrorResponse: a RootError (`error_fields` appended to it) with where and when."""
    return {
        "error": {
            "code": code,
            "severity": None,
            "message": message,
            "messageFormat": None,
            "messageParameters": message_parameters,
            "referenceCode": None,
            "detailsUri": None,
            "target": None,
            "details": [],
            "innerError": None,
            "debugInfo": None,
            **error_fields,
        },
        "correlation": correlation,
        "environment": environment,
        "location": location,
        "time": time,
        "componentName": component_name,
    }


def studio_url(run_id: str, workspace_id: str | None) -> str:
    """A run's page in the studio (run history's portalUrl, a v2 job's Studio service endpoint)."""
    return f"https://ml.azure.com/runs/{run_id}?wsid={workspace_id}"


def _experiment_id(experiment: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"experiment/{experiment}"))


def _json_dumps(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True)
