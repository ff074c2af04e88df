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
