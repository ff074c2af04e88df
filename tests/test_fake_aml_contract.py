"""The fake Azure ML service over plain HTTP: entity and error shapes, run life, faults, the request log and
the bearer-token check, as the Azure ML v1 REST contract describes the real service."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests

from emulator.aml import DEFAULT_STEP_NAMES, FakeAzureML
from emulator.identity import make_token

ARM_TOKEN = make_token("https://management.azure.com", 1)
AUTH = {"Authorization": f"Bearer {ARM_TOKEN}"}


def _jwt(audience: str) -> str:
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part({'aud': audience})}.sig"


def get(url: str, **kwargs) -> requests.Response:
    return requests.get(url, headers=kwargs.pop("headers", AUTH), timeout=kwargs.pop("timeout", 5), **kwargs)


def post(url: str, body=None, **kwargs) -> requests.Response:
    return requests.post(
        url, json=body, headers=kwargs.pop("headers", AUTH), timeout=kwargs.pop("timeout", 5), **kwargs
    )


def put(url: str, body=None, **kwargs) -> requests.Response:
    return requests.put(url, json=body, headers=kwargs.pop("headers", AUTH), timeout=5, **kwargs)


def delete(url: str, **kwargs) -> requests.Response:
    return requests.delete(url, headers=kwargs.pop("headers", AUTH), timeout=5, **kwargs)


def assert_pipelines_error(response: requests.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    error = body["Error"]
    assert set(error) >= {"Code", "Message", "Target", "Details", "InnerError"}
    assert error["Details"] == []
    assert set(body["Correlation"]) == {"operation", "request"}
    if code:
        assert error["Code"] == code
    assert response.headers["x-ms-request-id"]
    return error


def assert_history_error(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["details"] == []
    assert {"code", "message"} <= set(body["error"])
    assert set(body["correlation"]) == {"operation", "request"}
    return body["error"]


@pytest.fixture
def published(fake_aml: FakeAzureML) -> dict:
    return fake_aml.add_published_pipeline("batch", "fp-1", {"sample_size": "10", "model_version": "latest"})


@pytest.fixture
def endpoint(fake_aml: FakeAzureML, published: dict) -> dict:
    return fake_aml.add_endpoint("house-prices", published["Id"])


def submit_to(
    fake_aml: FakeAzureML, endpoint: dict, body: dict | None = None, suffix: str = ""
) -> requests.Response:
    body = body if body is not None else {"ExperimentName": "exp"}
    return post(
        f"{fake_aml.pipelines_url}/PipelineRuns/PipelineEndpointSubmit/Id/{endpoint['Id']}{suffix}", body
    )


# ---------------------------------------------------------------- discovery and auth
def test_discovery_answers_without_a_token_and_points_every_service_at_the_fake(fake_aml):
    response = requests.get(fake_aml.discovery_url, timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert body["api"] == body["history"] == body["pipelines"] == fake_aml.base_url


def test_a_request_without_a_bearer_token_gets_401_in_each_service_error_shape(fake_aml):
    no_auth = {"headers": {}}
    error = assert_pipelines_error(get(f"{fake_aml.pipelines_url}/Pipelines", **no_auth), 401)
    assert error["Code"] == "AuthenticationFailed"
    assert_history_error(get(f"{fake_aml.history_url}/runs/abc", **no_auth), 401)
    basic = {"headers": {"Authorization": "Basic dXNlcjpwdw=="}}
    response = get(f"{fake_aml.pipelines_url}/Pipelines", **basic)
    assert_pipelines_error(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_token_for_another_audience_gets_401_invalid_audience(fake_aml):
    storage = {"headers": {"Authorization": f"Bearer {make_token('https://storage.azure.com', 2)}"}}
    assert_pipelines_error(get(f"{fake_aml.pipelines_url}/Pipelines", **storage), 401, "InvalidAudience")
    jwt = {"headers": {"Authorization": f"Bearer {_jwt('https://ml.azure.com')}"}}
    assert_pipelines_error(get(f"{fake_aml.pipelines_url}/Pipelines", **jwt), 401, "InvalidAudience")


@pytest.mark.parametrize(
    "token",
    [
        make_token("https://management.azure.com", 3),
        make_token("https://management.core.windows.net/", 4),
        _jwt("https://management.azure.com/"),
        "opaque-test-token",
    ],
)
def test_arm_tokens_and_opaque_test_tokens_are_accepted(fake_aml, token):
    response = get(f"{fake_aml.pipelines_url}/Pipelines", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


def test_the_audience_check_can_be_turned_off(fake_aml):
    fake_aml.require_audience = False
    storage = {"Authorization": f"Bearer {make_token('https://storage.azure.com', 2)}"}
    assert get(f"{fake_aml.pipelines_url}/Pipelines", headers=storage).status_code == 200
    assert get(f"{fake_aml.pipelines_url}/Pipelines", headers={}).status_code == 401


def test_another_workspace_or_an_unknown_route_is_404(fake_aml):
    other = fake_aml.pipelines_url.replace("ws-test", "ws-other")
    assert_pipelines_error(get(f"{other}/Pipelines"), 404, "WorkspaceNotFound")
    assert_pipelines_error(get(f"{fake_aml.pipelines_url}/NoSuchThing"), 404, "RouteNotFound")


# ---------------------------------------------------------------- published pipelines
def test_published_pipeline_entity_has_the_documented_fields(fake_aml, published):
    response = get(f"{fake_aml.pipelines_url}/Pipelines/{published['Id']}")
    assert response.status_code == 200
    entity = response.json()
    for key in (
        "Id",
        "Name",
        "Description",
        "Version",
        "Url",
        "GraphId",
        "TotalRunSteps",
        "ParameterAssignments",
        "EntityStatus",
        "ContinueRunOnStepFailure",
        "Properties",
        "CreatedDate",
        "LastModifiedDate",
        "Etag",
    ):
        assert key in entity, key
    assert entity["Url"] == f"{fake_aml.pipelines_url}/PipelineRuns/PipelineSubmit/{published['Id']}"
    assert entity["ParameterAssignments"] == {"sample_size": "10", "model_version": "latest"}
    assert entity["TotalRunSteps"] == 3


def test_unknown_pipeline_is_404_with_a_pascal_case_error(fake_aml):
    assert_pipelines_error(
        get(f"{fake_aml.pipelines_url}/Pipelines/00000000-0000-0000-0000-00000000dead"), 404
    )


def test_pipeline_list_filters_disabled_ones_unless_active_only_is_false(fake_aml, published):
    disabled = fake_aml.add_published_pipeline("batch", "fp-0", status="Disabled")
    active = get(f"{fake_aml.pipelines_url}/Pipelines", params={"activeOnly": "true"}).json()
    every = get(f"{fake_aml.pipelines_url}/Pipelines", params={"activeOnly": "false"}).json()
    assert [p["Id"] for p in active] == [published["Id"]]
    assert {p["Id"] for p in every} == {published["Id"], disabled["Id"]}


def test_put_status_disables_a_pipeline_and_a_submit_to_it_is_404(fake_aml, published):
    response = put(f"{fake_aml.pipelines_url}/Pipelines/{published['Id']}/status", "Disabled")
    assert (response.status_code, response.content) == (200, b"")
    assert fake_aml.pipelines[published["Id"]]["EntityStatus"] == "Disabled"
    submit = post(published["Url"], {"ExperimentName": "exp"})
    assert_pipelines_error(submit, 404)
    assert fake_aml.runs == {}


# ---------------------------------------------------------------- endpoints
def test_endpoint_is_found_by_name_and_by_id_and_lists_its_pipelines(fake_aml, endpoint, published):
    by_name = get(f"{fake_aml.pipelines_url}/PipelineEndpoints/Name", params={"Name": "house-prices"}).json()
    by_id = get(f"{fake_aml.pipelines_url}/PipelineEndpoints/Id/{endpoint['Id']}").json()
    assert by_name == by_id == endpoint
    assert by_id["DefaultVersion"] == "0"
    assert by_id["PipelineVersionList"] == [{"Version": "0", "PipelineId": published["Id"]}]
    pipelines = get(
        f"{fake_aml.pipelines_url}/PipelineEndpoints/{endpoint['Id']}/pipelines",
        params={"activeOnly": "true"},
    ).json()
    assert [p["Id"] for p in pipelines] == [published["Id"]]
    listed = get(
        f"{fake_aml.pipelines_url}/PipelineEndpoints",
        params={"activeOnly": "true"},
        headers={**AUTH, "BatchSize": "100"},
    ).json()
    assert [e["Id"] for e in listed] == [endpoint["Id"]]


def test_unknown_endpoint_name_is_404(fake_aml):
    response = get(f"{fake_aml.pipelines_url}/PipelineEndpoints/Name", params={"Name": "nope"})
    assert_pipelines_error(response, 404)


def test_endpoint_create_makes_version_0_and_a_second_create_of_the_name_is_409(fake_aml, published):
    body = {"Name": "ep", "Description": "d", "PipelineId": published["Id"], "Properties": {}}
    created = post(f"{fake_aml.pipelines_url}/PipelineEndpoints/Create", body)
    assert created.status_code == 200
    entity = created.json()
    assert (entity["Name"], entity["DefaultVersion"], entity["EntityStatus"]) == ("ep", "0", "Active")
    assert entity["Url"].endswith(f"/PipelineRuns/PipelineEndpointSubmit/Id/{entity['Id']}")
    again = post(f"{fake_aml.pipelines_url}/PipelineEndpoints/Create", body)
    assert_pipelines_error(again, 409, "Conflict")
    assert len(fake_aml.endpoints) == 1


def test_put_replaces_the_endpoint_and_changes_its_etag(fake_aml, endpoint, published):
    newer = fake_aml.add_published_pipeline("batch", "fp-2")
    entity = get(f"{fake_aml.pipelines_url}/PipelineEndpoints/Id/{endpoint['Id']}").json()
    entity["PipelineVersionList"].append({"Version": "1", "PipelineId": newer["Id"]})
    entity["DefaultVersion"] = "1"
    response = put(f"{fake_aml.pipelines_url}/PipelineEndpoints/{endpoint['Id']}", entity)
    assert response.status_code == 200
    stored = fake_aml.endpoints[endpoint["Id"]]
    assert stored["DefaultVersion"] == "1"
    assert [v["PipelineId"] for v in stored["PipelineVersionList"]] == [published["Id"], newer["Id"]]
    assert stored["Etag"] != entity["Etag"]
    run = submit_to(fake_aml, endpoint).json()
    assert run["PipelineId"] == newer["Id"]


def test_put_with_a_stale_if_match_is_412_and_changes_nothing(fake_aml, endpoint):
    entity = dict(fake_aml.endpoints[endpoint["Id"]], EntityStatus="Disabled")
    response = put(
        f"{fake_aml.pipelines_url}/PipelineEndpoints/{endpoint['Id']}",
        entity,
        headers={**AUTH, "If-Match": '"stale"'},
    )
    assert_pipelines_error(response, 412)
    assert fake_aml.endpoints[endpoint["Id"]]["EntityStatus"] == "Active"


def test_put_with_a_stale_body_etag_is_412_only_in_strict_mode(fake_aml, endpoint):
    stale = dict(fake_aml.endpoints[endpoint["Id"]], Etag='"stale"', Description="changed")
    assert put(f"{fake_aml.pipelines_url}/PipelineEndpoints/{endpoint['Id']}", stale).status_code == 200
    fake_aml.strict_etag = True
    assert_pipelines_error(put(f"{fake_aml.pipelines_url}/PipelineEndpoints/{endpoint['Id']}", stale), 412)


def test_put_with_a_default_version_not_in_the_list_is_400(fake_aml, endpoint):
    entity = dict(fake_aml.endpoints[endpoint["Id"]], DefaultVersion="7")
    assert_pipelines_error(put(f"{fake_aml.pipelines_url}/PipelineEndpoints/{endpoint['Id']}", entity), 400)


# ---------------------------------------------------------------- submitting
def test_endpoint_submit_copies_experiment_parameters_and_tags_and_creates_step_runs(
    fake_aml, endpoint, published
):
    body = {
        "ExperimentName": "exp-1",
        "RunSource": "API",
        "ParameterAssignments": {"sample_size": "5"},
        "tags": {"trigger": "timer"},
    }
    response = submit_to(fake_aml, endpoint, body)
    assert response.status_code == 200
    entity = response.json()
    run = fake_aml.runs[entity["Id"]]
    assert entity["Status"]["StatusCode"] == "NotStarted"
    assert entity["PipelineId"] == published["Id"]
    assert entity["RunHistoryExperimentName"] == "exp-1"
    assert entity["ParameterAssignments"] == {"sample_size": "5", "model_version": "latest"}
    assert entity["tags"] == {"trigger": "timer"}
    assert (run.experiment, run.tags, run.pipeline_id) == ("exp-1", {"trigger": "timer"}, published["Id"])
    assert [s.name for s in run.steps] == list(DEFAULT_STEP_NAMES)


def test_submit_turns_json_primitives_into_strings_as_the_service_does(fake_aml, endpoint):
    entity = submit_to(
        fake_aml, endpoint, {"ExperimentName": "e", "ParameterAssignments": {"sample_size": 5}}
    ).json()
    assert entity["ParameterAssignments"]["sample_size"] == "5"


def test_submit_of_a_given_version_or_by_name_picks_that_pipeline(fake_aml, endpoint, published):
    newer = fake_aml.add_published_pipeline("batch", "fp-2")
    fake_aml.add_endpoint_version(endpoint["Id"], newer["Id"], make_default=True)
    by_version = submit_to(fake_aml, endpoint, suffix="/0?pipelineVersion=0").json()
    assert by_version["PipelineId"] == published["Id"]
    by_name = post(
        f"{fake_aml.pipelines_url}/PipelineRuns/PipelineEndpointSubmit/Name",
        {"ExperimentName": "e"},
        params={"name": "house-prices"},
    ).json()
    assert by_name["PipelineId"] == newer["Id"]
    assert_pipelines_error(submit_to(fake_aml, endpoint, suffix="/9?pipelineVersion=9"), 404)


def test_submit_without_experiment_name_or_with_an_unknown_parameter_is_400(fake_aml, endpoint):
    assert_pipelines_error(submit_to(fake_aml, endpoint, {}), 400)
    unknown = {"ExperimentName": "e", "ParameterAssignments": {"nope": "1"}}
    assert_pipelines_error(submit_to(fake_aml, endpoint, unknown), 400, "ParameterNotFound")
    assert fake_aml.runs == {}


def test_submit_to_an_unknown_or_disabled_endpoint_is_404(fake_aml, endpoint):
    assert_pipelines_error(submit_to(fake_aml, {"Id": "00000000-0000-0000-0000-00000000dead"}), 404)
    fake_aml.endpoints[endpoint["Id"]]["EntityStatus"] = "Disabled"
    assert_pipelines_error(submit_to(fake_aml, endpoint), 404)
    assert fake_aml.runs == {}


def test_pipeline_submit_posts_to_the_pipeline_url(fake_aml, published):
    entity = post(
        published["Url"], {"ExperimentName": "exp", "ParameterAssignments": {"model_version": "3"}}
    ).json()
    assert entity["PipelineId"] == published["Id"]
    assert entity["ParameterAssignments"] == {"sample_size": "10", "model_version": "3"}


def test_step_names_come_from_the_published_graph_when_known(fake_aml):
    pipeline = fake_aml.add_published_pipeline("batch", "1", step_names=["a", "b"])
    run = fake_aml.add_run(pipeline["Id"])
    assert [s.name for s in run.steps] == ["a", "b"]


# ---------------------------------------------------------------- runs, steps, run history
def test_runs_of_a_pipeline_are_listed_in_creation_order(fake_aml, published):
    first = fake_aml.add_run(published["Id"])
    second = fake_aml.add_run(published["Id"], status="Running")
    other = fake_aml.add_published_pipeline("other", "1")
    fake_aml.add_run(other["Id"])
    listed = get(f"{fake_aml.pipelines_url}/PipelineRuns/Pipeline/{published['Id']}").json()
    assert [(r["Id"], r["Status"]["StatusCode"]) for r in listed] == [
        (first.run_id, "NotStarted"),
        (second.run_id, "Running"),
    ]
    assert listed[0]["CreatedDate"] < listed[1]["CreatedDate"]


def test_run_status_is_spelled_per_service(fake_aml, published):
    run = fake_aml.add_run(published["Id"], experiment="exp")
    for status, history in (
        ("Running", "Running"),
        ("Finished", "Completed"),
        ("Failed", "Failed"),
        ("Canceled", "Canceled"),
        ("NotStarted", "NotStarted"),
    ):
        fake_aml.set_run_status(run.run_id, status)
        entity = get(f"{fake_aml.pipelines_url}/PipelineRuns/{run.run_id}").json()
        dto = get(f"{fake_aml.history_url}/experiments/exp/runs/{run.run_id}").json()
        assert (entity["Status"]["StatusCode"], dto["status"]) == (status, history)


def test_run_history_knows_the_run_with_or_without_its_experiment(fake_aml, published):
    run = fake_aml.add_run(published["Id"], experiment="exp", tags={"k": "v"})
    with_experiment = get(f"{fake_aml.history_url}/experiments/exp/runs/{run.run_id}").json()
    without = get(f"{fake_aml.history_url}/runs/{run.run_id}").json()
    assert with_experiment == without
    assert (without["runId"], without["runType"], without["parentRunId"]) == (
        run.run_id,
        "azureml.PipelineRun",
        None,
    )
    assert without["tags"]["k"] == "v"
    assert_history_error(get(f"{fake_aml.history_url}/experiments/other/runs/{run.run_id}"), 404)
    assert_history_error(get(f"{fake_aml.history_url}/runs/no-such-run"), 404)
    assert_pipelines_error(get(f"{fake_aml.pipelines_url}/PipelineRuns/no-such-run"), 404)


def test_children_are_the_step_runs_with_node_and_pipeline_tags(fake_aml, published):
    run = fake_aml.add_run(published["Id"], experiment="exp")
    body = get(
        f"{fake_aml.history_url}/experiments/exp/runs/{run.run_id}/children",
        params={"$orderby": "StartTimeUtc desc", "$top": "500"},
    ).json()
    assert body["continuationToken"] is None
    children = {c["name"]: c for c in body["value"]}
    assert set(children) == set(DEFAULT_STEP_NAMES)
    for step in run.steps:
        child = children[step.name]
        assert child["runId"] == step.run_id
        assert child["parentRunId"] == run.run_id
        assert child["runType"] == "azureml.StepRun"
        assert child["tags"] == {"azureml.nodeid": step.node_id, "azureml.pipeline": run.run_id}


def test_graph_node_statuses_follow_the_steps(fake_aml, published):
    run = fake_aml.add_run(published["Id"])
    url = f"{fake_aml.pipelines_url}/PipelineRuns/{run.run_id}/Graph/AllNodes/Status"
    assert {v["StatusCode"] for v in post(url, []).json().values()} == {"NotStarted"}
    fake_aml.set_run_status(run.run_id, "Running", steps={"fetch_data": "Completed", "predict": "Running"})
    nodes = post(url, []).json()
    by_name = {s.name: nodes[s.node_id] for s in run.steps}
    assert {n: v["StatusCode"] for n, v in by_name.items()} == {
        "fetch_data": "Finished",
        "predict": "Running",
        "save_predictions": "NotStarted",
    }
    assert by_name["predict"]["RunId"] == run.step("predict").run_id
    fake_aml.set_run_status(run.run_id, "Failed")
    assert run.step("save_predictions").status == "Failed"
    dto = get(f"{fake_aml.history_url}/runs/{run.run_id}").json()
    assert dto["status"] == "Failed"
    assert dto["error"]["error"]["details"] == []


def test_set_run_status_rejects_unknown_words(fake_aml, published):
    run = fake_aml.add_run(published["Id"])
    with pytest.raises(ValueError):
        fake_aml.set_run_status(run.run_id, "Done")
    with pytest.raises(ValueError):
        fake_aml.set_run_status(run.run_id, "Running", steps={"predict": "Busy"})


def test_cancel_requests_cancellation_and_the_run_ends_when_the_test_says_so(fake_aml, published):
    run = fake_aml.add_run(published["Id"], status="Running")
    response = delete(f"{fake_aml.pipelines_url}/PipelineRuns/{run.run_id}/Execution")
    assert (response.status_code, response.content) == (200, b"")
    assert get(f"{fake_aml.history_url}/runs/{run.run_id}").json()["status"] == "CancelRequested"
    assert (
        get(f"{fake_aml.pipelines_url}/PipelineRuns/{run.run_id}").json()["Status"]["StatusCode"] == "Running"
    )
    assert {s.status for s in run.steps} == {"CancelRequested"}
    fake_aml.set_run_status(run.run_id, "Canceled")
    assert get(f"{fake_aml.history_url}/runs/{run.run_id}").json()["status"] == "Canceled"
    assert {s.status for s in run.steps} == {"Canceled"}


def test_cancel_settles_at_once_when_asked_and_leaves_ended_runs_alone(fake_aml, published):
    fake_aml.cancel_settles = True
    running = fake_aml.add_run(published["Id"], status="Running")
    finished = fake_aml.add_run(published["Id"], status="Finished")
    for run in (running, finished):
        assert delete(f"{fake_aml.pipelines_url}/PipelineRuns/{run.run_id}/Execution").status_code == 200
    assert (running.status, running.history_status) == ("Canceled", "Canceled")
    assert (finished.status, finished.history_status) == ("Finished", "Completed")
    assert_pipelines_error(delete(f"{fake_aml.pipelines_url}/PipelineRuns/nope/Execution"), 404)


def test_times_are_injected_through_the_clock():
    start = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    with FakeAzureML(clock=lambda: start) as aml:
        pipeline = aml.add_published_pipeline("p", "1")
        first, second = aml.add_run(pipeline["Id"]), aml.add_run(pipeline["Id"])
    # a frozen clock still gives strictly increasing times, a millisecond apart
    assert start < first.created < start + timedelta(seconds=1)
    assert second.created > first.created
    assert first.entity["CreatedDate"].startswith("2030-01-02T03:04:05.")


# ---------------------------------------------------------------- publish support
def test_default_datastore_and_data_types_are_served(fake_aml):
    store = get(f"{fake_aml.base_url}/datastore/v1.0{fake_aml.workspace_path}/default").json()
    assert store["name"] == "workspaceblobstore"
    names = {t["Id"] for t in get(f"{fake_aml.pipelines_url}/DataTypes").json()}
    assert {"AnyFile", "AnyDirectory", "AzureBlobReference"} <= names
    again = post(f"{fake_aml.pipelines_url}/DataTypes", {"Id": "AnyFile", "Name": "AnyFile"})
    assert "already exist" in assert_pipelines_error(again, 400)["Message"]


def test_snapshot_getblob_asks_for_no_upload(fake_aml):
    url = f"{fake_aml.base_url}/content/v2.0{fake_aml.workspace_path}/snapshots/getblob"
    assert post(url, {"FileNames": ["a.py"]}).json() == {"fileNodes": []}


# ---------------------------------------------------------------- faults
def test_fault_status_answers_an_error_body_with_retry_after_for_the_given_times(fake_aml, published):
    fake_aml.inject_fault("GET", r"/Pipelines/", status=429, retry_after=7, times=2)
    url = f"{fake_aml.pipelines_url}/Pipelines/{published['Id']}"
    for _ in range(2):
        response = get(url)
        assert_pipelines_error(response, 429, "TooManyRequests")
        assert response.headers["Retry-After"] == "7"
    assert get(url).status_code == 200
    assert fake_aml.pending_faults == []


def test_fault_in_run_history_uses_the_camel_case_shape(fake_aml):
    fake_aml.inject_fault("GET", r"^/history/", status=503)
    assert_history_error(get(f"{fake_aml.history_url}/runs/x"), 503)


def test_fault_matches_method_and_path_only(fake_aml, published):
    fake_aml.inject_fault("POST", r"/PipelineSubmit/", status=500)
    assert get(f"{fake_aml.pipelines_url}/Pipelines/{published['Id']}").status_code == 200
    assert post(published["Url"], {"ExperimentName": "e"}).status_code == 500
    assert fake_aml.runs == {}


def test_fault_with_a_custom_body(fake_aml):
    fake_aml.inject_fault(None, r"/Pipelines$", status=502, body="<html>Bad Gateway</html>")
    response = get(f"{fake_aml.pipelines_url}/Pipelines")
    assert (response.status_code, response.text) == (502, "<html>Bad Gateway</html>")


def test_dropped_connection_is_a_connection_error(fake_aml):
    fake_aml.inject_fault("GET", r"/Pipelines$", drop=True)
    with pytest.raises(requests.ConnectionError):
        get(f"{fake_aml.pipelines_url}/Pipelines")
    assert fake_aml.requests[-1].status is None


def test_after_handling_the_submit_creates_the_run_but_the_answer_is_lost(fake_aml, endpoint):
    fake_aml.inject_fault("POST", r"/PipelineEndpointSubmit/", after_handling=True)
    with pytest.raises(requests.ConnectionError):
        submit_to(fake_aml, endpoint)
    assert len(fake_aml.runs) == 1
    fake_aml.inject_fault("POST", r"/PipelineEndpointSubmit/", status=504, after_handling=True)
    assert_pipelines_error(submit_to(fake_aml, endpoint), 504)
    assert len(fake_aml.runs) == 2


def test_a_delayed_request_times_out_the_client_without_blocking_others(fake_aml, published):
    fake_aml.inject_fault("GET", r"/Pipelines$", delay=2)
    with pytest.raises(requests.Timeout):
        get(f"{fake_aml.pipelines_url}/Pipelines", timeout=0.3)
    started = time.monotonic()
    assert get(f"{fake_aml.pipelines_url}/Pipelines/{published['Id']}").status_code == 200
    assert time.monotonic() - started < 1.0


def test_stop_interrupts_a_pending_delay():
    aml = FakeAzureML().start()
    aml.inject_fault("GET", r"/Pipelines$", delay=30)
    outcome: list[object] = []

    def call():
        try:
            outcome.append(get(f"{aml.pipelines_url}/Pipelines", timeout=60).status_code)
        except requests.RequestException as error:
            outcome.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    while not aml.requests:  # until the request has reached the fake
        time.sleep(0.01)
    started = time.monotonic()
    aml.stop()
    caller.join(timeout=10)
    assert not caller.is_alive()
    assert time.monotonic() - started < 5
    assert isinstance(outcome[0], requests.ConnectionError)


# ---------------------------------------------------------------- request log
def test_request_log_records_method_path_query_headers_and_body(fake_aml, endpoint):
    fake_aml.clear_requests()
    submit_to(fake_aml, endpoint, {"ExperimentName": "e"}, suffix="/0?pipelineVersion=0")
    (record,) = fake_aml.requests
    assert record.method == "POST"
    assert (
        record.path
        == f"/pipelines/v1.0{fake_aml.workspace_path}/PipelineRuns/PipelineEndpointSubmit/Id/{endpoint['Id']}/0"
    )
    assert record.query == {"pipelineVersion": "0"}
    assert record.header("authorization") == f"Bearer {ARM_TOKEN}"
    assert record.headers.get("AUTHORIZATION") == f"Bearer {ARM_TOKEN}"
    assert record.json() == {"ExperimentName": "e"}
    assert record.status == 200
    assert record.audience == "https://management.azure.com"
    assert fake_aml.calls("post", "pipelineendpointsubmit") == [record]
    assert fake_aml.calls("GET") == []


# ---------------------------------------------------------------- command line
def test_module_command_line_serves_a_seeded_endpoint_until_interrupted():
    process = subprocess.Popen(
        [sys.executable, "-m", "emulator.aml", "--port", "0", "--seed-endpoint", "ep"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        seeded = json.loads(process.stdout.readline())
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        ws = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-test/providers/Microsoft.MachineLearningServices/workspaces/ws-test"
        found = get(f"{base_url}/pipelines/v1.0{ws}/PipelineEndpoints/Name", params={"Name": "ep"}).json()
        assert found["Id"] == seeded["endpoint_id"]
    finally:
        process.terminate()
        process.wait(timeout=10)


# ----- run history's runs:query (the filtered, limited listing of Run.list / Experiment.get_runs)
PIPELINE_RUNS = "(RunType eq azureml.PipelineRun or Properties/azureml.runsource eq azureml.PipelineRun)"


def _query(fake_aml, experiment: str, **body) -> requests.Response:
    return post(f"{fake_aml.history_url}/experiments/{experiment}/runs:query", body)


def test_runs_query_filters_orders_and_pages_with_a_continuation_token(fake_aml):
    ours = fake_aml.add_published_pipeline("batch", "1")
    other = fake_aml.add_published_pipeline("other", "1")
    runs = [fake_aml.add_run(ours["Id"], experiment="exp", tags={"trigger": "timer"}) for _ in range(3)]
    fake_aml.add_run(other["Id"], experiment="exp", tags={"trigger": "timer"})
    fake_aml.add_run(ours["Id"], experiment="elsewhere", tags={"trigger": "timer"})
    mine = (
        f'({PIPELINE_RUNS} and (Properties/azureml.pipelineid eq "{ours["Id"]}") and (ParentRunId eq null))'
    )

    first = _query(fake_aml, "exp", filter=mine, orderby="CreatedUtc desc", top=2)
    assert first.status_code == 200, first.text
    page = first.json()
    assert [dto["runId"] for dto in page["value"]] == [runs[2].run_id, runs[1].run_id]
    assert page["continuationToken"]
    second = _query(
        fake_aml,
        "exp",
        filter=mine,
        orderby="CreatedUtc desc",
        top=2,
        continuationToken=page["continuationToken"],
    ).json()
    assert [dto["runId"] for dto in second["value"]] == [runs[0].run_id]
    assert second["continuationToken"] is None
    dto = page["value"][0]
    assert dto["runType"] == "azureml.PipelineRun" and dto["parentRunId"] is None
    assert dto["properties"]["azureml.pipelineid"] == ours["Id"] == dto["tags"]["azureml.pipelineid"]
    assert dto["tags"]["trigger"] == "timer"


def test_runs_query_without_a_parent_filter_also_finds_step_runs_and_their_errors(fake_aml):
    pipeline = fake_aml.add_published_pipeline("batch", "1")
    run = fake_aml.add_run(pipeline["Id"], experiment="exp")
    fake_aml.set_run_status(
        run.run_id,
        "Failed",
        steps={"predict": "Failed", "save_predictions": "Canceled"},
        step_errors={"predict": "error: model version 99"},
    )
    failed = _query(fake_aml, "exp", filter="(Status eq Failed)").json()["value"]
    assert {dto["runType"] for dto in failed} == {"azureml.PipelineRun", "azureml.StepRun"}
    (step,) = [dto for dto in failed if dto["runType"] == "azureml.StepRun"]
    assert step["error"]["error"]["message"] == "error: model version 99"
    assert _query(fake_aml, "exp", filter="(Status eq Failed) and (ParentRunId eq null)").json()["value"] == [
        next(dto for dto in failed if dto["runType"] == "azureml.PipelineRun")
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"filter": "(Colour eq red)"},
        {"filter": "(Status eq Running"},
        {"filter": "Status Running"},
        {"orderby": "Colour desc"},
        {"top": 0},
    ],
)
def test_runs_query_refuses_what_it_does_not_understand_with_400(fake_aml, body):
    fake_aml.add_run(fake_aml.add_published_pipeline("batch", "1")["Id"], experiment="exp")
    response = _query(fake_aml, "exp", **body)
    assert response.status_code == 400
    assert response.json()["error"]["details"] == []


def test_runs_query_of_an_unknown_experiment_is_404(fake_aml):
    assert _query(fake_aml, "never-used", filter=None).status_code == 404
