"""Fixtures (the Azure path with no Azure): the steps' own venv (built once, cached by hash in
$STEP_ENV_CACHE) and an emulated Azure (workspace executing what is published, Azurite, managed identity,
AmesHousing and HousePrices registered) with the app's settings aimed at it, shared by a test module."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator.azure import MODEL_NAME, EmulatedAzure
from emulator.azurite import AzuriteBlob


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
    from pipeline_def.service import reset_service

    work = tmp_path_factory.mktemp("emulated-azure-v2")
    azure = EmulatedAzure(
        work / "workspace", azurite, step_env_v2_python, workspace_name="ws-e2e-v2", backend="azureml-v2"
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
def emulated_azure(
    azurite: AzuriteBlob,
    step_env_python: Path,
    trained_registry: Path,
    ames_csv: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[EmulatedAzure]:
    """An emulated Azure for the module, with AmesHousing (version 1) and HousePrices (version 1, the
    session's baseline) registered, and this process's environment holding the app's settings for it."""
    from pipeline_def.service import reset_service

    work = tmp_path_factory.mktemp("emulated-azure")
    # its own workspace name: the datastore's container is named after the workspace, and Azurite is shared
    azure = EmulatedAzure(work / "workspace", azurite, step_env_python, workspace_name="ws-e2e")
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


def copy_step_scripts(destination: Path) -> Path:
    """A copy of step_scripts/ (without caches) to edit in a test."""
    from pipeline_def.settings import STEP_SCRIPTS_DIR

    shutil.copytree(STEP_SCRIPTS_DIR, destination, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return destination
