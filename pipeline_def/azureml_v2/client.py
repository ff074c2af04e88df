"""The REST verbs of Azure ML v2 for one workspace (docs/aml-v2-rest.md), sent through azureml/transport.py
(token cache, time budget, one retry loop, typed errors): ARM's `{AML_ARM_BASE}{WS}/...?api-version=` routes
for environments, code (with its SAS upload), components, data, models and jobs; run history on the data
plane (AML_API_BASE) for times, steps and the bounded run query is v1's, from azureml/run_history.py."""

from __future__ import annotations

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

    def get_version(self, kind: str, name: str, version: str) -> dict[str, Any] | None:
        """A version of an environment, code, component, data or model asset; None when there is none."""
        return self._get_or_none(
            f"/{kind}/{path_segment(name)}/versions/{path_segment(version)}", what=f"{kind} {name}:{version}"
        )

    def put_version(self, kind: str, name: str, version: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create a version (an identical re-PUT is harmless; versions are immutable)."""
        return self._arm(
            "PUT",
            f"/{kind}/{path_segment(name)}/versions/{path_segment(version)}",
            body=body,
            what=f"{kind} {name}:{version}",
        )

    def get_container(self, kind: str, name: str) -> dict[str, Any] | None:
        """An asset's container (`properties.latestVersion`); None when there is none."""
        return self._get_or_none(f"/{kind}/{path_segment(name)}", what=f"{kind} {name}")

    def find_code_by_hash(self, name: str, content_hash: str, hash_version: int) -> dict[str, Any] | None:
        """A code version registered with this content hash, under any name (as azure-ai-ml looks one up)."""
        found = self._arm(
            "GET",
            f"/codes/{path_segment(name)}/versions",
            params={"hash": content_hash, "hashVersion": str(hash_version)},
            what="code versions by hash",
        )
        values = (found or {}).get("value") or []
        return values[0] if values else None

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

    def latest_model(self, name: str) -> dict[str, Any] | None:
        """The most recently created version of a model (how azure-ai-ml resolves `@latest`); None if none."""
        found = self._get_or_none(
            f"/models/{path_segment(name)}/versions",
            params={"$orderBy": "createdtime desc", "$top": "1"},
            what=f"versions of model {name}",
        )
        values = (found or {}).get("value") or []
        return values[0] if values else None

    # ----- jobs

    def put_job(
        self, name: str, body: dict[str, Any], budget: CallBudget | None = None
    ) -> tuple[dict[str, Any], bool]:
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
        return json_body(response, what), response.status_code == 201

    def get_job(self, name: str, budget: CallBudget | None = None) -> dict[str, Any]:
        return self._arm("GET", f"/jobs/{path_segment(name)}", what=f"job {name}", budget=budget)

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


def _blob_url(sas_uri: str, blob_name: str, extra_query: str = "") -> str:
    parts = urlsplit(sas_uri)
    path = parts.path.rstrip("/") + "/" + quote(blob_name, safe="/")
    query = "&".join(q for q in (extra_query, parts.query) if q)
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


__all__ = ["API_VERSION", "AzureMLV2Client", "is_already_exists"]
