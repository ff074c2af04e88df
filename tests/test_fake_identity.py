"""The fake managed identity speaks the App Service protocol azure-identity uses on Azure Functions, its tokens
pass the fake Azure ML's audience check, and the `azurite` and `aml_env` fixtures give what they promise."""

from __future__ import annotations

import os
import time
import uuid

import pytest
import requests

from emulator.identity import FakeManagedIdentity, make_token, token_resource


def ask(
    mi: FakeManagedIdentity, resource: str = "https://management.azure.com", **extra
) -> requests.Response:
    params = {"api-version": "2019-08-01", "resource": resource, **extra.pop("params", {})}
    headers = extra.pop("headers", {"X-IDENTITY-HEADER": mi.header})
    return requests.get(mi.endpoint, params=params, headers=headers, timeout=5)


def test_token_endpoint_answers_the_app_service_shape(fake_identity):
    before = int(time.time())
    body = ask(fake_identity).json()
    assert body["token_type"] == "Bearer"
    assert body["resource"] == "https://management.azure.com"
    assert token_resource(body["access_token"]) == "https://management.azure.com"
    assert before + 3600 <= int(body["expires_on"]) <= int(time.time()) + 3600
    assert fake_identity.requests == [("https://management.azure.com", None)]


def test_tokens_are_distinct_and_carry_their_resource():
    first, second = make_token("https://a", 1), make_token("https://a", 2)
    assert first != second
    assert token_resource(first) == "https://a"
    assert token_resource("not-a-fake-token") is None
    assert token_resource("fake-mi.%%%.1") is None


def test_wrong_or_missing_identity_header_is_refused(fake_identity):
    assert ask(fake_identity, headers={"X-IDENTITY-HEADER": "wrong"}).status_code == 400
    assert ask(fake_identity, headers={}).status_code == 400
    assert ask(fake_identity, params={"api-version": "2017-09-01"}).status_code == 400
    assert fake_identity.requests == []


def test_expires_in_sets_the_validity_of_new_tokens(fake_identity):
    fake_identity.expires_in = 60
    assert int(ask(fake_identity).json()["expires_on"]) <= int(time.time()) + 60


def test_fail_answers_errors_for_the_given_times_then_recovers(fake_identity):
    fake_identity.fail(status=503, times=2)
    assert [ask(fake_identity).status_code for _ in range(3)] == [503, 503, 200]
    fake_identity.fail(status=500)
    assert [ask(fake_identity).status_code for _ in range(3)] == [500, 500, 500]
    fake_identity.recover()
    assert ask(fake_identity).status_code == 200


def test_client_id_is_recorded(fake_identity):
    ask(fake_identity, params={"client_id": "abc"})
    assert fake_identity.requests == [("https://management.azure.com", "abc")]


def test_default_azure_credential_gets_a_token_the_fake_aml_accepts(aml_env, fake_identity, fake_aml):
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential()
    token = credential.get_token("https://management.azure.com/.default")
    assert token_resource(token.token) == "https://management.azure.com"
    assert token.expires_on > time.time() + 3000
    assert fake_identity.requests == [("https://management.azure.com", None)]
    headers = {"Authorization": f"Bearer {token.token}"}
    assert requests.get(f"{fake_aml.pipelines_url}/Pipelines", headers=headers, timeout=5).status_code == 200
    # a token for another resource from the same identity is refused by the fake Azure ML
    storage = credential.get_token("https://storage.azure.com/.default").token
    response = requests.get(
        f"{fake_aml.pipelines_url}/Pipelines", headers={"Authorization": f"Bearer {storage}"}, timeout=5
    )
    assert response.status_code == 401


def test_aml_env_aims_the_settings_at_the_fakes(aml_env, fake_aml, fake_identity):
    from pipeline_def.settings import load_settings

    settings = load_settings()
    assert settings.backend == "azureml"
    assert settings.api_base == fake_aml.base_url
    assert settings.workspace_path == fake_aml.workspace_path
    assert settings.azure_client_id is None
    assert os.environ["IDENTITY_ENDPOINT"] == fake_identity.endpoint
    assert os.environ["HOME"] == aml_env["HOME"] and os.path.isdir(aml_env["HOME"])
    assert "AZURE_CLIENT_SECRET" not in os.environ


def test_azurite_fixture_serves_blob_storage(azurite):
    from azure.storage.blob import BlobServiceClient

    assert azurite.blob_endpoint.startswith("http://127.0.0.1:")
    assert f"BlobEndpoint={azurite.blob_endpoint};" in azurite.connection_string
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = service.create_container(f"t{uuid.uuid4().hex}")
    container.upload_blob("a/b.txt", b"hello")
    assert container.download_blob("a/b.txt").readall() == b"hello"


@pytest.mark.parametrize("resource", ["https://management.azure.com", "https://management.core.windows.net/"])
def test_sdk_style_audiences_round_trip(fake_identity, resource):
    assert token_resource(ask(fake_identity, resource).json()["access_token"]) == resource
