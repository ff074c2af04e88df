"""One run on a real Azure ML workspace, end to end: publish if needed, submit with sample_size=5, poll until
it ends, three completed steps, then the run is listed. Opt-in (AML_LIVE_TEST=1 and the workspace settings):
it takes minutes, costs compute time and needs the dataset and model registered in the workspace."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping

import pytest

from pipeline_def.runs import RunInfo
from pipeline_def.service import Service, make_backend
from pipeline_def.settings import load_settings
from pipeline_def.steps import STEPS

REQUIRED = ("AML_SUBSCRIPTION_ID", "AML_RESOURCE_GROUP", "AML_WORKSPACE_NAME", "AML_COMPUTE_NAME")
DEFAULT_TIMEOUT_SECONDS = 45 * 60
DEFAULT_POLL_SECONDS = 30.0


def why_skipped(environ: Mapping[str, str]) -> str | None:
    """The reason the live test does not run with these variables, or None when it does."""
    if environ.get("AML_LIVE_TEST", "").strip() != "1":
        return "live Azure ML test: set AML_LIVE_TEST=1 and the AML_* workspace settings to run it"
    missing = [name for name in REQUIRED if not environ.get(name, "").strip()]
    if not (environ.get("AML_REGION", "").strip() or environ.get("AML_API_BASE", "").strip()):
        missing.append("AML_REGION or AML_API_BASE")
    if missing:
        return f"AML_LIVE_TEST=1 but these settings are missing: {', '.join(missing)}"
    return None


SKIP_REASON = why_skipped(os.environ)


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def _wait_until_ended(service: Service, run_id: str, timeout: float, poll: float) -> tuple[RunInfo, list]:
    """Poll get_run until the run ends or `timeout` passes; returns the last answer and the statuses seen."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        info = service.get_run(run_id)
        if not seen or seen[-1] != info.status:
            seen.append(info.status)
            print(f"run {run_id}: {info.status} (Azure ML: {info.aml_status})", flush=True)
        if info.terminal or time.monotonic() + poll > deadline:
            return info, seen
        time.sleep(poll)  # a real cluster: nothing to inject here


