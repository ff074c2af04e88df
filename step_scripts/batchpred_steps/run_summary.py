"""What save_predictions tells the app about where its predictions went (rows, the history folder, the latest
folder when promoted, the gate's verdict and report), as `batchpred_*` tags of the step's own run, and the
two ways it is recorded without azureml: a file the local runner names (BATCHPRED_SUMMARY_FILE), or Azure ML
run history over plain REST with the job's run token (Azure ML v2). aml_v1.py tags the run with azureml-core.

The app reads these tags from the step runs it already lists for GET /api/runs/{id} (pipeline_def/runs.py,
predictions_from_steps), so no call is added on either side."""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

log = logging.getLogger("batchpred_steps.run_summary")

TAG_PREFIX = "batchpred_"
SUMMARY_FILE_VARIABLE = "BATCHPRED_SUMMARY_FILE"
# What the Azure ML runtime gives a job's process (azureml-core's run context reads the same names); all are
# needed to address the run in run history.
RUN_VARIABLES = (
    "AZUREML_SERVICE_ENDPOINT",
    "AZUREML_RUN_TOKEN",
    "AZUREML_RUN_ID",
    "AZUREML_ARM_SUBSCRIPTION",
    "AZUREML_ARM_RESOURCEGROUP",
    "AZUREML_ARM_WORKSPACE_NAME",
    "AZUREML_ARM_PROJECT_NAME",
)
TIMEOUT_SECONDS = 30.0
ATTEMPTS = 3


def summary_of(manifest: Mapping[str, Any], latest: str | None) -> dict[str, str]:
    """The run's summary as tags: `latest` is the latest folder's datastore path when the run replaced it."""
    gate = manifest.get("quality_gate") or {}
    values = {
        "rows": manifest.get("rows"),
        "history_path": manifest.get("history_folder"),
        "latest_path": latest,
        "gate": gate.get("verdict"),
        "gate_report": gate.get("report"),
        "gate_failed_check": gate.get("failed_check"),
        "accept_drift": "true" if manifest.get("accept_drift") else None,
    }
    return {f"{TAG_PREFIX}{key}": str(value) for key, value in values.items() if value is not None}


def record_summary(tags: dict[str, str], environ: Mapping[str, str] | None = None) -> str | None:
    """Record `tags` where this platform's app reads them; return where (None when nowhere: a step run by
    hand). Never fails the step: the predictions are saved by now, and a summary that cannot be recorded is
    logged as a warning."""
    env = os.environ if environ is None else environ
    try:
        if env.get(SUMMARY_FILE_VARIABLE):
            target = Path(env[SUMMARY_FILE_VARIABLE])
            target.write_text(json.dumps({"tags": tags}, indent=2) + "\n", encoding="utf-8")
            return str(target)
        if all(env.get(name) for name in RUN_VARIABLES):
            return tag_own_run(tags, env)
    except (OSError, ValueError) as error:
        log.warning("could not record the run's summary (%s); GET /api/runs/{id} will not show it", error)
    return None


def run_url(env: Mapping[str, str]) -> str:
    """This job's own run in run history: `{endpoint}/history/v1.0{workspace}/experiments/{e}/runs/{id}`."""
    workspace = (
        f"/subscriptions/{quote(env['AZUREML_ARM_SUBSCRIPTION'], safe='')}"
        f"/resourceGroups/{quote(env['AZUREML_ARM_RESOURCEGROUP'], safe='')}"
        "/providers/Microsoft.MachineLearningServices"
        f"/workspaces/{quote(env['AZUREML_ARM_WORKSPACE_NAME'], safe='')}"
    )
    return (
        f"{env['AZUREML_SERVICE_ENDPOINT'].rstrip('/')}/history/v1.0{workspace}"
        f"/experiments/{quote(env['AZUREML_ARM_PROJECT_NAME'], safe='')}"
        f"/runs/{quote(env['AZUREML_RUN_ID'], safe='')}"
    )


def tag_own_run(tags: dict[str, str], env: Mapping[str, str]) -> str:
    """PATCH this job's run in run history with `tags` (merged into its tags), authenticated by the job's run
    token; a few attempts on a connection error or a 5xx/429 answer."""
    url = run_url(env)
    body = json.dumps({"runId": env["AZUREML_RUN_ID"], "tags": tags}).encode()
    last: Exception | None = None
    for _attempt in range(ATTEMPTS):
        request = urllib.request.Request(
            url,
            data=body,
            method="PATCH",
            headers={
                "Authorization": f"Bearer {env['AZUREML_RUN_TOKEN']}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as answer:
                answer.read()
            return url
        except urllib.error.HTTPError as error:
            if error.code < 500 and error.code != 429:
                raise OSError(f"run history answered {error.code} to the run's tags") from error
            last = error
        except (urllib.error.URLError, TimeoutError) as error:
            last = error
    raise OSError(f"run history did not take the run's tags: {last}")
