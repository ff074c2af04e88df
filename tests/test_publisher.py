"""ensure_published as docs/product.md defines "published": a current endpoint costs two reads and no SDK import;
anything else publishes (through the real azureml SDK against the fake service), points the endpoint at the
new pipeline and disables what it superseded; racing publishers leave one consistent endpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading

import pytest

from emulator.identity import token_resource
from pipeline_def.azureml.backend import AzureMLBackend
from pipeline_def.azureml.client import AzureMLClient, Endpoint
from pipeline_def.azureml.publisher import default_pipeline_id, ensure_published, previous_pipeline_id
from pipeline_def.fingerprint import compute_fingerprint
from pipeline_def.settings import PROJECT_ROOT, STEP_SCRIPTS_DIR, load_settings


@pytest.fixture
def settings(aml_env):
    return load_settings()


@pytest.fixture
def client(settings):
    return AzureMLClient(settings, sleep=lambda seconds: None)


@pytest.fixture
def fingerprint(settings):
    return compute_fingerprint(settings)


@pytest.fixture
def scripts(tmp_path):
    """A private copy of step_scripts, so a test can change a script without touching the real ones."""
    folder = tmp_path / "step_scripts"
    shutil.copytree(STEP_SCRIPTS_DIR, folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def publish_into(fake_aml):
    """A publish function that publishes straight into the fake's state (no SDK), recording what it did."""
    published: list[str] = []

    def publish(settings, fingerprint):
        entity = fake_aml.add_published_pipeline(
            settings.endpoint_name, fingerprint, parameter_defaults=settings.parameter_defaults
        )
        published.append(entity["Id"])
        return entity["Id"]

    publish.published = published
    return publish


def endpoints_named(fake_aml, name):
    return [e for e in fake_aml.endpoints.values() if e["Name"] == name]


def status_of(fake_aml, pipeline_id):
    return str(fake_aml.pipelines[pipeline_id]["EntityStatus"])


def active(status):
    return status in ("Active", "0")


def assert_one_consistent_endpoint(fake_aml, settings, fingerprint):
    (endpoint,) = endpoints_named(fake_aml, settings.endpoint_name)
    assert active(str(endpoint["EntityStatus"]))
    default = default_pipeline_id(Endpoint.from_wire(endpoint))
    assert fake_aml.pipelines[default]["Version"] == fingerprint
    assert active(status_of(fake_aml, default))
    for item in endpoint["PipelineVersionList"]:
        if item["PipelineId"] != default:
            assert not active(status_of(fake_aml, item["PipelineId"])), item
    return endpoint


# ----- the steady state: nothing to do


def test_a_current_endpoint_costs_two_reads_and_publishes_nothing(settings, client, fake_aml, fingerprint):
    pipeline = fake_aml.add_published_pipeline(settings.endpoint_name, fingerprint)
    endpoint = fake_aml.add_endpoint(settings.endpoint_name, pipeline["Id"])
    fake_aml.clear_requests()
    publish = publish_into(fake_aml)

    state, published = ensure_published(settings, client, fingerprint, publish_fn=publish)

    assert published is False
    assert (state.pipeline_id, state.endpoint_id, state.version) == (
        pipeline["Id"],
        endpoint["Id"],
        fingerprint,
    )
    assert publish.published == []
    assert [r.method for r in fake_aml.requests] == ["GET", "GET"]


