"""The answers of Azure ML v2's ARM routes, parsed once in azureml_v2/client.py: a job, an asset version and an
asset container, each with only the fields the app reads, and refused when Azure ML answers something that is
not one."""

from __future__ import annotations

import pytest

from pipeline_def.azureml_v2.client import AssetContainer, AssetVersion, Job, _first_version
from pipeline_def.errors import ServiceError

WS = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws"


def test_a_full_job_is_parsed_into_the_fields_the_app_reads():
    wire = {
        "id": f"{WS}/jobs/ep-timer-1",
        "name": "ep-timer-1",
        "type": "Microsoft.MachineLearningServices/workspaces/jobs",
        "properties": {
            "jobType": "Pipeline",
            "status": "Running",
            "experimentName": "batchpred",
            "displayName": "ep (timer)",
            "services": {"Studio": {"endpoint": "https://ml.azure.com/runs/ep-timer-1"}, "Tracking": {}},
            "tags": {"trigger": "timer", "batchpred_pipeline": "ep", "empty": ""},
            "inputs": {},
        },
        "systemData": {"createdAt": "2026-12-01T01:30:01Z", "createdBy": "someone"},
    }
    assert Job.from_wire(wire) == Job(
        name="ep-timer-1",
        child=False,
        status="Running",
        experiment="batchpred",
        studio_url="https://ml.azure.com/runs/ep-timer-1",
        tags={"trigger": "timer", "batchpred_pipeline": "ep"},
        created_at="2026-12-01T01:30:01Z",
    )


def test_a_minimal_job_has_only_its_name_and_a_child_job_has_no_properties():
    assert Job.from_wire({"name": "j", "properties": {}}) == Job("j")
    child = Job.from_wire({"name": "node", "properties": None, "systemData": {"createdAt": "t0"}})
    assert (child.child, child.status, child.created_at) == (True, None, "t0")


def test_a_job_field_of_the_wrong_shape_counts_as_missing():
    job = Job.from_wire(
        {
            "name": "j",
            "properties": {"status": "", "services": ["x"], "tags": "junk", "experimentName": None},
            "systemData": "junk",
        }
    )
    assert job == Job("j", status="")  # an empty status word is kept: it reads as queued
    assert Job.from_wire({"name": "j", "properties": {"services": {"Studio": None}}}).studio_url is None


def test_a_job_without_a_name_is_refused():
    for wrong in (None, [], "j", {"properties": {"status": "Running"}}, {"name": ""}, {"name": 7}):
        with pytest.raises(ServiceError) as caught:
            Job.from_wire(wrong)
        assert caught.value.http_status == 502


def test_an_asset_version_is_its_id_and_its_name():
    full = {
        "id": f"{WS}/models/m/versions/3",
        "name": "3",
        "type": "Microsoft.MachineLearningServices/workspaces/models/versions",
        "properties": {"modelUri": "azureml://x", "tags": {}},
        "systemData": {},
    }
    assert AssetVersion.from_wire(full) == AssetVersion(f"{WS}/models/m/versions/3", "3")
    assert AssetVersion.from_wire({"id": "i"}) == AssetVersion("i", None)
    assert AssetVersion.from_wire({"id": "i", "name": 3}).name == "3"
    for wrong in (None, ["i"], {"name": "3"}, {"id": ""}):
        with pytest.raises(ServiceError):
            AssetVersion.from_wire(wrong)


def test_an_asset_container_is_its_id_and_its_latest_version():
    full = {"id": f"{WS}/data/d", "name": "d", "properties": {"latestVersion": "2", "nextVersion": "3"}}
    assert AssetContainer.from_wire(full) == AssetContainer(f"{WS}/data/d", "2")
    assert AssetContainer.from_wire({"id": "i"}) == AssetContainer("i", None)
    assert AssetContainer.from_wire({"id": "i", "properties": {"latestVersion": ""}}).latest_version is None
    for wrong in (None, "d", {"properties": {"latestVersion": "2"}}, {"id": 1}):
        with pytest.raises(ServiceError):
            AssetContainer.from_wire(wrong)


def test_a_list_of_versions_gives_its_first_or_none():
    assert _first_version({"value": [{"id": "a", "name": "1"}, {"id": "b"}]}, "x") == AssetVersion("a", "1")
    assert _first_version({"value": []}, "x") is None
    assert _first_version({}, "x") is None
    assert _first_version(None, "x") is None
    for wrong in ([{"id": "a"}], {"value": {"id": "a"}}, {"value": [{"name": "1"}]}):
        with pytest.raises(ServiceError):
            _first_version(wrong, "x")
