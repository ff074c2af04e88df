"""The Azure ML REST client against the fake service over real HTTP, with real azure-identity tokens from the
fake managed identity: the wire shape of each verb, and the fault matrix (typed errors, bounded retries,
submits that never start two runs). Time is injected: no test sleeps for real between retries."""

from __future__ import annotations

import dataclasses
import email.utils
import time

import pytest

from emulator.identity import token_resource
from pipeline_def.azureml.client import (
    SUBMISSION_TAG,
    AzureMLClient,
    Endpoint,
    EndpointVersion,
    PipelineRunInfo,
    PublishedPipelineInfo,
)
from pipeline_def.azureml.history_run import HistoryRun
from pipeline_def.azureml.odata import runs_filter
from pipeline_def.azureml.transport import parse_retry_after
from pipeline_def.budget import HTTP_MAX_ATTEMPTS, http_request_budget
from pipeline_def.errors import (
    AzureMLError,
    EntityChanged,
    Forbidden,
    NotFound,
    ServiceError,
    Throttled,
    TokenError,
    Unauthorized,
    Unreachable,
)
from pipeline_def.settings import load_settings
from tests.fixtures_fakes import FakeTime


@pytest.fixture
def settings(aml_env):
    return load_settings()


@pytest.fixture
def client(settings, clock) -> AzureMLClient:
    return _client_with(settings, clock)


def _client_with(settings, clock: FakeTime, **changes) -> AzureMLClient:
    """A client whose settings differ from the environment's by `changes` (timeouts, budget)."""
    return AzureMLClient(
        dataclasses.replace(settings, **changes), monotonic=clock.monotonic, sleep=clock.sleep
    )


@pytest.fixture
def published(fake_aml, settings):
    """An endpoint whose default version is an active pipeline."""
    pipeline = fake_aml.add_published_pipeline(settings.endpoint_name, "v1")
    endpoint = fake_aml.add_endpoint(settings.endpoint_name, pipeline["Id"])
    fake_aml.clear_requests()
    return endpoint, pipeline


def _submit(client, endpoint, pipeline, **tags):
    return client.submit_to_endpoint(
        endpoint["Id"], "exp-1", {"sample_size": "25"}, {"trigger": "test", **tags}
    )


# ----- auth and wire shape


def test_every_call_carries_an_arm_token_from_the_managed_identity(client, fake_aml, fake_identity):
    assert client.get_endpoint_by_name("no-such-endpoint") is None
    (request,) = fake_aml.requests
    scheme, token = request.header("Authorization").split(" ", 1)
    assert scheme == "Bearer"
    assert token_resource(token) == "https://management.azure.com"
    assert [resource for resource, _ in fake_identity.requests] == ["https://management.azure.com"]


class CountingCredential:
    """The real DefaultAzureCredential, counting how often the client asks it for a token."""

    def __init__(self) -> None:
        from azure.identity import DefaultAzureCredential

        self.inner = DefaultAzureCredential()
        self.asked: list[tuple[str, ...]] = []

    def get_token(self, *scopes, **kwargs):
        self.asked.append(scopes)
        return self.inner.get_token(*scopes, **kwargs)


def test_the_token_is_reused_until_five_minutes_before_it_expires(settings, fake_aml, fake_identity, clock):
    credential = CountingCredential()
    client = AzureMLClient(settings, credential, monotonic=clock.monotonic, sleep=clock.sleep)
    client.get_endpoint_by_name("a")
    client.get_endpoint_by_name("b")
    assert credential.asked == [("https://management.azure.com/.default",)]
    assert len({r.header("Authorization") for r in fake_aml.requests}) == 1

    fake_identity.expires_in = 200  # a token this close to expiry is never reused
    short = CountingCredential()
    client = AzureMLClient(settings, short, monotonic=clock.monotonic, sleep=clock.sleep)
    client.get_endpoint_by_name("c")
    client.get_endpoint_by_name("d")
    assert len(short.asked) == 2


def test_user_assigned_identity_client_id_is_sent_to_the_identity_endpoint(
    aml_env, monkeypatch, fake_aml, fake_identity, clock
):
    monkeypatch.setenv("AZURE_CLIENT_ID", "11111111-2222-3333-4444-555555555555")
    client = AzureMLClient(load_settings(), monotonic=clock.monotonic, sleep=clock.sleep)
    client.get_endpoint_by_name("x")
    assert fake_identity.requests[-1][1] == "11111111-2222-3333-4444-555555555555"


