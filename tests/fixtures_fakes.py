"""Fixtures (fakes): the fake Azure ML service, the fake managed identity, the settings that aim the azureml
backend at them (`aml_env`), and Azurite for blob storage."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fake_aml import FakeAzureML
from tests.fake_identity import FakeManagedIdentity

REPO_ROOT = Path(__file__).resolve().parent.parent
AZURITE_BLOB = REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"
# Azurite's documented development account and key (public, not a secret)
DEVSTORE_ACCOUNT = "devstoreaccount1"
DEVSTORE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_START_TIMEOUT = 30.0

# Variables that would make DefaultAzureCredential pick a credential other than the managed identity.
_AZURE_CREDENTIAL_VARS = (
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "AZURE_USERNAME",
    "AZURE_PASSWORD",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
)


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
    for name in _AZURE_CREDENTIAL_VARS:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("AZUREML_DEV_URL") or name.startswith("PIPELINE_") or name.startswith("AML_"):
            monkeypatch.delenv(name, raising=False)
    values = {
        "PIPELINE_BACKEND": "azureml",
        "AML_SUBSCRIPTION_ID": fake_aml.subscription_id,
        "AML_RESOURCE_GROUP": fake_aml.resource_group,
        "AML_WORKSPACE_NAME": fake_aml.workspace_name,
        "AML_API_BASE": fake_aml.base_url,
        "AML_COMPUTE_NAME": "cpu-cluster",
        "AML_REQUEST_TIMEOUT_SECONDS": "2",
        "HOME": str(home),
        **fake_identity.environ(),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    reset_service()
    try:
        yield values
    finally:
        reset_service()


@dataclass(frozen=True)
class AzuriteBlob:
    host: str
    port: int

    @property
    def blob_endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/{DEVSTORE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={DEVSTORE_ACCOUNT};AccountKey={DEVSTORE_KEY};"
            f"BlobEndpoint={self.blob_endpoint};"
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteBlob]:
    """Azurite's blob service on 127.0.0.1 for the whole session (in-memory)."""
    if not AZURITE_BLOB.exists() or shutil.which("node") is None:
        message = f"Azurite is not installed ({AZURITE_BLOB} or node missing): run `npm install`"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    workdir = tmp_path_factory.mktemp("azurite")
    log_path = workdir / "azurite.log"
    for _attempt in range(3):  # the free port may be taken between the probe and Azurite's bind
        port = _free_port()
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [
                    str(AZURITE_BLOB),
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    str(port),
                    "--skipApiVersionCheck",
                    "--disableTelemetry",
                    "--inMemoryPersistence",  # (Azurite refuses --location with it; cwd takes its debug files)
                ],
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + AZURITE_START_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            if _accepts_connections(port):
                break
            time.sleep(0.1)  # polling an external process's startup, not waiting for behaviour under test
        if process.poll() is None and _accepts_connections(port):
            break
        process.kill()
        process.wait(timeout=10)
    else:
        pytest.fail(f"Azurite did not start; its log:\n{log_path.read_text(errors='replace')}")
    try:
        yield AzuriteBlob("127.0.0.1", port)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
