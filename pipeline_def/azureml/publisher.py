"""Ensure the pipeline is published, as docs/product.md defines it: the endpoint exists and is active, and its default
version is an active pipeline whose Version is the current fingerprint. Checking costs two REST calls and no
SDK import; only a stale endpoint builds and publishes with the SDK (definition.py)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline_def.azureml.client import AzureMLClient, Endpoint, EndpointVersion, PublishedPipelineInfo
from pipeline_def.errors import (
    AzureMLError,
    EntityChanged,
    Forbidden,
    NotFound,
    PipelineError,
    PublishFailed,
    TokenError,
    Unauthorized,
)
from pipeline_def.settings import STEP_SCRIPTS_DIR, Settings

log = logging.getLogger(__name__)

# publish_fn(settings, fingerprint) -> id of the newly published pipeline
PublishFn = Callable[[Settings, str], str]

_ACTIVE = ("active", "0")
MAX_ENDPOINT_WRITES = 5
# The endpoint versions whose pipelines' runs count as the endpoint's runs (listing, overlap, previous run):
# enough to span any realistic run of republishes between two ticks, few enough to keep the query short.
ENDPOINT_VERSIONS_LOOKED_AT = 10


def is_active(entity: Endpoint | PublishedPipelineInfo | None) -> bool:
    """EntityStatus is "Active"/"Deprecated"/"Disabled" or a legacy "0"/"1"/"2"; absent means active."""
    if entity is None:
        return False
    return entity.status is None or entity.status.strip().lower() in _ACTIVE


def default_pipeline_id(endpoint: Endpoint) -> str | None:
    """The pipeline id behind the endpoint's DefaultVersion."""
    for item in endpoint.versions:
        if item.version == endpoint.default_version:
            return item.pipeline_id
    return None


def previous_pipeline_id(endpoint: Endpoint) -> str | None:
    """The pipeline behind the highest endpoint version below the default one (the pipeline the default
    superseded), or None when the endpoint has no earlier version."""
    if not endpoint.default_version.isdigit():
        return None
    default = int(endpoint.default_version)
    current = default_pipeline_id(endpoint)
    earlier = [
        (item.number, item.pipeline_id)
        for item in endpoint.versions
        if item.number is not None and item.number < default
    ]
    for _version, pipeline_id in sorted(earlier, reverse=True):
        if pipeline_id and pipeline_id != current:
            return pipeline_id
    return None


def endpoint_pipeline_ids(endpoint: Endpoint, limit: int = ENDPOINT_VERSIONS_LOOKED_AT) -> tuple[str, ...]:
    """The pipelines of the endpoint's `limit` newest versions, newest first, each once."""
    versions = sorted(
        ((item.number, item.pipeline_id) for item in endpoint.versions if item.number is not None),
        reverse=True,
    )
    found: list[str] = []
    for _version, pipeline_id in versions:
        if pipeline_id and pipeline_id not in found:
            found.append(pipeline_id)
        if len(found) == limit:
            break
    return tuple(found)


@dataclass(frozen=True)
class EndpointState:
    """The endpoint and the default pipeline a submit runs: what the Azure ML backend needs to submit to the
    endpoint and to look back at its runs. `endpoint_pipeline_ids` are the pipelines of the endpoint's newest
    versions, newest first (whose runs are the endpoint's runs); `previous_pipeline_id` the pipeline the
    default superseded, if any."""

    endpoint_id: str
    pipeline_id: str
    version: str | None
    current: bool
    previous_pipeline_id: str | None = None
    endpoint_pipeline_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Unpublished:
    """Why nothing can be submitted to the endpoint (`reason`, as NotPublished says it), with what a publish
    starts from: the endpoint as read (`entity`, None when there is none), and `when_enabled`, its state once
    enabled when that is all it lacks (it is disabled, its default pipeline active and current)."""

    reason: str
    entity: Endpoint | None = None
    when_enabled: EndpointState | None = None

    @property
    def endpoint_id(self) -> str | None:
        return None if self.entity is None else self.entity.id


def read_endpoint(client: AzureMLClient, name: str, fingerprint: str) -> EndpointState | Unpublished:
    """The endpoint `name` and its default pipeline as a submit finds them, current or not (two reads: the
    endpoint, its default pipeline), or why nothing can be submitted to it."""
    endpoint = client.get_endpoint_by_name(name)
    if endpoint is None:
        return Unpublished(f"pipeline endpoint {name!r} does not exist")
    pipeline_id = default_pipeline_id(endpoint)
    pipeline = None
    if pipeline_id:
        with contextlib.suppress(NotFound):
            pipeline = client.get_pipeline(pipeline_id)
    state = None
    if pipeline_id and pipeline is not None and is_active(pipeline):
        state = _state(endpoint, pipeline_id, pipeline.version, fingerprint)
    if not is_active(endpoint):
        when_enabled = state if state is not None and state.current else None
        return Unpublished(f"pipeline endpoint {name!r} is disabled", endpoint, when_enabled)
    if not pipeline_id:
        return Unpublished(f"pipeline endpoint {name!r} has no default pipeline", endpoint)
    if pipeline is None:
        return Unpublished(
            f"the default pipeline {pipeline_id} of endpoint {name!r} does not exist", endpoint
        )
    if state is None:
        return Unpublished(f"the default pipeline {pipeline_id} of endpoint {name!r} is disabled", endpoint)
    return state