def test_endpoint_lookup_by_name_uses_the_name_query(client, fake_aml, published):
    endpoint, pipeline = published
    found = client.get_endpoint_by_name(endpoint["Name"])
    assert found is not None and found.id == endpoint["Id"]
    (request,) = fake_aml.requests
    assert request.method == "GET"
    assert request.path.endswith("/PipelineEndpoints/Name")
    assert request.query == {"Name": endpoint["Name"]}
    assert "/pipelines/v1.0/subscriptions/" in request.path


def test_submit_body_and_headers_follow_the_contract(client, fake_aml, published):
    endpoint, pipeline = published
    run = _submit(client, endpoint, pipeline)
    (request,) = fake_aml.requests
    assert request.method == "POST"
    assert request.path.endswith(f"/PipelineRuns/PipelineEndpointSubmit/Id/{endpoint['Id']}")
    assert request.header("Content-Type").startswith("application/json")
    assert token_resource(request.header("Authorization").split(" ", 1)[1]) == "https://management.azure.com"
    body = request.json()
    assert body["ExperimentName"] == "exp-1"
    assert body["ParameterAssignments"] == {"sample_size": "25"}
    assert all(isinstance(v, str) for v in body["ParameterAssignments"].values())
    assert body["tags"]["trigger"] == "test"
    assert len(body["tags"][SUBMISSION_TAG]) == 32
    assert run.id in fake_aml.runs
    fake_run = fake_aml.runs[run.id]
    assert fake_run.pipeline_id == pipeline["Id"]
    assert fake_run.experiment == "exp-1"
    assert fake_run.parameters.get("sample_size") == "25"


def test_parameter_values_are_sent_as_strings(client, fake_aml, published):
    endpoint, pipeline = published
    client.submit_to_endpoint(endpoint["Id"], "exp", {"sample_size": 0}, {})
    assert fake_aml.requests[-1].json()["ParameterAssignments"] == {"sample_size": "0"}


def test_disable_sends_the_json_string_status(client, fake_aml, published):
    endpoint, pipeline = published
    client.set_pipeline_status(pipeline["Id"], "Disabled")
    (request,) = fake_aml.requests
    assert request.method == "PUT" and request.path.endswith(f"/Pipelines/{pipeline['Id']}/status")
    assert request.json() == "Disabled"
    assert fake_aml.pipelines[pipeline["Id"]]["EntityStatus"] in ("Disabled", "2")


def test_runs_steps_and_cancel_use_their_own_paths(client, fake_aml, published):
    endpoint, pipeline = published
    fake_run = fake_aml.add_run(pipeline["Id"], experiment="exp-1")
    fake_aml.set_run_status(
        fake_run.run_id, "Running", steps={"fetch_data": "Completed", "predict": "Running"}
    )
    assert client.get_pipeline_run(fake_run.run_id).status_code == "Running"
    (listed,) = client.query_runs("exp-1", runs_filter(pipeline_ids=[pipeline["Id"]]), top=5)
    assert listed.run_id == fake_run.run_id
    fake_aml.clear_requests()
    children = client.get_step_runs("exp-1", fake_run.run_id)
    assert {c.name: c.status for c in children if c.name in ("fetch_data", "predict")} == {
        "fetch_data": "Completed",
        "predict": "Running",
    }
    history = [r for r in fake_aml.requests if "/history/v1.0/" in r.path]
    assert history and history[0].path.endswith(f"/experiments/exp-1/runs/{fake_run.run_id}/children")
    client.cancel_run(fake_run.run_id)
    assert fake_aml.requests[-1].method == "DELETE"
    assert fake_aml.requests[-1].path.endswith(f"/PipelineRuns/{fake_run.run_id}/Execution")


def test_the_run_history_read_of_a_run_is_camelcase_and_sees_a_cancel_first(client, fake_aml, published):
    endpoint, pipeline = published
    fake_run = fake_aml.add_run(pipeline["Id"], experiment="exp-1", status="Running")
    assert client.get_history_run("exp-1", fake_run.run_id).status == "Running"
    client.cancel_run(fake_run.run_id)
    dto = client.get_history_run("exp-1", fake_run.run_id)
    assert (dto.run_id, dto.status) == (fake_run.run_id, "CancelRequested")
    assert client.get_pipeline_run(fake_run.run_id).status_code == "Running"
    reads = fake_aml.calls(method="GET", path_contains="/history/")
    assert reads[0].path == f"/history/v1.0{fake_aml.workspace_path}/experiments/exp-1/runs/{fake_run.run_id}"
    with pytest.raises(NotFound):
        client.get_history_run("another-experiment", fake_run.run_id)


