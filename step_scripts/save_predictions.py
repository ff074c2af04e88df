"""Pipeline step 3 of 3, save_predictions: publish the predictions as CSV under `latest_predictions/` (where
other apps read them) and keep every run's copy under `history/<YYYY-MM-DD>/<run_id>/`, each with a manifest.

The destination is a local folder, `blob://<container>[/<prefix>]` (connection from the environment variable
AZURE_STORAGE_CONNECTION_STRING), or `default-datastore`: the Azure ML workspace's default datastore.
A failure half-way never leaves `latest_predictions/` partial or empty: the history copy is written first,
then the latest CSV, then the latest manifest, each replaced atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from stepio import (
    METADATA_FILE,
    PREDICTION_COLUMN,
    StepError,
    aml_workspace,
    current_run_id,
    iter_batches,
    parquet_parts,
    read_metadata,
    run_step,
    step_parser,
)

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

log = logging.getLogger("save_predictions")

LATEST_DIR = "latest_predictions"
HISTORY_DIR = "history"
CSV_NAME = "predictions.csv"
MANIFEST_NAME = "manifest.json"
DEFAULT_DATASTORE = "default-datastore"
CONNECTION_STRING_VARIABLE = "AZURE_STORAGE_CONNECTION_STRING"
BATCH_ROWS = 50_000
_UNSAFE_PATH_CHARS = re.compile(r"[^A-Za-z0-9._-]")


# --- computation -----------------------------------------------------------------------------------------


def history_folder(run_id: str, now: datetime) -> str:
    """`history/<YYYY-MM-DD>/<run_id>` (UTC date); the run id is made safe to use as one path segment."""
    safe_id = _UNSAFE_PATH_CHARS.sub("_", run_id).strip(".") or "unknown"
    return f"{HISTORY_DIR}/{now.astimezone(UTC):%Y-%m-%d}/{safe_id}"


def build_manifest(
    *,
    rows: int,
    columns: Sequence[str],
    run_id: str,
    fingerprint: str | None,
    input_metadata: dict[str, Any],
    now: datetime,
    history: str,
) -> dict[str, Any]:
    """What a reader of the predictions needs to trust them: how many rows, which model, which run."""
    return {
        "rows": rows,
        "columns": list(columns),
        "model_name": input_metadata.get("model_name"),
        "model_version": input_metadata.get("model_version"),
        "run_id": run_id,
        "pipeline_fingerprint": fingerprint,
        "created_at": now.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "dataset": input_metadata.get("dataset"),
        "sample_size": input_metadata.get("sample_size"),
        "seed": input_metadata.get("seed"),
        "predictions_file": CSV_NAME,
        "history_folder": history,
    }


def publish_plan(history: str, csv_file: Path, manifest_file: Path) -> list[tuple[str, Path]]:
    """The files to write, in the order that keeps the latest predictions whole: history first, then the
    latest CSV, and the latest manifest last (a reader that sees the new manifest finds the new CSV)."""
    return [
        (f"{history}/{CSV_NAME}", csv_file),
        (f"{history}/{MANIFEST_NAME}", manifest_file),
        (f"{LATEST_DIR}/{CSV_NAME}", csv_file),
        (f"{LATEST_DIR}/{MANIFEST_NAME}", manifest_file),
    ]


def write_predictions_csv(
    input_folder: str | Path, target: Path, prediction_column: str
) -> tuple[int, list[str]]:
    """Stream the Parquet rows of `input_folder` into one CSV file; return (rows, columns).

    Raises StepError when there is no row or no prediction column: an empty or wrong file must never
    replace the latest predictions.
    """
    rows = 0
    columns: list[str] | None = None
    parquet_parts(input_folder)  # a clear error for a missing or empty input folder
    try:
        with open(target, "w", newline="", encoding="utf-8") as out:
            for batch in iter_batches(input_folder, BATCH_ROWS):
                if columns is None:
                    columns = [str(c) for c in batch.columns]
                    if prediction_column not in columns:
                        raise StepError(
                            f"the input has no {prediction_column!r} column (columns: {', '.join(columns)[:300]})"
                        )
                elif [str(c) for c in batch.columns] != columns:
                    raise StepError("the input's Parquet parts do not have the same columns")
                batch.to_csv(out, header=rows == 0, index=False)
                rows += len(batch)
    except (StepError, OSError):
        raise
    except Exception as error:  # pyarrow reports a corrupt part with several exception types
        raise StepError(f"cannot read the predictions in {str(input_folder)!r}: {error}") from error
    if rows == 0 or columns is None:
        raise StepError("the input holds no rows; the latest predictions are left as they were")
    return rows, columns


# --- destinations ----------------------------------------------------------------------------------------


class Destination(Protocol):
    def publish(self, files: list[tuple[str, Path]]) -> None:
        """Write each (relative name, local file) in order; each one appears whole or not at all."""
        ...

    def describe(self, name: str) -> str: ...


@dataclass
class LocalFolder:
    root: Path

    def publish(self, files: list[tuple[str, Path]]) -> None:
        # Stage every file next to its target first, then rename them into place in order: os.replace is
        # atomic, so each target holds either its old or its complete new content, never a partial file.
        staged: list[tuple[Path, Path]] = []
        try:
            for name, source in files:
                target = self.root / name
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
                staged.append((Path(temp), target))
                with os.fdopen(fd, "wb") as out, open(source, "rb") as data:
                    while chunk := data.read(1 << 20):
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
            for temp, target in staged:
                os.replace(temp, target)
        finally:
            for temp, _ in staged:
                temp.unlink(missing_ok=True)

    def describe(self, name: str) -> str:
        return str(self.root / name)


@dataclass
class BlobFolder:
    container: ContainerClient
    prefix: str = ""
    create_container: bool = False

    def publish(self, files: list[tuple[str, Path]]) -> None:
        # One blob upload is atomic (the blob is committed whole), so uploading in order is enough.
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import ContentSettings

        if self.create_container:
            with contextlib.suppress(ResourceExistsError):
                self.container.create_container()
        for name, source in files:
            kind = "text/csv" if name.endswith(".csv") else "application/json"
            with open(source, "rb") as data:
                self.container.upload_blob(
                    self._blob_name(name),
                    data,
                    overwrite=True,
                    content_settings=ContentSettings(content_type=kind),
                )

    def _blob_name(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def describe(self, name: str) -> str:
        return f"{self.container.url}/{self._blob_name(name)}"


def blob_folder_from_url(destination: str, connection_string: str | None) -> BlobFolder:
    """`blob://<container>[/<prefix>]`, in the storage account of `connection_string`."""
    from azure.storage.blob import BlobServiceClient

    path = destination[len("blob://") :].strip("/")
    container_name, _, prefix = path.partition("/")
    if not container_name:
        raise StepError("a blob destination is blob://<container>[/<prefix>]")
    if not connection_string:
        raise StepError(f"a blob:// destination needs the environment variable {CONNECTION_STRING_VARIABLE}")
    try:
        service = BlobServiceClient.from_connection_string(connection_string)
    except ValueError as error:  # the message names the bad part, never the key
        raise StepError(f"{CONNECTION_STRING_VARIABLE} is not a valid connection string: {error}") from error
    return BlobFolder(service.get_container_client(container_name), prefix.strip("/"), create_container=True)


def default_datastore_folder() -> BlobFolder:
    """The default datastore of the Azure ML workspace this step runs in, with the datastore's own
    credential: its account key, its SAS token, or (credential-less datastore) the compute's identity."""
    workspace = aml_workspace(f"destination {DEFAULT_DATASTORE!r} is only available inside an Azure ML run")
    from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
    from azure.storage.blob import ContainerClient

    datastore = workspace.get_default_datastore()
    protocol, endpoint = datastore.protocol or "https", datastore.endpoint or "core.windows.net"
    account_url = f"{protocol}://{datastore.account_name}.blob.{endpoint}"
    if datastore.account_key:
        credential: Any = AzureNamedKeyCredential(datastore.account_name, datastore.account_key)
    elif datastore.sas_token:
        credential = AzureSasCredential(datastore.sas_token.lstrip("?"))
    else:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    return BlobFolder(ContainerClient(account_url, datastore.container_name, credential=credential))


