"""The REST verbs of Azure ML v2 for one workspace (docs/aml-v2-rest.md), sent through azureml/transport.py
(token cache, time budget, one retry loop, typed errors): ARM's `{AML_ARM_BASE}{WS}/...?api-version=` routes
for environments, code (with its SAS upload), components, data, models and jobs; run history on the data
plane (AML_API_BASE) for times, steps and the bounded run query is v1's, from azureml/run_history.py."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Unpack
from urllib.parse import quote, urlsplit, urlunsplit

from pipeline_def.azureml.run_history import RunHistory
from pipeline_def.azureml.transport import ML_SCOPE, CallBudget, TransportOptions, json_body, path_segment
from pipeline_def.errors import AzureMLError, NotFound, ServiceError
from pipeline_def.settings import Settings

# The one GA api-version every ARM call is sent with (Azure/azure-rest-api-specs stable/2025-12-01).
API_VERSION = "2025-12-01"
# What the service says when a job name is taken (Azure/azure-sdk-for-python#42156).
ALREADY_EXISTS = "already exists"


@dataclass(frozen=True)
class Job:
    """An ARM job resource as the app reads it (docs/aml-v2-rest.md): its name (the run id), and from its
    properties the JobStatus word, experiment, studio link (services.Studio.endpoint) and tags, and its
    systemData.createdAt; each None (tags empty) when missing. `child` is a pipeline's child job, which ARM
    answers without properties: not a run of the app."""

    name: str
    child: bool = False
    status: str | None = None
    experiment: str | None = None
    studio_url: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    created_at: str | None = None

    @classmethod
    def from_wire(cls, job: Any) -> Job:
        """Parse a job resource. One that is not an object or has no name is Azure ML's fault (ServiceError,
        502); every other field may be missing, and one of the wrong shape counts as missing."""
        if not isinstance(job, dict) or not isinstance(job.get("name"), str) or not job["name"]:
            raise ServiceError("Azure ML answered a job without a name")
        properties = job.get("properties")
        found = properties if isinstance(properties, dict) else {}
        status, experiment, tags = found.get("status"), found.get("experimentName"), found.get("tags")
        studio = _field(_field(found, "services"), "Studio").get("endpoint")
        created = _field(job, "systemData").get("createdAt")
        return cls(
            name=job["name"],
            child=not isinstance(properties, dict),
            status=None if status is None else str(status),
            experiment=str(experiment) if experiment else None,
            studio_url=str(studio) if studio else None,
            tags={str(k): str(v) for k, v in tags.items() if v} if isinstance(tags, dict) else {},
            created_at=str(created) if created else None,
        )


@dataclass(frozen=True)
class AssetVersion:
    """A version of an environment, code, component, data or model asset: its ARM id and its name (the
    version, e.g. "3"; None when missing)."""

    id: str
    name: str | None = None

    @classmethod
    def from_wire(cls, resource: Any) -> AssetVersion:
        """Parse a version resource; one that is not an object or has no id is Azure ML's fault (ServiceError)."""
        if not isinstance(resource, dict) or not isinstance(resource.get("id"), str) or not resource["id"]:
            raise ServiceError("Azure ML answered an asset version without an id")
        name = resource.get("name")
        return cls(id=resource["id"], name=str(name) if name else None)


@dataclass(frozen=True)
class AssetContainer:
    """An asset's container: its ARM id and its properties.latestVersion (None when it has none)."""

    id: str
    latest_version: str | None = None

    @classmethod
    def from_wire(cls, resource: Any) -> AssetContainer:
        """Parse a container resource; one that is not an object or has no id is Azure ML's fault
        (ServiceError)."""
        if not isinstance(resource, dict) or not isinstance(resource.get("id"), str) or not resource["id"]:
            raise ServiceError("Azure ML answered an asset container without an id")
        latest = _field(resource, "properties").get("latestVersion")
        return cls(id=resource["id"], latest_version=str(latest) if latest else None)


