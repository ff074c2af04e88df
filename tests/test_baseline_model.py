"""The baseline model and the local model registry: accuracy, reproducibility, versions and metadata."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import sklearn

from pipeline_def.errors import LocalRunError
from pipeline_def.local.model import (
    METADATA_FILE,
    MODEL_FILE,
    ensure_model,
    evaluate,
    feature_columns,
    registered_versions,
    split_holdout,
    train,
    train_and_register,
    why_train,
)
from pipeline_def.settings import PROJECT_ROOT, Settings


@pytest.fixture(scope="module")
def ames(ames_csv: Path) -> pd.DataFrame:
    return pd.read_csv(ames_csv)


def copy_registry(trained_registry: Path, work_dir: Path) -> Settings:
    """Settings whose registry is a private copy of the session's (so versions can be added)."""
    shutil.copytree(trained_registry, work_dir / "models")
    return Settings(backend="local", local_work_dir=work_dir)


def test_feature_columns_leave_out_ids_and_target_and_split_text_from_numbers(ames: pd.DataFrame) -> None:
    categorical, numeric = feature_columns(ames)

    assert len(categorical) + len(numeric) == len(ames.columns) - 3
    assert not {"Order", "PID", "SalePrice"} & set(categorical + numeric)
    assert {"Neighborhood", "SaleType", "PoolQC"} <= set(categorical)
    assert {"GrLivArea", "OverallQual", "YearBuilt"} <= set(numeric)


def test_holdout_split_is_seeded_disjoint_and_a_fifth(ames: pd.DataFrame) -> None:
    train_a, holdout_a = split_holdout(ames, seed=7)
    train_b, holdout_b = split_holdout(ames, seed=7)
    _, holdout_c = split_holdout(ames, seed=8)

    assert list(holdout_a["Order"]) == list(holdout_b["Order"])
    assert set(holdout_a["Order"]) != set(holdout_c["Order"])
    assert not set(train_a["Order"]) & set(holdout_a["Order"])
    assert len(train_a) + len(holdout_a) == len(ames)
    assert len(holdout_a) == pytest.approx(0.2 * len(ames), abs=1)


def test_trained_model_reaches_r2_above_0_90_on_its_holdout(
    trained_registry: Path, ames: pd.DataFrame
) -> None:
    version = trained_registry / "HousePrices" / "1"
    model = joblib.load(version / MODEL_FILE)
    metadata = json.loads((version / METADATA_FILE).read_text())
    _, holdout = split_holdout(ames, seed=metadata["seed"])

    metrics = evaluate(model, holdout)

    assert metrics["r2"] > 0.90
    assert metrics["rmse"] < 30_000
    # the recorded figures are the ones this very model gets on that holdout
    assert metadata["holdout_r2"] == pytest.approx(metrics["r2"])
    assert metadata["holdout_rmse"] == pytest.approx(metrics["rmse"])
    assert metadata["holdout_rmse_log"] == pytest.approx(metrics["rmse_log"])