def ensure_published(
    settings: Settings,
    client: AzureMLClient,
    fingerprint: str,
    *,
    folder: Path = STEP_SCRIPTS_DIR,
    publish_fn: PublishFn | None = None,
) -> tuple[EndpointState, bool]:
    """Publish the steps in `folder` and point the endpoint at the new pipeline unless the endpoint is
    already current. Returns the endpoint's state and whether this call published."""
    found = read_endpoint(client, settings.endpoint_name, fingerprint)
    if isinstance(found, EndpointState) and found.current:
        return found, False

    if isinstance(found, Unpublished) and found.when_enabled is not None and found.entity is not None:
        client.update_endpoint(found.entity, status="Active")
        log.info("re-enabled pipeline endpoint %s", settings.endpoint_name)
        return found.when_enabled, False

    publish_fn = publish_fn or _sdk_publisher(client, folder)
    log.info("publishing pipeline %s version %s", settings.endpoint_name, fingerprint)
    pipeline_id = _publish(publish_fn, settings, fingerprint)
    endpoint = _point_endpoint_at(settings, client, found.endpoint_id, pipeline_id)

    # Read back what won: with two publishers racing, the last writer's pipeline is the default. Disable
    # everything else the endpoint knows of, and our own pipeline if it lost.
    endpoint = client.get_endpoint(endpoint.id)
    winner = default_pipeline_id(endpoint)
    active = {p.id for p in client.list_pipelines(active_only=True)}
    superseded = {item.pipeline_id for item in endpoint.versions}
    superseded.add(pipeline_id)
    superseded.discard(winner)
    for old_id in sorted(i for i in superseded if i and i in active):
        try:
            client.set_pipeline_status(old_id, "Disabled")
            log.info("disabled superseded pipeline %s", old_id)
        except NotFound:
            pass
    log.info("pipeline %s is the default of endpoint %s", winner, settings.endpoint_name)
    return _state(endpoint, winner or pipeline_id, fingerprint, fingerprint), True


def _state(endpoint: Endpoint, pipeline_id: str, version: str | None, fingerprint: str) -> EndpointState:
    return EndpointState(
        endpoint_id=endpoint.id,
        pipeline_id=pipeline_id,
        version=version,
        current=version == fingerprint,
        previous_pipeline_id=previous_pipeline_id(endpoint),
        endpoint_pipeline_ids=endpoint_pipeline_ids(endpoint),
    )


def _publish(publish_fn: PublishFn, settings: Settings, fingerprint: str) -> str:
    """Run the SDK's publish; whatever the SDK raises becomes PublishFailed, so a refused publish is a typed
    failure of the tick (with Azure ML's status when the SDK's error carries one), not a crash."""
    try:
        return publish_fn(settings, fingerprint)
    except PipelineError:
        raise
    except Exception as error:
        status = _sdk_status(error)
        detail = " ".join(str(error).split())[:300] or type(error).__name__
        raise PublishFailed(
            f"publishing pipeline {settings.endpoint_name} version {fingerprint} failed "
            f"({type(error).__name__}{f', Azure ML answered {status}' if status else ''}): {detail}",
            status=status,
        ) from error


def _sdk_status(error: BaseException) -> int | None:
    """The HTTP status inside one of the SDK's errors (msrest's `response`, azureml's `status_code`)."""
    for candidate in (error, getattr(error, "inner_exception", None), error.__cause__, error.__context__):
        if candidate is None:
            continue
        response = getattr(candidate, "response", None)
        status = getattr(response, "status_code", None) or getattr(candidate, "status_code", None)
        if isinstance(status, int):
            return status
    return None


def _point_endpoint_at(
    settings: Settings, client: AzureMLClient, endpoint_id: str | None, pipeline_id: str
) -> Endpoint:
    """Create the endpoint with `pipeline_id`, or add it as a new version and make it the default; the endpoint
    as created, found or read before the write."""
    if endpoint_id is None:
        try:
            return client.create_endpoint(
                settings.endpoint_name,
                pipeline_id,
                description="Scheduled house-price batch predictions",
            )
        except (Unauthorized, Forbidden, TokenError):
            raise
        except AzureMLError as error:
            # Someone else may have created it meanwhile (or our create went through but its answer was
            # lost): use the endpoint that exists, if any.
            endpoint = client.get_endpoint_by_name(settings.endpoint_name)
            if endpoint is None:
                raise
            log.info("endpoint creation failed (%s); another publisher created it", error.message)
            if pipeline_id in {item.pipeline_id for item in endpoint.versions}:
                return endpoint
            endpoint_id = endpoint.id

    # Read-modify-write on a fresh copy, so a version another publisher added meanwhile is kept; a write that
    # lost to another one (412) is redone on what that one wrote.
    attempt = 1
    while True:
        endpoint = client.get_endpoint(endpoint_id)
        numbers = [item.number for item in endpoint.versions if item.number is not None]
        new_version = str(max(numbers) + 1 if numbers else len(endpoint.versions))
        try:
            client.update_endpoint(
                endpoint, new_default=EndpointVersion(new_version, pipeline_id), status="Active"
            )
            return endpoint
        except EntityChanged:
            if attempt == MAX_ENDPOINT_WRITES:
                raise
            log.info("endpoint %s changed while being updated; reading it again", settings.endpoint_name)
            attempt += 1


def _sdk_publisher(client: AzureMLClient, folder: Path) -> PublishFn:
    """Publish the steps in `folder` with the SDK, on the client's credential."""

    def publish(settings: Settings, fingerprint: str) -> str:
        from pipeline_def.azureml.definition import publish_pipeline  # the SDK, only now

        return publish_pipeline(settings, client.credential, fingerprint, folder)

    return publish


__all__ = [
    "EndpointState",
    "PublishFn",
    "Unpublished",
    "default_pipeline_id",
    "endpoint_pipeline_ids",
    "ensure_published",
    "is_active",
    "previous_pipeline_id",
    "read_endpoint",
]
