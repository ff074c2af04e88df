"""The azureml-v2 backend's request bodies pinned by the real azure-ai-ml 1.35.2: in one emulated workspace the
app registers its environment, code asset, three command components and pipeline component and submits a job;
in a second one azure-ai-ml creates the same objects (built from the same names, commands and port types) and
submits the same job. Both sets of bodies must be equal once ids, names and the SDK's own bookkeeping are
normalised (NORMALISED says what and why). Then azure-ai-ml reads the app's job: `jobs.get`,
`jobs.list(parent_job_name=...)`, `jobs.begin_cancel`.

No name leaves 127.0.0.1 (as in tests/test_emulator_v2.py, whose MLClient set-up, fixtures_fakes.ml_client, this
reuses)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from emulator.aml import FakeAzureML
from emulator.identity import FakeManagedIdentity
from tests.fixtures_fakes import DEVSTORE_ACCOUNT, DEVSTORE_KEY, AzuriteBlob, ml_client
from tests.test_aml_v2_backend import v2_environ

pytest.importorskip("azure.ai.ml")

OCCURRENCE = "2026-12-01T01:30:00Z"
# What the comparison leaves out, and why.
NORMALISED = {
    "the workspace path": "the two workspaces differ by name; ids are compared as {WS}/...",
    "the code asset's GUID name": "azure-ai-ml names an anonymous code asset with a fresh GUID; the app derives a "
    "stable one from the content hash (found again by hash either way)",
    "the upload container and host in codeUri": "each startPendingUpload hands out a fresh container",
    "componentSpec._source, job settings._source, jobs.*._source, sourceJobId": "azure-ai-ml's record of how the "
    "object was built (CLASS, DSL, REMOTE.WORKSPACE.COMPONENT); the service keeps it as given",
    "properties.client_component_hash": "azure-ai-ml's hash of its own component object, used for its "
    "client-side cache",
    "the job's `jobs`": "azure-ai-ml copies the registered pipeline component's node graph into the job; the app "
    "sends `jobs: {}` and names the component by componentId (docs' aml-v2-notes (b); live check 1)",
    "the job's properties mlflow.source.git.* and azureml.git.dirty": "azure-ai-ml records the git state of the "
    "folder it runs in; the app runs from a package, not a checkout",
    "the job's `computeId`": "the app sends the compute as computeId as well as settings.default_compute (notes "
    "(b)); azure-ai-ml sends only the latter",
}


@pytest.fixture(scope="module")
def both(azurite: AzuriteBlob, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """Two emulated workspaces (the app's, the SDK's) with the data asset and two model versions, a JWT
    identity endpoint, and this process's settings aimed at the app's workspace."""
    from pipeline_def.service import reset_service

    tmp = tmp_path_factory.mktemp("v2-fidelity")
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        FakeAzureML(workspace_name="ws-fid-app") as app_ws,
        FakeAzureML(workspace_name="ws-fid-sdk") as sdk_ws,
        FakeManagedIdentity(jwt=True) as identity,
    ):
        data = tmp / "ames.csv"
        data.write_text("Order,PID,SalePrice\n1,10,100\n")
        for fake in (app_ws, sdk_ws):
            fake.use_blob_store(azurite.url, DEVSTORE_ACCOUNT, DEVSTORE_KEY)
            fake.register_data_v2("AmesHousing", data)
            fake.register_model("HousePrices", {"model.joblib": b"m1"})
            fake.register_model("HousePrices", {"model.joblib": b"m2"})
        for name in [n for n in os.environ if n.startswith(("AML_", "PIPELINE_"))]:
            monkeypatch.delenv(name)
        (tmp / "home").mkdir()
        for name, value in v2_environ(app_ws, identity, HOME=str(tmp / "home")).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AZUREML_CURRENT_CLOUD", "AzureCloud")  # MLClient sets it; restored after
        reset_service()
        yield SimpleNamespace(app=app_ws, sdk=sdk_ws, identity=identity)
        reset_service()


@pytest.fixture(scope="module")
def published(both: SimpleNamespace) -> SimpleNamespace:
    """The app's tick in its workspace; azure-ai-ml's registrations and job in the other."""
    from pipeline_def.azureml_v2.backend import AzureMLV2Backend
    from pipeline_def.service import Service
    from pipeline_def.settings import load_settings

    settings = load_settings()
    backend = AzureMLV2Backend(settings)
    outcome = Service(settings, backend).tick(scheduled_for=OCCURRENCE)
    job = both.app.v2_job(outcome.run.run_id)
    sdk_job = _sdk_register_and_submit(both.sdk, settings, backend, outcome.publish.target.version, job)
    return SimpleNamespace(settings=settings, backend=backend, outcome=outcome, job=job, sdk_job=sdk_job)


def _sdk_register_and_submit(fake: FakeAzureML, settings, backend, fingerprint: str, app_job) -> Any:
    """What azure-ai-ml creates for the same pipeline: names, commands and port types taken from the app's
    definitions, the objects and their REST bodies built by the SDK."""
    from azure.ai.ml import Input, Output, dsl
    from azure.ai.ml.entities import CommandComponent, Environment, PipelineJob
    from azure.ai.ml.parallel import RunFunction, parallel_run_function

    from pipeline_def.azureml_v2 import components

    client = ml_client(fake)
    names = components.Names.of(settings, backend.steps)
    env_spec = components.STEP_ENVIRONMENT_V2
    environment = client.environments.create_or_update(
        Environment(
            name=names.environment,
            version=fingerprint,
            image=env_spec["base_image"],
            conda_file={
                "name": names.environment,
                "channels": list(env_spec["conda_channels"]),
                "dependencies": [
                    f"python={env_spec['python_version']}",
                    *env_spec["conda_packages"],
                    {"pip": components.requirement_lines(backend.step_folder)},
                ],
            },
            description="The house-price batch steps (step_scripts/requirements-v2.txt)",
        )
    )

    def port(spec: dict[str, str], kind: type) -> Any:
        extra: dict[str, Any] = {}
        if spec["type"] == "integer":
            extra["min"] = int(spec.get("min", "0"))
        if "mode" in spec:
            extra["mode"] = spec["mode"]
        return kind(type=spec["type"], **extra)

    def gate_input(spec: dict[str, str], value: str) -> Any:
        """A quality-gate input with its default as the SDK takes it: a number, or accept_drift's text."""
        if spec["type"] == "integer":
            return Input(type="integer", min=int(spec.get("min", "0")), default=int(value))
        if spec["type"] == "number":
            return Input(type="number", default=float(value))
        return Input(type=spec["type"], default=value)

    gate_defaults = {"accept_drift": "false", **settings.gate_values}
    registered = {}
    for step in backend.steps:
        ports = components._ports(step)
        inputs = {n: port(s, Input) for n, s in ports["inputs"].items()}
        if "sample_size" in inputs:
            inputs["sample_size"] = Input(type="integer", min=0, default=settings.sample_size)
        if "fingerprint" in inputs:
            inputs["fingerprint"] = Input(type="string", default=fingerprint)
        for name, value in gate_defaults.items():
            if name in inputs:
                inputs[name] = gate_input(ports["inputs"][name], value)
        if step.parallel is not None:
            registered[step.name] = client.components.create_or_update(
                parallel_run_function(
                    name=names.steps[step.name],
                    version=fingerprint,
                    display_name=step.name,
                    is_deterministic=step.reusable,
                    inputs=inputs,
                    outputs={n: port(s, Output) for n, s in ports["outputs"].items()},
                    input_data=f"${{{{inputs.{step.parallel.items}}}}}",
                    instance_count=settings.node_count,
                    max_concurrency_per_instance=settings.parallel_process_count_per_node,
                    mini_batch_size="1",
                    mini_batch_error_threshold=-1,
                    error_threshold=settings.parallel_error_threshold,
                    logging_level="INFO",
                    retry_settings={
                        "max_retries": settings.parallel_run_max_try - 1,
                        "timeout": settings.parallel_run_invocation_timeout,
                    },
                    task=RunFunction(
                        code=str(backend.step_folder),
                        entry_script=step.parallel.entry_script,
                        environment=environment,
                        program_arguments=components.program_arguments(step, settings),
                    ),
                ).component
            )
            continue
        registered[step.name] = client.components.create_or_update(
            CommandComponent(
                name=names.steps[step.name],
                version=fingerprint,
                display_name=step.name,
                code=str(backend.step_folder),
                environment=environment,
                command=components.command(step, settings),
                inputs=inputs,
                outputs={n: port(s, Output) for n, s in ports["outputs"].items()},
                is_deterministic=step.reusable,
            )
        )

    def batch(  # the pipeline component's inputs, as the app registers them
        dataset, dataset_name, dataset_version, model, sample_size, model_version, run_id, fingerprint,
        accept_drift, gate_range_margin, gate_drift_psi, gate_drift_min_rows, gate_missing_tolerance,
        node_count,
    ):  # fmt: skip
        gate = {
            "accept_drift": accept_drift,
            "gate_range_margin": gate_range_margin,
            "gate_drift_psi": gate_drift_psi,
            "gate_drift_min_rows": gate_drift_min_rows,
            "gate_missing_tolerance": gate_missing_tolerance,
        }
        fetch_data = registered["fetch_data"](
            dataset=dataset,
            dataset_name=dataset_name,
            dataset_version=dataset_version,
            sample_size=sample_size,
        )
        predict = registered["predict"](
            new_data=fetch_data.outputs.new_data, model=model, model_version=model_version
        )
        predict.resources.instance_count = node_count
        predict.environment_variables = {"OMP_NUM_THREADS": "1"}
        save_predictions = registered["save_predictions"](
            predictions=predict.outputs.predictions, run_id=run_id, fingerprint=fingerprint, **gate
        )
        return {"latest": save_predictions.outputs.latest, "history": save_predictions.outputs.history}

    ports_of_save = components._ports(next(s for s in backend.steps if s.name == "save_predictions"))[
        "inputs"
    ]
    batch.__annotations__ = {
        "dataset": Input(type="uri_file"),
        "dataset_name": Input(type="string"),
        "dataset_version": Input(type="string"),
        "model": Input(type="custom_model"),
        "sample_size": Input(type="integer", min=0, default=settings.sample_size),
        "model_version": Input(type="string"),
        "run_id": Input(type="string"),
        "fingerprint": Input(type="string", default=fingerprint),
        **{name: gate_input(ports_of_save[name], value) for name, value in gate_defaults.items()},
        "node_count": Input(type="integer", default=settings.node_count),
    }
    pipeline = client.components.create_or_update(
        dsl.pipeline(name=names.pipeline, version=fingerprint, display_name=settings.endpoint_name)(batch)
    )
    given = app_job.job["properties"]
    literals = {k: v["value"] for k, v in given["inputs"].items() if v["jobInputType"] == "literal"}
    job = PipelineJob(
        component=pipeline,
        name=app_job.run_id,
        experiment_name=settings.experiment_name,
        display_name=given["displayName"],
        tags=dict(given["tags"]),
        inputs={
            "dataset": Input(type="uri_file", path="azureml:AmesHousing:1"),
            "model": Input(type="custom_model", path="azureml:HousePrices:2", mode="download"),
            **literals,
        },
        outputs={
            name: Output(type="uri_folder", mode="rw_mount", path=spec["uri"])
            for name, spec in given["outputs"].items()
        },
    )
    job.settings.default_compute = settings.compute_name
    job.settings.continue_on_step_failure = False
    return client.jobs.create_or_update(job)


