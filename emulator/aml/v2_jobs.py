"""Azure ML v2 jobs, ARM-style (`{WS}/jobs/{name}`): a pipeline job PUT that names a registered pipeline
component (`componentId`) and a compute is validated, stored, given a run-history root run (with one child
run per node of the component) and, with execution enabled, run by v2_execution.py. The job name is the
idempotency key: a changed re-PUT is refused with the service's "already exists" error and starts nothing.
`GET` mirrors run history's status; `POST .../cancel` answers 202 with a Location."""

from __future__ import annotations

import copy
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from emulator.aml.arm import ARM_PROVIDER
from emulator.aml.state import (
    HISTORY_TERMINAL,
    ML_AUDIENCES,
    FakeRun,
    FakeStep,
    new_id,
    run_history_dto,
    step_run_dto,
    studio_url,
)
from emulator.aml.wire import SEG, RecordedRequest, Response, Route, ServiceError, as_string, json_body, route

# What a re-PUT of an existing job may change (the service's own words, Azure/azure-sdk-for-python#42156).
JOB_MUTABLE_FIELDS = ("description", "tags", "displayName", "properties", "isArchived")
ALREADY_EXISTS = (
    "A job with this name already exists. If you are trying to create a new job, use a different name. If you "
    "are trying to update an existing job, the existing job's {field} cannot be changed. Only description, "
    "tags, displayName, properties, and isArchived can be updated."
)
# Fields the service fills in on a job; a client echoing them back has not changed the job.
JOB_READ_ONLY_FIELDS = ("status", "services", "provisioningState")
PIPELINE_FAILED = (
    "Pipeline has failed child jobs. Failed nodes: {nodes}. For more details and logs, please go to the job "
    "detail page and check the child jobs."
)


@dataclass
class V2Step(FakeStep):
    """A node of a v2 pipeline job: a run-history child run named after the node."""

    error: dict[str, Any] | None = None  # the runtime's error of a failed node (v2_execution.node_error)
    component_id: str | None = None


@dataclass
class V2Run(FakeRun):
    """A v2 pipeline job's run-history root run; `job` is the ARM job resource as stored."""

    job: dict[str, Any] = field(default_factory=dict)
    display_name: str | None = None
    compute: str | None = None
    error: dict[str, Any] | None = None
    transitions: list[str] = field(default_factory=lambda: ["NotStarted"])  # every status it has had

    @property
    def arm_status(self) -> str:
        return self.history_status  # run history's words are the ARM JobStatus words

    def history_dto(self, workspace_id: str) -> dict[str, Any]:
        return run_history_dto(
            self,
            root=self,
            run_uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, self.run_id)),
            name=None,
            display_name=self.display_name or self.run_id,
            status=self.history_status,
            run_type="azureml.PipelineRun",
            tags=dict(self.tags),
            properties={
                **self.properties,
                "azureml.runsource": "azureml.PipelineRun",
                "runSource": "MFE",
                "runType": "HTTP",
                "azureml.pipelineComponent": "pipelinerun",
            },
            placement=self._placement(),
            error=self.error if self.history_status == "Failed" else None,
            workspace_id=workspace_id,
        )

    def step_dto(self, step: FakeStep) -> dict[str, Any]:
        return step_run_dto(
            step,
            root=self,
            run_uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, step.run_id)),
            properties={"azureml.pipeline": self.run_id, "StepType": "CommandStep"},
            placement=self._placement(),
            error=step.error if isinstance(step, V2Step) and step.status == "Failed" else None,
        )

    def _placement(self) -> dict[str, Any]:
        return {
            "target": self.compute,
            "compute": {"target": self.compute, "targetType": "AmlCompute"} if self.compute else None,
        }


