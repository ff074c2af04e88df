"""The HTTP API of docs/product.md as plain functions: request parts in, an ApiResponse out. Input is parsed here
and judged by the service's own checks before the service is built, every answer runs inside one bounded Azure
ML budget (budget.http_request_budget: AML_HTTP_BUDGET_SECONDS, at most 4 attempts of any call), and every
error becomes its status and JSON body in one place (`respond`)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from pipeline_def.budget import http_request_budget
from pipeline_def.errors import (
    AzureMLError,
    Forbidden,
    InvalidRequest,
    PayloadTooLarge,
    PipelineError,
    Throttled,
    Unauthorized,
)
from pipeline_def.service import (
    DEFAULT_LIST_LIMIT,
    check_limit,
    check_parameters,
    check_run_id,
    get_service,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
BODY_KEYS = ("parameters",)
DEFAULT_RETRY_AFTER_SECONDS = 30
JSON_CONTENT_TYPE = "application/json"

# What a 401 or 403 most likely means, added to the message unless the backend's message already says it.
_HINTS = (
    (
        Unauthorized,
        "audience",
        "likely cause: the token is not for Azure Resource Manager (audience https://management.azure.com) "
        "or has expired; check the managed identity (and AZURE_CLIENT_ID for a user-assigned one)",
    ),
    (
        Forbidden,
        "role",
        "likely cause: the app's identity has no role on the workspace; grant it 'AzureML Data Scientist' "
        "on the Azure ML workspace",
    ),
)


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def body_bytes(self) -> bytes:
        return json.dumps(self.body, default=str).encode("utf-8")


def respond(handler: Callable[..., ApiResponse], *args: Any) -> ApiResponse:
    """Run one route handler inside one HTTP request budget and turn whatever it raises into the answer
    docs/product.md gives for it (NotPublished is 409 `not_published`, as its class says)."""
    try:
        with http_request_budget():
            return handler(*args)
    except PipelineError as error:
        return error_response(error)
    except Exception:
        # The traceback goes to the log (Application Insights), never to the caller.
        log.exception("unexpected error while answering %s", getattr(handler, "__name__", handler))
        return _error(500, "internal_error", "internal error; the details are in the app's log")


def error_response(error: PipelineError) -> ApiResponse:
    message = error.message
    headers: dict[str, str] = {}
    if isinstance(error, AzureMLError):
        for kind, keyword, hint in _HINTS:
            if isinstance(error, kind) and keyword not in message.lower():
                message = f"{message} ({hint})"
        if error.correlation_id and error.correlation_id not in message:
            message = f"{message} [Azure ML correlation id {error.correlation_id}]"
        log.warning("Azure ML call failed: %s: %s", error.code, message)
    if isinstance(error, Throttled):
        headers["Retry-After"] = str(retry_after_seconds(error.retry_after))
    if error.http_status >= 500 and not isinstance(error, AzureMLError):
        log.error("%s: %s", error.code, message)
    return _error(error.http_status, error.code, message, headers)


def retry_after_seconds(retry_after: float | None) -> int:
    """Retry-After as the whole number of seconds HTTP wants (rounded up, at least 1)."""
    if retry_after is None or not math.isfinite(retry_after) or retry_after <= 0:
        return DEFAULT_RETRY_AFTER_SECONDS if retry_after is None else 1
    return max(1, math.ceil(retry_after))


def start_run(url: str, body: bytes | None) -> ApiResponse:
    """POST /api/runs: 202 with the run id, its status, where to follow it, and which published version runs
    (`pipeline_version`) and whether it is the current fingerprint (`current`). Never publishes."""
    parameters = parse_start_body(body)
    check_parameters(parameters)  # before the service is built: bad input never costs a backend
    started = get_service().start_run(parameters, trigger="http")
    run = started.run
    status_url = status_url_for(url, run.run_id, collection=True)
    return ApiResponse(
        202,
        {
            "run_id": run.run_id,
            "status": run.status,
            "status_url": status_url,
            "portal_url": run.portal_url,
            "pipeline_version": started.version,
            "current": started.current,
        },
        {"Location": status_url},
    )


def get_run(run_id: str | None) -> ApiResponse:
    """GET /api/runs/{run_id}: the run, with its steps."""
    checked = check_run_id(run_id)
    run = get_service().get_run(checked)
    body = run.to_dict()
    body.setdefault("steps", [])
    return ApiResponse(200, body)


def list_runs(params: Mapping[str, str]) -> ApiResponse:
    """GET /api/runs?limit=N: the most recent runs, newest first."""
    limit = parse_limit(params.get("limit"))
    runs = get_service().list_runs(limit)
    return ApiResponse(200, {"runs": [run.to_dict() for run in runs]})


def cancel_run(url: str, run_id: str | None) -> ApiResponse:
    """POST /api/runs/{run_id}/cancel: 202 once Azure ML (or the local runner) took the request."""
    checked = check_run_id(run_id)
    get_service().cancel(checked)
    status_url = status_url_for(url, checked, collection=False)
    return ApiResponse(
        202, {"run_id": checked, "cancel": "requested", "status_url": status_url}, {"Location": status_url}
    )


def parse_start_body(body: bytes | None) -> dict[str, Any] | None:
    """The `parameters` of a start request (None for none), or InvalidRequest/PayloadTooLarge."""
    if body is not None and len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"the request body is larger than {MAX_BODY_BYTES // 1024} KiB")
    if body is None or not body.strip():
        return None
    try:
        document = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise InvalidRequest("the request body is not UTF-8 text") from None
    except RecursionError:
        raise InvalidRequest("the request body is nested too deeply") from None
    except ValueError as error:
        raise InvalidRequest(f"the request body is not valid JSON: {str(error)[:200]}") from None
    if not isinstance(document, dict):
        raise InvalidRequest(
            'the request body must be a JSON object such as {"parameters": {"sample_size": 25}}'
        )
    unknown = sorted(key for key in document if key not in BODY_KEYS)
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(map(repr, unknown))[:200]}; known: parameters")
    parameters = document.get("parameters")
    if "parameters" in document and not isinstance(parameters, dict):
        raise InvalidRequest("'parameters' must be a JSON object")
    return parameters


def parse_limit(raw: str | None) -> int:
    """The `limit` query parameter as a number, checked by the service's own rule (so before the service is
    built: bad input never costs a backend)."""
    if raw is None:
        return DEFAULT_LIST_LIMIT
    text = raw.strip()
    return check_limit(int(text) if text.isascii() and text.isdigit() and len(text) <= 4 else None)


def status_url_for(request_url: str, run_id: str, *, collection: bool) -> str:
    """The absolute URL of a run's status, built from the URL the caller used (same scheme, host and route
    prefix) without its query string, so a function key in `?code=` is never echoed back."""
    parts = urlsplit(request_url)
    path = parts.path.rstrip("/")
    if not collection:
        # .../runs/{run_id}/cancel -> .../runs
        path = path.rsplit("/", 2)[0]
    return urlunsplit((parts.scheme, parts.netloc, f"{path}/{quote(run_id, safe='')}", "", ""))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> ApiResponse:
    return ApiResponse(status, {"error": {"code": code, "message": message}}, dict(headers or {}))
