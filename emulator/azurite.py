"""Azurite's blob service on 127.0.0.1 and a free port, as a process the caller owns: the tests' session
fixture and the Azure-path demo both start it this way."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
AZURITE_BLOB = REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"
# Azurite's documented development account and key (public, not a secret)
DEVSTORE_ACCOUNT = "devstoreaccount1"
DEVSTORE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_START_TIMEOUT = 30.0


class AzuriteUnavailable(RuntimeError):
    """Azurite is not installed, or did not start (the message says which, with its log)."""


@dataclass(frozen=True)
class AzuriteBlob:
    host: str
    port: int

    @property
    def url(self) -> str:
        """The service's root, `http://127.0.0.1:{port}` (also what a job's http_proxy points at)."""
        return f"http://{self.host}:{self.port}"

    @property
    def blob_endpoint(self) -> str:
        return f"{self.url}/{DEVSTORE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={DEVSTORE_ACCOUNT};AccountKey={DEVSTORE_KEY};"
            f"BlobEndpoint={self.blob_endpoint};"
        )


def installed() -> bool:
    return AZURITE_BLOB.exists() and shutil.which("node") is not None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start_azurite(workdir: Path) -> tuple[AzuriteBlob, subprocess.Popen]:
    """Start azurite-blob in memory with `workdir` as its folder (its debug files); return it and its process.
    The flags matter: current storage SDKs speak an API version newer than Azurite knows."""
    if not installed():
        raise AzuriteUnavailable(
            f"Azurite is not installed ({AZURITE_BLOB} or node missing): run `npm install`"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "azurite.log"
    for _attempt in range(3):  # the free port may be taken between the probe and Azurite's bind
        port = free_port()
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
            time.sleep(0.1)  # polling an external process's startup
        if process.poll() is None and _accepts_connections(port):
            return AzuriteBlob("127.0.0.1", port), process
        process.kill()
        process.wait(timeout=10)
    raise AzuriteUnavailable(f"Azurite did not start; its log:\n{log_path.read_text(errors='replace')}")


def stop_azurite(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
