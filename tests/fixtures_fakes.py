"""Fixtures (fakes): the fake Azure ML service, the fake managed identity, the settings that aim the azureml
backend at them (`aml_env`), Azurite for blob storage, a clock for the Azure ML client (`clock`), a guard that
no name but loopback is resolved (`loopback_only`), and azure-ai-ml's MLClient aimed at a fake (`ml_client`)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from azure.core.pipeline.policies import SansIOHTTPPolicy

from emulator.aml import FakeAzureML
from emulator.azurite import (
    AZURITE_BLOB,
    DEVSTORE_ACCOUNT,
    DEVSTORE_KEY,
    AzuriteBlob,
    AzuriteUnavailable,
    start_azurite,
    stop_azurite,
)
from emulator.azurite import installed as azurite_installed
from emulator.identity import OTHER_CREDENTIAL_VARIABLES, FakeManagedIdentity

# re-exported: tests import these from here
__all__ = ["DEVSTORE_ACCOUNT", "DEVSTORE_KEY", "AzuriteBlob"]


class FakeTime:
    """A monotonic clock that only moves when the client sleeps; records every sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuse name resolution of anything but loopback, and list what was asked: no call may leave 127.0.0.1
    (ARM, login, cloud metadata, telemetry, a blob upload to *.blob.core.windows.net)."""
    real = socket.getaddrinfo
    refused: list[str] = []

    def guarded(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1", None):
            refused.append(str(host))
            raise OSError(f"test refuses to resolve {host}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    return refused


class _PlainHttpOnLoopback(SansIOHTTPPolicy):
    """Lets azure-core send the bearer token over plain HTTP to the emulator. ARM is https, so azure-core
    refuses a token on http unless the request says `enforce_https=False`; MLClient says so for its
    operations, but not on every call (CodeOperations lists code versions by hash without it)."""

    def on_request(self, request) -> None:
        if request.http_request.url.startswith("http://127.0.0.1:"):
            request.context["enforce_https"] = False


def sdk_workspace(fake: FakeAzureML):
    """azureml-core's Workspace aimed at `fake` (its discovery URL), with a static ARM token and no service
    check; a fresh workspace id each time, so the SDK's discovery cache (keyed by it) never serves another
    test's fake, whose port differs."""
    import uuid

    from azureml.core import Workspace
    from azureml.core.authentication import ArmTokenAuthentication

    workspace = Workspace(
        fake.subscription_id,
        fake.resource_group,
        fake.workspace_name,
        auth=ArmTokenAuthentication("test-token", cloud="AzureCloud"),
        _disable_service_check=True,
        _workspace_id=str(uuid.uuid4()),
        _location="local",
    )
    workspace._discovery_url_internal = fake.discovery_url
    return workspace


def ml_client(fake: FakeAzureML):
    """azure-ai-ml's MLClient aimed at `fake` as a custom cloud (its resource manager is the fake's URL), with
    tokens from the managed identity the environment names (a FakeManagedIdentity's environ())."""
    from azure.ai.ml import MLClient
    from azure.identity import ManagedIdentityCredential

    return MLClient(
        ManagedIdentityCredential(),
        fake.subscription_id,
        fake.resource_group,
        fake.workspace_name,
        cloud=f"Emulated{fake.port}",
        cloud_metadata={
            "azure_portal": "https://portal.azure.com/",
            "resource_manager": fake.base_url,
            "active_directory": "https://login.microsoftonline.com/",
            "aml_resource_id": "https://ml.azure.com",
            "storage_endpoint": "core.windows.net",
            "registry_discovery_endpoint": fake.base_url,
        },
        enable_telemetry=False,
        show_progress=False,
        per_call_policies=[_PlainHttpOnLoopback()],
    )


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


@pytest.fixture
def fake_identity() -> Iterator[FakeManagedIdentity]:
    with FakeManagedIdentity() as mi:
        yield mi


@pytest.fixture
def fake_aml() -> Iterator[FakeAzureML]:
    with FakeAzureML(
        subscription_id="00000000-0000-0000-0000-000000000001",
        resource_group="rg-test",
        workspace_name="ws-test",
    ) as aml:
        yield aml


@pytest.fixture
def aml_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_aml: FakeAzureML, fake_identity: FakeManagedIdentity
) -> Iterator[dict[str, str]]:
    """Every setting of the azureml backend, aimed at the fakes; returns what it set."""
    from pipeline_def.service import reset_service

    home = tmp_path / "home"
    home.mkdir()
    for name in OTHER_CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("AZUREML_DEV_URL") or name.startswith("PIPELINE_") or name.startswith("AML_"):
            monkeypatch.delenv(name, raising=False)
    values = fake_aml.app_settings(AML_REQUEST_TIMEOUT_SECONDS="2", HOME=str(home), **fake_identity.environ())
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    reset_service()
    try:
        yield values
    finally:
        reset_service()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteBlob]:
    """Azurite's blob service on 127.0.0.1 for the whole session (in-memory)."""
    if not azurite_installed():
        message = f"Azurite is not installed ({AZURITE_BLOB} or node missing): run `npm install`"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    try:
        blob, process = start_azurite(tmp_path_factory.mktemp("azurite"))
    except AzuriteUnavailable as error:
        pytest.fail(str(error))
    try:
        yield blob
    finally:
        stop_azurite(process)


def publish_in_fake(
    fake_aml: FakeAzureML, monkeypatch: pytest.MonkeyPatch, version: str | None = None, **env: str
) -> SimpleNamespace:
    """Settings from the environment (plus `env`), and the endpoint with one pipeline of `version` (None: the
    current fingerprint) as its default, published straight into the fake (no SDK involved); no request
    logged yet. Returns fake, pipeline, endpoint and settings."""
    from pipeline_def.fingerprint import compute_fingerprint
    from pipeline_def.service import reset_service
    from pipeline_def.settings import load_settings

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_service()
    settings = load_settings()
    pipeline = fake_aml.add_published_pipeline(
        settings.endpoint_name,
        version or compute_fingerprint(settings),
        parameter_defaults=settings.parameter_defaults,
    )
    endpoint = fake_aml.add_endpoint(settings.endpoint_name, pipeline["Id"])
    fake_aml.clear_requests()
    return SimpleNamespace(fake=fake_aml, pipeline=pipeline, endpoint=endpoint, settings=settings)
