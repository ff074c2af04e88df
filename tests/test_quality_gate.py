"""The quality gate of save_predictions (step_scripts/batchpred_steps/quality.py, gate.py, report_svg.py): each
check on the shipped data and the baseline model's recorded reference, what a failed gate leaves behind (the
history copy and its report, the latest folder byte for byte), and that accept_drift lets only drift through."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import joblib
import pandas as pd
import pytest

from tests.fixtures_local import load_step_module

quality = load_step_module("batchpred_steps.quality")
handoff = load_step_module("batchpred_steps.handoff")
report_svg = load_step_module("batchpred_steps.report_svg")
save_step = load_step_module("save_predictions")
gate_module = load_step_module("batchpred_steps.gate")

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def baseline(trained_registry: Path) -> tuple[object, dict]:
    version = trained_registry / "HousePrices" / "1"
    return joblib.load(version / "model.joblib"), json.loads((version / "metadata.json").read_text())


@pytest.fixture(scope="module")
def scored(baseline, ames_csv: Path) -> pd.DataFrame:
    """Every shipped row without its price, as predict hands it on: with the baseline's prediction."""
    model, metadata = baseline
    rows = pd.read_csv(ames_csv).drop(columns=["SalePrice"])
    return rows.assign(PredictedSalePrice=model.predict(rows[metadata["features"]]))


def predictions_folder(folder: Path, frame: pd.DataFrame, metadata: dict) -> Path:
    handoff.write_frame(folder, frame)
    handoff.write_metadata(folder, {
        "dataset": "ames", "rows": len(frame), "fetched_rows": len(frame), "model_name": "HousePrices",
        "model_version": 1, "quality_reference": metadata["quality_reference"],
    })  # fmt: skip
    return folder


def latest_bytes(latest: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(latest.iterdir())}


def reference_of(metadata: dict):
    return quality.Reference.from_metadata(metadata)


# --- the baseline's reference ---------------------------------------------------------------------------


def test_the_baseline_model_records_the_gates_reference_and_no_identifier_is_a_feature(baseline) -> None:
    _, metadata = baseline
    reference = metadata["quality_reference"]

    assert not {"Id", "Order", "PID", "SalePrice"} & set(metadata["features"])
    assert (reference["target_min"], reference["target_max"]) == (12789.0, 755000.0)
    assert set(reference["missing_share"]) == set(metadata["features"])
    assert reference["missing_share"]["GrLivArea"] == 0.0 and 0.9 < reference["missing_share"]["PoolQC"] <= 1
    bins = reference["predictions"]
    assert len(bins["edges"]) == 9 and bins["edges"] == sorted(bins["edges"])
    assert bins["rows"] == reference["training_rows"] and sum(bins["shares"]) == pytest.approx(1.0, abs=1e-5)
    assert all(share == pytest.approx(0.1, abs=0.01) for share in bins["shares"])  # deciles


# --- the checks, on the shipped data ----------------------------------------------------------------------


def evaluate(frame: pd.DataFrame, metadata: dict, settings=None, previous=None, fetched: int | None = -1):
    settings = settings or quality.GateSettings()
    reference = reference_of(metadata)
    profile = quality.profile_batches([frame], "PredictedSalePrice", reference, settings.range_margin)
    return quality.evaluate(profile, reference, settings, len(frame) if fetched == -1 else fetched, previous)


def test_every_shipped_row_passes_every_check_with_room(scored: pd.DataFrame, baseline) -> None:
    verdict = evaluate(scored, baseline[1])

    assert verdict.word == "passed", verdict.line()
    drift = next(c for c in verdict.checks if c.name == quality.DRIFT)
    assert drift.figures["psi"] < 0.05  # against the training rows' predictions: threshold 0.25
    span = next(c for c in verdict.checks if c.name == quality.RANGE).figures
    assert span["max_predicted"] < span["high"] / 1.5 and span["min_predicted"] > span["low"] * 2


def test_a_ten_row_sample_passes_and_skips_drift(scored: pd.DataFrame, baseline) -> None:
    for seed in range(20):
        verdict = evaluate(scored.sample(10, random_state=seed), baseline[1])
        assert verdict.word == "passed", verdict.line()
        assert next(c for c in verdict.checks if c.name == quality.DRIFT).status == "skipped"


