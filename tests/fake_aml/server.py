"""The fake Azure ML service: a threaded HTTP server on 127.0.0.1 that answers the pipelines service, run
history, the default-datastore and snapshot calls the SDK v1 and the app make, with explicit state, a request
log, injectable faults and a bearer-token audience check. Wire shapes follow /work/shared/docs/aml-v1-rest.md.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.fake_aml.faults import Fault, FaultBook, compile_pattern
from tests.fake_aml.state import (
    ARM_AUDIENCES,
    DEFAULT_STEP_NAMES,
    ENTITY_STATUSES,
    HISTORY_OF_PIPELINE,
    HISTORY_STATUSES,
    HISTORY_TERMINAL,
    PIPELINE_CODES,
    PIPELINE_OF_HISTORY,
    Clock,
    FakeRun,
    FakeStep,
    iso,
    new_id,
)
from tests.fake_identity import token_resource

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

_ERROR_CODES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "AuthorizationFailed",
    404: "NotFound",
    408: "RequestTimeout",
    409: "Conflict",
    412: "PreconditionFailed",
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}

_SERVICE_PATH = re.compile(
    r"^/(?:(?P<service>pipelines|history|datastore|content)/v(?P<version>\d+\.\d+)|(?P<rp>rp/workspaces))"
    r"(?P<ws>/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.MachineLearningServices/workspaces/[^/]+)"
    r"(?P<rest>/.*)?$",
    re.IGNORECASE,
)


class _CaseInsensitiveDict(dict):
    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        for name, value in self.items():
            if name.lower() == key.lower():
                return value
        return default


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    status: int | None = None  # what the fake answered; None when the connection was dropped
    fault: Fault | None = None
    audience: str | None = None
    raw_path: str = ""

    def header(self, name: str, default: str | None = None) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return default

    def json(self) -> Any:
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None

    def __repr__(self) -> str:
        return f"<{self.method} {self.path} -> {self.status}>"


@dataclass
class Response:
    status: int
    payload: Any = None  # JSON-serialisable, or bytes (sent as is), or None (empty body)
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None  # for bytes payloads


class ServiceError(Exception):
    """Raised by a route to answer an error in the service's own error shape."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _ERROR_CODES.get(status, "Error")
        self.headers = headers or {}


Route = tuple[str, re.Pattern[str], Callable[..., Response]]


