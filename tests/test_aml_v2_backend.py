"""The azureml-v2 backend against the emulated workspace (its v2 routes over real HTTP, execution off: a job
stays NotStarted unless a test moves it): what it registers and in which order, what one tick and one HTTP run
cost in calls, the job name as the idempotency key, the 409/400 answers that submit nothing, reading, listing
and canceling jobs, and that none of it loads azureml or azure.ai.ml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from emulator.aml import FakeAzureML
from emulator.aml.v2_execution import node_error
from emulator.identity import FakeManagedIdentity
from pipeline_def.steps import STEPS
from tests.fixtures_fakes import DEVSTORE_ACCOUNT, DEVSTORE_KEY, AzuriteBlob

ROOT = Path(__file__).resolve().parent.parent
ENDPOINT = "house-price-batch-predictions"
OCCURRENCE = "2026-12-01T01:30:00Z"


def v2_environ(fake: FakeAzureML, identity: FakeManagedIdentity, **extra: str) -> dict[str, str]:
    """The app settings of the azureml-v2 backend aimed at the emulated workspace (ARM and data plane)."""
    return fake.app_settings("azureml-v2", AML_REQUEST_TIMEOUT_SECONDS="5", **{**identity.environ(), **extra})


@pytest.fixture
def v2(azurite: AzuriteBlob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """The emulated workspace (storage in Azurite, the data asset and a model registered), the identity
    endpoint, and this process's settings aimed at both."""
    from emulator.identity import OTHER_CREDENTIAL_VARIABLES
    from pipeline_def.service import reset_service

    for name in [
        *OTHER_CREDENTIAL_VARIABLES,
        *(n for n in os.environ if n.startswith(("AML_", "PIPELINE_"))),
    ]:
        monkeypatch.delenv(name, raising=False)
    with (
        FakeAzureML(workspace_name=f"ws-v2b-{tmp_path.name[-8:].lower().strip('_')}") as fake,
        FakeManagedIdentity() as identity,
    ):
        fake.use_blob_store(azurite.url, DEVSTORE_ACCOUNT, DEVSTORE_KEY)
        data = tmp_path / "ames.csv"
        data.write_text("Order,PID,SalePrice\n1,10,100\n2,20,200\n")
        fake.register_data_v2("AmesHousing", data)
        fake.register_model("HousePrices", {"model.joblib": b"m1", "metadata.json": b"{}"})
        fake.register_model("HousePrices", {"model.joblib": b"m2", "metadata.json": b"{}"})
        for name, value in v2_environ(fake, identity, HOME=str(tmp_path)).items():
            monkeypatch.setenv(name, value)
        reset_service()
        yield SimpleNamespace(fake=fake, identity=identity, tmp=tmp_path)
        reset_service()


def service(**changes: str):
    """A Service on the v2 backend from this process's settings (plus `changes`)."""
    from pipeline_def.azureml_v2.backend import AzureMLV2Backend
    from pipeline_def.service import Service
    from pipeline_def.settings import load_settings

    settings = load_settings({**os.environ, **changes})
    return Service(settings, AzureMLV2Backend(settings))


def _arm_writes(fake: FakeAzureML) -> list[str]:
    """The ARM PUTs and POSTs, in order, as `METHOD kind/name` (versions and GUIDs left out)."""
    found = []
    for r in fake.calls():
        if r.method in ("PUT", "POST") and r.path.startswith(fake.workspace_path):
            rest = r.path.split(fake.workspace_path, 1)[1].split("/")
            found.append(f"{r.method} {rest[1]}" + (f"/{rest[2]}" if rest[1] != "codes" else ""))
    return found


