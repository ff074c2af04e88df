"""The emulated workspace's v2 routes as a plain REST client (the app's own design (b)) sees them: the GA
api-version, ARM-shaped errors, immutable asset versions, `latestVersion` containers, models registered the
v1 way read as v2 versions, and a pipeline job PUT validated and stored (execution off: it stays NotStarted)
with its run-history root queryable by tags at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from emulator.aml import FakeAzureML
from emulator.identity import make_jwt
from tests.fixtures_fakes import DEVSTORE_ACCOUNT, DEVSTORE_KEY, AzuriteBlob

GA = "2025-12-01"
ARM_TOKEN = make_jwt("https://management.azure.com", 1, int(time.time()) + 3600)
ML_TOKEN = make_jwt("https://ml.azure.com", 2, int(time.time()) + 3600)


@pytest.fixture
def fake(azurite: AzuriteBlob, tmp_path: Path) -> Iterator[FakeAzureML]:
    with FakeAzureML(workspace_name=f"ws-rest-{tmp_path.name[-6:].lower().strip('_')}") as aml:
        aml.use_blob_store(azurite.url, DEVSTORE_ACCOUNT, DEVSTORE_KEY)
        yield aml


def call(
    fake: FakeAzureML,
    method: str,
    path: str,
    body: Any = None,
    version: str | None = GA,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    query = {"api-version": version} if version else {}
    return requests.request(
        method,
        f"{fake.base_url}{fake.workspace_path}{path}",
        params=query,
        json=body,
        headers={"Authorization": f"Bearer {ARM_TOKEN}", **(headers or {})},
        timeout=10,
    )


def command_component(name: str) -> dict[str, Any]:
    return {
        "properties": {
            "componentSpec": {
                "name": name,
                "type": "command",
                "command": "python -c 'print(1)' --out ${{outputs.out}}",
                "environment": "azureml:toy-env:1",
                "inputs": {},
                "outputs": {"out": {"type": "uri_folder"}},
            }
        }
    }


def pipeline_component(fake: FakeAzureML) -> dict[str, Any]:
    return {
        "properties": {
            "componentSpec": {
                "name": "batch",
                "type": "pipeline",
                "inputs": {
                    "dataset": {"type": "uri_file"},
                    "sample_size": {"type": "integer", "default": "10"},
                },
                "outputs": {"latest": {"type": "uri_folder"}},
                "jobs": {
                    "step": {
                        "type": "command",
                        "componentId": f"{fake.workspace_path}/components/step/versions/1",
                        "outputs": {"out": {"type": "literal", "value": "${{parent.outputs.latest}}"}},
                    }
                },
            }
        }
    }


def app_job_body(fake: FakeAzureML, component_version: str = "fp1") -> dict[str, Any]:
    """The body the app's REST client sends (docs' aml-v2-notes, section 2(b))."""
    ws = fake.workspace_path
    return {
        "properties": {
            "jobType": "Pipeline",
            "componentId": f"{ws}/components/batch/versions/{component_version}",
            "jobs": {},
            "computeId": f"{ws}/computes/cpu-cluster",
            "experimentName": "house-price-batch-predictions",
            "displayName": "timer run",
            "tags": {"trigger": "timer", "batchpred_pipeline": "house-price-batch-predictions"},
            "inputs": {
                "dataset": {"jobInputType": "uri_file", "uri": f"azureml:{ws}/data/AmesHousing/versions/1"},
                "sample_size": {"jobInputType": "literal", "value": "25"},
            },
            "outputs": {
                "latest": {
                    "jobOutputType": "uri_folder",
                    "mode": "ReadWriteMount",
                    "uri": "azureml://datastores/${{default_datastore}}/paths/latest_predictions/",
                }
            },
            "settings": {"default_compute": f"{ws}/computes/cpu-cluster", "continue_on_step_failure": False},
        }
    }


def test_the_workspace_answers_at_the_ga_version_with_its_discovery_url(fake: FakeAzureML) -> None:
    response = call(fake, "GET", "")
    assert response.status_code == 200
    assert response.json()["properties"]["discoveryUrl"] == fake.discovery_url
    assert requests.get(fake.discovery_url, timeout=10).json()["api"] == fake.base_url
    assert fake.requests[0].api_version == GA


def test_an_unknown_or_missing_api_version_and_an_unknown_asset_are_arm_errors(fake: FakeAzureML) -> None:
    unknown = call(fake, "GET", "", version="2019-01-01")
    missing = call(fake, "GET", "", version=None)
    absent = call(fake, "GET", "/components/nope/versions/1")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (400, "NoRegisteredProviderFound")
    assert (missing.status_code, missing.json()["error"]["code"]) == (400, "MissingApiVersionParameter")
    assert absent.status_code == 404
    assert absent.json() == {
        "error": {
            "code": "UserError",
            "message": f"Component nope:1 (workspace {fake.workspace_name}) was not found.",
            "details": [],
            "additionalInfo": [],
        }
    }


def test_asset_versions_are_immutable_and_latest_version_is_the_most_recently_created(
    fake: FakeAzureML,
) -> None:
    environment = {
        "properties": {"image": "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:1", "condaFile": "x"}
    }
    assert call(fake, "PUT", "/environments/toy-env/versions/1", environment).status_code == 201
    assert call(fake, "PUT", "/environments/toy-env/versions/1", environment).status_code == 200
    changed = {"properties": {**environment["properties"], "condaFile": "y"}}
    refused = call(fake, "PUT", "/environments/toy-env/versions/1", changed)
    assert refused.status_code == 409 and "condaFile" in refused.json()["error"]["message"]

    for version in ("10", "9"):
        assert call(fake, "PUT", f"/components/step/versions/{version}", command_component("step")).ok
    container = call(fake, "GET", "/components/step").json()
    assert container["properties"]["latestVersion"] == "9"  # created last, though not the highest


def test_data_and_v1_models_resolve_as_the_app_resolves_latest(fake: FakeAzureML, tmp_path: Path) -> None:
    csv = tmp_path / "ames.csv"
    csv.write_text("Id,Lot Area\n1,100\n")
    fake.register_data_v2("AmesHousing", csv)
    fake.register_data_v2("AmesHousing", csv)
    fake.register_model("HousePrices", {"model.joblib": b"one"})
    fake.register_model("HousePrices", {"model.joblib": b"two"})

    latest = call(fake, "GET", "/data/AmesHousing").json()["properties"]["latestVersion"]
    data = call(fake, "GET", f"/data/AmesHousing/versions/{latest}").json()["properties"]
    assert (latest, data["dataType"]) == ("2", "uri_file")
    assert data["dataUri"].startswith("azureml://subscriptions/") and data["dataUri"].endswith("/ames.csv")
    models = call(fake, "GET", "/models/HousePrices/versions?$orderBy=createdtime desc&$top=1").json()[
        "value"
    ]
    assert [(m["name"], m["properties"]["modelType"]) for m in models] == [("2", "custom_model")]
    assert call(fake, "GET", "/models/HousePrices/versions/1").ok
    assert call(fake, "GET", "/models/HousePrices/versions/9").status_code == 404
    assert call(fake, "GET", "/computes/cpu-cluster").json()["name"] == "cpu-cluster"


def test_a_pipeline_job_put_needs_the_ml_token_and_existing_component_and_compute(fake: FakeAzureML) -> None:
    assert call(fake, "PUT", "/components/step/versions/1", command_component("step")).ok
    assert call(fake, "PUT", "/components/batch/versions/fp1", pipeline_component(fake)).ok
    ml = {"x-azureml-token": ML_TOKEN}

    no_token = call(fake, "PUT", "/jobs/job-1", app_job_body(fake))
    wrong = call(fake, "PUT", "/jobs/job-1", app_job_body(fake), headers={"x-azureml-token": ARM_TOKEN})
    no_component = call(fake, "PUT", "/jobs/job-1", app_job_body(fake, "fp-unpublished"), headers=ml)
    body = app_job_body(fake)
    body["properties"]["computeId"] = f"{fake.workspace_path}/computes/gpu-cluster"
    no_compute = call(fake, "PUT", "/jobs/job-1", body, headers=ml)
    assert [r.status_code for r in (no_token, wrong, no_component, no_compute)] == [401, 401, 404, 404]
    assert fake.runs == {}

    created = call(fake, "PUT", "/jobs/job-1", app_job_body(fake), headers=ml)
    assert created.status_code == 201
    job = call(fake, "GET", "/jobs/job-1").json()
    assert job["properties"]["status"] == "NotStarted"  # execution is off: nothing moves it
    assert job["properties"]["services"]["Studio"]["endpoint"].startswith("https://ml.azure.com/runs/job-1")
    query = requests.post(
        f"{fake.history_url}/experiments/house-price-batch-predictions/runs:query",
        json={"filter": 'Tags/batchpred_pipeline eq "house-price-batch-predictions"', "top": 1},
        headers={"Authorization": f"Bearer {ARM_TOKEN}"},
        timeout=10,
    ).json()
    assert [r["runId"] for r in query["value"]] == ["job-1"]

    cancel = call(fake, "POST", "/jobs/job-1/cancel")
    assert cancel.status_code == 202 and "/operationResults/" in cancel.headers["Location"]
    assert call(fake, "GET", "/jobs/job-1").json()["properties"]["status"] == "CancelRequested"