def open_destination(destination: str, environ: Mapping[str, str]) -> Destination:
    if destination == DEFAULT_DATASTORE:
        return default_datastore_folder()
    if destination.startswith("blob://"):
        return blob_folder_from_url(destination, environ.get(CONNECTION_STRING_VARIABLE))
    return LocalFolder(Path(destination))


# --- the step --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = step_parser(__doc__)
    parser.add_argument("--input", required=True, help="folder with predict's Parquet output")
    parser.add_argument(
        "--destination",
        required=True,
        help=f"a local folder, blob://<container>[/<prefix>], or {DEFAULT_DATASTORE} (Azure ML)",
    )
    parser.add_argument("--pipeline-fingerprint", help="the published pipeline's version, for the manifest")
    parser.add_argument("--prediction-column", default=PREDICTION_COLUMN, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A storage error leaves the latest files untouched (see publish_plan); the step reports it in one line.
    return run_step(
        lambda: save(args),
        io_failure="cannot write the predictions",
        azure_failure="cannot upload the predictions",
    )


def save(args: argparse.Namespace) -> None:
    run_id = current_run_id()
    now = datetime.now(UTC)
    metadata = read_metadata(args.input)
    if not metadata:
        log.warning("%s has no %s; the manifest will not name the model", args.input, METADATA_FILE)
    with tempfile.TemporaryDirectory(prefix="save_predictions.") as scratch:
        csv_file = Path(scratch) / CSV_NAME
        rows, columns = write_predictions_csv(args.input, csv_file, args.prediction_column)
        history = history_folder(run_id, now)
        manifest = build_manifest(
            rows=rows,
            columns=columns,
            run_id=run_id,
            fingerprint=args.pipeline_fingerprint,
            input_metadata=metadata,
            now=now,
            history=history,
        )
        manifest_file = Path(scratch) / MANIFEST_NAME
        manifest_file.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        destination = open_destination(args.destination, os.environ)
        destination.publish(publish_plan(history, csv_file, manifest_file))
    log.info(
        "saved %d predictions of run %s (model %s version %s) to %s",
        rows,
        run_id,
        metadata.get("model_name"),
        metadata.get("model_version"),
        destination.describe(f"{LATEST_DIR}/{CSV_NAME}"),
    )


if __name__ == "__main__":
    sys.exit(main())
