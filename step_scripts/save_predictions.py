"""Pipeline step 3 of 3, save_predictions: publish the predictions as CSV in the latest folder (where other
apps read them) and keep every run's copy under `<history>/<YYYY-MM-DD>/<run_id>/`, each with a manifest.

A failure half-way never leaves the latest folder partial or empty: the history copy is written first, then
the latest CSV, then the latest manifest, each through a temporary file renamed into place. `--destination
ROOT` is short for `--latest-dir ROOT/latest_predictions --history-dir ROOT/history`. On Azure ML v1,
aml_v1.py publishes into local folders and uploads them to the default datastore in the same order.
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
from batchpred_steps.publish import (
    CSV_NAME,
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
) -> dict:
    """Publish the predictions in `source` to `folders`; return the manifest written."""
    now = now or datetime.now(UTC)
    metadata = read_metadata(source)
    if not metadata:
        log.warning("%s has no %s; the manifest will not name the model", source, METADATA_FILE)
    with tempfile.TemporaryDirectory(prefix="save_predictions.") as scratch:
        csv_file = Path(scratch) / CSV_NAME
        rows, columns = write_predictions_csv(source, csv_file, prediction_column)
        place = run_folder(run_id, now)
        manifest = build_manifest(
            rows=rows,
            columns=columns,
            run_id=run_id,
            fingerprint=fingerprint,
            input_metadata=metadata,
            now=now,
            history=history_path(place),
        )
        manifest_file = Path(scratch) / MANIFEST_NAME
        manifest_file.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        publish(publish_plan(folders, place, csv_file, manifest_file))
    log.info(
        "saved %d predictions of run %s (model %s version %s) to %s",
        rows, run_id, metadata.get("model_name"), metadata.get("model_version"), folders.latest / CSV_NAME,
    )  # fmt: skip
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
        ),
        io_failure="cannot write the predictions",
    )


if __name__ == "__main__":
    main()
