"""Azure ML v2's control plane, ARM-style (`{WS}{rest}?api-version=...`): the workspace resource, and the
versioned assets azure-ai-ml and a REST client register and read: environments, codes (with the SAS upload of
their files into the workspace storage in Azurite), components, data, models (v1-registered ones included)
and computes. Versions are immutable: an identical re-PUT answers the version, a changed one is refused.
Jobs are in v2_jobs.py."""

from __future__ import annotations

import copy
import json
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from emulator.aml.datastore import ARTIFACTS_CONTAINER, DEFAULT_DATASTORE
from emulator.aml.state import iso
from emulator.aml.wire import SEG, RecordedRequest, Response, Route, ServiceError, json_body, route

# What azure-ai-ml 1.35.2 sends (per operation; see docs' aml-v2-notes section 2) and the GA version the app
# pins. Another version is refused as ARM refuses one a resource provider does not know.
ARM_API_VERSIONS = frozenset(
    {
        "2023-04-01",
        "2023-04-01-preview",
        "2023-08-01-preview",
        "2023-10-01",
        "2024-01-01-preview",
        "2024-10-01-preview",
        "2025-12-01",
    }
)
ARM_PROVIDER = "Microsoft.MachineLearningServices"
# The datastore where the artifact service keeps model files (the `azureml` container of the workspace storage).
ARTIFACT_DATASTORE = "workspaceartifactstore"
CODE_SAS_LIFETIME = timedelta(hours=1)
# Fields of a version that a re-PUT may change (the rest is immutable).
MUTABLE_FIELDS = frozenset({"description", "tags", "isArchived", "stage", "provisioningState"})
CREATOR = {
    "createdBy": "fake-identity",
    "createdByType": "User",
    "lastModifiedBy": "fake-identity",
    "lastModifiedByType": "User",
}