# ----- the pipelines service's entities, parsed once


def test_a_full_endpoint_entity_is_parsed_and_kept_whole_for_its_write():
    wire = {
        "Id": "e1",
        "Name": "batchpred",
        "Description": "d",
        "DefaultVersion": "1",
        "PipelineVersionList": [{"Version": "0", "PipelineId": "p0"}, {"Version": "1", "PipelineId": "p1"}],
        "Url": "https://x/e1",
        "EntityStatus": "Active",
        "Properties": {"a": "b"},
        "SwaggerUrl": "https://x/swagger",
        "tags": {},
        "Etag": '"7"',
        "CreatedDate": "2026-01-01T00:00:00Z",
    }
    endpoint = Endpoint.from_wire(wire)
    assert endpoint == Endpoint(
        id="e1",
        name="batchpred",
        status="Active",
        default_version="1",
        versions=(EndpointVersion("0", "p0"), EndpointVersion("1", "p1")),
        etag='"7"',
        wire={},
    )
    assert endpoint.wire == wire and endpoint.wire is not wire
    assert [v.number for v in endpoint.versions] == [0, 1]


def test_a_minimal_endpoint_entity_has_only_its_id():
    endpoint = Endpoint.from_wire({"Id": "e1"})
    assert (endpoint.name, endpoint.status, endpoint.default_version, endpoint.versions, endpoint.etag) == (
        None,
        None,  # no EntityStatus: active
        "",
        (),
        None,
    )
    for wrong in (None, [], {"Name": "no id"}, {"Id": ""}):
        with pytest.raises(ServiceError):
            Endpoint.from_wire(wrong)


def test_an_endpoint_version_without_a_number_or_a_pipeline_is_never_ranked():
    endpoint = Endpoint.from_wire(
        {
            "Id": "e1",
            "DefaultVersion": 0,  # a number on the wire: read as its text
            "EntityStatus": 2,
            "PipelineVersionList": [{"PipelineId": "p0"}, {"Version": "x", "PipelineId": ""}, "junk"],
        }
    )
    assert (endpoint.default_version, endpoint.status) == ("", "2")
    assert endpoint.versions == (EndpointVersion(None, "p0"), EndpointVersion("x", None))
    assert [v.number for v in endpoint.versions] == [None, None]


def test_a_published_pipeline_entity_is_parsed_with_each_field_optional():
    full = {"Id": "p1", "Name": "batchpred", "Version": "abc123", "EntityStatus": "Disabled", "Etag": "1"}
    assert PublishedPipelineInfo.from_wire(full) == PublishedPipelineInfo("p1", "abc123", "Disabled")
    assert PublishedPipelineInfo.from_wire({}) == PublishedPipelineInfo(None, None, None)
    assert PublishedPipelineInfo.from_wire({"Id": "p1", "Version": 3}) == PublishedPipelineInfo(
        "p1", "3", None
    )
    with pytest.raises(ServiceError):
        PublishedPipelineInfo.from_wire(["p1"])


def test_an_endpoint_write_sends_back_the_entity_it_read_changed_only_where_asked(
    client, fake_aml, published
):
    endpoint, pipeline = published
    newer = fake_aml.add_published_pipeline(endpoint["Name"], "v2")
    read = fake_aml.endpoints[endpoint["Id"]] | {"SwaggerUrl": "https://x/swagger", "Unknown": {"kept": True}}
    client.update_endpoint(
        Endpoint.from_wire(read), new_default=EndpointVersion("7", newer["Id"]), status="Active"
    )
    (put,) = fake_aml.calls(method="PUT")
    assert put.json() == read | {
        "PipelineVersionList": [*read["PipelineVersionList"], {"Version": "7", "PipelineId": newer["Id"]}],
        "DefaultVersion": "7",
        "EntityStatus": "Active",
    }
    assert list(put.json()) == list(read) and put.header("If-Match") == read["Etag"]


