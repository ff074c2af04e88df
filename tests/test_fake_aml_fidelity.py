"""The real azureml SDK v1 against the fake Azure ML service: if the SDK can get, list, submit, follow, cancel
and publish through it, the fake speaks the wire contract the SDK was written for."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from emulator.aml import FakeAzureML
from tests.fixtures_fakes import sdk_workspace

pytest.importorskip("azureml.pipeline.core")

WS = "{WS}"


@pytest.fixture
def workspace(fake_aml: FakeAzureML, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loopback_only):
    """The SDK's Workspace aimed at the fake as docs/aml-v1-rest.md shows, with HOME in a temporary folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    yield sdk_workspace(fake_aml)
    assert loopback_only == [], f"the SDK tried to reach {loopback_only}"


def _wire(fake: FakeAzureML) -> list[str]:
    return [f"{r.method} {r.path.replace(fake.workspace_path, WS)}" for r in fake.requests]


def test_published_pipeline_get_reads_name_version_status_and_endpoint(fake_aml, workspace):
    from azureml.pipeline.core import PublishedPipeline

    entity = fake_aml.add_published_pipeline("batch", "fp-1", {"sample_size": "10"})
    published = PublishedPipeline.get(workspace, entity["Id"])
    assert (published.name, published.version, published.status) == ("batch", "fp-1", "Active")
    assert published.endpoint == entity["Url"]
    assert f"GET /pipelines/v1.0{WS}/Pipelines/{entity['Id']}" in _wire(fake_aml)


def test_published_pipeline_list_shows_active_pipelines_only(fake_aml, workspace):
    from azureml.pipeline.core import PublishedPipeline

    active = fake_aml.add_published_pipeline("batch", "1")
    fake_aml.add_published_pipeline("batch", "0", status="Disabled")
    assert [p.id for p in PublishedPipeline.list(workspace)] == [active["Id"]]
    listing = fake_aml.calls("GET", "/Pipelines")
    assert listing[-1].query == {"activeOnly": "true"}


def test_published_pipeline_submit_starts_a_run_with_string_parameters(fake_aml, workspace):
    from azureml.pipeline.core import PublishedPipeline

    entity = fake_aml.add_published_pipeline("batch", "1", {"sample_size": "10", "model_version": "latest"})
    run = PublishedPipeline.get(workspace, entity["Id"]).submit(
        workspace, "exp-sdk", pipeline_parameters={"sample_size": 3}
    )
    fake_run = fake_aml.runs[run.id]
    assert fake_run.pipeline_id == entity["Id"]
    assert fake_run.experiment == "exp-sdk"
    assert fake_run.parameters == {"sample_size": "3", "model_version": "latest"}
    submit = fake_aml.calls("POST", "/PipelineSubmit/")[-1]
    assert submit.json()["ParameterAssignments"] == {"sample_size": "3"}
    assert submit.json()["RunSource"] == "SDK"
    assert submit.header("Content-Type").startswith("application/json-patch+json")
    assert submit.header("Authorization") == "Bearer test-token"


def test_pipeline_endpoint_get_by_name_then_submit_runs_the_default_version(fake_aml, workspace):
    from azureml.pipeline.core import PipelineEndpoint

    old = fake_aml.add_published_pipeline("batch", "1")
    new = fake_aml.add_published_pipeline("batch", "2", {"sample_size": "10"})
    endpoint = fake_aml.add_endpoint("house-prices", old["Id"])
    fake_aml.add_endpoint_version(endpoint["Id"], new["Id"], make_default=True)

    sdk_endpoint = PipelineEndpoint.get(workspace, name="house-prices")
    assert (sdk_endpoint.id, sdk_endpoint.default_version) == (endpoint["Id"], "1")
    run = sdk_endpoint.submit("exp-ep", pipeline_parameters={"sample_size": 5})
    assert fake_aml.runs[run.id].pipeline_id == new["Id"]
    assert fake_aml.runs[run.id].parameters == {"sample_size": "5"}
    assert fake_aml.calls("GET", "/PipelineEndpoints/Name")[-1].query == {"Name": "house-prices"}
    assert f"POST /pipelines/v1.0{WS}/PipelineRuns/PipelineEndpointSubmit/Id/{endpoint['Id']}" in _wire(
        fake_aml
    )