def test_a_first_tick_registers_everything_once_the_pipeline_component_last_then_submits(v2) -> None:
    from pipeline_def.azureml_v2.code import code_files, content_hash
    from pipeline_def.settings import STEP_SCRIPTS_DIR

    outcome = service().tick(scheduled_for=OCCURRENCE)

    assert outcome.publish.published is True and outcome.publish.target.current is True
    fingerprint = outcome.publish.target.version
    slug = ENDPOINT.replace("-", "_")
    assert _arm_writes(v2.fake) == [
        f"PUT environments/{ENDPOINT}-steps",
        "POST codes",  # startPendingUpload
        "PUT codes",
        f"PUT components/{slug}__fetch_data",
        f"PUT components/{slug}__predict",
        f"PUT components/{slug}__save_predictions",
        f"PUT components/{slug}",  # the pipeline component last: its existence says "published"
        f"PUT jobs/{ENDPOINT}-timer-20261201t013000z",
    ]
    # every PUT of a version was preceded by a GET of it
    requests = v2.fake.calls()
    for index, put in enumerate(requests):
        if put.method == "PUT" and "/versions/" in put.path:
            looked_up = (put.path, put.path.rsplit("/", 1)[0])  # the version, or code versions by hash
            assert any(r.method == "GET" and r.path in looked_up for r in requests[:index]), put.path
    # the code asset: the step scripts as azure-ai-ml would upload and hash them, block blobs under the SAS
    (code,) = [v for versions in v2.fake.v2_assets["codes"].values() for v in versions.values()]
    files = code_files(STEP_SCRIPTS_DIR)
    assert code["properties"]["properties"]["hash_sha256"] == content_hash(files)
    assert code["properties"]["codeUri"].endswith("/step_scripts")
    container = v2.fake.blob_store.container_client(v2.fake.code_uploads[0])
    assert sorted(b.name for b in container.list_blobs()) == [f"step_scripts/{f.name}" for f in files]
    first = container.get_blob_client(f"step_scripts/{files[0].name}").get_blob_properties()
    assert first.metadata["upload_status"] == "completed"
    assert "__pycache__" not in " ".join(f.name for f in files)

    job = v2.fake.v2_job(f"{ENDPOINT}-timer-20261201t013000z")
    assert job.tags == {
        "trigger": "timer",
        "past_due": "false",
        "scheduled_for": OCCURRENCE,
        "batchpred_pipeline": ENDPOINT,
        "batchpred_fingerprint": fingerprint,
        "batchpred_model": "HousePrices:2",
        "batchpred_data": "AmesHousing:1",
    }
    inputs = job.job["properties"]["inputs"]
    assert inputs["model"]["uri"].endswith("/models/HousePrices/versions/2")
    assert inputs["dataset"]["uri"].endswith("/data/AmesHousing/versions/1")
    assert inputs["run_id"]["value"] == job.run_id and "sample_size" not in inputs
    # the job PUT carried the ML-audience token (the emulator refuses it otherwise)
    assert v2.fake.calls("PUT", "/jobs/")[0].header("x-azureml-token")


def test_a_steady_tick_costs_five_calls_and_registers_nothing(v2) -> None:
    service().publish()
    v2.fake.clear_requests()

    outcome = service().tick(scheduled_for=OCCURRENCE)

    assert outcome.action == "submitted" and outcome.publish.published is False
    calls = [(r.method, r.path.rsplit("/", 2)[-2:]) for r in v2.fake.calls()]
    assert len(calls) <= 5, calls
    assert [r.method for r in v2.fake.calls() if r.method in ("PUT", "POST")] == ["POST", "PUT"]  # query, job


