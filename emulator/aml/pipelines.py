"""The pipelines service (`/pipelines/v1.0{WS}/...`): data types, data sources, modules, graphs, published
pipelines, pipeline endpoints and pipeline runs, with the state helpers tests use to seed and move them."""

from __future__ import annotations

import copy
import uuid
from datetime import datetime
from typing import Any, TypeVar

from emulator.aml.state import (
    DEFAULT_STEP_NAMES,
    ENTITY_STATUSES,
    HISTORY_OF_PIPELINE,
    HISTORY_STATUSES,
    HISTORY_TERMINAL,
    PIPELINE_CODES,
    PIPELINE_OF_HISTORY,
    FakeRun,
    FakeStep,
    iso,
    new_id,
)
from emulator.aml.wire import (
    SEG,
    RecordedRequest,
    Response,
    Route,
    ServiceError,
    as_string,
    as_strings,
    json_body,
    new_etag,
    route,
)

T = TypeVar("T")

# Data types a real workspace already has, so the SDK's publish does not try to create them.
BUILTIN_DATA_TYPES = (
    ("AnyFile", False),
    ("AnyDirectory", True),
    ("AzureBlobReference", False),
    ("AzureDataLakeReference", False),
    ("AzureFilesReference", False),
    ("AzureDataLakeGen2Reference", False),
    ("AzureMLDataset", False),
    ("DBFSReference", False),
    ("AzureSqlDatabaseReference", False),
    ("AzurePostgresDatabaseReference", False),
    ("AzureMySqlDatabaseReference", False),
)


