"""The timer: which occurrence a tick is for (NCRONTAB read as the Functions host reads it, UTC), and what a
tick does through the real function with each backend: publish when needed, the overlap policy, past-due
ticks, failures that end the invocation."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from emulator.functions_host import LoadedApp, end_local_runs
from pipeline_def.app.timer import run_tick, scheduled_for, timer_schedule
from pipeline_def.azureml.backend import AzureMLBackend
from pipeline_def.cron import parse_schedule
from pipeline_def.errors import AzureMLError, ConfigError, Forbidden, ServiceError, Throttled, Unauthorized
from pipeline_def.fingerprint import compute_fingerprint
from pipeline_def.service import Service, reset_service
from pipeline_def.settings import load_settings
from tests.fixtures_fakes import publish_in_fake


def _at(text: str):
    moment = datetime.fromisoformat(text)
    return lambda: moment


# --- the occurrence a tick is for ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "now, expected",
    [
        ("2026-03-10T13:30:00+00:00", "2026-03-10T13:30:00Z"),  # exactly on time
        ("2026-03-10T13:30:00.250+00:00", "2026-03-10T13:30:00Z"),  # a little late
        ("2026-03-10T13:29:59+00:00", "2026-03-10T01:30:00Z"),  # before the afternoon run
        ("2026-03-10T01:29:59+00:00", "2026-03-09T13:30:00Z"),  # before the first run of the day
        ("2026-01-01T00:00:00+00:00", "2025-12-31T13:30:00Z"),  # across a year
        ("2026-03-10T15:30:00+02:00", "2026-03-10T13:30:00Z"),  # an aware clock in another zone is UTC here
    ],
)
def test_default_schedule_occurrence_is_the_latest_at_or_before_now_in_utc(now, expected):
    assert scheduled_for("0 30 1,13 * * *", _at(now)) == expected


def test_past_due_tick_is_for_the_occurrence_it_missed():
    # The host was down at 13:30 and invokes the past-due tick at 16:05.
    assert scheduled_for("0 30 1,13 * * *", _at("2026-03-10T16:05:42+00:00")) == "2026-03-10T13:30:00Z"


@pytest.mark.parametrize(
    "expression, now, expected",
    [
        ("0 */5 * * * *", "2026-03-10T10:07:13+00:00", "2026-03-10T10:05:00Z"),
        ("*/10 * * * * *", "2026-03-10T10:07:13+00:00", "2026-03-10T10:07:10Z"),
        ("0 0 9 * * Mon-Fri", "2026-03-08T12:00:00+00:00", "2026-03-06T09:00:00Z"),  # Sunday -> Friday
        ("0 0 9 * * 1-5", "2026-03-08T12:00:00+00:00", "2026-03-06T09:00:00Z"),
        ("0 0 9 * * SUN", "2026-03-08T12:00:00+00:00", "2026-03-08T09:00:00Z"),
        ("0 0 0 1 Jan,Jul *", "2026-03-08T12:00:00+00:00", "2026-01-01T00:00:00Z"),
        ("0 15 10 29 2 *", "2026-03-08T12:00:00+00:00", "2024-02-29T10:15:00Z"),
        (
            "0 0 12 13 * 5",
            "2026-03-08T12:00:00+00:00",
            "2026-02-13T12:00:00Z",
        ),  # Friday 13th: both must match
        ("0 5/20 * * * *", "2026-03-10T10:04:00+00:00", "2026-03-10T09:45:00Z"),  # 5, 25, 45
        ("0 0 0 30 2 *", "2026-03-10T10:04:00+00:00", None),  # never
    ],
)
def test_ncrontab_fields_ranges_steps_names_and_day_rules(expression, now, expected):
    assert scheduled_for(expression, _at(now)) == expected


@pytest.mark.parametrize(
    "expression",
    ["0 30 1,13 * *", "0 30 1,13 * * * *", "60 * * * * *", "0 0 24 * * *", "0 0 0 0 * *", "0 0 0 * 13 *",
     "0 0 0 * * 7", "0 */0 * * * *", "0 5-1 * * * *", "0 ? * * * *", "0 1,,2 * * * *", "0 ５ * * * *"],
)  # fmt: skip
def test_malformed_schedules_are_rejected_by_the_parser_and_the_settings(expression):
    with pytest.raises(ValueError):
        parse_schedule(expression)
    with pytest.raises(ConfigError) as raised:
        load_settings({"PIPELINE_BACKEND": "local", "PIPELINE_SCHEDULE": expression})
    assert any("PIPELINE_SCHEDULE" in problem for problem in raised.value.problems)


def test_timer_schedule_is_the_setting_when_valid_and_the_default_otherwise():
    assert timer_schedule({}) == "0 30 1,13 * * *"
    assert timer_schedule({"PIPELINE_SCHEDULE": "0 0 */6 * * *"}) == "0 0 */6 * * *"
    assert timer_schedule({"PIPELINE_SCHEDULE": "every day"}) == "0 30 1,13 * * *"


def test_latest_occurrence_treats_naive_times_as_utc():
    schedule = parse_schedule("0 30 1,13 * * *")
    naive = datetime(2026, 3, 10, 14, 0, 0)
    aware = datetime(2026, 3, 10, 14, 0, 0, tzinfo=UTC)
    assert schedule.latest_occurrence(naive) == schedule.latest_occurrence(aware)
    assert schedule.latest_occurrence(aware - timedelta(hours=1)).tzinfo == UTC


# --- the timer function -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def loaded() -> LoadedApp:
    return LoadedApp()


def test_tick_with_bad_configuration_fails_naming_every_bad_setting(loaded, monkeypatch, caplog):
    monkeypatch.setenv("PIPELINE_BACKEND", "azureml")
    for name in ("AML_SUBSCRIPTION_ID", "AML_RESOURCE_GROUP", "AML_WORKSPACE_NAME", "AML_API_BASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AML_COMPUTE_NAME", "cpu-cluster")
    monkeypatch.setenv("AML_REGION", "West Europe!")
    monkeypatch.setenv("PIPELINE_OVERLAP", "sometimes")
    reset_service()
    try:
        with caplog.at_level(logging.ERROR), pytest.raises(ConfigError) as raised:
            loaded.tick()
    finally:
        reset_service()
    message = raised.value.message
    for name in (
        "AML_SUBSCRIPTION_ID",
        "AML_RESOURCE_GROUP",
        "AML_WORKSPACE_NAME",
        "AML_REGION",
        "PIPELINE_OVERLAP",
    ):
        assert name in message
    assert "West Europe!" not in message
    failures = [r for r in caplog.records if r.getMessage().startswith("timer tick failed")]
    assert len(failures) == 1 and "configuration_error" in failures[0].getMessage()
    assert "PIPELINE_OVERLAP" in failures[0].getMessage()


# --- ticks with the azureml backend against the fakes -------------------------------------------------
def _aml_state(fake_aml, monkeypatch, version: str | None) -> SimpleNamespace:
    """The endpoint with one pipeline of `version` (None: the current fingerprint) as its default; no retry
    budget, so a fault fails the tick at once."""
    return publish_in_fake(fake_aml, monkeypatch, version, AML_RETRY_BUDGET_SECONDS="0")


@pytest.fixture
def aml(fake_aml, aml_env, monkeypatch) -> SimpleNamespace:
    """Published and current: the endpoint's default pipeline has the current fingerprint."""
    return _aml_state(fake_aml, monkeypatch, None)