class AzureMLV2Client(RunHistory):
    """The verbs of Azure ML v2 for one workspace: ARM's here, run history's from RunHistory. Thread-safe; one
    HTTP session, one ARM-scope token (of AML_ARM_BASE; run history takes the same token) and one Azure ML
    token for `x-azureml-token`."""

    def __init__(
        self, settings: Settings, credential: Any = None, **options: Unpack[TransportOptions]
    ) -> None:
        super().__init__(settings, credential, scope=settings.arm_scope, **options)
        self._ml_tokens = self._transport.token_cache(ML_SCOPE)
        self.workspace_url = f"{settings.arm_base}{settings.workspace_path}"

    # ----- ARM plumbing

    def _arm(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: dict[str, str] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        budget: CallBudget | None = None,
    ) -> Any:
        response = self._send(
            method,
            f"{self.workspace_url}{path}",
            params={"api-version": API_VERSION, **(params or {})},
            json_body=body,
            headers=headers,
            what=what,
            budget=budget,
        )
        return json_body(response, what)

    def _get_or_none(self, path: str, *, what: str, params: dict[str, str] | None = None) -> Any:
        try:
            return self._arm("GET", path, what=what, params=params)
        except NotFound:
            return None

    def get_workspace(self) -> dict[str, Any]:
        return self._arm("GET", "", what=f"workspace {self.settings.workspace_name}")

    # ----- versioned assets: environments, codes, components, data, models

    def get_version(self, kind: str, name: str, version: str) -> AssetVersion | None:
        """A version of an environment, code, component, data or model asset; None when there is none."""
        found = self._get_or_none(
            f"/{kind}/{path_segment(name)}/versions/{path_segment(version)}", what=f"{kind} {name}:{version}"
        )
        return None if found is None else AssetVersion.from_wire(found)

    def put_version(self, kind: str, name: str, version: str, body: dict[str, Any]) -> AssetVersion:
        """Create a version (an identical re-PUT is harmless; versions are immutable)."""
        return AssetVersion.from_wire(
            self._arm(
                "PUT",
                f"/{kind}/{path_segment(name)}/versions/{path_segment(version)}",
                body=body,
                what=f"{kind} {name}:{version}",
            )
        )

    def get_container(self, kind: str, name: str) -> AssetContainer | None:
        """An asset's container (`properties.latestVersion`); None when there is none."""
        found = self._get_or_none(f"/{kind}/{path_segment(name)}", what=f"{kind} {name}")
        return None if found is None else AssetContainer.from_wire(found)

    def find_code_by_hash(self, name: str, content_hash: str, hash_version: int) -> AssetVersion | None:
        """A code version registered with this content hash, under any name (as azure-ai-ml looks one up)."""
        found = self._arm(
            "GET",
            f"/codes/{path_segment(name)}/versions",
            params={"hash": content_hash, "hashVersion": str(hash_version)},
            what="code versions by hash",
        )
        return _first_version(found, "code versions by hash")

    def start_pending_upload(self, name: str, version: str) -> tuple[str, str]:
        """A temporary container of the workspace storage to upload a code version into: (blob URI, SAS URI)."""
        found = self._arm(
            "POST",
            f"/codes/{path_segment(name)}/versions/{path_segment(version)}/startPendingUpload",
            body={"pendingUploadType": "TemporaryBlobReference"},
            what=f"an upload of code {name}:{version}",
        )
        reference = (found or {}).get("blobReferenceForConsumption") or {}
        blob_uri = reference.get("blobUri")
        sas_uri = (reference.get("credential") or {}).get("sasUri")
        if not blob_uri or not sas_uri:
            raise ServiceError("Azure ML answered startPendingUpload without a blob URI and a SAS")
        return str(blob_uri), str(sas_uri)

    def put_blob(self, sas_uri: str, blob_name: str, data: bytes) -> None:
        """Write one block blob into the container a SAS URI grants (no bearer token: the SAS authorizes)."""
        self._send(
            "PUT",
            _blob_url(sas_uri, blob_name),
            data=data,
            headers={"x-ms-blob-type": "BlockBlob", "Content-Type": "application/octet-stream"},
            what=f"the upload of {blob_name}",
            bearer=False,
        )

    def set_blob_metadata(self, sas_uri: str, blob_name: str, metadata: dict[str, str]) -> None:
        """Mark an upload complete as azure-ai-ml does: metadata on its first blob, written last."""
        self._send(
            "PUT",
            _blob_url(sas_uri, blob_name, "comp=metadata"),
            headers={f"x-ms-meta-{k}": v for k, v in metadata.items()},
            what=f"the metadata of {blob_name}",
            bearer=False,
        )

    def latest_model(self, name: str) -> AssetVersion | None:
        """The most recently created version of a model (how azure-ai-ml resolves `@latest`); None if none."""
        found = self._get_or_none(
            f"/models/{path_segment(name)}/versions",
            params={"$orderBy": "createdtime desc", "$top": "1"},
            what=f"versions of model {name}",
        )
        return _first_version(found, f"versions of model {name}")

    # ----- jobs

    def put_job(self, name: str, body: dict[str, Any], budget: CallBudget | None = None) -> tuple[Job, bool]:
        """Create the pipeline job `name` with the caller's Azure ML token in `x-azureml-token`, as azure-ai-ml
        does; returns the job and whether this PUT created it (201) rather than found it (200: an identical
        PUT of the same name, ours retried or another instance's). The name is the idempotency key."""
        budget = budget or self.budget()
        token = self._ml_tokens.token(budget.deadline if budget.strict else None)
        what = f"the submission of job {name}"
        response = self._send(
            "PUT",
            f"{self.workspace_url}/jobs/{path_segment(name)}",
            params={"api-version": API_VERSION},
            json_body=body,
            headers={"x-azureml-token": token},
            what=what,
            budget=budget,
        )
        return Job.from_wire(json_body(response, what)), response.status_code == 201

    def get_job(self, name: str, budget: CallBudget | None = None) -> Job:
        return Job.from_wire(
            self._arm("GET", f"/jobs/{path_segment(name)}", what=f"job {name}", budget=budget)
        )

    def cancel_job(self, name: str) -> None:
        """Ask for a cancel (202 + Location); the job's status tells the rest."""
        self._send(
            "POST",
            f"{self.workspace_url}/jobs/{path_segment(name)}/cancel",
            params={"api-version": API_VERSION},
            what=f"job {name}",
        )


