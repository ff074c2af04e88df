"""HTTP runs never publish and always answer in time: POST /api/runs runs the endpoint's current default,
stale or not, and says which; with nothing published it is 409 and nothing is submitted; no HTTP path
imports azureml; and whatever Azure ML does, an answer comes within AML_HTTP_BUDGET_SECONDS with at most 4
attempts of any call. Everything runs through the real decorated functions against the fakes over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest

from emulator.functions_host import LoadedApp
from pipeline_def.budget import HTTP_MAX_ATTEMPTS
from pipeline_def.fingerprint import compute_fingerprint
from pipeline_def.service import Service
from pipeline_def.settings import PROJECT_ROOT, load_settings
from tests.fixtures_fakes import publish_in_fake

STALE_VERSION = "0123456789abcdef"


@pytest.fixture(scope="module")
def app() -> LoadedApp:
    return LoadedApp()


@pytest.fixture
def stale(fake_aml, aml_env, monkeypatch) -> SimpleNamespace:
    """The endpoint's default pipeline was published from other step scripts (another fingerprint)."""
    return publish_in_fake(fake_aml, monkeypatch, STALE_VERSION)


@pytest.fixture
def current(fake_aml, aml_env, monkeypatch) -> SimpleNamespace:
    """Published and current, with a small HTTP budget so the fault tests answer fast."""
    return publish_in_fake(fake_aml, monkeypatch, None, AML_HTTP_BUDGET_SECONDS="2")


def _error(response, status: int, code: str) -> str:
    assert response.status == status, response
    assert response.json["error"]["code"] == code
    return response.json["error"]["message"]


# ----- item 3: the endpoint's current default, stale or not; 409 when nothing is published


def test_a_stale_endpoint_runs_as_it_is_and_the_answer_says_so(app, stale):
    response = app.start_run({"parameters": {"sample_size": 3}})
    assert response.status == 202, response
    assert response.json["pipeline_version"] == STALE_VERSION
    assert response.json["current"] is False
    (run,) = stale.fake.runs.values()
    assert run.pipeline_id == stale.pipeline["Id"] and run.endpoint_id == stale.endpoint["Id"]
    assert not stale.fake.calls("POST", "/Pipelines/Create") and not stale.fake.calls("PUT")
    assert stale.fake.pipelines[stale.pipeline["Id"]]["EntityStatus"] == "Active"
    assert len(stale.fake.requests) == 3  # endpoint, its default pipeline, the submit


def _no_endpoint(fake, state):
    del fake.endpoints[state.endpoint["Id"]]


def _endpoint_disabled(fake, state):
    fake.endpoints[state.endpoint["Id"]]["EntityStatus"] = "Disabled"


def _no_default(fake, state):
    fake.endpoints[state.endpoint["Id"]]["DefaultVersion"] = "7"


def _default_disabled(fake, state):
    fake.pipelines[state.pipeline["Id"]]["EntityStatus"] = "Disabled"


def _default_missing(fake, state):
    del fake.pipelines[state.pipeline["Id"]]


@pytest.mark.parametrize(
    "unpublish, says",
    [
        (_no_endpoint, "does not exist"),
        (_endpoint_disabled, "is disabled"),
        (_no_default, "no default pipeline"),
        (_default_disabled, "is disabled"),
        (_default_missing, "does not exist"),
    ],
)
def test_nothing_published_is_409_naming_both_ways_to_publish_and_submits_nothing(
    app, stale, unpublish, says
):
    unpublish(stale.fake, stale)
    message = _error(app.start_run(), 409, "not_published")
    assert says in message
    assert "python -m pipeline_def publish" in message and "timer tick" in message
    assert stale.fake.calls("POST") == [] and stale.fake.runs == {}


def test_the_command_line_run_does_not_publish_either_and_names_publish(stale):
    _default_disabled(stale.fake, stale)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline_def", "run", "--sample-size", "2"],
        cwd=PROJECT_ROOT,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "python -m pipeline_def publish" in result.stderr
    assert stale.fake.calls("POST") == [] and stale.fake.runs == {}


def test_the_local_backend_runs_its_fingerprint_which_is_always_current(tmp_path):
    from pipeline_def.local.backend import LocalBackend

    settings = load_settings({"PIPELINE_BACKEND": "local", "LOCAL_WORK_DIR": str(tmp_path)})
    target = Service(settings, LocalBackend(settings)).backend.published_target()
    assert (target.version, target.current) == (compute_fingerprint(settings), True)


