"""End to end on the Azure path with no Azure: the Functions app publishes the project's pipeline with the real
SDK and submits it over REST; the emulated workspace runs the three step scripts from the uploaded snapshot
in the steps' own venv, against the registered dataset and model, and they write to the default datastore
(Azurite). Everything is observed the way a user would: GET /api/runs/{id} and the datastore's blobs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emulator.azure import DATASET_NAME, MODEL_NAME
from emulator.functions_host import LoadedApp
from tests.fixtures_azure_path import (
    STEP_NAMES,
    copy_step_scripts,
    csv_rows,
    finished_run,
    model_predictions,
    step_artifact,
    step_logs,
    step_scripts_printing,
)

pytestmark = [pytest.mark.azure_path, pytest.mark.slow, pytest.mark.step_env]

AMES_ROWS = 2930


def _newest_run_id(app: LoadedApp) -> str:
    response = app.list_runs({"limit": "1"})
    assert response.status == 200, response
    (run,) = response.json["runs"]
    return run["run_id"]


def _publish(app: LoadedApp) -> None:
    """Make sure the endpoint is current (as `python -m pipeline_def publish` does)."""
    from pipeline_def.service import get_service

    get_service().publish()


def test_a_timer_tick_publishes_and_its_run_writes_sample_size_predictions_to_the_datastore(emulated_azure):
    from pipeline_def.fingerprint import compute_fingerprint
    from pipeline_def.service import get_service
    from pipeline_def.settings import STEP_SCRIPTS_DIR

    azure = emulated_azure
    app = LoadedApp()
    app.tick(past_due=False)
    run_id = _newest_run_id(app)
    body = finished_run(azure, app, run_id)

    assert body["status"] == "completed", (body, step_logs(azure, run_id))
    assert [(s["name"], s["status"]) for s in body["steps"]] == [(n, "completed") for n in STEP_NAMES]
    assert body["trigger"] == "timer"
    rows = csv_rows(azure.read_datastore("latest_predictions/predictions.csv"))
    assert len(rows) == 10  # PIPELINE_SAMPLE_SIZE's default, published as sample_size's default
    assert all(float(row["PredictedSalePrice"]) > 0 for row in rows) and "SalePrice" not in rows[0]
    manifest = azure.latest_manifest()
    latest_model = max(int(m["version"]) for m in azure.fake.models[MODEL_NAME])
    assert manifest["model_name"] == MODEL_NAME and manifest["model_version"] == latest_model
    assert manifest["dataset"] == DATASET_NAME and manifest["dataset_version"] == "1"
    assert manifest["run_id"] == run_id and manifest["rows"] == 10
    fingerprint = compute_fingerprint(get_service().settings, STEP_SCRIPTS_DIR)
    assert manifest["pipeline_fingerprint"] == fingerprint
    history = azure.read_datastore(f"{manifest['history_folder']}/manifest.json")
    assert json.loads(history)["run_id"] == run_id
    # the steps ran from the snapshot the SDK uploaded: the project's step scripts, byte for byte
    (pipeline,) = [p for p in azure.fake.pipelines.values() if p["Version"] == fingerprint]
    kept = azure.fake.snapshot_contents
    assert any(
        files.get("predict.py") == (STEP_SCRIPTS_DIR / "predict.py").read_bytes() for files in kept.values()
    )
    assert pipeline["EntityStatus"] == "Active"


def test_an_http_run_scores_every_row_with_a_pinned_model_version_on_two_nodes_of_two_processes(
    emulated_azure, trained_registry, ames_csv, monkeypatch
):
    """The parallel predict (a ParallelRunStep) at node_count 2 x 2 processes, over parts of the smallest
    mini-batch size, scores every row once, as the model scores the shipped file in one process."""
    from pipeline_def.service import reset_service

    azure = emulated_azure
    monkeypatch.setenv("PARALLEL_MINI_BATCH_SIZE", "64KB")  # fetch_data cuts parts this size: several
    monkeypatch.setenv("PARALLEL_PROCESS_COUNT_PER_NODE", "2")
    reset_service()
    app = LoadedApp()
    _publish(app)
    # a newer version exists, so only the pin makes the run use version 1
    azure.register_model_version(trained_registry / MODEL_NAME / "1")
    response = app.start_run({"parameters": {"sample_size": 0, "model_version": 1, "node_count": 2}})
    assert response.status == 202, response
    run_id = response.json["run_id"]
    body = finished_run(azure, app, run_id)

    assert body["status"] == "completed", (body, step_logs(azure, run_id))
    assert [s["status"] for s in body["steps"]] == ["completed"] * 3
    assert body["trigger"] == "http"
    rows = csv_rows(azure.read_datastore("latest_predictions/predictions.csv"))
    assert len(rows) == AMES_ROWS
    manifest = azure.latest_manifest()
    assert (manifest["run_id"], manifest["model_version"], manifest["rows"]) == (run_id, 1, AMES_ROWS)
    # The data path is faithful: every row read through the registered dataset (dataprep's reader, Azurite)
    # scores exactly as the same model scores the shipped file read by pandas.
    expected = model_predictions(trained_registry / MODEL_NAME / "1", ames_csv)
    got = {int(row["Order"]): float(row["PredictedSalePrice"]) for row in rows}
    assert len(got) == len(rows)  # every row once
    assert got.keys() == expected.keys()
    assert all(abs(got[order] - expected[order]) <= 1e-6 * expected[order] for order in expected)
    # the parallel run: the run parameter reached NodeCount, several mini-batches, workers on both nodes
    predict = azure.fake.runs[run_id].step("predict").run_id
    master = step_artifact(azure, predict, "logs/sys/master_role.txt")
    assert "2 node(s) x 2 process(es)" in master
    result = step_artifact(azure, predict, "logs/job_result.txt")
    assert result.startswith("Job succeeded.")
    batches = int(result.split(" mini batches")[0].rsplit(maxsplit=1)[-1])
    assert batches > 2, result
    nodes = {
        a.split("/logs/user/stdout/")[1].split("/")[0]
        for a in azure.fake.artifacts
        if predict in a and "/stdout/" in a
    }
    assert nodes == {"0", "1"}
    reset_service()


# Appended to a copy of score_parallel.py: the first try of the mini-batch of part-00001 fails AFTER it has
# written its predictions (a retry must overwrite them, not add a second copy), and the first try of part-00002
# outlives the invocation timeout (its worker is killed and the mini-batch retried). One marker file each, so
# only the first try of each is hurt, whichever node or process takes it.
FAULTS = """

