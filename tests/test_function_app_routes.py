"""The HTTP routes through the real decorated functions, without the Functions host: the shapes of
product.md, input checked before anything reaches Azure ML, and every failure mapped to its status."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest

from emulator.functions_host import BASE_URL, LoadedApp, end_local_runs, wait_for
from pipeline_def.app import http_api
from pipeline_def.errors import (
    AzureMLError,
    Forbidden,
    ServiceError,
    Throttled,
    Unauthorized,
    Unreachable,
)
from pipeline_def.service import reset_service
from tests.fixtures_fakes import publish_in_fake

ERROR_KEYS = {"code", "message"}


@pytest.fixture(scope="module")
def app() -> LoadedApp:
    return LoadedApp()


def assert_error(response, status: int, code: str) -> str:
    assert response.status == status, response
    assert response.content_type == "application/json"
    assert set(response.json) == {"error"} and set(response.json["error"]) == ERROR_KEYS
    assert response.json["error"]["code"] == code
    message = response.json["error"]["message"]
    assert "Traceback" not in message and 'File "' not in message
    return message


START_KEYS = {"run_id", "status", "status_url", "portal_url", "pipeline_version", "current"}


def assert_run_started(response) -> str:
    """Checks a start answered with a run (202, the answer's keys, its status URL in Location, without the
    function key the request carried as ?code=FUNCTION-KEY); returns the run's id."""
    assert response.status == 202, response
    assert set(response.json) == START_KEYS
    run_id = response.json["run_id"]
    assert response.headers["Location"] == response.json["status_url"] == f"{BASE_URL}/runs/{run_id}"
    assert "FUNCTION-KEY" not in json.dumps(response.json) + response.headers["Location"]
    return run_id


def assert_cancel_requested(response, run_id: str) -> None:
    """Checks a cancel answered 202 with the run's status URL in Location."""
    assert response.status == 202, response
    assert response.headers["Location"] == f"{BASE_URL}/runs/{run_id}"


# --- configuration errors ----------------------------------------------------------------------------------
@pytest.fixture
def bad_config(monkeypatch):
    monkeypatch.setenv("PIPELINE_BACKEND", "azureml")
    monkeypatch.setenv("AML_SUBSCRIPTION_ID", "not-a-guid-but-maybe-a-secret")
    monkeypatch.setenv("AML_RESOURCE_GROUP", "rg")
    monkeypatch.setenv("AML_WORKSPACE_NAME", "ws")
    monkeypatch.setenv("AML_REGION", "westeurope")
    monkeypatch.delenv("AML_API_BASE", raising=False)
    monkeypatch.delenv("AML_COMPUTE_NAME", raising=False)
    monkeypatch.setenv("PIPELINE_OVERLAP", "maybe")
    reset_service()
    yield
    reset_service()


def _every_route(app: LoadedApp):
    return [
        app.start_run(),
        app.start_run({"parameters": {"sample_size": 3}}),
        app.list_runs(),
        app.get_run("run-1"),
        app.cancel_run("run-1"),
    ]


def test_bad_configuration_answers_every_route_with_500_naming_each_bad_setting(app, bad_config):
    for response in _every_route(app):
        message = assert_error(response, 500, "configuration_error")
        for name in ("AML_SUBSCRIPTION_ID", "AML_COMPUTE_NAME", "PIPELINE_OVERLAP"):
            assert name in message
        assert "not-a-guid-but-maybe-a-secret" not in message
        assert "maybe" not in message


def test_settings_are_read_once_so_a_configuration_error_stays_until_restart(app, bad_config, monkeypatch):
    assert_error(app.list_runs(), 500, "configuration_error")
    monkeypatch.setenv("PIPELINE_BACKEND", "local")
    monkeypatch.setenv("PIPELINE_OVERLAP", "skip")
    assert_error(app.list_runs(), 500, "configuration_error")