def test_two_ticks_of_one_occurrence_on_two_instances_start_one_job(v2) -> None:
    service().publish()
    # overlap allow: only the job name keeps the second tick from starting a second job
    instances = [service(PIPELINE_OVERLAP="allow") for _ in range(2)]
    outcomes: list = []
    threads = [
        threading.Thread(target=lambda s=s: outcomes.append(s.tick(scheduled_for=OCCURRENCE)))
        for s in instances
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    again = service(PIPELINE_OVERLAP="allow").tick(scheduled_for=OCCURRENCE)

    assert len(outcomes) == 2
    assert sorted(o.action for o in [*outcomes, again]) == ["joined", "joined", "submitted"]
    assert all(o.canceled_duplicate is None for o in [*outcomes, again])  # nothing to cancel on v2
    run_ids = {o.run.run_id for o in [*outcomes, again]}
    assert run_ids == {f"{ENDPOINT}-timer-20261201t013000z"}
    assert [r for r in v2.fake.runs] == [f"{ENDPOINT}-timer-20261201t013000z"]
    # a past-due tick of the same occurrence is a run of its own
    late = service(PIPELINE_OVERLAP="allow").tick(scheduled_for=OCCURRENCE, past_due=True)
    assert late.run.run_id.startswith(f"{ENDPOINT}-timer-20261201t013000z-") and len(v2.fake.runs) == 2


def test_a_submit_whose_answer_was_lost_is_retried_under_the_same_name_and_starts_one_job(v2) -> None:
    service().publish()
    v2.fake.inject_fault("PUT", r"/jobs/", status=500, after_handling=True, times=1)

    started = service().start_run({"sample_size": 3})

    puts = v2.fake.calls("PUT", "/jobs/")
    assert [r.status for r in puts] == [500, 200]
    assert {r.path for r in puts} == {puts[0].path}
    assert list(v2.fake.runs) == [started.run.run_id]
    assert v2.fake.v2_job(started.run.run_id).job["properties"]["inputs"]["sample_size"]["value"] == "3"


def test_an_http_run_of_a_stale_pipeline_costs_five_calls_and_never_registers(v2) -> None:
    from pipeline_def.app import http_api

    service().publish()
    published = next(iter(v2.fake.v2_assets["components"][ENDPOINT.replace("-", "_")]))
    v2.fake.clear_requests()

    response = http_api.respond(http_api.start_run, "https://app/api/runs", json.dumps({}).encode())

    assert response.status == 202, response.body
    assert (response.body["pipeline_version"], response.body["current"]) == (published, True)
    assert len(v2.fake.calls()) <= 4
    # a changed sample size default changes the fingerprint: the route runs the registered (stale) version
    os.environ["PIPELINE_SAMPLE_SIZE"] = "7"
    from pipeline_def.service import reset_service

    reset_service()
    v2.fake.clear_requests()
    response = http_api.respond(http_api.start_run, "https://app/api/runs", b"")
    assert response.status == 202, response.body
    assert (response.body["pipeline_version"], response.body["current"]) == (published, False)
    assert len(v2.fake.calls()) <= 5
    assert [r.method for r in v2.fake.calls() if r.method == "PUT"] == ["PUT"]  # the job only


def test_with_nothing_registered_an_http_run_is_409_not_published_and_submits_nothing(v2) -> None:
    from pipeline_def.app import http_api

    response = http_api.respond(http_api.start_run, "https://app/api/runs", b"")

    assert (response.status, response.body["error"]["code"]) == (409, "not_published")
    assert v2.fake.calls("PUT") == [] and v2.fake.runs == {}


def test_a_model_version_that_is_not_registered_is_400_naming_it_and_submits_nothing(v2) -> None:
    from pipeline_def.app import http_api

    service().publish()
    body = json.dumps({"parameters": {"model_version": 99}}).encode()

    response = http_api.respond(http_api.start_run, "https://app/api/runs", body)

    assert (response.status, response.body["error"]["code"]) == (400, "invalid_request")
    assert "model version 99 of HousePrices is not registered" in response.body["error"]["message"]
    assert v2.fake.calls("PUT", "/jobs/") == [] and v2.fake.runs == {}


def test_get_run_reports_the_job_its_steps_and_the_failed_steps_own_error_line(v2) -> None:
    svc = service()
    svc.publish()
    run_id = svc.start_run({}).run.run_id
    fake = v2.fake
    v2.fake.clear_requests()

    queued = svc.get_run(run_id)
    assert (queued.status, queued.aml_status, queued.trigger) == ("queued", "NotStarted", "http")
    assert [(s.name, s.status) for s in queued.steps] == [(s.name, "queued") for s in STEPS]
    assert len(fake.calls()) == 3  # job, run history's run, its children

    with fake.lock:
        run = fake.v2_job(run_id)
        run.history_status = "Failed"
        fake._set_step(run.step("fetch_data"), "Completed", fake.clock())
        run.step("predict").error = node_error(
            "python predict.py",
            2,
            ["Traceback (most recent call last):", "error: cannot load model: bad pickle"],
            None,
        )
        fake._set_step(run.step("predict"), "Failed", fake.clock())
    failed = svc.get_run(run_id)
    assert failed.status == "failed" and failed.failed_step == "predict"
    assert failed.error == "step predict failed: cannot load model: bad pickle"
    assert [run.run_id for run in svc.list_runs(5)] == [run_id]
    with pytest.raises(Exception) as missing:
        svc.get_run("no-such-job")
    assert type(missing.value).__name__ == "RunNotFound"
    child = run.step("predict").run_id
    with pytest.raises(Exception) as node:
        svc.get_run(child)  # a node is not a run of the app
    assert type(node.value).__name__ == "RunNotFound"


@pytest.mark.parametrize("body", [["not", "a", "job"], {"properties": {"status": "Running"}}, {"name": 7}])
def test_a_job_of_the_wrong_shape_is_a_service_error_not_a_crash(v2, body) -> None:
    svc = service()
    svc.publish()
    run_id = svc.start_run({}).run.run_id
    v2.fake.inject_fault("GET", rf"/jobs/{run_id}$", status=200, body=body)
    with pytest.raises(Exception) as caught:
        svc.get_run(run_id)
    assert type(caught.value).__name__ == "ServiceError" and caught.value.http_status == 502
    assert "job without a name" in caught.value.message


def test_cancel_asks_once_and_the_job_reads_canceling_then_canceled(v2) -> None:
    svc = service()
    svc.publish()
    run_id = svc.start_run({}).run.run_id
    v2.fake.clear_requests()

    svc.cancel(run_id)

    assert [(r.method, r.status) for r in v2.fake.calls()] == [("POST", 202)]
    assert svc.get_run(run_id).status in ("canceling", "canceled")
    with pytest.raises(Exception) as missing:
        svc.cancel("no-such-job")
    assert type(missing.value).__name__ == "RunNotFound"


def test_the_overlap_look_back_skips_a_tick_while_a_job_is_going_in_one_query(v2) -> None:
    svc = service()
    first = svc.tick(scheduled_for=OCCURRENCE)
    v2.fake.clear_requests()

    second = svc.tick(scheduled_for="2026-12-01T13:30:00Z")

    assert second.action == "skipped" and second.active_run.run_id == first.run.run_id
    assert len(v2.fake.calls("POST", "runs:query")) == 1 and v2.fake.calls("PUT") == []


def test_every_http_answer_comes_within_its_budget_on_a_persistent_500(v2, monkeypatch) -> None:
    from pipeline_def.app import http_api
    from pipeline_def.service import reset_service

    service().publish()
    monkeypatch.setenv("AML_HTTP_BUDGET_SECONDS", "2")
    reset_service()
    v2.fake.inject_fault(None, r".", status=500, times=None)
    answers = {}
    for name, call in {
        "start": lambda: http_api.respond(http_api.start_run, "https://app/api/runs", b""),
        "list": lambda: http_api.respond(http_api.list_runs, {}),
        "get": lambda: http_api.respond(http_api.get_run, "some-job"),
        "cancel": lambda: http_api.respond(http_api.cancel_run, "https://app/api/runs/x/cancel", "some-job"),
    }.items():
        started = time.monotonic()
        response = call()
        answers[name] = (response.status, round(time.monotonic() - started, 1))
    assert all(status == 502 and seconds < 10 for status, seconds in answers.values()), answers


_PROBE = r"""
import json, sys
import function_app
built = function_app.app.get_functions()
functions = sorted(f.get_function_name() for f in built)
from azure.functions.timer import TimerRequest
timer = next(f for f in built if f.get_function_name() == "scheduled_run")
timer.get_user_function()(TimerRequest(past_due=False))
print(json.dumps({"functions": functions, "modules": sorted(sys.modules)}))
"""


def test_the_app_builds_and_ticks_on_v2_without_loading_azureml_or_azure_ai_ml(v2) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert "scheduled_run" in found["functions"]
    loaded = {m for m in found["modules"] if m.split(".")[0] == "azureml" or m.startswith("azure.ai.ml")}
    assert loaded == set()
    assert len(v2.fake.runs) == 1  # the tick registered the pipeline and submitted a job


def test_the_v2_fingerprint_covers_requirements_v2_not_v1s_and_the_command_line_prints_it(tmp_path) -> None:
    import shutil

    from pipeline_def.azureml_v2.publisher import v2_fingerprint
    from pipeline_def.fingerprint import compute_fingerprint
    from pipeline_def.settings import STEP_SCRIPTS_DIR, load_settings

    environ = {
        "PIPELINE_BACKEND": "azureml-v2",
        "AML_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000001",
        "AML_RESOURCE_GROUP": "rg",
        "AML_WORKSPACE_NAME": "ws",
        "AML_REGION": "westeurope",
        "AML_COMPUTE_NAME": "cpu-cluster",
    }
    settings = load_settings(environ)
    folder = tmp_path / "step_scripts"
    shutil.copytree(STEP_SCRIPTS_DIR, folder, ignore=shutil.ignore_patterns("__pycache__"))
    v1, v2 = compute_fingerprint(settings, folder), v2_fingerprint(settings, folder)
    assert v1 != v2
    with open(folder / "requirements.txt", "a") as handle:
        handle.write("# a v1 change\n")
    v1_changed = compute_fingerprint(settings, folder)
    assert v1_changed != v1 and v2_fingerprint(settings, folder) == v2
    with open(folder / "requirements-v2.txt", "a") as handle:
        handle.write("# a v2 change\n")
    assert v2_fingerprint(settings, folder) != v2 and compute_fingerprint(settings, folder) == v1_changed

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AML_", "PIPELINE_"))}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline_def", "fingerprint"],
        cwd=ROOT,
        env={**env, **environ},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == v2_fingerprint(settings), done.stderr