def test_a_constant_far_outside_the_range_fails_naming_counts_and_the_training_max(scored, baseline) -> None:
    verdict = evaluate(scored.assign(PredictedSalePrice=5e6), baseline[1])

    assert verdict.failed[0].name == quality.RANGE
    assert verdict.line().startswith(
        "quality gate failed: prediction range: 2,930 of 2,930 above 1,132,500 (max seen in training 755,000)"
    )


def test_missing_or_infinite_predictions_and_a_lost_row_fail(scored, baseline) -> None:
    broken = scored.head(400).copy()
    broken.loc[[3, 7], "PredictedSalePrice"] = [float("nan"), float("inf")]

    verdict = evaluate(broken, baseline[1], fetched=401)

    assert [c.name for c in verdict.failed] == [quality.COUNT, quality.FINITE]
    assert verdict.failed[0].message == "400 predictions for 401 input rows"
    assert verdict.failed[1].message == "2 of 400 missing, NaN or infinite"


def test_an_emptied_feature_fails_on_missing_values_even_in_ten_rows(scored, baseline) -> None:
    verdict = evaluate(scored.head(10).assign(GrLivArea=float("nan")), baseline[1])

    assert [c.name for c in verdict.failed] == [quality.MISSING]
    assert "GrLivArea 10 of 10 rows missing (100.0%, training 0.0% + tolerance 20.0%)" in verdict.line()


def test_the_missing_value_tolerance_is_a_share_above_trainings_tested_for_significance() -> None:
    assert not quality.missing_is_significant(7, 10, 0.2)  # 70% of 10 could be chance at a true 20%
    assert quality.missing_is_significant(8, 10, 0.2)
    assert not quality.missing_is_significant(650, 2930, 0.2)  # 22%: within sampling noise of 20%
    assert quality.missing_is_significant(700, 2930, 0.2)
    assert not quality.missing_is_significant(2930, 2930, 1.0)  # nothing is above "always missing"


def test_drift_against_the_previous_latest_fails_and_accept_drift_lets_it_and_only_it_through(
    scored, baseline
) -> None:
    metadata = baseline[1]
    reference = reference_of(metadata)
    shifted = scored[scored["OverallQual"] >= 8]  # 488 of the best houses: a feed of another market
    previous = quality.Distribution(
        "the previous latest predictions", len(scored), quality.shares(
            quality.profile_batches([scored], "PredictedSalePrice", reference, 0.5).bins))  # fmt: skip

    failed = evaluate(shifted, metadata, previous=previous)
    accepted = evaluate(shifted, metadata, quality.GateSettings(accept_drift=True), previous=previous)
    out_of_range = evaluate(shifted.assign(PredictedSalePrice=5e6), metadata,
                            quality.GateSettings(accept_drift=True), previous=previous)  # fmt: skip

    assert [c.name for c in failed.failed] == [quality.DRIFT]
    assert failed.failed[0].figures["psi"] > 1 and "against the previous latest predictions" in failed.line()
    assert (accepted.word, accepted.drift_accepted) == ("passed-drift-accepted", True)
    assert out_of_range.word == "failed" and out_of_range.failed[0].name == quality.RANGE


def test_a_previous_latest_of_too_few_rows_is_not_the_reference_the_training_rows_are(
    scored, baseline
) -> None:
    small = quality.Distribution("the previous latest predictions", 10, [1.0] + [0.0] * 9)

    verdict = evaluate(scored, baseline[1], previous=small)

    assert verdict.reference.source == "the training rows' predictions"
    assert verdict.word == "passed"


def test_psi_is_zero_for_one_distribution_and_finite_for_an_empty_bin() -> None:
    even = [0.1] * 10
    assert quality.psi(even, even) == 0
    # a twentieth of the rows moved from the cheapest bin to the dearest
    assert quality.psi([0.05, *even[1:-1], 0.15], even) == pytest.approx(
        0.05 * math.log(2) + 0.05 * math.log(1.5)
    )
    assert 0.5 < quality.psi([0.0, *even[1:-1], 0.2], even) < 1  # an emptied bin counts as 1e-4, not 0


def test_a_model_without_a_reference_fails_the_checks_that_need_one(scored) -> None:
    verdict = evaluate(scored.head(5), {})

    assert [c.name for c in verdict.failed] == [quality.RANGE, quality.MISSING]
    assert "records no quality_reference" in verdict.line()


