"""The fake Azure ML service: a threaded HTTP server on 127.0.0.1 that answers the pipelines service, run
history, the default-datastore and snapshot calls the SDK v1 and the app make, with explicit state, a request
log, injectable faults and a bearer-token audience check. This module is the HTTP plumbing (request record,
faults, auth, error shapes, routing); each service's routes are in their own module.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import uuid
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from emulator.aml.arm import ARM_API_VERSIONS, ArmService
from emulator.aml.artifacts import ArtifactService
from emulator.aml.compute import ComputeService
from emulator.aml.content import ContentService
from emulator.aml.dataset import DatasetService, FakeDatasetVersion
from emulator.aml.datastore import BlobStore, DatastoreService
from emulator.aml.discovery import DiscoveryService
from emulator.aml.execution import ExecutionService
from emulator.aml.faults import Fault, FaultBook, compile_pattern
from emulator.aml.history import HistoryService
from emulator.aml.jobs import RUN_TOKEN_AUDIENCE, JobContext
from emulator.aml.models import ModelService
from emulator.aml.pipelines import BUILTIN_DATA_TYPES, PipelinesService
from emulator.aml.state import ARM_AUDIENCES, Clock, FakeRun, history_error, iso, new_id
from emulator.aml.v2_execution import V2ExecutionService
from emulator.aml.v2_jobs import V2JobService
from emulator.aml.wire import (
    ERROR_CODES,
    CaseInsensitiveDict,
    RecordedRequest,
    Response,
    Route,
    ServiceError,
)
from emulator.identity import token_resource
from emulator.loopback import LoopbackServer

# /{service}/v{version}{workspace}{rest} for the data-plane services, /rp/workspaces{workspace}{rest} for the
# workspace resource provider
_SERVICE_PATH = re.compile(
    r"^/(?:(?P<service>[a-z]+)/v(?P<version>\d+\.\d+)|(?P<rp>rp/workspaces))"
    r"(?P<ws>/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.MachineLearningServices/workspaces/[^/]+)"
    r"(?P<rest>/.*)?$",
    re.IGNORECASE,
)

# {workspace}{rest}?api-version=...: Azure ML v2's ARM-style control plane (arm.py, v2_jobs.py)
_ARM_PATH = re.compile(
    r"^(?P<ws>/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.MachineLearningServices"
    r"/workspaces/[^/]+)(?P<rest>/.*)?$",
    re.IGNORECASE,
)

# RecordedRequest is re-exported: tests import it from here.
__all__ = ["FakeAzureML", "RecordedRequest", "Response", "ServiceError"]


class FakeAzureML(
    DiscoveryService,
    PipelinesService,
    HistoryService,
    DatastoreService,
    ContentService,
    ComputeService,
    ExecutionService,
    DatasetService,
    ModelService,
    ArtifactService,
    JobContext,
    V2ExecutionService,
    V2JobService,
    ArmService,
    LoopbackServer,
):
    """The fake workspace. Each service's routes and state helpers live in its own module (a mixin here);
    this class holds the state they share, the request log, the faults and the HTTP plumbing. emulator/README.md
    lists the routes and the API."""

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
        self.run_tokens: dict[str, str] = {}  # run token -> step run id (job_environment)
        self.blob_store: BlobStore | None = None  # use_blob_store: what backs workspaceblobstore
        self.datasets: dict[str, list[FakeDatasetVersion]] = {}  # name -> versions, oldest first
        self.models: dict[str, list[dict[str, Any]]] = {}  # name -> model DTOs, oldest first
        self.assets: dict[str, dict[str, Any]] = {}  # asset id -> asset
        self.artifacts: set[str] = set()  # "{origin}/{container}/{path}" stored in Azurite
        self._init_arm()
        self._faults = FaultBook()
        LoopbackServer.__init__(self)
        self._routes = self._build_routes()
        for name, is_dir in BUILTIN_DATA_TYPES:
            self._put_data_type(name, f"built-in {name}", is_dir, [])
        self.add_compute("cpu-cluster")

    # ------------------------------------------------------------------ lifecycle
    thread_name = "fake-aml"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        return _handler_for(self)

    def stop(self) -> None:
        self._stopping.set()  # wakes every delayed request
        self._stop_all_executions()
        self._stop_snapshot_uploads()
        super().stop()

    @property
    def base_url(self) -> str:
        return self.url

    def app_settings(
        self, backend: str = "azureml", compute: str = "cpu-cluster", **more: str
    ) -> dict[str, str]:
        """The app settings that aim the app at this workspace: the backend, the workspace, its data plane (and
        for azureml-v2 its ARM base), the compute; `more` adds or overrides settings (an identity's
        variables, a HOME, a timeout)."""
        settings = {
            "PIPELINE_BACKEND": backend,
            "AML_SUBSCRIPTION_ID": self.subscription_id,
            "AML_RESOURCE_GROUP": self.resource_group,
            "AML_WORKSPACE_NAME": self.workspace_name,
            "AML_API_BASE": self.base_url,
            "AML_COMPUTE_NAME": compute,
        }
        if backend == "azureml-v2":
            settings["AML_ARM_BASE"] = self.base_url
        return {**settings, **more}

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
        rendezvous: threading.Barrier | None = None,
        body_contains: str | None = None,
    ) -> Fault:
        """The next `times` requests (None: all) whose method matches and whose path (without the query)
        matches `path_pattern` (re.search, case-insensitive) get the fault. With a `rendezvous` (a
        threading.Barrier, given a timeout), the requests that take the fault wait for each other before they
        are handled and again before they are answered, so concurrent requests (two submits of two instances)
        are all handled before any is answered, whatever the threads' timing; a broken barrier drops the
        connection. With `body_contains`, only requests whose body holds that text take it (one run query
        among several on the same path)."""
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
                rendezvous=rendezvous,
                body_contains=body_contains,
            )
        )

    def clear_faults(self) -> None:
        self._faults.clear()

    @property
    def pending_faults(self) -> list[Fault]:
        return self._faults.pending

    # ------------------------------------------------------------------ HTTP plumbing
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        method = handler.command.upper()
        parts = urlsplit(handler.path)
        body = _read_body(handler)
        record = RecordedRequest(
            method=method,
            path=unquote(parts.path),
            query={k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()},
            headers=CaseInsensitiveDict(handler.headers.items()),
            body=body,
            raw_path=handler.path,
        )
        with self.lock:
            self.requests.append(record)
        fault = self._faults.take(method, record.path, body)
        record.fault = fault
        # a delay waits on an event, not time.sleep: stop() wakes it so no test hangs at shutdown
        if fault is not None and fault.delay and self._stopping.wait(fault.delay):
            handler.close_connection = True
            return
        if fault is not None and not fault.after_handling and (fault.drop or fault.status is not None):
            self._send_fault(handler, record, fault)
            return
        if not self._meet(fault, handler, record):
            return
        response = self._respond(record)
        if not self._meet(fault, handler, record):
            return
        if fault is not None and fault.after_handling:
            if fault.status is None:
                fault.drop = True
            self._send_fault(handler, record, fault)
            return
        self._send(handler, record, response)

    @staticmethod
    def _meet(fault: Fault | None, handler: BaseHTTPRequestHandler, record: RecordedRequest) -> bool:
        """Wait at the fault's rendezvous, if it has one; False (the connection dropped) when it broke."""
        if fault is None or fault.rendezvous is None:
            return True
        try:
            fault.rendezvous.wait()
        except threading.BrokenBarrierError:
            handler.close_connection = True
            record.status = None
            return False
        return True

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
                record,
                fault.status,
                ERROR_CODES.get(fault.status, "Error"),
                f"Injected fault ({fault.status}).",
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

    def _error_body(self, record: RecordedRequest, status: int, code: str, message: str) -> dict[str, Any]:
        correlation = {"operation": uuid.uuid4().hex, "request": uuid.uuid4().hex[:16]}
        path = record.path.lower()
        if path.startswith("/subscriptions/"):
            # ARM's ErrorResponse, as every Azure resource provider answers
            return {"error": {"code": code, "message": message, "details": [], "additionalInfo": []}}
        if path.startswith("/modelmanagement"):
            # model management's ModelErrorResponse is flat: the SDK reads statusCode and correlation
            return {
                "code": code,
                "statusCode": status,
                "message": message,
                "details": [],
                "correlation": correlation,
            }
        if path.startswith(("/history", "/datastore", "/content", "/dataset", "/data/", "/artifact")):
            return history_error(
                code,
                message,
                correlation=correlation,
                environment="local",
                location="local",
                time=iso(self.clock()),
                component_name="fake-aml",
            )
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
                match = _ARM_PATH.match(record.path)
                if match is None:
                    raise ServiceError(404, f"No route for {record.method} {record.path}.", "RouteNotFound")
                service = "arm"
                self._check_api_version(record)
            else:
                service = (match["service"] or "rp").lower()
            if match["ws"].lower() != self.workspace_path.lower():
                code = "ResourceNotFound" if service == "arm" else "WorkspaceNotFound"
                raise ServiceError(404, f"Workspace {match['ws']} not found.", code)
            rest = match["rest"] or "/"
            for method, pattern, func in self._routes.get(service, []):
                if method != record.method:
                    continue
                found = pattern.fullmatch(rest)
                if found:
                    with self.lock:
                        return func(record, *[None if g is None else unquote(g) for g in found.groups()])
            raise ServiceError(404, f"No route for {record.method} {record.path}.", "RouteNotFound")
        except ServiceError as error:
            return Response(
                error.status, self._error_body(record, error.status, error.code, error.message), error.headers
            )

    def _check_api_version(self, record: RecordedRequest) -> None:
        version = record.api_version
        if not version:
            raise ServiceError(
                400,
                "The api-version query parameter (?api-version=) is required for all requests.",
                "MissingApiVersionParameter",
            )
        if version not in ARM_API_VERSIONS:
            raise ServiceError(
                400,
                f"The resource type 'workspaces' could not be found for api version '{version}'. The supported "
                f"api-versions are '{', '.join(sorted(ARM_API_VERSIONS))}'.",
                "NoRegisteredProviderFound",
            )

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
        token = token.strip()
        if token in self.run_tokens:  # a step's AZUREML_RUN_TOKEN, issued by job_environment
            record.audience = RUN_TOKEN_AUDIENCE
            if _expires(token) <= self.clock().timestamp():
                raise ServiceError(401, "The run token has expired.", "AuthenticationFailed", challenge)
            return
        audience = _audience(token)
        record.audience = audience
        # A client aimed at the emulator as a custom cloud (azure-ai-ml's cloud_metadata) asks for tokens of
        # that cloud's resource manager endpoint: the emulator's own URL.
        own = audience is not None and audience.rstrip("/") == self.base_url
        if self.require_audience and audience is not None and audience not in ARM_AUDIENCES and not own:
            raise ServiceError(
                401,
                f"The token's audience '{audience}' is not valid for this service; use an ARM token "
                "(https://management.azure.com).",
                "InvalidAudience",
                challenge,
            )

    # ------------------------------------------------------------------ routes
    def _build_routes(self) -> dict[str, list[Route]]:
        return {
            "pipelines": self._pipelines_routes(),
            "history": self._history_routes(),
            "datastore": self._datastore_routes(),
            "content": self._content_routes(),
            "rp": self._compute_routes(),
            "dataset": self._dataset_routes(),
            "data": self._data_routes(),
            "modelmanagement": self._model_routes(),
            "artifact": self._artifact_routes(),
            "arm": [*self._arm_routes(), *self._job_routes()],
        }


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


def _audience(token: str) -> str | None:
    """The audience of a fake-mi token or a JWT; None for an opaque test token (accepted)."""
    resource = token_resource(token)
    if resource is not None:
        return resource
    claims = _claims(token)
    return claims["aud"] if isinstance(claims.get("aud"), str) else None


def _expires(token: str) -> float:
    exp = _claims(token).get("exp")
    return float(exp) if isinstance(exp, int | float) else 0.0


def _claims(token: str) -> dict[str, Any]:
    """A JWT's claims, unverified; {} for anything else."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return {}
    return claims if isinstance(claims, dict) else {}