class FakeAzureML:
    """See /work/notes/fake_api.md for the API; the README section of the fakes lists the routes."""

    def __init__(
        self,
        subscription_id: str = "00000000-0000-0000-0000-000000000001",
        resource_group: str = "rg-test",
        workspace_name: str = "ws-test",
        *,
        clock: Callable[[], datetime] | None = None,
        cancel_settles: bool = False,
        require_audience: bool = True,
    ) -> None:
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.workspace_name = workspace_name
        self.workspace_id = str(uuid.uuid5(uuid.NAMESPACE_URL, self.workspace_path))
        self.require_audience = require_audience
        # False (default): a cancel leaves run history at CancelRequested and the pipelines-service status
        # as it was until the test calls set_run_status(run_id, "Canceled"), as the real service takes time.
        # True: the cancel takes effect at once (Canceled in both).
        self.cancel_settles = cancel_settles
        self.strict_etag = False
        self.clock = Clock(clock)
        self.lock = threading.RLock()
        self.requests: list[RecordedRequest] = []
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, FakeRun] = {}
        self.modules: dict[str, dict[str, Any]] = {}  # id -> {"Data": ModuleEntity, "Interface": ...}
        self.graphs: dict[str, dict[str, Any]] = {}
        self.data_types: dict[str, dict[str, Any]] = {}
        self.data_sources: dict[str, dict[str, Any]] = {}
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.experiments: dict[str, dict[str, Any]] = {}
        self.pipeline_steps: dict[str, list[tuple[str, str]]] = {}  # pipeline id -> [(node id, step name)]
        self._declared_parameters: dict[str, bool] = {}
        self._run_numbers = 0
        self.computes: dict[str, dict[str, Any]] = {}
        self._faults = FaultBook()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._routes = self._build_routes()
        for name, is_dir in BUILTIN_DATA_TYPES:
            self._put_data_type(name, f"built-in {name}", is_dir, [])
        self.add_compute("cpu-cluster")

    # ------------------------------------------------------------------ lifecycle
    def start(self, port: int = 0) -> FakeAzureML:
        self._stopping.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-aml", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes every delayed request
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeAzureML:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "FakeAzureML is not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def discovery_url(self) -> str:
        return f"{self.base_url}/discovery"

    @property
    def workspace_path(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{self.workspace_name}"
        )

    @property
    def pipelines_url(self) -> str:
        return f"{self.base_url}/pipelines/v1.0{self.workspace_path}"

    @property
    def history_url(self) -> str:
        return f"{self.base_url}/history/v1.0{self.workspace_path}"

    # ------------------------------------------------------------------ request log
    def clear_requests(self) -> None:
        with self.lock:
            self.requests.clear()

    def calls(self, method: str | None = None, path_contains: str | None = None) -> list[RecordedRequest]:
        with self.lock:
            found = list(self.requests)
        return [
            r
            for r in found
            if (method is None or r.method.upper() == method.upper())
            and (path_contains is None or path_contains.lower() in r.path.lower())
        ]

    # ------------------------------------------------------------------ faults
    def inject_fault(
        self,
        method: str | None,
        path_pattern: str | re.Pattern[str],
        status: int | None = None,
        retry_after: float | int | str | None = None,
        delay: float | None = None,
        drop: bool = False,
        times: int | None = 1,
        body: Any = None,
        after_handling: bool = False,
    ) -> Fault:
        """The next `times` requests (None: all) whose method matches and whose path (without the query)
        matches `path_pattern` (re.search, case-insensitive) get the fault."""
        if status is None and body is not None:
            status = 500
        return self._faults.add(
            Fault(
                method=method,
                path_pattern=compile_pattern(path_pattern),
                status=status,
                retry_after=retry_after,
                delay=delay,
                drop=drop,
                times=times,
                body=body,
                after_handling=after_handling,
            )
        )

    def clear_faults(self) -> None:
        self._faults.clear()

    @property
    def pending_faults(self) -> list[Fault]:
        return self._faults.pending

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
                defaults=None if parameter_defaults is None else _strings(parameter_defaults),
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
    ) -> FakeRun:
        """Move a run to `status`: a pipelines-service code (NotStarted, Running, Failed, Finished, Canceled)
        or a run-history spelling (Completed, Queued, CancelRequested, ...). Steps follow unless `steps`
        ({step name: run-history status}) says otherwise."""
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
            "Etag": _etag(),
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
            "Etag": _etag(),
        }
        self.endpoints[endpoint_id] = entity
        return entity

    def _touch_endpoint(self, entity: dict[str, Any]) -> None:
        entity["LastModifiedDate"] = iso(self.clock())
        entity["Etag"] = _etag()

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
        parameters = {**declared, **{k: _string(v) for k, v in given.items()}}
        tags = submission.get("tags") or submission.get("Tags") or {}
        now = self.clock()
        run = FakeRun(
            run_id=new_id(),
            pipeline_id=pipeline_id,
            experiment=experiment,
            created=now,
            tags={str(k): _string(v) for k, v in tags.items()},
            parameters=parameters,
            description=submission.get("Description"),
            run_source=submission.get("RunSource") or "API",
            run_type=submission.get("RunType") or ("HTTP" if endpoint_id else "SDK"),
            properties={str(k): _string(v) for k, v in (submission.get("Properties") or {}).items()},
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

    def _ensure_experiment(self, name: str) -> dict[str, Any]:
        if name not in self.experiments:
            self.experiments[name] = {
                "experimentId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"experiment/{name}")),
                "name": name,
                "description": None,
                "createdUtc": iso(self.clock()),
                "tags": {},
                "archivedTime": None,
                "latestCreatedRunCreatedUtc": None,
            }
        return self.experiments[name]

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
            "Etag": _etag(),
            "CreatedDate": now,
            "LastModifiedDate": now,
        }
        self.data_types[name] = entity
        return entity

    # ------------------------------------------------------------------ HTTP plumbing
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        method = handler.command.upper()
        parts = urlsplit(handler.path)
        body = _read_body(handler)
        record = RecordedRequest(
            method=method,
            path=unquote(parts.path),
            query={k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()},
            headers=_CaseInsensitiveDict(handler.headers.items()),
            body=body,
            raw_path=handler.path,
        )
        with self.lock:
            self.requests.append(record)
        fault = self._faults.take(method, record.path)
        record.fault = fault
        # a delay waits on an event, not time.sleep: stop() wakes it so no test hangs at shutdown
        if fault is not None and fault.delay and self._stopping.wait(fault.delay):
            handler.close_connection = True
            return
        if fault is not None and not fault.after_handling and (fault.drop or fault.status is not None):
            self._send_fault(handler, record, fault)
            return
        response = self._respond(record)
        if fault is not None and fault.after_handling:
            if fault.status is None:
                fault.drop = True
            self._send_fault(handler, record, fault)
            return
        self._send(handler, record, response)

    def _send_fault(self, handler: BaseHTTPRequestHandler, record: RecordedRequest, fault: Fault) -> None:
        if fault.drop:
            handler.close_connection = True
            record.status = None
            return
        assert fault.status is not None
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        content_type = None
        if isinstance(fault.body, str):  # e.g. a gateway's HTML or text page
            payload, content_type = fault.body.encode(), "text/plain; charset=utf-8"
        elif fault.body is not None:
            payload = fault.body
        else:
            payload = self._error_body(
                record, _ERROR_CODES.get(fault.status, "Error"), f"Injected fault ({fault.status})."
            )
        self._send(handler, record, Response(fault.status, payload, headers, content_type))

    def _send(self, handler: BaseHTTPRequestHandler, record: RecordedRequest, response: Response) -> None:
        if isinstance(response.payload, bytes):
            data, content_type = response.payload, response.content_type or "application/octet-stream"
        elif response.payload is None:
            data, content_type = b"", None
        else:
            data = json.dumps(response.payload).encode()
            content_type = "application/json; charset=utf-8"
        record.status = response.status
        request_id = record.header("x-ms-client-request-id") or new_id()
        try:
            handler.send_response(response.status)
            if content_type:
                handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(data)))
            handler.send_header("x-ms-request-id", request_id)
            handler.send_header("x-ms-client-request-id", request_id)
            handler.send_header("x-request-time", "0.001")
            for name, value in response.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True  # the client gave up (timeout test): nothing to do

    def _error_body(self, record: RecordedRequest, code: str, message: str) -> dict[str, Any]:
        correlation = {"operation": uuid.uuid4().hex, "request": uuid.uuid4().hex[:16]}
        if record.path.lower().startswith(("/history", "/datastore", "/content")):
            return {
                "error": {
                    "code": code,
                    "severity": None,
                    "message": message,
                    "messageFormat": None,
                    "messageParameters": None,
                    "referenceCode": None,
                    "detailsUri": None,
                    "target": None,
                    "details": [],
                    "innerError": None,
                    "debugInfo": None,
                },
                "correlation": correlation,
                "environment": "local",
                "location": "local",
                "time": iso(self.clock()),
                "componentName": "fake-aml",
            }
        return {
            "Error": {
                "Code": code,
                "Message": message,
                "Target": None,
                "Details": [],
                "InnerError": None,
                "DebugInfo": None,
            },
            "Correlation": correlation,
            "Environment": "local",
            "Location": "local",
            "Time": iso(self.clock()),
            "ComponentName": "fake-aml",
        }

    def _respond(self, record: RecordedRequest) -> Response:
        try:
            if record.method == "GET" and record.path.lower().startswith("/discovery"):
                return Response(200, self._discovery())
            self._check_auth(record)
            match = _SERVICE_PATH.match(record.path)
            if match is None:
                raise ServiceError(404, f"No route for {record.method} {record.path}.", "RouteNotFound")
            if match["ws"].lower() != self.workspace_path.lower():
                raise ServiceError(404, f"Workspace {match['ws']} not found.", "WorkspaceNotFound")
            service, rest = (match["service"] or "rp").lower(), match["rest"] or "/"
            for method, pattern, func in self._routes[service]:
                if method != record.method:
                    continue
                found = pattern.fullmatch(rest)
                if found:
                    with self.lock:
                        return func(record, *[None if g is None else unquote(g) for g in found.groups()])
            raise ServiceError(404, f"No route for {record.method} {record.path}.", "RouteNotFound")
        except ServiceError as error:
            return Response(error.status, self._error_body(record, error.code, error.message), error.headers)

    def _check_auth(self, record: RecordedRequest) -> None:
        challenge = {
            "WWW-Authenticate": 'Bearer authorization_uri="https://login.microsoftonline.com/common", '
            'error="invalid_token"'
        }
        value = record.header("Authorization") or ""
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ServiceError(
                401, "No bearer token in the Authorization header.", "AuthenticationFailed", challenge
            )
        audience = _audience(token.strip())
        record.audience = audience
        if self.require_audience and audience is not None and audience not in ARM_AUDIENCES:
            raise ServiceError(
                401,
                f"The token's audience '{audience}' is not valid for this service; use an ARM token "
                "(https://management.azure.com).",
                "InvalidAudience",
                challenge,
            )

    def _discovery(self) -> dict[str, str]:
        base = self.base_url
        return {
            "api": base,
            "catalog": base,
            "experimentation": base,
            "gallery": base,
            "history": base,
            "hyperdrive": base,
            "labeling": base,
            "modelmanagement": base,
            "pipelines": base,
            "studio": base,
        }

    # ------------------------------------------------------------------ routes
    def _build_routes(self) -> dict[str, list[Route]]:
        i = re.IGNORECASE
        seg = r"([^/]+)"
        runs = r"/(?:PipelineRuns|Experiments)"

        def r(method: str, pattern: str, func: Callable[..., Response]) -> Route:
            return (method, re.compile(pattern, i), func)

        pipelines = [
            r("GET", r"/DataTypes", self._get_data_types),
            r("POST", r"/DataTypes", self._post_data_type),
            r("PUT", rf"/DataTypes/{seg}", self._put_data_type_route),
            r("GET", rf"/DataSources/Hash/{seg}", self._get_data_source_by_hash),
            r("POST", r"/DataSources", self._post_data_source),
            r("GET", rf"/DataSources/{seg}", self._get_data_source),
            r("GET", rf"/Modules/Hash/{seg}", self._get_module_by_hash),
            r("POST", r"/Modules", self._post_module),
            r("GET", rf"/Modules/{seg}", self._get_module),
            r("PUT", rf"/Modules/{seg}", self._put_module),
            r("GET", rf"/Graphs/{seg}/Interface", self._get_graph_interface),
            r("GET", rf"/Graphs/{seg}", self._get_graph),
            r("POST", r"/Pipelines/Create", self._post_pipeline),
            r("GET", r"/Pipelines", self._list_pipelines),
            r("GET", rf"/Pipelines/{seg}", self._get_pipeline),
            r("PUT", rf"/Pipelines/{seg}/status", self._put_pipeline_status),
            r("POST", r"/PipelineEndpoints/Create", self._post_endpoint),
            r("GET", r"/PipelineEndpoints/Name", self._get_endpoint_by_name),
            r("GET", rf"/PipelineEndpoints/Id/{seg}", self._get_endpoint_by_id),
            r("GET", r"/PipelineEndpoints", self._list_endpoints),
            r("GET", rf"/PipelineEndpoints/{seg}/pipelines", self._list_endpoint_pipelines),
            r("PUT", rf"/PipelineEndpoints/{seg}", self._put_endpoint),
            r("POST", r"/PipelineRuns/PipelineEndpointSubmit/Name", self._submit_endpoint_by_name),
            r("POST", rf"/PipelineRuns/PipelineEndpointSubmit/Id/{seg}(?:/{seg})?", self._submit_endpoint),
            r("POST", rf"{runs}/PipelineSubmit/{seg}", self._submit_pipeline),
            r("GET", rf"{runs}/Pipeline/{seg}", self._list_pipeline_runs),
            r("POST", rf"{runs}/{seg}/Graph/AllNodes/Status", self._all_node_statuses),
            r("POST", rf"{runs}/{seg}/Graph/AllNodes/StatusCode", self._all_node_codes),
            r("POST", rf"{runs}/{seg}/Graph/Node/Status", self._node_status),
            r("POST", rf"{runs}/{seg}/Graph/Node/StatusCode", self._node_code),
            r("DELETE", rf"{runs}/{seg}/Execution", self._cancel_pipeline_run),
            r("GET", rf"{runs}/{seg}", self._get_pipeline_run),
        ]
        run_ref = rf"(?:/experiments/{seg}|/experimentids/{seg})?/runs/{seg}"
        history = [
            r("GET", rf"/experiments/{seg}", self._get_experiment),
            r("POST", rf"/experiments/{seg}", self._create_experiment),
            r("GET", rf"/experiments/{seg}/runs", self._list_history_runs),
            r("GET", rf"{run_ref}/children", self._get_history_children),
            r("GET", rf"{run_ref}/details", self._get_history_run),
            r("POST", rf"{run_ref}/cancel", self._cancel_history_run),
            r("GET", rf"{run_ref}", self._get_history_run),
        ]
        datastore = [
            r("GET", r"/default", self._get_default_datastore),
            r("GET", rf"/datastores/{seg}", self._get_datastore),
        ]
        content = [
            r("GET", r"/snapshots/latest/metadata", self._get_latest_snapshot),
            r("POST", r"/snapshots/getblob", self._get_snapshot_blobs),
            r("POST", rf"/snapshots/{seg}", self._post_snapshot),
            r("GET", rf"/snapshots/{seg}", self._get_snapshot),
        ]
        rp = [
            r("GET", r"/computes", self._list_computes),
            r("GET", rf"/computes/{seg}", self._get_compute),
        ]
        return {
            "pipelines": pipelines,
            "history": history,
            "datastore": datastore,
            "content": content,
            "rp": rp,
        }

    # data types, data sources, modules, graphs
    def _get_data_types(self, record: RecordedRequest) -> Response:
        return Response(200, list(self.data_types.values()))

    def _post_data_type(self, record: RecordedRequest) -> Response:
        info = _body(record)
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
        if type_id not in self.data_types:
            raise ServiceError(404, f"DataType {type_id} not found.")
        entity = self.data_types[type_id]
        entity.update({k: v for k, v in _body(record).items() if k in ("Description", "ParentDataTypeIds")})
        return Response(200, entity)

    def _get_data_source_by_hash(self, record: RecordedRequest, hash_: str) -> Response:
        for entity in self.data_sources.values():
            if entity.get("IdentifierHash") == hash_:
                return Response(200, entity)
        raise ServiceError(404, f"DataSource with hash {hash_} not found.")

    def _post_data_source(self, record: RecordedRequest) -> Response:
        info = _body(record)
        entity = {**info, "Id": new_id(), "EntityStatus": "Active", "Etag": _etag()}
        self.data_sources[entity["Id"]] = entity
        return Response(200, entity)

    def _get_data_source(self, record: RecordedRequest, source_id: str) -> Response:
        if source_id not in self.data_sources:
            raise ServiceError(404, f"DataSource {source_id} not found.")
        return Response(200, self.data_sources[source_id])

    def _get_module_by_hash(self, record: RecordedRequest, hash_: str) -> Response:
        for module in self.modules.values():
            if module["Data"].get("IdentifierHash") == hash_:
                return Response(200, module)
        raise ServiceError(404, f"Module with hash {hash_} not found.")

    def _post_module(self, record: RecordedRequest) -> Response:
        info = _body(record)
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
            "Etag": _etag(),
            "CreatedDate": now,
            "LastModifiedDate": now,
        }
        interface = info.get("StructuredInterface") or {}
        self.modules[module_id] = {"Data": data, "Interface": _entity_interface(interface)}
        return Response(200, data)

    def _get_module(self, record: RecordedRequest, module_id: str) -> Response:
        if module_id not in self.modules:
            raise ServiceError(404, f"Module {module_id} not found.")
        return Response(200, self.modules[module_id])

    def _put_module(self, record: RecordedRequest, module_id: str) -> Response:
        if module_id not in self.modules:
            raise ServiceError(404, f"Module {module_id} not found.")
        data = self.modules[module_id]["Data"]
        data.update(_body(record))
        data["Etag"] = _etag()
        return Response(200, data)

    def _get_graph(self, record: RecordedRequest, graph_id: str) -> Response:
        if graph_id not in self.graphs:
            raise ServiceError(404, f"Graph {graph_id} not found.")
        return Response(200, self.graphs[graph_id]["Graph"])

    def _get_graph_interface(self, record: RecordedRequest, graph_id: str) -> Response:
        if graph_id not in self.graphs:
            raise ServiceError(404, f"Graph {graph_id} not found.")
        return Response(200, self.graphs[graph_id].get("Interface") or {"Parameters": [], "Ports": {}})

    # published pipelines
    def _post_pipeline(self, record: RecordedRequest) -> Response:
        info = _body(record)
        if not info.get("Name"):
            raise ServiceError(400, "Name is required.", "BadArgument")
        graph = copy.deepcopy(info.get("Graph") or {})
        graph_id = new_id()
        graph.update({"Id": graph_id, "Etag": _etag(), "EntityStatus": "Active"})
        steps: list[tuple[str, str]] = []
        for node in graph.get("ModuleNodes") or []:
            module = self.modules.get(node.get("ModuleId") or "")
            name = module["Data"].get("Name") if module else None
            steps.append((node.get("Id") or uuid.uuid4().hex[:8], name or node.get("Id") or "step"))
        self.graphs[graph_id] = {"Graph": graph, "Interface": info.get("GraphInterface")}
        # The SDK sends the parameters' defaults in GraphInterface.Parameters (ParameterAssignments stays
        # empty); the entity shows them as ParameterAssignments (a guess at what the service derives).
        defaults = {
            str(p.get("Name")): _string(p.get("DefaultValue"))
            for p in (info.get("GraphInterface") or {}).get("Parameters") or []
        }
        defaults.update(_strings(info.get("ParameterAssignments") or {}))
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
        found = [p for p in self.pipelines.values() if not active_only or _is_active(p)]
        return Response(200, found)

    def _get_pipeline(self, record: RecordedRequest, pipeline_id: str) -> Response:
        if pipeline_id not in self.pipelines:
            raise ServiceError(404, f"Pipeline {pipeline_id} not found.")
        return Response(200, self.pipelines[pipeline_id])

    def _put_pipeline_status(self, record: RecordedRequest, pipeline_id: str) -> Response:
        if pipeline_id not in self.pipelines:
            raise ServiceError(404, f"Pipeline {pipeline_id} not found.")
        status = record.json()
        if isinstance(status, dict):
            status = status.get("EntityStatus") or status.get("Status")
        if status not in ENTITY_STATUSES:
            raise ServiceError(400, f"Invalid status {status!r}.", "BadArgument")
        entity = self.pipelines[pipeline_id]
        entity["EntityStatus"] = status
        entity["LastModifiedDate"] = iso(self.clock())
        entity["Etag"] = _etag()
        return Response(200, None)

    # pipeline endpoints
    def _post_endpoint(self, record: RecordedRequest) -> Response:
        info = _body(record)
        name, pipeline_id = info.get("Name"), info.get("PipelineId")
        if not name or not pipeline_id:
            raise ServiceError(400, "Name and PipelineId are required.", "BadArgument")
        if any(e["Name"] == name for e in self.endpoints.values()):
            raise ServiceError(409, f"PipelineEndpoint with name '{name}' already exists.", "Conflict")
        if pipeline_id not in self.pipelines:
            raise ServiceError(404, f"Pipeline {pipeline_id} not found.")
        entity = self._create_endpoint(
            name, info.get("Description"), pipeline_id, info.get("Properties") or {}
        )
        return Response(200, entity)

    def _endpoint(self, endpoint_id: str) -> dict[str, Any]:
        if endpoint_id not in self.endpoints:
            raise ServiceError(404, f"PipelineEndpoint {endpoint_id} not found.")
        return self.endpoints[endpoint_id]

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
        return Response(200, [e for e in self.endpoints.values() if not active_only or _is_active(e)])

    def _list_endpoint_pipelines(self, record: RecordedRequest, endpoint_id: str) -> Response:
        entity = self._endpoint(endpoint_id)
        active_only = record.query.get("activeOnly", "true").lower() != "false"
        found = []
        for version in entity["PipelineVersionList"]:
            pipeline = self.pipelines.get(version["PipelineId"])
            if pipeline is not None and (not active_only or _is_active(pipeline)):
                found.append(pipeline)
        return Response(200, found)

    def _put_endpoint(self, record: RecordedRequest, endpoint_id: str) -> Response:
        entity = self._endpoint(endpoint_id)
        info = _body(record)
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
        if not _is_active(entity):
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
        pipeline = self.pipelines.get(pipeline_id)
        if pipeline is None:
            raise ServiceError(404, f"Pipeline {pipeline_id} not found.")
        if pipeline["EntityStatus"] in ("Disabled", "2"):
            raise ServiceError(404, f"Pipeline {pipeline_id} is disabled.", "PipelineDisabled")
        submission = record.json()
        if not isinstance(submission, dict):
            raise ServiceError(400, "The body must be a PipelineSubmissionInfo object.", "BadArgument")
        run = self._create_run(pipeline_id, submission, endpoint_id)
        return Response(200, run.entity)

    # runs (pipelines service)
    def _run(self, run_id: str) -> FakeRun:
        if run_id not in self.runs:
            raise ServiceError(404, f"PipelineRun {run_id} not found.")
        return self.runs[run_id]

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

    def _cancel_pipeline_run(self, record: RecordedRequest, run_id: str) -> Response:
        self._cancel(self._run(run_id))
        return Response(200, None)

    # run history
    def _history_run(self, run_id: str) -> tuple[FakeRun, FakeStep | None]:
        if run_id in self.runs:
            return self.runs[run_id], None
        for run in self.runs.values():
            for step in run.steps:
                if step.run_id == run_id:
                    return run, step
        raise ServiceError(404, f"Run {run_id} was not found.", "UserError")

    def _check_experiment(self, run: FakeRun, experiment: str | None, experiment_id: str | None) -> None:
        if experiment is not None and experiment != run.experiment:
            raise ServiceError(
                404, f"Run {run.run_id} was not found in experiment {experiment}.", "UserError"
            )
        if (
            experiment_id is not None
            and experiment_id != self._ensure_experiment(run.experiment)["experimentId"]
        ):
            raise ServiceError(404, f"Run {run.run_id} was not found.", "UserError")

    def _get_history_run(
        self, record: RecordedRequest, experiment: str | None, experiment_id: str | None, run_id: str
    ) -> Response:
        run, step = self._history_run(run_id)
        self._check_experiment(run, experiment, experiment_id)
        return Response(200, run.step_dto(step) if step else run.history_dto(self.workspace_path))

    def _get_history_children(
        self, record: RecordedRequest, experiment: str | None, experiment_id: str | None, run_id: str
    ) -> Response:
        run, step = self._history_run(run_id)
        self._check_experiment(run, experiment, experiment_id)
        children = [] if step else [run.step_dto(s) for s in run.steps]
        order = record.query.get("$orderby", "")
        if order.lower().startswith("starttimeutc"):
            children.sort(key=lambda d: d["startTimeUtc"] or "", reverse=order.lower().endswith("desc"))
        top = record.query.get("$top")
        if top and top.isdigit():
            children = children[: int(top)]
        return Response(200, {"value": children, "continuationToken": None, "nextLink": None})

    def _cancel_history_run(
        self, record: RecordedRequest, experiment: str | None, experiment_id: str | None, run_id: str
    ) -> Response:
        run, step = self._history_run(run_id)
        self._check_experiment(run, experiment, experiment_id)
        self._cancel(run)
        return Response(200, run.step_dto(step) if step else run.history_dto(self.workspace_path))

    def _get_experiment(self, record: RecordedRequest, experiment: str) -> Response:
        if experiment not in self.experiments:
            raise ServiceError(404, f"Experiment {experiment} not found.", "UserError")
        return Response(200, self.experiments[experiment])

    def _create_experiment(self, record: RecordedRequest, experiment: str) -> Response:
        return Response(200, self._ensure_experiment(experiment))

    def _list_history_runs(self, record: RecordedRequest, experiment: str) -> Response:
        found = [r for r in self.runs.values() if r.experiment == experiment]
        found.sort(key=lambda r: r.created, reverse=True)
        return Response(
            200, {"value": [r.history_dto(self.workspace_path) for r in found], "continuationToken": None}
        )

    # datastore and snapshots (what the SDK needs to publish)
    def _datastore(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "dataStoreType": "AzureBlob",
            "hasBeenValidated": True,
            "azureStorageSection": {
                "accountName": "fakeamlstorage",
                "containerName": "azureml-blobstore-00000000",
                "endpoint": "core.windows.net",
                "protocol": "https",
                "credentialType": "None",
                "credential": None,
                "isSas": False,
                "blobCacheTimeout": 0,
            },
            "tags": {},
        }

    def _get_default_datastore(self, record: RecordedRequest) -> Response:
        return Response(200, self._datastore("workspaceblobstore"))

    def _get_datastore(self, record: RecordedRequest, name: str) -> Response:
        return Response(200, self._datastore(name))

    def _get_latest_snapshot(self, record: RecordedRequest) -> Response:
        # The SDK diffs the folder against this tree and uploads only what changed; an empty root means
        # "no snapshot yet" (every file is new, and getblob below then asks for no upload anyway).
        if not self.snapshots:
            return Response(200, {"id": None, "root": {}})
        snapshot_id = next(reversed(self.snapshots))
        return Response(
            200, {"id": snapshot_id, "root": self.snapshots[snapshot_id].get("DirTreeNode") or {}}
        )

    def _get_snapshot_blobs(self, record: RecordedRequest) -> Response:
        # No file nodes: the SDK then uploads nothing to *.blob.core.windows.net and just posts the tree.
        return Response(200, {"fileNodes": []})

    def _post_snapshot(self, record: RecordedRequest, snapshot_id: str) -> Response:
        info = record.json() or {}
        self.snapshots[snapshot_id] = info
        return Response(200, {"id": snapshot_id, "root": info.get("DirTreeNode"), "tags": None})

    def _get_snapshot(self, record: RecordedRequest, snapshot_id: str) -> Response:
        if snapshot_id not in self.snapshots:
            raise ServiceError(404, f"Snapshot {snapshot_id} not found.", "UserError")
        return Response(200, {"id": snapshot_id, "root": self.snapshots[snapshot_id].get("DirTreeNode")})

    # compute targets (the SDK lists them when a step names its compute target by name)
    def add_compute(self, name: str, vm_size: str = "STANDARD_DS3_V2") -> dict[str, Any]:
        with self.lock:
            now = iso(self.clock())
            self.computes[name] = {
                "id": f"{self.workspace_path}/computes/{name}",
                "name": name,
                "location": "westeurope",
                "type": "Microsoft.MachineLearningServices/workspaces/computes",
                "tags": {},
                "properties": {
                    "computeType": "AmlCompute",
                    "computeLocation": "westeurope",
                    "description": None,
                    "createdOn": now,
                    "modifiedOn": now,
                    "resourceId": None,
                    "provisioningErrors": None,
                    "provisioningState": "Succeeded",
                    "isAttachedCompute": False,
                    "disableLocalAuth": True,
                    "properties": {
                        "vmSize": vm_size,
                        "vmPriority": "Dedicated",
                        "scaleSettings": {
                            "minNodeCount": 0,
                            "maxNodeCount": 4,
                            "nodeIdleTimeBeforeScaleDown": "PT120S",
                        },
                        "subnet": None,
                        "remoteLoginPortPublicAccess": "Disabled",
                        "allocationState": "Steady",
                        "allocationStateTransitionTime": now,
                        "errors": None,
                        "currentNodeCount": 0,
                        "targetNodeCount": 0,
                        "nodeStateCounts": {
                            "preparingNodeCount": 0,
                            "runningNodeCount": 0,
                            "idleNodeCount": 0,
                            "unusableNodeCount": 0,
                            "leavingNodeCount": 0,
                            "preemptedNodeCount": 0,
                        },
                    },
                },
            }
            return self.computes[name]

    def _list_computes(self, record: RecordedRequest) -> Response:
        return Response(200, {"value": list(self.computes.values())})

    def _get_compute(self, record: RecordedRequest, name: str) -> Response:
        if name not in self.computes:
            raise ServiceError(404, f"Compute {name} not found.", "ResourceNotFound")
        return Response(200, self.computes[name])

    # snapshot contents as file names, for tests that check what a publish would upload
    def snapshot_files(self, snapshot_id: str) -> list[str]:
        def walk(node: dict[str, Any], prefix: str) -> list[str]:
            names: list[str] = []
            for name, child in (node.get("Children") or node.get("children") or {}).items():
                kind = child.get("Type") or child.get("type")
                if kind == "File" or kind == "file":
                    names.append(prefix + name)
                else:
                    names.extend(walk(child, prefix + name + "/"))
            return names

        return sorted(walk(self.snapshots[snapshot_id].get("DirTreeNode") or {}, ""))