@pytest.fixture
def stale_aml(fake_aml, aml_env, monkeypatch) -> SimpleNamespace:
    """The endpoint's default pipeline was published from other step scripts (another fingerprint)."""
    return _aml_state(fake_aml, monkeypatch, "0123456789abcdef")


def _expected_occurrences(schedule: str = "0 30 1,13 * * *") -> set[str]:
    return {scheduled_for(schedule)}


def test_steady_state_tick_submits_once_with_timer_tags_in_at_most_five_calls(loaded, aml, caplog):
    before = _expected_occurrences()
    with caplog.at_level(logging.INFO):
        loaded.tick()
    after = _expected_occurrences()
    (run,) = aml.fake.runs.values()
    assert run.endpoint_id == aml.endpoint["Id"] and run.pipeline_id == aml.pipeline["Id"]
    assert run.tags["trigger"] == "timer"
    assert run.tags["past_due"] == "false"
    assert run.tags["scheduled_for"] in before | after
    assert run.parameters == {
        "sample_size": "10",
        "model_version": "latest",
        "accept_drift": "false",
        "node_count": "1",
    }
    assert run.tags["batchpred_occurrence"] == f"{aml.settings.endpoint_name}@{run.tags['scheduled_for']}"
    # endpoint, default pipeline, the look back, the submit, the occurrence check
    assert len(aml.fake.requests) <= 5, [f"{r.method} {r.path}" for r in aml.fake.requests]
    assert not aml.fake.calls("POST", "Pipelines/Create") and not aml.fake.calls("PUT")
    assert any(run.run_id in r.getMessage() and "submitted" in r.getMessage() for r in caplog.records)