# --- input checked before anything is sent ---------------------------------------------------------------
BAD_BODIES = [
    pytest.param(b"{", "not valid JSON", id="invalid-json"),
    pytest.param(b"[]", "JSON object", id="array"),
    pytest.param(b'"parameters"', "JSON object", id="string"),
    pytest.param(b"null", "JSON object", id="null"),
    pytest.param(b"25", "JSON object", id="number"),
    pytest.param(b'{"parameters": {"sample_size": NaN}}', "not valid JSON", id="nan"),
    pytest.param(b"\xff\xfe{}", "UTF-8", id="not-utf8"),
    pytest.param(b"[" * 100_000, "larger than 64 KiB", id="too-deep-and-too-large"),
    pytest.param(b"[" * 20_000 + b"]" * 20_000, "nested too deeply", id="too-deep"),
    pytest.param(b'{"parameter": {"sample_size": 5}}', "unknown field", id="unknown-top-level-key"),
    pytest.param(b'{"parameters": {"sample_size": 5}, "x": 1}', "unknown field", id="extra-top-level-key"),
    pytest.param(b'{"parameters": [1, 2]}', "'parameters' must be a JSON object", id="parameters-array"),
    pytest.param(b'{"parameters": null}', "'parameters' must be a JSON object", id="parameters-null"),
    pytest.param(b'{"parameters": {"samplesize": 5}}', "unknown parameter", id="unknown-parameter"),
    pytest.param(b'{"parameters": {"sample_size": -1}}', "sample_size", id="negative-sample-size"),
    pytest.param(b'{"parameters": {"sample_size": "10"}}', "sample_size", id="sample-size-string"),
    pytest.param(b'{"parameters": {"sample_size": 2.5}}', "sample_size", id="sample-size-float"),
    pytest.param(b'{"parameters": {"sample_size": true}}', "sample_size", id="sample-size-bool"),
    pytest.param(b'{"parameters": {"sample_size": 1e400}}', "sample_size", id="sample-size-inf"),
    pytest.param(b'{"parameters": {"sample_size": 99999999999}}', "sample_size", id="sample-size-huge"),
    pytest.param(b'{"parameters": {"sample_size": ' + b"9" * 5000 + b"}}", "not valid JSON", id="int-digits"),
    pytest.param(b'{"parameters": {"model_version": 0}}', "model_version", id="model-version-zero"),
    pytest.param(b'{"parameters": {"model_version": "v1"}}', "model_version", id="model-version-word"),
    pytest.param(b'{"parameters": {"model_version": ["1"]}}', "model_version", id="model-version-list"),
    pytest.param(b'{"parameters": {"accept_drift": "true"}}', "accept_drift", id="accept-drift-string"),
    pytest.param(b'{"parameters": {"accept_drift": 1}}', "accept_drift", id="accept-drift-number"),
]


@pytest.mark.parametrize("body, says", BAD_BODIES)
def test_start_rejects_bad_bodies_with_400_and_a_clear_message(app, bad_config, body, says):
    # The configuration is broken too: a 400 here proves the body was judged before any backend existed.
    status = 413 if says.startswith("larger") else 400
    code = "payload_too_large" if status == 413 else "invalid_request"
    message = assert_error(app.start_run(body), status, code)
    assert says in message


def test_start_rejects_a_body_over_64_kib_with_413_even_when_it_is_valid_json(app, bad_config):
    body = json.dumps({"parameters": {"model_version": "latest"}, "pad": " " * 70_000}).encode()
    assert_error(app.start_run(body), 413, "payload_too_large")


BAD_RUN_IDS = ["a" * 301, "run.1", "run 1", "../runs", "run%2F1", "rün", "run\n1", "run;1", "?", "%00"]


