"""save_predictions' large-run output: the predictions as Parquet parts under a folder of a fresh name, named
with their row counts in the manifest, which is written last and switches readers to them; then the CSV it
superseded is removed, and the parts of the set before the previous one (the previous set stays for its
readers until the next run). Only footers are read: the rows are copied as the files they are."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batchpred_steps.errors import StepError
from batchpred_steps.handoff import parquet_parts

PARTS_DIR = "parts"
PART_NAME = "part-{index:05d}.parquet"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Part:
    path: Path
    rows: int


def input_parts(folder: str | Path, prediction_column: str) -> tuple[list[Part], list[str]]:
    """Predict's Parquet parts in `folder` with their row counts, and their columns, from the footers alone.

    StepError when a part cannot be read, the parts' columns differ, the prediction column is missing, or
    there is no row at all: an empty or wrong set must never replace the latest predictions."""
    import pyarrow.parquet as pq

    parts: list[Part] = []
    schemas: list[list[str]] = []
    for path in parquet_parts(folder):
        try:
            with pq.ParquetFile(path) as parquet:
                parts.append(Part(path, int(parquet.metadata.num_rows)))
                schemas.append(list(parquet.schema_arrow.names))
        except Exception as error:  # pyarrow reports a corrupt part with several exception types
            raise StepError(f"cannot read the predictions in {str(path)!r}: {error}") from error
    if not sum(part.rows for part in parts):
        raise StepError("the input holds no rows; the latest predictions are left as they were")
    columns = schemas[0]
    if prediction_column not in columns:
        raise StepError(
            f"the input has no {prediction_column!r} column (columns: {', '.join(columns)[:300]})"
        )
    if any(names != columns for names in schemas):
        raise StepError("the input's Parquet parts do not have the same columns")
    return parts, columns


def fresh_parts_folder(latest: Path, run_id: str, now: datetime) -> str:
    """`parts/<UTC time>-<run id>`: a folder of the latest folder no manifest names yet (a retried run gets
    another), so the new set is written beside the one readers use."""
    stem = f"{now.astimezone(UTC):%Y%m%dT%H%M%S%fZ}-{_UNSAFE.sub('_', run_id).strip('.') or 'run'}"
    name, suffix = f"{PARTS_DIR}/{stem}", 1
    while (latest / name).exists():
        suffix += 1
        name = f"{PARTS_DIR}/{stem}-{suffix}"
    return name


def copy_parts(parts: list[Part], root: Path, folder: str) -> list[dict[str, Any]]:
    """Copy `parts` as `<root>/<folder>/part-NNNNN.parquet` (each flushed to disk); the manifest's `files`:
    each file's path relative to `root` and its rows. Parts without rows are left out."""
    files: list[dict[str, Any]] = []
    target = root / folder
    target.mkdir(parents=True, exist_ok=True)
    for part in (p for p in parts if p.rows):
        name = f"{folder}/{PART_NAME.format(index=len(files))}"
        with open(part.path, "rb") as source, open(root / name, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        files.append({"path": name, "rows": part.rows})
    return files


def write_json(path: Path, document: dict[str, Any]) -> None:
    """`document` as `path`, whole or not at all (a temporary file in its folder renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(json.dumps(document, indent=2))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)


def parts_folders(manifest: dict[str, Any] | None) -> set[str]:
    """The parts folders (relative to the latest folder) a manifest names; none for a CSV run or no manifest."""
    folders = {Path(entry["path"]).parent.as_posix() for entry in (manifest or {}).get("files", [])}
    return {folder for folder in folders if folder.startswith(f"{PARTS_DIR}/")}


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest at `path`, or None when there is none (a first run) or it cannot be read."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def remove_superseded(
    latest: Path, manifest: dict[str, Any], csv_name: str, previous: dict[str, Any] | None = None
) -> list[str]:
    """After `manifest` was written into `latest`: remove the parts folders neither it nor the `previous`
    manifest (the one it replaced) names and, when it names no CSV, a CSV an earlier run left. The previous
    set's parts stay one run longer, so a reader that read the previous manifest can finish reading them
    while this run publishes; the CSV goes at once (a reader of predictions.csv alone must not take an old
    one for the latest). Returns what was removed (paths relative to `latest`)."""
    kept = parts_folders(manifest) | parts_folders(previous)
    removed = []
    parts_root = latest / PARTS_DIR
    if parts_root.is_dir():
        for folder in sorted(parts_root.iterdir()):
            relative = folder.relative_to(latest).as_posix()
            if relative not in kept:
                shutil.rmtree(folder) if folder.is_dir() else folder.unlink()
                removed.append(relative)
        if not any(parts_root.iterdir()):
            parts_root.rmdir()
    if manifest.get("predictions_file") is None and (latest / csv_name).exists():
        (latest / csv_name).unlink()
        removed.append(csv_name)
    return removed
