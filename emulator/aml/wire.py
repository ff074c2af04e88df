"""What every service module of the fake shares: the recorded request, the response, the service error, a
route, and the small value helpers the services' wire shapes need."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from emulator.aml.faults import Fault

ERROR_CODES = {
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

# a path segment captured for a route's handler (unquoted before the call)
SEG = r"([^/]+)"


class CaseInsensitiveDict(dict):
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

    @property
    def api_version(self) -> str | None:
        """The `api-version` of an ARM-style request (None for the data-plane services, which have none)."""
        return self.query.get("api-version")

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
        self.code = code or ERROR_CODES.get(status, "Error")
        self.headers = headers or {}


Route = tuple[str, re.Pattern[str], Callable[..., Response]]


def route(method: str, pattern: str, func: Callable[..., Response]) -> Route:
    """A route: the method, the path after the workspace (re.fullmatch, case-insensitive), the handler."""
    return (method, re.compile(pattern, re.IGNORECASE), func)


def json_body(record: RecordedRequest) -> dict[str, Any]:
    value = record.json()
    if not isinstance(value, dict):
        raise ServiceError(400, "The request body must be a JSON object.", "BadArgument")
    return value


def as_string(value: Any) -> str:
    # Newtonsoft turns JSON primitives into strings the .NET way: true -> "True"
    if isinstance(value, bool):
        return "True" if value else "False"
    return "" if value is None else str(value)


def as_strings(values: dict[str, Any]) -> dict[str, str]:
    return {str(k): as_string(v) for k, v in values.items()}


def new_etag() -> str:
    return f'"{uuid.uuid4().hex[:16]}"'
