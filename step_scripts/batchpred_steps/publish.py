"""save_predictions' logic: one CSV and a manifest, published to a latest folder and a history folder in the
order that keeps the latest predictions whole: the run's history copy first, then the latest CSV, then the
latest manifest, each written to a temporary file in its folder and renamed into place. Above
LATEST_CSV_MAX_ROWS rows the predictions are Parquet parts instead (partitioned.py); the manifest names every
file either way."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batchpred_steps.errors import StepError
from batchpred_steps.handoff import iter_batches, parquet_parts

LATEST_DIR = "latest_predictions"
HISTORY_DIR = "history"
CSV_NAME = "predictions.csv"
MANIFEST_NAME = "manifest.json"
BATCH_ROWS = 50_000
# The most rows published as the one predictions.csv; a larger run publishes Parquet parts only.
LATEST_CSV_MAX_ROWS = 1_000_000
_UNSAFE_PATH_CHARS = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Folders:
    """Where predictions are published: `latest` holds the current CSV and manifest; `history` holds a copy
    per run under `<YYYY-MM-DD>/<run_id>/`."""

    latest: Path
    history: Path

    @classmethod
    def under(cls, root: str | Path) -> Folders:
        """`<root>/latest_predictions` and `<root>/history`, the layout of a datastore's root."""
        return cls(Path(root) / LATEST_DIR, Path(root) / HISTORY_DIR)


def run_folder(run_id: str, now: datetime) -> str:
    """`<YYYY-MM-DD>/<run_id>` (UTC date): a run's place under the history folder; the run id is made safe to
    use as one path segment."""
    safe_id = _UNSAFE_PATH_CHARS.sub("_", run_id).strip(".") or "unknown"
    return f"{now.astimezone(UTC):%Y-%m-%d}/{safe_id}"


def build_manifest(
    *,
    rows: int,
    columns: Sequence[str],
    run_id: str,
    fingerprint: str | None,
    input_metadata: dict[str, Any],
    now: datetime,
    history: str,
    files: Sequence[dict[str, Any]] | None = None,
    predictions_file: str | None = CSV_NAME,
) -> dict[str, Any]:
    """What a reader of the predictions needs to trust them: how many rows, which model, which run, which
    files. `history` is the run's copy as a datastore path (`history/<YYYY-MM-DD>/<run_id>`); `files` every
    file of the predictions (path relative to the manifest's folder, rows), by default the one CSV;
    `predictions_file` the CSV, None when the run published Parquet parts only."""
    return {
        "rows": rows,
        "columns": list(columns),
        "model_name": input_metadata.get("model_name"),
        "model_version": input_metadata.get("model_version"),
        "run_id": run_id,
        "pipeline_fingerprint": fingerprint,
        "created_at": now.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "dataset": input_metadata.get("dataset"),
        "dataset_version": input_metadata.get("dataset_version"),
        "sample_size": input_metadata.get("sample_size"),
        "seed": input_metadata.get("seed"),
        "predictions_file": predictions_file,
        "format": "csv" if predictions_file else "parquet",
        "files": list(files) if files is not None else [{"path": CSV_NAME, "rows": rows}],
        "history_folder": history,
    }


def publish_plan(
    folders: Folders, run_folder_name: str, csv_file: Path, manifest_file: Path
) -> list[tuple[Path, Path]]:
    """(target, source) in the order that keeps the latest predictions whole: history first, then the latest
    CSV, and the latest manifest last (a reader that sees the new manifest finds the new CSV)."""
    history = folders.history / run_folder_name
    return [
        (history / CSV_NAME, csv_file),
        (history / MANIFEST_NAME, manifest_file),
        (folders.latest / CSV_NAME, csv_file),
        (folders.latest / MANIFEST_NAME, manifest_file),
    ]


def publish(plan: Sequence[tuple[Path, Path]], replace: Callable[[Path, Path], None] = os.replace) -> None:
    """Write each (target, source) of `plan`, in order, each whole or not at all.

    Every file is first staged as a temporary file in its target's folder; only when all are staged are they
    renamed into place, in plan order, so a failure while copying changes no target. `os.replace` is atomic
    within a folder: a reader sees the old or the complete new file, never a partial one. `replace` is the
    rename (a test passes one that looks at the folders between renames)."""
    staged: list[tuple[Path, Path]] = []
    try:
        for target, source in plan:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            staged.append((Path(temp_name), target))
            with os.fdopen(fd, "wb") as out, open(source, "rb") as data:
                while chunk := data.read(1 << 20):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        for temp, target in staged:
            replace(temp, target)
    finally:
        for temp, _ in staged:
            temp.unlink(missing_ok=True)


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


def history_path(run_folder_name: str) -> str:
    """The run's history copy as a datastore path, for the manifest."""
    return f"{HISTORY_DIR}/{run_folder_name}"
