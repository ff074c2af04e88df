"""The emulated workspace executes what the real SDK published: a small pipeline of stdlib-only scripts,
published with the SDK (its snapshot uploaded and kept), runs step by step from that snapshot with the run's
parameters, per-run data folders, logs, failure and cancel. The project's own pipeline on this path is in
test_azureml_end_to_end.py."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import requests

from emulator.aml import FakeAzureML
from tests.fixtures_fakes import sdk_workspace

pytest.importorskip("azureml.pipeline.core")

RUN_TIMEOUT = 60.0

MAKE = """
import argparse, os, pathlib, sys
p = argparse.ArgumentParser(); p.add_argument("--count"); p.add_argument("--out")
a = p.parse_args()
pathlib.Path(a.out, "rows.txt").write_text("".join(f"row {i}\\n" for i in range(int(a.count))))
print("made", a.count, "rows; cwd files:", sorted(os.listdir(".")))
print("HOME", os.environ["HOME"], "RUN", os.environ.get("AZUREML_RUN_ID"), "COUNT", os.environ["AML_PARAMETER_count"])
"""
DOUBLE = """
import argparse, os, pathlib, sys, time
p = argparse.ArgumentParser(); p.add_argument("--in", dest="src"); p.add_argument("--mode"); p.add_argument("--out")
a = p.parse_args()
if a.mode in ("fail", "die"):
    print("warming up", file=sys.stderr)
    print("error: asked to fail", file=sys.stderr, flush=True)
    if a.mode == "die":
        os._exit(3)  # gone before any Python-level handler, the SDK's run context included
    sys.exit(2)
if a.mode == "sleep":
    print("sleeping", flush=True)
    time.sleep(600)
rows = pathlib.Path(a.src, "rows.txt").read_text().splitlines()
pathlib.Path(a.out, "rows.txt").write_text("".join(r + "\\n" for r in rows * 2))
print("VERSION 1")
"""
REPORT = """
import argparse, pathlib
p = argparse.ArgumentParser(); p.add_argument("--in", dest="src")
a = p.parse_args()
print("report:", len(pathlib.Path(a.src, "rows.txt").read_text().splitlines()), "rows")
"""


@pytest.fixture
def executing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fake that executes runs with this interpreter (the scripts need only the standard library), the
    SDK's workspace on it, and the toy step folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    with FakeAzureML() as fake:
        fake.enable_execution(step_python=Path(sys.executable), workdir=tmp_path / "aml")
        for name, value in fake.snapshot_uploads.environ().items():
            monkeypatch.setenv(name, value)
        folder = tmp_path / "steps"
        folder.mkdir()
        for name, text in {"make.py": MAKE, "double.py": DOUBLE, "report.py": REPORT}.items():
            (folder / name).write_text(text)
        yield fake, sdk_workspace(fake), folder


def _publish(workspace, folder: Path, version: str):
    from azureml.core import RunConfiguration
    from azureml.pipeline.core import Pipeline, PipelineData, PipelineParameter
    from azureml.pipeline.steps import PythonScriptStep

    count = PipelineParameter(name="count", default_value=2)
    mode = PipelineParameter(name="mode", default_value="ok")
    made, doubled = PipelineData("made", is_directory=True), PipelineData("doubled", is_directory=True)
    common = {"compute_target": ("cpu-cluster", "AmlCompute"), "source_directory": str(folder)}
    common["runconfig"] = RunConfiguration()
    steps = [
        PythonScriptStep(
            "make.py", name="make", arguments=["--count", count, "--out", made], outputs=[made], **common
        ),
        PythonScriptStep(
            "double.py",
            name="double",
            arguments=["--in", made, "--mode", mode, "--out", doubled],
            inputs=[made],
            outputs=[doubled],
            **common,
        ),
        PythonScriptStep("report.py", name="report", arguments=["--in", doubled], inputs=[doubled], **common),
    ]
    return Pipeline(workspace, steps=steps).publish(name="toy", version=version)


def _submit(fake: FakeAzureML, pipeline_id: str, parameters: dict[str, str]) -> str:
    response = requests.post(
        f"{fake.pipelines_url}/PipelineRuns/PipelineSubmit/{pipeline_id}",
        json={"ExperimentName": "toy", "ParameterAssignments": parameters},
        headers={"Authorization": "Bearer test-token"},
        timeout=10,
    )
    response.raise_for_status()
    return response.json()["Id"]


def _history(fake: FakeAzureML, run_id: str) -> dict:
    response = requests.get(
        f"{fake.history_url}/runs/{run_id}", headers={"Authorization": "Bearer test-token"}, timeout=10
    )
    response.raise_for_status()
    return response.json()


def test_a_run_executes_the_published_graph_from_the_uploaded_snapshot(executing):
    fake, workspace, folder = executing
    published = _publish(workspace, folder, "v1")
    # the snapshot's bytes were uploaded (through the capture proxy) and kept
    (snapshot_id,) = fake.snapshot_contents
    assert fake.snapshot_contents[snapshot_id]["double.py"] == DOUBLE.encode()

    run_id = _submit(fake, published.id, {"count": "3"})
    run = fake.wait_for_run(run_id, RUN_TIMEOUT)

    assert (run.status, run.history_status) == ("Finished", "Completed"), run.error_message
    assert [(s.name, s.status) for s in run.steps] == [
        ("make", "Completed"),
        ("double", "Completed"),
        ("report", "Completed"),
    ]
    assert "report: 6 rows" in fake.step_log(run_id, "report")
    make_log = fake.step_log(run_id, "make")
    assert (
        "made 3 rows" in make_log
        and "COUNT 3" in make_log
        and "'make.py'" in make_log
        and "'double.py'" in make_log
    )
    step = run.step("make")
    assert f"RUN {step.run_id}" in make_log or "RUN None" in make_log
    home = make_log.split("HOME ", 1)[1].split()[0]
    assert home != os.environ["HOME"] and Path(home).is_relative_to(fake.execution.workdir)
    # the SDK's run context around the script flushed the step's metrics when it ended well
    assert any(step.run_id in r.path for r in fake.calls("GET", "/metricsingest/wait"))
    dto = _history(fake, step.run_id)
    assert dto["parentRunId"] == run_id and dto["tags"]["azureml.nodeid"] == step.node_id
    assert dto["status"] == "Completed"

    # a second run with the defaults writes to folders of its own
    second = fake.wait_for_run(_submit(fake, published.id, {}), RUN_TIMEOUT)
    assert second.status == "Finished"
    assert "report: 4 rows" in fake.step_log(second.run_id, "report")
    assert "report: 6 rows" in fake.step_log(run_id, "report")


def test_a_failed_step_fails_the_run_with_the_error_the_sdk_posts_and_later_steps_never_start(executing):
    """The step's script runs under azureml-core's RunStatusContext (emulator/aml/v1_driver.py), which posts the
    exception that left it, here `sys.exit(2)`, as run history's error: what a real v1 step run shows."""
    fake, workspace, folder = executing
    published = _publish(workspace, folder, "v1")
    run_id = _submit(fake, published.id, {"mode": "fail"})
    run = fake.wait_for_run(run_id, RUN_TIMEOUT)

    assert (run.status, run.history_status) == ("Failed", "Failed")
    assert [(s.name, s.status) for s in run.steps] == [
        ("make", "Completed"),
        ("double", "Failed"),
        ("report", "NotStarted"),
    ]
    failed = _history(fake, run.step("double").run_id)
    assert failed["error"]["error"] == {
        "code": "UserError",
        "message": "User program failed with SystemExit: 2",
        "detailsUri": "https://aka.ms/azureml-run-troubleshooting",
    }
    (event,) = run.step("double").events
    assert event["name"] == "Microsoft.MachineLearning.Run.Error"
    assert event["data"]["RunId"] == run.step("double").run_id
    assert "warming up" in fake.step_log(run_id, "double")
    assert fake.step_log(run_id, "report") == ""
    assert "double" in _history(fake, run_id)["error"]["error"]["message"]