_scored_run = run


def run(mini_batch):
    import os, pathlib, time

    names = [pathlib.Path(item).name for item in mini_batch]

    def first_try(kind):
        try:
            os.close(os.open(os.path.join(MARKS, kind), os.O_CREAT | os.O_EXCL))
            return True
        except FileExistsError:
            return False

    if "part-00002.parquet" in names and first_try("timeout"):
        time.sleep(300)
    results = _scored_run(mini_batch)
    if "part-00001.parquet" in names and first_try("fail"):
        raise RuntimeError("injected failure after scoring part-00001")
    return results
"""


def test_a_failed_and_a_timed_out_mini_batch_are_retried_and_every_row_is_still_scored_once(
    emulated_azure, trained_registry, ames_csv, monkeypatch, tmp_path: Path
):
    """The real entry script at 2 nodes x 2 processes with one run() failing after it wrote its part and one
    run() over the invocation timeout: both retried, and every row is in the latest predictions once, as the
    model scores the shipped file in one process (a retry overwrites its part: never a duplicate)."""
    from pipeline_def.azureml.backend import AzureMLBackend
    from pipeline_def.service import Service, get_service, reset_service

    azure = emulated_azure
    monkeypatch.setenv("PARALLEL_MINI_BATCH_SIZE", "64KB")
    monkeypatch.setenv("PARALLEL_RUN_INVOCATION_TIMEOUT", "8")
    reset_service()
    marks = tmp_path / "marks"
    marks.mkdir()
    scripts = copy_step_scripts(tmp_path / "step_scripts")
    entry = scripts / "score_parallel.py"
    entry.write_text(entry.read_text() + FAULTS.replace("MARKS", repr(str(marks))))
    settings = get_service().settings
    service = Service(settings, AzureMLBackend(settings, step_folder=scripts))
    service.publish()

    started = service.start_run({"sample_size": 0, "node_count": 2})
    body = finished_run(azure, LoadedApp(), started.run.run_id)

    assert body["status"] == "completed", (body, step_logs(azure, started.run.run_id))
    assert sorted(p.name for p in marks.iterdir()) == ["fail", "timeout"]  # both faults happened
    predict = azure.fake.runs[started.run.run_id].step("predict").run_id
    errors = step_artifact(azure, predict, "logs/user/error.txt")
    assert "RuntimeError: injected failure after scoring part-00001" in errors
    assert "within 8 s" in errors, errors
    assert step_artifact(azure, predict, "logs/sys/master_role.txt").count("retrying") == 2
    rows = csv_rows(azure.read_datastore("latest_predictions/predictions.csv"))
    got = {int(row["Order"]): float(row["PredictedSalePrice"]) for row in rows}
    assert len(rows) == len(got) == AMES_ROWS  # every row once
    expected = model_predictions(trained_registry / MODEL_NAME / "1", ames_csv)
    assert got.keys() == expected.keys()
    assert all(abs(got[order] - expected[order]) <= 1e-6 * expected[order] for order in expected)
    reset_service()


def test_a_model_version_that_does_not_exist_fails_the_run_at_predict_and_keeps_the_latest_whole(
    emulated_azure,
):
    azure = emulated_azure
    app = LoadedApp()
    _publish(app)
    # the previous latest predictions, as an earlier run left them
    container = azure.fake.blob_store.container_client()
    previous = {
        "latest_predictions/predictions.csv": b"PID,PredictedSalePrice\n1,100000.0\n",
        "latest_predictions/manifest.json": b'{"run_id": "earlier", "rows": 1}',
    }
    for name, data in previous.items():
        container.upload_blob(name, data, overwrite=True)

    response = app.start_run({"parameters": {"sample_size": 5, "model_version": 99}})
    assert response.status == 202, response
    run_id = response.json["run_id"]
    body = finished_run(azure, app, run_id)

    assert body["status"] == "failed"
    assert [(s["name"], s["status"]) for s in body["steps"]][:2] == [
        ("fetch_data", "completed"),
        ("predict", "failed"),
    ]
    assert body["steps"][2]["status"] not in ("running", "completed", "failed")
    # predict is a ParallelRunStep: its entry script's init() fails on every process, the parallel-run driver
    # exits 42, and azureml-core's run context records that exit as the step run's error (all run history says)
    predict = azure.fake.runs[run_id].step("predict")
    assert predict.error is not None and predict.error["code"] == "UserError", predict.error
    assert predict.error["message"] == "User program failed with SystemExit: 42"
    # the entry script's own error is in the step run's logs, as on Azure ML
    errors = step_artifact(azure, predict.run_id, "logs/user/error.txt")
    assert f"StepError: cannot get registered model {MODEL_NAME}:99" in errors
    assert f"Model with id {MODEL_NAME}:99 not found" in errors
    assert step_artifact(azure, predict.run_id, "logs/job_result.txt").startswith("Job failed: init() failed")
    assert f"ExperimentRun/dcid.{predict.run_id}/azureml-logs/70_driver_log.txt" in azure.fake.artifacts
    assert azure.fake.step_log(run_id, "save_predictions") == ""
    for name, data in previous.items():
        assert azure.read_datastore(name) == data
    # ... and GET /api/runs/{id} says which step failed and why, in the entry script's own words (read from
    # the step's logs/user/error.txt: run history only says exit 42)
    assert body["error"].startswith(f"step predict failed: cannot get registered model {MODEL_NAME}:99")
    assert body["steps"][1]["error"].startswith(f"cannot get registered model {MODEL_NAME}:99")


def test_a_changed_step_script_republishes_and_the_next_run_executes_the_new_snapshot(
    emulated_azure, tmp_path: Path
):
    from pipeline_def.azureml.backend import AzureMLBackend
    from pipeline_def.service import Service, get_service

    azure = emulated_azure
    app = LoadedApp()
    _publish(app)
    before = set(azure.fake.pipelines)
    marker = f"emulated-e2e marker {tmp_path.name}"
    script = step_scripts_printing(tmp_path / "step_scripts", marker)
    settings = get_service().settings
    service = Service(settings, AzureMLBackend(settings, step_folder=script.parent))

    outcome = service.tick(scheduled_for=None)

    assert outcome.publish.published is True
    (new_pipeline,) = set(azure.fake.pipelines) - before
    assert outcome.run is not None and azure.fake.runs[outcome.run.run_id].pipeline_id == new_pipeline
    body = finished_run(azure, app, outcome.run.run_id)
    assert body["status"] == "completed", (body, step_logs(azure, outcome.run.run_id))
    assert marker in azure.fake.step_log(outcome.run.run_id, "fetch_data")
    # the new module's snapshot is the edited folder, as uploaded
    snapshots = {m["Data"]["DataLocation"]["StorageId"] for m in azure.fake.modules.values()}
    assert any(azure.fake.snapshot_contents[s].get("fetch_data.py") == script.read_bytes() for s in snapshots)
