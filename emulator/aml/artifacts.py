"""The artifact service (`/artifact/v2.0{WS}/artifacts/...`): where an artifact's bytes are. It answers a
content URI for one artifact (`contentinfo/{origin}/{container}/{path}`) or for every artifact under a prefix
(`prefix/contentinfo/...`), or the bytes themselves (`content/{origin}/{container}/{path}`, azureml-core's
ArtifactOperations.download: how the app reads a parallel step's logs/job_result.txt). The bytes live in the workspace storage account's `azureml` container in Azurite;
the content URI is a SAS URL `http://{account}.blob.core.windows.net/azureml/{origin}/{container}/{path}?...`,
which the SDK fetches with plain HTTP (it uses the blob client only for https *.blob.core.windows.net URLs),
through the job's lower-case http_proxy."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from emulator.aml.datastore import ARTIFACTS_CONTAINER, BLOB_ENDPOINT_SUFFIX
from emulator.aml.wire import SEG, RecordedRequest, Response, Route, ServiceError, route

SAS_LIFETIME = timedelta(hours=1)


class ArtifactService:
    """Mixed into FakeAzureML; `fake.artifacts` is the set of "{origin}/{container}/{path}" ids stored."""

    def put_artifact(self, origin: str, container: str, path: str, data: bytes) -> str:
        """Store one artifact's bytes in Azurite; returns its id "{origin}/{container}/{path}"."""
        store = self.blob_store
        if store is None:
            raise RuntimeError("artifacts need a blob store: call fake.use_blob_store(...) first")
        artifact_id = f"{origin}/{container}/{path}"
        client = store.container_client(ARTIFACTS_CONTAINER)
        client.upload_blob(artifact_id, data, overwrite=True)
        with self.lock:
            self.artifacts.add(artifact_id)
        return artifact_id

    def _content_info(self, artifact_id: str) -> dict[str, Any]:
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        store = self.blob_store
        assert store is not None
        origin, container, path = artifact_id.split("/", 2)
        sas = generate_blob_sas(
            store.account,
            ARTIFACTS_CONTAINER,
            artifact_id,
            account_key=store.key,
            permission=BlobSasPermissions(read=True),
            expiry=self.clock() + SAS_LIFETIME,
        )
        url = f"http://{store.account}.blob.{BLOB_ENDPOINT_SUFFIX}/{ARTIFACTS_CONTAINER}/{artifact_id}?{sas}"
        return {"contentUri": url, "origin": origin, "container": container, "path": path}

    # ------------------------------------------------------------------ routes
    def _artifact_routes(self) -> list[Route]:
        return [
            route("GET", rf"/artifacts/prefix/contentinfo/{SEG}/{SEG}/(.+)", self._list_content_info),
            route("GET", rf"/artifacts/contentinfo/{SEG}/{SEG}/(.+)", self._get_content_info),
            route("GET", rf"/artifacts/content/{SEG}/{SEG}/(.+)", self._get_content),
        ]

    def _get_content(self, record: RecordedRequest, origin: str, container: str, path: str) -> Response:
        artifact_id = f"{origin}/{container}/{path}"
        if artifact_id not in self.artifacts:
            raise ServiceError(404, f"Artifact {artifact_id} not found.", "NotFound")
        assert self.blob_store is not None
        data = self.blob_store.container_client(ARTIFACTS_CONTAINER).download_blob(artifact_id).readall()
        return Response(200, data, content_type="application/octet-stream")

    def _get_content_info(self, record: RecordedRequest, origin: str, container: str, path: str) -> Response:
        artifact_id = f"{origin}/{container}/{path}"
        if artifact_id not in self.artifacts:
            raise ServiceError(404, f"Artifact {artifact_id} not found.", "NotFound")
        return Response(200, self._content_info(artifact_id))

    def _list_content_info(self, record: RecordedRequest, origin: str, container: str, path: str) -> Response:
        prefix = f"{origin}/{container}/{path}"
        found = [
            self._content_info(a)
            for a in sorted(self.artifacts)
            if a == prefix or a.startswith(prefix.rstrip("/") + "/")
        ]
        return Response(200, {"value": found, "continuationToken": None, "nextLink": None})