def test_a_full_pipeline_run_entity_is_parsed_into_the_fields_the_app_reads():
    wire = {
        "Id": "r1",
        "Status": {
            "StatusCode": "Failed",
            "StatusDetail": "step predict failed",
            "CreationTime": "2026-01-01T00:00:00Z",
            "EndTime": "2026-01-01T00:05:00Z",
        },
        "PipelineId": "p1",
        "RunHistoryExperimentName": "exp-1",
        "ParameterAssignments": {"sample_size": "25"},
        "RunSource": "API",
        "tags": {"trigger": "timer", SUBMISSION_TAG: "abc", "empty": ""},
        "Properties": {},
        "CreatedDate": "2025-12-31T23:59:59Z",
    }
    assert PipelineRunInfo.from_wire(wire) == PipelineRunInfo(
        id="r1",
        status_code="Failed",
        status_detail="step predict failed",
        created="2026-01-01T00:00:00Z",
        end_time="2026-01-01T00:05:00Z",
        experiment="exp-1",
        tags={"trigger": "timer", SUBMISSION_TAG: "abc"},
    )


def test_a_minimal_pipeline_run_entity_has_only_its_id():
    assert PipelineRunInfo.from_wire({"Id": "r1"}) == PipelineRunInfo("r1", None, None, None, None, None, {})
    assert PipelineRunInfo.from_wire({"Id": "r1", "Status": None}).status_code is None  # NotStarted


def test_a_pipeline_run_entity_missing_optional_fields_falls_back_as_the_backend_read_it():
    legacy = PipelineRunInfo.from_wire(
        {"Id": "r1", "Status": 3, "CreationTime": "t0", "Tags": {"trigger": "x"}}
    )
    assert (legacy.status_code, legacy.created, legacy.end_time, legacy.tags) == (
        "3",
        "t0",
        None,
        {"trigger": "x"},
    )
    no_creation = PipelineRunInfo.from_wire({"Id": "r1", "Status": {"StatusCode": 0}, "CreatedDate": "t1"})
    assert (no_creation.status_code, no_creation.created, no_creation.status_detail) == ("0", "t1", None)
    assert PipelineRunInfo.from_wire(
        {"Id": "r1", "tags": "junk", "Status": {"StatusCode": ""}}
    ) == PipelineRunInfo("r1", status_code="")


def test_a_pipeline_run_entity_without_an_id_is_refused():
    for wrong in (None, [], "r1", {"Status": {"StatusCode": "Running"}}, {"Id": ""}, {"Id": 7}):
        with pytest.raises(ServiceError) as caught:
            PipelineRunInfo.from_wire(wrong)
        assert caught.value.http_status == 502


# ----- run history's RunDto, parsed once


def test_a_full_run_dto_is_parsed_into_the_fields_the_app_reads():
    dto = {
        "runId": "r1",
        "parentRunId": None,
        "rootRunId": "r1",
        "runType": "azureml.PipelineRun",
        "status": "Failed",
        "createdUtc": "2026-01-01T01:30:00.123Z",
        "startTimeUtc": "2026-01-01T01:31:00Z",
        "endTimeUtc": "2026-01-01T01:40:00Z",
        "error": {"error": {"code": "UserError", "message": "User program failed with StepFailed: no rows"}},
        "tags": {"trigger": "timer", "azureml.nodeid": "a1"},
        "properties": {"azureml.pipelineid": "p1"},
        "displayName": "predict",
        "name": "predict_node",
        "portalUrl": "https://ml.azure.com/runs/r1",
    }
    assert HistoryRun.from_wire(dto) == HistoryRun(
        run_id="r1",
        status="Failed",
        created_utc="2026-01-01T01:30:00.123Z",
        end_time_utc="2026-01-01T01:40:00Z",
        error="User program failed with StepFailed: no rows",
        tags={"trigger": "timer", "azureml.nodeid": "a1"},
        display_name="predict",
        name="predict_node",
        portal_url="https://ml.azure.com/runs/r1",
    )


def test_a_minimal_run_dto_leaves_every_other_field_empty():
    assert HistoryRun.from_wire({"runId": "r1"}) == HistoryRun(run_id="r1")
    assert HistoryRun.from_wire({}) == HistoryRun.from_wire(None) == HistoryRun.from_wire([]) == HistoryRun()
    assert HistoryRun().tags == {}


def test_a_run_dto_field_missing_empty_or_of_another_shape_is_read_as_the_json_was():
    dto = HistoryRun.from_wire(
        {
            "runId": 7,  # not a run id: history_run_info refuses it, as before
            "status": "",  # an empty status is kept: it reads as queued
            "createdUtc": "",
            "error": {"code": "ServiceError"},  # the inner object, without a message: its code
            "tags": {"trigger": "", "batchpred_rows": None, "n": 3},
            "displayName": None,
        }
    )
    assert dto == HistoryRun(run_id=None, status="", error="ServiceError", tags={"n": "3"})
    assert HistoryRun.from_wire({"error": {"error": "no object"}, "tags": ["a"]}) == HistoryRun()
    with pytest.raises(dataclasses.FrozenInstanceError):
        dto.status = "Running"  # type: ignore[misc]


