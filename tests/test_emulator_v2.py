"""The emulated workspace speaks Azure ML v2, pinned by the real azure-ai-ml: an MLClient aimed at the emulator
as a custom cloud (its resource manager is the emulator's URL) with tokens from the loopback managed-identity
endpoint registers an environment, a code asset (SAS upload into Azurite), command components and a pipeline
component, then submits pipeline jobs that the emulator runs node by node: toy stdlib scripts that copy and
transform a CSV, one that fails, one that sleeps until canceled. No name leaves 127.0.0.1."""

from __future__ import annotations

import csv
import io
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from emulator.aml import FakeAzureML
from emulator.identity import FakeManagedIdentity
from tests.fixtures_fakes import DEVSTORE_ACCOUNT, DEVSTORE_KEY, AzuriteBlob, ml_client

pytest.importorskip("azure.ai.ml")

RUN_TIMEOUT = 60.0
WS = "{WS}"
EXPERIMENT = "toy-v2"
OUTPUT_PATH = "toy_out"

PREPARE = """
import argparse, csv, os, pathlib, sys
p = argparse.ArgumentParser()
p.add_argument("--data"); p.add_argument("--rows", type=int); p.add_argument("--seed"); p.add_argument("--out")
a = p.parse_args()
if a.rows <= 0:
    print("reading", a.data, flush=True)
    print("Traceback (most recent call last):", file=sys.stderr)
    print(f"ValueError: rows must be positive, got {a.rows}", file=sys.stderr)
    sys.exit(2)
rows = list(csv.DictReader(open(a.data, newline="")))[: a.rows]
with open(pathlib.Path(a.out, "rows.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0])); w.writeheader(); w.writerows(rows)
print("prepared", len(rows), "rows; seed", a.seed, "python", os.path.realpath(sys.executable))
"""
SCORE = """
import argparse, csv, pathlib, sys, time
p = argparse.ArgumentParser()
p.add_argument("--table"); p.add_argument("--model"); p.add_argument("--label"); p.add_argument("--mode")
p.add_argument("--out")
a = p.parse_args()
if a.mode == "sleep":
    print("sleeping", flush=True)
    time.sleep(600)
weight = float(pathlib.Path(a.model, "weight.txt").read_text())
rows = list(csv.DictReader(open(pathlib.Path(a.table, "rows.csv"), newline="")))
with open(pathlib.Path(a.out, "scored.csv"), "w", newline="") as f:
    w = csv.writer(f); w.writerow(["Id", "score", "label"])
    for r in rows:
        w.writerow([r["Id"], float(r["Lot Area"]) * weight, a.label])
print("scored", len(rows))
"""
CSV_DATA = "Id,Lot Area\n1,100\n2,200\n3,300\n"