def test_tick_skips_while_previous_run_is_active_and_logs_its_id(loaded, aml, caplog):
    active = aml.fake.add_run(aml.pipeline["Id"], experiment=aml.settings.experiment_name, status="Running")
    with caplog.at_level(logging.INFO):
        loaded.tick()
    assert list(aml.fake.runs) == [active.run_id]
    assert not aml.fake.calls("POST", "Submit")
    skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and active.run_id in skipped[0].getMessage()


def test_tick_submits_once_the_previous_run_has_ended(loaded, aml):
    previous = aml.fake.add_run(aml.pipeline["Id"], experiment=aml.settings.experiment_name, status="Running")
    loaded.tick()
    assert len(aml.fake.runs) == 1
    aml.fake.set_run_status(previous.run_id, "Failed")
    loaded.tick()
    assert len(aml.fake.runs) == 2


def test_tick_with_overlap_allow_submits_while_a_run_is_active(loaded, aml, monkeypatch):
    monkeypatch.setenv("PIPELINE_OVERLAP", "allow")
    reset_service()
    aml.fake.add_run(aml.pipeline["Id"], experiment=aml.settings.experiment_name, status="Running")
    loaded.tick()
    assert len(aml.fake.runs) == 2
    assert len(aml.fake.calls("POST", "Submit")) == 1