# ----- typed errors


def test_401_names_the_token_audience_and_is_not_retried(client, fake_aml, fake_identity, clock):
    fake_aml.inject_fault("GET", "/PipelineEndpoints/Name", status=401)
    with pytest.raises(Unauthorized) as caught:
        client.get_endpoint_by_name("x")
    assert "https://management.azure.com" in caught.value.message
    assert "expired" in caught.value.message
    assert caught.value.status == 401
    assert caught.value.http_status == 502
    assert len(fake_aml.requests) == 1
    assert clock.sleeps == []


def test_a_401_forgets_the_token_so_the_next_call_asks_the_credential_again(
    settings, fake_aml, fake_identity, clock
):
    credential = CountingCredential()
    client = AzureMLClient(settings, credential, monotonic=clock.monotonic, sleep=clock.sleep)
    client.get_endpoint_by_name("a")
    fake_aml.inject_fault("GET", "/PipelineEndpoints/Name", status=401)
    with pytest.raises(Unauthorized):
        client.get_endpoint_by_name("b")
    assert len(credential.asked) == 1  # the refused call was not retried with a new token
    client.get_endpoint_by_name("c")
    client.get_endpoint_by_name("d")
    assert len(credential.asked) == 2  # asked once more after the 401, then reused again


def test_a_token_for_another_audience_is_refused_with_401(settings, fake_aml, fake_identity, clock):
    class WrongAudience:
        def get_token(self, *scopes, **kwargs):
            from azure.identity import DefaultAzureCredential

            return DefaultAzureCredential().get_token("https://storage.azure.com/.default")

    client = AzureMLClient(settings, WrongAudience(), monotonic=clock.monotonic, sleep=clock.sleep)
    with pytest.raises(Unauthorized) as caught:
        client.get_endpoint_by_name("x")
    assert "audience" in caught.value.message


def test_403_names_the_role_the_identity_lacks(client, fake_aml, clock):
    fake_aml.inject_fault("GET", "/PipelineEndpoints/Name", status=403)
    with pytest.raises(Forbidden) as caught:
        client.get_endpoint_by_name("x")
    assert "AzureML Data Scientist" in caught.value.message
    assert caught.value.aml_code
    assert len(fake_aml.requests) == 1 and clock.sleeps == []


def test_404_is_not_found_and_not_retried(client, fake_aml, clock):
    with pytest.raises(NotFound) as caught:
        client.get_pipeline("00000000-dead-beef-0000-000000000000")
    assert caught.value.status == 404
    assert len(fake_aml.requests) == 1 and clock.sleeps == []


def test_a_write_over_a_changed_endpoint_is_entity_changed_and_not_retried(
    client, fake_aml, published, clock
):
    endpoint, pipeline = published
    stale = client.get_endpoint(endpoint["Id"])
    client.update_endpoint(stale)  # someone else writes first: the Etag moves on
    fake_aml.clear_requests()
    with pytest.raises(EntityChanged) as caught:
        client.update_endpoint(stale)
    assert isinstance(caught.value, AzureMLError)
    assert (caught.value.status, caught.value.code, caught.value.http_status) == (
        412,
        "azureml_conflict",
        502,
    )
    assert "412" in caught.value.message
    assert len(fake_aml.requests) == 1 and clock.sleeps == []


def test_errors_carry_code_and_correlation_id_from_camelcase_bodies(client, fake_aml, published, clock):
    endpoint, pipeline = published
    fake_run = fake_aml.add_run(pipeline["Id"], experiment="exp-1")
    fake_aml.inject_fault("GET", "/children", status=403)
    with pytest.raises(Forbidden) as caught:
        client.get_step_runs("exp-1", fake_run.run_id)
    assert caught.value.aml_code
    assert caught.value.correlation_id


def test_errors_carry_code_and_correlation_id_from_pascalcase_bodies(client, fake_aml, clock):
    fake_aml.inject_fault("GET", "/Pipelines/", status=400)
    with pytest.raises(AzureMLError) as caught:
        client.get_pipeline("some-id")
    assert caught.value.status == 400
    assert caught.value.aml_code
    assert caught.value.correlation_id


# ----- bounded retries