def is_already_exists(error: AzureMLError) -> bool:
    """Whether a refused job PUT says the name is taken (a retry of ours, or another instance's same job)."""
    return error.status in (400, 409) and ALREADY_EXISTS in error.message


def _field(found: Any, name: str) -> dict[str, Any]:
    """An object-valued field of `found` ({} when `found` is not an object, or the field is missing or not one)."""
    value = found.get(name) if isinstance(found, dict) else None
    return value if isinstance(value, dict) else {}


def _first_version(found: Any, what: str) -> AssetVersion | None:
    """The first version of a list answer (`{"value": [...]}`); None when the list is empty or there is none.
    A list answer that is not an object is Azure ML's fault (ServiceError)."""
    if found is None:
        return None
    values = found.get("value") if isinstance(found, dict) else None
    if not isinstance(found, dict) or not isinstance(values, list | None):
        raise ServiceError(f"Azure ML answered {what} with something that is not a list of versions")
    return AssetVersion.from_wire(values[0]) if values else None


def _blob_url(sas_uri: str, blob_name: str, extra_query: str = "") -> str:
    parts = urlsplit(sas_uri)
    path = parts.path.rstrip("/") + "/" + quote(blob_name, safe="/")
    query = "&".join(q for q in (extra_query, parts.query) if q)
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


__all__ = ["API_VERSION", "AssetContainer", "AssetVersion", "AzureMLV2Client", "Job", "is_already_exists"]