class ArmService:
    """Mixed into FakeAzureML; `fake.v2_assets` is {kind: {name: {version: ARM resource}}}, versions in
    the order they were created; `fake.code_uploads` the Azurite containers handed out for code uploads."""

    def _init_arm(self) -> None:
        self.v2_assets: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
            kind: {} for kind in ("environments", "codes", "components", "data", "models")
        }
        self.code_uploads: list[str] = []

    # ------------------------------------------------------------------ seeding
    def register_data_v2(
        self, name: str, local_file: str | Path, *, version: str | None = None, description: str | None = None
    ) -> dict[str, Any]:
        """Upload `local_file` into the default datastore (LocalUpload/<id>/<file name>, where azure-ai-ml
        puts a local file) and create the next version (or `version`) of the `uri_file` data asset `name`."""
        store = self.blob_store
        if store is None:
            raise RuntimeError("register_data_v2 needs a blob store: call fake.use_blob_store(...) first")
        path = Path(local_file)
        blob = f"LocalUpload/{uuid.uuid4().hex}/{path.name}"
        with open(path, "rb") as stream:  # a stream: a generated table of millions of rows registers too
            store.container_client().upload_blob(blob, stream, overwrite=True)
        with self.lock:
            versions = self.v2_assets["data"].setdefault(name, {})
            version = version or str(len(versions) + 1)
            properties = {
                "dataType": "uri_file",
                "dataUri": self.datastore_uri(DEFAULT_DATASTORE, blob),
                "isAnonymous": False,
                "isArchived": False,
                "description": description,
                "tags": {},
                "properties": {},
            }
            return self._store_version("data", name, version, properties)

    def datastore_uri(self, datastore: str, path: str) -> str:
        """The long-form `azureml://` URI of a datastore path, as the service writes it in assets."""
        return (
            f"azureml://subscriptions/{self.subscription_id}/resourcegroups/{self.resource_group}"
            f"/workspaces/{self.workspace_name}/datastores/{datastore}/paths/{path}"
        )

    # ------------------------------------------------------------------ resources
    def _arm_id(self, *segments: str) -> str:
        return "/".join([self.workspace_path, *segments])

    def _system_data(self, created: datetime, modified: datetime | None = None) -> dict[str, Any]:
        return {**CREATOR, "createdAt": iso(created), "lastModifiedAt": iso(modified or created)}

    def _store_version(
        self, kind: str, name: str, version: str, properties: dict[str, Any]
    ) -> dict[str, Any]:
        now = self.clock()
        resource = {
            "id": self._arm_id(kind, name, "versions", version),
            "name": version,
            "type": f"{ARM_PROVIDER}/workspaces/{kind}/versions",
            "properties": {**properties, "provisioningState": "Succeeded"},
            "systemData": self._system_data(now),
        }
        self.v2_assets[kind].setdefault(name, {})[version] = resource
        return resource

    def _versions(self, kind: str, name: str) -> dict[str, dict[str, Any]]:
        if kind == "models":
            return {**self._v1_model_versions(name), **self.v2_assets["models"].get(name, {})}
        return self.v2_assets[kind].get(name, {})

    def _version(self, kind: str, name: str, version: str) -> dict[str, Any]:
        found = self._versions(kind, name).get(version)
        if found is None:
            raise ServiceError(
                404,
                f"{_singular(kind)} {name}:{version} (workspace {self.workspace_name}) was not found.",
                "UserError",
            )
        return found

    def _container(self, kind: str, name: str) -> dict[str, Any]:
        versions = self._versions(kind, name)
        if not versions:
            raise ServiceError(
                404,
                f"{_singular(kind)} container {name} (workspace {self.workspace_name}) was not found.",
                "UserError",
            )
        ordered = sorted(versions.values(), key=lambda r: r["systemData"]["createdAt"])
        first, latest = ordered[0], ordered[-1]
        numeric = [int(v) for v in versions if v.isdigit()]
        return {
            "id": self._arm_id(kind, name),
            "name": name,
            "type": f"{ARM_PROVIDER}/workspaces/{kind}",
            "properties": {
                # the most recently created version, whatever its spelling [guess, see the README]
                "latestVersion": latest["name"],
                "nextVersion": str(max(numeric) + 1) if numeric else None,
                "isArchived": False,
                "description": None,
                "tags": {},
                "properties": {},
                "provisioningState": "Succeeded",
            },
            "systemData": self._system_data(
                _parse_time(first["systemData"]["createdAt"]), _parse_time(latest["systemData"]["createdAt"])
            ),
        }

    def _put_version(self, kind: str, name: str, version: str, record: RecordedRequest) -> Response:
        body = json_body(record)
        properties = body.get("properties")
        if not isinstance(properties, dict):
            raise ServiceError(400, "The request body must have properties.", "UserError")
        existing = self.v2_assets[kind].get(name, {}).get(version)
        if existing is None:
            self._validate_version(kind, name, properties)
            return Response(201, self._store_version(kind, name, version, copy.deepcopy(properties)))
        changed = _changed_fields(existing["properties"], properties)
        if changed:
            # assets are immutable: what azure-ai-ml surfaces for this is a 409 [guess, see the README]
            raise ServiceError(
                409,
                f"Conflict: {_singular(kind)} {name}:{version} already exists and is immutable; "
                f"its {', '.join(changed)} cannot be changed. Register a new version.",
                "UserError",
            )
        for key in MUTABLE_FIELDS - {"provisioningState"}:
            if key in properties:
                existing["properties"][key] = copy.deepcopy(properties[key])
        existing["systemData"]["lastModifiedAt"] = iso(self.clock())
        return Response(200, existing)

    def _validate_version(self, kind: str, name: str, properties: dict[str, Any]) -> None:
        if kind == "components" and not isinstance(properties.get("componentSpec"), dict):
            raise ServiceError(400, f"Component {name}: componentSpec is required.", "UserError")
        if kind == "codes" and not properties.get("codeUri"):
            raise ServiceError(400, f"Code {name}: codeUri is required.", "UserError")
        if kind == "data" and not (properties.get("dataUri") and properties.get("dataType")):
            raise ServiceError(400, f"Data {name}: dataType and dataUri are required.", "UserError")

    # ------------------------------------------------------------------ v1 models through v2
    def _v1_model_versions(self, name: str) -> dict[str, dict[str, Any]]:
        """Models registered the v1 way (register_model) as v2 `custom_model` versions."""
        found: dict[str, dict[str, Any]] = {}
        for dto in self.models.get(name) or []:
            asset = self.assets.get(dto["url"].removeprefix("aml://asset/")) or {}
            version = str(dto["version"])
            found[version] = {
                "id": self._arm_id("models", name, "versions", version),
                "name": version,
                "type": f"{ARM_PROVIDER}/workspaces/models/versions",
                "properties": {
                    "modelType": "custom_model",
                    "modelUri": self.datastore_uri(ARTIFACT_DATASTORE, _artifact_prefix(asset)),
                    "description": dto.get("description"),
                    "tags": dict(dto.get("kvTags") or {}),
                    "properties": dict(dto.get("properties") or {}),
                    "isAnonymous": False,
                    "isArchived": False,
                    "flavors": None,
                    "jobName": None,
                    "stage": None,
                    "provisioningState": "Succeeded",
                },
                "systemData": self._system_data(_parse_time(dto["createdTime"])),
            }
        return found

    # ------------------------------------------------------------------ routes
    def _arm_routes(self) -> list[Route]:
        versions = rf"/(environments|codes|components|data|models)/{SEG}/versions"
        return [
            route("GET", r"/?", self._get_workspace),
            route("GET", rf"/computes/{SEG}", self._get_compute),
            route("POST", rf"/codes/{SEG}/versions/{SEG}/startPendingUpload", self._start_pending_upload),
            route("GET", versions, self._list_versions),
            route("GET", rf"{versions}/{SEG}", self._get_version_route),
            route("PUT", rf"{versions}/{SEG}", self._put_version_route),
            route("GET", rf"/(environments|codes|components|data|models)/{SEG}", self._get_container_route),
        ]

    def _get_workspace(self, record: RecordedRequest) -> Response:
        store = self.blob_store
        account = store.account if store is not None else "fakeamlstorage"
        storage = f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}/providers"
        return Response(
            200,
            {
                "id": self.workspace_path,
                "name": self.workspace_name,
                "type": f"{ARM_PROVIDER}/workspaces",
                "location": "westeurope",
                "kind": "Default",
                "tags": {},
                "identity": {"type": "SystemAssigned", "principalId": None, "tenantId": None},
                "sku": {"name": "Basic", "tier": "Basic"},
                "properties": {
                    "workspaceId": self.workspace_id,
                    "friendlyName": self.workspace_name,
                    "description": "the emulated workspace",
                    "discoveryUrl": self.discovery_url,
                    "mlFlowTrackingUri": f"azureml://westeurope.api.azureml.ms/mlflow/v1.0{self.workspace_path}",
                    "storageAccount": f"{storage}/Microsoft.Storage/storageAccounts/{account}",
                    "keyVault": f"{storage}/Microsoft.KeyVault/vaults/fakeamlkeyvault",
                    "applicationInsights": None,
                    "containerRegistry": None,
                    "hbiWorkspace": False,
                    "publicNetworkAccess": "Enabled",
                    "provisioningState": "Succeeded",
                    "v1LegacyMode": False,
                },
                "systemData": self._system_data(self.clock()),
            },
        )

    def _list_versions(self, record: RecordedRequest, kind: str, name: str) -> Response:
        kind = kind.lower()
        found = list(self._versions(kind, name).values())
        wanted_hash = record.query.get("hash")
        if wanted_hash is not None:
            # anonymous code is named by a fresh GUID each time: the hash finds it whatever its name [guess]
            found = [r for versions in self.v2_assets[kind].values() for r in versions.values()]
            found = [
                r
                for r in found
                if (r["properties"].get("properties") or {}).get("hash_sha256") == wanted_hash
            ]
        order = (record.query.get("$orderBy") or record.query.get("$orderby") or "").lower()
        if order.startswith("createdtime"):
            found.sort(key=lambda r: r["systemData"]["createdAt"], reverse=order.endswith("desc"))
        top = record.query.get("$top")
        if top and top.isdigit():
            found = found[: int(top)]
        return Response(200, {"value": found, "nextLink": None})

    def _get_version_route(self, record: RecordedRequest, kind: str, name: str, version: str) -> Response:
        return Response(200, self._version(kind.lower(), name, version))

    def _put_version_route(self, record: RecordedRequest, kind: str, name: str, version: str) -> Response:
        return self._put_version(kind.lower(), name, version, record)

    def _get_container_route(self, record: RecordedRequest, kind: str, name: str) -> Response:
        return Response(200, self._container(kind.lower(), name))

    def _start_pending_upload(self, record: RecordedRequest, name: str, version: str) -> Response:
        """A temporary container in the workspace storage (Azurite) and a SAS URL to write into it, path-style
        on loopback so that azure-storage-blob reaches Azurite directly."""
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        store = self.blob_store
        if store is None:
            raise ServiceError(
                500, "The emulated workspace has no storage (use_blob_store).", "InternalError"
            )
        container = f"code-{uuid.uuid4().hex[:24]}"
        store.container_client(container).create_container()
        self.code_uploads.append(container)
        sas = generate_container_sas(
            store.account,
            container,
            account_key=store.key,
            permission=ContainerSasPermissions(read=True, write=True, create=True, add=True, list=True),
            expiry=self.clock() + CODE_SAS_LIFETIME,
        )
        blob_uri = f"{store.proxy_url}/{store.account}/{container}"
        storage = f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}/providers"
        return Response(
            200,
            {
                "blobReferenceForConsumption": {
                    "blobUri": blob_uri,
                    "storageAccountArmId": f"{storage}/Microsoft.Storage/storageAccounts/{store.account}",
                    "credential": {"credentialType": "SAS", "sasUri": f"{blob_uri}?{sas}"},
                },
                "pendingUploadId": uuid.uuid4().hex,
                "pendingUploadType": "TemporaryBlobReference",
            },
        )

    # ------------------------------------------------------------------ reading asset files
    def download_uri(self, uri: str, destination: Path) -> Path:
        """Download what an asset URI names into `destination` (a folder): an `azureml://.../datastores/<ds>/
        paths/<p>` URI (file or folder), or a loopback blob URL of a code upload. Returns the local path of the
        file, or of the folder, the URI names."""
        container, prefix = self._blob_location(uri)
        client = self.blob_store.container_client(container)  # type: ignore[union-attr]
        names = [b.name for b in client.list_blobs(name_starts_with=prefix)]
        exact = prefix in names
        target = destination / Path(prefix.rstrip("/")).name if prefix.strip("/") else destination
        if exact:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(client.download_blob(prefix).readall())
            return target
        folder_prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        inside = [n for n in names if n.startswith(folder_prefix)]
        target.mkdir(parents=True, exist_ok=True)
        for blob in inside:
            path = target / blob[len(folder_prefix) :]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(client.download_blob(blob).readall())
        if not inside:
            raise FileNotFoundError(f"nothing is stored at {uri}")
        return target

    def _blob_location(self, uri: str) -> tuple[str, str]:
        """(container, path) in the workspace storage of an asset URI."""
        store = self.blob_store
        if store is None:
            raise RuntimeError("the emulated workspace has no storage (use_blob_store)")
        if uri.startswith("azureml://"):
            _, _, rest = uri.partition("/datastores/")
            datastore, _, path = rest.partition("/paths/")
            if not datastore or not _:
                raise ValueError(f"not a datastore URI: {uri}")
            if datastore in ("${{default_datastore}}", DEFAULT_DATASTORE):
                return store.container, path
            if datastore == ARTIFACT_DATASTORE:
                return ARTIFACTS_CONTAINER, path
            raise ValueError(f"datastore {datastore} is not emulated")
        parts = urlsplit(uri)
        segments = parts.path.lstrip("/").split("/", 2)
        if f"{parts.scheme}://{parts.netloc}" != store.proxy_url or len(segments) < 2:
            raise ValueError(f"not a URI of the workspace storage: {uri}")
        return segments[1], segments[2] if len(segments) > 2 else ""

    def upload_folder(self, folder: Path, uri: str) -> list[str]:
        """Upload every file under `folder` to the datastore folder `uri` names; returns the blob names."""
        container, prefix = self._blob_location(uri)
        client = self.blob_store.container_client(container)  # type: ignore[union-attr]
        prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        written = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            name = prefix + path.relative_to(folder).as_posix()
            client.upload_blob(name, path.read_bytes(), overwrite=True)
            written.append(name)
        return written


def _singular(kind: str) -> str:
    return {
        "environments": "Environment",
        "codes": "Code",
        "components": "Component",
        "data": "Data",
        "models": "Model",
    }.get(kind, kind)


def _changed_fields(stored: dict[str, Any], given: dict[str, Any]) -> list[str]:
    keys = (set(stored) | set(given)) - MUTABLE_FIELDS
    return sorted(k for k in keys if _canonical(stored.get(k)) != _canonical(given.get(k)))


def _canonical(value: Any) -> str:
    # an absent field and an explicit null are the same to the service
    return json.dumps(value, sort_keys=True)


def _artifact_prefix(asset: dict[str, Any]) -> str:
    """The folder of the artifact container a v1 model's files are under."""
    artifacts = asset.get("artifacts") or []
    prefixes = [a["prefix"] for a in artifacts if a.get("prefix")]
    if prefixes:
        return prefixes[0]
    ids = [a["id"] for a in artifacts if a.get("id")]
    return "/".join(_common_parts([i.split("/")[:-1] for i in ids])) if ids else ""


def _common_parts(paths: list[list[str]]) -> list[str]:
    common: list[str] = []
    for parts in zip(*paths, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return common


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