@pytest.mark.parametrize("run_id", BAD_RUN_IDS + [""])
def test_malformed_run_ids_get_400_on_status_and_cancel(app, bad_config, run_id):
    for response in (app.get_run(run_id), app.cancel_run(run_id)):
        assert "letters, digits" in assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    "limit", ["0", "101", "-1", "abc", "", "1.5", "10 0", "１０", "99999999999999999999"]
)
def test_list_limit_outside_1_to_100_gets_400(app, bad_config, limit):
    assert "1 to 100" in assert_error(app.list_runs({"limit": limit}), 400, "invalid_request")


# --- the error mapping, one place -------------------------------------------------------------------------
def _raise(error: Exception):
    def handler():
        raise error

    return handler


@pytest.mark.parametrize(
    "error, status, code",
    [
        (Unauthorized("Azure ML refused the token (401)", status=401), 502, "azureml_unauthorized"),
        (Forbidden("Azure ML denied it (403)", status=403), 502, "azureml_forbidden"),
        (ServiceError("Azure ML failed (500)", status=500), 502, "azureml_service_error"),
        (AzureMLError("Azure ML refused (400)", status=400), 502, "azureml_error"),
        (Unreachable("Azure ML did not answer"), 504, "azureml_unreachable"),
        (Throttled("slow down", retry_after=2.2, status=429), 503, "azureml_throttled"),
    ],
)
def test_azure_ml_failures_map_to_gateway_statuses(error, status, code):
    response = http_api.respond(_raise(error))
    assert response.status == status
    assert response.body["error"]["code"] == code


def test_401_and_403_name_the_likely_cause_and_quote_the_correlation_id():
    unauthorized = http_api.respond(_raise(Unauthorized("refused (401)", status=401, correlation_id="c-401")))
    assert "audience" in unauthorized.body["error"]["message"]
    assert "c-401" in unauthorized.body["error"]["message"]
    forbidden = http_api.respond(_raise(Forbidden("denied (403)", status=403)))
    assert "AzureML Data Scientist" in forbidden.body["error"]["message"]


@pytest.mark.parametrize("retry_after, header", [(2.2, "3"), (0.0, "1"), (None, "30"), (120, "120")])
def test_throttling_answers_503_with_retry_after_in_whole_seconds(retry_after, header):
    response = http_api.respond(_raise(Throttled("throttled", retry_after=retry_after)))
    assert (response.status, response.headers) == (503, {"Retry-After": header})


def test_unexpected_exception_is_a_generic_500_with_the_traceback_only_in_the_log(caplog):
    with caplog.at_level(logging.ERROR):
        response = http_api.respond(_raise(KeyError("Id")))
    assert response.status == 500
    assert response.body == {
        "error": {"code": "internal_error", "message": "internal error; the details are in the app's log"}
    }
    assert any(record.exc_info and record.exc_info[0] is KeyError for record in caplog.records)


@pytest.mark.parametrize(
    "url, collection, expected",
    [
        (f"{BASE_URL}/runs?code=SECRET", True, f"{BASE_URL}/runs/r-1"),
        (f"{BASE_URL}/runs/", True, f"{BASE_URL}/runs/r-1"),
        (
            "https://app.azurewebsites.net/api/runs?code=k#x",
            True,
            "https://app.azurewebsites.net/api/runs/r-1",
        ),
        (f"{BASE_URL}/runs/r-1/cancel?code=SECRET", False, f"{BASE_URL}/runs/r-1"),
    ],
)
def test_status_url_is_absolute_and_never_carries_the_function_key(url, collection, expected):
    assert http_api.status_url_for(url, "r-1", collection=collection) == expected


# --- the azureml backend against the fake Azure ML service and the fake managed identity ----------------
@pytest.fixture
def aml(fake_aml, aml_env, monkeypatch) -> SimpleNamespace:
    """The azureml backend on the fakes, with the endpoint published and current (no SDK involved), and the
    smallest retry budgets (the timer's and an HTTP request's) so a fault is answered at once instead of being
    slept through."""
    return publish_in_fake(fake_aml, monkeypatch, AML_RETRY_BUDGET_SECONDS="0", AML_HTTP_BUDGET_SECONDS="1")