def test_429_with_retry_after_waits_that_long_then_succeeds(client, fake_aml, clock):
    fake_aml.inject_fault("GET", "/PipelineEndpoints/Name", status=429, retry_after=7)
    assert client.get_endpoint_by_name("x") is None
    assert clock.sleeps == [7.0]
    assert len(fake_aml.requests) == 2


def test_429_asking_longer_than_the_budget_raises_throttled_at_once(client, fake_aml, clock, settings):
    fake_aml.inject_fault(
        "GET", "/PipelineEndpoints/Name", status=429, retry_after=int(settings.retry_budget) + 60
    )
    with pytest.raises(Throttled) as caught:
        client.get_endpoint_by_name("x")
    assert caught.value.retry_after == settings.retry_budget + 60
    assert caught.value.http_status == 503
    assert clock.sleeps == []
    assert len(fake_aml.requests) == 1


def test_429_without_retry_after_backs_off_within_the_budget(settings, fake_aml, clock):
    client = _client_with(settings, clock, retry_budget=10.0)
    fake_aml.inject_fault("GET", "/PipelineEndpoints/Name", status=429, times=None)
    with pytest.raises(Throttled) as caught:
        client.get_endpoint_by_name("x")
    assert clock.sleeps == [1.0, 2.0, 4.0]  # the next wait (8 s) would pass the 10 s budget
    assert sum(clock.sleeps) <= 10.0
    assert caught.value.retry_after is not None
    assert len(fake_aml.requests) == 4


def test_retry_after_as_an_http_date_is_honoured(client, fake_aml, clock):
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= parse_retry_after(when) <= 31
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("soon") is None
    fake_aml.inject_fault("GET", "/PipelineEndpoints/Name", status=429, retry_after=when)
    assert client.get_endpoint_by_name("x") is None
    assert len(clock.sleeps) == 1 and 25 <= clock.sleeps[0] <= 31


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_transient_statuses_are_retried_then_succeed(client, fake_aml, clock, status):
    fake_aml.inject_fault("GET", "/PipelineEndpoints/Name", status=status, times=2)
    assert client.get_endpoint_by_name("x") is None
    assert clock.sleeps == [1.0, 2.0]
    assert len(fake_aml.requests) == 3


def test_a_lasting_500_gives_a_service_error_after_bounded_retries(client, fake_aml, clock, settings):
    fake_aml.inject_fault("GET", "/PipelineEndpoints/Name", status=500, times=None)
    with pytest.raises(ServiceError) as caught:
        client.get_endpoint_by_name("x")
    assert caught.value.status == 500
    assert caught.value.aml_code
    assert 1 < len(fake_aml.requests) <= 6
    assert sum(clock.sleeps) <= settings.retry_budget


def test_a_lasting_503_with_retry_after_past_the_budget_is_throttled(client, fake_aml, clock, settings):
    fake_aml.inject_fault("GET", "/Pipelines/", status=503, retry_after=1000, times=None)
    with pytest.raises(Throttled) as caught:
        client.get_pipeline("p")
    assert caught.value.retry_after == 1000
    assert clock.sleeps == []


def test_a_response_slower_than_the_timeout_is_retried(settings, fake_aml, clock):
    client = _client_with(settings, clock, request_timeout=0.3)
    fake_aml.inject_fault("GET", "/PipelineEndpoints/Name", delay=1.5)
    started = time.monotonic()
    assert client.get_endpoint_by_name("x") is None
    assert time.monotonic() - started < 1.4  # gave up on the slow answer, did not wait for it
    assert clock.sleeps == [1.0]


def test_a_lasting_timeout_gives_unreachable(settings, fake_aml, clock):
    client = _client_with(settings, clock, request_timeout=0.2, retry_budget=3.0)
    fake_aml.inject_fault("GET", "/PipelineEndpoints/Name", delay=1.0, times=None)
    with pytest.raises(Unreachable) as caught:
        client.get_endpoint_by_name("x")
    assert caught.value.http_status == 504
    assert clock.sleeps == [1.0, 2.0]


def test_a_dropped_connection_on_a_read_is_retried(client, fake_aml, clock):
    fake_aml.inject_fault("GET", "/PipelineEndpoints/Name", drop=True)
    assert client.get_endpoint_by_name("x") is None
    assert len(fake_aml.requests) >= 1 and clock.sleeps == [1.0]


# ----- submits never start two runs


def _submits(fake_aml):
    return fake_aml.calls("POST", "PipelineEndpointSubmit")


