"""Pipeline step 3 of 3, save_predictions: publish the predictions in the latest folder (where other apps read
them) and keep every run's copy under `<history>/<YYYY-MM-DD>/<run_id>/`, each with a manifest.json naming
every file and its rows: one predictions.csv up to `--csv-max-rows` rows (default 1,000,000), else Parquet
parts under `parts/<time>-<run_id>/` and no CSV.

The input is streamed (the CSV batch by batch; parts are copied as files). A failure half-way never leaves
the latest folder partial or empty: the history copy is written first, then the latest CSV (or the new parts,
in a folder no manifest names yet), then the latest manifest, each through a temporary file renamed into
place; only then are the parts and CSV it superseded removed. `--destination ROOT` is short for
`--latest-dir ROOT/latest_predictions --history-dir ROOT/history`. On Azure ML v1, aml_v1.py publishes into
local folders and uploads them to the default datastore in the same order.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from batchpred_steps.cli import run_step, step_parser
from batchpred_steps.handoff import METADATA_FILE, PREDICTION_COLUMN, read_metadata
from batchpred_steps.partitioned import (
    Part,
    copy_parts,
    fresh_parts_folder,
    input_parts,
    remove_superseded,
    write_json,
)
from batchpred_steps.publish import (
    CSV_NAME,
    LATEST_CSV_MAX_ROWS,
    MANIFEST_NAME,
    Folders,
    build_manifest,
    history_path,
    publish,
    publish_plan,
    run_folder,
    write_predictions_csv,
)

log = logging.getLogger("save_predictions")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = step_parser(__doc__)
    parser.add_argument("--input", required=True, help="folder with predict's Parquet output")
    parser.add_argument("--latest-dir", help="folder of the latest predictions.csv and manifest.json")
    parser.add_argument("--history-dir", help="folder of every run's copy (<YYYY-MM-DD>/<run_id>/)")
    parser.add_argument("--destination", help="ROOT: short for ROOT/latest_predictions and ROOT/history")
    parser.add_argument("--run-id", required=True, help="the pipeline run, for the manifest and history")
    parser.add_argument("--pipeline-fingerprint", help="the published pipeline's version, for the manifest")
    parser.add_argument(
        "--csv-max-rows",
        type=int,
        default=LATEST_CSV_MAX_ROWS,
        help=f"the most rows published as predictions.csv; more: Parquet parts only (default {LATEST_CSV_MAX_ROWS})",
    )
    parser.add_argument("--prediction-column", default=PREDICTION_COLUMN, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.destination is not None and (args.latest_dir or args.history_dir):
        parser.error("give --destination or --latest-dir and --history-dir, not both")
    if args.destination is None and not (args.latest_dir and args.history_dir):
        parser.error("give --latest-dir and --history-dir (or --destination ROOT)")
    return args


def folders_of(args: argparse.Namespace) -> Folders:
    if args.destination is not None:
        return Folders.under(args.destination)
    return Folders(Path(args.latest_dir), Path(args.history_dir))


def save(
    source: Path,
    folders: Folders,
    run_id: str,
    fingerprint: str | None = None,
    *,
    prediction_column: str = PREDICTION_COLUMN,
    now: datetime | None = None,
    csv_max_rows: int = LATEST_CSV_MAX_ROWS,
) -> dict:
    """Publish the predictions in `source` to `folders`; return the manifest written."""
    now = now or datetime.now(UTC)
    metadata = read_metadata(source)
    if not metadata:
        log.warning("%s has no %s; the manifest will not name the model", source, METADATA_FILE)
    parts, columns = input_parts(source, prediction_column)
    rows = sum(part.rows for part in parts)
    place = run_folder(run_id, now)
    facts = {
        "rows": rows,
        "columns": columns,
        "run_id": run_id,
        "fingerprint": fingerprint,
        "input_metadata": metadata,
        "now": now,
        "history": history_path(place),
    }
    if rows <= csv_max_rows:
        manifest = save_csv(source, folders, place, prediction_column, facts)
    else:
        manifest = save_parts(parts, folders, place, fresh_parts_folder(folders.latest, run_id, now), facts)
    removed = remove_superseded(folders.latest, manifest, CSV_NAME)
    log.info(
        "saved %d predictions of run %s (model %s version %s) to %s as %s%s",
        rows, run_id, metadata.get("model_name"), metadata.get("model_version"), folders.latest,
        manifest["format"], f"; removed the superseded {', '.join(removed)}" if removed else "",
    )  # fmt: skip
    return manifest


def save_csv(source: Path, folders: Folders, place: str, prediction_column: str, facts: dict) -> dict:
    """The predictions as one CSV (streamed batch by batch): history copy, latest CSV, latest manifest."""
    with tempfile.TemporaryDirectory(prefix="save_predictions.") as scratch:
        csv_file = Path(scratch) / CSV_NAME
        write_predictions_csv(source, csv_file, prediction_column)
        manifest = build_manifest(**facts)
        manifest_file = Path(scratch) / MANIFEST_NAME
        manifest_file.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        publish(publish_plan(folders, place, csv_file, manifest_file))
    return manifest


def save_parts(parts: list[Part], folders: Folders, place: str, parts_folder: str, facts: dict) -> dict:
    """The predictions as Parquet parts in `parts_folder` (copied as files): the history copy (parts, then
    manifest), then the latest parts in that folder, which no manifest names yet, then the latest manifest,
    which switches readers to them."""
    history = folders.history / place
    files = copy_parts(parts, history, parts_folder)
    manifest = build_manifest(**facts, files=files, predictions_file=None)
    write_json(history / MANIFEST_NAME, manifest)
    copy_parts(parts, folders.latest, parts_folder)
    write_json(folders.latest / MANIFEST_NAME, manifest)
    return manifest


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_step(
        lambda: save(
            Path(args.input),
            folders_of(args),
            args.run_id,
            args.pipeline_fingerprint,
            prediction_column=args.prediction_column,
            csv_max_rows=args.csv_max_rows,
        ),
        io_failure="cannot write the predictions",
    )


if __name__ == "__main__":
    main()