class PipelinesService:
    """Mixed into FakeAzureML; the state (pipelines, endpoints, runs, modules, graphs, data types, data
    sources) lives on the fake and every handler runs under its lock."""

    # ------------------------------------------------------------------ state helpers for tests
    def add_published_pipeline(
        self,
        name: str,
        version: str | None = None,
        parameter_defaults: dict[str, Any] | None = None,
        status: str = "Active",
        step_names: list[str] | tuple[str, ...] | None = None,
        description: str | None = None,
    ) -> dict[str, Any]:
        steps = [(uuid.uuid4().hex[:8], n) for n in (step_names or DEFAULT_STEP_NAMES)]
        with self.lock:
            return self._create_pipeline(
                name=name,
                version=version,
                description=description,
                defaults=None if parameter_defaults is None else as_strings(parameter_defaults),
                steps=steps,
                status=status,
                graph_id=None,
                continue_on_step_failure=False,
            )

    def add_endpoint(
        self, name: str, pipeline_id: str, status: str = "Active", description: str | None = None
    ) -> dict[str, Any]:
        with self.lock:
            if pipeline_id not in self.pipelines:
                raise KeyError(f"no published pipeline {pipeline_id}")
            return self._create_endpoint(name, description, pipeline_id, {}, status)

    def add_endpoint_version(self, endpoint_id: str, pipeline_id: str, make_default: bool = False) -> str:
        """Append `pipeline_id` as a new version of the endpoint (as the SDK's add/add_default do)."""
        with self.lock:
            entity = self.endpoints[endpoint_id]
            versions = entity["PipelineVersionList"]
            version = str(max((int(v["Version"]) for v in versions), default=-1) + 1)
            versions.append({"Version": version, "PipelineId": pipeline_id})
            if make_default:
                entity["DefaultVersion"] = version
            self._touch_endpoint(entity)
            return version

    def add_run(
        self,
        pipeline_id: str,
        experiment: str = "exp",
        status: str = "NotStarted",
        tags: dict[str, str] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> FakeRun:
        with self.lock:
            if pipeline_id not in self.pipelines:
                raise KeyError(f"no published pipeline {pipeline_id}")
            run = self._create_run(
                pipeline_id,
                {"ExperimentName": experiment, "tags": tags or {}, "ParameterAssignments": parameters or {}},
                endpoint_id=None,
            )
        if status != "NotStarted":
            self.set_run_status(run.run_id, status)
        return run

    def set_run_status(
        self,
        run_id: str,
        status: str,
        steps: dict[str, str] | None = None,
        error_message: str | None = None,
        step_errors: dict[str, str] | None = None,
    ) -> FakeRun:
        """Move a run to `status`: a pipelines-service code (NotStarted, Running, Failed, Finished, Canceled)
        or a run-history spelling (Completed, Queued, CancelRequested, ...). Steps follow unless `steps`
        ({step name: run-history status}) says otherwise; `step_errors` ({step name: message}) is what run
        history's `error` of a failed step says."""
        with self.lock:
            run = self.runs[run_id]
            now = self.clock()
            if status in PIPELINE_CODES:
                run.status = status
                run.history_status = HISTORY_OF_PIPELINE[status]
            elif status == "CancelRequested":
                run.history_status = status
                run.cancel_requested = True
            elif status in PIPELINE_OF_HISTORY:
                run.status = PIPELINE_OF_HISTORY[status]
                run.history_status = status
            else:
                raise ValueError(f"unknown status {status!r}")
            if error_message:
                run.error_message = error_message
            if run.status != "NotStarted" and run.started is None:
                run.started = now
            if run.history_status in HISTORY_TERMINAL:
                run.ended = run.ended or now
            else:
                run.ended = None
            self._derive_steps(run, now)
            for name, step_status in (steps or {}).items():
                if step_status not in HISTORY_STATUSES:
                    raise ValueError(f"unknown run-history status {step_status!r} for step {name}")
                self._set_step(run.step(name), step_status, now)
            for name, message in (step_errors or {}).items():
                run.step(name).error_message = message
            return run

    # ------------------------------------------------------------------ state internals (hold self.lock)
    def _create_pipeline(
        self,
        *,
        name: str,
        version: str | None,
        description: str | None,
        defaults: dict[str, str] | None,
        steps: list[tuple[str, str]],
        status: str,
        graph_id: str | None,
        continue_on_step_failure: bool,
        properties: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        pipeline_id = new_id()
        now = iso(self.clock())
        entity = {
            "Id": pipeline_id,
            "Name": name,
            "Description": description,
            "Version": version,
            "Url": f"{self.pipelines_url}/PipelineRuns/PipelineSubmit/{pipeline_id}",
            "GraphId": graph_id or new_id(),
            "TotalRunSteps": len(steps),
            "ParameterAssignments": dict(defaults or {}),
            "DataSetDefinitionValueAssignments": {},
            "EntityStatus": status,
            "ContinueRunOnStepFailure": continue_on_step_failure,
            "EnableNotification": None,
            "Properties": dict(properties or {}),
            "CreatedDate": now,
            "LastModifiedDate": now,
            "Etag": new_etag(),
        }
        self.pipelines[pipeline_id] = entity
        self.pipeline_steps[pipeline_id] = list(steps)
        # parameters were declared only if the caller said so (None: accept any name on submit)
        self._declared_parameters[pipeline_id] = defaults is not None
        return entity

    def _create_endpoint(
        self,
        name: str,
        description: str | None,
        pipeline_id: str,
        properties: dict[str, Any],
        status: str = "Active",
    ) -> dict[str, Any]:
        endpoint_id = new_id()
        now = iso(self.clock())
        entity = {
            "Id": endpoint_id,
            "Name": name,
            "Description": description,
            "DefaultVersion": "0",
            "PipelineVersionList": [{"Version": "0", "PipelineId": pipeline_id}],
            "Url": f"{self.pipelines_url}/PipelineRuns/PipelineEndpointSubmit/Id/{endpoint_id}",
            "SwaggerUrl": f"{self.pipelines_url}/PipelineEndpoints/{endpoint_id}/swagger.json",
            "EntityStatus": status,
            "Properties": dict(properties or {}),
            "tags": {},
            "CreatedDate": now,
            "LastModifiedDate": now,
            "Etag": new_etag(),
        }
        self.endpoints[endpoint_id] = entity
        return entity

    def _touch_endpoint(self, entity: dict[str, Any]) -> None:
        entity["LastModifiedDate"] = iso(self.clock())
        entity["Etag"] = new_etag()

    def _create_run(self, pipeline_id: str, submission: dict[str, Any], endpoint_id: str | None) -> FakeRun:
        pipeline = self.pipelines[pipeline_id]
        experiment = submission.get("ExperimentName")
        if not experiment or not isinstance(experiment, str):
            raise ServiceError(400, "ExperimentName is required.", "BadArgument")
        given = submission.get("ParameterAssignments") or {}
        if not isinstance(given, dict):
            raise ServiceError(400, "ParameterAssignments must be an object.", "BadArgument")
        for key, value in given.items():
            if isinstance(value, dict | list):
                raise ServiceError(400, f"Parameter '{key}' must be a string.", "BadArgument")
        declared = pipeline["ParameterAssignments"]
        if self._declared_parameters.get(pipeline_id, True):
            unknown = sorted(set(given) - set(declared))
            if unknown:
                raise ServiceError(
                    400,
                    f"Parameter(s) {', '.join(unknown)} not defined in pipeline {pipeline_id}.",
                    "ParameterNotFound",
                )
        parameters = {**declared, **{k: as_string(v) for k, v in given.items()}}
        tags = submission.get("tags") or submission.get("Tags") or {}
        now = self.clock()
        run = FakeRun(
            run_id=new_id(),
            pipeline_id=pipeline_id,
            experiment=experiment,
            created=now,
            tags={str(k): as_string(v) for k, v in tags.items()},
            parameters=parameters,
            description=submission.get("Description"),
            run_source=submission.get("RunSource") or "API",
            run_type=submission.get("RunType") or ("HTTP" if endpoint_id else "SDK"),
            properties={str(k): as_string(v) for k, v in (submission.get("Properties") or {}).items()},
            endpoint_id=endpoint_id,
            continue_on_step_failure=submission.get("ContinueRunOnStepFailure"),
            graph_id=pipeline["GraphId"],
            submission=copy.deepcopy(submission),
        )
        self._run_numbers += 1
        run.run_number = self._run_numbers
        run.steps = []
        for node_id, name in self.pipeline_steps.get(pipeline_id, []):
            self._run_numbers += 1
            run.steps.append(
                FakeStep(
                    name=name, node_id=node_id, run_id=new_id(), created=now, run_number=self._run_numbers
                )
            )
        self.runs[run.run_id] = run
        self._ensure_experiment(experiment)
        return run

    def _set_step(self, step: FakeStep, status: str, now: datetime) -> None:
        step.status = status
        if status not in ("NotStarted", "Queued", "Preparing", "Provisioning", "Starting", "Unapproved"):
            step.started = step.started or now
        step.ended = (step.ended or now) if status in HISTORY_TERMINAL else None

    def _derive_steps(self, run: FakeRun, now: datetime) -> None:
        """Steps follow the run: all done when it finished, the first one busy while it runs, the last
        one failed when it failed, the unfinished ones canceled when it was canceled."""
        steps = run.steps
        if not steps:
            return
        status = run.history_status
        if status == "Completed":
            for step in steps:
                self._set_step(step, "Completed", now)
        elif status == "Running":
            if all(s.status == "NotStarted" for s in steps):
                self._set_step(steps[0], "Running", now)
        elif status == "Failed":
            if not any(s.status == "Failed" for s in steps):
                for step in steps[:-1]:
                    if step.status not in HISTORY_TERMINAL:
                        self._set_step(step, "Completed", now)
                self._set_step(steps[-1], "Failed", now)
        elif status in ("Canceled", "CancelRequested"):
            for step in steps:
                if step.status not in HISTORY_TERMINAL:
                    self._set_step(step, status, now)
        elif status == "NotStarted":
            for step in steps:
                self._set_step(step, "NotStarted", now)

    def _put_data_type(self, name: str, description: str | None, is_dir: bool, parents: list[str]) -> dict:
        now = iso(self.clock())
        entity = {
            "Id": name,
            "Name": name,
            "Description": description,
            "IsDirectory": is_dir,
            "ParentDataTypeIds": list(parents or []),
            "EntityStatus": "Active",
            "Etag": new_etag(),
            "CreatedDate": now,
            "LastModifiedDate": now,
        }
        self.data_types[name] = entity
        return entity

    # ------------------------------------------------------------------ routes
    def _pipelines_routes(self) -> list[Route]:
        runs = r"/(?:PipelineRuns|Experiments)"
        return [
            route("GET", r"/DataTypes", self._get_data_types),
            route("POST", r"/DataTypes", self._post_data_type),
            route("PUT", rf"/DataTypes/{SEG}", self._put_data_type_route),
            route("GET", rf"/DataSources/Hash/{SEG}", self._get_data_source_by_hash),
            route("POST", r"/DataSources", self._post_data_source),
            route("GET", rf"/DataSources/{SEG}", self._get_data_source),
            route("GET", rf"/Modules/Hash/{SEG}", self._get_module_by_hash),
            route("POST", r"/Modules", self._post_module),
            route("GET", rf"/Modules/{SEG}", self._get_module),
            route("PUT", rf"/Modules/{SEG}", self._put_module),
            route("GET", rf"/Graphs/{SEG}/Interface", self._get_graph_interface),
            route("GET", rf"/Graphs/{SEG}", self._get_graph),
            route("POST", r"/Pipelines/Create", self._post_pipeline),
            route("GET", r"/Pipelines", self._list_pipelines),
            route("GET", rf"/Pipelines/{SEG}", self._get_pipeline),
            route("PUT", rf"/Pipelines/{SEG}/status", self._put_pipeline_status),
            route("POST", r"/PipelineEndpoints/Create", self._post_endpoint),
            route("GET", r"/PipelineEndpoints/Name", self._get_endpoint_by_name),
            route("GET", rf"/PipelineEndpoints/Id/{SEG}", self._get_endpoint_by_id),
            route("GET", r"/PipelineEndpoints", self._list_endpoints),
            route("GET", rf"/PipelineEndpoints/{SEG}/pipelines", self._list_endpoint_pipelines),
            route("PUT", rf"/PipelineEndpoints/{SEG}", self._put_endpoint),
            route("POST", r"/PipelineRuns/PipelineEndpointSubmit/Name", self._submit_endpoint_by_name),
            route(
                "POST", rf"/PipelineRuns/PipelineEndpointSubmit/Id/{SEG}(?:/{SEG})?", self._submit_endpoint
            ),
            route("POST", rf"{runs}/PipelineSubmit/{SEG}", self._submit_pipeline),
            route("GET", rf"{runs}/Pipeline/{SEG}", self._list_pipeline_runs),
            route("POST", rf"{runs}/{SEG}/Graph/AllNodes/Status", self._all_node_statuses),
            route("POST", rf"{runs}/{SEG}/Graph/AllNodes/StatusCode", self._all_node_codes),
            route("POST", rf"{runs}/{SEG}/Graph/Node/Status", self._node_status),
            route("POST", rf"{runs}/{SEG}/Graph/Node/StatusCode", self._node_code),
            route("DELETE", rf"{runs}/{SEG}/Execution", self._cancel_pipeline_run),
            route("GET", rf"{runs}/{SEG}", self._get_pipeline_run),
        ]

    # data types, data sources, modules, graphs
    def _get_data_types(self, record: RecordedRequest) -> Response:
        return Response(200, list(self.data_types.values()))

    def _post_data_type(self, record: RecordedRequest) -> Response:
        info = json_body(record)
        name = info.get("Id") or info.get("Name")
        if not name:
            raise ServiceError(400, "A data type needs an Id.", "BadArgument")
        if name in self.data_types:
            # the SDK's try_create_datatype looks for this phrase
            raise ServiceError(400, f"DataType {name} already exists.", "Conflict")
        entity = self._put_data_type(
            name, info.get("Description"), bool(info.get("IsDirectory")), info.get("ParentDataTypeIds") or []
        )
        return Response(200, entity)

    def _put_data_type_route(self, record: RecordedRequest, type_id: str) -> Response:
        entity = _found(self.data_types, "DataType", type_id)
        entity.update(
            {k: v for k, v in json_body(record).items() if k in ("Description", "ParentDataTypeIds")}
        )
        return Response(200, entity)

    def _get_data_source_by_hash(self, record: RecordedRequest, hash_: str) -> Response:
        for entity in self.data_sources.values():
            if entity.get("IdentifierHash") == hash_:
                return Response(200, entity)
        raise ServiceError(404, f"DataSource with hash {hash_} not found.")

    def _post_data_source(self, record: RecordedRequest) -> Response:
        info = json_body(record)
        entity = {**info, "Id": new_id(), "EntityStatus": "Active", "Etag": new_etag()}
        self.data_sources[entity["Id"]] = entity
        return Response(200, entity)

    def _get_data_source(self, record: RecordedRequest, source_id: str) -> Response:
        return Response(200, _found(self.data_sources, "DataSource", source_id))

    def _get_module_by_hash(self, record: RecordedRequest, hash_: str) -> Response:
        for module in self.modules.values():
            if module["Data"].get("IdentifierHash") == hash_:
                return Response(200, module)
        raise ServiceError(404, f"Module with hash {hash_} not found.")

    def _post_module(self, record: RecordedRequest) -> Response:
        info = json_body(record)
        module_id = new_id()
        now = iso(self.clock())
        data = {
            "Id": module_id,
            "Name": info.get("Name"),
            "Description": info.get("Description"),
            "Hash": info.get("Hash"),
            "IdentifierHash": info.get("IdentifierHash"),
            "IsDeterministic": info.get("IsDeterministic"),
            "ModuleExecutionType": info.get("ModuleExecutionType"),
            "ModuleType": info.get("ModuleType"),
            "StructuredInterface": info.get("StructuredInterface"),
            "DataLocation": {"StorageId": info.get("StorageId"), "StorageType": "Snapshot"},
            "UploadState": "Completed",
            "tags": info.get("KvTags") or {},
            "Properties": info.get("Properties") or {},
            "Runconfig": info.get("Runconfig"),
            "CloudSettings": None,
            "Category": info.get("Category"),
            "StepType": info.get("StepType"),
            "EntityStatus": "Active",
            "Etag": new_etag(),
            "CreatedDate": now,
            "LastModifiedDate": now,
        }
        interface = info.get("StructuredInterface") or {}
        self.modules[module_id] = {"Data": data, "Interface": _entity_interface(interface)}
        return Response(200, data)

    def _get_module(self, record: RecordedRequest, module_id: str) -> Response:
        return Response(200, _found(self.modules, "Module", module_id))

    def _put_module(self, record: RecordedRequest, module_id: str) -> Response:
        data = _found(self.modules, "Module", module_id)["Data"]
        data.update(json_body(record))
        data["Etag"] = new_etag()
        return Response(200, data)

    def _get_graph(self, record: RecordedRequest, graph_id: str) -> Response:
        return Response(200, _found(self.graphs, "Graph", graph_id)["Graph"])

    def _get_graph_interface(self, record: RecordedRequest, graph_id: str) -> Response:
        graph = _found(self.graphs, "Graph", graph_id)
        return Response(200, graph.get("Interface") or {"Parameters": [], "Ports": {}})

    # published pipelines
    def _post_pipeline(self, record: RecordedRequest) -> Response:
        info = json_body(record)
        if not info.get("Name"):
            raise ServiceError(400, "Name is required.", "BadArgument")
        graph = copy.deepcopy(info.get("Graph") or {})
        graph_id = new_id()
        graph.update({"Id": graph_id, "Etag": new_etag(), "EntityStatus": "Active"})
        steps: list[tuple[str, str]] = []
        for node in graph.get("ModuleNodes") or []:
            module = self.modules.get(node.get("ModuleId") or "")
            name = module["Data"].get("Name") if module else None
            steps.append((node.get("Id") or uuid.uuid4().hex[:8], name or node.get("Id") or "step"))
        self.graphs[graph_id] = {"Graph": graph, "Interface": info.get("GraphInterface")}
        # The SDK sends the parameters' defaults in GraphInterface.Parameters (ParameterAssignments stays
        # empty); the entity shows them as ParameterAssignments (a guess at what the service derives).
        defaults = {
            str(p.get("Name")): as_string(p.get("DefaultValue"))
            for p in (info.get("GraphInterface") or {}).get("Parameters") or []
        }
        defaults.update(as_strings(info.get("ParameterAssignments") or {}))
        entity = self._create_pipeline(
            name=info["Name"],
            version=info.get("Version"),
            description=info.get("Description"),
            defaults=defaults,
            steps=steps,
            status="Active",
            graph_id=graph_id,
            continue_on_step_failure=bool(info.get("ContinueRunOnStepFailure")),
            properties=info.get("Properties"),
        )
        return Response(200, entity)

    def _list_pipelines(self, record: RecordedRequest) -> Response:
        active_only = record.query.get("activeOnly", "true").lower() != "false"
        found = [p for p in self.pipelines.values() if not active_only or is_active(p)]
        return Response(200, found)

    def _get_pipeline(self, record: RecordedRequest, pipeline_id: str) -> Response:
        return Response(200, _found(self.pipelines, "Pipeline", pipeline_id))

    def _put_pipeline_status(self, record: RecordedRequest, pipeline_id: str) -> Response:
        entity = _found(self.pipelines, "Pipeline", pipeline_id)
        status = record.json()
        if isinstance(status, dict):
            status = status.get("EntityStatus") or status.get("Status")
        if status not in ENTITY_STATUSES:
            raise ServiceError(400, f"Invalid status {status!r}.", "BadArgument")
        entity["EntityStatus"] = status
        entity["LastModifiedDate"] = iso(self.clock())
        entity["Etag"] = new_etag()
        return Response(200, None)

    # pipeline endpoints
    def _post_endpoint(self, record: RecordedRequest) -> Response:
        info = json_body(record)
        name, pipeline_id = info.get("Name"), info.get("PipelineId")
        if not name or not pipeline_id:
            raise ServiceError(400, "Name and PipelineId are required.", "BadArgument")
        if any(e["Name"] == name for e in self.endpoints.values()):
            raise ServiceError(409, f"PipelineEndpoint with name '{name}' already exists.", "Conflict")
        _found(self.pipelines, "Pipeline", pipeline_id)
        entity = self._create_endpoint(
            name, info.get("Description"), pipeline_id, info.get("Properties") or {}
        )
        return Response(200, entity)

    def _endpoint(self, endpoint_id: str) -> dict[str, Any]:
        return _found(self.endpoints, "PipelineEndpoint", endpoint_id)

    def _get_endpoint_by_name(self, record: RecordedRequest) -> Response:
        name = record.query.get("Name") or record.query.get("name")
        for entity in self.endpoints.values():
            if entity["Name"] == name:
                return Response(200, entity)
        raise ServiceError(404, f"PipelineEndpoint with name '{name}' not found.")

    def _get_endpoint_by_id(self, record: RecordedRequest, endpoint_id: str) -> Response:
        return Response(200, self._endpoint(endpoint_id))

    def _list_endpoints(self, record: RecordedRequest) -> Response:
        active_only = record.query.get("activeOnly", "true").lower() != "false"
        return Response(200, [e for e in self.endpoints.values() if not active_only or is_active(e)])

    def _list_endpoint_pipelines(self, record: RecordedRequest, endpoint_id: str) -> Response:
        entity = self._endpoint(endpoint_id)
        active_only = record.query.get("activeOnly", "true").lower() != "false"
        found = []
        for version in entity["PipelineVersionList"]:
            pipeline = self.pipelines.get(version["PipelineId"])
            if pipeline is not None and (not active_only or is_active(pipeline)):
                found.append(pipeline)
        return Response(200, found)

    def _put_endpoint(self, record: RecordedRequest, endpoint_id: str) -> Response:
        entity = self._endpoint(endpoint_id)
        info = json_body(record)
        # optimistic concurrency: an If-Match header must name the current Etag. The SDK sends none, only
        # the Etag it read inside the body; that one is checked only when strict_etag is set (a guess).
        if_match = record.header("If-Match")
        if if_match and if_match != "*" and if_match != entity["Etag"]:
            raise ServiceError(412, "The entity was changed since it was read (Etag mismatch).")
        if self.strict_etag and info.get("Etag") not in (None, entity["Etag"]):
            raise ServiceError(412, "The entity was changed since it was read (Etag mismatch).")
        versions = info.get("PipelineVersionList")
        if not isinstance(versions, list) or not versions:
            raise ServiceError(400, "PipelineVersionList is required.", "BadArgument")
        for version in versions:
            if version.get("PipelineId") not in self.pipelines:
                raise ServiceError(404, f"Pipeline {version.get('PipelineId')} not found.")
        default = str(info.get("DefaultVersion", entity["DefaultVersion"]))
        if default not in {str(v.get("Version")) for v in versions}:
            raise ServiceError(400, f"DefaultVersion {default} is not in PipelineVersionList.", "BadArgument")
        name = info.get("Name") or entity["Name"]
        if any(e["Name"] == name and e["Id"] != endpoint_id for e in self.endpoints.values()):
            raise ServiceError(409, f"PipelineEndpoint with name '{name}' already exists.", "Conflict")
        status = info.get("EntityStatus") or entity["EntityStatus"]
        if status not in ENTITY_STATUSES:
            raise ServiceError(400, f"Invalid EntityStatus {status!r}.", "BadArgument")
        entity.update(
            {
                "Name": name,
                "Description": info.get("Description", entity["Description"]),
                "DefaultVersion": default,
                "PipelineVersionList": [
                    {"Version": str(v["Version"]), "PipelineId": v["PipelineId"]} for v in versions
                ],
                "EntityStatus": status,
                "Properties": info.get("Properties") or entity["Properties"],
                "tags": info.get("tags") if info.get("tags") is not None else entity["tags"],
            }
        )
        self._touch_endpoint(entity)
        return Response(200, entity)

    # submitting runs
    def _submit_endpoint_by_name(self, record: RecordedRequest) -> Response:
        name = record.query.get("name") or record.query.get("Name")
        for entity in self.endpoints.values():
            if entity["Name"] == name:
                return self._submit_endpoint(record, entity["Id"], record.query.get("pipelineVersion"))
        raise ServiceError(404, f"PipelineEndpoint with name '{name}' not found.")

    def _submit_endpoint(
        self, record: RecordedRequest, endpoint_id: str, version: str | None = None
    ) -> Response:
        entity = self._endpoint(endpoint_id)
        if not is_active(entity):
            raise ServiceError(404, f"PipelineEndpoint {endpoint_id} is {entity['EntityStatus']}.")
        version = version or record.query.get("pipelineVersion") or entity["DefaultVersion"]
        pipeline_id = next(
            (v["PipelineId"] for v in entity["PipelineVersionList"] if str(v["Version"]) == str(version)),
            None,
        )
        if pipeline_id is None:
            raise ServiceError(404, f"PipelineEndpoint {endpoint_id} has no version {version}.")
        return self._submit(record, pipeline_id, endpoint_id)

    def _submit_pipeline(self, record: RecordedRequest, pipeline_id: str) -> Response:
        return self._submit(record, pipeline_id, None)

    def _submit(self, record: RecordedRequest, pipeline_id: str, endpoint_id: str | None) -> Response:
        pipeline = _found(self.pipelines, "Pipeline", pipeline_id)
        if pipeline["EntityStatus"] in ("Disabled", "2"):
            raise ServiceError(404, f"Pipeline {pipeline_id} is disabled.", "PipelineDisabled")
        submission = record.json()
        if not isinstance(submission, dict):
            raise ServiceError(400, "The body must be a PipelineSubmissionInfo object.", "BadArgument")
        run = self._create_run(pipeline_id, submission, endpoint_id)
        self._start_execution(run)  # a no-op unless enable_execution was called
        return Response(200, run.entity)

    # runs (pipelines service)
    def _run(self, run_id: str) -> FakeRun:
        return _found(self.runs, "PipelineRun", run_id)

    def _get_pipeline_run(self, record: RecordedRequest, run_id: str) -> Response:
        return Response(200, self._run(run_id).entity)

    def _list_pipeline_runs(self, record: RecordedRequest, pipeline_id: str) -> Response:
        # oldest first (creation order); the real order is not documented, so callers should sort
        return Response(200, [run.entity for run in self.runs.values() if run.pipeline_id == pipeline_id])

    def _all_node_statuses(self, record: RecordedRequest, run_id: str) -> Response:
        return Response(200, self._run(run_id).node_statuses())

    def _all_node_codes(self, record: RecordedRequest, run_id: str) -> Response:
        return Response(200, {k: v["StatusCode"] for k, v in self._run(run_id).node_statuses().items()})

    def _node(self, record: RecordedRequest, run_id: str) -> dict[str, Any]:
        # the body is the node id path, e.g. ["6124dbc8"]; the last element names the node
        path = record.json()
        node_id = path[-1] if isinstance(path, list) and path else None
        statuses = self._run(run_id).node_statuses()
        if node_id not in statuses:
            raise ServiceError(404, f"Node {node_id} not found in run {run_id}.")
        return statuses[node_id]

    def _node_status(self, record: RecordedRequest, run_id: str) -> Response:
        return Response(200, self._node(record, run_id))

    def _node_code(self, record: RecordedRequest, run_id: str) -> Response:
        return Response(200, self._node(record, run_id)["StatusCode"])

    def _cancel(self, run: FakeRun) -> None:
        if run.history_status in HISTORY_TERMINAL:
            return  # canceling an ended run changes nothing (and is not an error)
        run.cancel_requested = True
        now = self.clock()
        if self.cancel_settles:
            run.status, run.history_status, run.ended = "Canceled", "Canceled", now
        else:
            run.history_status = "CancelRequested"
        self._derive_steps(run, now)
        self._stop_execution(run)  # an executing run: stop its running step; its thread settles the run

    def _cancel_pipeline_run(self, record: RecordedRequest, run_id: str) -> Response:
        self._cancel(self._run(run_id))
        return Response(200, None)


def is_active(entity: dict[str, Any]) -> bool:
    return entity.get("EntityStatus") in ("Active", "0")


def _entity_interface(structured: dict[str, Any]) -> dict[str, Any]:
    """The EntityInterface the service derives from a module's StructuredInterface."""

    def params(key: str) -> list[dict[str, Any]]:
        return [
            {
                "Name": p.get("Name"),
                "DefaultValue": p.get("DefaultValue"),
                "IsOptional": p.get("IsOptional"),
                "Type": p.get("ParameterType"),
            }
            for p in structured.get(key) or []
        ]

    return {
        "Parameters": params("Parameters"),
        "MetadataParameters": params("MetadataParameters"),
        "Ports": {
            "Inputs": [
                {
                    "Name": i.get("Name"),
                    "DataTypesIds": i.get("DataTypeIdsList"),
                    "IsOptional": i.get("IsOptional"),
                }
                for i in structured.get("Inputs") or []
            ],
            "Outputs": [
                {"Name": o.get("Name"), "DataTypeId": o.get("DataTypeId")}
                for o in structured.get("Outputs") or []
            ],
        },
        "DataPathParameters": [],
        "DataPathParameterList": [],
    }


def _found(table: dict[str, T], kind: str, key: str) -> T:
    """`table[key]`, else the pipelines service's 404 `{kind} {key} not found.`"""
    if key not in table:
        raise ServiceError(404, f"{kind} {key} not found.")
    return table[key]