def test_pipeline_endpoint_submit_of_a_given_version_runs_that_version(fake_aml, workspace):
    from azureml.pipeline.core import PipelineEndpoint

    old = fake_aml.add_published_pipeline("batch", "1")
    new = fake_aml.add_published_pipeline("batch", "2")
    endpoint = fake_aml.add_endpoint("house-prices", old["Id"])
    fake_aml.add_endpoint_version(endpoint["Id"], new["Id"], make_default=True)

    run = PipelineEndpoint.get(workspace, name="house-prices").submit("exp-ep", pipeline_version="0")
    assert fake_aml.runs[run.id].pipeline_id == old["Id"]
    submit = fake_aml.calls("POST", "/PipelineEndpointSubmit/")[-1]
    assert submit.path.endswith(f"/PipelineEndpointSubmit/Id/{endpoint['Id']}/0")
    assert submit.query == {"pipelineVersion": "0"}


def test_pipeline_run_status_follows_the_fake_and_cancel_reaches_it(fake_aml, workspace):
    from azureml.core import Experiment
    from azureml.pipeline.core import PipelineRun

    pipeline = fake_aml.add_published_pipeline("batch", "1")
    fake_run = fake_aml.add_run(pipeline["Id"], experiment="exp-runs")
    run = PipelineRun(Experiment(workspace, "exp-runs"), fake_run.run_id)
    assert run.get_status() == "NotStarted"
    fake_aml.set_run_status(fake_run.run_id, "Running")
    assert run.get_status() == "Running"
    run.cancel()
    assert fake_run.cancel_requested
    assert fake_run.history_status == "CancelRequested"
    assert f"DELETE /pipelines/v1.0{WS}/PipelineRuns/{fake_run.run_id}/Execution" in _wire(fake_aml)
    fake_aml.set_run_status(fake_run.run_id, "Canceled")
    assert run.get_status() == "Canceled"


def test_pipeline_run_get_steps_lists_the_step_runs_by_name(fake_aml, workspace):
    from azureml.core import Experiment
    from azureml.pipeline.core import PipelineRun

    pipeline = fake_aml.add_published_pipeline("batch", "1")
    fake_run = fake_aml.add_run(pipeline["Id"], experiment="exp-steps")
    fake_aml.set_run_status(fake_run.run_id, "Finished")
    run = PipelineRun(Experiment(workspace, "exp-steps"), fake_run.run_id)
    # a StepRun's status is its graph node's code (Finished), not run history's (Completed)
    steps = {step.name: step.get_status() for step in run.get_steps()}
    assert steps == {"fetch_data": "Finished", "predict": "Finished", "save_predictions": "Finished"}
    children = fake_aml.calls("GET", "/children")[-1]
    assert children.query == {"$orderby": "StartTimeUtc desc", "$top": "500"}


def test_sdk_error_for_a_submit_to_a_disabled_pipeline_carries_the_service_message(fake_aml, workspace):
    from azureml.pipeline.core import PublishedPipeline

    entity = fake_aml.add_published_pipeline("batch", "1")
    published = PublishedPipeline.get(workspace, entity["Id"])
    fake_aml.pipelines[entity["Id"]]["EntityStatus"] = "Disabled"
    with pytest.raises(Exception, match="disabled") as caught:
        published.submit(workspace, "exp")
    # the SDK parsed the PascalCase error body (code and message) of a 404
    assert caught.value.response.status_code == 404
    assert caught.value.error.error.code == "PipelineDisabled"
    assert fake_aml.runs == {}


def _minimal_pipeline(workspace, folder: Path):
    from azureml.pipeline.core import Pipeline, PipelineParameter
    from azureml.pipeline.steps import PythonScriptStep

    folder.mkdir(exist_ok=True)
    (folder / "hello.py").write_text("print('hello')\n")
    step = PythonScriptStep(
        name="hello",
        script_name="hello.py",
        arguments=["--n", PipelineParameter("sample_size", default_value=10)],
        source_directory=str(folder),
        compute_target="cpu-cluster",
        allow_reuse=False,
    )
    return Pipeline(workspace, steps=[step])


def test_sdk_publishes_a_minimal_pipeline_without_uploading_any_blob(fake_aml, workspace, tmp_path):
    pipeline = _minimal_pipeline(workspace, tmp_path / "src")
    published = pipeline.publish(
        name="batch", description="d", version="fp-1", continue_on_step_failure=False
    )

    entity = fake_aml.pipelines[published.id]
    assert (entity["Name"], entity["Version"], entity["TotalRunSteps"]) == ("batch", "fp-1", 1)
    assert entity["ParameterAssignments"] == {"sample_size": "10"}
    assert [name for _node, name in fake_aml.pipeline_steps[published.id]] == ["hello"]
    (snapshot_id,) = fake_aml.snapshots
    assert fake_aml.snapshot_files(snapshot_id) == ["hello.py"]
    wire = _wire(fake_aml)
    for call in (
        f"GET /pipelines/v1.0{WS}/DataTypes",
        f"GET /datastore/v1.0{WS}/default",
        f"GET /content/v1.0{WS}/snapshots/latest/metadata",
        f"POST /content/v2.0{WS}/snapshots/getblob",
        f"POST /pipelines/v1.0{WS}/Modules",
        f"POST /pipelines/v1.0{WS}/Pipelines/Create",
    ):
        assert call in wire, call
    assert all(r.status is not None and r.status < 500 for r in fake_aml.requests)