def test_a_tick_whose_occurrence_another_instance_started_joins_it_and_says_so(aml, monkeypatch, caplog):
    monkeypatch.setenv("PIPELINE_OVERLAP", "allow")
    reset_service()
    clock = _at("2026-03-10T13:30:00.250+00:00")
    other_instance = Service(load_settings(), AzureMLBackend(load_settings()))
    started = other_instance.tick(scheduled_for=scheduled_for(aml.settings.schedule, clock)).run

    with caplog.at_level(logging.INFO):
        outcome = run_tick(clock=clock)

    assert (outcome.action, outcome.run.run_id) == ("joined", started.run_id)
    duplicate = outcome.canceled_duplicate.run_id
    assert aml.fake.runs[duplicate].cancel_requested and not aml.fake.runs[started.run_id].cancel_requested
    (line,) = [r for r in caplog.records if "joined" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert line.getMessage() == (
        f"tick for 2026-03-10T13:30:00Z joined run {started.run_id} started by another instance; "
        f"canceled duplicate {duplicate}"
    )


def test_past_due_tick_runs_once_and_says_so(loaded, aml, caplog):
    with caplog.at_level(logging.INFO):
        loaded.tick(past_due=True)
    (run,) = aml.fake.runs.values()
    assert run.tags["past_due"] == "true" and run.tags["trigger"] == "timer"
    assert len(aml.fake.calls("POST", "Submit")) == 1
    past_due = [r for r in caplog.records if "past due" in r.getMessage()]
    assert len(past_due) == 1 and past_due[0].levelno == logging.WARNING
    assert run.tags["scheduled_for"] in past_due[0].getMessage()


@pytest.mark.parametrize(
    "method, path, status, error",
    [
        ("GET", "/PipelineEndpoints/Name", 403, Forbidden),
        ("GET", "/PipelineEndpoints/Name", 401, Unauthorized),
        ("POST", "PipelineEndpointSubmit", 500, ServiceError),
        ("POST", r"/runs:query$", 429, Throttled),
    ],
)
def test_failed_tick_logs_what_and_why_with_the_correlation_id_and_fails(
    loaded, aml, caplog, method, path, status, error
):
    aml.fake.inject_fault(method, path, status=status, retry_after=3 if status == 429 else None, times=None)
    with caplog.at_level(logging.ERROR), pytest.raises(error) as raised:
        loaded.tick()
    assert raised.value.correlation_id
    (failure,) = [r for r in caplog.records if r.getMessage().startswith("timer tick failed")]
    assert failure.levelno == logging.ERROR
    assert raised.value.code in failure.getMessage()
    assert raised.value.correlation_id in failure.getMessage()
    assert str(status) in failure.getMessage()
    if "Submit" not in path:
        assert aml.fake.runs == {}


def test_tick_when_the_identity_endpoint_is_down_fails_naming_the_identity(
    loaded, aml, fake_identity, caplog
):
    fake_identity.fail(status=500)
    with caplog.at_level(logging.ERROR), pytest.raises(AzureMLError):
        loaded.tick()
    assert any("identity" in r.getMessage() for r in caplog.records if "timer tick failed" in r.getMessage())
    assert aml.fake.runs == {}


@pytest.mark.slow
def test_tick_publishes_when_the_fingerprint_changed_and_not_on_the_next_tick(loaded, stale_aml):
    # The tick republishes (with the SDK, against the fake), makes the new pipeline the endpoint's default,
    # disables the superseded one, then submits to the new one.
    aml, stale = stale_aml, stale_aml.pipeline
    loaded.tick()
    fingerprint = compute_fingerprint(aml.settings)
    assert aml.fake.calls("POST", "Pipelines/Create")
    current = [p for p in aml.fake.pipelines.values() if p["Version"] == fingerprint]
    assert len(current) == 1 and current[0]["EntityStatus"] == "Active"
    endpoint = aml.fake.endpoints[aml.endpoint["Id"]]
    default = next(v for v in endpoint["PipelineVersionList"] if v["Version"] == endpoint["DefaultVersion"])
    assert default["PipelineId"] == current[0]["Id"]
    assert aml.fake.pipelines[stale["Id"]]["EntityStatus"] != "Active"
    (run,) = aml.fake.runs.values()
    assert run.pipeline_id == current[0]["Id"] and run.tags["trigger"] == "timer"

    aml.fake.set_run_status(run.run_id, "Finished")
    aml.fake.clear_requests()
    # the next tick is for the next occurrence (twelve hours on): a tick of the same occurrence would join
    # the run above (one run per occurrence)
    outcome = run_tick(clock=_at((datetime.now(UTC) + timedelta(hours=12)).isoformat()))
    assert outcome.action == "submitted"
    assert not aml.fake.calls("POST", "Pipelines/Create")
    assert len(aml.fake.runs) == 2 and len(aml.fake.requests) <= 5


# --- ticks with the local backend ----------------------------------------------------------------------
@pytest.fixture
def local(local_env):
    yield local_env
    end_local_runs()


def test_local_tick_submits_a_run_and_the_next_tick_skips_while_it_is_active(loaded, local, caplog):
    from pipeline_def.service import get_service

    with caplog.at_level(logging.INFO):
        loaded.tick()
        (first,) = get_service().list_runs(10)
        loaded.tick(past_due=True)
    assert [run.run_id for run in get_service().list_runs(10)] == [first.run_id]
    skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and first.run_id in skipped[0].getMessage()
    assert any("past due" in r.getMessage() for r in caplog.records)


def test_local_tick_with_overlap_allow_submits_again(loaded, local, monkeypatch):
    from pipeline_def.service import get_service

    monkeypatch.setenv("PIPELINE_OVERLAP", "allow")
    reset_service()
    loaded.tick()
    loaded.tick()
    assert len(get_service().list_runs(10)) == 2