def _submissions(fake) -> list:
    return fake.calls("POST", "Submit")


RUN_KEYS = {"run_id", "status", "aml_status", "terminal", "created_at", "ended_at", "steps", "portal_url"}


def test_aml_start_run_submits_to_the_endpoint_and_answers_202_with_the_status_location(app, aml):
    response = app.start_run({"parameters": {"sample_size": 25}}, params={"code": "FUNCTION-KEY"})
    run_id = assert_run_started(response)
    assert (response.json["pipeline_version"], response.json["current"]) == (aml.pipeline["Version"], True)
    assert response.json["status"] == "queued"
    assert response.json["portal_url"] == f"https://ml.azure.com/runs/{run_id}?wsid={aml.fake.workspace_path}"
    (run,) = aml.fake.runs.values()
    assert run.run_id == run_id and run.endpoint_id == aml.endpoint["Id"]
    assert run.parameters["sample_size"] == "25"
    assert run.tags["trigger"] == "http"
    assert len(_submissions(aml.fake)) == 1
    assert not aml.fake.calls("POST", "Pipelines/Create")  # current: nothing published


def test_aml_start_run_with_accept_drift_passes_it_and_tags_the_run(app, aml):
    response = app.start_run({"parameters": {"accept_drift": True}})
    assert response.status == 202, response
    (run,) = aml.fake.runs.values()
    assert run.parameters["accept_drift"] == "true"
    assert run.tags["batchpred_accept_drift"] == "true" and run.tags["trigger"] == "http"


def test_aml_start_run_without_a_body_uses_the_published_defaults(app, aml):
    response = app.start_run(b"")
    assert response.status == 202, response
    (run,) = aml.fake.runs.values()
    assert run.parameters == {
        "sample_size": "10",
        "model_version": "latest",
        "accept_drift": "false",
        "node_count": "1",
    }


def test_aml_run_status_reports_steps_and_both_status_spellings(app, aml):
    run = aml.fake.add_run(aml.pipeline["Id"], experiment=aml.settings.experiment_name)
    aml.fake.set_run_status(run.run_id, "Running", steps={"fetch_data": "Completed", "predict": "Running"})
    response = app.get_run(run.run_id)
    assert response.status == 200, response
    assert set(response.json) >= RUN_KEYS
    assert response.json["run_id"] == run.run_id
    assert (response.json["status"], response.json["aml_status"], response.json["terminal"]) == (
        "running",
        "Running",
        False,
    )
    assert response.json["ended_at"] is None and response.json["created_at"]
    steps = {step["name"]: step["status"] for step in response.json["steps"]}
    assert steps["fetch_data"] == "completed" and steps["predict"] == "running"
    assert all(set(step) == {"name", "status"} for step in response.json["steps"])

    aml.fake.set_run_status(run.run_id, "Finished")
    done = app.get_run(run.run_id).json
    assert (done["status"], done["aml_status"], done["terminal"]) == ("completed", "Finished", True)
    assert done["ended_at"]
    assert {step["status"] for step in done["steps"]} == {"completed"}


def test_aml_list_runs_is_newest_first_with_a_default_limit_of_20(app, aml):
    experiment = aml.settings.experiment_name
    created = [aml.fake.add_run(aml.pipeline["Id"], experiment, "Finished").run_id for _ in range(23)]
    response = app.list_runs()
    assert response.status == 200, response
    assert set(response.json) == {"runs"}
    runs = response.json["runs"]
    assert [r["run_id"] for r in runs] == created[::-1][:20]
    assert all({"run_id", "status", "aml_status", "terminal", "created_at"} <= set(r) for r in runs)
    assert [r["run_id"] for r in app.list_runs({"limit": "3", "code": "k"}).json["runs"]] == created[::-1][:3]
    assert len(app.list_runs({"limit": "100"}).json["runs"]) == 23