def test_metadata_names_features_versions_metrics_data_and_seed(
    trained_registry: Path, ames_csv: Path
) -> None:
    version = trained_registry / "HousePrices" / "1"
    metadata = json.loads((version / METADATA_FILE).read_text())
    model = joblib.load(version / MODEL_FILE)

    assert metadata["name"] == "HousePrices"
    assert metadata["version"] == 1
    assert metadata["features"] == list(model.feature_names_in_)
    assert sorted(metadata["features"]) == sorted(
        metadata["categorical_features"] + metadata["numeric_features"]
    )
    assert metadata["target"] == "SalePrice"
    assert metadata["scikit_learn_version"] == sklearn.__version__
    assert metadata["seed"] == 42
    assert metadata["training_data_sha256"] == hashlib.sha256(ames_csv.read_bytes()).hexdigest()
    assert metadata["train_rows"] + metadata["holdout_rows"] == 2930
    for key in ("holdout_rmse", "holdout_r2", "holdout_rmse_log", "holdout_r2_log"):
        assert isinstance(metadata[key], float) and np.isfinite(metadata[key])
    trained_at = datetime.strptime(metadata["trained_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - trained_at).total_seconds()) < 3600


@pytest.mark.slow
def test_training_again_with_the_same_seed_registers_version_2_with_identical_predictions(
    trained_registry: Path, ames: pd.DataFrame, tmp_path: Path
) -> None:
    settings = copy_registry(trained_registry, tmp_path)

    record = train_and_register(settings, seed=42)

    model_dir = tmp_path / "models" / "HousePrices"
    assert record["version"] == 2
    assert Path(record["path"]) == model_dir / "2"
    assert registered_versions(model_dir) == [1, 2]
    first, second = (joblib.load(model_dir / v / MODEL_FILE) for v in ("1", "2"))
    features = record["features"]
    np.testing.assert_array_equal(first.predict(ames[features]), second.predict(ames[features]))
    stored = json.loads((model_dir / "1" / METADATA_FILE).read_text())
    assert record["holdout_rmse"] == stored["holdout_rmse"]


@pytest.mark.slow
def test_ensure_model_trains_version_1_into_an_empty_registry_and_only_once(tmp_path: Path) -> None:
    settings = Settings(backend="local", local_work_dir=tmp_path)

    model_dir = ensure_model(settings)
    again = ensure_model(settings)

    assert model_dir == again == tmp_path / "models" / "HousePrices"
    assert registered_versions(model_dir) == [1]


@pytest.mark.slow
def test_ensure_model_trains_again_when_the_newest_version_predates_the_quality_gate(tmp_path: Path) -> None:
    settings = Settings(backend="local", local_work_dir=tmp_path)
    old = tmp_path / "models" / "HousePrices" / "1"
    old.mkdir(parents=True)
    (old / MODEL_FILE).write_bytes(b"an older baseline")
    (old / "metadata.json").write_text('{"name": "HousePrices", "version": 1}')

    assert why_train(old.parent) == "version 1 predates the quality gate (no quality_reference)"
    model_dir = ensure_model(settings)

    assert registered_versions(model_dir) == [1, 2]
    assert why_train(model_dir) is None
    assert (old / MODEL_FILE).read_bytes() == b"an older baseline"  # kept: versions are never rewritten


def test_registry_versions_ignore_folders_that_are_not_complete_versions(tmp_path: Path) -> None:
    for name in ("1", "3", "latest", ".staging-x", "0", "7"):
        (tmp_path / name).mkdir()
    for name in ("1", "3", "latest", ".staging-x", "0"):
        (tmp_path / name / MODEL_FILE).write_bytes(b"x")

    assert registered_versions(tmp_path) == [1, 3]  # "7" has no model file yet
    assert registered_versions(tmp_path / "absent") == []


def test_training_data_without_the_target_is_refused_by_name(ames: pd.DataFrame) -> None:
    with pytest.raises(LocalRunError, match="'SalePrice'"):
        train(ames.drop(columns=["SalePrice"]).head(100), seed=1)


@pytest.mark.slow
def test_train_cli_registers_the_next_version_with_the_given_seed(
    trained_registry: Path, tmp_path: Path
) -> None:
    copy_registry(trained_registry, tmp_path)
    env = {**os.environ, "PIPELINE_BACKEND": "local", "LOCAL_WORK_DIR": str(tmp_path)}
    env.pop("LOCAL_DATASET_PATH", None)

    done = subprocess.run(
        [sys.executable, "-m", "pipeline_def", "--json", "train", "--seed", "7"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert (record["version"], record["seed"]) == (2, 7)
    assert record["holdout_r2"] > 0.90
    stored = json.loads((tmp_path / "models" / "HousePrices" / "2" / METADATA_FILE).read_text())
    assert stored["seed"] == 7


def test_pickled_model_loads_where_pipeline_def_does_not_exist(
    trained_registry: Path, tmp_path: Path
) -> None:
    # -I: isolated mode, so neither the project folder nor PYTHONPATH is importable, as on Azure ML
    script = (
        "import sys, joblib\n"
        f"model = joblib.load({str(trained_registry / 'HousePrices' / '1' / MODEL_FILE)!r})\n"
        "assert not [m for m in sys.modules if m.startswith(('pipeline_def', 'tests'))]\n"
        "print(type(model).__module__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("sklearn.")
