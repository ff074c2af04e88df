"""The Azure path with no Azure: the emulated workspace (emulator/aml, executing what is published), its
default datastore in Azurite, the managed-identity endpoint, `AmesHousing` and `HousePrices` registered, and
the app settings that aim the Functions app at all of it. The Azure-path demo and the end-to-end tests both
stand it up with this module. With `backend="azureml-v2"` the data is the Ames CSV as a v2 `uri_file` data
asset (AmesHousingCsv, as docs/migrate-to-v2.md registers it) and the app's settings are the v2 backend's."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

from emulator.aml import FakeAzureML
from emulator.azurite import DEVSTORE_ACCOUNT, DEVSTORE_KEY, AzuriteBlob
from emulator.identity import OTHER_CREDENTIAL_VARIABLES, FakeManagedIdentity

DATASET_NAME = "AmesHousing"
# On v2: the CSV as a uri_file data asset, under a name of its own (a v1 tabular container keeps its name).
DATASET_NAME_V2 = "AmesHousingCsv"
MODEL_NAME = "HousePrices"
COMPUTE_NAME = "cpu-cluster"  # the compute the fake has from the start
LATEST_FILES = ("latest_predictions/predictions.csv", "latest_predictions/manifest.json")


class EmulatedAzure:
    """The workspace, the identity endpoint and the blob store, started together; `environ()` is what the
    Functions app needs to use them. Stop it to end every step process still running."""

    def __init__(
        self,
        workdir: Path,
        azurite: AzuriteBlob,
        step_python: Path,
        workspace_name: str = "ws-emulated",
        backend: str = "azureml",
    ) -> None:
        if backend not in ("azureml", "azureml-v2"):
            raise ValueError(f"not an Azure ML backend: {backend}")
        self.backend = backend
        self.workdir = Path(workdir)
        self.azurite = azurite
        self.step_python = Path(step_python)
        self.fake = FakeAzureML(workspace_name=workspace_name)
        self.identity = FakeManagedIdentity()

    def start(self) -> EmulatedAzure:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.identity.start()
        self.fake.start()
        self.fake.use_blob_store(self.azurite.url, DEVSTORE_ACCOUNT, DEVSTORE_KEY)
        self.fake.enable_execution(step_python=self.step_python, workdir=self.workdir / "aml")
        return self

    def stop(self) -> None:
        self.fake.stop()
        self.identity.stop()

    def __enter__(self) -> EmulatedAzure:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ seeding
    @property
    def dataset_name(self) -> str:
        return DATASET_NAME_V2 if self.backend == "azureml-v2" else DATASET_NAME

    def register_ames(self, csv_path: Path) -> str:
        """Register the shipped data (gzip-compressed or not): as the tabular dataset AmesHousing (v1), or as
        the CSV file of the uri_file data asset AmesHousingCsv (v2). Returns the version."""
        data = Path(csv_path).read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        if self.backend == "azureml-v2":
            plain = self.workdir / "ames_housing.csv"
            plain.write_bytes(data)
            return str(self.fake.register_data_v2(DATASET_NAME_V2, plain)["name"])
        return str(self.fake.register_dataset(DATASET_NAME, data).version)

    def register_model_version(self, version_folder: Path) -> int:
        """Register a local model version folder (model.joblib + metadata.json) as the next HousePrices."""
        dto = self.fake.register_model(MODEL_NAME, Path(version_folder))
        return int(dto["version"])

    # ------------------------------------------------------------------ the app's side
    def environ(self, home: Path) -> dict[str, str]:
        """The app settings (AML_*, PIPELINE_BACKEND), the managed identity's variables, a HOME for the SDK,
        and what makes the SDK's snapshot upload reach the workspace (see fake_aml/blob_capture.py)."""
        snapshot_uploads: dict[str, str] = {}
        if self.backend == "azureml":
            assert self.fake.snapshot_uploads is not None
            snapshot_uploads = self.fake.snapshot_uploads.environ()
        return self.fake.app_settings(
            self.backend,
            COMPUTE_NAME,
            AML_DATASET_NAME=self.dataset_name,
            AML_MODEL_NAME=MODEL_NAME,
            HOME=str(home),
            **self.identity.environ(),
            **snapshot_uploads,
        )

    def cleared_variables(self) -> list[str]:
        """Variables of this process that would override environ(): other credentials, other AML_* and
        PIPELINE_* settings, a job's AZUREML_* variables."""
        prefixed = [n for n in os.environ if n.startswith(("AML_", "PIPELINE_", "AZUREML_"))]
        return [*OTHER_CREDENTIAL_VARIABLES, *(n for n in prefixed if n not in self.environ(Path("/")))]

    def apply_environ(self, home: Path) -> dict[str, str]:
        """Set environ(home) in this process (and clear what would override it); return what was set."""
        for name in self.cleared_variables():
            os.environ.pop(name, None)
        values = self.environ(home)
        os.environ.update(values)
        return values

    # ------------------------------------------------------------------ the datastore
    def read_datastore(self, blob_name: str) -> bytes | None:
        """A blob of the default datastore (None if there is none)."""
        from azure.core.exceptions import ResourceNotFoundError

        assert self.fake.blob_store is not None
        try:
            return self.fake.blob_store.container_client().download_blob(blob_name).readall()
        except ResourceNotFoundError:
            return None

    def download_latest(self, destination: Path) -> dict[str, Path]:
        """Download latest_predictions/{predictions.csv, manifest.json} into `destination`."""
        destination.mkdir(parents=True, exist_ok=True)
        found: dict[str, Path] = {}
        for blob_name in LATEST_FILES:
            data = self.read_datastore(blob_name)
            if data is None:
                raise FileNotFoundError(f"the default datastore has no {blob_name}")
            target = destination / Path(blob_name).name
            target.write_bytes(data)
            found[Path(blob_name).name] = target
        return found

    def latest_manifest(self) -> dict | None:
        data = self.read_datastore(LATEST_FILES[1])
        return None if data is None else json.loads(data)
