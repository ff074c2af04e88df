"""Published, on Azure ML v2, means: the pipeline component is registered at version = the v2 fingerprint. Checking
costs one GET. Publishing registers, in this order and each only after a GET found it missing, the environment,
the code asset (found again by its content hash, else uploaded through a SAS), the three command components and
the pipeline component LAST, so its existence says everything it names exists. A rerun, or a publisher racing
this one, finds what is there and registers nothing twice: every name and body is derived from the fingerprint
and the content hash, so two publishers write identical versions."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline_def.azureml_v2 import components
from pipeline_def.azureml_v2.client import AssetVersion, AzureMLV2Client
from pipeline_def.azureml_v2.code import HASH_VERSION, code_files, content_hash
from pipeline_def.errors import AzureMLError, Forbidden, TokenError, Unauthorized
from pipeline_def.fingerprint import V1_REQUIREMENTS, compute_fingerprint
from pipeline_def.settings import STEP_SCRIPTS_DIR, Settings
from pipeline_def.steps import STEPS, Step

log = logging.getLogger(__name__)

PLATFORM = "azureml-v2"
# The version of every code asset the app registers (its name carries the content hash).
CODE_VERSION = "1"
UPLOAD_CONFIRMATION = {"upload_status": "completed"}


def v2_fingerprint(settings: Settings, folder: Path = STEP_SCRIPTS_DIR) -> str:
    """The version the v2 components are registered at: the step scripts with requirements-v2.txt (not v1's
    requirements.txt), the v2 environment and the settings that shape the pipeline."""
    return compute_fingerprint(
        settings,
        folder,
        components.STEP_ENVIRONMENT_V2,
        skip=frozenset({V1_REQUIREMENTS}),
        platform=PLATFORM,
    )


@dataclass(frozen=True)
class PipelineVersion:
    """The registered pipeline component a submit runs: its `version`, ARM id, and whether it is the current
    fingerprint."""

    version: str
    component_id: str
    current: bool


@dataclass(frozen=True)
class Unpublished:
    reason: str


def read_published(
    client: AzureMLV2Client, settings: Settings, fingerprint: str, steps: tuple[Step, ...] = STEPS
) -> PipelineVersion | Unpublished:
    """The pipeline component version of the fingerprint (current); else the most recently registered one
    (stale but published; the container's latestVersion); else why there is none. One GET, two when stale."""
    name = components.Names.of(settings, steps).pipeline
    found = client.get_version("components", name, fingerprint)
    if found is not None:
        return PipelineVersion(fingerprint, _component_id(settings, name, fingerprint), True)
    container = client.get_container("components", name)
    if container is None:
        return Unpublished(f"pipeline component {name!r} is not registered")
    latest = container.latest_version
    if not latest:
        return Unpublished(f"pipeline component {name!r} has no version")
    return PipelineVersion(latest, _component_id(settings, name, latest), False)


def ensure_published(
    client: AzureMLV2Client,
    settings: Settings,
    fingerprint: str,
    *,
    folder: Path = STEP_SCRIPTS_DIR,
    steps: tuple[Step, ...] = STEPS,
) -> tuple[PipelineVersion, bool]:
    """Register whatever of the fingerprint's pipeline is missing. Returns it and whether this call
    registered the pipeline component."""
    names = components.Names.of(settings, steps)
    version = PipelineVersion(fingerprint, _component_id(settings, names.pipeline, fingerprint), True)
    if client.get_version("components", names.pipeline, fingerprint) is not None:
        return version, False
    log.info("registering pipeline %s version %s on Azure ML v2", names.pipeline, fingerprint)
    folder = Path(folder)
    environment = _ensure(
        client, "environments", names.environment, fingerprint, components.environment_body(names, folder)
    )
    code_id = ensure_code(client, folder)
    for step in steps:
        body = components.component_body(step, names, settings, fingerprint, code_id, environment.id)
        _ensure(client, "components", names.steps[step.name], fingerprint, body)
    body = components.pipeline_component_body(
        names,
        settings,
        fingerprint,
        settings.workspace_path,
        steps,
        code_id=code_id,
        environment_id=environment.id,
    )
    _put(client, "components", names.pipeline, fingerprint, body)
    log.info("pipeline %s version %s is registered", names.pipeline, fingerprint)
    return version, True


def ensure_code(client: AzureMLV2Client, folder: Path) -> str:
    """The ARM id of a code version holding `folder`'s files: one registered with their content hash if there
    is one (by anyone), else a new one, uploaded through the SAS of a pending upload and marked complete."""
    files = code_files(folder)
    digest = content_hash(files)
    name = str(uuid.uuid5(uuid.NAMESPACE_URL, f"batchpred-code:{digest}"))
    found = client.find_code_by_hash(name, digest, HASH_VERSION)
    if found is not None:
        return found.id
    if not files:
        raise ValueError(f"{folder} has no files to upload")
    blob_uri, sas_uri = client.start_pending_upload(name, CODE_VERSION)
    prefix = folder.resolve().name
    for file in files:
        client.put_blob(sas_uri, f"{prefix}/{file.name}", file.path.read_bytes())
    client.set_blob_metadata(
        sas_uri, f"{prefix}/{files[0].name}", {**UPLOAD_CONFIRMATION, "name": name, "version": CODE_VERSION}
    )
    body = components.code_body(f"{blob_uri}/{prefix}", digest, HASH_VERSION)
    return _put(client, "codes", name, CODE_VERSION, body).id


def _ensure(
    client: AzureMLV2Client, kind: str, name: str, version: str, body: dict[str, Any]
) -> AssetVersion:
    found = client.get_version(kind, name, version)
    return found if found is not None else _put(client, kind, name, version, body)


def _put(client: AzureMLV2Client, kind: str, name: str, version: str, body: dict[str, Any]) -> AssetVersion:
    """PUT a version; refused because a racing publisher registered it first, the version that exists."""
    try:
        return client.put_version(kind, name, version, body)
    except (Unauthorized, Forbidden, TokenError):
        raise
    except AzureMLError as error:
        found = client.get_version(kind, name, version)
        if found is None:
            raise
        log.info("%s %s:%s was registered meanwhile (%s)", kind, name, version, error.message)
        return found


def _component_id(settings: Settings, name: str, version: str) -> str:
    return f"{settings.workspace_path}/components/{name}/versions/{version}"


__all__ = [
    "PLATFORM",
    "PipelineVersion",
    "Unpublished",
    "ensure_code",
    "ensure_published",
    "read_published",
    "v2_fingerprint",
]
