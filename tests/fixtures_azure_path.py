"""Fixtures (the Azure path with no Azure): the steps' own venv (built once, cached by hash in
$STEP_ENV_CACHE) and an emulated Azure (workspace executing what is published, Azurite, managed identity,
AmesHousing and HousePrices registered) with the app's settings aimed at it, shared by a test module; and the
helpers that observe its runs as a user would."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from emulator.azure import MODEL_NAME, EmulatedAzure
from emulator.azurite import AzuriteBlob

if TYPE_CHECKING:
    from emulator.functions_host import LoadedApp


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses the steps' venv, even through another fixture, carries the `step_env` marker, so
    `make test-fast` (`-m "not step_env"`) never builds the venv."""
    for item in items:
        if {"step_env_python", "step_env_v2_python"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.step_env)


@pytest.fixture(scope="session")
def step_env_python() -> Path:
    """The interpreter of the steps' venv (step_scripts/requirements.txt), built on first use."""
    from emulator.step_env import StepEnvError, step_python

    try:
        return step_python()
    except StepEnvError as error:
        pytest.fail(f"the steps' environment does not build: {error}")


@pytest.fixture(scope="session")
def step_env_v2_python() -> Path:
    """The interpreter of the v2 steps' venv (step_scripts/requirements-v2.txt: no azureml), built on first
    use."""
    from emulator.step_env import StepEnvError, step_python
    from pipeline_def.settings import STEP_SCRIPTS_DIR

    try:
        return step_python(STEP_SCRIPTS_DIR / "requirements-v2.txt")
    except StepEnvError as error:
        pytest.fail(f"the v2 steps' environment does not build: {error}")


# Per backend: the fixture giving the steps' interpreter, and the workspace's own name (the datastore's container
# is named after the workspace, and Azurite is shared).
STEP_ENV_FIXTURE = {"azureml": "step_env_python", "azureml-v2": "step_env_v2_python"}
WORKSPACE_NAME = {"azureml": "ws-e2e", "azureml-v2": "ws-e2e-v2"}


@contextmanager
def emulated_workspace(
    backend: str, work: Path, azurite: AzuriteBlob, step_python: Path, trained_registry: Path, ames_csv: Path
) -> Iterator[EmulatedAzure]:
    """An emulated Azure for `backend` ("azureml" or "azureml-v2") in `work`, its steps run by `step_python`, with
    the Ames data (version 1: v1's tabular dataset AmesHousing, v2's uri_file data asset AmesHousingCsv) and
    HousePrices (version 1, the session's baseline) registered, and this process's environment holding the app's
    settings for it until the block ends."""
    from pipeline_def.service import reset_service

    azure = EmulatedAzure(
        work / "workspace", azurite, step_python, workspace_name=WORKSPACE_NAME[backend], backend=backend
    )
    with azure, pytest.MonkeyPatch.context() as monkeypatch:
        azure.register_ames(ames_csv)
        azure.register_model_version(trained_registry / MODEL_NAME / "1")
        home = work / "home"
        home.mkdir()
        for name, value in azure.environ(home).items():
            monkeypatch.setenv(name, value)
        for name in azure.cleared_variables():
            monkeypatch.delenv(name, raising=False)
        reset_service()
        try:
            yield azure
        finally:
            reset_service()


@pytest.fixture(scope="module")
def emulated_azure_v2(
    azurite: AzuriteBlob,
    step_env_v2_python: Path,
    trained_registry: Path,
    ames_csv: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[EmulatedAzure]:
    """emulated_azure for the azureml-v2 backend: the Ames CSV as the uri_file data asset AmesHousingCsv
    (version 1), HousePrices version 1, the steps in the requirements-v2.txt venv, the v2 settings set."""
    work = tmp_path_factory.mktemp("emulated-azure-v2")
    python = step_env_v2_python
    with emulated_workspace("azureml-v2", work, azurite, python, trained_registry, ames_csv) as azure:
        yield azure


@pytest.fixture(scope="module")
def emulated_azure(
    azurite: AzuriteBlob,
    step_env_python: Path,
    trained_registry: Path,
    ames_csv: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[EmulatedAzure]:
    """An emulated Azure for the module, with AmesHousing (version 1) and HousePrices (version 1, the
    session's baseline) registered, and this process's environment holding the app's settings for it."""
    work = tmp_path_factory.mktemp("emulated-azure")
    with emulated_workspace("azureml", work, azurite, step_env_python, trained_registry, ames_csv) as azure:
        yield azure


def copy_step_scripts(destination: Path) -> Path:
    """A copy of step_scripts/ (without caches) to edit in a test."""
    from pipeline_def.settings import STEP_SCRIPTS_DIR

    shutil.copytree(STEP_SCRIPTS_DIR, destination, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return destination


def step_scripts_printing(destination: Path, marker: str) -> Path:
    """A copy of step_scripts/ in `destination` whose fetch_data.py prints `marker` first thing; returns that
    edited fetch_data.py."""
    script = copy_step_scripts(destination) / "fetch_data.py"
    text = script.read_text()
    anchor = "from __future__ import annotations\n"
    assert anchor in text
    script.write_text(text.replace(anchor, anchor + f"print({marker!r}, flush=True)\n", 1))
    return script


# Runs on the emulated workspace, observed as a user would: GET /api/runs/{id}, the datastore's blobs, the logs.
RUN_TIMEOUT = 300.0  # a run is three step processes; a cold machine under load needs a minute or two
STEP_NAMES = ("fetch_data", "predict", "save_predictions")


def finished_run(azure: EmulatedAzure, app: LoadedApp, run_id: str) -> dict:
    """The run's answer (GET /api/runs/{id}) once it has ended, after waiting (bounded) for it to end."""
    azure.fake.wait_for_run(run_id, RUN_TIMEOUT)
    response = app.get_run(run_id)
    assert response.status == 200, response
    assert response.json["terminal"] is True, response.json
    return response.json


def step_logs(azure: EmulatedAzure, run_id: str) -> str:
    """The end of each step's log, to show with an assertion about the run."""
    return "\n".join(f"--- {n} ---\n{azure.fake.step_log(run_id, n)[-3000:]}" for n in STEP_NAMES)


def step_artifact(azure: EmulatedAzure, step_run_id: str, path: str) -> str:
    """A step run's log file (`path` under its ExperimentRun/dcid.{id}/ in the workspace's artifact store)."""
    data = azure.fake.blob_store.container_client("azureml").download_blob(
        f"ExperimentRun/dcid.{step_run_id}/{path}"
    )
    return data.readall().decode()


def csv_rows(csv_bytes: bytes | None) -> list[dict[str, str]]:
    """The rows of a CSV blob, which must exist."""
    assert csv_bytes is not None
    return list(csv.DictReader(io.StringIO(csv_bytes.decode())))


def model_predictions(model_folder: Path, data_file: Path) -> dict[int, float]:
    """The model's predictions of every row of `data_file`, by the row's Order."""
    import joblib
    import pandas as pd

    model = joblib.load(model_folder / "model.joblib")
    features = json.loads((model_folder / "metadata.json").read_text())["features"]
    frame = pd.read_csv(data_file)
    return dict(zip(frame["Order"].astype(int), model.predict(frame[features]).astype(float), strict=True))