def _runs_of(fake_aml, pipeline):
    return [r for r in fake_aml.runs.values() if r.pipeline_id == pipeline["Id"]]


def test_a_submit_whose_answer_is_lost_returns_the_run_it_started(client, fake_aml, published, clock):
    endpoint, pipeline = published
    fake_aml.inject_fault("POST", "PipelineEndpointSubmit", drop=True, after_handling=True)
    run = _submit(client, endpoint, pipeline)
    (only,) = _runs_of(fake_aml, pipeline)
    assert run.id == only.run_id
    assert len(_submits(fake_aml)) == 1
    (query,) = fake_aml.calls("POST", "runs:query")  # the one bounded look for the submission's tag
    assert f'(Tags/{SUBMISSION_TAG} eq "{only.tags[SUBMISSION_TAG]}")' in query.json()["filter"]
    assert query.json()["top"] == 1
    assert clock.sleeps == []


def test_a_submit_that_timed_out_after_reaching_the_service_starts_one_run(
    settings, fake_aml, published, clock
):
    endpoint, pipeline = published
    client = _client_with(settings, clock, request_timeout=0.3)
    fake_aml.inject_fault("POST", "PipelineEndpointSubmit", delay=1.0, after_handling=True)
    run = _submit(client, endpoint, pipeline)
    (only,) = _runs_of(fake_aml, pipeline)
    assert run.id == only.run_id


def test_a_submit_answered_500_after_handling_starts_one_run(client, fake_aml, published, clock):
    endpoint, pipeline = published
    fake_aml.inject_fault("POST", "PipelineEndpointSubmit", status=500, after_handling=True)
    run = _submit(client, endpoint, pipeline)
    (only,) = _runs_of(fake_aml, pipeline)
    assert run.id == only.run_id
    assert len(_submits(fake_aml)) == 1


def test_a_submit_that_failed_before_handling_is_retried_once_checked(client, fake_aml, published, clock):
    endpoint, pipeline = published
    fake_aml.inject_fault("POST", "PipelineEndpointSubmit", status=503)
    run = _submit(client, endpoint, pipeline)
    (only,) = _runs_of(fake_aml, pipeline)
    assert run.id == only.run_id
    assert len(_submits(fake_aml)) == 2
    assert len(fake_aml.calls("POST", "runs:query")) == 1
    assert clock.sleeps == [1.0]


def test_a_throttled_submit_is_retried_after_retry_after(client, fake_aml, published, clock):
    endpoint, pipeline = published
    fake_aml.inject_fault("POST", "PipelineEndpointSubmit", status=429, retry_after=5)
    _submit(client, endpoint, pipeline)
    assert len(_runs_of(fake_aml, pipeline)) == 1
    assert clock.sleeps == [5.0]
    assert fake_aml.calls(method="GET") == []  # a 429 never started anything: no need to look


def test_a_submit_throttled_past_the_budget_raises_throttled_and_starts_nothing(
    client, fake_aml, published, clock
):
    endpoint, pipeline = published
    fake_aml.inject_fault("POST", "PipelineEndpointSubmit", status=429, retry_after=100000)
    with pytest.raises(Throttled) as caught:
        _submit(client, endpoint, pipeline)
    assert caught.value.retry_after == 100000
    assert _runs_of(fake_aml, pipeline) == []


def test_a_refused_submit_is_not_retried(client, fake_aml, published, clock):
    endpoint, pipeline = published
    fake_aml.inject_fault("POST", "PipelineEndpointSubmit", status=400)
    with pytest.raises(AzureMLError) as caught:
        _submit(client, endpoint, pipeline)
    assert caught.value.status == 400
    assert len(fake_aml.calls(method="POST")) == 1
    assert _runs_of(fake_aml, pipeline) == []


def test_a_submit_that_keeps_failing_stops_within_the_budget(settings, fake_aml, published, clock):
    endpoint, pipeline = published
    client = _client_with(settings, clock, retry_budget=5.0)
    fake_aml.inject_fault("POST", "PipelineEndpointSubmit", status=503, times=None)
    with pytest.raises(ServiceError):
        _submit(client, endpoint, pipeline)
    assert sum(clock.sleeps) <= 5.0
    assert _runs_of(fake_aml, pipeline) == []


