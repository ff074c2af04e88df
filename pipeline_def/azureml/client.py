"""A small Azure ML REST client: the verbs of the pipelines and run-history services (see
docs/aml-v1-rest.md), with ARM tokens from azure-identity, timeouts, a bounded retry budget and typed errors.
It imports no azureml module, so the steady-state path stays fast."""

from __future__ import annotations

import email.utils
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import requests

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
# A token is renewed this long before it expires, so no call goes out with one about to lapse.
TOKEN_REFRESH_MARGIN = 300.0
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# The one answer that says Azure ML did not act on a request: what a non-idempotent POST may retry blindly.
_NOT_TAKEN = frozenset({429})
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 20.0
MAX_ATTEMPTS = 6
CREDENTIAL_RETRIES = 2
# The tag that makes a submit idempotent: after an ambiguous failure the run is looked up by it.
SUBMISSION_TAG = "batchpred_submission_id"
# Run history's runType of a pipeline run (the SDK maps it to PipelineRun when it lists runs).
PIPELINE_RUN_TYPE = "azureml.PipelineRun"
# Run-history statuses of a run that has not ended.
ACTIVE_HISTORY_STATUSES = (
    "NotStarted",
    "Queued",
    "Preparing",
    "Provisioning",
    "Starting",
    "Running",
    "Finalizing",
    "CancelRequested",
    "NotResponding",
    "Pausing",
    "Paused",
    "Unapproved",
)
_CORRELATION_HEADERS = (
    "x-ms-correlation-request-id",
    "x-ms-request-id",
    "x-request-id",
    "x-ms-client-request-id",
)
_MAX_MESSAGE = 300
# The least time worth starting a call with, inside an HTTP request's budget.
MIN_CALL_SECONDS = 0.05
MAX_QUERY_TOP = 100
_ODATA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")


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