def test_a_step_that_dies_before_the_sdk_can_post_fails_with_its_last_error_line(executing):
    fake, workspace, folder = executing
    published = _publish(workspace, folder, "v1")
    run = fake.wait_for_run(_submit(fake, published.id, {"mode": "die"}), RUN_TIMEOUT)

    assert [(s.name, s.status) for s in run.steps][1] == ("double", "Failed")
    assert run.step("double").events == []
    assert _history(fake, run.step("double").run_id)["error"]["error"]["message"] == "asked to fail"


def test_cancel_stops_the_running_step_and_the_run_ends_canceled(executing):
    fake, workspace, folder = executing
    published = _publish(workspace, folder, "v1")
    run_id = _submit(fake, published.id, {"mode": "sleep"})
    deadline = time.monotonic() + RUN_TIMEOUT
    # polling a real child process until it has started (bounded), not waiting on behaviour under test
    while "sleeping" not in fake.step_log(run_id, "double"):
        assert time.monotonic() < deadline, "the sleeping step never started"
        time.sleep(0.05)
    process = fake._executions[run_id].process
    assert process is not None

    response = requests.delete(
        f"{fake.pipelines_url}/PipelineRuns/{run_id}/Execution",
        headers={"Authorization": "Bearer test-token"},
        timeout=10,
    )
    assert response.status_code == 200
    run = fake.wait_for_run(run_id, RUN_TIMEOUT)

    assert (run.status, run.history_status) == ("Canceled", "Canceled")
    assert [(s.name, s.status) for s in run.steps] == [
        ("make", "Completed"),
        ("double", "Canceled"),
        ("report", "Canceled"),
    ]
    assert process.poll() is not None  # the step's process is gone


def test_a_republished_changed_script_runs_from_the_new_snapshot(executing):
    fake, workspace, folder = executing
    first = _publish(workspace, folder, "v1")
    (folder / "double.py").write_text(DOUBLE.replace("VERSION 1", "VERSION 2"))
    second = _publish(workspace, folder, "v2")
    assert len(fake.snapshot_contents) == 2

    old = fake.wait_for_run(_submit(fake, first.id, {}), RUN_TIMEOUT)
    new = fake.wait_for_run(_submit(fake, second.id, {}), RUN_TIMEOUT)

    assert "VERSION 1" in fake.step_log(old.run_id, "double")
    assert "VERSION 2" in fake.step_log(new.run_id, "double")
    # the unchanged files of the second snapshot came from the first upload
    assert fake.snapshot_contents[list(fake.snapshot_contents)[1]]["make.py"] == MAKE.encode()