def test_sdk_publishes_an_endpoint_and_adds_a_new_default_version(fake_aml, workspace, tmp_path):
    from azureml.pipeline.core import PipelineEndpoint

    pipeline = _minimal_pipeline(workspace, tmp_path / "src")
    first = pipeline.publish(name="batch", version="fp-1")
    endpoint = PipelineEndpoint.publish(workspace, name="house-prices", pipeline=first, description="e")
    assert fake_aml.endpoints[endpoint.id]["PipelineVersionList"] == [
        {"Version": "0", "PipelineId": first.id}
    ]

    second = pipeline.publish(name="batch", version="fp-2")
    fake_aml.clear_requests()
    endpoint.add_default(second)
    entity = fake_aml.endpoints[endpoint.id]
    assert entity["DefaultVersion"] == "1"
    assert entity["PipelineVersionList"][1] == {"Version": "1", "PipelineId": second.id}
    assert _wire(fake_aml)[-2:] == [
        f"GET /pipelines/v1.0{WS}/PipelineEndpoints/Id/{endpoint.id}",
        f"PUT /pipelines/v1.0{WS}/PipelineEndpoints/{endpoint.id}",
    ]
    # a second endpoint of the same name is refused by the SDK itself, after a look-up by name
    with pytest.raises(ValueError, match="already exists"):
        PipelineEndpoint.publish(workspace, name="house-prices", pipeline=second, description="e")


def test_project_definition_publishes_through_the_fake_with_a_managed_identity_token(
    fake_aml, fake_identity, aml_env, loopback_only
):
    definition = pytest.importorskip("pipeline_def.azureml.definition")
    from azure.identity import DefaultAzureCredential
    from azureml.pipeline.core import PipelineEndpoint

    from pipeline_def.settings import load_settings
    from pipeline_def.steps import STEPS

    settings = load_settings()
    workspace = definition.connect_workspace(settings, DefaultAzureCredential())
    pipeline = definition.build_pipeline(workspace, settings, "fp-test")
    published = pipeline.publish(name=settings.endpoint_name, version="fp-test")
    endpoint = PipelineEndpoint.publish(
        workspace, name=settings.endpoint_name, pipeline=published, description="e"
    )

    entity = fake_aml.pipelines[published.id]
    # every run parameter is a pipeline parameter: node_count through the parallel predict's NodeCount
    assert entity["ParameterAssignments"] == settings.parameter_defaults
    assert [name for _node, name in fake_aml.pipeline_steps[published.id]] == [s.name for s in STEPS]
    (snapshot_id,) = fake_aml.snapshots
    assert {f"{s.script}" for s in STEPS} <= set(fake_aml.snapshot_files(snapshot_id))
    # fetch_data must never be reused: every run samples new rows; the steps after it may be
    reuse = {
        module["Data"]["Name"]: module["Data"]["IsDeterministic"] for module in fake_aml.modules.values()
    }
    assert reuse == {s.name: s.reusable for s in STEPS} and reuse["fetch_data"] is False
    # every call carried a managed-identity token for ARM
    assert {r.audience for r in fake_aml.requests if not r.path.startswith("/discovery")} <= {
        "https://management.azure.com",
        "https://management.core.windows.net",
        "https://management.core.windows.net/",
    }
    assert fake_identity.requests
    assert loopback_only == []

    run = endpoint.submit(settings.experiment_name)
    assert [step.name for step in fake_aml.runs[run.id].steps] == [s.name for s in STEPS]


def test_sdk_disables_a_published_pipeline_and_an_endpoint(fake_aml, workspace):
    from azureml.pipeline.core import PipelineEndpoint, PublishedPipeline

    entity = fake_aml.add_published_pipeline("batch", "1")
    endpoint = fake_aml.add_endpoint("house-prices", entity["Id"])
    PublishedPipeline.get(workspace, entity["Id"]).disable()
    assert fake_aml.pipelines[entity["Id"]]["EntityStatus"] == "Disabled"
    status_put = fake_aml.calls("PUT", "/status")[-1]
    assert status_put.json() == "Disabled"
    PipelineEndpoint.get(workspace, id=endpoint["Id"]).disable()
    assert fake_aml.endpoints[endpoint["Id"]]["EntityStatus"] == "Disabled"


