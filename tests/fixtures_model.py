"""Fixtures (model): the shipped Ames data, and the baseline model trained once per session into a temporary
local model registry that every area's tests can read (copy it before changing it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline_def.settings import DEFAULT_DATASET_PATH, Settings

MODEL_NAME = "HousePrices"


@pytest.fixture(scope="session")
def ames_csv() -> Path:
    """The shipped Ames Housing data (2,930 rows, gzip-compressed CSV)."""
    assert DEFAULT_DATASET_PATH.is_file(), f"the shipped data set is missing: {DEFAULT_DATASET_PATH}"
    return DEFAULT_DATASET_PATH


@pytest.fixture(scope="session")
def trained_registry(ames_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model registry folder holding `HousePrices/1/{model.joblib, metadata.json}` (seed 42). Shared by
    the whole session: tests that register more versions work on a copy."""
    from pipeline_def.local.model import model_registry_dir, train_and_register

    work_dir = tmp_path_factory.mktemp("model-work")
    settings = Settings(backend="local", local_dataset_path=ames_csv, local_work_dir=work_dir)
    record = train_and_register(settings, seed=42)
    assert record["version"] == 1
    return model_registry_dir(settings)
