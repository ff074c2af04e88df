"""How one call reaches Azure ML: a token cached until five minutes before it expires, the call's time budget, one
retry loop, and the mapping from an error answer to a typed error. The verbs are in client.py (SDK v1's services)
and azureml_v2/client.py (v2's ARM routes); both send through one Transport. The token's scope is ARM's by
default; the v2 client asks for its ARM base's scope (AML_ARM_BASE) and, for a pipeline job's
`x-azureml-token`, for Azure ML's (ML_SCOPE) through a second TokenCache on the same credential."""

from __future__ import annotations

import email.utils
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypedDict
from urllib.parse import quote

import requests
from urllib3.exceptions import MaxRetryError, NewConnectionError

from pipeline_def.budget import current_http_budget
from pipeline_def.errors import (
    AzureMLError,
    EntityChanged,
    Forbidden,
    NotFound,
    ServiceError,
    Throttled,
    TokenError,
    Unauthorized,
    Unreachable,
)
from pipeline_def.settings import Settings

log = logging.getLogger(__name__)

ARM_SCOPE = "https://management.azure.com/.default"
# Azure ML's own audience: the `x-azureml-token` azure-ai-ml sends with every pipeline job PUT.
ML_SCOPE = "https://ml.azure.com/.default"
# A token is renewed this long before it expires, so no call goes out with one about to lapse.
TOKEN_REFRESH_MARGIN = 300.0
CREDENTIAL_RETRIES = 2
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# The one answer that says Azure ML did not act on a request: what a non-idempotent POST may retry blindly.
NOT_TAKEN = frozenset({429})
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 20.0
MAX_ATTEMPTS = 6
# The least time worth starting a call with, inside an HTTP request's budget.
MIN_CALL_SECONDS = 0.05
_CORRELATION_HEADERS = (
    "x-ms-correlation-request-id",
    "x-ms-request-id",
    "x-request-id",
    "x-ms-client-request-id",
)
_MAX_MESSAGE = 300

# What a call does when it may have reached the service but no answer says so: an answer that stands for the
# lost one (for a submit, the run it started), or None to retry.
OnAmbiguous = Callable[[AzureMLError], requests.Response | None]


# ----- the token


class TokenCache:
    """One token of `scope` (ARM's by default) from an azure-identity credential, reused until five minutes
    before it expires. Thread-safe. `sharing` another cache uses that cache's credential (one
    DefaultAzureCredential, built on first use, for every audience)."""

    def __init__(
        self,
        credential: Any,
        client_id: str | None,
        monotonic: Callable[[], float],
        scope: str = ARM_SCOPE,
        sharing: TokenCache | None = None,
    ) -> None:
        self._credential = credential
        self._client_id = client_id
        self._monotonic = monotonic
        self.scope = scope
        self._sharing = sharing
        self._token: tuple[str, float] | None = None
        self._lock = threading.Lock()

    @property
    def resource(self) -> str:
        """What the token is for, as the error messages name it (the scope without `/.default`)."""
        return self.scope.removesuffix("/.default")

    @property
    def credential(self) -> Any:
        """The azure-identity credential (DefaultAzureCredential unless one was given); the SDK shares it."""
        if self._sharing is not None:
            return self._sharing.credential
        with self._lock:
            if self._credential is None:
                from azure.identity import DefaultAzureCredential

                # azure-core would retry a failing identity endpoint for about 5 s; keep it well inside a
                # tick's budget (about 0.5 s) and let our own error say what to check.
                self._credential = DefaultAzureCredential(
                    managed_identity_client_id=self._client_id,
                    retry_total=CREDENTIAL_RETRIES,
                    retry_backoff_factor=0.25,
                )
            return self._credential

    def token(self, deadline: float | None = None) -> str:
        """The bearer token. With a `deadline` (an HTTP request's), getting a new one gives up at the deadline
        whatever the credential is doing."""
        credential = self.credential
        with self._lock:
            if self._token and time.time() < self._token[1] - TOKEN_REFRESH_MARGIN:
                return self._token[0]
        try:
            if deadline is None:
                access = credential.get_token(self.scope)
            else:
                access = _within(deadline - self._monotonic(), credential.get_token, self.scope)
        except _TimeIsUp:
            raise TokenError(
                f"no Azure token could be obtained for {self.resource} within the request's "
                "time budget (AML_HTTP_BUDGET_SECONDS): check the managed identity (AZURE_CLIENT_ID for a "
                "user-assigned one)"
            ) from None
        except Exception as error:  # azure-identity raises several types; the caller needs only one
            raise TokenError(
                f"no Azure token could be obtained for {self.resource} "
                f"({type(error).__name__}): check the managed identity (AZURE_CLIENT_ID for a "
                "user-assigned one) or sign in with `az login` locally"
            ) from None
        with self._lock:
            self._token = (access.token, float(access.expires_on))
        return str(access.token)

    def forget(self) -> None:
        """Drop the cached token: the next call asks azure-identity again, which renews a lapsed one."""
        with self._lock:
            self._token = None