def test_a_current_endpoint_imports_no_azureml_module(aml_env, fake_aml, settings, fingerprint):
    pipeline = fake_aml.add_published_pipeline(settings.endpoint_name, fingerprint)
    fake_aml.add_endpoint(settings.endpoint_name, pipeline["Id"])
    fake_aml.clear_requests()
    code = (
        "import json, sys\n"
        "from pipeline_def.service import Service, make_backend\n"
        "from pipeline_def.settings import load_settings\n"
        "settings = load_settings()\n"
        "outcome = make_backend(settings).ensure_published()\n"
        "print(json.dumps({'published': outcome.published,\n"
        "                  'azureml': sorted(m for m in sys.modules if m.split('.')[0] == 'azureml')}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"published": False, "azureml": []}
    assert len(fake_aml.requests) == 2


# ----- publishing through the real SDK


def test_publish_when_missing_through_the_sdk(settings, client, fake_aml, fingerprint):
    state, published = ensure_published(settings, client, fingerprint)

    assert published is True
    endpoint = assert_one_consistent_endpoint(fake_aml, settings, fingerprint)
    assert state.endpoint_id == endpoint["Id"]
    pipeline = fake_aml.pipelines[state.pipeline_id]
    assert pipeline["Name"] == settings.endpoint_name
    assert pipeline["Version"] == fingerprint
    # the SDK got its token from the same managed identity, for ARM
    (create,) = fake_aml.calls(method="POST", path_contains="/Pipelines/Create")
    assert token_resource(create.header("Authorization").split(" ", 1)[1]).rstrip("/") in (
        "https://management.azure.com",
        "https://management.core.windows.net",
    )
    body = create.json()
    assert body["ContinueRunOnStepFailure"] is False
    defaults = {p["Name"]: p["DefaultValue"] for p in body["GraphInterface"]["Parameters"]}
    assert defaults == settings.parameter_defaults  # node_count through the parallel predict's NodeCount
    # a second check is the steady state: no further publish
    fake_aml.clear_requests()
    again, published_again = ensure_published(settings, client, fingerprint)
    assert published_again is False and again.pipeline_id == state.pipeline_id
    assert len(fake_aml.requests) == 2


def test_a_changed_step_script_republishes_and_disables_the_old_pipeline(settings, fake_aml, scripts):
    backend = AzureMLBackend(settings, step_folder=scripts)
    first = backend.ensure_published()
    assert first.published is True
    old_id = first.target.handle.pipeline_id
    old_fingerprint = backend.current_fingerprint()

    script = scripts / "batchpred_steps" / "handoff.py"
    script.write_text(script.read_text() + "\n# a change\n")
    second = backend.ensure_published()  # the same backend: an edited script needs no restart

    assert second.published is True
    assert second.target.version == backend.current_fingerprint() != first.target.version == old_fingerprint
    assert second.target.handle.pipeline_id != old_id
    endpoint = assert_one_consistent_endpoint(fake_aml, settings, backend.current_fingerprint())
    assert endpoint["Id"] == first.target.handle.endpoint_id
    assert len(endpoint["PipelineVersionList"]) == 2
    assert not active(status_of(fake_aml, old_id))


def test_the_published_graph_follows_steps_py(settings, client, fake_aml, fingerprint):
    from pipeline_def.azureml.definition import V1_ENTRY_SCRIPT
    from pipeline_def.steps import STEPS

    ensure_published(settings, client, fingerprint)
    (create,) = fake_aml.calls(method="POST", path_contains="/Pipelines/Create")
    nodes = create.json()["Graph"]["ModuleNodes"]
    scripts = {
        p["Value"]
        for node in nodes
        for p in node["ModuleParameters"]
        if p["Name"] == "Script" and p.get("Value")
    }
    # every v1 step runs the adapter, its first argument naming the step; a parallel one (predict) is a
    # ParallelRunStep, whose Script is the parallel-run runtime's driver and whose entry script is its own
    assert scripts == {V1_ENTRY_SCRIPT, "driver/amlbi_main.py"}
    modules = [c.json() for c in fake_aml.calls(method="POST", path_contains="/Modules")]
    first_arguments = {
        m["Name"]: m["StructuredInterface"]["Arguments"][0]["Value"]
        for m in modules
        if m.get("ModuleType") != "BatchInferencing"
    }
    assert first_arguments == {s.name: s.script.removesuffix(".py") for s in STEPS if s.parallel is None}
    (parallel,) = [m for m in modules if m.get("ModuleType") == "BatchInferencing"]
    arguments = [a["Value"] for a in parallel["StructuredInterface"]["Arguments"]]
    entry_scripts = {s.parallel.entry_script for s in STEPS if s.parallel is not None}
    assert arguments[arguments.index("--scoring_module_name") + 1] in entry_scripts
    targets = {p.get("Value") for node in nodes for p in node["ModuleParameters"] if p["Name"] == "Target"}
    assert targets == {settings.compute_name}
    assert len(create.json()["Graph"]["Edges"]) >= 2  # fetch_data -> predict -> save_predictions


# ----- repairs without the SDK


def test_a_stale_default_version_is_replaced_and_disabled(settings, client, fake_aml, fingerprint):
    old = fake_aml.add_published_pipeline(settings.endpoint_name, "old-fingerprint")
    endpoint = fake_aml.add_endpoint(settings.endpoint_name, old["Id"])
    publish = publish_into(fake_aml)

    state, published = ensure_published(settings, client, fingerprint, publish_fn=publish)

    assert published is True
    assert state.pipeline_id == publish.published[0]
    assert state.endpoint_id == endpoint["Id"]
    fresh = assert_one_consistent_endpoint(fake_aml, settings, fingerprint)
    assert fresh["DefaultVersion"] == "1"
    assert not active(status_of(fake_aml, old["Id"]))


def test_a_disabled_default_pipeline_is_republished(settings, client, fake_aml, fingerprint):
    disabled = fake_aml.add_published_pipeline(settings.endpoint_name, fingerprint, status="Disabled")
    fake_aml.add_endpoint(settings.endpoint_name, disabled["Id"])
    publish = publish_into(fake_aml)

    state, _ = ensure_published(settings, client, fingerprint, publish_fn=publish)

    assert state.pipeline_id == publish.published[0] != disabled["Id"]
    assert_one_consistent_endpoint(fake_aml, settings, fingerprint)


def test_a_disabled_endpoint_on_the_current_pipeline_is_only_re_enabled(
    settings, client, fake_aml, fingerprint
):
    pipeline = fake_aml.add_published_pipeline(settings.endpoint_name, fingerprint)
    endpoint = fake_aml.add_endpoint(settings.endpoint_name, pipeline["Id"], status="Disabled")
    publish = publish_into(fake_aml)

    state, published = ensure_published(settings, client, fingerprint, publish_fn=publish)

    assert publish.published == []
    assert state.pipeline_id == pipeline["Id"] and published is False
    assert active(str(fake_aml.endpoints[endpoint["Id"]]["EntityStatus"]))


def test_a_disabled_endpoint_on_a_stale_pipeline_is_republished_and_enabled(
    settings, client, fake_aml, fingerprint
):
    old = fake_aml.add_published_pipeline(settings.endpoint_name, "old")
    fake_aml.add_endpoint(settings.endpoint_name, old["Id"], status="Disabled")
    publish = publish_into(fake_aml)

    ensure_published(settings, client, fingerprint, publish_fn=publish)

    assert_one_consistent_endpoint(fake_aml, settings, fingerprint)
    assert not active(status_of(fake_aml, old["Id"]))


def test_unrelated_pipelines_are_left_alone(settings, client, fake_aml, fingerprint):
    other = fake_aml.add_published_pipeline("someone-elses-pipeline", "x")
    old = fake_aml.add_published_pipeline(settings.endpoint_name, "old")
    fake_aml.add_endpoint(settings.endpoint_name, old["Id"])

    ensure_published(settings, client, fingerprint, publish_fn=publish_into(fake_aml))

    assert active(status_of(fake_aml, other["Id"]))


# ----- racing publishers


@pytest.mark.parametrize("existing", [False, True], ids=["no-endpoint", "stale-endpoint"])
def test_racing_publishers_leave_one_consistent_endpoint(settings, fake_aml, fingerprint, existing):
    if existing:
        old = fake_aml.add_published_pipeline(settings.endpoint_name, "old")
        fake_aml.add_endpoint(settings.endpoint_name, old["Id"])
    both_published = threading.Barrier(2, timeout=30)
    publish = publish_into(fake_aml)

    def racing_publish(s, f):
        pipeline_id = publish(s, f)
        both_published.wait()  # both saw a stale endpoint and both published: now both write
        return pipeline_id

    outcomes, errors = [], []

    def publisher():
        try:
            client = AzureMLClient(settings, sleep=lambda seconds: None)
            state, _ = ensure_published(settings, client, fingerprint, publish_fn=racing_publish)
            outcomes.append(state)
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=publisher) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert len(publish.published) == 2
    endpoint = assert_one_consistent_endpoint(fake_aml, settings, fingerprint)
    winner = default_pipeline_id(Endpoint.from_wire(endpoint))
    assert len(outcomes) == 2 and {o.endpoint_id for o in outcomes} == {endpoint["Id"]}
    loser = next(i for i in publish.published if i != winner)
    assert not active(status_of(fake_aml, loser))
    same_name_active = [
        p["Id"]
        for p in fake_aml.pipelines.values()
        if p["Name"] == settings.endpoint_name and active(str(p["EntityStatus"]))
    ]
    assert same_name_active == [winner]