def test_aml_cancel_answers_202_once_requested(app, aml):
    run = aml.fake.add_run(aml.pipeline["Id"], experiment=aml.settings.experiment_name, status="Running")
    response = app.cancel_run(run.run_id, params={"code": "FUNCTION-KEY"})
    assert_cancel_requested(response, run.run_id)
    assert response.json["run_id"] == run.run_id
    assert aml.fake.runs[run.run_id].cancel_requested
    aml.fake.set_run_status(run.run_id, "Canceled")  # Azure ML takes a while to settle a cancel
    assert app.get_run(run.run_id).json["status"] == "canceled"


def test_aml_bad_input_sends_nothing_to_azure_ml(app, aml):
    # One fake for every case (starting the fakes is the slow part); each case says which input it was.
    for case in BAD_BODIES:
        body, says = case.values
        response = app.start_run(body)
        assert 400 <= response.status < 500 and says in response.json["error"]["message"], case.id
    for run_id in BAD_RUN_IDS:
        assert app.get_run(run_id).status == 400, run_id
        assert app.cancel_run(run_id).status == 400, run_id
        assert app.list_runs({"limit": run_id}).status == 400, run_id
    assert aml.fake.requests == []
    assert aml.fake.runs == {}


# Azure ML faults, each mapped to the status of docs/product.md. `times=None`: the fault lasts, so retries
# (a fresh token after a 401, for one) meet it too.
RUN_PATH = r"/PipelineRuns/[^/]+$"


@pytest.mark.parametrize(
    "fault, status, code, says",
    [
        ({"status": 401}, 502, "azureml_unauthorized", "audience"),
        ({"status": 403}, 502, "azureml_forbidden", "AzureML Data Scientist"),
        ({"status": 500}, 502, "azureml_service_error", "500"),
        ({"status": 400}, 502, "azureml_error", "400"),
        ({"status": 429, "retry_after": 7}, 503, "azureml_throttled", "throttl"),
        ({"status": 503, "retry_after": 12}, 503, "azureml_throttled", "throttl"),
        ({"drop": True}, 504, "azureml_unreachable", ""),
    ],
)
def test_aml_faults_on_run_status_map_to_gateway_errors(app, aml, fault, status, code, says):
    run = aml.fake.add_run(aml.pipeline["Id"], experiment=aml.settings.experiment_name)
    aml.fake.inject_fault("GET", RUN_PATH, times=None, **fault)
    response = app.get_run(run.run_id)
    message = assert_error(response, status, code)
    assert says in message
    if "retry_after" in fault:
        assert response.headers["Retry-After"] == str(fault["retry_after"])
    if fault.get("status"):
        # the fake's error body carries a correlation id; the caller gets it to quote to support
        assert "correlation id" in message


def test_aml_404_from_azure_ml_on_a_run_is_our_404(app, aml):
    run = aml.fake.add_run(aml.pipeline["Id"], experiment=aml.settings.experiment_name)
    aml.fake.inject_fault("GET", RUN_PATH, status=404, times=None)
    assert_error(app.get_run(run.run_id), 404, "run_not_found")


def test_aml_timeout_is_504(app, aml, monkeypatch):
    monkeypatch.setenv("AML_REQUEST_TIMEOUT_SECONDS", "1")
    reset_service()
    aml.fake.inject_fault("GET", "/PipelineEndpoints/Name", delay=3, times=None)
    message = assert_error(app.list_runs(), 504, "azureml_unreachable")
    assert message


@pytest.mark.parametrize(
    "fault, status, code",
    [
        ({"status": 429, "retry_after": 5}, 503, "azureml_throttled"),
        ({"status": 403}, 502, "azureml_forbidden"),
        ({"status": 500}, 502, "azureml_service_error"),
    ],
)
def test_aml_faults_on_submit_map_to_gateway_errors(app, aml, fault, status, code):
    aml.fake.inject_fault("POST", "PipelineEndpointSubmit", times=None, **fault)
    response = app.start_run({"parameters": {"sample_size": 5}})
    assert_error(response, status, code)
    if status == 503:
        assert response.headers["Retry-After"] == "5"