def test_sdk_creates_an_experiment_it_does_not_find(fake_aml, workspace):
    from azureml.core import Experiment

    experiment = Experiment(workspace, "brand-new")
    assert experiment.id == fake_aml.experiments["brand-new"]["experimentId"]
    assert [r.method for r in fake_aml.calls(path_contains="/experiments/brand-new")] == ["GET", "POST"]


# Ids the service or the SDK makes up afresh for each publish: graph node ids (8 hex digits) and GUIDs.
_MINTED_ID = re.compile(r"\b[0-9a-f]{8}(?:-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})?\b")


def _ids_by_first_use(value, names: dict[str, str]):
    """`value` with every minted id replaced by <idN>, N its order of first appearance, so two publishes of
    the same graph compare equal while the links between ids (edges, module ids) still count."""
    if isinstance(value, dict):
        return {key: _ids_by_first_use(item, names) for key, item in value.items()}
    if isinstance(value, list):
        return [_ids_by_first_use(item, names) for item in value]
    if isinstance(value, str):
        return _MINTED_ID.sub(lambda m: names.setdefault(m.group(0), f"<id{len(names)}>"), value)
    return value


def _published_graph(fake: FakeAzureML, step_class, parallel_classes=None) -> dict:
    """Publish the project's pipeline into `fake` with the given step classes; return what went on the wire:
    the Modules bodies (by step name: the SDK creates them from a thread pool) and the Pipelines/Create body."""
    from azure.identity import DefaultAzureCredential

    from pipeline_def.azureml import definition
    from pipeline_def.settings import load_settings

    settings = dataclasses.replace(load_settings(), api_base=fake.base_url)
    with definition.private_sdk_state():  # fresh SDK caches: the second publish must not reuse the first's
        workspace = definition.connect_workspace(settings, DefaultAzureCredential())
        pipeline = definition.build_pipeline(
            workspace, settings, "fp-same", step_class=step_class, parallel_classes=parallel_classes
        )
        pipeline.publish(name=settings.endpoint_name, version="fp-same", continue_on_step_failure=False)
    modules = sorted((r.json() for r in fake.calls("POST", "/Modules")), key=lambda body: body["Name"])
    (create,) = fake.calls("POST", "/Pipelines/Create")
    wire = sorted(_MINTED_ID.sub("<id>", f"{r.method} {r.path}") for r in fake.requests)
    return {"modules": modules, "create": create.json(), "wire": wire}


def test_steps_built_without_azureml_pipeline_steps_publish_what_its_python_script_step_would(
    fake_aml, fake_identity, aml_env, loopback_only
):
    """definition.py builds its steps from azureml-pipeline-core's base classes so the deployed app can do
    without azureml-pipeline-steps; the service must receive exactly what the SDK's PythonScriptStep, and for
    the parallel predict its ParallelRunStep and ParallelRunConfig, send."""
    import sys

    from azureml.pipeline.steps import ParallelRunConfig, ParallelRunStep, PythonScriptStep

    path_before = list(sys.path)
    ours = _published_graph(fake_aml, None)
    assert sys.path == path_before  # the parallel step's build adds the step folder; it is put back
    with FakeAzureML(fake_aml.subscription_id, fake_aml.resource_group, fake_aml.workspace_name) as other:
        sdk = _published_graph(other, PythonScriptStep, (ParallelRunStep, ParallelRunConfig))

    for graph in (ours, sdk):
        names: dict[str, str] = {}
        graph["modules"] = _ids_by_first_use(graph["modules"], names)
        graph["create"] = _ids_by_first_use(graph["create"], names)
    kinds = {m["Name"]: (m["StepType"], m.get("ModuleType")) for m in ours["modules"]}
    assert kinds == {
        "fetch_data": ("PythonScriptStep", None),
        "predict": ("ParallelRunStep", "BatchInferencing"),
        "save_predictions": ("PythonScriptStep", None),
    }
    assert len(ours["create"]["Graph"]["ModuleNodes"]) == 3
    (predict,) = [
        node
        for node in ours["create"]["Graph"]["ModuleNodes"]
        if {"Name": "Script", "Value": "driver/amlbi_main.py", "ValueType": "0"} in node["ModuleParameters"]
    ]
    parameters = {p["Name"]: p for p in predict["ModuleParameters"]}
    assert (parameters["NodeCount"]["ValueType"], parameters["NodeCount"]["Value"]) == ("1", "node_count")
    assert parameters["Target"]["Value"] == "cpu-cluster"
    metadata = {p["Name"]: p["Value"] for p in predict["ModuleMetadataParameters"]}
    assert json.loads(metadata["BatchInferencingMetaData"])["EntryScript"] == "score_parallel.py"
    assert json.loads(predict["Runconfig"])["environmentVariables"] == {"OMP_NUM_THREADS": "1"}
    assert json.dumps(ours["modules"], sort_keys=True) == json.dumps(sdk["modules"], sort_keys=True)
    assert json.dumps(ours["create"], sort_keys=True) == json.dumps(sdk["create"], sort_keys=True)
    assert ours["wire"] == sdk["wire"]
    assert loopback_only == []


