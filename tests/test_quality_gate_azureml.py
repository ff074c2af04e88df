"""The quality gate end to end on Azure ML with no Azure, once per backend (the test id names it): HTTP runs
through the Functions app against the emulated workspace, which runs the published steps (PIPELINE_BACKEND=azureml:
aml_v1.py in the steps' venv; PIPELINE_BACKEND=azureml-v2: the plain CLIs in the requirements-v2.txt venv). A model
version predicting a constant far outside the plausible range fails the run at save_predictions and leaves the
latest blobs byte for byte; a healthy run after it publishes; a feed with a feature emptied fails on missing values;
a shifted feed fails on drift and publishes with accept_drift=true. Each answer says where the predictions went."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator.azure import EmulatedAzure
from emulator.azurite import AzuriteBlob
from emulator.functions_host import LoadedApp
from tests.fixtures_azure_path import STEP_ENV_FIXTURE, emulated_workspace, finished_run, step_logs
from tests.fixtures_gate import (
    EMPTIED_FEATURE,
    ames_frame,
    constant_model_folder,
    latest_blobs,
    register_feed,
    start,
)

pytestmark = [pytest.mark.azure_path, pytest.mark.slow, pytest.mark.step_env]

STUDIO = "https://ml.azure.com/data/datastore/workspaceblobstore/edit?wsid="


@pytest.fixture(scope="module", params=["azureml", "azureml-v2"])
def azure(
    request: pytest.FixtureRequest,
    azurite: AzuriteBlob,
    trained_registry: Path,
    ames_csv: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[EmulatedAzure]:
    """An emulated Azure for the backend in the test id, as emulated_azure (azureml) or emulated_azure_v2
    (azureml-v2) gives it, with the pipeline published; one at a time, and only that backend's steps' venv."""
    from pipeline_def.service import get_service

    backend = request.param
    step_python = request.getfixturevalue(STEP_ENV_FIXTURE[backend])
    work = tmp_path_factory.mktemp(f"quality-gate-{backend}")
    with emulated_workspace(backend, work, azurite, step_python, trained_registry, ames_csv) as azure:
        get_service().publish()
        yield azure


def test_a_constant_model_fails_at_the_gate_leaving_latest_byte_identical_and_a_healthy_run_then_publishes(
    azure, trained_registry: Path, tmp_path: Path
) -> None:
    app = LoadedApp()
    healthy = finished_run(azure, app, start(app, {"sample_size": 0, "model_version": 1}))
    assert healthy["status"] == "completed", (healthy, step_logs(azure, healthy["run_id"]))
    predictions = healthy["predictions"]
    history = predictions["history_path"]
    assert (predictions["rows"], predictions["latest_path"]) == (2930, "latest_predictions")
    assert predictions["url"].startswith(STUDIO) and predictions["url"].endswith(
        "activeFilePath=latest_predictions"
    )
    assert predictions["gate"]["verdict"] == "passed"
    assert predictions["gate"]["report_path"] == f"{history}/quality.json"
    assert azure.read_datastore(f"{history}/quality.json") is not None
    assert azure.read_datastore(f"{history}/distribution.svg").startswith(b"<svg")
    before = latest_blobs(azure)
    constant = azure.register_model_version(constant_model_folder(trained_registry, tmp_path / "constant"))

    failed = finished_run(azure, app, start(app, {"sample_size": 0, "model_version": constant}))

    assert failed["status"] == "failed", (failed, step_logs(azure, failed["run_id"]))
    assert failed["error"].startswith(
        "step save_predictions failed: quality gate failed: prediction range: 2,930 of 2,930 above 1,132,500 "
        "(max seen in training 755,000)"
    )
    assert latest_blobs(azure) == before
    kept = failed["predictions"]
    assert (kept["rows"], kept["latest_path"]) == (2930, None)
    assert kept["gate"]["verdict"] == "failed" and kept["gate"]["failed_check"] == "prediction range"
    for name in ("predictions.csv", "manifest.json", "quality.json", "distribution.svg"):
        assert azure.read_datastore(f"{kept['history_path']}/{name}") is not None, name

    again = finished_run(azure, app, start(app, {"sample_size": 0, "model_version": 1}))

    assert again["status"] == "completed", (again, step_logs(azure, again["run_id"]))
    assert azure.latest_manifest()["run_id"] == again["run_id"]


def test_an_emptied_feature_fails_on_missing_values_and_a_shifted_feed_on_drift_unless_accept_drift(
    azure, ames_csv: Path, tmp_path: Path
) -> None:
    app = LoadedApp()
    ames = ames_frame(ames_csv)
    before = latest_blobs(azure)
    register_feed(azure, ames.assign(**{EMPTIED_FEATURE: None}), tmp_path, "emptied")

    emptied = finished_run(azure, app, start(app, {"sample_size": 10, "model_version": 1}))

    assert emptied["status"] == "failed", (emptied, step_logs(azure, emptied["run_id"]))
    assert "quality gate failed: missing values: GrLivArea 10 of 10 rows missing" in emptied["error"]
    assert latest_blobs(azure) == before
    register_feed(azure, ames[ames["OverallQual"] >= 8], tmp_path, "shifted")

    refused = finished_run(azure, app, start(app, {"sample_size": 0, "model_version": 1}))
    accepted_id = start(app, {"sample_size": 0, "model_version": 1, "accept_drift": True})
    accepted = finished_run(azure, app, accepted_id)

    assert refused["status"] == "failed", (refused, step_logs(azure, refused["run_id"]))
    assert "quality gate failed: prediction drift: PSI" in refused["error"]
    assert refused["predictions"]["gate"]["failed_check"] == "prediction drift"
    assert accepted["status"] == "completed", (accepted, step_logs(azure, accepted_id))
    assert accepted["predictions"]["gate"]["verdict"] == "passed-drift-accepted"
    manifest = azure.latest_manifest()
    assert (manifest["run_id"], manifest["rows"], manifest["accept_drift"]) == (accepted_id, 488, True)
    assert azure.fake.runs[accepted_id].tags["batchpred_accept_drift"] == "true"
    register_feed(azure, ames, tmp_path, "ames")  # the shipped data is the newest version again