def test_aml_identity_endpoint_down_is_a_502_naming_the_identity(app, aml, fake_identity):
    fake_identity.fail(status=500)
    message = assert_error(app.list_runs(), 502, "token_unavailable")
    assert "identity" in message
    assert aml.fake.calls(path_contains="/pipelines/") == []


def test_aml_an_unreadable_answer_is_a_5xx_without_a_traceback(app, aml):
    run = aml.fake.add_run(aml.pipeline["Id"], experiment=aml.settings.experiment_name)
    aml.fake.inject_fault("GET", RUN_PATH, status=200, body=b"<html>gateway page</html>", times=None)
    response = app.get_run(run.run_id)
    assert response.status in (500, 502), response
    assert "Traceback" not in response.json["error"]["message"]


# --- the local backend: the same routes run and report local runs ------------------------------------
@pytest.fixture
def local(local_env):
    """The local backend in a tmp work dir; runs still going at the end are canceled and waited for, so
    no runner outlives its test."""
    yield local_env
    end_local_runs()


def _wait_until_ended(app: LoadedApp, run_id: str) -> dict:
    return wait_for(lambda: (body := app.get_run(run_id).json)["terminal"] and body, timeout=120)


@pytest.mark.slow
def test_local_run_through_the_routes_from_start_to_completed(app, local):
    response = app.start_run({"parameters": {"sample_size": 5}}, params={"code": "FUNCTION-KEY"})
    run_id = assert_run_started(response)
    assert response.json["current"] is True and response.json["pipeline_version"]
    assert response.json["status"] in ("queued", "running")

    first = app.get_run(run_id)
    assert first.status == 200 and set(first.json) >= RUN_KEYS
    assert [step["name"] for step in first.json["steps"]] == ["fetch_data", "predict", "save_predictions"]

    done = _wait_until_ended(app, run_id)
    assert (done["status"], done["terminal"]) == ("completed", True), done
    assert done["ended_at"] and done["created_at"]
    assert [step["status"] for step in done["steps"]] == ["completed"] * 3
    assert [r["run_id"] for r in app.list_runs().json["runs"]] == [run_id]


def test_local_list_is_newest_first_and_cancel_answers_202(app, local):
    first = app.start_run().json["run_id"]
    second = app.start_run().json["run_id"]
    runs = app.list_runs().json["runs"]
    assert [r["run_id"] for r in runs] == [second, first]
    assert [r["run_id"] for r in app.list_runs({"limit": "1"}).json["runs"]] == [second]
    for run_id in (second, first):
        assert_cancel_requested(app.cancel_run(run_id), run_id)
        assert app.get_run(run_id).json["status"] in ("canceling", "canceled")
    for run_id in (first, second):
        assert _wait_until_ended(app, run_id)["status"] == "canceled"


def test_local_bad_parameters_start_nothing(app, local):
    for body in (b'{"parameters": {"sample_size": -3}}', b'{"parameters": {"colour": "red"}}', b"[1]"):
        assert app.start_run(body).status == 400
    assert app.list_runs().json == {"runs": []}


# --- both backends ---------------------------------------------------------------------------------------
@pytest.fixture(params=["azureml", "local"])
def backend(request) -> str:
    """The backend the test id names, set up as the `aml` or `local` fixture sets it up; gives its name."""
    request.getfixturevalue({"azureml": "aml", "local": "local"}[request.param])
    return request.param


@pytest.mark.parametrize("run_id", ["no-such-run", "local_20260101T000000_abcdef", "nope"])
def test_an_unknown_run_is_404_naming_it_on_status_and_cancel(app, backend, run_id):
    for response in (app.get_run(run_id), app.cancel_run(run_id)):
        assert run_id in assert_error(response, 404, "run_not_found")
