"""The quality gate as save_predictions runs it: read the predictions once more and the previous latest, judge
them (quality.py), write the report (quality.json) and its picture (distribution.svg) for the run's history
folder, and say what the manifest and the run's summary record. A failed gate is QualityGateFailed, raised
only after the history copy and the report are written."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batchpred_steps import quality
from batchpred_steps.errors import StepError
from batchpred_steps.handoff import iter_batches
from batchpred_steps.partitioned import read_manifest
from batchpred_steps.report_svg import distribution_svg

log = logging.getLogger("batchpred_steps.gate")

BATCH_ROWS = 50_000


@dataclass(frozen=True)
class GateOutcome:
    verdict: quality.Verdict
    report_file: Path
    picture_file: Path

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    def manifest_fields(self, history: str, accept_drift: bool) -> dict[str, Any]:
        """What the manifest says of the gate; `history` is the run's history folder (datastore path)."""
        failed = self.verdict.failed
        return {
            "accept_drift": accept_drift,
            "quality_gate": {
                "verdict": self.verdict.word,
                "failed_check": failed[0].name if failed else None,
                "drift_accepted": self.verdict.drift_accepted,
                "report": f"{history}/{quality.QUALITY_FILE}",
                "picture": f"{history}/{quality.PICTURE_FILE}",
            },
        }


class QualityGateFailed(StepError):
    """The gate failed: the message is the verdict's line; `manifest` is what the history copy holds."""

    def __init__(self, message: str, manifest: dict[str, Any]) -> None:
        super().__init__(message)
        self.manifest = manifest


def run_gate(
    source: Path,
    latest: Path,
    csv_name: str,
    metadata: dict[str, Any],
    settings: quality.GateSettings,
    *,
    run_id: str,
    prediction_column: str,
    scratch: Path,
    now: datetime,
) -> GateOutcome:
    """Judge the predictions in `source` (predict's output, whose metadata carries the model's reference and
    fetch_data's row count) against the previous latest CSV in `latest`; write quality.json and the SVG into
    `scratch`."""
    reference = quality.Reference.from_metadata(metadata)
    profile = quality.profile_batches(
        iter_batches(source, BATCH_ROWS), prediction_column, reference, settings.range_margin
    )
    previous = quality.previous_distribution(
        latest / csv_name, prediction_column, reference, _previous_run_id(latest)
    )
    fetched = metadata.get("fetched_rows")
    verdict = quality.evaluate(
        profile, reference, settings, fetched if isinstance(fetched, int) else None, previous
    )
    picture = scratch / quality.PICTURE_FILE
    compared = verdict.reference
    picture.write_text(
        distribution_svg(
            verdict.edges,
            verdict.this_run.shares,
            None if compared is None else compared.shares,
            title=f"run {run_id}: {verdict.line()}"[:160],
            this_run_label=f"this run ({verdict.this_run.rows:,} rows)",
            reference_label=None if compared is None else f"{compared.source} ({compared.rows:,} rows)",
        ),
        encoding="utf-8",
    )
    report_file = scratch / quality.QUALITY_FILE
    created = now.astimezone(UTC).isoformat().replace("+00:00", "Z")
    body = quality.report(
        verdict, settings, run_id=run_id, metadata=metadata, created_at=created, picture=quality.PICTURE_FILE
    )
    report_file.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    for check in verdict.checks:
        log.info("quality gate: %s %s: %s", check.name, check.status, check.message)
    return GateOutcome(verdict, report_file, picture)


def _previous_run_id(latest: Path) -> str | None:
    """The run that wrote the previous latest predictions, from the latest manifest (None if unreadable)."""
    manifest = read_manifest(latest / "manifest.json") or {}
    return str(manifest["run_id"]) if manifest.get("run_id") else None
