"""Calling the Functions app without the Functions host: load function_app.py as a fresh module (its own
FunctionApp, since get_functions() may run once per app object) and call the decorated functions."""

from __future__ import annotations

import importlib.util
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.functions.timer import TimerRequest

ROOT = Path(__file__).resolve().parent.parent
BASE_URL = "http://localhost:7071/api"
_counter = itertools.count()


class LoadedApp:
    """function_app.py loaded once: its functions (binding metadata) and their user functions by name."""

    def __init__(self) -> None:
        spec = importlib.util.spec_from_file_location(
            f"function_app_{next(_counter)}", ROOT / "function_app.py"
        )
        assert spec and spec.loader
        self.module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.module)
        self.functions = {fn.get_function_name(): fn for fn in self.module.app.get_functions()}

    def user_function(self, name: str):
        return self.functions[name].get_user_function()

    def bindings(self, name: str) -> list[dict[str, Any]]:
        return json.loads(self.functions[name].get_function_json())["bindings"]

    # --- HTTP -----------------------------------------------------------------------------------------
    def call(
        self,
        name: str,
        method: str,
        path: str,
        *,
        body: bytes | str | dict | None = None,
        params: dict[str, str] | None = None,
        route_params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        if isinstance(body, dict):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode("utf-8")
        query = "&".join(f"{k}={v}" for k, v in (params or {}).items())
        request = func.HttpRequest(
            method,
            f"{BASE_URL}/{path}" + (f"?{query}" if query else ""),
            headers=headers or {},
            params=params or {},
            route_params=route_params or {},
            body=body or b"",
        )
        return Response(self.user_function(name)(request))

    def start_run(self, body=None, *, params=None) -> Response:
        return self.call("start_run", "POST", "runs", body=body, params=params)

    def list_runs(self, params: dict[str, str] | None = None) -> Response:
        return self.call("list_runs", "GET", "runs", params=params)

    def get_run(self, run_id: str, *, params=None) -> Response:
        return self.call("get_run", "GET", f"runs/{run_id}", route_params={"run_id": run_id}, params=params)

    def cancel_run(self, run_id: str, *, params=None) -> Response:
        return self.call(
            "cancel_run", "POST", f"runs/{run_id}/cancel", route_params={"run_id": run_id}, params=params
        )

    # --- timer ----------------------------------------------------------------------------------------
    def tick(self, past_due: bool = False) -> None:
        self.user_function("scheduled_run")(TimerRequest(past_due=past_due))


class Response:
    """An HttpResponse with its JSON body parsed (and checked to be JSON)."""

    def __init__(self, response: func.HttpResponse):
        self.raw = response
        self.status = response.status_code
        self.headers = response.headers
        self.content_type = response.mimetype
        self.json = json.loads(response.get_body())

    @property
    def error_code(self) -> str | None:
        error = self.json.get("error") if isinstance(self.json, dict) else None
        return error.get("code") if isinstance(error, dict) else None

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.json!r}>"


def end_local_runs(timeout: float = 60.0) -> None:
    """Cancel the local runs still going and wait for their runners to record the end (for teardowns)."""
    from pipeline_def.service import get_service

    service = get_service()
    for run in service.list_runs(100):
        if not run.terminal:
            service.cancel(run.run_id)
    wait_for(lambda: all(run.terminal for run in service.list_runs(100)), timeout=timeout)


def wait_for(condition: Callable[[], object], timeout: float = 90.0, interval: float = 0.05) -> object:
    """Poll `condition` until it returns something truthy, within a bounded deadline. Only for waiting on
    real processes (a local run's runner), never on a clock."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
