"""The predict step on the shipped Ames data with the real baseline model: its pure functions in-process, and
its command line as the pipeline runs it (a separate process)."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import r2_score

from pipeline_def.settings import STEP_SCRIPTS_DIR
from tests.fixtures_local import read_parts

# step scripts import each other as top-level modules, as they do in their Azure ML snapshot
if str(STEP_SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(STEP_SCRIPTS_DIR))
predict_step = importlib.import_module("batchpred_steps.score")
errors = importlib.import_module("batchpred_steps.errors")
handoff = importlib.import_module("batchpred_steps.handoff")

PREDICTED = "PredictedSalePrice"


@pytest.fixture(scope="module")
def ames(ames_csv: Path) -> pd.DataFrame:
    return pd.read_csv(ames_csv)


@pytest.fixture(scope="module")
def new_rows(ames: pd.DataFrame) -> pd.DataFrame:
    """The Ames rows as fetch_data hands them over: without the price."""
    return ames.drop(columns=["SalePrice"])


@pytest.fixture(scope="module")
def model_dir(trained_registry: Path) -> Path:
    return trained_registry / "HousePrices"


@pytest.fixture(scope="module")
def model(model_dir: Path):
    return joblib.load(model_dir / "1" / "model.joblib")


@pytest.fixture(scope="module")
def features(model) -> list[str]:
    return list(model.feature_names_in_)


def write_input(folder: Path, frame: pd.DataFrame, parts: int = 1, metadata: dict | None = None) -> Path:
    """`frame` as fetch_data would write it: Parquet parts and a _metadata.json."""
    for index, chunk in enumerate(np.array_split(np.arange(len(frame)), parts)):
        handoff.write_frame(folder, frame.iloc[chunk], index=index)
    (folder / "_metadata.json").write_text(json.dumps(metadata or {"dataset": "ames", "rows": len(frame)}))
    return folder


def run_predict(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(STEP_SCRIPTS_DIR / "predict.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def error_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, done.stderr
    return lines[0]


# --- pure functions --------------------------------------------------------------------------------------


def test_predict_frame_keeps_every_column_in_order_and_adds_the_prediction_last(
    model, features: list[str], new_rows: pd.DataFrame
) -> None:
    rows = new_rows.head(50)

    scored = predict_step.predict_frame(model, rows, features)

    assert list(scored.columns) == [*rows.columns, PREDICTED]
    pd.testing.assert_frame_equal(scored.drop(columns=[PREDICTED]), rows)
    assert scored[PREDICTED].dtype == np.float64
    assert (scored[PREDICTED] > 10_000).all() and (scored[PREDICTED] < 2_000_000).all()


def test_extra_and_reordered_columns_give_the_same_predictions(
    model, features: list[str], new_rows: pd.DataFrame
) -> None:
    rows = new_rows.head(200)
    shuffled = rows[list(rows.columns[::-1])].assign(Id=range(1000, 1200), Notes="resale")

    expected = predict_step.predict_frame(model, rows, features)[PREDICTED]
    scored = predict_step.predict_frame(model, shuffled, features)

    np.testing.assert_array_equal(scored[PREDICTED].to_numpy(), expected.to_numpy())
    assert list(scored["Id"]) == list(range(1000, 1200))
    assert list(scored.columns) == [*shuffled.columns, PREDICTED]


def test_missing_columns_are_named_in_the_models_order(
    model, features: list[str], new_rows: pd.DataFrame
) -> None:
    rows = new_rows.drop(columns=["Neighborhood", "GrLivArea"]).head(5)

    assert predict_step.missing_columns(list(rows.columns), features) == ["GrLivArea", "Neighborhood"]
    with pytest.raises(errors.StepError, match="2 column.*GrLivArea, Neighborhood"):
        predict_step.predict_frame(model, rows, features)


def test_unseen_categories_and_oddly_typed_columns_are_scored_not_crashed(
    model, features: list[str], new_rows: pd.DataFrame
) -> None:
    rows = new_rows.head(100)
    odd = rows.assign(
        Neighborhood="Atlantis",  # never seen in training
        PoolQC=np.nan,  # a text column that arrives all empty, so as floats
        CentralAir=rows["CentralAir"].eq("Y"),  # booleans instead of Y/N
    )

    scored = predict_step.predict_frame(model, odd, features)

    assert scored[PREDICTED].notna().all()
    assert (scored[PREDICTED] > 10_000).all()


def test_an_input_that_already_has_predictions_is_refused(model, features: list[str], new_rows) -> None:
    with pytest.raises(errors.StepError, match=PREDICTED):
        predict_step.predict_frame(model, new_rows.head(3).assign(**{PREDICTED: 1.0}), features)


def test_zero_rows_give_an_empty_prediction_column(model, features: list[str], new_rows) -> None:
    scored = predict_step.predict_frame(model, new_rows.head(0), features)

    assert len(scored) == 0
    assert list(scored.columns) == [*new_rows.columns, PREDICTED]


def test_model_version_choice() -> None:
    assert predict_step.choose_version([1, 3, 2], "latest") == 3
    assert predict_step.choose_version([1, 3, 2], "2") == 2
    with pytest.raises(errors.StepError, match=r"version 5 is not registered \(available: 1, 2, 3\)"):
        predict_step.choose_version([1, 3, 2], "5")
    with pytest.raises(errors.StepError, match="positive whole number"):
        predict_step.choose_version([1], "-1")


def test_a_model_path_resolves_to_its_file_name_and_version(model_dir: Path, tmp_path: Path) -> None:
    registry = tmp_path / "HousePrices"
    shutil.copytree(model_dir, registry)
    shutil.copytree(registry / "1", registry / "2")
    metadata = json.loads((registry / "2" / "metadata.json").read_text())
    (registry / "2" / "metadata.json").write_text(json.dumps({**metadata, "version": 2}))
    downloaded = tmp_path / "download" / "HousePrices"  # a model folder as Azure ML downloads it
    shutil.copytree(registry / "1", downloaded)

    latest = predict_step.resolve_model(registry, "latest")
    first = predict_step.resolve_model(registry, "1")
    file = predict_step.resolve_model(registry / "1" / "model.joblib")
    folder = predict_step.resolve_model(registry / "2")
    pinned = predict_step.resolve_model(downloaded, "7", model_name="HousePricesV2")

    assert (latest.path, latest.name, latest.version) == (registry / "2" / "model.joblib", "HousePrices", 2)
    assert (first.path, first.version) == (registry / "1" / "model.joblib", 1)
    assert (file.path, file.version) == (registry / "1" / "model.joblib", 1)
    assert (folder.path, folder.version) == (registry / "2" / "model.joblib", 2)
    # a model folder's version is the platform's (what it downloaded), its name the one given
    assert (pinned.path, pinned.name, pinned.version) == (downloaded / "model.joblib", "HousePricesV2", 7)
    assert latest.metadata["features"] == metadata["features"]
    with pytest.raises(errors.StepError, match="model 'HousePrices:1' does not exist"):
        predict_step.resolve_model("HousePrices:1")


# --- the step as the pipeline runs it --------------------------------------------------------------------


@pytest.mark.slow
def test_step_scores_every_shipped_row_close_to_its_true_price(
    model_dir: Path, ames: pd.DataFrame, new_rows: pd.DataFrame, tmp_path: Path
) -> None:
    source = write_input(
        tmp_path / "in", new_rows, parts=3, metadata={"dataset": "ames", "seed": 5, "rows": 2930}
    )

    done = run_predict("--input", source, "--model", model_dir, "--output", tmp_path / "out")

    assert done.returncode == 0, done.stderr
    scored = read_parts(tmp_path / "out")
    assert list(scored.columns) == [*new_rows.columns, PREDICTED]
    assert len(scored) == len(new_rows)
    pd.testing.assert_frame_equal(scored.drop(columns=[PREDICTED]), new_rows)
    joined = scored[["Order", PREDICTED]].merge(ames[["Order", "SalePrice"]], on="Order", validate="1:1")
    assert r2_score(joined["SalePrice"], joined[PREDICTED]) > 0.85
    metadata = json.loads((tmp_path / "out" / "_metadata.json").read_text())
    model_metadata = json.loads((model_dir / "1" / "metadata.json").read_text())
    assert metadata == {
        # the model's quality reference, handed on to save_predictions' quality gate
        "quality_reference": model_metadata["quality_reference"],
        "dataset": "ames",
        "seed": 5,
        "rows": 2930,
        "model_name": "HousePrices",
        "model_version": 1,
        "prediction_column": PREDICTED,
    }


@pytest.mark.slow
def test_chunked_output_equals_unchunked_output(
    model_dir: Path, new_rows: pd.DataFrame, tmp_path: Path
) -> None:
    source = write_input(tmp_path / "in", new_rows.head(1000), parts=2)

    whole = run_predict("--input", source, "--model", model_dir, "--output", tmp_path / "whole")
    chunked = run_predict(
        "--input", source, "--model", model_dir, "--output", tmp_path / "chunked", "--batch-rows", "97"
    )

    assert whole.returncode == 0 and chunked.returncode == 0, whole.stderr + chunked.stderr
    assert len(handoff.parquet_parts(tmp_path / "whole")) == 2  # one per input part
    assert len(handoff.parquet_parts(tmp_path / "chunked")) == 12  # 500 rows per part: ceil(500 / 97) * 2
    pd.testing.assert_frame_equal(read_parts(tmp_path / "chunked"), read_parts(tmp_path / "whole"))


def test_missing_columns_fail_with_their_names_and_write_nothing(
    model_dir: Path, new_rows: pd.DataFrame, tmp_path: Path
) -> None:
    source = write_input(tmp_path / "in", new_rows.drop(columns=["GrLivArea", "Neighborhood"]).head(20))

    done = run_predict("--input", source, "--model", model_dir, "--output", tmp_path / "out")

    assert done.returncode == 2
    assert "GrLivArea, Neighborhood" in error_line(done)
    assert not list((tmp_path / "out").glob("*.parquet"))


def test_a_corrupt_model_file_fails_clearly(model_dir: Path, new_rows: pd.DataFrame, tmp_path: Path) -> None:
    source = write_input(tmp_path / "in", new_rows.head(20))
    corrupt = tmp_path / "model.joblib"
    corrupt.write_bytes((model_dir / "1" / "model.joblib").read_bytes()[:5000])

    done = run_predict("--input", source, "--model", corrupt, "--output", tmp_path / "out")

    assert done.returncode == 2
    assert f"cannot load the model file '{corrupt}'" in error_line(done)


def test_a_model_name_is_no_path_and_fails_clearly(new_rows: pd.DataFrame, tmp_path: Path) -> None:
    source = write_input(tmp_path / "in", new_rows.head(20))

    done = run_predict("--input", source, "--model", "HousePrices", "--output", tmp_path / "out")

    assert done.returncode == 2
    assert error_line(done) == "error: model 'HousePrices' does not exist"


def test_a_downloaded_model_folder_is_scored_and_recorded_as_the_platform_names_it(
    model_dir: Path, new_rows: pd.DataFrame, tmp_path: Path
) -> None:
    # what Azure ML v2 hands a custom_model input: a folder holding the registered files
    downloaded = tmp_path / "mnt" / "model"
    shutil.copytree(model_dir / "1", downloaded)
    source = write_input(tmp_path / "in", new_rows.head(20))

    done = run_predict(
        "--input", source, "--model", downloaded, "--model-version", "3", "--model-name", "HousePrices",
        "--output", tmp_path / "out",
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    metadata = json.loads((tmp_path / "out" / "_metadata.json").read_text())
    assert (metadata["model_name"], metadata["model_version"], metadata["rows"]) == ("HousePrices", 3, 20)


def test_a_missing_input_folder_fails_clearly(model_dir: Path, tmp_path: Path) -> None:
    done = run_predict("--input", tmp_path / "nowhere", "--model", model_dir, "--output", tmp_path / "out")

    assert done.returncode == 2
    assert "does not exist" in error_line(done)


def test_a_corrupt_input_part_fails_in_one_line(
    model_dir: Path, new_rows: pd.DataFrame, tmp_path: Path
) -> None:
    source = write_input(tmp_path / "in", new_rows.head(20), parts=2)
    part = handoff.parquet_parts(source)[1]
    part.write_bytes(part.read_bytes()[:300])

    done = run_predict("--input", source, "--model", model_dir, "--output", tmp_path / "out")

    assert done.returncode == 2
    assert error_line(done).startswith("error: ")
    assert not (tmp_path / "out" / "_metadata.json").exists()  # the next step must not take it as done


def test_a_malformed_input_metadata_file_fails_before_anything_is_written(
    model_dir: Path, new_rows: pd.DataFrame, tmp_path: Path
) -> None:
    source = write_input(tmp_path / "in", new_rows.head(20))
    (source / "_metadata.json").write_text("[1, 2]")

    done = run_predict("--input", source, "--model", model_dir, "--output", tmp_path / "out")

    assert done.returncode == 2
    assert "does not hold a JSON object" in error_line(done)
    assert not (tmp_path / "out").exists()


def test_an_empty_input_gives_an_empty_output_with_the_prediction_column(
    model_dir: Path, new_rows: pd.DataFrame, tmp_path: Path
) -> None:
    source = write_input(tmp_path / "in", new_rows.head(0), metadata={"dataset": "ames", "rows": 0})

    done = run_predict("--input", source, "--model", model_dir, "--output", tmp_path / "out")

    assert done.returncode == 0, done.stderr
    scored = read_parts(tmp_path / "out")
    assert len(scored) == 0
    assert list(scored.columns) == [*new_rows.columns, PREDICTED]
    assert json.loads((tmp_path / "out" / "_metadata.json").read_text())["rows"] == 0


def test_the_requested_version_is_loaded_and_recorded(
    model_dir: Path, new_rows: pd.DataFrame, tmp_path: Path
):
    registry = tmp_path / "HousePrices"
    shutil.copytree(model_dir, registry)
    source = write_input(tmp_path / "in", new_rows.head(20))

    found = run_predict(
        "--input", source, "--model", registry, "--model-version", "1", "--output", tmp_path / "a"
    )
    absent = run_predict(
        "--input", source, "--model", registry, "--model-version", "4", "--output", tmp_path / "b"
    )

    assert found.returncode == 0, found.stderr
    assert json.loads((tmp_path / "a" / "_metadata.json").read_text())["model_version"] == 1
    assert absent.returncode == 2
    assert "model version 4 is not registered (available: 1)" in error_line(absent)


@pytest.mark.slow
def test_rerunning_into_the_same_output_replaces_the_previous_parts(
    model_dir: Path, new_rows: pd.DataFrame, tmp_path: Path
) -> None:
    source = write_input(tmp_path / "in", new_rows.head(300))
    first = run_predict(
        "--input", source, "--model", model_dir, "--output", tmp_path / "out", "--batch-rows", "50"
    )
    second = run_predict("--input", source, "--model", model_dir, "--output", tmp_path / "out")

    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert len(handoff.parquet_parts(tmp_path / "out")) == 1
    assert len(read_parts(tmp_path / "out")) == 300


def test_help_is_fast_and_imports_no_data_library() -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(STEP_SCRIPTS_DIR / "predict.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert done.returncode == 0
    assert "--model-version" in done.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert not imported & {"pandas", "numpy", "pyarrow", "sklearn", "joblib", "azureml"}