def _bodies(fake: FakeAzureML) -> dict[str, Any]:
    """The PUT bodies sent to a workspace, keyed `kind/name`, normalised (see NORMALISED)."""
    found = {}
    for record in fake.calls("PUT"):
        if not record.path.startswith(fake.workspace_path) or record.status not in (200, 201):
            continue
        kind, name = record.path[len(fake.workspace_path) :].split("/")[1:3]
        if kind == "codes":
            name = "{code}"
        found[f"{kind}/{name}"] = _normalise(json.loads(record.body), fake)
    return found


def _normalise(body: Any, fake: FakeAzureML) -> Any:
    text = json.dumps(body).replace(fake.workspace_path, "{WS}")
    text = re.sub(r"/codes/[0-9a-f-]{36}/", "/codes/{code}/", text)
    text = re.sub(r"http://127\.0\.0\.1:\d+/devstoreaccount1/code-[0-9a-f]+/", "{upload}/", text)
    body = json.loads(text)
    properties = body.get("properties") or {}
    (properties.get("properties") or {}).pop("client_component_hash", None)
    spec = properties.get("componentSpec") or {}
    for key in ("_source", "sourceJobId"):
        spec.pop(key, None)
    for holder in (spec.get("jobs") or {}, properties.get("jobs") or {}):
        for node in holder.values():
            node.pop("_source", None)
    (properties.get("settings") or {}).pop("_source", None)
    if properties.get("jobType") == "Pipeline":
        properties.pop("jobs", None)
        properties.pop("computeId", None)
        for key in list(properties.get("properties") or {}):
            if key.startswith("mlflow.source.git.") or key == "azureml.git.dirty":
                del properties["properties"][key]
    return body


