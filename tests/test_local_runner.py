"""The local backend: steps.py turned into command lines, run records, detached runs, failures and cancel.
Runs are real: step scripts as processes on the shipped data, with the session's trained model."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from emulator.functions_host import wait_for
from pipeline_def.errors import RunNotFound
from pipeline_def.local.backend import LocalBackend
from pipeline_def.local.commands import step_command
from pipeline_def.local.records import new_run_id, read_record, write_record
from pipeline_def.runs import RUN_ID_PATTERN, STATUSES
from pipeline_def.service import Service
from pipeline_def.settings import PROJECT_ROOT, STEP_SCRIPTS_DIR, load_settings
from pipeline_def.steps import STEPS

STEP_NAMES = [step.name for step in STEPS]


@pytest.fixture
def backend(local_env: dict[str, str]) -> LocalBackend:
    return LocalBackend(load_settings())


def terminal(backend: LocalBackend, run_id: str):
    return wait_for(lambda: (run := backend.get_run(run_id)).terminal and run)


def active_runs(backend: LocalBackend) -> list[str]:
    return [run.run_id for run in backend.list_runs(100) if not run.terminal]


def latest_files(backend: LocalBackend) -> dict[str, bytes]:
    folder = backend.settings.local_work_dir / "datastore" / "latest_predictions"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# --- no process needed -----------------------------------------------------------------------------------


def test_run_ids_sort_by_start_time_and_are_valid_everywhere() -> None:
    run_id = new_run_id()

    assert RUN_ID_PATTERN.fullmatch(run_id)
    assert re.fullmatch(r"local_\d{8}T\d{6}_[0-9a-f]{6}", run_id)


def test_every_step_of_steps_py_becomes_a_command_line_with_no_placeholder_left(
    local_env: dict[str, str], tmp_path: Path
) -> None:
    settings = load_settings()
    run_dir = tmp_path / "run"

    commands = {
        step.name: step_command(step, settings, {"sample_size": "25"}, run_dir, "fp") for step in STEPS
    }

    assert list(commands) == STEP_NAMES
    for step in STEPS:
        script, *arguments = commands[step.name]
        if step.parallel is None:
            assert Path(script) == STEP_SCRIPTS_DIR / step.script and Path(script).is_file()
        else:  # the local parallel runtime runs the step's entry script
            assert Path(script) == PROJECT_ROOT / "pipeline_def" / "local" / "parallel.py"
            assert arguments[arguments.index("--entry-script") + 1] == str(
                STEP_SCRIPTS_DIR / step.parallel.entry_script
            )
        assert all(isinstance(a, str) for a in arguments)
    fetch, predict, save = commands["fetch_data"], commands["predict"], commands["save_predictions"]
    assert fetch[fetch.index("--dataset") + 1] == str(settings.local_dataset_path)
    assert fetch[fetch.index("--sample-size") + 1] == "25"
    assert fetch[fetch.index("--part-bytes") + 1] == str(4 * 1024 * 1024)  # LOCAL_MINI_BATCH_SIZE
    assert "--part-bytes" not in predict and "--part-bytes" not in save
    runtime, entry = predict[: predict.index("--")], predict[predict.index("--") + 1 :]
    assert runtime[runtime.index("--workers") + 1] == "0"  # one a core
    assert runtime[runtime.index("--max-try") + 1] == "3"
    assert runtime[runtime.index("--timeout") + 1] == "300"
    assert runtime[runtime.index("--error-threshold") + 1] == "0"
    assert entry[entry.index("--model-version") + 1] == "latest"  # the setting's default
    assert entry[entry.index("--model") + 1] == str(settings.local_work_dir / "models" / "HousePrices")
    assert "--input" not in entry and "--output" not in entry
    assert (
        fetch[fetch.index("--output") + 1]
        == runtime[runtime.index("--items") + 1]
        == str(run_dir / "data/new_data")
    )
    assert entry[entry.index("--predictions-dir") + 1] == str(run_dir / "data/predictions")
    datastore = settings.local_work_dir / "datastore"
    assert save[save.index("--latest-dir") + 1] == str(datastore / "latest_predictions")
    assert save[save.index("--history-dir") + 1] == str(datastore / "history")
    assert save[save.index("--run-id") + 1] == run_dir.name
    assert save[save.index("--pipeline-fingerprint") + 1] == "fp"


def test_importing_the_local_runner_imports_no_pandas_sklearn_or_azureml() -> None:
    code = (
        "import sys, pipeline_def.local.runner\n"
        "print([m for m in ('pandas', 'sklearn', 'pyarrow', 'azureml') if m in sys.modules])"
    )

    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )

    assert done.stdout.strip() == "[]"


def test_nothing_is_published_locally(backend: LocalBackend) -> None:
    assert backend.ensure_published().published is False


def test_unknown_or_malformed_run_ids_are_not_found(backend: LocalBackend) -> None:
    with pytest.raises(RunNotFound):
        backend.get_run("local_20260101T000000_000000")
    with pytest.raises(RunNotFound):
        backend.get_run("../../etc")
    with pytest.raises(RunNotFound):
        backend.cancel("local_20260101T000000_000000")
    assert backend.list_runs(5) == []
    assert active_runs(backend) == []


def test_a_run_record_in_the_json_shape_of_earlier_versions_reads_and_keeps_its_keys(
    backend: LocalBackend,
) -> None:
    step = {
        "name": "fetch_data",
        "command": ["fetch_data.py"],
        "status": "completed",
        "log": "logs/fetch_data.log",
        "started_at": "2026-01-01T00:00:01.000000Z",
        "ended_at": "2026-01-01T00:00:02.000000Z",
        "exit_code": 0,
        "error": None,
        "seconds": 1.0,
    }
    queued = {**step, "name": "predict", "status": "canceled", "exit_code": None, "note": "not run"}
    old = {
        "id": "local_20260101T000000_abcdef",
        "status": "canceled",
        "mode": "detached",
        "parameters": {"sample_size": "10", "model_version": "latest"},
        "tags": {"trigger": "timer"},
        "fingerprint": "fp",
        "settings": {"backend": "local"},
        "steps": [step, queued],
        "error": "canceled on request",
        "output_path": None,
        "created_at": "2026-01-01T00:00:00.000000Z",
        "started_at": "2026-01-01T00:00:00.500000Z",
        "ended_at": "2026-01-01T00:00:03.000000Z",
    }
    run_dir = backend.settings.local_work_dir / "runs" / old["id"]
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps(old))

    run = backend.get_run(old["id"])
    write_record(run_dir, read_record(run_dir))

    assert (run.status, run.error, run.trigger) == ("canceled", "canceled on request", "timer")
    assert [(s.name, s.status) for s in run.steps] == [("fetch_data", "completed"), ("predict", "canceled")]
    assert json.loads((run_dir / "run.json").read_text()) == old


# --- real runs -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_records_each_step_with_timings_and_its_log(backend: LocalBackend) -> None:
    run = backend.run(backend.published_target(), {"sample_size": "10"}, {"trigger": "test"})

    assert run.status == "completed", run.error
    assert [(s.name, s.status) for s in run.steps] == [(name, "completed") for name in STEP_NAMES]
    assert run.portal_url is None and run.created_at and run.ended_at
    record_path = backend.settings.local_work_dir / "runs" / run.run_id / "run.json"
    record = json.loads(record_path.read_text())
    assert record["id"] == run.run_id and record["status"] == "completed"
    assert record["parameters"]["sample_size"] == "10" and record["tags"] == {"trigger": "test"}
    for step in record["steps"]:
        assert step["started_at"] <= step["ended_at"] and step["exit_code"] == 0 and step["error"] is None
        assert (record_path.parent / step["log"]).stat().st_size > 0
    assert record["output_path"] == run.predictions_path
    manifest = json.loads((Path(run.predictions_path).parent / "manifest.json").read_text())
    assert manifest["run_id"] == run.run_id  # the run id reached the steps as --run-id
    assert manifest["model_name"] == "HousePrices" and manifest["model_version"] == 1


@pytest.mark.slow
def test_a_failing_step_fails_the_run_with_its_name_and_error_and_later_steps_do_not_run(
    local_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, ames_csv: Path, tmp_path: Path
) -> None:
    features = json.loads(
        (Path(local_env["LOCAL_WORK_DIR"]) / "models/HousePrices/1/metadata.json").read_text()
    )
    dropped = features["features"][0]
    pd.read_csv(ames_csv).drop(columns=[dropped]).to_csv(tmp_path / "lacking.csv", index=False)
    monkeypatch.setenv("LOCAL_DATASET_PATH", str(tmp_path / "lacking.csv"))
    backend = LocalBackend(load_settings())

    run = backend.run(backend.published_target(), {"sample_size": "10"}, {})

    assert run.status == "failed"
    statuses = {s.name: s.status for s in run.steps}
    assert statuses == {"fetch_data": "completed", "predict": "failed", "save_predictions": "canceled"}
    assert run.error.startswith("step predict failed: ") and dropped in run.error
    run_dir = backend.settings.local_work_dir / "runs" / run.run_id
    assert not (run_dir / "logs" / "save_predictions.log").exists()
    assert not (backend.settings.local_work_dir / "datastore").exists()
    assert run.predictions_path is None and "predictions_path" not in run.to_dict()


@pytest.mark.slow
def test_a_corrupt_model_fails_predict_clearly_and_keeps_the_previous_latest_predictions(
    backend: LocalBackend,
) -> None:
    first = backend.run(backend.published_target(), {"sample_size": "5"}, {})
    assert first.status == "completed", first.error
    before = latest_files(backend)
    model_file = backend.settings.local_work_dir / "models/HousePrices/1/model.joblib"
    model_file.write_bytes(model_file.read_bytes()[:200])

    run = backend.run(backend.published_target(), {"sample_size": "5"}, {})

    assert run.status == "failed"
    assert run.error.startswith("step predict failed: cannot load the model file"), run.error
    assert latest_files(backend) == before


@pytest.mark.slow
def test_a_submitted_run_goes_on_in_the_background_and_is_listed_newest_first(backend: LocalBackend) -> None:
    first = backend.submit(backend.published_target(), {"sample_size": "3"}, {"trigger": "test"})
    assert first.status in ("queued", "running")
    assert first.status in STATUSES and RUN_ID_PATTERN.fullmatch(first.run_id)
    assert terminal(backend, first.run_id).status == "completed"
    second = backend.submit(backend.published_target(), {"sample_size": "4"}, {"trigger": "test"})

    done = terminal(backend, second.run_id)

    assert done.status == "completed", done.error
    assert len(pd.read_csv(done.predictions_path)) == 4
    assert [r.run_id for r in backend.list_runs(10)] == [second.run_id, first.run_id]
    assert [r.run_id for r in backend.list_runs(1)] == [second.run_id]
    assert active_runs(backend) == []


@pytest.mark.slow
def test_cancel_terminates_a_running_run_and_later_steps_do_not_run(backend: LocalBackend) -> None:
    service = Service(backend.settings, backend)
    submitted = service.start_run({"sample_size": 0}, trigger="test").run
    running = wait_for(lambda: (run := backend.get_run(submitted.run_id)).status == "running" and run)
    assert active_runs(backend) == [submitted.run_id]

    service.cancel(submitted.run_id)

    assert backend.get_run(submitted.run_id).status in ("canceling", "canceled")
    done = terminal(backend, submitted.run_id)
    assert running.status == "running"
    assert done.status == "canceled"
    assert "canceled" in [s.status for s in done.steps]
    assert not (backend.settings.local_work_dir / "datastore" / "latest_predictions").exists()
    assert active_runs(backend) == []


@pytest.mark.slow
def test_a_run_whose_runner_died_is_reported_failed(backend: LocalBackend) -> None:
    submitted = backend.submit(backend.published_target(), {"sample_size": "0"}, {})
    run_dir = backend.settings.local_work_dir / "runs" / submitted.run_id
    wait_for(lambda: backend.get_run(submitted.run_id).status == "running")
    pid = json.loads((run_dir / "runner.pid").read_text())["pid"]
    os.killpg(pid, signal.SIGKILL)  # no chance to record anything, as after a crash or a reboot

    done = terminal(backend, submitted.run_id)

    assert done.status == "failed"
    assert "runner process ended before the run did" in done.error
    assert active_runs(backend) == []
