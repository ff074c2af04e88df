"""Settings are parsed once and validated as a whole: every bad setting is named in one error, no value is
echoed back, and the derived values (API base, parameter defaults, portal link) follow docs/product.md."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pipeline_def.errors import ConfigError
from pipeline_def.settings import (
    DEFAULT_ENDPOINT_NAME,
    DEFAULT_SCHEDULE,
    PROJECT_ROOT,
    REQUIRED_FOR_AZUREML,
    SETTINGS_TABLE,
    Settings,
    load_settings,
)

GOOD = {
    "AML_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000001",
    "AML_RESOURCE_GROUP": "rg-test",
    "AML_WORKSPACE_NAME": "ws-test",
    "AML_REGION": "westeurope",
    "AML_COMPUTE_NAME": "cpu-cluster",
}


def test_defaults_follow_the_product_contract():
    settings = load_settings(GOOD)
    assert settings.backend == "azureml"
    assert settings.api_base == "https://westeurope.api.azureml.ms"
    assert settings.endpoint_name == DEFAULT_ENDPOINT_NAME == "house-price-batch-predictions"
    assert settings.experiment_name == "house-price-batch-predictions"
    assert settings.schedule == DEFAULT_SCHEDULE == "0 30 1,13 * * *"
    assert settings.overlap == "skip"
    assert settings.dataset_name == "AmesHousing"
    assert (settings.model_name, settings.model_version) == ("HousePrices", "latest")
    assert settings.parameter_defaults == {
        "sample_size": "10",
        "model_version": "latest",
        "accept_drift": "false",
        "node_count": "1",
    }
    assert settings.azure_client_id is None
    assert settings.gate_values == {
        "gate_range_margin": "0.5",
        "gate_drift_psi": "0.25",
        "gate_drift_min_rows": "300",
        "gate_missing_tolerance": "0.2",
    }


def test_gate_thresholds_are_read_and_a_bad_one_is_named():
    settings = load_settings({**GOOD, "GATE_RANGE_MARGIN": "1", "GATE_DRIFT_MIN_ROWS": "1000"})
    assert (settings.gate_range_margin, settings.gate_drift_min_rows) == (1.0, 1000)
    with pytest.raises(ConfigError) as raised:
        load_settings({**GOOD, "GATE_MISSING_TOLERANCE": "2", "GATE_DRIFT_PSI": "lots"})
    assert "GATE_MISSING_TOLERANCE must be a number from 0 to 1" in raised.value.message
    assert "GATE_DRIFT_PSI must be a number from 0 to 100" in raised.value.message


def test_api_base_override_wins_over_region_and_loses_its_trailing_slash():
    settings = load_settings({**GOOD, "AML_REGION": "", "AML_API_BASE": "http://127.0.0.1:8123/"})
    assert settings.api_base == "http://127.0.0.1:8123"


def test_workspace_path_and_portal_link():
    settings = load_settings(GOOD)
    ws = (
        "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-test"
        "/providers/Microsoft.MachineLearningServices/workspaces/ws-test"
    )
    assert settings.workspace_path == ws
    assert settings.portal_url("run-1") == f"https://ml.azure.com/runs/run-1?wsid={ws}"


def test_every_missing_azure_setting_is_named_at_once():
    with pytest.raises(ConfigError) as caught:
        load_settings({})
    problems = " | ".join(caught.value.problems)
    for name in (
        "AML_SUBSCRIPTION_ID",
        "AML_RESOURCE_GROUP",
        "AML_WORKSPACE_NAME",
        "AML_COMPUTE_NAME",
        "AML_REGION",
    ):
        assert name in problems
    assert len(caught.value.problems) == 5


def test_a_newcomer_without_azure_settings_is_pointed_at_the_local_backend():
    with pytest.raises(ConfigError) as caught:
        load_settings({})
    assert "PIPELINE_BACKEND=local" in caught.value.message
    with pytest.raises(ConfigError) as chosen:
        load_settings({"PIPELINE_BACKEND": "azureml"})
    assert "PIPELINE_BACKEND=local" not in chosen.value.message


def test_every_malformed_setting_is_named_and_no_value_is_echoed():
    secret_like = "s3cr3t-VALUE-xyz"
    bad = {
        **GOOD,
        "AML_SUBSCRIPTION_ID": secret_like,
        "AML_RESOURCE_GROUP": f"rg/{secret_like}",
        "AML_API_BASE": f"ftp://{secret_like}",
        "PIPELINE_OVERLAP": secret_like,
        "PIPELINE_SCHEDULE": f"every {secret_like}",
        "PIPELINE_ENDPOINT_NAME": f"bad name {secret_like}",
        "AML_MODEL_VERSION": secret_like,
        "PIPELINE_SAMPLE_SIZE": f"-{secret_like}",
        "AML_REQUEST_TIMEOUT_SECONDS": secret_like,
        "AML_RETRY_BUDGET_SECONDS": "9999",
    }
    with pytest.raises(ConfigError) as caught:
        load_settings(bad)
    error = caught.value
    for name in (
        "AML_SUBSCRIPTION_ID",
        "AML_RESOURCE_GROUP",
        "AML_API_BASE",
        "PIPELINE_OVERLAP",
        "PIPELINE_SCHEDULE",
        "PIPELINE_ENDPOINT_NAME",
        "AML_MODEL_VERSION",
        "PIPELINE_SAMPLE_SIZE",
        "AML_REQUEST_TIMEOUT_SECONDS",
        "AML_RETRY_BUDGET_SECONDS",
    ):
        assert name in error.message, name
    assert secret_like not in error.message
    assert "9999" not in error.message
    assert "s3cr3t" not in str(error).lower()


def test_region_is_not_required_when_api_base_is_given():
    settings = load_settings({**GOOD, "AML_REGION": "", "AML_API_BASE": "https://private.example.net"})
    assert settings.api_base == "https://private.example.net"


def test_local_backend_needs_no_azure_setting(tmp_path):
    dataset = tmp_path / "rows.csv"
    dataset.write_text("a,b\n1,2\n")
    settings = load_settings(
        {"PIPELINE_BACKEND": "local", "LOCAL_DATASET_PATH": str(dataset), "LOCAL_WORK_DIR": str(tmp_path)}
    )
    assert settings.backend == "local"
    assert settings.local_dataset_path == dataset.resolve()


def test_local_backend_rejects_a_missing_dataset(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_settings({"PIPELINE_BACKEND": "local", "LOCAL_DATASET_PATH": str(tmp_path / "nope.csv")})
    assert any("LOCAL_DATASET_PATH" in p for p in caught.value.problems)


def test_numbers_and_client_id_are_parsed():
    settings = load_settings(
        {
            **GOOD,
            "PIPELINE_SAMPLE_SIZE": "0",
            "AML_MODEL_VERSION": "3",
            "AML_REQUEST_TIMEOUT_SECONDS": "2.5",
            "AML_RETRY_BUDGET_SECONDS": "0",
            "AZURE_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
        }
    )
    assert settings.sample_size == 0
    assert settings.parameter_defaults == {
        "sample_size": "0",
        "model_version": "3",
        "accept_drift": "false",
        "node_count": "1",
    }
    assert settings.request_timeout == 2.5
    assert settings.retry_budget == 0.0
    assert settings.azure_client_id == "11111111-2222-3333-4444-555555555555"


@pytest.mark.parametrize("version", ["latest", "LATEST", " Latest "])
def test_model_version_latest_in_any_case(version):
    assert load_settings({**GOOD, "AML_MODEL_VERSION": version}).model_version == "latest"


def test_an_unknown_backend_is_named_with_the_other_problems():
    with pytest.raises(ConfigError) as caught:
        load_settings({**GOOD, "PIPELINE_BACKEND": "cloud-xyz", "PIPELINE_OVERLAP": "maybe"})
    assert [p.split()[0] for p in caught.value.problems] == ["PIPELINE_BACKEND", "PIPELINE_OVERLAP"]
    assert "cloud-xyz" not in caught.value.message and "maybe" not in caught.value.message


def test_the_http_budget_defaults_to_25_s_and_must_keep_an_answer_under_30_s():
    assert load_settings(GOOD).http_budget == 25.0
    assert load_settings({**GOOD, "AML_HTTP_BUDGET_SECONDS": "2.5"}).http_budget == 2.5
    for bad in ("30", "0", "-1", "soon"):
        with pytest.raises(ConfigError) as caught:
            load_settings({**GOOD, "AML_HTTP_BUDGET_SECONDS": bad})
        assert caught.value.problems == ["AML_HTTP_BUDGET_SECONDS must be a number of seconds from 1 to 29"]


def test_every_settings_field_is_read_from_exactly_one_app_setting():
    assert sorted(entry.field for entry in SETTINGS_TABLE) == sorted(
        f.name for f in dataclasses.fields(Settings)
    )
    assert len({entry.env for entry in SETTINGS_TABLE}) == len(SETTINGS_TABLE)


def test_every_app_setting_is_in_the_sample_local_settings():
    sample = json.loads((PROJECT_ROOT / "local.settings.sample.json").read_text())["Values"]
    assert [entry.env for entry in SETTINGS_TABLE if entry.env not in sample] == []


def test_the_settings_required_for_azureml_are_those_the_table_requires_and_the_region():
    required = {entry.env for entry in SETTINGS_TABLE if entry.required and "azureml" in entry.backends}
    assert required | {"AML_REGION"} == set(REQUIRED_FOR_AZUREML)


def test_the_parallel_settings_default_to_the_contract_and_are_checked():
    settings = load_settings(GOOD)
    assert settings.node_count == 1
    assert settings.parallel_mini_batch_size == 16 * 1024 * 1024
    assert settings.parallel_process_count_per_node == 2
    assert settings.parallel_run_invocation_timeout == 300
    assert settings.parallel_run_max_try == 3
    assert settings.parallel_error_threshold == 0
    assert settings.local_parallel_workers == 0
    assert settings.local_mini_batch_size == 4 * 1024 * 1024
    tuned = load_settings(
        {
            **GOOD,
            "PIPELINE_NODE_COUNT": "4",
            "PARALLEL_MINI_BATCH_SIZE": "32mb",
            "PARALLEL_ERROR_THRESHOLD": "-1",
            "LOCAL_PARALLEL_WORKERS": "3",
            "LOCAL_MINI_BATCH_SIZE": "1MB",
        }
    )
    assert tuned.parameter_defaults["node_count"] == "4"
    assert (tuned.parallel_mini_batch_size, tuned.parallel_error_threshold) == (32 * 1024 * 1024, -1)
    assert (tuned.local_parallel_workers, tuned.local_mini_batch_size) == (3, 1024 * 1024)
    with pytest.raises(ConfigError) as caught:
        load_settings(
            {
                **GOOD,
                "PIPELINE_NODE_COUNT": "101",
                "PARALLEL_MINI_BATCH_SIZE": "16 parsecs",
                "PARALLEL_RUN_MAX_TRY": "0",
                "PARALLEL_ERROR_THRESHOLD": "-2",
                "LOCAL_MINI_BATCH_SIZE": "1KB",
            }
        )
    assert caught.value.problems == [
        "PIPELINE_NODE_COUNT must be a whole number from 1 to 100",
        "PARALLEL_MINI_BATCH_SIZE must be a size such as 16MB, from 64KB to 2GB",
        "PARALLEL_RUN_MAX_TRY must be a whole number from 1 to 100",
        "PARALLEL_ERROR_THRESHOLD must be a whole number from -1 to 1000000",
        "LOCAL_MINI_BATCH_SIZE must be a size such as 16MB, from 64KB to 2GB",
    ]
