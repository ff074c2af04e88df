"""The dataset service (`/dataset/v1.0{WS}/datasets/query/name={name}`) and the data service's dataset
definition (`/data/v1.0{WS}/dataversion/unregistered-{savedId}/versions/1`): what `Dataset.get_by_name` reads.
`register_dataset` seeds a tabular dataset whose CSV lives in the workspace blob store (Azurite); its
definition is the RSLex YAML (mltable) that dataprep's Rust reader executes, pointing at
`azureml://.../datastores/workspaceblobstore/paths/...`."""

from __future__ import annotations

import csv
import io
import itertools
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from emulator.aml.datastore import DEFAULT_DATASTORE
from emulator.aml.state import iso, new_id
from emulator.aml.wire import SEG, RecordedRequest, Response, Route, ServiceError, new_etag, route

# dataprep writes a 20 MiB partition size into every read_delimited it serialises
_PARTITION_SIZE = 20971520
# Rows the column types are inferred from: int, float, boolean (true/false) or string, the types a dataset
# registered as docs/steps-and-model.md registers it reads as. The SDK's own inference (at registration, on the
# user's machine, from the first rows; checked with dataprep 5.5.0) is harsher: a column of 0/1 or Y/N in the
# first rows becomes boolean whatever follows, which is why that doc sets PoolArea and CentralAir by hand.
INFERENCE_ROWS = 10_000


@dataclass
class FakeDatasetVersion:
    """One registered version of a tabular dataset: its saved dataset and the blob it reads."""

    name: str
    registered_id: str  # the dataset's id, shared by its versions
    saved_id: str  # this version's saved dataset id
    version: int
    blob_path: str  # path in the workspaceblobstore container
    definition: str  # RSLex YAML
    created: datetime
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


class DatasetService:
    """Mixed into FakeAzureML; `fake.datasets` is {name: [versions, oldest first]}."""

    def register_dataset(
        self,
        name: str,
        csv_data: bytes | str | Path,
        *,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        column_types: dict[str, str] | None = None,
    ) -> FakeDatasetVersion:
        """Upload the CSV (bytes, or a file path) into the workspace blob store and register the next version
        of the tabular dataset `name` (delimited files, comma, header row) reading it. A file is uploaded as a
        stream (a generated table of millions of rows is not held in memory). Column types are inferred from
        the first INFERENCE_ROWS rows as int, float, boolean or string (dataprep's inference at creation time
        also reads a sample, and also finds dates); `column_types` ({column: int|float|boolean|string|
        datetime}) overrides."""
        store = self.blob_store
        if store is None:
            raise RuntimeError("register_dataset needs a blob store: call fake.use_blob_store(...) first")
        path = None if isinstance(csv_data, bytes) else Path(csv_data)
        file_name = f"{name}.csv" if path is None else path.name
        with self.lock:
            versions = self.datasets.setdefault(name, [])
            version = len(versions) + 1
            registered_id = versions[0].registered_id if versions else new_id()
        blob_path = f"datasets/{name}/{version}/{file_name}"
        if path is None:
            assert isinstance(csv_data, bytes)
            store.container_client().upload_blob(blob_path, csv_data, overwrite=True)
            head = csv_data
        else:
            with open(path, "rb") as stream:
                store.container_client().upload_blob(blob_path, stream, overwrite=True)
            head = _head(path)
        types = {**_infer_column_types(head), **(column_types or {})}
        entry = FakeDatasetVersion(
            name=name,
            registered_id=registered_id,
            saved_id=new_id(),
            version=version,
            blob_path=blob_path,
            definition=_mltable_yaml(self._datastore_uri(blob_path), types),
            created=self.clock(),
            description=description,
            tags=dict(tags or {}),
        )
        with self.lock:
            versions.append(entry)
        return entry

    def _datastore_uri(self, path: str) -> str:
        return (
            f"azureml://subscriptions/{self.subscription_id}/resourcegroups/{self.resource_group}"
            f"/workspaces/{self.workspace_name}/datastores/{DEFAULT_DATASTORE}/paths/{path}"
        )

    # ------------------------------------------------------------------ routes
    def _dataset_routes(self) -> list[Route]:
        return [route("GET", rf"/datasets/query/name={SEG}", self._get_dataset_by_name)]

    def _data_routes(self) -> list[Route]:
        return [route("GET", rf"/dataversion/{SEG}/versions/{SEG}", self._get_data_version)]

    def _get_dataset_by_name(self, record: RecordedRequest, name: str) -> Response:
        versions = self.datasets.get(name) or []
        wanted = record.query.get("versionId")
        found = versions[-1] if versions and not wanted else None
        for entry in versions if wanted else []:
            if str(entry.version) == wanted:
                found = entry
        if found is None:
            version = f" (version {wanted})" if wanted else ""
            raise ServiceError(404, f"Dataset with name '{name}'{version} not found.", "NotFound")
        return Response(200, _dataset_dto(found, versions[-1]))

    def _get_data_version(self, record: RecordedRequest, data_id: str, version: str) -> Response:
        # The SDK fetches a v1 dataset's definition as "unregistered-{savedId}" version 1; the same route with a
        # name answers v2 data assets, of which this workspace has none.
        for versions in self.datasets.values():
            for entry in versions:
                if data_id == f"unregistered-{entry.saved_id}" and version == "1":
                    return Response(200, _data_version_dto(entry))
        raise ServiceError(404, f"DataVersion {data_id}:{version} not found.", "NotFound")


