"""Model management (`/modelmanagement/v1.0{WS}/...`): registered models by id (`models/{name}:{version}`), the
model query (`models?name=...&count=1`, newest version first) and assets (`assets/{id}`), what `Model(ws,
name=..., version=...)` and `Model.download` read. `register_model` seeds the next version: its files become
artifacts (artifacts.py) under one prefix, as `Model.register` uploads them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from emulator.aml.state import iso, new_id
from emulator.aml.wire import SEG, RecordedRequest, Response, Route, ServiceError, route


class ModelService:
    """Mixed into FakeAzureML; `fake.models` is {name: [model DTOs, oldest first]}, `fake.assets` {id: asset}."""

    def register_model(
        self,
        name: str,
        source: str | Path | Mapping[str, bytes],
        *,
        tags: dict[str, str] | None = None,
        properties: dict[str, str] | None = None,
        description: str | None = None,
        artifact_ids: bool = False,
    ) -> dict[str, Any]:
        """Register the next version of model `name` and return its DTO. `source` is a folder or a file (as
        given to `Model.register(model_path=...)`: the download has the folder, or the file, by its own name)
        or {relative path: bytes} (a folder named after the model). The asset names its files by one
        artifact prefix, as `Model.register` does; `artifact_ids=True` names each file by artifact id
        instead (the SDK then asks `contentinfo` per file and downloads each by its last path segment)."""
        if isinstance(source, Mapping):
            base, files = name, {rel: bytes(data) for rel, data in source.items()}
        else:
            path = Path(source)
            base = path.name
            if path.is_dir():
                files = {
                    p.relative_to(path).as_posix(): p.read_bytes()
                    for p in sorted(path.rglob("*"))
                    if p.is_file()
                }
            else:
                files = {"": path.read_bytes()}
        if not files:
            raise ValueError(f"model {name}: no files to register")
        now = self.clock()
        container = f"{now.strftime('%y%m%dT%H%M%S')}-{new_id()[:8]}"
        ids = [
            self.put_artifact("LocalUpload", container, f"{base}/{rel}" if rel else base, data)
            for rel, data in files.items()
        ]
        artifacts = (
            [{"id": i, "prefix": None} for i in ids]
            if artifact_ids
            else [{"id": None, "prefix": f"LocalUpload/{container}/{base}"}]
        )
        with self.lock:
            asset = {
                "id": new_id().replace("-", ""),
                "name": name,
                "type": None,
                "description": None,
                "artifacts": artifacts,
                "kvTags": {},
                "properties": {},
                "runid": None,
                "meta": None,
                "createdTime": iso(now),
            }
            self.assets[asset["id"]] = asset
            versions = self.models.setdefault(name, [])
            version = len(versions) + 1
            versions.append(_model_dto(name, version, asset["id"], tags, properties, description, now))
            return versions[-1]

    # ------------------------------------------------------------------ routes
    def _model_routes(self) -> list[Route]:
        return [
            route("GET", r"/models", self._query_models),
            route("GET", rf"/models/{SEG}", self._get_model),
            route("GET", rf"/assets/{SEG}", self._get_asset),
        ]

    def _get_model(self, record: RecordedRequest, model_id: str) -> Response:
        name, _, version = model_id.rpartition(":")
        for dto in self.models.get(name) or []:
            if str(dto["version"]) == version:
                return Response(200, dto)
        raise ServiceError(404, f"Model {model_id} not found.", "ModelNotFound")

    def _query_models(self, record: RecordedRequest) -> Response:
        name = record.query.get("name")
        found = [dto for versions in self.models.values() for dto in versions if name in (None, dto["name"])]
        found.sort(key=lambda dto: dto["createdTime"], reverse=True)  # newest first: count=1 is the latest
        count = record.query.get("count")
        if count and count.isdigit():
            found = found[: int(count)]
        return Response(200, {"value": found, "continuationToken": None, "nextLink": None})

    def _get_asset(self, record: RecordedRequest, asset_id: str) -> Response:
        if asset_id not in self.assets:
            raise ServiceError(404, f"Asset {asset_id} not found.", "AssetNotFound")
        return Response(200, self.assets[asset_id])


def _model_dto(
    name: str,
    version: int,
    asset_id: str,
    tags: dict[str, str] | None,
    properties: dict[str, str] | None,
    description: str | None,
    now: datetime,
) -> dict[str, Any]:
    return {
        "id": f"{name}:{version}",
        "name": name,
        "version": version,
        "framework": "Custom",
        "frameworkVersion": None,
        "description": description,
        "datasets": [],
        "url": f"aml://asset/{asset_id}",
        "mimeType": "application/octet-stream",
        "createdTime": iso(now),
        "modifiedTime": iso(now),
        "unpack": False,
        "parentModelId": None,
        "runId": None,
        "experimentName": None,
        "kvTags": {str(k): str(v) for k, v in (tags or {}).items()},
        "properties": {str(k): str(v) for k, v in (properties or {}).items()},
        "derivedModelIds": None,
        "sampleInputData": None,
        "sampleOutputData": None,
        "resourceRequirements": None,
        "createdBy": {"userObjectId": "00000000-0000-0000-0000-0000000000aa", "userName": "fake-identity"},
    }
