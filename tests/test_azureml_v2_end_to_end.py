"""End to end on Azure ML v2 with no Azure (PIPELINE_BACKEND=azureml-v2): the Functions app registers the
environment, code asset and components over plain REST and submits pipeline jobs; the emulated workspace runs
the three step scripts from the uploaded code asset in the requirements-v2.txt venv (no azureml), with the CSV
data asset and the model downloaded, and save_predictions writes through the job's datastore outputs (Azurite).
Observed as a user would: GET /api/runs/{id} and the datastore's blobs. v1's end-to-end set, repeated on v2."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from emulator.azure import DATASET_NAME_V2, MODEL_NAME, EmulatedAzure
from emulator.functions_host import LoadedApp
from tests.fixtures_azure_path import (
    RUN_TIMEOUT,
    STEP_NAMES,
    csv_rows,
    finished_run,
    model_predictions,
    step_artifact,
    step_logs,
    step_scripts_printing,
)

pytestmark = [pytest.mark.azure_path, pytest.mark.slow, pytest.mark.step_env]

AMES_ROWS = 2930


def _service(folder: Path | None = None):
    from pipeline_def.azureml_v2.backend import AzureMLV2Backend
    from pipeline_def.service import Service, get_service
    from pipeline_def.settings import STEP_SCRIPTS_DIR

    settings = get_service().settings
    return Service(settings, AzureMLV2Backend(settings, step_folder=folder or STEP_SCRIPTS_DIR))


def _jobs(azure: EmulatedAzure) -> set[str]:
    return {name for name, run in azure.fake.runs.items() if hasattr(run, "job")}


def test_a_timer_tick_registers_and_its_job_writes_sample_size_predictions_to_the_datastore(
    emulated_azure_v2,
):
    from pipeline_def.azureml_v2.publisher import v2_fingerprint
    from pipeline_def.service import get_service

    azure = emulated_azure_v2
    app = LoadedApp()
    app.tick(past_due=False)
    (run_id,) = _jobs(azure)
    body = finished_run(azure, app, run_id)

    assert body["status"] == "completed", (body, step_logs(azure, run_id))
    assert [(s["name"], s["status"]) for s in body["steps"]] == [(n, "completed") for n in STEP_NAMES]
    assert body["trigger"] == "timer" and run_id.startswith("house-price-batch-predictions-timer-")
    rows = csv_rows(azure.read_datastore("latest_predictions/predictions.csv"))
    assert len(rows) == 10
    assert all(float(row["PredictedSalePrice"]) > 0 for row in rows) and "SalePrice" not in rows[0]
    manifest = azure.latest_manifest()
    assert manifest is not None
    assert (manifest["model_name"], str(manifest["model_version"])) == (MODEL_NAME, "1")
    assert (manifest["run_id"], manifest["rows"]) == (run_id, 10)
    assert (manifest["dataset"], manifest["dataset_version"]) == (DATASET_NAME_V2, "1")
    assert manifest["pipeline_fingerprint"] == v2_fingerprint(get_service().settings)
    job = azure.fake.v2_job(run_id)
    assert job.tags["batchpred_data"] == f"{DATASET_NAME_V2}:1"
    assert azure.read_datastore(f"{manifest['history_folder']}/manifest.json") is not None


def test_a_model_version_that_is_not_registered_answers_400_naming_it_and_submits_nothing(emulated_azure_v2):
    azure = emulated_azure_v2
    app = LoadedApp()
    _service().publish()
    before = _jobs(azure)

    response = app.start_run({"parameters": {"sample_size": 5, "model_version": 99}})

    assert (response.status, response.error_code) == (400, "invalid_request")
    assert f"model version 99 of {MODEL_NAME} is not registered" in response.json["error"]["message"]
    assert _jobs(azure) == before


def test_a_changed_step_script_reregisters_and_the_next_job_runs_the_new_code(emulated_azure_v2, tmp_path):
    azure = emulated_azure_v2
    app = LoadedApp()
    marker = f"emulated-v2 marker {tmp_path.name}"
    service = _service(step_scripts_printing(tmp_path / "step_scripts", marker).parent)
    _service().publish()
    before = _service().backend.published_target().version

    # HTTP never registers: a run now runs the registered (stale) pipeline
    started = service.start_run({"sample_size": 1})
    assert (started.version, started.current) == (before, False)
    azure.fake.wait_for_run(started.run.run_id, RUN_TIMEOUT)  # so the overlap policy lets the tick submit
    outcome = service.tick(scheduled_for=None)

    assert outcome.publish.published is True and outcome.publish.target.version != before
    assert outcome.run is not None
    body = finished_run(azure, app, outcome.run.run_id)
    assert body["status"] == "completed", (body, step_logs(azure, outcome.run.run_id))
    assert marker in azure.fake.step_log(outcome.run.run_id, "fetch_data")
    assert marker not in azure.fake.step_log(started.run.run_id, "fetch_data")


def test_repeated_and_concurrent_ticks_of_one_occurrence_start_one_job(emulated_azure_v2, monkeypatch):
    from pipeline_def.app.timer import run_tick
    from pipeline_def.service import reset_service

    azure = emulated_azure_v2
    monkeypatch.setenv("PIPELINE_OVERLAP", "allow")  # only the job name keeps a second job from starting
    reset_service()
    _service().publish()
    before = _jobs(azure)
    now = datetime(2031, 3, 4, 13, 31, 7, tzinfo=UTC)
    outcomes: list = []
    ticks = [threading.Thread(target=lambda: outcomes.append(run_tick(clock=lambda: now))) for _ in range(2)]
    for tick in ticks:
        tick.start()
    for tick in ticks:
        tick.join(60)
    outcomes.append(run_tick(clock=lambda: now))  # the same occurrence once more, later

    new = _jobs(azure) - before
    assert new == {"house-price-batch-predictions-timer-20310304t133000z"}
    assert {o.run.run_id for o in outcomes} == new and len(outcomes) == 3
    azure.fake.wait_for_run(next(iter(new)), RUN_TIMEOUT)
    reset_service()


def test_every_http_answer_comes_within_30_seconds_on_a_persistent_500(emulated_azure_v2, monkeypatch):
    from pipeline_def.service import reset_service

    azure = emulated_azure_v2
    app = LoadedApp()
    monkeypatch.setenv("AML_HTTP_BUDGET_SECONDS", "3")
    reset_service()
    azure.fake.inject_fault(None, r"/", status=500, times=None)
    try:
        for call in (
            lambda: app.start_run({}),
            lambda: app.list_runs(),
            lambda: app.get_run("some-job"),
            lambda: app.cancel_run("some-job"),
        ):
            started = time.monotonic()
            response = call()
            assert response.status == 502 and time.monotonic() - started < 30, response
    finally:
        azure.fake.clear_faults()
        reset_service()


def test_an_http_run_scores_every_row_with_a_pinned_model_version_on_two_nodes_of_two_processes(
    emulated_azure_v2, trained_registry, ames_csv, monkeypatch
):
    """The parallel predict (a parallel node) at node_count 2 x 2 processes over 64KB parts: every row once,
    as the model scores the shipped file in one process. Last in the module: its settings register a pipeline
    version of their own, which then is the workspace's most recently created one (what a stale HTTP run
    falls back to in the tests above)."""
    from pipeline_def.service import reset_service

    azure = emulated_azure_v2
    monkeypatch.setenv("PARALLEL_MINI_BATCH_SIZE", "64KB")
    monkeypatch.setenv("PARALLEL_PROCESS_COUNT_PER_NODE", "2")
    reset_service()
    app = LoadedApp()
    _service().publish()
    azure.register_model_version(trained_registry / MODEL_NAME / "1")  # a newer version: only the pin says 1

    response = app.start_run({"parameters": {"sample_size": 0, "model_version": 1, "node_count": 2}})

    assert response.status == 202, response
    run_id = response.json["run_id"]
    body = finished_run(azure, app, run_id)
    assert body["status"] == "completed", (body, step_logs(azure, run_id))
    assert body["trigger"] == "http"
    rows = csv_rows(azure.read_datastore("latest_predictions/predictions.csv"))
    assert len(rows) == AMES_ROWS
    manifest = azure.latest_manifest()
    assert (manifest["run_id"], str(manifest["model_version"]), manifest["rows"]) == (run_id, "1", AMES_ROWS)
    expected = model_predictions(trained_registry / MODEL_NAME / "1", ames_csv)
    got = {int(row["Order"]): float(row["PredictedSalePrice"]) for row in rows}
    assert len(got) == len(rows) and got.keys() == expected.keys()  # every row once
    assert all(abs(got[order] - expected[order]) <= 1e-6 * expected[order] for order in expected)
    predict = azure.fake.runs[run_id].step("predict").run_id
    master = step_artifact(azure, predict, "logs/sys/master_role.txt")
    assert "2 node(s) x 2 process(es)" in master
    result = step_artifact(azure, predict, "logs/job_result.txt")
    assert result.startswith("Job succeeded.") and int(result.split(" mini batches")[0].split()[-1]) > 2
    reset_service()
