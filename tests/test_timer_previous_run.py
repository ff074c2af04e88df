"""Each tick reports how the previous scheduled run ended, through the real timer function against the fakes:
failed or canceled at ERROR (run id, failing step, its error) from the logger `pipeline_def.app.timer` with
the prefix an alert queries, completed at INFO, still going at WARNING; found with one bounded run-history
query. Also: GET /api/runs/{id} of a failed run says which step failed and why, and a tick whose publish is
refused fails with a typed error."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from emulator.functions_host import LoadedApp
from pipeline_def.app.timer import PREVIOUS_RUN_PREFIX
from pipeline_def.errors import PublishFailed
from tests.fixtures_fakes import publish_in_fake
from tests.kql import alert_fires_on

TIMER_LOGGER = "pipeline_def.app.timer"
MODEL_ERROR = (
    "cannot get registered model HousePrices:99: ModelNotFound: Model with id HousePrices:99 not found"
)


def _recorded_by_azureml_core(message: str) -> str:
    """What run history holds for a step that left with StepFailed(message): azureml-core's own
    RunHistoryFacade._error_details_to_dictionary, which RunStatusContext calls for the exception."""
    from azureml._run_impl.run_history_facade import RunHistoryFacade

    from tests.fixtures_local import load_step_module

    step_failed = load_step_module("batchpred_steps.errors").StepFailed
    return RunHistoryFacade._error_details_to_dictionary(error_details=step_failed(message))["message"]


@pytest.fixture(scope="module")
def loaded() -> LoadedApp:
    return LoadedApp()


def _state(fake_aml, monkeypatch, version: str | None) -> SimpleNamespace:
    return publish_in_fake(fake_aml, monkeypatch, version, AML_RETRY_BUDGET_SECONDS="0")


@pytest.fixture
def aml(fake_aml, aml_env, monkeypatch) -> SimpleNamespace:
    return _state(fake_aml, monkeypatch, None)


def _run(aml, status: str, trigger: str = "timer", **changes):
    run = aml.fake.add_run(
        aml.pipeline["Id"], experiment=aml.settings.experiment_name, tags={"trigger": trigger}
    )
    aml.fake.set_run_status(run.run_id, status, **changes)
    return run


def _failed_at_predict(aml, trigger: str = "timer"):
    return _run(
        aml,
        "Failed",
        trigger,
        steps={"predict": "Failed", "save_predictions": "Canceled"},
        step_errors={"predict": _recorded_by_azureml_core(MODEL_ERROR)},
    )


def _reports(caplog) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == TIMER_LOGGER and r.getMessage().startswith(PREVIOUS_RUN_PREFIX)
    ]


def test_a_failed_previous_scheduled_run_is_an_error_naming_run_step_and_error(loaded, aml, caplog):
    failed = _failed_at_predict(aml)
    aml.fake.clear_requests()
    with caplog.at_level(logging.INFO):
        loaded.tick()
    (report,) = _reports(caplog)
    assert report.levelno == logging.ERROR
    assert (
        report.getMessage()
        == f"previous scheduled run {failed.run_id} ended failed at step predict: {MODEL_ERROR}"
    )
    assert len(aml.fake.runs) == 2  # the tick still submitted its own run
    # endpoint, default pipeline, one run-history query, the failed run's steps, the submit, the occurrence
    # check
    assert len(aml.fake.requests) == 6
    assert alert_fires_on(report)  # infra's alert query catches this very record


def test_a_canceled_previous_scheduled_run_is_an_error_too(loaded, aml, caplog):
    canceled = _run(aml, "Canceled")
    with caplog.at_level(logging.INFO):
        loaded.tick()
    (report,) = _reports(caplog)
    assert report.levelno == logging.ERROR
    assert report.getMessage().startswith(f"previous scheduled run {canceled.run_id} ended canceled")
    assert alert_fires_on(report)


def test_a_completed_previous_scheduled_run_is_info_and_costs_no_extra_call(loaded, aml, caplog):
    done = _run(aml, "Finished")
    aml.fake.clear_requests()
    with caplog.at_level(logging.INFO):
        loaded.tick()
    (report,) = _reports(caplog)
    assert report.levelno == logging.INFO
    assert report.getMessage().startswith(f"previous scheduled run {done.run_id} ended completed")
    assert len(aml.fake.requests) == 5  # as a steady tick: no call for the report
    assert not alert_fires_on(report)


def test_a_previous_scheduled_run_still_going_is_a_warning_and_the_tick_skips(loaded, aml, caplog):
    going = _run(aml, "Running")
    with caplog.at_level(logging.INFO):
        loaded.tick()
    (report,) = _reports(caplog)
    assert report.levelno == logging.WARNING
    assert report.getMessage() == f"previous scheduled run {going.run_id} is still running"
    assert list(aml.fake.runs) == [going.run_id]


def test_only_scheduled_runs_count_and_the_newest_one_is_reported(loaded, aml, caplog):
    older = _failed_at_predict(aml)
    newer = _run(aml, "Finished")
    _failed_at_predict(aml, trigger="http")  # newer still, but not scheduled
    with caplog.at_level(logging.INFO):
        loaded.tick()
    (report,) = _reports(caplog)
    assert newer.run_id in report.getMessage() and older.run_id not in report.getMessage()
    assert report.levelno == logging.INFO


def test_no_previous_scheduled_run_is_said_at_info(loaded, aml, caplog):
    with caplog.at_level(logging.INFO):
        loaded.tick()
    (report,) = _reports(caplog)
    assert report.levelno == logging.INFO and "none found" in report.getMessage()


def test_the_look_back_reads_a_bounded_page_whatever_the_history(loaded, aml):
    for _ in range(60):
        _run(aml, "Finished")
    aml.fake.clear_requests()
    loaded.tick()
    query, occurrence_check = aml.fake.calls("POST", "runs:query")
    assert query.json()["top"] == 1
    assert query.json()["orderby"] == "CreatedUtc desc"
    assert occurrence_check.json()["top"] == 5  # the occurrence's earliest runs, whatever the history


def test_the_status_of_a_failed_run_says_which_step_failed_and_why(aml):
    from emulator.functions_host import LoadedApp

    failed = _failed_at_predict(aml, trigger="http")
    body = LoadedApp().get_run(failed.run_id).json
    assert body["status"] == "failed"
    assert body["error"] == f"step predict failed: {MODEL_ERROR}"
    assert body["failed_step"] == "predict"
    predict = next(step for step in body["steps"] if step["name"] == "predict")
    assert predict == {"name": "predict", "status": "failed", "error": MODEL_ERROR}


@pytest.mark.slow
def test_a_tick_whose_publish_is_refused_fails_with_a_typed_error(
    loaded, fake_aml, aml_env, monkeypatch, caplog
):
    stale = _state(fake_aml, monkeypatch, "0123456789abcdef")
    stale.fake.inject_fault("POST", "/Pipelines/Create", status=403, times=None)
    with caplog.at_level(logging.ERROR), pytest.raises(PublishFailed) as raised:
        loaded.tick()
    assert raised.value.code == "azureml_publish_failed"
    (failure,) = [r for r in caplog.records if r.getMessage().startswith("timer tick failed")]
    assert "azureml_publish_failed" in failure.getMessage()
    assert "unexpected" not in failure.getMessage()
    assert stale.fake.runs == {}
