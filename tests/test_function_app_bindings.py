"""The binding metadata the Functions host indexes: the timer's schedule and flags, each route's path,
methods and auth level."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import pytest

from emulator.functions_host import LoadedApp
from pipeline_def.settings import load_settings


@pytest.fixture(scope="module")
def loaded() -> LoadedApp:
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("PIPELINE_SCHEDULE", raising=False)
        return LoadedApp()


def _trigger(loaded: LoadedApp, name: str) -> dict:
    (trigger,) = [b for b in loaded.bindings(name) if b["direction"] == "IN"]
    return trigger


def test_app_declares_exactly_the_timer_and_four_routes(loaded):
    assert sorted(loaded.functions) == ["cancel_run", "get_run", "list_runs", "scheduled_run", "start_run"]


def test_timer_runs_on_the_default_schedule_without_startup_run_and_with_monitor(loaded):
    trigger = _trigger(loaded, "scheduled_run")
    assert trigger == {
        "direction": "IN",
        "type": "timerTrigger",
        "name": "timer",
        "schedule": "0 30 1,13 * * *",
        "runOnStartup": False,
        "useMonitor": True,
    }


@pytest.mark.parametrize(
    "name, route, method",
    [
        ("start_run", "runs", "POST"),
        ("list_runs", "runs", "GET"),
        ("get_run", "runs/{run_id}", "GET"),
        ("cancel_run", "runs/{run_id}/cancel", "POST"),
    ],
)
def test_each_route_has_its_path_method_and_function_auth_level(loaded, name, route, method):
    trigger = _trigger(loaded, name)
    assert trigger["type"] == "httpTrigger"
    assert trigger["route"] == route
    assert trigger["methods"] == [method]
    assert trigger["authLevel"] == "FUNCTION"
    outputs = [b for b in loaded.bindings(name) if b["direction"] == "OUT"]
    assert outputs == [{"direction": "OUT", "type": "http", "name": "$return"}]


def test_timer_schedule_comes_from_the_pipeline_schedule_setting(monkeypatch):
    monkeypatch.setenv("PIPELINE_SCHEDULE", "  0  */15   * * *  Mon-Fri ")
    assert _trigger(LoadedApp(), "scheduled_run")["schedule"] == "0 */15 * * * Mon-Fri"


@pytest.mark.parametrize("value", ["", "   ", "0 30 1,13 * *", "0 99 * * * *", "not a schedule at all"])
def test_timer_falls_back_to_the_default_schedule_when_the_setting_is_unset_or_invalid(monkeypatch, value):
    monkeypatch.setenv("PIPELINE_SCHEDULE", value)
    assert _trigger(LoadedApp(), "scheduled_run")["schedule"] == "0 30 1,13 * * *"


# --- the files the host and the deployment read ------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent


def test_host_json_pins_the_bundle_and_a_timeout_that_fits_retries_plus_a_publish():
    host = json.loads((ROOT / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensionBundle"] == {
        "id": "Microsoft.Azure.Functions.ExtensionBundle",
        "version": "[4.*, 5.0.0)",
    }
    hours, minutes, seconds = (int(part) for part in host["functionTimeout"].split(":"))
    timeout = hours * 3600 + minutes * 60 + seconds
    # the largest retry budget the settings accept, plus a few minutes for a publish; at most the
    # Consumption plan's ceiling of 10 minutes
    assert 230 + 180 <= timeout <= 600
    sampling = host["logging"]["applicationInsights"]["samplingSettings"]
    # log lines (warnings and errors included), failed requests and exceptions are never sampled away
    assert {"Trace", "Exception", "Request"} <= set(sampling["excludedTypes"].split(";"))


def test_local_settings_sample_has_every_setting_and_runs_locally_as_is():
    values = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    read_by_settings = set(
        re.findall(
            r'"((?:AML|PIPELINE|LOCAL|AZURE)_[A-Z_]+)"', (ROOT / "pipeline_def/settings.py").read_text()
        )
    )
    assert read_by_settings >= {
        "AML_REQUEST_TIMEOUT_SECONDS",
        "AML_RETRY_BUDGET_SECONDS",
        "PIPELINE_SAMPLE_SIZE",
    }
    assert read_by_settings <= set(values)
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert values["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    assert values["PIPELINE_BACKEND"] == "local"
    settings = load_settings(values)
    assert settings.backend == "local" and settings.schedule == "0 30 1,13 * * *"


def test_funcignore_keeps_tools_and_tests_out_and_the_pipeline_in():
    patterns = {
        line.strip()
        for line in (ROOT / ".funcignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {
        ".venv",
        "tests",
        "emulator",
        "bench",
        "node_modules",
        ".local",
        "local.settings.json",
    } <= patterns
    kept = ("step_scripts", "pipeline_def", "data", "function_app.py", "host.json", "requirements.txt")
    for name in kept:
        assert not any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