def test_the_steps_run_in_the_environment_of_their_requirements_file(settings, client, fake_aml, fingerprint):
    from pipeline_def.azureml.definition import step_requirements
    from pipeline_def.steps import STEP_ENVIRONMENT

    ensure_published(settings, client, fingerprint)
    (create,) = fake_aml.calls(method="POST", path_contains="/Pipelines/Create")
    for node in create.json()["Graph"]["ModuleNodes"]:
        environment = json.loads(node["Runconfig"])["environment"]
        assert environment["name"] == STEP_ENVIRONMENT["name"]
        assert environment["docker"]["baseImage"] == STEP_ENVIRONMENT["base_image"]
        conda = environment["python"]["condaDependencies"]["dependencies"]
        assert f"python={STEP_ENVIRONMENT['python_version']}" in conda
        pip = next(item["pip"] for item in conda if isinstance(item, dict))
        assert set(step_requirements(STEP_SCRIPTS_DIR)) <= set(pip)
        assert "scikit-learn==1.9.1" in pip
        assert not any(line.startswith("#") for line in pip)


def test_an_endpoint_write_that_lost_to_another_is_redone(settings, client, fake_aml, fingerprint):
    old = fake_aml.add_published_pipeline(settings.endpoint_name, "old")
    endpoint = fake_aml.add_endpoint(settings.endpoint_name, old["Id"])
    fake_aml.inject_fault("PUT", r"/PipelineEndpoints/", status=412)
    publish = publish_into(fake_aml)

    state, _ = ensure_published(settings, client, fingerprint, publish_fn=publish)

    puts = fake_aml.calls(method="PUT", path_contains="/PipelineEndpoints/")
    assert len(puts) == 2
    assert all(p.header("If-Match") for p in puts)
    fresh = assert_one_consistent_endpoint(fake_aml, settings, fingerprint)
    assert fresh["Id"] == endpoint["Id"] and state.pipeline_id == publish.published[0]