def test_sdk_filtered_run_listing_finds_the_right_pipeline_runs_through_runs_query(fake_aml, workspace):
    """Run.list / Experiment.get_runs with type, tags, properties and status filters is one
    `POST .../experiments/{name}/runs:query`: the fake answers the filter azureml-core builds, and the SDK
    turns each answer into a PipelineRun (it dispatches on runType azureml.PipelineRun)."""
    from azureml._restclient.experiment_client import ExperimentClient
    from azureml.core import Experiment, Run
    from azureml.pipeline.core import PipelineRun

    ours = fake_aml.add_published_pipeline("batch", "1")
    other = fake_aml.add_published_pipeline("other", "1")
    timer_done = fake_aml.add_run(ours["Id"], experiment="exp", status="Finished", tags={"trigger": "timer"})
    timer_going = fake_aml.add_run(ours["Id"], experiment="exp", status="Running", tags={"trigger": "timer"})
    http_going = fake_aml.add_run(ours["Id"], experiment="exp", status="Running", tags={"trigger": "http"})
    fake_aml.add_run(other["Id"], experiment="exp", status="Running", tags={"trigger": "timer"})
    fake_aml.add_run(ours["Id"], experiment="elsewhere", status="Running", tags={"trigger": "timer"})
    experiment = Experiment(workspace, "exp")

    going = list(
        Run.list(
            experiment,
            type="azureml.PipelineRun",
            tags={"trigger": "timer"},
            properties={"azureml.pipelineid": ours["Id"]},
            status="Running",
        )
    )
    assert [run.id for run in going] == [timer_going.run_id]
    assert isinstance(going[0], PipelineRun)
    (query,) = fake_aml.calls("POST", "runs:query")
    assert query.path.endswith(f"{fake_aml.workspace_path}/experiments/exp/runs:query")
    assert query.json() == {
        "filter": "((RunType eq azureml.PipelineRun or Properties/azureml.runsource eq azureml.PipelineRun)"
        ' and (Tags/trigger eq "timer")'
        f' and (Properties/azureml.pipelineid eq "{ours["Id"]}")'
        " and (Status eq Running) and (ParentRunId eq null))",
        "orderby": "StartTimeUtc desc",
        "top": 500,
    }

    # every pipeline run of ours, newest first
    listed = [r.id for r in experiment.get_runs(properties={"azureml.pipelineid": ours["Id"]})]
    assert listed == [http_going.run_id, timer_going.run_id, timer_done.run_id]
    # and the limited listing: `last` is the page size (`top`) and the order is the caller's
    client = ExperimentClient(workspace.service_context, "exp")
    newest = client.get_runs(
        last=1, order_by=("CreatedUtc", "desc"), properties={"azureml.pipelineid": ours["Id"]}
    )
    assert next(iter(newest)).run_id == http_going.run_id
    assert fake_aml.calls("POST", "runs:query")[-1].json()["top"] == 1
    assert fake_aml.calls("POST", "runs:query")[-1].json()["orderby"] == "CreatedUtc desc"


def test_sdk_reads_back_a_failed_pipeline_run_and_its_failed_step_error(fake_aml, workspace):
    from azureml.core import Experiment, Run

    pipeline = fake_aml.add_published_pipeline("batch", "1")
    run = fake_aml.add_run(pipeline["Id"], experiment="exp")
    fake_aml.set_run_status(
        run.run_id,
        "Failed",
        steps={"predict": "Failed", "save_predictions": "Canceled"},
        step_errors={"predict": "error: model version 99 is not registered"},
    )
    (failed,) = Run.list(Experiment(workspace, "exp"), status="Failed")
    assert failed.id == run.run_id
    assert failed.get_properties()["azureml.pipelineid"] == pipeline["Id"]
    steps = {step.name: step for step in failed.get_steps()}
    assert steps["predict"].get_status() == "Failed"
    # the RunDto as the SDK deserialised it (what get_details() builds on)
    error = steps["predict"]._run_dto["error"]
    assert error["error"]["message"] == "error: model version 99 is not registered"
