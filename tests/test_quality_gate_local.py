"""The quality gate end to end on the local backend: a run the gate fails leaves the latest predictions byte for
byte and says why in its answer, the CLI's status and the timer's previous-run line; a healthy run after it
publishes; an emptied feature fails on missing values; a shifted feed fails on drift and publishes with
accept_drift=true, which the manifest and the run's tags record."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import joblib
import pandas as pd
import pytest

from pipeline_def.local.backend import LocalBackend
from pipeline_def.service import Service
from pipeline_def.settings import load_settings

pytestmark = pytest.mark.slow

CONSTANT_PRICE = 5_000_000.0


def service() -> Service:
    settings = load_settings()
    return Service(settings, LocalBackend(settings))


def run(parameters: dict | None = None):
    """A CLI-style run (waits for the end), as `python -m pipeline_def run` starts it."""
    return service().start_run(parameters or {"sample_size": 0}, trigger="cli", wait=True).run


def register_constant_model(registry: Path, price: float = CONSTANT_PRICE) -> int:
    """A model version that predicts `price` for every house: a scikit-learn DummyRegressor fitted on the
    baseline's features (so it loads wherever scikit-learn does), with the baseline's metadata.json and so its
    quality reference."""
    from sklearn.dummy import DummyRegressor

    first = registry / "1"
    metadata = json.loads((first / "metadata.json").read_text())
    features = pd.DataFrame([[0] * len(metadata["features"])], columns=metadata["features"])
    version = max(int(p.name) for p in registry.iterdir() if p.name.isdigit()) + 1
    folder = registry / str(version)
    folder.mkdir()
    joblib.dump(
        DummyRegressor(strategy="constant", constant=price).fit(features, [price]), folder / "model.joblib"
    )
    (folder / "metadata.json").write_text(json.dumps({**metadata, "version": version}))
    return version


def write_feed(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


def latest_bytes(work: Path) -> dict[str, bytes]:
    latest = work / "datastore" / "latest_predictions"
    return {p.name: p.read_bytes() for p in sorted(latest.iterdir())}


def test_a_model_far_outside_the_range_fails_at_the_gate_and_the_next_healthy_run_publishes(
    local_env: dict[str, str], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    from pipeline_def.__main__ import main
    from pipeline_def.app.timer import report_previous_run

    work = Path(local_env["LOCAL_WORK_DIR"])
    first = run()
    assert first.status == "completed", first.error
    before = latest_bytes(work)
    constant = register_constant_model(work / "models" / "HousePrices")

    failed = run({"sample_size": 0, "model_version": constant})

    assert failed.status == "failed" and failed.failed_step == "save_predictions"
    assert failed.error == (
        "step save_predictions failed: quality gate failed: prediction range: 2,930 of 2,930 above 1,132,500 "
        "(max seen in training 755,000) (also failed: prediction drift)"
    )
    assert latest_bytes(work) == before
    answer = service().get_run(failed.run_id).to_dict()["predictions"]
    (history,) = (work / "datastore" / "history").glob(f"*/{failed.run_id}")
    assert answer["rows"] == 2930 and answer["latest_path"] is None
    assert answer["history_path"] == f"history/{history.parent.name}/{failed.run_id}"
    assert answer["url"] == (history / "predictions.csv").resolve().as_uri()
    assert answer["gate"] == {
        "verdict": "failed",
        "report_path": f"{answer['history_path']}/quality.json",
        "failed_check": "prediction range",
        "report_url": (history / "quality.json").resolve().as_uri(),
    }
    assert json.loads((history / "quality.json").read_text())["failed_check"] == "prediction range"
    assert (history / "distribution.svg").read_text().startswith("<svg")

    assert main(["status", failed.run_id]) == 0
    printed = capsys.readouterr().out
    assert (
        "quality gate: failed at prediction range (the latest predictions were left as they were)" in printed
    )
    assert f"quality report: {(history / 'quality.json').resolve().as_uri()}" in printed

    with caplog.at_level(logging.ERROR, logger="pipeline_def.app.timer"):
        report_previous_run(service().get_run(failed.run_id))
    line = (
        f"previous scheduled run {failed.run_id} ended failed at step save_predictions: quality gate failed"
    )
    assert f"{line}: prediction range: 2,930 of 2,930 above 1,132,500" in caplog.text

    healthy = run({"sample_size": 0, "model_version": 1})  # the baseline again (the constant one is latest)

    assert healthy.status == "completed", healthy.error
    published = service().get_run(healthy.run_id).predictions
    assert published.latest_path == "latest_predictions" and published.gate.verdict == "passed"
    manifest = json.loads((work / "datastore" / "latest_predictions" / "manifest.json").read_text())
    assert manifest["run_id"] == healthy.run_id and manifest["quality_gate"]["verdict"] == "passed"


def test_a_feed_with_a_feature_column_emptied_fails_on_missing_values(
    local_env: dict[str, str], ames_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    feed = write_feed(tmp_path / "emptied.csv", pd.read_csv(ames_csv).assign(GrLivArea=None))
    monkeypatch.setenv("LOCAL_DATASET_PATH", str(feed))

    failed = run({"sample_size": 10})

    assert failed.status == "failed"
    assert failed.error.startswith(
        "step save_predictions failed: quality gate failed: missing values: GrLivArea 10 of 10 rows missing"
    )
    assert not (Path(local_env["LOCAL_WORK_DIR"]) / "datastore" / "latest_predictions").exists()
    assert service().get_run(failed.run_id).predictions.gate.failed_check == "missing values"


def test_a_shifted_feed_fails_on_drift_and_publishes_with_accept_drift_recorded_in_manifest_and_tags(
    local_env: dict[str, str], ames_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = Path(local_env["LOCAL_WORK_DIR"])
    assert run().status == "completed"
    ames = pd.read_csv(ames_csv)
    monkeypatch.setenv(
        "LOCAL_DATASET_PATH", str(write_feed(tmp_path / "best.csv", ames[ames["OverallQual"] >= 8]))
    )

    refused = run()
    accepted = run({"sample_size": 0, "accept_drift": True})

    assert refused.status == "failed"
    assert "quality gate failed: prediction drift: PSI" in refused.error
    assert "against the previous latest predictions" in refused.error
    assert accepted.status == "completed", accepted.error
    manifest = json.loads((work / "datastore" / "latest_predictions" / "manifest.json").read_text())
    assert (manifest["run_id"], manifest["rows"], manifest["accept_drift"]) == (accepted.run_id, 488, True)
    assert manifest["quality_gate"]["verdict"] == "passed-drift-accepted"
    record = json.loads((work / "runs" / accepted.run_id / "run.json").read_text())
    assert record["tags"]["batchpred_accept_drift"] == "true"
    assert record["summary"]["batchpred_accept_drift"] == "true"
    gate = service().get_run(accepted.run_id).predictions.gate
    assert gate.verdict == "passed-drift-accepted" and gate.failed_check is None
    shutil.rmtree(work / "datastore")  # nothing else to look at; keeps the tmp folder small
