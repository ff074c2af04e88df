"""The Azure ML backend under the service, against the fake service: call counts of the steady state, the
overlap policy, run status and steps in docs/product.md's words (`canceling` from run history after a cancel),
listing, cancel, no hidden state between calls, and the command line (publish, run --wait)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading

import pytest

from pipeline_def.__main__ import main
from pipeline_def.azureml.backend import (
    DUPLICATE_OF_TAG,
    DUPLICATE_TRIGGER,
    OCCURRENCE_QUERY_TOP,
    OCCURRENCE_TAG,
    POLL_SECONDS,
    AzureMLBackend,
    _occurrence_run,
)
from pipeline_def.azureml.client import SUBMISSION_TAG
from pipeline_def.backend import Target
from pipeline_def.errors import Forbidden, RunNotFound, ServiceError, Throttled
from pipeline_def.fingerprint import compute_fingerprint
from pipeline_def.runs import STATUSES, RunInfo, normalize_status
from pipeline_def.service import Service
from pipeline_def.settings import PROJECT_ROOT, load_settings
from pipeline_def.steps import STEPS


@pytest.fixture
def settings(aml_env):
    return load_settings()


@pytest.fixture
def backend(settings):
    return AzureMLBackend(settings)


@pytest.fixture
def service(settings, backend):
    return Service(settings, backend)


@pytest.fixture
def current(fake_aml, settings, backend):
    """An endpoint that is already current (the steady state)."""
    pipeline = fake_aml.add_published_pipeline(
        settings.endpoint_name, backend.current_fingerprint(), parameter_defaults=settings.parameter_defaults
    )
    endpoint = fake_aml.add_endpoint(settings.endpoint_name, pipeline["Id"])
    fake_aml.clear_requests()
    return endpoint, pipeline


# ----- the steady state


def test_a_steady_state_tick_costs_five_calls(service, fake_aml, current):
    endpoint, pipeline = current
    outcome = service.tick(scheduled_for="2026-01-01T01:30:00Z")
    assert outcome.action == "submitted"
    assert outcome.publish.published is False
    assert [(r.method, r.path.rsplit("/", 2)[-2]) for r in fake_aml.requests] == [
        ("GET", "PipelineEndpoints"),  # .../PipelineEndpoints/Name
        ("GET", "Pipelines"),  # the default version's pipeline
        ("POST", "house-price-batch-predictions"),  # .../experiments/{name}/runs:query: the look back
        ("POST", "Id"),  # .../PipelineEndpointSubmit/Id/{endpointId}
        ("POST", "house-price-batch-predictions"),  # runs:query: the occurrence's earliest runs
    ]
    submit = fake_aml.requests[3]
    assert submit.path.endswith(f"/PipelineRuns/PipelineEndpointSubmit/Id/{endpoint['Id']}")
    body = submit.json()
    assert body["ExperimentName"] == "house-price-batch-predictions"
    assert body["tags"]["trigger"] == "timer"
    assert body["tags"]["scheduled_for"] == "2026-01-01T01:30:00Z"
    assert body["tags"][OCCURRENCE_TAG] == "house-price-batch-predictions@2026-01-01T01:30:00Z"
    check = fake_aml.requests[-1].json()
    assert check["top"] == OCCURRENCE_QUERY_TOP and check["orderby"] == "CreatedUtc asc"
    assert (
        '(Tags/batchpred_occurrence eq "house-price-batch-predictions@2026-01-01T01:30:00Z")'
        in (check["filter"])
    )
    run = fake_aml.runs[outcome.run.run_id]
    assert run.pipeline_id == pipeline["Id"]


def test_a_steady_state_http_submission_costs_three_calls(service, fake_aml, current):
    run = service.start_run({"sample_size": 25, "model_version": 2}).run
    assert len(fake_aml.requests) == 3
    body = fake_aml.requests[-1].json()
    assert body["ParameterAssignments"] == {"sample_size": "25", "model_version": "2"}
    assert body["tags"]["trigger"] == "http"
    assert run.status == "queued"
    assert run.aml_status == "NotStarted"
    assert run.portal_url == service.settings.portal_url(run.run_id)
    assert fake_aml.runs[run.run_id].parameters["sample_size"] == "25"


def test_a_tick_skips_while_a_run_is_still_active(service, fake_aml, current):
    endpoint, pipeline = current
    busy = fake_aml.add_run(pipeline["Id"], experiment=service.settings.experiment_name, status="Running")
    outcome = service.tick()
    assert outcome.action == "skipped"
    assert outcome.active_run.run_id == busy.run_id
    assert fake_aml.calls("POST", "Submit") == []


@pytest.fixture
def republished(fake_aml, settings, backend):
    """An endpoint whose current default (new fingerprint) superseded an older pipeline, which still has a
    run going: the state right after `python -m pipeline_def publish` in a deployment pipeline."""
    old = fake_aml.add_published_pipeline(settings.endpoint_name, "older-fingerprint", status="Disabled")
    endpoint = fake_aml.add_endpoint(settings.endpoint_name, old["Id"])
    new = fake_aml.add_published_pipeline(
        settings.endpoint_name, backend.current_fingerprint(), parameter_defaults=settings.parameter_defaults
    )
    fake_aml.add_endpoint_version(endpoint["Id"], new["Id"], make_default=True)
    still_going = fake_aml.add_run(old["Id"], experiment=settings.experiment_name, status="Running")
    fake_aml.clear_requests()
    return old, new, still_going


def test_a_tick_after_a_republish_skips_while_the_superseded_pipeline_still_runs(
    service, fake_aml, republished
):
    old, new, still_going = republished
    outcome = service.tick()
    assert outcome.action == "skipped"
    assert outcome.active_run.run_id == still_going.run_id
    assert fake_aml.calls("POST", "Submit") == []
    query = fake_aml.calls("POST", "runs:query")[0]  # one query covers every version of the endpoint
    assert new["Id"] in query.json()["filter"] and old["Id"] in query.json()["filter"]
    assert query.json()["top"] == 1

    fake_aml.set_run_status(still_going.run_id, "Finished")
    submitted = service.tick()
    assert submitted.action == "submitted"
    assert fake_aml.runs[submitted.run.run_id].pipeline_id == new["Id"]

    fake_aml.set_run_status(submitted.run.run_id, "Finished")
    fake_aml.clear_requests()
    third = service.tick()
    assert third.action == "submitted"
    assert len(fake_aml.requests) == 4  # a tick for no occurrence (no scheduled_for) has nothing to check
    fake_aml.set_run_status(third.run.run_id, "Finished")
    fake_aml.clear_requests()
    assert service.tick(scheduled_for="2026-01-01T13:30:00Z").action == "submitted"
    assert len(fake_aml.requests) == 5


@pytest.mark.parametrize("ended", ["Finished", "Failed", "Canceled"])
def test_a_tick_submits_when_every_earlier_run_has_ended(service, fake_aml, current, ended):
    endpoint, pipeline = current
    done = fake_aml.add_run(pipeline["Id"], experiment=service.settings.experiment_name)
    fake_aml.set_run_status(done.run_id, ended)
    assert service.tick().action == "submitted"


def test_a_tick_with_overlap_allowed_does_not_look_for_active_runs(aml_env, monkeypatch, fake_aml):
    monkeypatch.setenv("PIPELINE_OVERLAP", "allow")
    settings = load_settings()
    backend = AzureMLBackend(settings)
    pipeline = fake_aml.add_published_pipeline(settings.endpoint_name, backend.current_fingerprint())
    fake_aml.add_endpoint(settings.endpoint_name, pipeline["Id"])
    fake_aml.add_run(pipeline["Id"], experiment=settings.experiment_name, status="Running")
    fake_aml.clear_requests()
    assert Service(settings, backend).tick(scheduled_for="2026-01-01T01:30:00Z").action == "submitted"
    # the look back asks for the previous scheduled run only: no status in its filter, one run at most
    look_back, occurrence_check = fake_aml.calls("POST", "runs:query")
    assert "Status" not in look_back.json()["filter"] and look_back.json()["top"] == 1
    assert OCCURRENCE_TAG in occurrence_check.json()["filter"]
    assert len(fake_aml.requests) == 5


def test_a_throttled_submit_reaches_the_caller_as_throttled(aml_env, monkeypatch, fake_aml, current):
    monkeypatch.setenv("AML_RETRY_BUDGET_SECONDS", "5")
    settings = load_settings()
    service = Service(settings, AzureMLBackend(settings))
    fake_aml.inject_fault("POST", "PipelineEndpointSubmit", status=429, retry_after=60)
    with pytest.raises(Throttled) as caught:
        service.start_run({})
    assert caught.value.retry_after == 60
    assert fake_aml.runs == {}


# ----- one run per scheduled occurrence: ticks of one occurrence on two instances at once

OCCURRENCE = "2026-01-01T13:30:00Z"


def _instances(fake_aml, overlap: str, monkeypatch, count: int = 2) -> list[Service]:
    """`count` app instances on one workspace: each its own Service, backend and client, as two Functions
    hosts (or a staging and a production app) would have; the endpoint is published and current."""
    monkeypatch.setenv("PIPELINE_OVERLAP", overlap)
    settings = load_settings()
    instances = [Service(settings, AzureMLBackend(settings)) for _ in range(count)]
    pipeline = fake_aml.add_published_pipeline(
        settings.endpoint_name,
        instances[0].backend.current_fingerprint(),
        parameter_defaults=settings.parameter_defaults,
    )
    fake_aml.add_endpoint(settings.endpoint_name, pipeline["Id"])
    fake_aml.clear_requests()
    return instances


def _tick_at_once(instances: list[Service], scheduled_for: str) -> list:
    """Each instance ticks for `scheduled_for` on its own thread; their outcomes, in instance order."""
    outcomes: list = [None] * len(instances)
    errors: list[BaseException] = []

    def tick(index: int) -> None:
        try:
            outcomes[index] = instances[index].tick(scheduled_for=scheduled_for)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=tick, args=(index,)) for index in range(len(instances))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    return outcomes


@pytest.mark.parametrize("overlap", ["skip", "allow"])
def test_two_instances_ticking_for_one_occurrence_at_once_leave_one_run(
    aml_env, monkeypatch, fake_aml, overlap
):
    instances = _instances(fake_aml, overlap, monkeypatch)
    # Both submits reach Azure ML, and both runs exist, before either instance hears back: both looked back
    # before either run existed, so the overlap policy let both through, and each check sees both runs.
    fake_aml.inject_fault(
        "POST", "PipelineEndpointSubmit", rendezvous=threading.Barrier(2, timeout=30), times=2
    )

    outcomes = _tick_at_once(instances, OCCURRENCE)

    assert fake_aml.pending_faults == []
    first, second = sorted(fake_aml.runs.values(), key=lambda run: run.created)
    assert (first.cancel_requested, second.cancel_requested) == (False, True)
    assert [outcome.run.run_id for outcome in outcomes] == [first.run_id, first.run_id]
    assert sorted(outcome.action for outcome in outcomes) == ["joined", "submitted"]
    (joined,) = [outcome for outcome in outcomes if outcome.action == "joined"]
    assert joined.canceled_duplicate.run_id == second.run_id
    assert joined.canceled_duplicate.status == "canceling"
    (cancel,) = fake_aml.calls("DELETE")  # the pipelines service's cancel, as `cancel` sends it
    assert cancel.path.endswith(f"/PipelineRuns/{second.run_id}/Execution")
    # the duplicate is retagged: later ticks neither report it as the previous scheduled run nor alert on it
    assert second.tags["trigger"] == DUPLICATE_TRIGGER and second.tags[DUPLICATE_OF_TAG] == first.run_id
    assert first.tags["trigger"] == "timer"
    occurrence = f"house-price-batch-predictions@{OCCURRENCE}"
    assert first.tags[OCCURRENCE_TAG] == second.tags[OCCURRENCE_TAG] == occurrence
    # the cost: five calls each, plus the cancel and the retag for the tick that lost
    assert len(fake_aml.requests) == 5 + 5 + 2
    assert len(fake_aml.calls("PATCH")) == 1


@pytest.mark.parametrize("overlap", ["skip", "allow"])
def test_a_tick_whose_occurrence_already_has_a_run_joins_it(aml_env, monkeypatch, fake_aml, overlap):
    early, late = _instances(fake_aml, overlap, monkeypatch)
    started = early.tick(scheduled_for=OCCURRENCE)
    assert started.action == "submitted"
    fake_aml.set_run_status(started.run.run_id, "Finished")  # so that `skip` lets the late tick through

    joined = late.tick(scheduled_for=OCCURRENCE)

    assert (joined.action, joined.run.run_id, joined.run.status) == (
        "joined",
        started.run.run_id,
        "completed",
    )
    (duplicate,) = [run for run in fake_aml.runs.values() if run.run_id != started.run.run_id]
    assert joined.canceled_duplicate.run_id == duplicate.run_id and duplicate.cancel_requested


def test_a_tick_of_another_occurrence_is_not_a_duplicate(aml_env, monkeypatch, fake_aml):
    instances = _instances(fake_aml, "allow", monkeypatch)
    fake_aml.inject_fault(
        "POST", "PipelineEndpointSubmit", rendezvous=threading.Barrier(2, timeout=30), times=2
    )
    outcomes = [None, None]
    errors: list[BaseException] = []

    def tick(index: int, scheduled_for: str) -> None:
        try:
            outcomes[index] = instances[index].tick(scheduled_for=scheduled_for)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [
        threading.Thread(target=tick, args=(0, OCCURRENCE)),
        threading.Thread(target=tick, args=(1, "2026-01-02T01:30:00Z")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert [outcome.action for outcome in outcomes] == ["submitted", "submitted"]
    assert {outcome.run.run_id for outcome in outcomes} == set(fake_aml.runs)
    assert not any(run.cancel_requested for run in fake_aml.runs.values())
    assert fake_aml.calls("DELETE") == [] and fake_aml.calls("PATCH") == []


def test_a_canceled_run_never_stays_for_its_occurrence(aml_env, monkeypatch, fake_aml):
    first, second, third = _instances(fake_aml, "allow", monkeypatch, count=3)
    kept = first.tick(scheduled_for=OCCURRENCE).run
    duplicate = second.tick(scheduled_for=OCCURRENCE).canceled_duplicate
    first.cancel(kept.run_id)  # someone cancels the run that stayed; the duplicate is still canceling
    fake_aml.set_run_status(kept.run_id, "Canceled")
    assert fake_aml.runs[duplicate.run_id].history_status == "CancelRequested"

    later = third.tick(scheduled_for=OCCURRENCE)

    # the earlier runs of the occurrence are canceled (or canceling): none of them is joined
    assert later.action == "submitted" and later.canceled_duplicate is None
    assert later.run.run_id not in (kept.run_id, duplicate.run_id)
    assert not fake_aml.runs[later.run.run_id].cancel_requested


def test_the_canceled_duplicate_is_not_the_previous_scheduled_run_of_the_next_tick(
    aml_env, monkeypatch, fake_aml
):
    first, second = _instances(fake_aml, "skip", monkeypatch)
    fake_aml.inject_fault(
        "POST", "PipelineEndpointSubmit", rendezvous=threading.Barrier(2, timeout=30), times=2
    )
    kept, _ = (outcome.run for outcome in _tick_at_once([first, second], OCCURRENCE))
    (duplicate,) = [run for run in fake_aml.runs.values() if run.run_id != kept.run_id]
    fake_aml.set_run_status(kept.run_id, "Finished")
    fake_aml.set_run_status(duplicate.run_id, "Canceled")  # newer than the run that stayed
    heard: list = []

    following = first.tick(scheduled_for="2026-01-02T01:30:00Z", on_previous=heard.append)

    assert following.action == "submitted"
    assert [run.run_id for run in heard] == [kept.run_id]
    assert (following.previous_scheduled.run_id, following.previous_scheduled.status) == (
        kept.run_id,
        "completed",
    )


def test_a_failed_occurrence_check_keeps_the_run_and_says_so(aml_env, monkeypatch, fake_aml, caplog):
    monkeypatch.setenv("AML_RETRY_BUDGET_SECONDS", "0")
    (instance,) = _instances(fake_aml, "allow", monkeypatch, count=1)
    fake_aml.inject_fault("POST", "runs:query", status=500, times=None, body_contains=OCCURRENCE_TAG)
    with caplog.at_level(logging.WARNING):
        outcome = instance.tick(scheduled_for=OCCURRENCE)
    assert outcome.action == "submitted" and not fake_aml.runs[outcome.run.run_id].cancel_requested
    (warning,) = [r for r in caplog.records if "could not check" in r.getMessage()]
    assert outcome.run.run_id in warning.getMessage() and warning.levelno == logging.WARNING


def test_a_duplicate_whose_cancel_is_refused_fails_the_tick_naming_both_runs(
    aml_env, monkeypatch, fake_aml, caplog
):
    early, late = _instances(fake_aml, "allow", monkeypatch)
    kept = early.tick(scheduled_for=OCCURRENCE).run
    fake_aml.inject_fault("DELETE", r"/Execution$", status=403, times=None)
    with caplog.at_level(logging.ERROR), pytest.raises(Forbidden):
        late.tick(scheduled_for=OCCURRENCE)
    (duplicate,) = [run_id for run_id in fake_aml.runs if run_id != kept.run_id]
    (error,) = [r for r in caplog.records if "could not be canceled" in r.getMessage()]
    assert kept.run_id in error.getMessage() and duplicate in error.getMessage()


def test_http_runs_are_not_occurrences(service, fake_aml, current):
    service.start_run({})
    service.start_run({})
    assert len(fake_aml.runs) == 2 and fake_aml.calls("POST", "runs:query") == []
    assert not any(OCCURRENCE_TAG in run.tags for run in fake_aml.runs.values())


def _history_run(run_id: str, created: str | None, status: str = "queued") -> RunInfo:
    return RunInfo(run_id=run_id, status=status, aml_status=None, created_at=created)


def test_the_run_that_stays_is_the_earliest_not_canceled_then_the_smallest_run_id():
    own = _history_run("b", "2026-01-01T13:30:02.4473Z")
    same_instant = _history_run("a", "2026-01-01T13:30:02.447300Z")
    # creation time as an instant, not as text ("...02.4473Z" sorts after "...02.447304Z" as text)
    assert _occurrence_run(own, [_history_run("z", "2026-01-01T13:30:02.447304Z"), own]) is own
    # the same instant in another spelling: the smaller run id
    assert _occurrence_run(own, [own, same_instant]) is same_instant
    # a canceled or canceling earlier run is never the one that stays
    earlier = "2026-01-01T13:30:01Z"
    canceled = [_history_run("x", earlier, "canceled"), _history_run("y", earlier, "canceling")]
    assert _occurrence_run(own, [*canceled, own]) is own
    # run history has not listed this tick's run yet: it counts with its own creation time
    assert _occurrence_run(own, []) is own
    assert _occurrence_run(own, [_history_run("c", earlier)]).run_id == "c"
    assert _occurrence_run(own, [_history_run("c", "2026-01-01T13:30:03+00:00")]) is own
    # an unreadable creation time sorts last
    unreadable = [
        _history_run("c", None),
        _history_run("d", "soon"),
        _history_run("e", "2026-13-01T00:00:00Z"),
    ]
    assert _occurrence_run(own, unreadable) is own


# ----- status, steps, listing, cancel


@pytest.mark.parametrize(
    "code, expected",
    [
        ("NotStarted", "queued"),
        ("Running", "running"),
        ("Failed", "failed"),
        ("Finished", "completed"),
        ("Canceled", "canceled"),
    ],
)
def test_get_run_maps_every_pipelines_service_status(service, fake_aml, current, code, expected):
    endpoint, pipeline = current
    run = fake_aml.add_run(pipeline["Id"], experiment="exp")
    fake_aml.set_run_status(run.run_id, code)
    info = service.get_run(run.run_id)
    assert (info.status, info.aml_status) == (expected, code)
    assert info.terminal == (expected in ("completed", "failed", "canceled"))
    body = info.to_dict()
    assert set(body) >= {
        "run_id",
        "status",
        "aml_status",
        "terminal",
        "created_at",
        "ended_at",
        "steps",
        "portal_url",
    }
    assert body["portal_url"].startswith("https://ml.azure.com/runs/")


def test_get_run_lists_the_steps_by_name_in_pipeline_order(service, fake_aml, current):
    endpoint, pipeline = current
    run = fake_aml.add_run(pipeline["Id"], experiment="exp")
    fake_aml.set_run_status(
        run.run_id,
        "Running",
        steps={"fetch_data": "Completed", "predict": "Running", "save_predictions": "NotStarted"},
    )
    info = service.get_run(run.run_id)
    assert [(s.name, s.status) for s in info.steps] == [
        ("fetch_data", "completed"),
        ("predict", "running"),
        ("save_predictions", "queued"),
    ]
    assert [s.name for s in info.steps] == [step.name for step in STEPS]
    history = fake_aml.calls(path_contains="/children")
    assert history and "/experiments/exp/" in history[0].path


def test_a_finished_run_says_completed_in_both_spellings(service, fake_aml, current):
    endpoint, pipeline = current
    run = fake_aml.add_run(pipeline["Id"], experiment="exp")
    fake_aml.set_run_status(run.run_id, "Finished")
    info = service.get_run(run.run_id)
    assert info.aml_status == "Finished" and info.status == "completed"
    assert info.ended_at
    assert {s.status for s in info.steps} <= {"completed"}  # run history says "Completed"


@pytest.mark.parametrize(
    "spelling, expected",
    [
        # pipelines service, words and legacy integers
        ("NotStarted", "queued"),
        ("Running", "running"),
        ("Failed", "failed"),
        ("Finished", "completed"),
        ("Canceled", "canceled"),
        (0, "queued"),
        (1, "running"),
        (2, "failed"),
        (3, "completed"),
        (4, "canceled"),
        (None, "queued"),
        # run history
        ("Queued", "queued"),
        ("Preparing", "queued"),
        ("Provisioning", "queued"),
        ("Starting", "queued"),
        ("Unapproved", "queued"),
        ("Finalizing", "running"),
        ("NotResponding", "running"),
        ("Pausing", "running"),
        ("Paused", "running"),
        ("CancelRequested", "canceling"),
        ("Completed", "completed"),
        ("Cancelled", "canceled"),
        # graph nodes
        ("PartiallyExecuted", "failed"),
        ("Bypassed", "completed"),
        # never seen: not treated as finished
        ("SomethingNew", "running"),
    ],
)
def test_normalize_status_covers_every_spelling(spelling, expected):
    assert normalize_status(spelling) == expected
    assert expected in STATUSES


def test_get_run_of_an_unknown_id_is_run_not_found(service, fake_aml, current):
    with pytest.raises(RunNotFound):
        service.get_run("no-such-run")


@pytest.mark.parametrize("body", [{"Status": {"StatusCode": "Running"}}, ["not", "a", "run"], {"Id": 7}])
def test_a_run_of_the_wrong_shape_is_a_service_error_not_a_crash(service, fake_aml, current, body):
    run = fake_aml.add_run(current[1]["Id"], experiment="exp")
    fake_aml.inject_fault("GET", rf"/PipelineRuns/{run.run_id}$", status=200, body=body)
    with pytest.raises(ServiceError) as caught:
        service.get_run(run.run_id)
    assert caught.value.http_status == 502


def test_list_runs_gives_the_newest_first_across_versions(settings, service, fake_aml, backend):
    old = fake_aml.add_published_pipeline(settings.endpoint_name, "old")
    endpoint = fake_aml.add_endpoint(settings.endpoint_name, old["Id"])
    experiment = settings.experiment_name
    first = fake_aml.add_run(old["Id"], experiment=experiment)
    new = fake_aml.add_published_pipeline(settings.endpoint_name, backend.current_fingerprint())
    fake_aml.add_endpoint_version(endpoint["Id"], new["Id"], make_default=True)
    second = fake_aml.add_run(new["Id"], experiment=experiment)
    third = fake_aml.add_run(new["Id"], experiment=experiment)
    fake_aml.add_run(fake_aml.add_published_pipeline("unrelated", "x")["Id"], experiment=experiment)

    runs = service.list_runs(10)
    assert [r.run_id for r in runs] == [third.run_id, second.run_id, first.run_id]
    assert [r.run_id for r in service.list_runs(2)] == [third.run_id, second.run_id]
    assert all(r.steps is None for r in runs)


def test_list_runs_without_an_endpoint_is_empty(service, fake_aml):
    assert service.list_runs(5) == []


def test_cancel_requests_the_cancel(service, fake_aml, current):
    endpoint, pipeline = current
    run = fake_aml.add_run(pipeline["Id"], experiment="exp", status="Running")
    service.cancel(run.run_id)
    (request,) = fake_aml.calls(method="DELETE")
    assert request.path.endswith(f"/PipelineRuns/{run.run_id}/Execution")
    assert fake_aml.runs[run.run_id].cancel_requested


def test_cancel_of_an_unknown_run_is_run_not_found(service, fake_aml, current):
    with pytest.raises(RunNotFound):
        service.cancel("no-such-run")


# ----- canceling: run history knows of a cancel before the pipelines service does


def _parent_history_reads(fake_aml, run_id):
    """GETs of the pipeline run itself in run history (not of its children)."""
    return [r for r in fake_aml.calls(method="GET", path_contains="/history/") if r.path.endswith(run_id)]


@pytest.mark.parametrize("before", ["Running", "NotStarted"])
def test_a_run_reads_canceling_after_a_cancel_until_the_pipelines_service_says_canceled(
    service, fake_aml, current, before
):
    endpoint, pipeline = current
    run = fake_aml.add_run(pipeline["Id"], experiment="exp", status=before)
    service.cancel(run.run_id)

    info = service.get_run(run.run_id)
    assert (info.status, info.aml_status) == ("canceling", before)  # aml_status: the pipelines service
    assert info.aml_history_status == "CancelRequested"
    assert info.terminal is False
    assert info.to_dict()["status"] == "canceling"
    assert {s.status for s in info.steps} == {"canceling"}
    (read,) = _parent_history_reads(fake_aml, run.run_id)
    assert read.path.endswith(f"/history/v1.0{fake_aml.workspace_path}/experiments/exp/runs/{run.run_id}")

    fake_aml.set_run_status(run.run_id, "Canceled")
    info = service.get_run(run.run_id)
    assert (info.status, info.aml_status, info.terminal) == ("canceled", "Canceled", True)


def test_a_running_run_without_a_cancel_is_running_with_both_statuses(service, fake_aml, current):
    endpoint, pipeline = current
    run = fake_aml.add_run(pipeline["Id"], experiment="exp", status="Running")
    info = service.get_run(run.run_id)
    assert (info.status, info.aml_status, info.aml_history_status) == (
        "running",
        "Running",
        "Running",
    )


def test_run_history_reaching_canceled_first_still_reads_canceling(service, fake_aml, current):
    endpoint, pipeline = current
    run = fake_aml.add_run(pipeline["Id"], experiment="exp", status="Running")
    fake_aml.runs[run.run_id].history_status = "Canceled"  # the pipelines service lags behind
    info = service.get_run(run.run_id)
    assert (info.status, info.aml_status, info.terminal) == ("canceling", "Running", False)


def test_a_cancel_that_settles_at_once_reads_canceled(service, fake_aml, current):
    endpoint, pipeline = current
    fake_aml.cancel_settles = True
    run = fake_aml.add_run(pipeline["Id"], experiment="exp", status="Running")
    service.cancel(run.run_id)
    fake_aml.clear_requests()
    info = service.get_run(run.run_id)
    assert (info.status, info.aml_status) == ("canceled", "Canceled")
    assert _parent_history_reads(fake_aml, run.run_id) == []  # an ended run needs no run-history read


def test_a_run_that_finished_before_the_cancel_took_effect_is_completed(service, fake_aml, current):
    endpoint, pipeline = current
    run = fake_aml.add_run(pipeline["Id"], experiment="exp", status="Running")
    service.cancel(run.run_id)
    fake_aml.runs[run.run_id].status = "Finished"  # run history still says CancelRequested
    assert fake_aml.runs[run.run_id].history_status == "CancelRequested"
    fake_aml.clear_requests()
    info = service.get_run(run.run_id)
    assert (info.status, info.aml_status) == ("completed", "Finished")
    assert info.aml_history_status is None and "aml_history_status" not in info.to_dict()
    assert _parent_history_reads(fake_aml, run.run_id) == []


def test_get_run_still_answers_while_run_history_has_not_seen_the_run(service, fake_aml, current):
    endpoint, pipeline = current
    run = fake_aml.add_run(pipeline["Id"], experiment="exp", status="NotStarted")
    fake_aml.inject_fault("GET", rf"/history/.*/runs/{run.run_id}(/children)?$", status=404, times=2)
    info = service.get_run(run.run_id)
    assert (info.status, info.aml_status) == ("queued", "NotStarted")
    assert info.aml_history_status is None and "aml_history_status" not in info.to_dict()
    assert info.steps == []
    assert fake_aml.pending_faults == []  # both run-history reads were made and answered 404


def test_get_run_costs_three_calls_while_running_and_two_once_ended(service, fake_aml, current):
    endpoint, pipeline = current
    run = fake_aml.add_run(pipeline["Id"], experiment="exp", status="Running")
    fake_aml.clear_requests()
    service.get_run(run.run_id)
    assert len(fake_aml.requests) == 3  # pipelines service, run history (parent), run history (children)
    fake_aml.set_run_status(run.run_id, "Finished")
    fake_aml.clear_requests()
    service.get_run(run.run_id)
    assert len(fake_aml.requests) == 2


def test_list_runs_is_the_endpoint_and_one_bounded_run_history_query(service, fake_aml, current):
    endpoint, pipeline = current
    run = fake_aml.add_run(pipeline["Id"], experiment=service.settings.experiment_name, status="Running")
    service.cancel(run.run_id)
    fake_aml.clear_requests()
    (listed,) = service.list_runs(5)
    # run history's view: it says CancelRequested as soon as the cancel is asked for
    assert (listed.run_id, listed.status, listed.aml_status) == (run.run_id, "canceling", "CancelRequested")
    (query,) = fake_aml.calls("POST", "runs:query")
    assert query.json()["top"] == 5 and query.json()["orderby"] == "CreatedUtc desc"
    assert len(fake_aml.requests) == 2


def test_a_submission_whose_answer_was_lost_is_one_run(service, fake_aml, current):
    endpoint, pipeline = current
    fake_aml.inject_fault("POST", "PipelineEndpointSubmit", drop=True, after_handling=True)
    run = service.start_run({}).run
    assert list(fake_aml.runs) == [run.run_id]
    assert fake_aml.runs[run.run_id].tags[SUBMISSION_TAG] == run.submission_id


def test_the_first_tick_publishes_through_the_sdk_then_submits(service, fake_aml, settings, backend):
    outcome = service.tick()
    assert outcome.publish.published is True
    assert outcome.action == "submitted"
    run = fake_aml.runs[outcome.run.run_id]
    assert run.pipeline_id == outcome.publish.target.handle.pipeline_id
    assert fake_aml.pipelines[run.pipeline_id]["Version"] == backend.current_fingerprint()


# ----- the command line


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline_def", "--json", *args],
        cwd=PROJECT_ROOT,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.slow
def test_the_command_line_publishes_runs_shows_lists_and_cancels(aml_env, fake_aml):
    published = _cli("publish")
    assert published.returncode == 0, published.stderr
    assert json.loads(published.stdout)["published"] is True
    again = _cli("publish")
    assert json.loads(again.stdout)["published"] is False

    started = _cli("run", "--sample-size", "5")
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["run_id"]
    assert fake_aml.runs[run_id].parameters["sample_size"] == "5"

    fake_aml.set_run_status(run_id, "Running", steps={"fetch_data": "Completed"})
    shown = json.loads(_cli("status", run_id).stdout)
    assert shown["status"] == "running" and shown["steps"][0] == {"name": "fetch_data", "status": "completed"}
    assert [r["run_id"] for r in json.loads(_cli("list", "--limit", "5").stdout)["runs"]] == [run_id]
    assert _cli("cancel", run_id).returncode == 0
    assert json.loads(_cli("status", run_id).stdout)["status"] == "canceling"

    missing = _cli("status", "no-such-run")
    assert missing.returncode == 1 and "no-such-run" in missing.stderr


# ----- no hidden state: a backend shared by threads acts on the target each call is given


def test_one_shared_backend_submits_each_target_to_its_own_endpoint_from_two_threads(
    settings, backend, fake_aml
):
    first_pipeline = fake_aml.add_published_pipeline(settings.endpoint_name, backend.current_fingerprint())
    first = fake_aml.add_endpoint(settings.endpoint_name, first_pipeline["Id"])
    first_target = backend.published_target()
    fake_aml.endpoints[first["Id"]]["Name"] = "retired"  # the endpoint is re-created under its name
    second_pipeline = fake_aml.add_published_pipeline(settings.endpoint_name, "another-version")
    second = fake_aml.add_endpoint(settings.endpoint_name, second_pipeline["Id"])
    second_target = backend.published_target()
    assert (first_target.version, first_target.current) == (backend.current_fingerprint(), True)
    assert (second_target.version, second_target.current) == ("another-version", False)

    # the newest lookup does not leak into a submit of an older target
    run = backend.submit(first_target, {}, {"trigger": "test"})
    assert fake_aml.runs[run.run_id].endpoint_id == first["Id"]

    both_started = threading.Barrier(2, timeout=30)
    submitted: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def submit_often(name, target):
        try:
            both_started.wait()
            runs = []
            for _ in range(5):
                backend.published_target()  # another request's lookup, in between
                runs.append(backend.submit(target, {}, {"trigger": name}).run_id)
            submitted[name] = runs
        except Exception as error:  # reported below
            errors.append(error)

    threads = [
        threading.Thread(target=submit_often, args=("first", first_target)),
        threading.Thread(target=submit_often, args=("second", second_target)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert {fake_aml.runs[r].endpoint_id for r in submitted["first"]} == {first["Id"]}
    assert {fake_aml.runs[r].endpoint_id for r in submitted["second"]} == {second["Id"]}
    assert {fake_aml.runs[r].pipeline_id for r in submitted["second"]} == {second_pipeline["Id"]}


def test_a_target_of_another_backend_is_refused_before_anything_is_sent(backend, fake_aml, current):
    with pytest.raises(TypeError):
        backend.submit(Target(version="x", current=True), {}, {})
    assert fake_aml.calls("POST") == []


# ----- the command line through the service: publish, and run --wait with the time injected


def test_the_command_line_publishes_through_the_service_and_says_which_version(
    aml_env, fake_aml, settings, capsys
):
    assert main(["--json", "publish"]) == 0
    published = json.loads(capsys.readouterr().out)
    assert published == {"published": True, "version": compute_fingerprint(settings), "current": True}
    assert len(fake_aml.calls(method="POST", path_contains="/Pipelines/Create")) == 1

    assert main(["publish"]) == 0
    assert capsys.readouterr().out.startswith("already current {'published': False")
    assert len(fake_aml.calls(method="POST", path_contains="/Pipelines/Create")) == 1


def _moving_on(fake_aml, *statuses):
    """A sleep during which Azure ML moves the (one) submitted run to the next of `statuses`; it records how
    long it was asked to wait and never sleeps."""
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        (run_id,) = fake_aml.runs
        status, extra = statuses[len(slept)]
        slept.append(seconds)
        fake_aml.set_run_status(run_id, status, **extra)

    sleep.slept = slept
    return sleep


def test_run_wait_on_azure_ml_polls_until_the_run_ends_telling_each_change(fake_aml, current, capsys):
    steps = {"fetch_data": "Completed", "predict": "Running", "save_predictions": "NotStarted"}
    sleep = _moving_on(fake_aml, ("Running", {"steps": steps}), ("Finished", {}))

    code = main(["--json", "run", "--wait", "--sample-size", "3"], sleep=sleep)

    out, err = capsys.readouterr()
    assert code == 0, err
    body = json.loads(out)
    (run_id,) = fake_aml.runs
    assert (body["run_id"], body["status"], body["aml_status"]) == (run_id, "completed", "Finished")
    assert (body["trigger"], body["current"]) == ("cli", True)
    assert fake_aml.runs[run_id].parameters["sample_size"] == "3"
    assert sleep.slept == [POLL_SECONDS, POLL_SECONDS]
    assert err.splitlines() == [
        f"run {run_id}: queued",
        f"run {run_id}: running",
        "  fetch_data         completed",
        "  predict            running",
        "  save_predictions   queued",
        f"run {run_id}: completed",
        "  predict            completed",
        "  save_predictions   completed",
    ]


def test_run_wait_on_azure_ml_exits_non_zero_naming_the_failed_step(fake_aml, current, capsys):
    failed = {
        "steps": {"fetch_data": "Completed", "predict": "Failed"},
        "step_errors": {"predict": "no model"},
    }
    sleep = _moving_on(fake_aml, ("Failed", failed))

    code = main(["run", "--wait"], sleep=sleep)

    out, err = capsys.readouterr()
    (run_id,) = fake_aml.runs
    assert code == 1
    assert f"run {run_id}: failed" in out.splitlines()
    assert "  predict            failed: no model" in err.splitlines()
    assert err.splitlines()[-1] == f"error: run {run_id} failed: step predict failed: no model"


def test_run_on_azure_ml_does_not_wait_unless_asked(fake_aml, backend, current, capsys):
    def sleep(seconds: float) -> None:
        raise AssertionError("a run that is not waited for never sleeps")

    assert main(["--json", "run"], sleep=sleep) == 0
    body = json.loads(capsys.readouterr().out)
    assert (body["status"], body["pipeline_version"], body["current"]) == (
        "queued",
        backend.current_fingerprint(),
        True,
    )
    assert len(fake_aml.requests) == 3


def test_a_failed_parallel_step_reads_the_entry_scripts_error_from_its_logs(
    fake_aml, backend, current, azurite
):
    """azureml-core records a ParallelRunStep's failure as the driver's `SystemExit: 42`; the app reads the
    step run's logs/user/error.txt (else logs/job_result.txt) for the entry script's error."""
    from tests.fixtures_fakes import DEVSTORE_ACCOUNT, DEVSTORE_KEY

    fake_aml.use_blob_store(azurite.url, DEVSTORE_ACCOUNT, DEVSTORE_KEY)
    _endpoint, pipeline = current
    run = fake_aml.add_run(pipeline["Id"], experiment=backend.settings.experiment_name)
    fake_aml.set_run_status(
        run.run_id,
        "Failed",
        steps={"fetch_data": "Completed", "predict": "Failed"},
        step_errors={"predict": "User program failed with SystemExit: 42"},
    )
    assert backend.get_run(run.run_id).error == "step predict failed: User program failed with SystemExit: 42"
    predict = run.step("predict").run_id
    fake_aml.put_artifact(
        "ExperimentRun",
        f"dcid.{predict}",
        "logs/user/error.txt",
        b'Traceback (most recent call last):\n  File "score_parallel.py"\nStepFailed: cannot read part-00001\n',
    )
    assert backend.get_run(run.run_id).error == "step predict failed: cannot read part-00001"
