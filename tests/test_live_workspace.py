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