class V2JobService:
    """Mixed into FakeAzureML; v2 jobs are V2Run entries of `fake.runs` (run history serves them as it
    serves v1 runs), keyed by the job name."""

    def v2_job(self, name: str) -> V2Run:
        run = self.runs.get(name)
        if not isinstance(run, V2Run):
            raise KeyError(f"no v2 job {name}")
        return run

    def _job_routes(self) -> list[Route]:
        return [
            route("PUT", rf"/jobs/{SEG}", self._put_job),
            route("GET", rf"/jobs/{SEG}", self._get_job),
            route("POST", rf"/jobs/{SEG}/cancel", self._cancel_job),
            route("GET", rf"/operationResults/{SEG}", self._get_operation_result),
        ]

    # ------------------------------------------------------------------ routes
    def _put_job(self, record: RecordedRequest, name: str) -> Response:
        self._check_ml_token(record)
        body = json_body(record)
        properties = body.get("properties")
        if not isinstance(properties, dict):
            raise ServiceError(400, "The request body must have properties.", "UserError")
        existing = self.runs.get(name)
        if existing is not None:
            return self._reput_job(existing, properties)
        if _child_of(self.runs, name) is not None:
            raise ServiceError(400, ALREADY_EXISTS.format(field="jobType"), "UserError")
        job_type = properties.get("jobType")
        if job_type != "Pipeline":
            raise ServiceError(
                400, f"Job type {job_type!r} is not emulated: only Pipeline jobs run here.", "UserError"
            )
        component, nodes = self._resolve_pipeline_component(properties.get("componentId"))
        compute = self._resolve_compute(properties.get("computeId") or _default_compute(properties))
        run = self._create_v2_run(name, properties, component, nodes, compute)
        self._start_v2_execution(run)
        return Response(201, self._job_resource(run))

    def _get_job(self, record: RecordedRequest, name: str) -> Response:
        run = self.runs.get(name)
        if isinstance(run, V2Run):
            return Response(200, self._job_resource(run))
        found = _child_of(self.runs, name)
        if found is not None and isinstance(found[0], V2Run):
            # a pipeline's child job: the service answers it without properties (azure-ai-ml's
            # `_is_pipeline_child_job` tells one by exactly that)
            return Response(
                200,
                {
                    "id": self._arm_id("jobs", name),
                    "name": name,
                    "type": f"{ARM_PROVIDER}/workspaces/jobs",
                    "properties": None,
                    "systemData": self._system_data(found[1].created or self.clock()),
                },
            )
        raise ServiceError(404, f"Job {name} (workspace {self.workspace_name}) was not found.", "UserError")

    def _cancel_job(self, record: RecordedRequest, name: str) -> Response:
        run = self.runs.get(name)
        if not isinstance(run, V2Run):
            raise ServiceError(
                404, f"Job {name} (workspace {self.workspace_name}) was not found.", "UserError"
            )
        self._cancel(run)  # pipelines.py: CancelRequested, the running node's process stopped
        if run.transitions[-1] != run.history_status:
            run.transitions.append(run.history_status)
        operation = uuid.uuid4().hex
        location = (
            f"{self.base_url}{self.workspace_path}/operationResults/{operation}"
            f"?api-version={record.api_version}"
        )
        return Response(202, None, {"Location": location, "Retry-After": "0"})

    def _get_operation_result(self, record: RecordedRequest, operation: str) -> Response:
        return Response(200, None)  # a cancel is accepted at once; the job's status tells the rest

    # ------------------------------------------------------------------ helpers
    def _check_ml_token(self, record: RecordedRequest) -> None:
        """A pipeline job PUT carries the user's ML-audience token in x-azureml-token, as azure-ai-ml sends it
        (whether the service insists is a guess, see the README)."""
        from emulator.aml.server import _audience

        token = (record.header("x-azureml-token") or "").strip()
        if not token:
            raise ServiceError(
                401,
                "A pipeline job needs the user's Azure ML token in the x-azureml-token header.",
                "AuthenticationFailed",
            )
        audience = _audience(token)
        if self.require_audience and audience is not None and audience not in ML_AUDIENCES:
            raise ServiceError(
                401,
                f"The x-azureml-token's audience '{audience}' is not https://ml.azure.com.",
                "InvalidAudience",
            )

    def _reput_job(self, run: FakeRun, properties: dict[str, Any]) -> Response:
        if not isinstance(run, V2Run):
            raise ServiceError(400, ALREADY_EXISTS.format(field="jobType"), "UserError")
        stored = run.job["properties"]
        for key in sorted(
            (set(stored) | set(properties)) - set(JOB_MUTABLE_FIELDS) - set(JOB_READ_ONLY_FIELDS)
        ):
            if _canonical(stored.get(key)) != _canonical(properties.get(key)):
                raise ServiceError(400, ALREADY_EXISTS.format(field=key), "UserError")
        # the same job again: the mutable fields are updated, nothing starts [guess, see the README]
        for key in JOB_MUTABLE_FIELDS:
            if key in properties:
                stored[key] = copy.deepcopy(properties[key])
        run.tags = {str(k): as_string(v) for k, v in (stored.get("tags") or {}).items()}
        run.display_name = stored.get("displayName") or run.display_name
        run.description = stored.get("description")
        return Response(200, self._job_resource(run))

    def _resolve_pipeline_component(self, component_id: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        if not isinstance(component_id, str) or not component_id:
            raise ServiceError(
                400, "A pipeline job must name a registered pipeline component (componentId).", "UserError"
            )
        component = self._component_by_id(component_id)
        spec = component["properties"]["componentSpec"]
        if spec.get("type") != "pipeline":
            raise ServiceError(400, f"Component {component_id} is not a pipeline component.", "UserError")
        nodes = spec.get("jobs") or {}
        if not nodes:
            raise ServiceError(400, f"Pipeline component {component_id} has no jobs.", "UserError")
        return component, nodes

    def _component_by_id(self, component_id: str) -> dict[str, Any]:
        """A component version by ARM id (`azureml:` prefix allowed) or `azureml:name:version`."""
        text = component_id.removeprefix("azureml:")
        if "/components/" in text:
            workspace, _, rest = text.partition("/components/")
            if workspace.lower() != self.workspace_path.lower():
                raise ServiceError(404, f"Component {component_id} is not in this workspace.", "UserError")
            name, _, version = rest.partition("/versions/")
        else:
            name, _, version = text.partition(":")
        if not name or not version:
            raise ServiceError(400, f"Component id {component_id} names no version.", "UserError")
        return self._version("components", name, version)

    def _resolve_compute(self, compute_id: Any) -> str:
        if not isinstance(compute_id, str) or not compute_id:
            raise ServiceError(400, "A pipeline job needs a compute (computeId).", "UserError")
        name = compute_id.rstrip("/").rsplit("/", 1)[-1].removeprefix("azureml:")
        if name not in self.computes:
            raise ServiceError(
                404, f"Compute {name} (workspace {self.workspace_name}) was not found.", "ResourceNotFound"
            )
        return name

    def _create_v2_run(
        self,
        name: str,
        properties: dict[str, Any],
        component: dict[str, Any],
        nodes: dict[str, Any],
        compute: str,
    ) -> V2Run:
        now = self.clock()
        experiment = properties.get("experimentName") or "Default"
        stored = copy.deepcopy(properties)
        stored["status"] = "NotStarted"
        run = V2Run(
            run_id=name,
            pipeline_id=component["id"],
            experiment=experiment,
            created=now,
            tags={str(k): as_string(v) for k, v in (properties.get("tags") or {}).items()},
            properties={str(k): as_string(v) for k, v in (properties.get("properties") or {}).items()},
            description=properties.get("description"),
            run_source="MFE",
            run_type="HTTP",
            submission={"properties": copy.deepcopy(properties)},
            job={
                "id": self._arm_id("jobs", name),
                "name": name,
                "type": f"{ARM_PROVIDER}/workspaces/jobs",
                "properties": stored,
                "systemData": self._system_data(now),
            },
            display_name=properties.get("displayName") or name,
            compute=compute,
            continue_on_step_failure=bool((properties.get("settings") or {}).get("continue_on_step_failure")),
        )
        self._run_numbers += 1
        run.run_number = self._run_numbers
        for node_name, node in nodes.items():
            self._run_numbers += 1
            run.steps.append(
                V2Step(
                    name=node_name,
                    node_id=uuid.uuid5(uuid.NAMESPACE_URL, f"{component['id']}/{node_name}").hex[:8],
                    run_id=new_id(),
                    created=now,
                    run_number=self._run_numbers,
                    component_id=(node or {}).get("componentId"),
                )
            )
        self.runs[name] = run
        self._ensure_experiment(experiment)
        return run

    def _job_resource(self, run: V2Run) -> dict[str, Any]:
        resource = copy.deepcopy(run.job)
        resource["properties"]["status"] = run.arm_status
        resource["properties"]["services"] = {
            "Tracking": {"jobServiceType": "Tracking", "endpoint": self.base_url, "status": None},
            "Studio": {
                "jobServiceType": "Studio",
                "endpoint": studio_url(run.run_id, self.workspace_id),
                "status": None,
            },
        }
        return resource

    def _start_v2_execution(self, run: V2Run) -> None:
        """Overridden by V2ExecutionService (v2_execution.py): runs the job when execution is enabled."""


def _child_of(runs: dict[str, FakeRun], run_id: str) -> tuple[FakeRun, FakeStep] | None:
    for run in runs.values():
        for step in run.steps:
            if step.run_id == run_id:
                return run, step
    return None


def _default_compute(properties: dict[str, Any]) -> str | None:
    settings = properties.get("settings") or {}
    return settings.get("default_compute") or settings.get("defaultCompute")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def terminal(run: FakeRun) -> bool:
    return run.history_status in HISTORY_TERMINAL