# Runs every route in a fresh interpreter against the (stale) fakes and prints the azureml modules loaded.
_ROUTES_IN_A_FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    from emulator.functions_host import LoadedApp
    app = LoadedApp()
    answers = {}
    started = app.start_run({"parameters": {"sample_size": 3}})
    answers["start"] = [started.status, started.json.get("current")]
    run_id = started.json["run_id"]
    answers["status"] = app.get_run(run_id).status
    answers["list"] = app.list_runs().status
    answers["cancel"] = app.cancel_run(run_id).status
    answers["unknown"] = app.get_run("no-such-run").status
    loaded = sorted(m for m in sys.modules if m == "azureml" or m.startswith("azureml."))
    print(json.dumps({"answers": answers, "azureml": loaded}))
    """
)


def test_no_http_path_imports_azureml_even_against_a_stale_endpoint(stale):
    result = subprocess.run(
        [sys.executable, "-c", _ROUTES_IN_A_FRESH_PROCESS],
        cwd=PROJECT_ROOT,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["answers"] == {
        "start": [202, False],
        "status": 200,
        "list": 200,
        "cancel": 202,
        "unknown": 404,
    }
    assert report["azureml"] == []
    assert not stale.fake.calls("POST", "/Pipelines/Create")


# ----- item 4: an answer within the budget, at most 4 attempts of any call


def _attempts(fake, method: str, path: str) -> int:
    return len(fake.calls(method, path))


def test_a_lasting_500_on_submit_answers_502_in_time_and_starts_nothing(app, current):
    current.fake.inject_fault("POST", "PipelineEndpointSubmit", status=500, times=None)
    started = time.monotonic()
    _error(app.start_run(), 502, "azureml_service_error")
    assert time.monotonic() - started < current.settings.http_budget + 1
    submits = _attempts(current.fake, "POST", "PipelineEndpointSubmit")
    assert 1 <= submits <= HTTP_MAX_ATTEMPTS
    # each ambiguous failure was checked (one bounded query) before the next attempt
    assert _attempts(current.fake, "POST", "runs:query") == submits
    assert current.fake.runs == {}


def test_a_submit_whose_answers_are_all_500_after_starting_a_run_is_that_one_run(app, current):
    current.fake.inject_fault("POST", "PipelineEndpointSubmit", status=500, after_handling=True, times=None)
    response = app.start_run()
    assert response.status == 202, response
    assert list(current.fake.runs) == [response.json["run_id"]]
    assert _attempts(current.fake, "POST", "PipelineEndpointSubmit") == 1


def test_a_lasting_500_on_a_read_answers_502_in_time(app, current):
    current.fake.inject_fault("GET", "/PipelineEndpoints/Name", status=500, times=None)
    started = time.monotonic()
    _error(app.list_runs(), 502, "azureml_service_error")
    assert time.monotonic() - started < current.settings.http_budget + 1
    assert 1 <= _attempts(current.fake, "GET", "/PipelineEndpoints/Name") <= HTTP_MAX_ATTEMPTS


def test_a_503_asking_to_wait_past_the_budget_answers_503_at_once(app, current):
    current.fake.inject_fault("POST", "PipelineEndpointSubmit", status=503, retry_after=60, times=None)
    started = time.monotonic()
    response = app.start_run()
    _error(response, 503, "azureml_throttled")
    assert response.headers["Retry-After"] == "60"
    assert time.monotonic() - started < 1.5
    assert _attempts(current.fake, "POST", "PipelineEndpointSubmit") == 1
    assert current.fake.runs == {}  # a 503 before handling started nothing, and nothing was retried


def test_a_hanging_azure_ml_answers_504_within_the_budget(app, current):
    current.fake.inject_fault("GET", "/PipelineRuns/", delay=30, times=None)
    started = time.monotonic()
    _error(app.get_run("some-run"), 504, "azureml_unreachable")
    elapsed = time.monotonic() - started
    assert elapsed < current.settings.http_budget + 1, elapsed
    assert 1 <= _attempts(current.fake, "GET", "/PipelineRuns/") <= HTTP_MAX_ATTEMPTS


def test_a_hanging_identity_endpoint_answers_within_the_budget(app, current, fake_identity):
    fake_identity.hang(30)
    started = time.monotonic()
    message = _error(app.start_run(), 502, "token_unavailable")
    assert time.monotonic() - started < current.settings.http_budget + 1
    assert "AML_HTTP_BUDGET_SECONDS" in message
    assert current.fake.requests == []