def test_the_apps_registrations_and_job_are_what_azure_ai_ml_sends(both, published) -> None:
    app, sdk = _bodies(both.app), _bodies(both.sdk)

    assert sorted(app) == sorted(sdk)
    assert [k.split("/")[0] for k in sorted(app)] == ["codes", *["components"] * 4, "environments", "jobs"]
    for key in sorted(app):
        assert app[key] == sdk[key], (
            f"{key} differs:\napp {json.dumps(app[key], indent=1)}\nsdk {json.dumps(sdk[key], indent=1)}"
        )
    # the same files were uploaded, and both found one code asset by its hash
    uploads = []
    for fake in (both.app, both.sdk):
        (container,) = fake.code_uploads
        client = fake.blob_store.container_client(container)
        uploads.append(sorted((b.name, b.size) for b in client.list_blobs()))
    assert uploads[0] == uploads[1] and uploads[0]
    assert published.sdk_job.status == "NotStarted"


def test_azure_ai_ml_reads_lists_the_steps_of_and_cancels_the_apps_job(both, published) -> None:
    client = ml_client(both.app)
    name = published.job.run_id

    job = client.jobs.get(name)
    assert (job.name, job.status, job.experiment_name) == (
        name,
        "NotStarted",
        published.settings.experiment_name,
    )
    assert job.tags["batchpred_pipeline"] == published.settings.endpoint_name
    children = list(client.jobs.list(parent_job_name=name))
    assert [c.display_name for c in children] == [s.name for s in published.backend.steps]

    client.jobs.begin_cancel(name).result(timeout=30)
    assert client.jobs.get(name).status in ("CancelRequested", "Canceled")
    assert published.backend.get_run(name).status in ("canceling", "canceled")


def test_the_app_reads_a_job_azure_ai_ml_submitted_as_one_of_its_own(both, published) -> None:
    """The same job, submitted by the SDK in the other workspace, answers the app's read there."""
    from pipeline_def.azureml_v2.backend import AzureMLV2Backend
    from pipeline_def.settings import load_settings

    environ = {**os.environ, **v2_environ(both.sdk, both.identity)}
    backend = AzureMLV2Backend(load_settings(environ))
    run = backend.get_run(published.sdk_job.name)
    assert (run.status, run.trigger) == ("queued", "timer")
    assert [s.name for s in run.steps] == [s.name for s in published.backend.steps]
    assert [r.run_id for r in backend.list_runs(5)] == [published.sdk_job.name]


def test_the_normalised_fields_are_listed_with_a_reason() -> None:
    assert all(reason for reason in NORMALISED.values()) and len(NORMALISED) == 8