@pytest.mark.parametrize("fault", [{"status": 500}, {"drop": True}])
def test_creating_an_endpoint_is_not_repeated_when_it_may_have_been_taken(client, fake_aml, clock, fault):
    pipeline = fake_aml.add_published_pipeline("p", "v1")
    fake_aml.clear_requests()
    fake_aml.inject_fault("POST", "/PipelineEndpoints/Create", after_handling=True, **fault)
    with pytest.raises(AzureMLError):
        client.create_endpoint("ep", pipeline["Id"])
    assert len(fake_aml.calls(method="POST")) == 1 and clock.sleeps == []
    assert [e["Name"] for e in fake_aml.endpoints.values()] == ["ep"]  # the caller re-reads it by name


def test_creating_an_endpoint_is_retried_after_a_429(client, fake_aml, clock):
    pipeline = fake_aml.add_published_pipeline("p", "v1")
    fake_aml.inject_fault("POST", "/PipelineEndpoints/Create", status=429, retry_after=3)
    created = client.create_endpoint("ep", pipeline["Id"])
    assert created.name == "ep" and len(fake_aml.endpoints) == 1
    assert clock.sleeps == [3.0]


# ----- identity failures


def test_token_endpoint_down_gives_token_error_and_no_azure_ml_call(client, fake_aml, fake_identity):
    fake_identity.fail(status=500)
    started = time.monotonic()
    with pytest.raises(TokenError) as caught:
        client.get_endpoint_by_name("x")
    assert time.monotonic() - started < 10
    assert "managed identity" in caught.value.message
    assert fake_aml.requests == []
    fake_identity.recover()
    assert client.get_endpoint_by_name("x") is None


# ----- inside an HTTP request: one deadline for every call, at most 4 attempts of any call


def test_inside_an_http_request_a_lasting_500_gets_four_attempts_not_six(client, fake_aml, clock):
    fake_aml.inject_fault("GET", "/PipelineEndpoints/Name", status=500, times=None)
    with http_request_budget(), pytest.raises(ServiceError):
        client.get_endpoint_by_name("ep")
    assert len(fake_aml.calls("GET", "/PipelineEndpoints/Name")) == HTTP_MAX_ATTEMPTS == 4
    assert clock.sleeps == [1.0, 2.0, 4.0]
    fake_aml.clear_requests()
    with pytest.raises(ServiceError):  # the timer's path keeps its longer budget
        client.get_endpoint_by_name("ep")
    assert len(fake_aml.calls("GET", "/PipelineEndpoints/Name")) == 6


def test_inside_an_http_request_a_lasting_500_on_submit_is_four_checked_attempts(
    client, fake_aml, published, clock
):
    endpoint, pipeline = published
    fake_aml.inject_fault("POST", "PipelineEndpointSubmit", status=500, times=None)
    with http_request_budget(), pytest.raises(ServiceError):
        _submit(client, endpoint, pipeline)
    assert len(_submits(fake_aml)) == 4
    assert len(fake_aml.calls("POST", "runs:query")) == 4
    assert fake_aml.runs == {}


def test_inside_an_http_request_a_lasting_503_with_retry_after_is_throttled_after_four(
    client, fake_aml, clock
):
    fake_aml.inject_fault("GET", "/PipelineEndpoints/Name", status=503, retry_after=2, times=None)
    with http_request_budget(), pytest.raises(Throttled) as caught:
        client.get_endpoint_by_name("ep")
    assert len(fake_aml.calls("GET", "/PipelineEndpoints/Name")) == 4
    assert caught.value.retry_after == 2


def test_inside_an_http_request_every_call_shares_one_deadline(settings, fake_aml, clock):
    client = _client_with(settings, clock, http_budget=10.0)
    fake_aml.inject_fault("GET", "/PipelineEndpoints/Name", status=429, retry_after=6)
    fake_aml.inject_fault("GET", r"/Pipelines/p-1$", status=429, retry_after=6)
    with http_request_budget():
        assert client.get_endpoint_by_name("ep") is None  # waited 6 s of the 10
        with pytest.raises(Throttled):  # 6 s more would pass the request's deadline: not waited
            client.get_pipeline("p-1")
    assert clock.sleeps == [6.0]
    assert len(fake_aml.calls("GET", "/Pipelines/p-1")) == 1


def test_inside_an_http_request_nothing_is_sent_past_the_deadline(settings, fake_aml, clock):
    client = _client_with(settings, clock, http_budget=5.0)
    with http_request_budget():
        client.get_endpoint_by_name("ep")
        clock.now += 5.0  # the request spent its budget elsewhere
        with pytest.raises(Unreachable):
            client.get_endpoint_by_name("ep")
    assert len(fake_aml.requests) == 1