@pytest.fixture
def v2(
    azurite: AzuriteBlob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loopback_only
) -> Iterator[SimpleNamespace]:
    """The emulated workspace (executing jobs with this interpreter, storage in Azurite), the loopback
    identity endpoint issuing JWT-shaped tokens, and azure-ai-ml's MLClient aimed at both."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("AZUREML_CURRENT_CLOUD", "AzureCloud")  # restored after the test: MLClient sets it
    with (
        FakeAzureML(workspace_name=f"ws-v2-{tmp_path.name[-8:].lower().strip('_')}") as fake,
        FakeManagedIdentity(jwt=True) as identity,
    ):
        fake.use_blob_store(azurite.url, DEVSTORE_ACCOUNT, DEVSTORE_KEY)
        fake.enable_execution(step_python=Path(sys.executable), workdir=tmp_path / "aml")
        for name, value in identity.environ().items():
            monkeypatch.setenv(name, value)
        client = ml_client(fake)
        steps = tmp_path / "toy_steps"
        steps.mkdir()
        (steps / "prepare.py").write_text(PREPARE)
        (steps / "score.py").write_text(SCORE)
        data = tmp_path / "toy.csv"
        data.write_text(CSV_DATA)
        fake.register_data_v2("toy-data", data)
        fake.register_model("HousePrices", {"weight.txt": b"2.0"})
        yield SimpleNamespace(fake=fake, identity=identity, client=client, steps=steps, tmp=tmp_path)
    assert loopback_only == [], f"azure-ai-ml tried to reach {loopback_only}"


def _register(v2: SimpleNamespace):
    """Environment, the two command components (one code asset) and the pipeline component, through the SDK."""
    from azure.ai.ml import Input, Output, dsl
    from azure.ai.ml.entities import CommandComponent, Environment

    client = v2.client
    env = client.environments.create_or_update(
        Environment(
            name="toy-env",
            version="1",
            image="mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:20251130.v1",
            conda_file={"name": "toy", "dependencies": ["python=3.11"]},
        )
    )
    prepare_component = client.components.create_or_update(
        CommandComponent(
            name="toy_prepare",
            version="1",
            code=str(v2.steps),
            environment=env,
            command="python prepare.py --data ${{inputs.data}} --rows ${{inputs.rows}} "
            "$[[--seed ${{inputs.seed}}]] --out ${{outputs.out}}",
            inputs={
                "data": Input(type="uri_file"),
                "rows": Input(type="integer", default=10),
                "seed": Input(type="integer", optional=True),
            },
            outputs={"out": Output(type="uri_folder")},
        )
    )
    score_component = client.components.create_or_update(
        CommandComponent(
            name="toy_score",
            version="1",
            code=str(v2.steps),
            environment=env,
            command="python score.py --table ${{inputs.table}} --model ${{inputs.model}} "
            "--label ${{inputs.label}} --mode ${{inputs.mode}} --out ${{outputs.result}}",
            inputs={
                "table": Input(type="uri_folder"),
                "model": Input(type="custom_model"),
                "label": Input(type="string"),
                "mode": Input(type="string", default="ok"),
            },
            outputs={"result": Output(type="uri_folder")},
        )
    )

    def toy_pipeline(data, model, rows, label, mode="ok"):
        # the variables name the nodes: prepare, score
        prepare = prepare_component(data=data, rows=rows)
        score = score_component(table=prepare.outputs.out, model=model, label=label, mode=mode)
        return {"result": score.outputs.result}

    # real annotation objects (this module's annotations are strings, which dsl cannot read)
    toy_pipeline.__annotations__ = {
        "data": Input(type="uri_file"),
        "model": Input(type="custom_model"),
        "rows": Input(type="integer"),
        "label": Input(type="string"),
        "mode": Input(type="string"),
    }
    toy_pipeline = dsl.pipeline(name="toy_pipeline", version="1", display_name="toy pipeline")(toy_pipeline)
    pipeline = client.components.create_or_update(toy_pipeline)
    return SimpleNamespace(env=env, prepare=prepare_component, score=score_component, pipeline=pipeline)


def _job(registered, name: str, mode: str = "ok", rows: int = 2):
    from azure.ai.ml import Input, Output
    from azure.ai.ml.entities import PipelineJob

    job = PipelineJob(
        component=registered.pipeline,
        name=name,
        experiment_name=EXPERIMENT,
        display_name=f"toy {mode}",
        tags={"batchpred_pipeline": "toy", "trigger": "test"},
        inputs={
            "data": Input(type="uri_file", path="azureml:toy-data:1"),
            "model": Input(type="custom_model", path="azureml:HousePrices:1"),
            "rows": rows,
            "label": "first run",
            "mode": mode,
        },
        outputs={
            "result": Output(
                type="uri_folder",
                mode="rw_mount",
                path=f"azureml://datastores/${{{{default_datastore}}}}/paths/{OUTPUT_PATH}/",
            )
        },
    )
    job.settings.default_compute = "cpu-cluster"
    job.settings.continue_on_step_failure = False
    return job


def _history(fake: FakeAzureML, path: str, body: dict | None = None) -> dict:
    """A run-history call as the app makes it (plain REST, an ARM-audience token)."""
    from emulator.identity import make_jwt

    token = make_jwt("https://management.azure.com", 1, int(time.time()) + 600)
    url = f"{fake.history_url}{path}"
    headers = {"Authorization": f"Bearer {token}"}
    response = (
        requests.post(url, json=body, headers=headers, timeout=10)
        if body is not None
        else requests.get(url, headers=headers, timeout=10)
    )
    response.raise_for_status()
    return response.json()


def _wire(fake: FakeAzureML) -> set[tuple[str, str, str | None]]:
    """What the SDK sent, as (method, route, api-version), names and GUIDs replaced by placeholders."""
    found = set()
    for r in fake.calls():
        if (r.header("User-Agent") or "").startswith("python-requests"):
            continue  # this test's own run-history calls (the app's, not the SDK's)
        path = r.path.replace(fake.workspace_path, WS)
        path = re.sub(r"/codes/[0-9a-f-]{36}", "/codes/{code}", path)
        path = re.sub(r"/jobs/toy-[a-z-]+", "/jobs/{job}", path)
        path = re.sub(r"/runs/toy-[a-z-]+", "/runs/{job}", path)
        path = re.sub(r"/(jobs|runs)/[0-9a-f-]{36}", r"/\1/{node}", path)
        path = re.sub(r"/operationResults/[0-9a-f]+", "/operationResults/{operation}", path)
        found.add((r.method, path, r.api_version))
    return found


def _wait_for_log(fake: FakeAzureML, job: str, node: str, text: str) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT
    # polling a real child process until it has started (bounded), not waiting on behaviour under test
    while text not in fake.step_log(job, node):
        assert time.monotonic() < deadline, f"{node} never printed {text!r}"
        time.sleep(0.05)


# What azure-ai-ml 1.35.2 sends for register, submit, get, list children and cancel: the emulator's contract.
SDK_CONTRACT = {
    ("PUT", f"{WS}/environments/toy-env/versions/1", "2023-04-01-preview"),
    ("GET", f"{WS}/codes/{{code}}/versions", "2023-04-01"),
    ("POST", f"{WS}/codes/{{code}}/versions/1/startPendingUpload", "2023-04-01"),
    ("PUT", f"{WS}/codes/{{code}}/versions/1", "2023-04-01"),
    ("GET", f"{WS}/codes/{{code}}/versions/1", "2023-04-01"),
    ("PUT", f"{WS}/components/toy_prepare/versions/1", "2024-01-01-preview"),
    ("PUT", f"{WS}/components/toy_score/versions/1", "2024-01-01-preview"),
    ("PUT", f"{WS}/components/toy_pipeline/versions/1", "2024-01-01-preview"),
    ("GET", WS, "2024-10-01-preview"),
    ("PUT", f"{WS}/jobs/{{job}}", "2024-01-01-preview"),
    ("GET", f"{WS}/jobs/{{job}}", "2024-01-01-preview"),
    ("GET", "/discovery", None),
    ("GET", f"/history/v1.0{WS}/runs/{{job}}/children", "v1.0"),
    ("GET", f"{WS}/jobs/{{node}}", "2024-01-01-preview"),
    ("GET", f"/history/v1.0{WS}/runs/{{node}}", "v1.0"),
    ("POST", f"{WS}/jobs/{{job}}/cancel", "2023-04-01-preview"),
    ("GET", f"{WS}/operationResults/{{operation}}", "2023-04-01-preview"),
}


@pytest.mark.azure_path
def test_a_pipeline_job_runs_its_nodes_and_writes_the_bound_output_to_the_datastore(
    v2: SimpleNamespace,
) -> None:
    registered = _register(v2)
    submitted = v2.client.jobs.create_or_update(_job(registered, "toy-job-ok"))
    assert (submitted.name, submitted.experiment_name) == ("toy-job-ok", EXPERIMENT)
    run = v2.fake.wait_for_run("toy-job-ok", RUN_TIMEOUT)

    assert run.history_status == "Completed", [(s.name, s.status, s.error) for s in run.steps]
    assert run.transitions == ["NotStarted", "Running", "Completed"]
    blob = v2.fake.blob_store.container_client().download_blob(f"{OUTPUT_PATH}/scored.csv").readall()
    assert list(csv.reader(io.StringIO(blob.decode()))) == [
        ["Id", "score", "label"],
        ["1", "200.0", "first run"],
        ["2", "400.0", "first run"],
    ]
    prepare_log = v2.fake.step_log("toy-job-ok", "prepare")
    # the optional seed was left out ($[[...]] dropped); `python` is the configured steps' interpreter
    assert f"prepared 2 rows; seed None python {os.path.realpath(sys.executable)}" in prepare_log

    job = v2.client.jobs.get("toy-job-ok")
    assert (job.status, job.display_name, job.tags["batchpred_pipeline"]) == ("Completed", "toy ok", "toy")
    assert job.studio_url.startswith("https://ml.azure.com/runs/toy-job-ok")
    children = list(v2.client.jobs.list(parent_job_name="toy-job-ok"))
    assert [(c.display_name, c.status) for c in children] == [
        ("prepare", "Completed"),
        ("score", "Completed"),
    ]
    # run history as the app queries it: the root run by its tags, the nodes as children
    found = _history(
        v2.fake,
        f"/experiments/{EXPERIMENT}/runs:query",
        {"filter": 'Tags/batchpred_pipeline eq "toy" and ParentRunId eq null', "top": 5},
    )
    assert [(r["runId"], r["status"], r["displayName"]) for r in found["value"]] == [
        ("toy-job-ok", "Completed", "toy ok")
    ]
    dtos = _history(v2.fake, "/runs/toy-job-ok/children")["value"]
    assert [(d["displayName"], d["parentRunId"]) for d in dtos] == [
        ("prepare", "toy-job-ok"),
        ("score", "toy-job-ok"),
    ]
    assert all(d["properties"]["azureml.nodeid"] == d["tags"]["azureml.nodeid"] for d in dtos)
    log_artifact = f"ExperimentRun/dcid.{run.step('prepare').run_id}/user_logs/std_log.txt"
    assert log_artifact in v2.fake.artifacts
    # the second component reused the code asset the first one uploaded (found by its hash)
    assert len(v2.fake.code_uploads) == 1
    assert _wire(v2.fake) <= SDK_CONTRACT, _wire(v2.fake) - SDK_CONTRACT


@pytest.mark.azure_path
def test_a_failing_node_fails_the_job_with_the_runtime_error_and_the_next_node_never_starts(
    v2: SimpleNamespace,
) -> None:
    registered = _register(v2)
    v2.client.jobs.create_or_update(_job(registered, "toy-job-fail", rows=0))
    run = v2.fake.wait_for_run("toy-job-fail", RUN_TIMEOUT)

    assert [(s.name, s.status) for s in run.steps] == [("prepare", "Failed"), ("score", "NotStarted")]
    assert v2.client.jobs.get("toy-job-fail").status == "Failed"
    children = list(v2.client.jobs.list(parent_job_name="toy-job-fail"))
    assert [(c.display_name, c.status) for c in children] == [("prepare", "Failed"), ("score", "NotStarted")]
    failed = run.step("prepare")
    dto = _history(v2.fake, f"/runs/{failed.run_id}")
    error = dto["error"]["error"]
    assert error["code"] == "UserError"
    assert error["message"] == (
        "Execution failed. User process 'python' exited with status code 2. Please check log file "
        "'user_logs/std_log.txt' for error details. Error: Traceback (most recent call last):\n"
        "ValueError: rows must be positive, got 0"
    )
    assert "reading" in v2.fake.step_log("toy-job-fail", "prepare")  # stdout and stderr both in std_log
    root = _history(v2.fake, "/runs/toy-job-fail")
    assert root["status"] == "Failed"
    assert root["error"]["error"]["message"].startswith(
        "Pipeline has failed child jobs. Failed nodes: /prepare."
    )
    # a node is a pipeline child job: ARM answers it without properties, and the SDK reads it from run history
    child = v2.client.jobs.get(failed.run_id)
    assert (child.name, child.display_name, child.status) == (failed.run_id, "prepare", "Failed")
    assert (
        v2.fake.blob_store.container_client().get_blob_client(f"{OUTPUT_PATH}/scored.csv").exists() is False
    )


@pytest.mark.azure_path
def test_cancel_goes_cancel_requested_then_canceled_once_the_node_process_is_gone(
    v2: SimpleNamespace,
) -> None:
    registered = _register(v2)
    v2.client.jobs.create_or_update(_job(registered, "toy-job-sleep", mode="sleep"))
    _wait_for_log(v2.fake, "toy-job-sleep", "score", "sleeping")
    process = v2.fake._executions["toy-job-sleep"].process
    assert process is not None

    poller = v2.client.jobs.begin_cancel("toy-job-sleep")
    poller.result(timeout=RUN_TIMEOUT)
    run = v2.fake.wait_for_run("toy-job-sleep", RUN_TIMEOUT)

    assert run.transitions == ["NotStarted", "Running", "CancelRequested", "Canceled"]
    assert [(s.name, s.status) for s in run.steps] == [("prepare", "Completed"), ("score", "Canceled")]
    assert process.poll() is not None
    assert v2.client.jobs.get("toy-job-sleep").status == "Canceled"
    cancel = v2.fake.calls("POST", "/jobs/toy-job-sleep/cancel")[-1]
    assert cancel.status == 202
    assert _wire(v2.fake) <= SDK_CONTRACT, _wire(v2.fake) - SDK_CONTRACT


@pytest.mark.azure_path
def test_the_job_name_is_the_key_a_changed_reput_is_refused_and_starts_nothing(v2: SimpleNamespace) -> None:
    from azure.core.exceptions import HttpResponseError

    registered = _register(v2)
    v2.client.jobs.create_or_update(_job(registered, "toy-job-once"))
    first = v2.fake.wait_for_run("toy-job-once", RUN_TIMEOUT)
    runs_before = set(v2.fake.runs)

    with pytest.raises(HttpResponseError) as refused:
        v2.client.jobs.create_or_update(_job(registered, "toy-job-once", rows=3))
    assert refused.value.status_code == 400
    assert "A job with this name already exists" in str(refused.value)
    assert "the existing job's inputs cannot be changed" in str(refused.value)
    again = v2.client.jobs.create_or_update(_job(registered, "toy-job-once"))  # the same body: 200, same job
    assert again.status == "Completed"

    assert [r.status for r in v2.fake.calls("PUT", "/jobs/toy-job-once")] == [201, 400, 200]
    assert set(v2.fake.runs) == runs_before and v2.fake.runs["toy-job-once"] is first
    assert first.transitions == ["NotStarted", "Running", "Completed"]