# ---------------------------------------------------------------------- helpers
def _handler_for(fake: FakeAzureML) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # Small answers on kept-alive connections otherwise stall on Nagle + delayed ACK (~40 ms a call).
        disable_nagle_algorithm = True
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            try:
                fake._handle(self)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _any  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
            pass

    return Handler


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().strip() or b"0", 16)
            if size == 0:
                handler.rfile.readline()
                break
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
        return b"".join(chunks)
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


def _body(record: RecordedRequest) -> dict[str, Any]:
    value = record.json()
    if not isinstance(value, dict):
        raise ServiceError(400, "The request body must be a JSON object.", "BadArgument")
    return value


def _audience(token: str) -> str | None:
    """The audience of a fake-mi token or a JWT; None for an opaque test token (accepted)."""
    resource = token_resource(token)
    if resource is not None:
        return resource
    parts = token.split(".")
    if len(parts) == 3:
        try:
            claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        except ValueError:
            return None
        if isinstance(claims, dict) and isinstance(claims.get("aud"), str):
            return claims["aud"]
    return None


def _is_active(entity: dict[str, Any]) -> bool:
    return entity.get("EntityStatus") in ("Active", "0")


def _string(value: Any) -> str:
    # Newtonsoft turns JSON primitives into strings the .NET way: true -> "True"
    if isinstance(value, bool):
        return "True" if value else "False"
    return "" if value is None else str(value)


def _strings(values: dict[str, Any]) -> dict[str, str]:
    return {str(k): _string(v) for k, v in values.items()}


def _etag() -> str:
    return f'"{uuid.uuid4().hex[:16]}"'


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