# --- the save step with the gate --------------------------------------------------------------------------


def test_a_failed_gate_keeps_the_history_copy_and_report_and_leaves_the_latest_byte_identical(
    scored, baseline, tmp_path: Path, run_step
) -> None:
    metadata = baseline[1]
    root = tmp_path / "datastore"
    good = predictions_folder(tmp_path / "good", scored, metadata)
    save_step.save(good, save_step.Folders.under(root), "run_good", now=NOW)
    before = latest_bytes(root / "latest_predictions")
    bad = predictions_folder(tmp_path / "bad", scored.assign(PredictedSalePrice=5e6), metadata)
    summary = tmp_path / "summary.json"

    done = run_step("save_predictions.py", "--input", bad, "--destination", root, "--run-id", "run_bad",
                    env={"BATCHPRED_SUMMARY_FILE": str(summary)})  # fmt: skip

    assert done.returncode == 2
    error = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert error == [
        "error: quality gate failed: prediction range: 2,930 of 2,930 above 1,132,500 (max seen in training "
        "755,000) (also failed: prediction drift)"
    ]
    assert latest_bytes(root / "latest_predictions") == before
    (kept,) = root.glob("history/*/run_bad")
    assert sorted(p.name for p in kept.iterdir()) == [
        "distribution.svg", "manifest.json", "predictions.csv", "quality.json"]  # fmt: skip
    report = json.loads((kept / "quality.json").read_text())
    assert (report["verdict"], report["failed_check"]) == ("failed", "prediction range")
    assert [c["name"] for c in report["checks"]] == list(quality.CHECKS)
    assert report["distribution"]["reference"]["source"] == "the previous latest predictions (run run_good)"
    manifest = json.loads((kept / "manifest.json").read_text())
    assert manifest["quality_gate"]["verdict"] == "failed" and manifest["accept_drift"] is False
    tags = json.loads(summary.read_text())["tags"]
    assert tags == {
        "batchpred_rows": "2930",
        "batchpred_history_path": f"history/{kept.parent.name}/run_bad",
        "batchpred_gate": "failed",
        "batchpred_gate_report": f"history/{kept.parent.name}/run_bad/quality.json",
        "batchpred_gate_failed_check": "prediction range",
    }


def test_accept_drift_publishes_a_shifted_feed_and_the_manifest_says_so(
    scored, baseline, tmp_path: Path
) -> None:
    metadata = baseline[1]
    folders = save_step.Folders.under(tmp_path / "datastore")
    save_step.save(predictions_folder(tmp_path / "good", scored, metadata), folders, "run_good", now=NOW)
    shifted = predictions_folder(tmp_path / "shifted", scored[scored["OverallQual"] >= 8], metadata)

    with pytest.raises(gate_module.QualityGateFailed, match="prediction drift: PSI"):
        save_step.save(shifted, folders, "run_shifted", now=NOW)
    manifest = save_step.save(shifted, folders, "run_accepted", now=NOW,
                              gate=quality.GateSettings(accept_drift=True))  # fmt: skip

    latest = json.loads((folders.latest / "manifest.json").read_text())
    assert latest == manifest and latest["run_id"] == "run_accepted" and latest["accept_drift"] is True
    assert latest["quality_gate"]["verdict"] == "passed-drift-accepted"
    assert latest["quality_gate"]["drift_accepted"] is True


def test_the_picture_is_an_svg_with_a_bar_per_bin_and_series(scored, baseline, tmp_path: Path) -> None:
    metadata = baseline[1]
    folders = save_step.Folders.under(tmp_path / "datastore")
    save_step.save(predictions_folder(tmp_path / "good", scored, metadata), folders, "run_good", now=NOW)

    (picture,) = folders.history.glob("*/run_good/distribution.svg")
    root = ET.fromstring(picture.read_text())

    bars = [e for e in root.iter("{http://www.w3.org/2000/svg}rect") if e.find("{*}title") is not None]
    assert len(bars) == 2 * 10  # this run's and the training predictions' share in each decile bin
    assert report_svg.bin_labels([105_897.5, 122_881.1]) == ["< 106k", "106k-123k", "> 123k"]
