"""Pipeline step 3 of 3, save_predictions: publish the predictions in the latest folder (where other apps read
them) and keep every run's copy under `<history>/<YYYY-MM-DD>/<run_id>/`, each with a manifest.json naming
every file and its rows: one predictions.csv up to `--csv-max-rows` rows (default 1,000,000), else Parquet
parts under `parts/<time>-<run_id>/` and no CSV.

The input is streamed (the CSV batch by batch; parts are copied as files). A failure half-way never leaves
the latest folder partial or empty: the history copy is written first, then the latest CSV (or the new parts,
in a folder no manifest names yet), then the latest manifest, each through a temporary file renamed into
place; only then are the CSV and the parts it superseded removed (the previous run's parts one run later, so
their readers can finish). `--destination ROOT` is short for
`--latest-dir ROOT/latest_predictions --history-dir ROOT/history`. On Azure ML v1, aml_v1.py publishes into
local folders and uploads them to the default datastore in the same order.

Before anything replaces the latest predictions, the quality gate judges them (batchpred_steps/quality.py):
its report (quality.json) and picture (distribution.svg) go into the run's history folder either way; a
failed gate leaves the latest folder as it was and fails the step naming the check and its figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from batchpred_steps.cli import run_step, step_parser
from batchpred_steps.gate import QualityGateFailed, run_gate
from batchpred_steps.handoff import METADATA_FILE, PREDICTION_COLUMN, read_metadata
from batchpred_steps.partitioned import (
    Part,
    copy_parts,
    fresh_parts_folder,
    input_parts,
    read_manifest,
    remove_superseded,
    write_json,
)
from batchpred_steps.publish import (
    CSV_NAME,
    LATEST_CSV_MAX_ROWS,
    LATEST_DIR,
    MANIFEST_NAME,
    Folders,
    build_manifest,
    history_path,
    publish,
    publish_plan,
    run_folder,
    write_predictions_csv,
)
from batchpred_steps.quality import GateSettings
from batchpred_steps.run_summary import record_summary, summary_of

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
    add_gate_arguments(parser)
    args = parser.parse_args(argv)
    if args.destination is not None and (args.latest_dir or args.history_dir):
        parser.error("give --destination or --latest-dir and --history-dir, not both")
    if args.destination is None and not (args.latest_dir and args.history_dir):
        parser.error("give --latest-dir and --history-dir (or --destination ROOT)")
    return args


def add_gate_arguments(parser: argparse.ArgumentParser) -> None:
    """The quality gate's thresholds (the pipeline passes the GATE_* settings) and the run's accept_drift."""
    default = GateSettings()
    gate = parser.add_argument_group("quality gate")
    gate.add_argument("--range-margin", type=float, default=default.range_margin,
                      help="plausible range: the training target's widened by this ratio")  # fmt: skip
    gate.add_argument("--drift-psi", type=float, default=default.drift_psi,
                      help="largest population stability index against the reference")  # fmt: skip
    gate.add_argument("--drift-min-rows", type=int, default=default.drift_min_rows,
                      help="rows this run and the previous latest need for the drift check")  # fmt: skip
    gate.add_argument("--missing-tolerance", type=float, default=default.missing_tolerance,
                      help="share of missing values a feature may have above training's")  # fmt: skip
    gate.add_argument("--accept-drift", type=_true_or_false, default=False,
                      help="true: publish despite the drift check (only that one)")  # fmt: skip


def gate_settings(args: argparse.Namespace) -> GateSettings:
    return GateSettings(
        range_margin=args.range_margin,
        drift_psi=args.drift_psi,
        drift_min_rows=args.drift_min_rows,
        missing_tolerance=args.missing_tolerance,
        accept_drift=args.accept_drift,
    )


def _true_or_false(text: str) -> bool:
    if text.strip().lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"must be true or false, not {text!r}")
    return text.strip().lower() == "true"


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
    gate: GateSettings | None = None,
    csv_max_rows: int = LATEST_CSV_MAX_ROWS,
) -> dict:
    """Publish the predictions in `source` to `folders` if the quality gate passes; return the manifest
    written. A failed gate writes the history copy and its report only, then raises QualityGateFailed."""
    gate = gate or GateSettings()
    now = now or datetime.now(UTC)
    metadata = read_metadata(source)
    previous = read_manifest(folders.latest / MANIFEST_NAME)  # its parts stay for their readers (one run)
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
    with tempfile.TemporaryDirectory(prefix="save_predictions.") as scratch:
        outcome = run_gate(
            source, folders.latest, CSV_NAME, metadata, gate,
            run_id=run_id, prediction_column=prediction_column, scratch=Path(scratch), now=now,
        )  # fmt: skip
        gated = Gated(
            passed=outcome.passed,
            fields=outcome.manifest_fields(history_path(place), gate.accept_drift),
            # the report beside the history copy, whatever the verdict
            report=[
                (folders.history / place / f.name, f) for f in (outcome.report_file, outcome.picture_file)
            ],
        )
        if rows <= csv_max_rows:
            manifest = save_csv(source, folders, place, prediction_column, facts, gated, Path(scratch))
        else:
            parts_folder = fresh_parts_folder(folders.latest, run_id, now)
            manifest = save_parts(parts, folders, place, parts_folder, facts, gated)
    if not outcome.passed:
        raise QualityGateFailed(outcome.verdict.line(), manifest)
    removed = remove_superseded(folders.latest, manifest, CSV_NAME, previous)
    log.info(
        "saved %d predictions of run %s (model %s version %s) to %s as %s%s",
        rows, run_id, metadata.get("model_name"), metadata.get("model_version"), folders.latest,
        manifest["format"], f"; removed the superseded {', '.join(removed)}" if removed else "",
    )  # fmt: skip
    return manifest


@dataclass(frozen=True)
class Gated:
    """What the quality gate decided for the writes: whether the latest folder may change, what the manifest
    says of the gate, and the report files to put beside the history copy ((target, source) pairs)."""

    passed: bool
    fields: dict
    report: list[tuple[Path, Path]]


def save_csv(
    source: Path,
    folders: Folders,
    place: str,
    prediction_column: str,
    facts: dict,
    gated: Gated,
    scratch: Path,
) -> dict:
    """The predictions as one CSV (streamed batch by batch): history copy and report, then (gate passed) the
    latest CSV, then the latest manifest."""
    csv_file = scratch / CSV_NAME
    write_predictions_csv(source, csv_file, prediction_column)
    manifest = build_manifest(**facts) | gated.fields
    manifest_file = scratch / MANIFEST_NAME
    manifest_file.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    plan = publish_plan(folders, place, csv_file, manifest_file)
    # on a failed gate nothing of the latest folder is touched
    publish(gated.report + [(t, f) for t, f in plan if gated.passed or t.parent != folders.latest])
    return manifest


def save_parts(
    parts: list[Part], folders: Folders, place: str, parts_folder: str, facts: dict, gated: Gated
) -> dict:
    """The predictions as Parquet parts in `parts_folder` (copied as files): the history copy (parts, report,
    then manifest), then (gate passed) the latest parts in that folder, which no manifest names yet, then the
    latest manifest, which switches readers to them."""
    history = folders.history / place
    files = copy_parts(parts, history, parts_folder)
    manifest = build_manifest(**facts, files=files, predictions_file=None) | gated.fields
    publish(gated.report)
    write_json(history / MANIFEST_NAME, manifest)
    if gated.passed:
        copy_parts(parts, folders.latest, parts_folder)
        write_json(folders.latest / MANIFEST_NAME, manifest)
    return manifest


def save_and_record(args: argparse.Namespace) -> dict:
    """save(), then record the run's summary (rows, folders, the gate's verdict) where the app reads it: the
    file the local runner names, or the job's run history (Azure ML v2); a failed gate's too."""
    try:
        manifest = save(
            Path(args.input),
            folders_of(args),
            args.run_id,
            args.pipeline_fingerprint,
            prediction_column=args.prediction_column,
            gate=gate_settings(args),
            csv_max_rows=args.csv_max_rows,
        )
    except QualityGateFailed as failed:
        record_summary(summary_of(failed.manifest, latest=None))
        raise
    record_summary(summary_of(manifest, latest=LATEST_DIR))
    return manifest


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_step(lambda: save_and_record(args), io_failure="cannot write the predictions")


if __name__ == "__main__":
    main()