def test_a_failed_parallel_node_reads_the_entry_scripts_error_from_its_logs(v2) -> None:
    """Run history of a parallel node says only that the driver exited 42; the app reads the node's
    logs/user/error.txt (the entry script's traceback), else logs/job_result.txt (the driver's reason)."""
    svc = service()
    svc.publish()
    run_id = svc.start_run({}).run.run_id
    fake = v2.fake
    with fake.lock:
        run = fake.v2_job(run_id)
        run.history_status = "Failed"
        fake._set_step(run.step("fetch_data"), "Completed", fake.clock())
        run.step("predict").error = node_error(
            "python driver/amlbi_main.py", 42, ["[parallel run] job failed: see logs/job_result.txt"], None
        )
        fake._set_step(run.step("predict"), "Failed", fake.clock())
    predict = run.step("predict").run_id
    fake.put_artifact(
        "ExperimentRun", f"dcid.{predict}", "logs/job_result.txt", b"Job failed: 1 failed items\n"
    )
    assert svc.get_run(run_id).error == "step predict failed: 1 failed items"

    traceback = (
        "2026-12-01T01:30:00|node 0|process000|init() failed\n"
        'Traceback (most recent call last):\n  File "score_parallel.py", line 9, in init\n'
        "batchpred_steps.errors.StepError: model version 99 is not registered\n\n"
    )
    fake.put_artifact("ExperimentRun", f"dcid.{predict}", "logs/user/error.txt", traceback.encode())
    failed = svc.get_run(run_id)
    assert failed.error == "step predict failed: model version 99 is not registered"
    assert [r.path.rsplit("/", 2)[-2:] for r in fake.calls("GET", "/artifacts/content/")][-1] == [
        "user",
        "error.txt",
    ]