class AzureMLClient:
    """The REST verbs of Azure ML for one workspace. Thread-safe; keeps one HTTP session and one token."""

    def __init__(
        self,
        settings: Settings,
        credential: Any = None,
        *,
        session: requests.Session | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.settings = settings
        self._credential = credential
        self._session = session or requests.Session()
        self._monotonic = monotonic
        self._sleep = sleep
        self._token: tuple[str, float] | None = None
        self._lock = threading.Lock()
        self._pipelines = f"{settings.api_base}/pipelines/v1.0{settings.workspace_path}"
        self._history = f"{settings.api_base}/history/v1.0{settings.workspace_path}"

    # ----- identity

    @property
    def credential(self) -> Any:
        """The azure-identity credential (DefaultAzureCredential unless one was given); the SDK shares it."""
        with self._lock:
            if self._credential is None:
                from azure.identity import DefaultAzureCredential

                # azure-core would retry a failing identity endpoint for about 5 s; keep it well inside a
                # tick's budget (about 0.5 s) and let our own error say what to check.
                self._credential = DefaultAzureCredential(
                    managed_identity_client_id=self.settings.azure_client_id,
                    retry_total=CREDENTIAL_RETRIES,
                    retry_backoff_factor=0.25,
                )
            return self._credential

    def token(self, deadline: float | None = None) -> str:
        """An ARM-audience bearer token, reused until five minutes before it expires. With a `deadline` (an
        HTTP request's), getting a new one gives up at the deadline whatever the credential is doing."""
        credential = self.credential
        with self._lock:
            if self._token and time.time() < self._token[1] - TOKEN_REFRESH_MARGIN:
                return self._token[0]
        try:
            if deadline is None:
                access = credential.get_token(ARM_SCOPE)
            else:
                access = _within(deadline - self._monotonic(), credential.get_token, ARM_SCOPE)
        except _TimeIsUp:
            raise TokenError(
                "no Azure token could be obtained for https://management.azure.com within the request's "
                "time budget (AML_HTTP_BUDGET_SECONDS): check the managed identity (AZURE_CLIENT_ID for a "
                "user-assigned one)"
            ) from None
        except Exception as error:  # azure-identity raises several types; the caller needs only one
            raise TokenError(
                "no Azure token could be obtained for https://management.azure.com "
                f"({type(error).__name__}): check the managed identity (AZURE_CLIENT_ID for a "
                "user-assigned one) or sign in with `az login` locally"
            ) from None
        with self._lock:
            self._token = (access.token, float(access.expires_on))
        return access.token

    def _forget_token(self) -> None:
        with self._lock:
            self._token = None

    # ----- transport

    def _limits(self) -> tuple[float, int, bool]:
        """(deadline, most attempts, strict) of a call starting now. Inside an HTTP request the deadline is
        the request's own, shared by every call and strict (nothing is sent past it); otherwise each call
        may retry for AML_RETRY_BUDGET_SECONDS after its first attempt."""
        budget = current_http_budget()
        if budget is not None:
            return budget.deadline_from(self._monotonic, self.settings.http_budget), budget.max_attempts, True
        return self._monotonic() + self.settings.retry_budget, MAX_ATTEMPTS, False

    def _send(
        self,
        method: str,
        url: str,
        *,
        what: str,
        deadline: float,
        strict: bool,
        first: bool,
        params=None,
        json_body=None,
        extra_headers=None,
    ) -> requests.Response:
        token = self.token(deadline if strict else None)
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        headers.update(extra_headers or {})
        if json_body is not None:
            headers["Content-Type"] = "application/json"
        timeout = self._timeout(deadline, first, strict, what)
        return self._session.request(
            method, url, params=params, json=json_body, headers=headers, timeout=timeout
        )

    def _timeout(self, deadline: float, first: bool, strict: bool, what: str) -> float:
        remaining = deadline - self._monotonic()
        if strict:
            if remaining < MIN_CALL_SECONDS:
                raise Unreachable(f"Azure ML gave no answer within the request's time budget on {what}")
            return min(self.settings.request_timeout, remaining)
        if first:
            return self.settings.request_timeout
        return min(self.settings.request_timeout, max(0.5, remaining))

    def _request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        deadline: float | None = None,
        headers: dict[str, str] | None = None,
        retry_statuses: frozenset[int] = RETRY_STATUSES,
        retry_no_answer: bool = True,
    ) -> requests.Response:
        """Send one call, retrying within the budget the answers in `retry_statuses` and, when
        `retry_no_answer`, timeouts and dropped connections. The defaults suit idempotent calls
        (GET/PUT/DELETE); a POST that must not be repeated blindly retries only what Azure ML did not take."""
        limit, max_attempts, strict = self._limits()
        if deadline is None:
            deadline = limit
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._send(
                    method,
                    url,
                    what=what,
                    deadline=deadline,
                    strict=strict,
                    first=attempt == 1,
                    params=params,
                    json_body=json_body,
                    extra_headers=headers,
                )
            except requests.RequestException as error:
                failure: AzureMLError = _unreachable(what, error)
                if not retry_no_answer:
                    raise failure from None
                retry_after = None
            else:
                if response.status_code < 400:
                    return response
                failure = self.error_for(response, what)
                if response.status_code not in retry_statuses:
                    raise failure
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            self._wait_or_raise(failure, retry_after, attempt, deadline, max_attempts)

    def _wait_or_raise(
        self,
        failure: AzureMLError,
        retry_after: float | None,
        attempt: int,
        deadline: float,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        """Sleep before the next attempt, or raise `failure` when the attempts or the budget are spent."""
        remaining = deadline - self._monotonic()
        delay = (
            retry_after if retry_after is not None else min(BACKOFF_FIRST * 2 ** (attempt - 1), BACKOFF_MAX)
        )
        if attempt >= max_attempts or delay > remaining:
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

    def error_for(self, response: requests.Response, what: str) -> AzureMLError:
        """The typed error for an Azure ML error answer."""
        status = response.status_code
        code, message, correlation_id = error_details(response)
        said = (
            f"{code}: {message}" if code and message else (code or message or response.reason or "no detail")
        )
        suffix = f" (Azure ML said {said}; correlation id {correlation_id or 'none'})"
        kwargs = {"status": status, "aml_code": code, "correlation_id": correlation_id}
        if status == 401:
            self._forget_token()  # the next call asks azure-identity again, which renews a lapsed token
            return Unauthorized(
                f"Azure ML refused the token for {what} (401): the token audience must be ARM "
                f"https://management.azure.com, or the token expired{suffix}",
                **kwargs,
            )
        if status == 403:
            return Forbidden(
                f"Azure ML denied {what} (403): the identity likely lacks the 'AzureML Data Scientist' "
                f"role on workspace {self.settings.workspace_name}{suffix}",
                **kwargs,
            )
        if status == 404:
            return NotFound(f"Azure ML found no {what} (404){suffix}", **kwargs)
        if status == 412:
            return EntityChanged(f"{what} changed since it was read (412){suffix}", **kwargs)
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return Throttled(f"Azure ML throttled {what} (429){suffix}", retry_after=retry_after, **kwargs)
        if status >= 500:
            return ServiceError(f"Azure ML failed on {what} ({status}){suffix}", **kwargs)
        return AzureMLError(f"Azure ML refused {what} ({status}){suffix}", **kwargs)

    def _get_json(
        self, url: str, *, what: str, params: dict[str, str] | None = None, deadline: float | None = None
    ) -> Any:
        """GET `url` (retried within the budget) and return its JSON body."""
        response = self._request("GET", url, params=params, what=what, deadline=deadline)
        return self._json(response, what)

    @staticmethod
    def _json(response: requests.Response, what: str) -> Any:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ServiceError(
                f"Azure ML answered with something that is not JSON for {what}", status=response.status_code
            ) from None

    # ----- published pipelines and endpoints

    def get_endpoint_by_name(self, name: str) -> dict | None:
        """The PipelineEndpoint named `name`, or None when there is none."""
        try:
            return self._get_json(
                f"{self._pipelines}/PipelineEndpoints/Name",
                params={"Name": name},
                what=f"pipeline endpoint {name!r}",
            )
        except NotFound:
            return None

    def get_endpoint(self, endpoint_id: str) -> dict:
        return self._get_json(
            f"{self._pipelines}/PipelineEndpoints/Id/{_seg(endpoint_id)}", what=f"endpoint {endpoint_id}"
        )

    def create_endpoint(
        self, name: str, pipeline_id: str, description: str = "", properties: dict[str, str] | None = None
    ) -> dict:
        """Create a PipelineEndpoint whose first (default) version is `pipeline_id`. Not retried blindly: the
        caller re-reads the endpoint by name after a failure."""
        body = {
            "Name": name,
            "Description": description,
            "PipelineId": pipeline_id,
            "Properties": properties or {},
        }
        response = self._request(
            "POST",
            f"{self._pipelines}/PipelineEndpoints/Create",
            json_body=body,
            what=f"creating endpoint {name!r}",
            retry_statuses=_NOT_TAKEN,
            retry_no_answer=False,
        )
        return self._json(response, "creating the endpoint")

    def update_endpoint(self, entity: dict) -> dict | None:
        """Write a whole PipelineEndpoint entity back (add a version, change the default, enable or disable).

        Sent with `If-Match: <Etag read>` so a service that honours it answers 412 (EntityChanged) when
        someone else wrote in between, instead of silently dropping their version."""
        etag = entity.get("Etag")
        response = self._request(
            "PUT",
            f"{self._pipelines}/PipelineEndpoints/{_seg(entity['Id'])}",
            json_body=entity,
            what=f"endpoint {entity.get('Name') or entity['Id']}",
            headers={"If-Match": str(etag)} if etag else None,
        )
        return self._json(response, "the endpoint update")

    def get_pipeline(self, pipeline_id: str) -> dict:
        return self._get_json(
            f"{self._pipelines}/Pipelines/{_seg(pipeline_id)}", what=f"published pipeline {pipeline_id}"
        )

    def list_pipelines(self, active_only: bool = True) -> list[dict]:
        found = self._get_json(
            f"{self._pipelines}/Pipelines",
            params={"activeOnly": "true" if active_only else "false"},
            what="the published pipelines",
        )
        return list(found or [])

    def set_pipeline_status(self, pipeline_id: str, status: str) -> None:
        """Disable or re-enable a published pipeline (`"Disabled"` or `"Active"`)."""
        if status not in ("Disabled", "Active"):
            raise ValueError(f"unknown pipeline status {status!r}")
        self._request(
            "PUT",
            f"{self._pipelines}/Pipelines/{_seg(pipeline_id)}/status",
            json_body=status,
            what=f"published pipeline {pipeline_id}",
        )

    # ----- runs

    def submit_to_endpoint(
        self, endpoint_id: str, experiment: str, parameters: dict[str, str], tags: dict[str, str]
    ) -> dict:
        """Start a run of the endpoint's default version and return its PipelineRunEntity (`Id` = run id).

        The submit carries a unique tag. When it may have reached the service but no answer came back
        (timeout, dropped connection, 5xx), run history is asked for the run of `experiment` with that tag
        (one bounded query) before trying again, so one call never starts two runs. A 429 never started
        anything: it is retried after Retry-After, within the budget.
        """
        submission_id = uuid.uuid4().hex
        body: dict[str, Any] = {
            "ExperimentName": experiment,
            "RunSource": "API",
            "ParameterAssignments": {str(k): str(v) for k, v in parameters.items()},
            "tags": {**{str(k): str(v) for k, v in tags.items()}, SUBMISSION_TAG: submission_id},
        }
        url = f"{self._pipelines}/PipelineRuns/PipelineEndpointSubmit/Id/{_seg(endpoint_id)}"
        what = "the run submission"
        deadline, max_attempts, strict = self._limits()
        attempt = 0
        while True:
            attempt += 1
            ambiguous = False
            retry_after = None
            try:
                response = self._send(
                    "POST",
                    url,
                    what=what,
                    deadline=deadline,
                    strict=strict,
                    first=attempt == 1,
                    json_body=body,
                )
            except requests.RequestException as error:
                failure: AzureMLError = _unreachable(what, error)
                # A refused connection never reached the service; anything else might have.
                ambiguous = not isinstance(error, requests.exceptions.ConnectTimeout) and not _refused(error)
            else:
                if response.status_code < 400:
                    return self._json(response, what)
                failure = self.error_for(response, what)
                if response.status_code not in RETRY_STATUSES:
                    raise failure
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                ambiguous = response.status_code != 429
            if ambiguous:
                found = self._find_submission(experiment, submission_id, deadline)
                if found is not None:
                    log.info(
                        "the submission reached Azure ML despite %s; run %s", failure.message, found.get("Id")
                    )
                    return found
            self._wait_or_raise(failure, retry_after, attempt, deadline, max_attempts)

    def _find_submission(self, experiment: str, submission_id: str, deadline: float) -> dict | None:
        """The PipelineRunEntity of the run a submission with `submission_id` started, if run history has
        it. The run-history record is read back as the pipelines service's entity, which is what a submit
        answers."""
        found = self.query_runs(
            experiment,
            runs_filter(tags={SUBMISSION_TAG: submission_id}),
            top=1,
            deadline=deadline,
        )
        if not found:
            return None
        return self.get_pipeline_run(str(found[0].get("runId")), deadline=deadline)

    def get_pipeline_run(self, run_id: str, *, deadline: float | None = None) -> dict:
        """The pipelines service's PipelineRunEntity of a run (`Status.StatusCode`: NotStarted ... Finished)."""
        return self._get_json(
            f"{self._pipelines}/PipelineRuns/{_seg(run_id)}", what=f"run {run_id}", deadline=deadline
        )

    def query_runs(
        self,
        experiment: str,
        filter_expression: str,
        *,
        top: int,
        orderby: str = "CreatedUtc desc",
        deadline: float | None = None,
    ) -> list[dict]:
        """At most `top` run-history RunDtos of `experiment` matching an OData filter (see runs_filter),
        newest first: one page of `POST .../experiments/{name}/runs:query`, the call azureml-core makes for
        Run.list and Experiment.get_runs. What it reads is bounded by `top`, whatever the history. An
        experiment run history does not know yet has no runs."""
        if not 1 <= top <= MAX_QUERY_TOP:
            raise ValueError(f"top must be 1 to {MAX_QUERY_TOP}")
        try:
            response = self._request(
                "POST",
                f"{self._history}/experiments/{_seg(experiment)}/runs:query",
                json_body={"filter": filter_expression, "orderby": orderby, "top": top},
                what=f"runs of experiment {experiment}",
                deadline=deadline,
            )
        except NotFound:
            return []
        body = self._json(response, "the run query")
        if isinstance(body, list):
            runs = body
        elif isinstance(body, dict):
            runs = body.get("value") or []
        else:
            raise ServiceError("Azure ML answered the run query with something that is not a page of runs")
        return [run for run in runs if isinstance(run, dict)][:top]

    def get_history_run(self, experiment: str, run_id: str) -> dict:
        """Run history's camelCase RunDto of a run. Its `status` moves to `CancelRequested` as soon as a
        cancel is asked for, while the pipelines service still says `Running`."""
        return self._get_json(
            f"{self._history}/experiments/{_seg(experiment)}/runs/{_seg(run_id)}",
            what=f"run {run_id} in run history",
        )

    def get_step_runs(self, experiment: str, run_id: str) -> list[dict]:
        """The run-history children (step runs) of a pipeline run, camelCase RunDto dicts."""
        url = f"{self._history}/experiments/{_seg(experiment)}/runs/{_seg(run_id)}/children"
        params: dict[str, str] = {"$orderby": "StartTimeUtc desc", "$top": "500"}
        children: list[dict] = []
        for _page in range(10):
            body = self._get_json(url, params=params, what=f"steps of run {run_id}") or {}
            if isinstance(body, list):
                return children + body
            children.extend(body.get("value") or [])
            token = body.get("continuationToken")
            if not token:
                break
            params = {**params, "$continuationToken": token}
        return children

    def cancel_run(self, run_id: str) -> None:
        self._request(
            "DELETE", f"{self._pipelines}/PipelineRuns/{_seg(run_id)}/Execution", what=f"run {run_id}"
        )


def runs_filter(
    *,
    pipeline_ids: tuple[str, ...] | list[str] = (),
    tags: dict[str, str] | None = None,
    any_of_tags: dict[str, str] | None = None,
    statuses: tuple[str, ...] | list[str] = (),
) -> str:
    """The OData filter of run history's `runs:query` for top-level pipeline runs, written with the very
    templates azureml-core's `_restclient/_odata` uses (so the live service has seen each piece):
    `(RunType eq azureml.PipelineRun or Properties/azureml.runsource eq azureml.PipelineRun)`,
    `(ParentRunId eq null)`, `(Properties/azureml.pipelineid eq "<id>")`, `(Tags/<k> eq "<v>")`,
    `(Status eq <status>)`. Pipeline ids are or-ed; `tags` are and-ed; a run matches `any_of_tags` or
    `statuses` when it has one of those tags or one of those statuses."""
    terms = [
        f"(RunType eq {PIPELINE_RUN_TYPE} or Properties/azureml.runsource eq {PIPELINE_RUN_TYPE})",
        "(ParentRunId eq null)",
    ]
    if pipeline_ids:
        terms.append(_or([f"(Properties/azureml.pipelineid eq {_quoted(p)})" for p in pipeline_ids]))
    for key, value in (tags or {}).items():
        terms.append(f"(Tags/{_key(key)} eq {_quoted(value)})")
    either = [f"(Tags/{_key(k)} eq {_quoted(v)})" for k, v in (any_of_tags or {}).items()]
    either += [f"(Status eq {_key(status)})" for status in statuses]
    if either:
        terms.append(_or(either))
    return "(" + " and ".join(terms) + ")"


def _or(terms: list[str]) -> str:
    return terms[0] if len(terms) == 1 else "(" + " or ".join(terms) + ")"


def _quoted(value: str) -> str:
    text = str(value)
    if '"' in text or "\\" in text:
        raise ValueError("a run query value cannot hold a double quote or a backslash")
    return f'"{text}"'


def _key(name: str) -> str:
    if not _ODATA_NAME.fullmatch(str(name)):
        raise ValueError(f"{name!r} cannot be named in a run query")
    return str(name)


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


def _seg(value: str) -> str:
    """One URL path segment; ids and names are validated elsewhere, this is belt and braces."""
    return quote(str(value), safe="")


def _refused(error: requests.RequestException) -> bool:
    text = str(error).lower()
    return "refused" in text or "name or service not known" in text or "nodename nor servname" in text


def _unreachable(what: str, error: requests.RequestException) -> Unreachable:
    kind = (
        "timed out" if isinstance(error, requests.Timeout) else "got no answer (connection failed or dropped)"
    )
    return Unreachable(f"Azure ML {kind} on {what}")


__all__ = [
    "ACTIVE_HISTORY_STATUSES",
    "ARM_SCOPE",
    "PIPELINE_RUN_TYPE",
    "SUBMISSION_TAG",
    "AzureMLClient",
    "error_details",
    "parse_retry_after",
    "runs_filter",
]
