"""Run history (`/history/v1.0{WS}/...`): experiments, runs (a pipeline run and its step runs), children
and cancel, in run history's camelCase DTOs."""

from __future__ import annotations

import uuid
from typing import Any

from emulator.aml.odata import parse_filter, sort_key
from emulator.aml.state import FakeRun, FakeStep, iso
from emulator.aml.wire import SEG, RecordedRequest, Response, Route, ServiceError, json_body, route

# The event azureml-core posts with a run's error (azureml._restclient.contracts.events.ERRORNAME).
ERROR_EVENT = "Microsoft.MachineLearning.Run.Error"
# The most runs one page of `runs:query` returns, whatever `top` asks for (the SDK's own page size).
QUERY_PAGE_MAX = 500


class HistoryService:
    """Mixed into FakeAzureML; runs are the pipelines service's (fake.runs), experiments are fake.experiments."""

    def _ensure_experiment(self, name: str) -> dict[str, Any]:
        if name not in self.experiments:
            self.experiments[name] = {
                "experimentId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"experiment/{name}")),
                "name": name,
                "description": None,
                "createdUtc": iso(self.clock()),
                "tags": {},
                "archivedTime": None,
                "latestCreatedRunCreatedUtc": None,
            }
        return self.experiments[name]

    def _history_routes(self) -> list[Route]:
        run_ref = rf"(?:/experiments/{SEG}|/experimentids/{SEG})?/runs/{SEG}"
        return [
            route("GET", rf"/experiments/{SEG}", self._get_experiment),
            route("POST", rf"/experiments/{SEG}", self._create_experiment),
            route("GET", rf"/experiments/{SEG}/runs", self._list_history_runs),
            route("POST", rf"/experiments/{SEG}/runs:query", self._query_history_runs),
            route("GET", rf"{run_ref}/children", self._get_history_children),
            route("GET", rf"{run_ref}/details", self._get_history_run),
            route("POST", rf"{run_ref}/cancel", self._cancel_history_run),
            route("POST", rf"{run_ref}/events", self._post_history_event),
            route("GET", rf"{run_ref}/metricsingest/wait", self._wait_metrics_ingest),
            route("PATCH", rf"{run_ref}", self._patch_history_run),
            route("GET", rf"{run_ref}", self._get_history_run),
        ]

    # run history
    def _history_run(self, run_id: str) -> tuple[FakeRun, FakeStep | None]:
        if run_id in self.runs:
            return self.runs[run_id], None
        for run in self.runs.values():
            for step in run.steps:
                if step.run_id == run_id:
                    return run, step
        raise ServiceError(404, f"Run {run_id} was not found.", "UserError")

    def _check_experiment(self, run: FakeRun, experiment: str | None, experiment_id: str | None) -> None:
        if experiment is not None and experiment != run.experiment:
            raise ServiceError(
                404, f"Run {run.run_id} was not found in experiment {experiment}.", "UserError"
            )
        if (
            experiment_id is not None
            and experiment_id != self._ensure_experiment(run.experiment)["experimentId"]
        ):
            raise ServiceError(404, f"Run {run.run_id} was not found.", "UserError")

    def _get_history_run(
        self, record: RecordedRequest, experiment: str | None, experiment_id: str | None, run_id: str
    ) -> Response:
        run, step = self._history_run(run_id)
        self._check_experiment(run, experiment, experiment_id)
        return Response(200, run.step_dto(step) if step else run.history_dto(self.workspace_path))

    def _get_history_children(
        self, record: RecordedRequest, experiment: str | None, experiment_id: str | None, run_id: str
    ) -> Response:
        run, step = self._history_run(run_id)
        self._check_experiment(run, experiment, experiment_id)
        children = [] if step else [run.step_dto(s) for s in run.steps]
        order = record.query.get("$orderby", "")
        if order.lower().startswith("starttimeutc"):
            children.sort(key=lambda d: d["startTimeUtc"] or "", reverse=order.lower().endswith("desc"))
        top = record.query.get("$top")
        if top and top.isdigit():
            children = children[: int(top)]
        return Response(200, {"value": children, "continuationToken": None, "nextLink": None})

    def _cancel_history_run(
        self, record: RecordedRequest, experiment: str | None, experiment_id: str | None, run_id: str
    ) -> Response:
        run, step = self._history_run(run_id)
        self._check_experiment(run, experiment, experiment_id)
        self._cancel(run)
        return Response(200, run.step_dto(step) if step else run.history_dto(self.workspace_path))

    def _post_history_event(
        self, record: RecordedRequest, experiment: str | None, experiment_id: str | None, run_id: str
    ) -> Response:
        """`POST .../runs/{id}/events`, as azureml-core's RunClient.post_event sends a BaseEvent
        ({timestamp, name, data}). A step's own process posts `Microsoft.MachineLearning.Run.Error` when its
        script raised (RunStatusContext -> set_failed_status -> post_event_error): `data.ErrorResponse` is
        the ErrorResponse whose `error` (RootError) run history then shows as the run's `error`. Every event
        is kept on the step run (`FakeStep.events`); a submitted run's status stays the executor's to set
        (the SDK posts no status event for a _SubmittedRun)."""
        run, step = self._history_run(run_id)
        self._check_experiment(run, experiment, experiment_id)
        event = json_body(record)
        if not isinstance(event.get("name"), str):
            raise ServiceError(400, "An event needs a name.", "BadArgument")
        if step is not None:
            step.events.append(event)
            response = (event.get("data") or {}).get("ErrorResponse")
            if event["name"] == ERROR_EVENT and isinstance(response, dict):
                root = response.get("error")
                if isinstance(root, dict) and root.get("message"):
                    step.error = {k: v for k, v in root.items() if v is not None}
                    step.error_message = str(root["message"])
        return Response(200, None)

    def _wait_metrics_ingest(
        self, record: RecordedRequest, experiment: str | None, experiment_id: str | None, run_id: str
    ) -> Response:
        """`GET .../runs/{id}/metricsingest/wait`: azureml-core's RunStatusContext flushes a run's metrics when
        its script ends well and waits here (200, or 202 + Location to poll). The emulator ingests no
        metrics, so there is never anything to wait for: 200 at once."""
        run, step = self._history_run(run_id)
        self._check_experiment(run, experiment, experiment_id)
        return Response(200, {})

    def _get_experiment(self, record: RecordedRequest, experiment: str) -> Response:
        if experiment not in self.experiments:
            raise ServiceError(404, f"Experiment {experiment} not found.", "UserError")
        return Response(200, self.experiments[experiment])

    def _create_experiment(self, record: RecordedRequest, experiment: str) -> Response:
        return Response(200, self._ensure_experiment(experiment))

    def _list_history_runs(self, record: RecordedRequest, experiment: str) -> Response:
        found = [r for r in self.runs.values() if r.experiment == experiment]
        found.sort(key=lambda r: r.created, reverse=True)
        return Response(
            200, {"value": [r.history_dto(self.workspace_path) for r in found], "continuationToken": None}
        )

    def _patch_history_run(
        self, record: RecordedRequest, experiment: str | None, experiment_id: str | None, run_id: str
    ) -> Response:
        # A step process patches its own run (the SDK records dataset lineage this way); tags and properties
        # are merged (properties are write-once in the real service: an existing key keeps its value).
        run, step = self._history_run(run_id)
        self._check_experiment(run, experiment, experiment_id)
        body = json_body(record)
        target = step if step is not None else run
        for key, value in (body.get("tags") or {}).items():
            target.tags[str(key)] = "" if value is None else str(value)
        for key, value in (body.get("properties") or {}).items():
            target.properties.setdefault(str(key), "" if value is None else str(value))
        if step is not None:
            step.patches.append(body)
        return Response(200, run.step_dto(step) if step else run.history_dto(self.workspace_path))

    def _query_history_runs(self, record: RecordedRequest, experiment: str) -> Response:
        """`POST .../experiments/{name}/runs:query` with a QueryParamsDto body (`filter`, `orderby`, `top`,
        `continuationToken`), as azureml-core's ExperimentClient.get_runs sends it (Run.list,
        Experiment.get_runs): the experiment's runs, pipeline runs and their step runs alike, that match the
        filter, ordered, one page of at most `top` with a continuation token for the next."""
        if experiment not in self.experiments:
            raise ServiceError(404, f"Experiment {experiment} not found.", "UserError")
        query = json_body(record)
        matches = parse_filter(query.get("filter"))
        key, reverse = sort_key(query.get("orderby"))
        top = query.get("top")
        if top is None:
            top = QUERY_PAGE_MAX
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise ServiceError(400, "Invalid query: top must be a positive integer.", "BadArgument")
        token = query.get("continuationToken")
        offset = int(token) if isinstance(token, str) and token.isdigit() else 0
        found = []
        for run in self.runs.values():
            if run.experiment != experiment:
                continue
            for dto in (run.history_dto(self.workspace_path), *(run.step_dto(s) for s in run.steps)):
                if matches(dto):
                    found.append(dto)
        found.sort(key=key, reverse=reverse)
        page = found[offset : offset + min(top, QUERY_PAGE_MAX)]
        following = offset + len(page)
        return Response(
            200,
            {
                "value": page,
                "continuationToken": str(following) if following < len(found) else None,
                "nextLink": None,
            },
        )
