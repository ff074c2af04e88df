"""The Azure Functions app (v2 programming model): a timer and four HTTP routes, each a thin switch to
pipeline_def. No Azure SDK, pandas or scikit-learn is imported here: they load only when a publish or a
local run needs them, so a cold start stays short."""

from __future__ import annotations

import azure.functions as func

from pipeline_def.app import http_api
from pipeline_def.app.timer import run_tick, timer_schedule

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


# The schedule is resolved when the host indexes the app: PIPELINE_SCHEDULE if it is set (and valid), the
# product default otherwise. A `%PIPELINE_SCHEDULE%` binding expression would leave the timer unloaded
# whenever the setting is missing.
@app.timer_trigger(arg_name="timer", schedule=timer_schedule(), run_on_startup=False, use_monitor=True)
def scheduled_run(timer: func.TimerRequest) -> None:
    """Publish if needed, apply the overlap policy, submit. A failure re-raises: the invocation fails."""
    run_tick(past_due=bool(timer.past_due))


@app.route(route="runs", methods=["POST"])
def start_run(req: func.HttpRequest) -> func.HttpResponse:
    return _http(http_api.respond(http_api.start_run, req.url, req.get_body()))


@app.route(route="runs", methods=["GET"])
def list_runs(req: func.HttpRequest) -> func.HttpResponse:
    return _http(http_api.respond(http_api.list_runs, dict(req.params)))


@app.route(route="runs/{run_id}", methods=["GET"])
def get_run(req: func.HttpRequest) -> func.HttpResponse:
    return _http(http_api.respond(http_api.get_run, req.route_params.get("run_id")))


@app.route(route="runs/{run_id}/cancel", methods=["POST"])
def cancel_run(req: func.HttpRequest) -> func.HttpResponse:
    return _http(http_api.respond(http_api.cancel_run, req.url, req.route_params.get("run_id")))


def _http(response: http_api.ApiResponse) -> func.HttpResponse:
    return func.HttpResponse(
        body=response.body_bytes(),
        status_code=response.status,
        headers=response.headers,
        mimetype=http_api.JSON_CONTENT_TYPE,
        charset="utf-8",
    )
