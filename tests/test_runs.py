"""RunInfo's JSON is the HTTP API's and the CLI's: each optional fact appears only when known, under the name
and in the place it has always had (these strings are what the untyped `extra` dict used to produce)."""

from __future__ import annotations

import json

import pytest

from pipeline_def.runs import RunInfo, StepStatus

BASE = (
    '{"run_id": "r1", "status": "%s", "aml_status": %s, "terminal": %s, '
    '"created_at": "2026-01-01T01:30:00Z", "ended_at": %s, "portal_url": %s'
)


def _run(status: str = "running", aml_status: str | None = "Running", **fields: object) -> RunInfo:
    ended = "2026-01-01T01:40:00Z" if status in ("completed", "failed", "canceled") else None
    return RunInfo(
        run_id="r1",
        status=status,
        aml_status=aml_status,
        created_at="2026-01-01T01:30:00Z",
        ended_at=ended,
        portal_url="https://ml.azure.com/runs/r1" if aml_status else None,
        **fields,  # type: ignore[arg-type]
    )


def _base(run: RunInfo) -> str:
    return BASE % (
        run.status,
        json.dumps(run.aml_status),
        json.dumps(run.terminal),
        json.dumps(run.ended_at),
        json.dumps(run.portal_url),
    )


@pytest.mark.parametrize(
    "field, value",
    [
        ("trigger", "timer"),
        ("submission_id", "3f1c0d4e"),
        ("aml_history_status", "CancelRequested"),
        ("failed_step", "predict"),
        ("predictions_path", "datastore/latest_predictions/predictions.csv"),
    ],
)
def test_each_optional_fact_is_one_key_at_the_end_only_when_set(field, value):
    run = _run(**{field: value})

    assert json.dumps(run.to_dict()) == _base(run) + f", {json.dumps(field)}: {json.dumps(value)}}}"
    assert json.dumps(_run().to_dict()) == _base(_run()) + "}"


def test_an_azure_ml_run_read_with_history_and_a_failed_step_keeps_its_old_key_order():
    steps = [StepStatus("fetch_data", "completed"), StepStatus("predict", "failed", "no model")]
    run = _run(
        "failed",
        "Failed",
        steps=steps,
        error="step predict failed: no model",
        trigger="http",
        submission_id="abc",
        aml_history_status="Failed",
        failed_step="predict",
    )

    assert json.dumps(run.to_dict()) == _base(run) + (
        ', "steps": [{"name": "fetch_data", "status": "completed"}, '
        '{"name": "predict", "status": "failed", "error": "no model"}], '
        '"error": "step predict failed: no model", '
        '"trigger": "http", "submission_id": "abc", "aml_history_status": "Failed", "failed_step": "predict"}'
    )


def test_a_completed_local_run_gives_its_predictions_path_before_its_trigger():
    run = _run("completed", None, steps=[], trigger="cli", predictions_path="/p.csv")

    assert json.dumps(run.to_dict()) == _base(run) + (
        ', "steps": [], "predictions_path": "/p.csv", "trigger": "cli"}'
    )


# --- a failed step's error in its own words --------------------------------------------------------------

STEP_MESSAGE = "model version 99 is not registered (available: 1)"


def _azureml_core_error(exception: BaseException) -> dict:
    """The error azureml-core's RunStatusContext records for an exception leaving a step's script (its own
    RunHistoryFacade._error_details_to_dictionary, called here for real)."""
    from azureml._run_impl.run_history_facade import RunHistoryFacade

    return RunHistoryFacade._error_details_to_dictionary(error_details=exception)


def test_a_v1_step_failed_error_reads_as_the_steps_own_message() -> None:
    from pipeline_def.runs import readable_step_error
    from tests.fixtures_local import load_step_module

    step_failed = load_step_module("batchpred_steps.errors").StepFailed
    recorded = _azureml_core_error(step_failed(STEP_MESSAGE))

    assert recorded["code"] == "UserError" and recorded["debug_type"] == "StepFailed"
    assert recorded["message"] == f"User program failed with StepFailed: {STEP_MESSAGE}"
    assert readable_step_error(recorded["message"]) == STEP_MESSAGE


