"""The job context: what a step process inside an Azure ML job gets from the service. A step run is a child
of a pipeline run in run history; `job_environment` gives the AZUREML_* variables (with a run token the
fake accepts) that make the real SDK's `Run.get_context()` that step run, talking to this fake."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

from emulator.aml.state import FakeRun, FakeStep, new_id

# The audience written into run tokens. Real run tokens are issued by Azure ML itself; the fake only needs
# to know its own tokens again (fake.run_tokens), so the value is a label, not a claim anyone checks.
RUN_TOKEN_AUDIENCE = "fake-aml-run-token"
RUN_TOKEN_LIFETIME = timedelta(hours=2)


class JobContext:
    """Mixed into FakeAzureML: step runs of a pipeline run and the environment of a step's process."""

    def add_step_run(self, pipeline_run_id: str, name: str, node_id: str | None = None) -> FakeStep:
        """A new step run (NotStarted) named `name` under the pipeline run; its `run_id` is what
        `job_environment` takes. Runs submitted through the pipelines service already have one step run per
        module node of the published graph (`fake.runs[id].step(name)`); this adds one more."""
        with self.lock:
            run = self.runs[pipeline_run_id]
            self._run_numbers += 1
            step = FakeStep(
                name=name,
                node_id=node_id or new_id()[:8],
                run_id=new_id(),
                created=self.clock(),
                run_number=self._run_numbers,
            )
            run.steps.append(step)
            return step

    def step_run(self, run_id: str) -> tuple[FakeRun, FakeStep]:
        """The pipeline run and the step run whose run id is `run_id` (KeyError if there is none)."""
        with self.lock:
            for run in self.runs.values():
                for step in run.steps:
                    if step.run_id == run_id:
                        return run, step
        raise KeyError(f"no step run {run_id}")

    def run_token(self, run_id: str, lifetime: timedelta = RUN_TOKEN_LIFETIME) -> str:
        """An unsigned JWT with `exp` for `run_id`, which the fake accepts as a bearer token until it
        expires (the SDK reads only its `exp`; it never checks the signature)."""
        expires = self.clock() + lifetime
        header = {"alg": "none", "typ": "JWT"}
        claims = {
            "aud": RUN_TOKEN_AUDIENCE,
            "iss": "fake-aml",
            "exp": int(expires.timestamp()),
            "runId": run_id,
            "workspaceId": self.workspace_id,
        }
        token = f"{_b64(header)}.{_b64(claims)}."
        with self.lock:
            self.run_tokens[token] = run_id
        return token

    def job_environment(self, run_id: str, *, proxy: bool = True) -> dict[str, str]:
        """The variables a step process of step run `run_id` gets inside an Azure ML job. With `proxy` and a
        blob store attached (`use_blob_store`), also the lower-case `http_proxy` that takes
        `http://{account}.blob.core.windows.net` to Azurite and `no_proxy` for the fake itself: dataprep's
        reader honours only the lower-case spellings, and so do requests and azure-storage-blob."""
        pipeline_run, _step = self.step_run(run_id)
        with self.lock:
            experiment = self._ensure_experiment(pipeline_run.experiment)
        environ = {
            "AZUREML_ARM_SUBSCRIPTION": self.subscription_id,
            "AZUREML_ARM_RESOURCEGROUP": self.resource_group,
            "AZUREML_ARM_WORKSPACE_NAME": self.workspace_name,
            "AZUREML_ARM_PROJECT_NAME": pipeline_run.experiment,
            "AZUREML_RUN_ID": run_id,
            "AZUREML_RUN_TOKEN": self.run_token(run_id),
            "AZUREML_SERVICE_ENDPOINT": self.base_url,
            "AZUREML_DISCOVERY_SERVICE_ENDPOINT": self.discovery_url,
            "AZUREML_EXPERIMENT_ID": experiment["experimentId"],
            "AZUREML_WORKSPACE_ID": self.workspace_id,
        }
        if proxy and self.blob_store is not None:
            environ["http_proxy"] = self.blob_store.proxy_url
            environ["no_proxy"] = "127.0.0.1,localhost"
        return environ


def _b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