class _TimeIsUp(Exception):
    pass


def _within(seconds: float, function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)`, given up after `seconds`: it runs in a daemon thread that is left to finish on its
    own (azure-identity's calls cannot be interrupted). Raises _TimeIsUp when it is not done in time."""
    if seconds <= 0:
        raise _TimeIsUp()
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["value"] = function(*args)
        except BaseException as error:  # handed to the caller's thread as is
            outcome["error"] = error

    worker = threading.Thread(target=call, name="token-within-budget", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise _TimeIsUp()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# ----- the budget of one call


@dataclass(frozen=True)
class CallBudget:
    """How long one call may take, its retries included, and how often it may be sent. Inside an HTTP
    request (budget.http_request_budget) the deadline is the request's own, shared by every call made in it,
    and `strict`: nothing is sent past it. Otherwise each call may retry for AML_RETRY_BUDGET_SECONDS."""

    deadline: float
    max_attempts: int
    strict: bool
    request_timeout: float

    @classmethod
    def starting_now(cls, settings: Settings, monotonic: Callable[[], float]) -> CallBudget:
        scope = current_http_budget()
        if scope is not None:
            deadline = scope.deadline_from(monotonic, settings.http_budget)
            return cls(deadline, scope.max_attempts, True, settings.request_timeout)
        return cls(monotonic() + settings.retry_budget, MAX_ATTEMPTS, False, settings.request_timeout)

    def timeout_for(self, attempt: int, now: float) -> float | None:
        """The timeout of attempt number `attempt` (from 1) sent at `now`; None when a strict budget leaves
        too little time to send it at all."""
        remaining = self.deadline - now
        if self.strict:
            return min(self.request_timeout, remaining) if remaining >= MIN_CALL_SECONDS else None
        if attempt == 1:
            return self.request_timeout
        return min(self.request_timeout, max(0.5, remaining))

    def may_wait(self, delay: float, attempt: int, now: float) -> bool:
        """Whether another attempt may follow attempt number `attempt` after waiting `delay` seconds."""
        return attempt < self.max_attempts and delay <= self.deadline - now


# ----- sending, with the one retry loop


class TransportOptions(TypedDict, total=False):
    """What a client may pass on to its Transport besides settings and credential (tests inject a session
    and the clock)."""

    session: requests.Session | None
    monotonic: Callable[[], float]
    sleep: Callable[[float], None]


class Transport:
    """Sends calls to Azure ML with a bearer token of `scope` and retries them within their budget.
    Thread-safe."""

    def __init__(
        self,
        settings: Settings,
        credential: Any = None,
        *,
        session: requests.Session | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        scope: str = ARM_SCOPE,
    ) -> None:
        self.settings = settings
        self.tokens = TokenCache(credential, settings.azure_client_id, monotonic, scope)
        self._session = session or requests.Session()
        self._monotonic = monotonic
        self._sleep = sleep

    def budget(self) -> CallBudget:
        """The budget of a call starting now (see CallBudget)."""
        return CallBudget.starting_now(self.settings, self._monotonic)

    def token_cache(self, scope: str) -> TokenCache:
        """A second TokenCache, of another `scope`, on this transport's credential (v2's Azure ML token)."""
        return TokenCache(None, self.settings.azure_client_id, self._monotonic, scope, sharing=self.tokens)

    def send(
        self,
        method: str,
        url: str,
        *,
        what: str,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        budget: CallBudget | None = None,
        retry_statuses: frozenset[int] = RETRY_STATUSES,
        retry_no_answer: bool = True,
        on_ambiguous: OnAmbiguous | None = None,
        bearer: bool = True,
    ) -> requests.Response:
        """Send one call and return its successful answer, retrying within `budget` (a new one by default)
        the answers in `retry_statuses` and, when `retry_no_answer`, timeouts and dropped connections. The
        defaults suit idempotent calls (GET/PUT/DELETE). A POST that must not be repeated blindly either
        retries only what Azure ML did not take, or supplies `on_ambiguous`: called before any retry after a
        failure that may have reached the service, it returns the answer that stands for the lost one, or None
        to retry. `what` names the call in error messages. `data` is a raw body (a blob), sent instead of
        `json_body`; `bearer=False` sends no token (a SAS URL carries its own authorization)."""
        budget = budget or self.budget()
        attempt = 0
        while True:
            attempt += 1
            retry_after = None
            try:
                response = self._send_once(
                    method, url, what, budget, attempt, params, json_body, data, headers, bearer
                )
            except requests.RequestException as error:
                failure: AzureMLError = unreachable(what, error)
                if not retry_no_answer:
                    raise failure from None
                ambiguous = not never_sent(error)
            else:
                if response.status_code < 400:
                    return response
                if response.status_code == 401:
                    self.tokens.forget()  # any cached token is invalid
                failure = error_for(response, what, self.settings.workspace_name, self.tokens.resource)
                if response.status_code not in retry_statuses:
                    raise failure
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                ambiguous = response.status_code not in NOT_TAKEN
            if ambiguous and on_ambiguous is not None:
                found = on_ambiguous(failure)
                if found is not None:
                    return found
            self._wait_or_raise(failure, retry_after, attempt, budget)

    def _send_once(
        self,
        method: str,
        url: str,
        what: str,
        budget: CallBudget,
        attempt: int,
        params: dict[str, str] | None,
        json_body: Any,
        data: bytes | None,
        extra_headers: dict[str, str] | None,
        bearer: bool,
    ) -> requests.Response:
        headers = {"Accept": "application/json"}
        if bearer:
            token = self.tokens.token(budget.deadline if budget.strict else None)
            headers["Authorization"] = f"Bearer {token}"
        timeout = budget.timeout_for(attempt, self._monotonic())
        if timeout is None:
            raise Unreachable(f"Azure ML gave no answer within the request's time budget on {what}")
        headers.update(extra_headers or {})
        if json_body is not None:
            headers["Content-Type"] = "application/json"
        return self._session.request(
            method, url, params=params, json=json_body, data=data, headers=headers, timeout=timeout
        )

    def _wait_or_raise(
        self, failure: AzureMLError, retry_after: float | None, attempt: int, budget: CallBudget
    ) -> None:
        """Sleep before the next attempt, or raise `failure` when the attempts or the budget are spent."""
        delay = (
            retry_after if retry_after is not None else min(BACKOFF_FIRST * 2 ** (attempt - 1), BACKOFF_MAX)
        )
        if not budget.may_wait(delay, attempt, self._monotonic()):
            if isinstance(failure, Throttled) or (retry_after is not None and failure.status == 503):
                raise Throttled(
                    f"Azure ML is throttling requests ({failure.message})",
                    retry_after=retry_after if retry_after is not None else delay,
                    status=failure.status,
                    aml_code=failure.aml_code,
                    correlation_id=failure.correlation_id,
                )
            raise failure
        log.info("Azure ML call failed (%s); retrying in %.1f s", failure.message, delay)
        self._sleep(delay)


def never_sent(error: requests.RequestException) -> bool:
    """Whether a failed call surely never reached the service, so that even a submit may repeat it: the
    connection was refused, its host name did not resolve, or connecting timed out. A read timeout or a
    dropped connection may have been acted on."""
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return True
    if not isinstance(error, requests.exceptions.ConnectionError):
        return False
    return any(
        isinstance(cause, (NewConnectionError, ConnectionRefusedError, socket.gaierror))
        for cause in _causes(error)
    )


def _causes(error: BaseException) -> Iterator[BaseException]:
    """`error` and what it wraps: its cause and context, and urllib3's MaxRetryError.reason."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [current.__cause__, current.__context__]
        if isinstance(current, MaxRetryError):
            pending.append(current.reason)


def unreachable(what: str, error: requests.RequestException) -> Unreachable:
    kind = (
        "timed out" if isinstance(error, requests.Timeout) else "got no answer (connection failed or dropped)"
    )
    return Unreachable(f"Azure ML {kind} on {what}")


# ----- error answers


def error_for(
    response: requests.Response,
    what: str,
    workspace_name: str,
    audience: str = ARM_SCOPE.removesuffix("/.default"),
) -> AzureMLError:
    """The typed error for an Azure ML error answer to the call `what` on workspace `workspace_name`, sent
    with a token for `audience`."""
    status = response.status_code
    code, message, correlation_id = error_details(response)
    said = f"{code}: {message}" if code and message else (code or message or response.reason or "no detail")
    suffix = f" (Azure ML said {said}; correlation id {correlation_id or 'none'})"
    details: dict[str, Any] = {"status": status, "aml_code": code, "correlation_id": correlation_id}
    if status == 401:
        return Unauthorized(
            f"Azure ML refused the token for {what} (401): the token audience must be ARM "
            f"{audience}, or the token expired{suffix}",
            **details,
        )
    if status == 403:
        return Forbidden(
            f"Azure ML denied {what} (403): the identity likely lacks the 'AzureML Data Scientist' "
            f"role (or the role set by amlRoleDefinitionId) on workspace {workspace_name}{suffix}",
            **details,
        )
    if status == 404:
        return NotFound(f"Azure ML found no {what} (404){suffix}", **details)
    if status == 412:
        return EntityChanged(f"{what} changed since it was read (412){suffix}", **details)
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return Throttled(f"Azure ML throttled {what} (429){suffix}", retry_after=retry_after, **details)
    if status >= 500:
        return ServiceError(f"Azure ML failed on {what} ({status}){suffix}", **details)
    return AzureMLError(f"Azure ML refused {what} ({status}){suffix}", **details)


def error_details(response: requests.Response) -> tuple[str | None, str | None, str | None]:
    """(code, message, correlation id) from an Azure ML error answer, PascalCase or camelCase."""
    code = message = correlation_id = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("Error") or body.get("error")
        if isinstance(error, dict):
            code = error.get("Code") or error.get("code")
            message = error.get("Message") or error.get("message")
        elif isinstance(error, str):
            message = error
        correlation = body.get("Correlation") or body.get("correlation")
        if isinstance(correlation, dict):
            lowered = {str(k).lower(): v for k, v in correlation.items()}
            correlation_id = lowered.get("request") or lowered.get("operation") or lowered.get("requestid")
    for header in _CORRELATION_HEADERS:
        if correlation_id:
            break
        correlation_id = response.headers.get(header)
    return (
        str(code) if code else None,
        str(message)[:_MAX_MESSAGE] if message else None,
        str(correlation_id) if correlation_id else None,
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def json_body(response: requests.Response, what: str) -> Any:
    """The JSON body of a successful answer (None when empty); ServiceError when it is not JSON."""
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        raise ServiceError(
            f"Azure ML answered with something that is not JSON for {what}", status=response.status_code
        ) from None


def path_segment(value: str) -> str:
    """One URL path segment; ids and names are validated elsewhere, this is belt and braces."""
    return quote(str(value), safe="")


__all__ = [
    "json_body",
    "path_segment",
    "ARM_SCOPE",
    "MAX_ATTEMPTS",
    "ML_SCOPE",
    "NOT_TAKEN",
    "RETRY_STATUSES",
    "CallBudget",
    "OnAmbiguous",
    "TokenCache",
    "Transport",
    "TransportOptions",
    "error_details",
    "error_for",
    "never_sent",
    "parse_retry_after",
    "unreachable",
]