def test_an_endpoint_write_sends_the_etag_it_read(settings, client, fake_aml, fingerprint):
    old = fake_aml.add_published_pipeline(settings.endpoint_name, "old")
    endpoint = fake_aml.add_endpoint(settings.endpoint_name, old["Id"])
    etag_before = fake_aml.endpoints[endpoint["Id"]]["Etag"]
    ensure_published(settings, client, fingerprint, publish_fn=publish_into(fake_aml))
    (put,) = fake_aml.calls(method="PUT", path_contains="/PipelineEndpoints/")
    assert put.header("If-Match") == etag_before


@pytest.mark.parametrize(
    ("versions", "default", "expected"),
    [
        ([("0", "a")], "0", None),
        ([("0", "a"), ("1", "b")], "1", "a"),
        ([("0", "a"), ("1", "b"), ("2", "c")], "2", "b"),
        ([("0", "a"), ("1", "b"), ("2", "c")], "1", "a"),
        ([("0", "a"), ("1", "b"), ("2", "b")], "2", "a"),  # the same pipeline twice is not "previous"
        ([("0", "a"), ("1", "b")], "x", None),
    ],
)
def test_previous_pipeline_is_the_one_the_default_superseded(versions, default, expected):
    endpoint = {
        "Id": "e",
        "DefaultVersion": default,
        "PipelineVersionList": [{"Version": v, "PipelineId": p} for v, p in versions],
    }
    assert previous_pipeline_id(Endpoint.from_wire(endpoint)) == expected
