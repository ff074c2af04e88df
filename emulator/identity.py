"""A loopback App Service managed-identity endpoint (what Azure Functions exposes as IDENTITY_ENDPOINT), so
azure-identity's real ManagedIdentityCredential / DefaultAzureCredential can get tokens in tests."""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from emulator.loopback import LoopbackServer

# Variables that would make DefaultAzureCredential pick a credential other than the managed identity.
OTHER_CREDENTIAL_VARIABLES = (
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "AZURE_USERNAME",
    "AZURE_PASSWORD",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
)

TOKEN_PREFIX = "fake-mi"


def make_token(resource: str, serial: int) -> str:
    """`fake-mi.<base64url(resource)>.<n>`: opaque to the app, readable by the fake Azure ML (audience check)."""
    encoded = base64.urlsafe_b64encode(resource.encode()).decode().rstrip("=")
    return f"{TOKEN_PREFIX}.{encoded}.{serial}"


# The tenant and object id written into JWT-shaped tokens (azure-ai-ml reads `tid` for the studio URL).
TOKEN_TENANT = "00000000-0000-0000-0000-0000000000f1"
TOKEN_OBJECT_ID = "00000000-0000-0000-0000-0000000000aa"


def make_jwt(resource: str, serial: int, expires_on: int) -> str:
    """An unsigned JWT (`alg: none`) whose `aud` is `resource`, issued by `fake-mi`: what a client that reads
    its token's claims needs (azure-ai-ml checks that the `x-azureml-token` it sends has the ML audience)."""
    header = {"alg": "none", "typ": "JWT"}
    claims = {
        "aud": resource,
        "iss": TOKEN_PREFIX,
        "tid": TOKEN_TENANT,
        "oid": TOKEN_OBJECT_ID,
        "exp": expires_on,
        "jti": str(serial),
    }
    return f"{_b64url(header)}.{_b64url(claims)}."


def _b64url(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def token_resource(token: str) -> str | None:
    """The resource a fake-mi token (either form) was issued for, or None if `token` is not one."""
    parts = token.split(".")
    if len(parts) == 3 and parts[0] != TOKEN_PREFIX:
        return _jwt_resource(parts[1])
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        return None
    try:
        resource = base64.b64decode(parts[1] + "=" * (-len(parts[1]) % 4), altchars=b"-_", validate=True)
        return resource.decode() or None
    except (ValueError, UnicodeDecodeError):
        return None


def _jwt_resource(payload: str) -> str | None:
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        return None
    if not isinstance(claims, dict) or claims.get("iss") != TOKEN_PREFIX:
        return None
    audience = claims.get("aud")
    return audience if isinstance(audience, str) and audience else None


class FakeManagedIdentity(LoopbackServer):
    """App Service style managed identity (api-version 2019-08-01) on 127.0.0.1, port 0. `jwt=True` issues
    JWT-shaped tokens (make_jwt) instead of the opaque `fake-mi.<resource>.<n>` ones."""

    def __init__(self, *, jwt: bool = False) -> None:
        self.jwt = jwt
        self.header = secrets.token_hex(16)
        self.requests: list[tuple[str, str | None]] = []
        self.expires_in = 3600
        self._serial = itertools.count(1)
        self._fail_status: int | None = None
        self._fail_times: int | None = None
        self._delay = 0.0
        self._lock = threading.Lock()
        super().__init__()

    # lifecycle
    thread_name = "fake-mi"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        return _handler_for(self)

    @property
    def endpoint(self) -> str:
        return f"{self.url}/msi/token"

    def environ(self) -> dict[str, str]:
        return {"IDENTITY_ENDPOINT": self.endpoint, "IDENTITY_HEADER": self.header}

    # failure control
    def fail(self, status: int = 500, times: int | None = None) -> None:
        """Answer `status` to the next `times` token requests (None: until recover())."""
        with self._lock:
            self._fail_status, self._fail_times = status, times

    def recover(self) -> None:
        with self._lock:
            self._fail_status, self._fail_times, self._delay = None, None, 0.0

    def hang(self, seconds: float) -> None:
        """Hold every token request `seconds` before answering (until recover() or stop())."""
        with self._lock:
            self._delay = seconds

    def _take_failure(self) -> int | None:
        with self._lock:
            if self._fail_status is None:
                return None
            status = self._fail_status
            if self._fail_times is not None:
                self._fail_times -= 1
                if self._fail_times <= 0:
                    self._fail_status, self._fail_times = None, None
            return status

    def _answer(self, path: str, headers: Any) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(path)
        if parts.path != "/msi/token":
            return 404, {"error": "not_found", "error_description": f"no route {parts.path}"}
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if headers.get("X-IDENTITY-HEADER") != self.header:
            return 400, {
                "error": "invalid_request",
                "error_description": "X-IDENTITY-HEADER missing or wrong",
            }
        resource = query.get("resource")
        if not resource:
            return 400, {"error": "invalid_request", "error_description": "resource is required"}
        if query.get("api-version") != "2019-08-01":
            return 400, {"error": "invalid_request", "error_description": "api-version must be 2019-08-01"}
        client_id = query.get("client_id") or query.get("clientid")
        with self._lock:
            self.requests.append((resource, client_id))
        status = self._take_failure()
        if status is not None:
            return status, {"error": "service_unavailable", "error_description": "fake failure"}
        expires_on = int(time.time()) + int(self.expires_in)
        return 200, {
            "access_token": (
                make_jwt(resource, next(self._serial), expires_on)
                if self.jwt
                else make_token(resource, next(self._serial))
            ),
            "expires_on": str(expires_on),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": client_id or "00000000-0000-0000-0000-00000000c11d",
        }


def _handler_for(mi: FakeManagedIdentity) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # Small answers on kept-alive connections otherwise stall on Nagle + delayed ACK (~40 ms a call).
        disable_nagle_algorithm = True
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            with mi._lock:
                delay = mi._delay
            # an event, not time.sleep: stop() wakes a held request so no test waits at shutdown
            if delay and mi._stopping.wait(delay):
                self.close_connection = True
                return
            status, payload = mi._answer(self.path, self.headers)
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
            pass

    return Handler
