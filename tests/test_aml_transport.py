"""The transport's one retry loop against the fake Azure ML service over real HTTP: which failures count as
"may have reached the service" (the `on_ambiguous` hook a submit supplies is asked before any retry), which
never did, and the call budget. Time is injected: no test sleeps for real between retries."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator

import pytest
import requests

from pipeline_def.azureml.transport import CallBudget, Transport, never_sent
from pipeline_def.errors import AzureMLError, ServiceError, Unreachable
from pipeline_def.settings import Settings, load_settings
from tests.fixtures_fakes import FakeTime


@pytest.fixture
def settings(aml_env: dict[str, str]) -> Settings:
    return load_settings()


def _transport(settings: Settings, clock: FakeTime, **changes: object) -> Transport:
    return Transport(dataclasses.replace(settings, **changes), monotonic=clock.monotonic, sleep=clock.sleep)


def _pipelines(settings: Settings) -> str:
    return f"{settings.api_base}/pipelines/v1.0{settings.workspace_path}/Pipelines"


class Hook:
    """An on_ambiguous hook that records the failures it is shown and answers with `answer` (None: retry)."""

    def __init__(self, answer: requests.Response | None = None) -> None:
        self.answer = answer
        self.shown: list[AzureMLError] = []

    def __call__(self, failure: AzureMLError) -> requests.Response | None:
        self.shown.append(failure)
        return self.answer


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield int(listener.getsockname()[1])


# ----- never sent, or maybe acted on: decided by the exception's type


def test_a_refused_connection_never_reached_the_service(closed_port):
    with pytest.raises(requests.ConnectionError) as caught:
        requests.get(f"http://127.0.0.1:{closed_port}/", timeout=2)
    assert never_sent(caught.value)


def test_a_read_timeout_may_have_reached_the_service(silent_port):
    with pytest.raises(requests.ReadTimeout) as caught:
        requests.get(f"http://127.0.0.1:{silent_port}/", timeout=0.2)
    assert not never_sent(caught.value)


def test_a_connect_timeout_never_reached_the_service():
    assert never_sent(requests.exceptions.ConnectTimeout("connecting timed out"))


def test_the_words_of_a_dropped_connection_do_not_make_it_refused():
    # Its text says "refused", but nothing in its chain says the connection was never made.
    assert not never_sent(requests.ConnectionError("Connection aborted: the peer refused to go on"))


# ----- the on_ambiguous hook


def test_a_5xx_asks_the_hook_first_and_its_answer_ends_the_call(settings, fake_aml, clock):
    transport = _transport(settings, clock)
    stand_in = transport.send("GET", _pipelines(settings), what="the stand-in")
    fake_aml.clear_requests()
    fake_aml.inject_fault("GET", "/Pipelines$", status=500)
    hook = Hook(answer=stand_in)
    assert transport.send("GET", _pipelines(settings), what="x", on_ambiguous=hook) is stand_in
    assert [type(f) for f in hook.shown] == [ServiceError]
    assert len(fake_aml.requests) == 1  # not sent a second time
    assert clock.sleeps == []


def test_a_5xx_the_hook_finds_nothing_for_is_retried(settings, fake_aml, clock):
    fake_aml.inject_fault("GET", "/Pipelines$", status=503)
    hook = Hook()
    response = _transport(settings, clock).send("GET", _pipelines(settings), what="x", on_ambiguous=hook)
    assert response.status_code == 200
    assert len(hook.shown) == 1 and hook.shown[0].status == 503
    assert len(fake_aml.calls("GET", "/Pipelines")) == 2
    assert clock.sleeps == [1.0]


def test_a_429_is_not_ambiguous_and_is_retried_after_retry_after(settings, fake_aml, clock):
    fake_aml.inject_fault("GET", "/Pipelines$", status=429, retry_after=5)
    hook = Hook()
    _transport(settings, clock).send("GET", _pipelines(settings), what="x", on_ambiguous=hook)
    assert hook.shown == []
    assert clock.sleeps == [5.0]


@pytest.mark.parametrize("fault", [{"drop": True}, {"delay": 1.0}], ids=["dropped", "read timeout"])
def test_no_answer_after_sending_asks_the_hook(settings, fake_aml, clock, fault):
    fake_aml.inject_fault("GET", "/Pipelines$", **fault)
    hook = Hook()
    transport = _transport(settings, clock, request_timeout=0.3)
    assert transport.send("GET", _pipelines(settings), what="x", on_ambiguous=hook).status_code == 200
    assert [type(f) for f in hook.shown] == [Unreachable]


def test_a_refused_connection_is_retried_without_asking_the_hook(settings, clock, closed_port):
    transport = _transport(settings, clock, api_base=f"http://127.0.0.1:{closed_port}", retry_budget=3.0)
    hook = Hook()
    with pytest.raises(Unreachable):
        transport.send("GET", _pipelines(transport.settings), what="x", on_ambiguous=hook)
    assert hook.shown == []
    assert clock.sleeps == [1.0, 2.0]


def test_an_answer_that_is_not_retried_never_asks_the_hook(settings, fake_aml, clock):
    fake_aml.inject_fault("GET", "/Pipelines$", status=400)
    hook = Hook()
    with pytest.raises(AzureMLError) as caught:
        _transport(settings, clock).send("GET", _pipelines(settings), what="x", on_ambiguous=hook)
    assert caught.value.status == 400 and hook.shown == []


# ----- the budget of one call


def test_a_call_budget_outside_an_http_request_gives_the_first_attempt_the_whole_timeout():
    budget = CallBudget(deadline=110.0, max_attempts=6, strict=False, request_timeout=30.0)
    assert budget.timeout_for(1, now=109.0) == 30.0
    assert budget.timeout_for(2, now=100.0) == 10.0
    assert budget.timeout_for(2, now=120.0) == 0.5  # past the deadline a retry still gets a short try
    assert budget.may_wait(10.0, attempt=1, now=100.0)
    assert not budget.may_wait(10.1, attempt=1, now=100.0)
    assert not budget.may_wait(0.0, attempt=6, now=100.0)


def test_a_strict_call_budget_sends_nothing_past_its_deadline():
    budget = CallBudget(deadline=110.0, max_attempts=4, strict=True, request_timeout=30.0)
    assert budget.timeout_for(1, now=105.0) == 5.0
    assert budget.timeout_for(1, now=109.99) is None
