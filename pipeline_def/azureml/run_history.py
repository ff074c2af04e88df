"""Run history's verbs, one service for Azure ML v1 and v2 alike (docs/aml-v1-rest.md): the bounded run query,
a run's RunDto, its step runs, a step run's log and a run's tags. Each RunDto is parsed here, once, into a
HistoryRun (history_run.py). Both REST clients (client.py for v1, azureml_v2/client.py for v2) are a RunHistory:
it builds their one Transport, and each adds its own service's verbs, so the run-history requests are written
once."""

from __future__ import annotations

from typing import Any, Unpack
from urllib.parse import quote

from pipeline_def.azureml.history_run import HistoryRun
from pipeline_def.azureml.transport import (
    ARM_SCOPE,
    CallBudget,
    Transport,
    TransportOptions,
    json_body,
    path_segment,
)
from pipeline_def.errors import NotFound, ServiceError
from pipeline_def.settings import Settings

MAX_QUERY_TOP = 100

# How much of a step's log the app reads (its end: where a summary or the last error is).
MAX_LOG_BYTES = 65536


class RunHistory:
    """The run-history verbs of one workspace, on the data plane (AML_API_BASE), sent through the client's
    Transport (token of `scope`, time budget, retries). Thread-safe."""

    def __init__(
        self,
        settings: Settings,
        credential: Any = None,
        *,
        scope: str = ARM_SCOPE,
        **options: Unpack[TransportOptions],
    ) -> None:
        self.settings = settings
        self._transport = Transport(settings, credential, scope=scope, **options)
        self._send = self._transport.send
        self._history = f"{settings.api_base}/history/v1.0{settings.workspace_path}"

    def budget(self) -> CallBudget:
        """The budget of a call (or of several calls that must share one) starting now."""
        return self._transport.budget()

    def query_runs(
        self,
        experiment: str,
        filter_expression: str,
        *,
        top: int,
        orderby: str = "CreatedUtc desc",
        budget: CallBudget | None = None,
    ) -> list[HistoryRun]:
        """At most `top` runs (RunDtos) of `experiment` matching an OData filter (see odata.runs_filter),
        newest first: one page of `POST .../experiments/{name}/runs:query`, the call azureml-core makes for
        Run.list and Experiment.get_runs. What it reads is bounded by `top`, whatever the history. An
        experiment run history does not know yet has no runs."""
        if not 1 <= top <= MAX_QUERY_TOP:
            raise ValueError(f"top must be 1 to {MAX_QUERY_TOP}")
        try:
            response = self._send(
                "POST",
                f"{self._history}/experiments/{path_segment(experiment)}/runs:query",
                json_body={"filter": filter_expression, "orderby": orderby, "top": top},
                what=f"runs of experiment {experiment}",
                budget=budget,
            )
        except NotFound:
            return []
        body = json_body(response, "the run query")
        if isinstance(body, list):
            runs = body
        elif isinstance(body, dict):
            runs = body.get("value") or []
        else:
            raise ServiceError("Azure ML answered the run query with something that is not a page of runs")
        return [HistoryRun.from_wire(run) for run in runs if isinstance(run, dict)][:top]

    def get_history_run(self, experiment: str, run_id: str) -> HistoryRun:
        """Run history's RunDto of a run. Its `status` moves to `CancelRequested` as soon as a cancel is asked
        for, while the pipelines service (or the ARM job) still says `Running`."""
        what = f"run {run_id} in run history"
        response = self._send(
            "GET",
            f"{self._history}/experiments/{path_segment(experiment)}/runs/{path_segment(run_id)}",
            what=what,
        )
        return HistoryRun.from_wire(json_body(response, what))

    def get_step_runs(self, experiment: str, run_id: str) -> list[HistoryRun]:
        """The run-history children (step runs) of a pipeline run, one per step (an entry that is not a RunDto
        is left out, as the run query does)."""
        url = f"{self._history}/experiments/{path_segment(experiment)}/runs/{path_segment(run_id)}/children"
        params: dict[str, str] = {"$orderby": "StartTimeUtc desc", "$top": "500"}
        what = f"steps of run {run_id}"
        children: list[Any] = []
        for _page in range(10):
            body = json_body(self._send("GET", url, params=params, what=what), what) or {}
            if isinstance(body, list):
                children.extend(body)
                break
            children.extend(body.get("value") or [])
            token = body.get("continuationToken")
            if not token:
                break
            params = {**params, "$continuationToken": token}
        return [HistoryRun.from_wire(child) for child in children if isinstance(child, dict)]

    def find_step_runs(self, experiment: str, run_id: str) -> list[HistoryRun] | None:
        """The step runs of a pipeline run (get_step_runs); None while run history has not seen the run yet
        (just submitted)."""
        try:
            return self.get_step_runs(experiment, run_id)
        except NotFound:
            return None

    def get_step_log(self, step_run_id: str, path: str) -> str | None:
        """A step run's artifact (e.g. a parallel step's logs/job_result.txt) as text, its last 64 KiB; None when
        the run has no such artifact. `GET .../artifact/v2.0{WS}/artifacts/content/ExperimentRun/dcid.{run}/
        {path}`: the artifact service's download, what azureml-core's ArtifactOperations.download calls."""
        url = (
            f"{self.settings.api_base}/artifact/v2.0{self.settings.workspace_path}/artifacts/content/"
            f"ExperimentRun/dcid.{path_segment(step_run_id)}/{quote(path, safe='/')}"
        )
        try:
            response = self._send("GET", url, what=f"{path} of step run {step_run_id}")
        except NotFound:
            return None
        return response.content[-MAX_LOG_BYTES:].decode("utf-8", errors="replace")

    def tag_run(self, experiment: str, run_id: str, tags: dict[str, str]) -> None:
        """Add or overwrite tags of a run in run history (`PATCH .../runs/{runId}` with `{"tags": ...}`, what
        azureml-core's `Run.set_tags` sends); the run's other tags stay."""
        self._send(
            "PATCH",
            f"{self._history}/experiments/{path_segment(experiment)}/runs/{path_segment(run_id)}",
            json_body={"runId": run_id, "tags": {str(k): str(v) for k, v in tags.items()}},
            what=f"tags of run {run_id}",
        )


__all__ = ["MAX_LOG_BYTES", "MAX_QUERY_TOP", "HistoryRun", "RunHistory"]