def _dataset_dto(entry: FakeDatasetVersion, latest: FakeDatasetVersion) -> dict[str, Any]:
    state = {"state": "active", "deprecatedBy": None, "etag": None}
    return {
        "datasetId": entry.registered_id,
        "datasetState": state,
        "latest": {
            "datasetId": entry.registered_id,
            "versionId": str(entry.version),
            "datasetDefinitionState": state,
            # what the SDK registered: the legacy dataflow JSON, carrying the RSLex YAML
            "dataflow": json.dumps({"blocks": [], "meta": {"RsDataflow": entry.definition}}),
            "dataPath": None,
            "partitionFormatInPath": None,
            "profileActionResult": None,
            "notes": None,
            "etag": new_etag(),
            "createdTime": iso(entry.created),
            "modifiedTime": iso(entry.created),
            "fileType": None,
            "properties": {},
            "savedDatasetId": entry.saved_id,
        },
        "createdTime": iso(latest.created),
        "modifiedTime": iso(latest.created),
        "etag": new_etag(),
        "name": entry.name,
        "description": entry.description,
        "tags": dict(entry.tags),
        "isVisible": True,
        "defaultCompute": None,
        "datasetType": "tabular",
    }


def _data_version_dto(entry: FakeDatasetVersion) -> dict[str, Any]:
    return {
        "dataVersion": {
            "dataContainerName": f"unregistered-{entry.saved_id}",
            "versionId": "1",
            "dataType": "mltable",
            "dataUri": None,
            "mltableUri": None,
            "description": None,
        },
        "entityMetadata": {"createdTime": iso(entry.created), "modifiedTime": iso(entry.created)},
        "legacyDatasetType": "tabular",
        "legacyDataflowType": "RSLex",
        "legacyDataflow": entry.definition,
    }


def _mltable_yaml(uri: str, column_types: dict[str, str]) -> str:
    """The RSLex YAML dataprep writes for `from_delimited_files` on one file with inferred column types
    (strings are JSON-quoted, which YAML reads the same)."""
    lines = [
        "---",
        "type: mltable",
        "paths:",
        f"  - pattern: {json.dumps(uri)}",
        "transformations:",
        "  - read_delimited:",
        "      path_column: Path",
        "      include_path_column: false",
        "      encoding: utf8",
        "      support_multi_line: false",
        '      delimiter: ","',
        "      empty_as_string: false",
        f"      partition_size: {_PARTITION_SIZE}",
        "      header: all_files_same_headers",
        "      infer_column_types: false",
    ]
    if column_types:
        lines.append("  - convert_column_types:")
        for column, kind in column_types.items():
            lines.append(f"      - columns: {json.dumps(column)}")
            lines.append(f"        column_type: {kind}")
    lines += ["metadata:", '  infer_column_types: "False"', ""]
    return "\n".join(lines)


def _head(path: Path) -> bytes:
    """The header and first INFERENCE_ROWS rows of a CSV file."""
    with open(path, "rb") as stream:
        return b"".join(itertools.islice(stream, INFERENCE_ROWS + 1))


def _infer_column_types(data: bytes) -> dict[str, str]:
    reader = csv.reader(io.StringIO(data.decode("utf-8-sig")))
    header = next(reader, [])
    columns: list[list[str]] = [[] for _ in header]
    for row in itertools.islice(reader, INFERENCE_ROWS):
        for index, value in enumerate(row[: len(header)]):
            if value != "":
                columns[index].append(value)
    return {name: _column_type(values) for name, values in zip(header, columns, strict=True)}


def _column_type(values: list[str]) -> str:
    if not values:
        return "string"
    if all(_parses(int, v) for v in values):
        return "int"
    if all(_parses(float, v) for v in values):
        return "float"
    if all(v.lower() in ("true", "false") for v in values):
        return "boolean"
    return "string"


def _parses(kind: type, value: str) -> bool:
    try:
        kind(value)
    except ValueError:
        return False
    return True