@pytest.mark.parametrize(
    "exception",
    [SystemExit(2), ValueError("bad literal"), KeyError("SalePrice")],
    ids=lambda e: type(e).__name__,
)
def test_other_v1_errors_are_kept_as_azureml_core_words_them(exception: BaseException) -> None:
    from pipeline_def.runs import readable_step_error

    message = _azureml_core_error(exception)["message"]

    assert message.startswith(f"User program failed with {type(exception).__name__}: ")
    assert readable_step_error(message) == message


def test_a_v2_user_process_error_reads_as_the_last_error_line_of_the_quoted_stderr() -> None:
    from emulator.aml.v2_execution import node_error
    from pipeline_def.runs import readable_step_error

    stderr = ["2026-01-01 predict INFO loading", "error: an older line", f"error: {STEP_MESSAGE}"]
    message = node_error("python predict.py --model /mnt/m", 2, stderr, None)["error"]["message"]
    traceback_only = node_error(
        "python x.py", 1, ["Traceback (most recent call last):", "KeyError: 'a'"], None
    )

    assert message.startswith("Execution failed. User process 'python' exited with status code 2.")
    assert readable_step_error(message) == STEP_MESSAGE
    assert readable_step_error(traceback_only["error"]["message"]) == traceback_only["error"]["message"]
    assert readable_step_error("Step predict failed: something") == "Step predict failed: something"


def test_where_the_predictions_went_is_read_from_the_save_steps_tags_and_added_last_only_when_known():
    from pipeline_def.azureml.history_run import HistoryRun
    from pipeline_def.runs import predictions_of_steps, with_predictions

    dtos = [
        {"displayName": "fetch_data", "tags": {"azureml.nodeid": "a1"}},
        {
            "displayName": "save_predictions",
            "tags": {
                "azureml.nodeid": "c3",
                "batchpred_rows": "2930",
                "batchpred_history_path": "history/2026-01-01/r1",
                "batchpred_gate": "failed",
                "batchpred_gate_report": "history/2026-01-01/r1/quality.json",
                "batchpred_gate_failed_check": "prediction range",
            },
        },
    ]
    children = [HistoryRun.from_wire(dto) for dto in dtos]
    run = with_predictions(_run("failed", "Failed"), children, lambda path: f"https://studio/{path}")

    body = run.to_dict()
    assert list(body)[-1] == "predictions" and json.dumps(body).startswith(_base(run))
    assert body["predictions"] == {
        "rows": 2930,
        "history_path": "history/2026-01-01/r1",
        "latest_path": None,  # the gate failed: the latest predictions were left as they were
        "url": "https://studio/history/2026-01-01/r1",
        "gate": {
            "verdict": "failed",
            "report_path": "history/2026-01-01/r1/quality.json",
            "failed_check": "prediction range",
            "report_url": "https://studio/history/2026-01-01/r1/quality.json",
        },
    }
    assert predictions_of_steps(children[:1]) is None
    assert with_predictions(_run(), children[:1], str).to_dict() == _run().to_dict()


def test_a_parallel_steps_error_is_the_entry_scripts_own_line_in_its_logs() -> None:
    from pipeline_def.runs import is_parallel_exit, parallel_step_error, read_parallel_error

    assert is_parallel_exit("User program failed with SystemExit: 42")
    assert is_parallel_exit(
        "Execution failed. User process 'python' exited with status code 42. Please check"
    )
    assert not is_parallel_exit("User program failed with SystemExit: 2")
    assert not is_parallel_exit(None)
    chained = (
        "Traceback (most recent call last):\n  File \"x.py\", line 1\nKeyError: 'a'\n\n"
        "During handling of the above exception, another exception occurred:\n\n"
        'Traceback (most recent call last):\n  File "x.py", line 3\nValueError: cannot score part-00003\n\n'
        'Traceback (most recent call last):\n  File "x.py", line 3\nValueError: the second error\n'
    )
    assert parallel_step_error("logs/user/error.txt", chained) == "ValueError: cannot score part-00003"
    own = 'Traceback (most recent call last):\n  File "s.py"\nbatchpred_steps.errors.StepError: no model\n'
    assert parallel_step_error("logs/user/error.txt", own) == "no model"
    assert parallel_step_error("logs/user/error.txt", "no traceback here\n") is None
    assert parallel_step_error("logs/job_result.txt", "Job failed: too many errors\nsummary\n") == (
        "too many errors"
    )
    logs = {"logs/job_result.txt": "Job failed: the reason\n"}
    assert read_parallel_error(logs.get) == "the reason"
    assert read_parallel_error({}.get) is None
