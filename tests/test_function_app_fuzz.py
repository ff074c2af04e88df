"""Arbitrary bodies, query strings and run ids thrown at the routes: the input never causes a 5xx, and input
that is rejected never reaches a submission (the fake Azure ML service's request log says so)."""

from __future__ import annotations

import json
import string
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator.functions_host import LoadedApp
from pipeline_def.fingerprint import compute_fingerprint
from pipeline_def.runs import is_valid_run_id
from pipeline_def.service import reset_service
from pipeline_def.settings import load_settings
from pipeline_def.steps import PARAMETER_NAMES

FUZZ = settings(
    max_examples=100,
    deadline=None,
    # the fakes are started once per test, not per example: their state only grows, which is the point
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
parameter_names = st.sampled_from(PARAMETER_NAMES) | st.text(max_size=15)
parameters = st.dictionaries(parameter_names, json_values, max_size=3)
# Bodies of every kind: raw bytes, any JSON, and objects close to valid ones (which is where bugs hide).
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["parameters", "Parameters", "params", ""]), json_values, max_size=2).map(
        lambda v: json.dumps(v).encode()
    ),
    parameters.map(lambda p: json.dumps({"parameters": p}).encode()),
)
# Bodies that are wrong by construction: each must be refused before anything is sent.
invalid_bodies = st.one_of(
    st.binary(max_size=200).filter(lambda b: b.strip() and not _is_json_object(b)),  # empty: no overrides
    st.builds(
        lambda extra, value, p: json.dumps({"parameters": p, extra: value}).encode(),
        st.text(min_size=1, max_size=12).filter(lambda k: k != "parameters"),
        json_values,
        parameters,
    ),
    st.builds(
        lambda name, value: json.dumps({"parameters": {name: value}}).encode(),
        st.text(max_size=15).filter(lambda n: n not in PARAMETER_NAMES),
        json_values,
    ),
    st.builds(
        lambda value: json.dumps({"parameters": {"sample_size": value}}).encode(),
        st.integers(max_value=-1) | st.floats(allow_nan=False) | st.text(max_size=5) | st.booleans(),
    ),
)
run_ids = st.text(max_size=320) | st.text(string.ascii_letters + string.digits + "-_./%?# ", max_size=310)
queries = st.dictionaries(
    st.sampled_from(["limit", "code", "LIMIT", "offset"]) | st.text(max_size=8),
    st.text(max_size=12),
    max_size=3,
)


def _is_json_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except (ValueError, RecursionError):
        return False


@pytest.fixture(scope="module")
def app() -> LoadedApp:
    return LoadedApp()


@pytest.fixture
def aml(fake_aml, aml_env, monkeypatch) -> SimpleNamespace:
    monkeypatch.setenv("AML_RETRY_BUDGET_SECONDS", "0")
    reset_service()
    current = load_settings()
    pipeline = fake_aml.add_published_pipeline(
        current.endpoint_name, compute_fingerprint(current), parameter_defaults=current.parameter_defaults
    )
    fake_aml.add_endpoint(current.endpoint_name, pipeline["Id"])
    return SimpleNamespace(fake=fake_aml)


def _submits(fake) -> int:
    return len(fake.calls("POST", "Submit"))


@FUZZ
@given(body=bodies, query=queries)
def test_any_start_body_is_answered_without_a_5xx_and_submits_only_when_accepted(app, aml, body, query):
    before = _submits(aml.fake)
    response = app.start_run(body, params=query)
    assert response.status in (202, 400, 413), response
    assert _submits(aml.fake) - before == (1 if response.status == 202 else 0)
    if response.status != 202:
        assert set(response.json["error"]) == {"code", "message"}


@FUZZ
@given(body=invalid_bodies)
def test_invalid_start_bodies_never_reach_azure_ml(app, aml, body):
    aml.fake.clear_requests()
    response = app.start_run(body)
    assert response.status in (400, 413), response
    assert aml.fake.requests == []


@FUZZ
@given(run_id=run_ids, query=queries)
def test_any_run_id_is_answered_without_a_5xx_and_never_submits(app, aml, run_id, query):
    aml.fake.clear_requests()
    responses = [app.get_run(run_id, params=query), app.cancel_run(run_id, params=query)]
    if is_valid_run_id(run_id):
        assert [r.status for r in responses] == [404, 404], responses
    else:
        assert [r.status for r in responses] == [400, 400], responses
        assert aml.fake.requests == []
    assert _submits(aml.fake) == 0


@FUZZ
@given(query=queries)
def test_any_list_query_is_answered_200_or_400_and_never_submits(app, aml, query):
    aml.fake.clear_requests()
    response = app.list_runs(query)
    assert response.status in (200, 400), response
    if response.status == 200:
        assert response.json == {"runs": []}
    else:
        assert aml.fake.requests == []
    assert _submits(aml.fake) == 0
