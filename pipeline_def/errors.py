"""Typed errors of the service. Each carries the HTTP status and code it maps to, so the HTTP layer maps
them in one place and the CLI prints the same message.

The tree (HTTP status the app answers with, then `code`):

* PipelineError                 500 internal_error
  + ConfigError                 500 configuration_error   a setting is missing or malformed
  + InvalidRequest              400 invalid_request       the caller's input; nothing was sent
  | - PayloadTooLarge           413 payload_too_large
  + RunNotFound                 404 run_not_found
  + NotPublished                409 not_published         nothing to run; nothing was submitted
  + LocalRunError               500 local_run_error
  + AzureMLError                502 azureml_error         Azure ML failed or refused (status, aml_code,
    |                                                     correlation_id)
    | Azure ML never gave an answer (status is None):
    - Unreachable               504 azureml_unreachable   refused, dropped or timed out
    - TokenError                502 token_unavailable     no token from azure-identity; nothing was sent
    | Azure ML answered with an error (status is its HTTP status):
    - Throttled                 503 azureml_throttled     429, or 503 with Retry-After (retry_after)
    - Unauthorized              502 azureml_unauthorized  401
    - Forbidden                 502 azureml_forbidden     403
    - NotFound                  502 azureml_not_found     404
    - EntityChanged             502 azureml_conflict      412
    - ServiceError              502 azureml_service_error 5xx, or an answer that cannot be read
    - PublishFailed             502 azureml_publish_failed the SDK's publish (status when it carries one)
"""

from __future__ import annotations

from typing import Any


class PipelineError(Exception):
    """Base of every error this project raises on purpose."""

    http_status = 500
    code = "internal_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ConfigError(PipelineError):
    """One or more settings are missing or malformed; `problems` names every one (never their values)."""

    code = "configuration_error"

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("bad configuration: " + "; ".join(self.problems))


class InvalidRequest(PipelineError):
    """The caller's input is wrong; nothing was sent to Azure ML."""

    http_status = 400
    code = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    http_status = 413
    code = "payload_too_large"


class RunNotFound(PipelineError):
    http_status = 404
    code = "run_not_found"

    def __init__(self, run_id: str):
        super().__init__(f"no run with id {run_id!r}")
        self.run_id = run_id


class NotPublished(PipelineError):
    """Nothing to run: the endpoint is missing or disabled, or has no active default pipeline. Only the timer
    and `python -m pipeline_def publish` publish; nothing was submitted."""

    http_status = 409
    code = "not_published"

    def __init__(self, reason: str):
        super().__init__(
            f"nothing is published to run: {reason}; the pipeline is published by the next timer tick, "
            "or now with `python -m pipeline_def publish`"
        )
        self.reason = reason


class LocalRunError(PipelineError):
    """The local backend could not do what was asked (for example a step script failed to start)."""

    code = "local_run_error"


class AzureMLError(PipelineError):
    """Azure ML failed or refused. `status` is the HTTP status Azure ML answered (None when there was no
    answer), `aml_code` its error code, `correlation_id` the id to quote to Azure support."""

    http_status = 502
    code = "azureml_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        aml_code: str | None = None,
        correlation_id: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.aml_code = aml_code
        self.correlation_id = correlation_id


class Throttled(AzureMLError):
    """Azure ML answered 429 (or 503 with Retry-After) for longer than the retry budget allows."""

    http_status = 503
    code = "azureml_throttled"

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class Unauthorized(AzureMLError):
    """401: usually a token for the wrong audience, or an expired token."""

    code = "azureml_unauthorized"


class Forbidden(AzureMLError):
    """403: the identity lacks a role on the workspace."""

    code = "azureml_forbidden"


class NotFound(AzureMLError):
    """404 from Azure ML on something the app expected to exist (a wrong id, a disabled pipeline)."""

    code = "azureml_not_found"


class EntityChanged(AzureMLError):
    """412: the entity was written by someone else since it was read (optimistic concurrency); the caller
    reads it again and redoes its change."""

    code = "azureml_conflict"


class ServiceError(AzureMLError):
    """5xx from Azure ML, or an answer the client cannot read."""

    code = "azureml_service_error"


class Unreachable(AzureMLError):
    """No answer: connection refused or dropped, or the call timed out."""

    http_status = 504
    code = "azureml_unreachable"


class TokenError(AzureMLError):
    """No token could be had from azure-identity (managed identity endpoint down, no credential)."""

    code = "token_unavailable"


class PublishFailed(AzureMLError):
    """The SDK's publish of a new pipeline failed (Azure ML refused it, or it could not be built). `status`
    is Azure ML's HTTP status when the SDK's error carries one."""

    code = "azureml_publish_failed"