@pytest.mark.live
@pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")
def test_a_run_on_the_real_workspace_completes_its_three_steps():
    # The real settings of the shell, on the azureml backend whatever PIPELINE_BACKEND says; set
    # PIPELINE_ENDPOINT_NAME (and PIPELINE_EXPERIMENT_NAME) to keep test runs off the production endpoint.
    settings = load_settings({**os.environ, "PIPELINE_BACKEND": "azureml"})
    service = Service(settings, make_backend(settings))  # the real DefaultAzureCredential
    timeout = _seconds("AML_LIVE_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS)
    poll = _seconds("AML_LIVE_POLL_SECONDS", DEFAULT_POLL_SECONDS)

    published = service.publish()
    assert published.target.current and published.target.version

    run = service.start_run({"sample_size": 5}, trigger="live-test").run
    info = run
    try:
        info, seen = _wait_until_ended(service, run.run_id, timeout, poll)
    finally:
        if not info.terminal:  # timed out or failed to poll: do not leave the cluster busy
            with contextlib.suppress(Exception):  # the failure that got us here is the one to report
                service.cancel(run.run_id)

    assert info.terminal, f"run {run.run_id} still {info.status} after {timeout:.0f} s ({seen}); canceled it"
    assert info.status == "completed", (
        f"run {run.run_id} ended {info.status}: {info.error} ({info.portal_url})"
    )
    assert info.aml_status == "Finished"
    assert [(step.name, step.status) for step in info.steps] == [(step.name, "completed") for step in STEPS]

    assert run.run_id in [listed.run_id for listed in service.list_runs(20)]
    assert service.publish().published is False  # the fingerprint round-trips


def test_the_live_test_runs_only_when_asked_and_fully_configured():
    configured = {
        "AML_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000001",
        "AML_RESOURCE_GROUP": "rg",
        "AML_WORKSPACE_NAME": "ws",
        "AML_REGION": "westeurope",
        "AML_COMPUTE_NAME": "cpu-cluster",
    }
    assert "AML_LIVE_TEST=1" in why_skipped(configured)
    assert "AML_LIVE_TEST=1" in why_skipped({**configured, "AML_LIVE_TEST": "yes"})
    assert why_skipped({**configured, "AML_LIVE_TEST": "1"}) is None
    with_api_base = {**configured, "AML_REGION": "", "AML_API_BASE": "https://x.api.azureml.ms"}
    assert why_skipped({**with_api_base, "AML_LIVE_TEST": "1"}) is None
    reason = why_skipped({"AML_LIVE_TEST": "1", "AML_WORKSPACE_NAME": "ws"})
    assert reason.endswith(
        "AML_SUBSCRIPTION_ID, AML_RESOURCE_GROUP, AML_COMPUTE_NAME, AML_REGION or AML_API_BASE"
    )


# ----- Azure ML v2 (PIPELINE_BACKEND=azureml-v2): what only a live workspace settles (the v2 notes, section 6).
# Also opt-in; the workspace needs the CSV as a uri_file data asset named by AML_LIVE_V2_DATASET (default
# AmesHousingCsv, docs/migrate-to-v2.md) and the HousePrices model. Findings that are facts to record rather
# than pass/fail are printed (run with -s).

V2_SKIP_REASON = SKIP_REASON or (
    None if os.environ.get("AML_LIVE_V2", "1").strip() == "1" else "AML_LIVE_V2 is not 1: v2 checks left out"
)


def _v2_service() -> Service:
    environ = {
        **os.environ,
        "PIPELINE_BACKEND": "azureml-v2",
        "AML_DATASET_NAME": os.environ.get("AML_LIVE_V2_DATASET", "AmesHousingCsv"),
    }
    settings = load_settings(environ)
    return Service(settings, make_backend(settings))


def _v2_steps(service: Service) -> list[str]:
    return [step.name for step in service.backend.steps]  # type: ignore[attr-defined]


@pytest.mark.live
@pytest.mark.skipif(V2_SKIP_REASON is not None, reason=V2_SKIP_REASON or "")
def test_v2_a_job_of_the_registered_pipeline_component_completes_its_three_steps():
    """Checks 1 (a job with `jobs: {}` and componentId runs its nodes), 3 (run history: queryable by tag at once,
    children named after the nodes), 5 (the rw_mount outputs take the manifest) and 8 (the app's role is
    enough for all of it)."""
    service = _v2_service()
    timeout = _seconds("AML_LIVE_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS)
    poll = _seconds("AML_LIVE_POLL_SECONDS", DEFAULT_POLL_SECONDS)
    assert service.publish().target.current

    run = service.start_run({"sample_size": 5}, trigger="live-test").run
    assert run.run_id in [listed.run_id for listed in service.list_runs(5)], "not queryable by tag at once"
    info = run
    try:
        info, seen = _wait_until_ended(service, run.run_id, timeout, poll)
    finally:
        if not info.terminal:
            with contextlib.suppress(Exception):
                service.cancel(run.run_id)
    assert info.status == "completed", (
        f"job {run.run_id} ended {info.status}: {info.error} ({info.portal_url})"
    )
    assert [(s.name, s.status) for s in info.steps or []] == [(n, "completed") for n in _v2_steps(service)]
    assert service.publish().published is False


@pytest.mark.live
@pytest.mark.skipif(V2_SKIP_REASON is not None, reason=V2_SKIP_REASON or "")
def test_v2_the_job_name_is_the_key_of_a_submit():
    """Check 2: a second PUT of one name starts nothing (identical: 200 or 400?; changed: 'already exists')."""
    from pipeline_def.azureml_v2.backend import AzureMLV2Backend

    service = _v2_service()
    backend = service.backend
    assert isinstance(backend, AzureMLV2Backend)
    target = backend.published_target()
    tags = {"trigger": "timer", "past_due": "false"}
    scheduled = time.strftime("%Y-%m-%dT%H:%M:00Z", time.gmtime())
    first = backend.submit_for_occurrence(target, tags, scheduled)
    try:
        again = backend.submit_for_occurrence(target, tags, scheduled)
        print(f"second identical PUT: joined={again.joined}, same job {again.run.run_id == first.run.run_id}")
        assert again.run.run_id == first.run.run_id and again.joined
        changed = backend.submit(target, {"sample_size": "3"}, {**tags, "scheduled_for": scheduled})
        assert changed.run_id == first.run.run_id
    finally:
        with contextlib.suppress(Exception):
            service.cancel(first.run.run_id)


@pytest.mark.live
@pytest.mark.skipif(V2_SKIP_REASON is not None, reason=V2_SKIP_REASON or "")
def test_v2_latest_version_of_a_container_is_the_most_recently_created():
    """Check 4, on two throwaway environment versions (no compute, no cost): created 'b' then 'a'."""
    from pipeline_def.azureml_v2.client import AzureMLV2Client

    service = _v2_service()
    client = AzureMLV2Client(service.settings)
    name = f"batchpred-live-latest-{int(time.time())}"
    body = {"properties": {"image": "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:20251130.v1"}}
    for version in ("b", "a"):
        client.put_version("environments", name, version, body)
    container = client.get_container("environments", name)
    assert container is not None and container.latest_version == "a"


@pytest.mark.live
@pytest.mark.skipif(V2_SKIP_REASON is not None, reason=V2_SKIP_REASON or "")
def test_v2_what_the_service_says_to_a_job_put_without_x_azureml_token_or_with_a_missing_model():
    """Checks 1b and 7, recorded: the status and message of a job PUT without `x-azureml-token`, and of one
    naming a model version that does not exist (the app refuses those before it PUTs; this says what the
    service would have said). Any job that starts is canceled at once."""
    from pipeline_def.azureml_v2 import components
    from pipeline_def.azureml_v2.backend import AzureMLV2Backend
    from pipeline_def.azureml_v2.client import API_VERSION
    from pipeline_def.errors import AzureMLError

    service = _v2_service()
    backend = service.backend
    assert isinstance(backend, AzureMLV2Backend)
    settings = service.settings
    target = backend.published_target()
    ws = settings.workspace_path
    client = backend.client
    findings = {}
    for case, model_version, with_token in (
        ("no x-azureml-token", "1", False),
        ("model 99999", "99999", True),
    ):
        name = f"{settings.endpoint_name}-probe-{int(time.time())}-{case.split()[0]}"
        body = components.job_body(
            settings,
            f"{ws}/components/{components.Names.of(settings).pipeline}/versions/{target.version}",
            name,
            components.JobInputs(
                f"{ws}/data/{settings.dataset_name}/versions/1",
                f"{ws}/models/{settings.model_name}/versions/{model_version}",
                {"model_version": model_version, "run_id": name},
            ),
            {"trigger": "live-probe"},
            display_name="live probe",
        )
        try:
            if with_token:
                client.put_job(name, body)
            else:
                client._transport.send(
                    "PUT",
                    f"{client.workspace_url}/jobs/{name}",
                    params={"api-version": API_VERSION},
                    json_body=body,
                    what="a probe job",
                )
            findings[case] = "accepted"
            with contextlib.suppress(Exception):
                client.cancel_job(name)
        except AzureMLError as error:
            findings[case] = f"{error.status} {error.aml_code}: {error.message}"
    print(findings)
    assert set(findings) == {"no x-azureml-token", "model 99999"}


# ----- The parallel predict (issue #13) on a real cluster: what the emulated parallel-run driver only guesses
# (emulator/README.md, "What the emulator guesses (parallel steps)"). Opt-in on top of AML_LIVE_TEST=1:
# AML_LIVE_PARALLEL=1 and a dataset of at least 1M rows registered under AML_LIVE_PARALLEL_DATASET (v1: a
# tabular dataset; v2: AML_LIVE_PARALLEL_DATASET_V2, a uri_file data asset; `make bigdata` writes one). The
# compute cluster must allow 2 nodes. Facts to record are printed (run with -s).

PARALLEL_SKIP_REASON = SKIP_REASON or (
    None
    if os.environ.get("AML_LIVE_PARALLEL", "").strip() == "1"
    and os.environ.get("AML_LIVE_PARALLEL_DATASET", "").strip()
    else "AML_LIVE_PARALLEL=1 and AML_LIVE_PARALLEL_DATASET (>= 1M rows) are needed for the parallel checks"
)
PARALLEL_NODES = 2


def _parallel_service(backend: str) -> Service:
    dataset = os.environ.get("AML_LIVE_PARALLEL_DATASET", "")
    if backend == "azureml-v2":
        dataset = os.environ.get("AML_LIVE_PARALLEL_DATASET_V2", "") or dataset
    settings = load_settings({**os.environ, "PIPELINE_BACKEND": backend, "AML_DATASET_NAME": dataset})
    return Service(settings, make_backend(settings))


def _predict_logs(service: Service, run_id: str) -> dict[str, str | None]:
    """The parallel predict step run's logs the app reads on failure, and the master's, as the service has
    them (None: no such artifact)."""
    client = service.backend.client  # type: ignore[attr-defined]
    children = client.get_step_runs(service.settings.experiment_name, run_id)
    (predict,) = [c for c in children if (c.display_name or c.name) == "predict"]
    return {
        path: client.get_step_log(predict.run_id, path)
        for path in ("logs/job_result.txt", "logs/user/error.txt", "logs/sys/master_role.txt")
    }


@pytest.mark.live
@pytest.mark.skipif(PARALLEL_SKIP_REASON is not None, reason=PARALLEL_SKIP_REASON or "")
@pytest.mark.parametrize("backend", ["azureml", "azureml-v2"])
def test_the_parallel_predict_scores_a_million_rows_on_two_nodes(backend):
    """Settles: the parallel-run runtime starts in the step environment (pip, setuptools<81, pandas 3, numpy 2:
    else exit 42 before init()), both nodes take mini-batches, every row is predicted (the run completes with
    error_threshold 0), node_count reaches NodeCount / resources.instance_count, and where the logs are."""
    service = _parallel_service(backend)
    timeout = _seconds("AML_LIVE_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS)
    poll = _seconds("AML_LIVE_POLL_SECONDS", DEFAULT_POLL_SECONDS)
    assert service.publish().target.current
    run = service.start_run({"sample_size": 0, "node_count": PARALLEL_NODES}, trigger="live-test").run
    info = run
    try:
        info, _seen = _wait_until_ended(service, run.run_id, timeout, poll)
    finally:
        if not info.terminal:
            with contextlib.suppress(Exception):
                service.cancel(run.run_id)
    logs = _predict_logs(service, run.run_id)
    for path, text in logs.items():
        print(f"--- {path} ---\n{(text or '(none)')[-3000:]}", flush=True)
    assert info.status == "completed", f"{run.run_id} ended {info.status}: {info.error} ({info.portal_url})"
    assert [(s.name, s.status) for s in info.steps or []] == [(s.name, "completed") for s in STEPS]
    assert logs["logs/job_result.txt"] is not None, "no logs/job_result.txt artifact on the predict step run"


@pytest.mark.live
@pytest.mark.skipif(PARALLEL_SKIP_REASON is not None, reason=PARALLEL_SKIP_REASON or "")
def test_a_failing_parallel_predict_reports_the_entry_scripts_error_not_exit_42():
    """v1 only (v2 refuses a missing model version at submit): init() fails on every process of both nodes.
    Settles what run history records for the failed step (printed) and that the app's error is the entry
    script's, read from the step's logs."""
    from pipeline_def.runs import is_parallel_exit

    service = _parallel_service("azureml")
    service.publish()
    run = service.start_run({"sample_size": 1000, "node_count": PARALLEL_NODES, "model_version": 999999}).run
    info, _seen = _wait_until_ended(
        service,
        run.run_id,
        _seconds("AML_LIVE_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS),
        _seconds("AML_LIVE_POLL_SECONDS", DEFAULT_POLL_SECONDS),
    )
    client = service.backend.client  # type: ignore[attr-defined]
    children = client.get_step_runs(service.settings.experiment_name, run.run_id)
    print(
        "run history's predict error:",
        [c.error for c in children if c.display_name == "predict"],
    )
    for path, text in _predict_logs(service, run.run_id).items():
        print(f"--- {path} ---\n{(text or '(none)')[-3000:]}", flush=True)
    assert info.status == "failed" and info.failed_step == "predict", info
    (predict,) = [s for s in info.steps or [] if s.name == "predict"]
    assert predict.error and not is_parallel_exit(predict.error), predict.error
    assert "999999" in predict.error, predict.error
