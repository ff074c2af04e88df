"""save_predictions: the layout and manifest it writes, and that a failing save never loses or truncates the
latest predictions, in a local folder and in blob storage (Azurite)."""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from tests.fixtures_local import load_step_module

save_predictions = load_step_module("save_predictions")
stepio = load_step_module("stepio")

LATEST_FILES = ("latest_predictions/predictions.csv", "latest_predictions/manifest.json")


@pytest.fixture(scope="module")
def ames(ames_csv: Path) -> pd.DataFrame:
    return pd.read_csv(ames_csv)


def make_predictions(folder: Path, ames: pd.DataFrame, rows: int, parts: int = 1, price: float = 1.0) -> Path:
    """A folder shaped like predict's output: Parquet parts of Ames rows (no target) with a prediction,
    and the `_metadata.json` the earlier steps leave."""
    frame = ames.head(rows).drop(columns=["SalePrice"]).assign(PredictedSalePrice=price)
    size = -(-rows // parts) if rows else 0
    for index in range(parts):
        stepio.write_frame(folder, frame.iloc[index * size : (index + 1) * size], index=index)
    metadata = {"dataset": "ames.csv.gz", "rows": rows, "seed": 5, "sample_size": rows}
    metadata |= {"model_name": "HousePrices", "model_version": 3}
    (folder / "_metadata.json").write_text(json.dumps(metadata))
    return folder


def latest_bytes(root: Path) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in LATEST_FILES}


# --- pure functions --------------------------------------------------------------------------------------


def test_history_folder_is_dated_in_utc_and_names_the_run() -> None:
    late_evening_in_new_york = datetime(2026, 3, 1, 22, 30, tzinfo=timezone(timedelta(hours=-5)))

    assert save_predictions.history_folder("run_1", late_evening_in_new_york) == "history/2026-03-02/run_1"
    assert save_predictions.history_folder("../../x", late_evening_in_new_york) == "history/2026-03-02/_.._x"


def test_publish_plan_writes_history_first_and_the_latest_manifest_last(tmp_path: Path) -> None:
    csv_file, manifest = tmp_path / "p.csv", tmp_path / "m.json"

    plan = save_predictions.publish_plan("history/2026-01-02/r1", csv_file, manifest)

    assert plan == [
        ("history/2026-01-02/r1/predictions.csv", csv_file),
        ("history/2026-01-02/r1/manifest.json", manifest),
        ("latest_predictions/predictions.csv", csv_file),
        ("latest_predictions/manifest.json", manifest),
    ]


def test_build_manifest_names_rows_model_run_fingerprint_time_and_columns() -> None:
    now = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)

    manifest = save_predictions.build_manifest(
        rows=3,
        columns=["Order", "PredictedSalePrice"],
        run_id="r1",
        fingerprint="abc123",
        input_metadata={"model_name": "HousePrices", "model_version": 2, "seed": 9},
        now=now,
        history="history/2026-05-06/r1",
    )

    assert manifest["rows"] == 3
    assert manifest["columns"] == ["Order", "PredictedSalePrice"]
    assert (manifest["model_name"], manifest["model_version"]) == ("HousePrices", 2)
    assert (manifest["run_id"], manifest["pipeline_fingerprint"]) == ("r1", "abc123")
    assert manifest["created_at"] == "2026-05-06T07:08:09Z"
    assert manifest["seed"] == 9


def test_write_predictions_csv_joins_every_part_under_one_header(ames: pd.DataFrame, tmp_path: Path) -> None:
    source = make_predictions(tmp_path / "in", ames, rows=25, parts=3)

    rows, columns = save_predictions.write_predictions_csv(source, tmp_path / "p.csv", "PredictedSalePrice")

    written = pd.read_csv(tmp_path / "p.csv")
    assert rows == 25 and len(written) == 25
    assert columns == list(written.columns) and columns[-1] == "PredictedSalePrice"
    assert written["PID"].tolist() == ames.head(25)["PID"].tolist()


def test_write_predictions_csv_refuses_an_input_without_the_prediction_column(
    ames: pd.DataFrame, tmp_path: Path
) -> None:
    stepio.write_frame(tmp_path / "in", ames.head(5))

    with pytest.raises(stepio.StepError, match="no 'PredictedSalePrice' column"):
        save_predictions.write_predictions_csv(tmp_path / "in", tmp_path / "p.csv", "PredictedSalePrice")


def test_write_predictions_csv_refuses_an_input_without_rows(ames: pd.DataFrame, tmp_path: Path) -> None:
    source = make_predictions(tmp_path / "in", ames, rows=0)

    with pytest.raises(stepio.StepError, match="holds no rows"):
        save_predictions.write_predictions_csv(source, tmp_path / "p.csv", "PredictedSalePrice")


# --- the step, local folder ------------------------------------------------------------------------------


def test_save_step_writes_latest_and_a_dated_history_copy_with_manifests(
    run_step, ames: pd.DataFrame, tmp_path: Path
) -> None:
    source = make_predictions(tmp_path / "in", ames, rows=12, parts=2)
    dest = tmp_path / "datastore"

    done = run_step(
        "save_predictions.py",
        *("--input", source, "--destination", dest, "--pipeline-fingerprint", "fp1"),
        env={"PIPELINE_RUN_ID": "local_20260101T000000_abcdef"},
    )

    assert done.returncode == 0, done.stderr
    manifest = json.loads((dest / "latest_predictions/manifest.json").read_text())
    history = dest / manifest["history_folder"]
    assert history.parent.parent == dest / "history"
    assert history.name == "local_20260101T000000_abcdef"
    assert history.parent.name == manifest["created_at"][:10]
    assert (history / "predictions.csv").read_bytes() == (
        dest / "latest_predictions/predictions.csv"
    ).read_bytes()
    assert json.loads((history / "manifest.json").read_text()) == manifest
    written = pd.read_csv(dest / "latest_predictions/predictions.csv")
    assert len(written) == manifest["rows"] == 12
    assert manifest["columns"] == list(written.columns)
    assert (manifest["model_name"], manifest["model_version"]) == ("HousePrices", 3)
    assert (manifest["run_id"], manifest["pipeline_fingerprint"]) == ("local_20260101T000000_abcdef", "fp1")
    assert datetime.fromisoformat(manifest["created_at"]).utcoffset() == timedelta(0)
    assert sorted(p.name for p in (dest / "latest_predictions").iterdir()) == [
        "manifest.json",
        "predictions.csv",
    ]


def test_a_second_save_replaces_latest_and_keeps_both_history_copies(
    run_step, ames: pd.DataFrame, tmp_path: Path
) -> None:
    dest = tmp_path / "datastore"
    for run_id, rows in (("run_a", 4), ("run_b", 7)):
        source = make_predictions(tmp_path / run_id, ames, rows=rows)
        done = run_step(
            "save_predictions.py", "--input", source, "--destination", dest, env={"PIPELINE_RUN_ID": run_id}
        )
        assert done.returncode == 0, done.stderr

    manifest = json.loads((dest / "latest_predictions/manifest.json").read_text())
    assert (manifest["run_id"], manifest["rows"]) == ("run_b", 7)
    assert len(pd.read_csv(dest / "latest_predictions/predictions.csv")) == 7
    assert sorted(p.name for p in (dest / "history").glob("*/*")) == ["run_a", "run_b"]


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda src, dest, ames: [p.unlink() for p in src.glob("*.parquet")], "holds no .parquet file"),
        (lambda src, dest, ames: _replace_rows(src, ames.head(0)), "holds no rows"),
        (lambda src, dest, ames: _replace_rows(src, ames.head(3)), "no 'PredictedSalePrice' column"),
        (lambda src, dest, ames: (src / "part-00000.parquet").write_bytes(b"PAR1 truncated"), "cannot read"),
        (lambda src, dest, ames: _block_history(dest), "cannot write the predictions"),
    ],
    ids=["no-parts", "no-rows", "missing-column", "corrupt-part", "history-unwritable"],
)
def test_a_failing_save_leaves_the_previous_latest_files_byte_identical(
    run_step, ames: pd.DataFrame, tmp_path: Path, break_it, message: str
) -> None:
    dest = tmp_path / "datastore"
    first = make_predictions(tmp_path / "first", ames, rows=8, price=100.0)
    assert run_step("save_predictions.py", "--input", first, "--destination", dest).returncode == 0
    before = latest_bytes(dest)
    source = make_predictions(tmp_path / "second", ames, rows=9, price=200.0)
    break_it(source, dest, ames)

    done = run_step(
        "save_predictions.py", "--input", source, "--destination", dest, env={"PIPELINE_RUN_ID": "r2"}
    )

    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert latest_bytes(dest) == before
    assert sorted(p.name for p in (dest / "latest_predictions").iterdir()) == [
        "manifest.json",
        "predictions.csv",
    ]


def _replace_rows(source: Path, frame: pd.DataFrame) -> None:
    stepio.write_frame(source, frame.drop(columns=["SalePrice"]))


def _block_history(dest: Path) -> None:
    # The history copy is written first; when it cannot be, nothing of the latest files may change.
    shutil.rmtree(dest / "history")
    (dest / "history").write_text("a file where the history folder should be")


def test_save_step_to_default_datastore_outside_azure_ml_says_why(
    run_step, ames: pd.DataFrame, tmp_path: Path
) -> None:
    source = make_predictions(tmp_path / "in", ames, rows=3)

    done = run_step("save_predictions.py", "--input", source, "--destination", "default-datastore")

    assert done.returncode == 2
    assert "error: destination 'default-datastore' is only available inside an Azure ML run" in done.stderr


def test_save_step_help_runs_alone(run_step) -> None:
    done = run_step("save_predictions.py", "--help")

    assert done.returncode == 0
    assert "--destination" in done.stdout and "--pipeline-fingerprint" in done.stdout


# --- the step, blob storage (Azurite) --------------------------------------------------------------------


@pytest.fixture
def container(azurite):
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    client = service.get_container_client(f"predictions-{uuid.uuid4().hex[:12]}")
    yield client
    with contextlib.suppress(ResourceNotFoundError):
        client.delete_container()


def blob_bytes(container, name: str) -> bytes:
    return container.download_blob(name).readall()


def test_save_step_to_blob_writes_the_same_layout_under_the_prefix(
    run_step, azurite, container, ames: pd.DataFrame, tmp_path: Path
) -> None:
    source = make_predictions(tmp_path / "in", ames, rows=6)

    done = run_step(
        "save_predictions.py",
        *("--input", source, "--destination", f"blob://{container.container_name}/batch/houses"),
        *("--pipeline-fingerprint", "fp9"),
        env={"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string, "PIPELINE_RUN_ID": "run_blob"},
    )

    assert done.returncode == 0, done.stderr
    manifest = json.loads(blob_bytes(container, "batch/houses/latest_predictions/manifest.json"))
    history = f"batch/houses/{manifest['history_folder']}"
    assert sorted(b.name for b in container.list_blobs()) == sorted(
        [
            "batch/houses/latest_predictions/manifest.json",
            "batch/houses/latest_predictions/predictions.csv",
            f"{history}/manifest.json",
            f"{history}/predictions.csv",
        ]
    )
    assert (
        history.endswith("/run_blob") and manifest["rows"] == 6 and manifest["pipeline_fingerprint"] == "fp9"
    )
    latest_csv = blob_bytes(container, "batch/houses/latest_predictions/predictions.csv")
    assert latest_csv == blob_bytes(container, f"{history}/predictions.csv")
    assert latest_csv.decode().splitlines()[0].split(",") == manifest["columns"]
    properties = container.get_blob_client(
        "batch/houses/latest_predictions/predictions.csv"
    ).get_blob_properties()
    assert properties.content_settings.content_type == "text/csv"


def test_a_failing_blob_save_leaves_the_previous_latest_blobs_intact(
    run_step, azurite, container, ames: pd.DataFrame, tmp_path: Path
) -> None:
    env = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    destination = f"blob://{container.container_name}"
    first = make_predictions(tmp_path / "first", ames, rows=5, price=100.0)
    done = run_step("save_predictions.py", "--input", first, "--destination", destination, env=env)
    assert done.returncode == 0, done.stderr
    before = {name: blob_bytes(container, name) for name in LATEST_FILES}
    # Another writer holds a lease on the latest CSV: the upload of the new latest CSV fails half-way
    # through the save, after the history copy went up.
    lease = container.get_blob_client("latest_predictions/predictions.csv").acquire_lease()
    second = make_predictions(tmp_path / "second", ames, rows=9, price=200.0)

    try:
        done = run_step(
            "save_predictions.py",
            *("--input", second, "--destination", destination),
            env={**env, "PIPELINE_RUN_ID": "run_leased"},
        )
    finally:
        lease.release()

    assert done.returncode == 2
    assert "error: cannot upload the predictions" in done.stderr and "Traceback" not in done.stderr
    assert {name: blob_bytes(container, name) for name in LATEST_FILES} == before
    assert any(b.name.endswith("/run_leased/predictions.csv") for b in container.list_blobs())


def test_a_blob_save_with_bad_input_uploads_nothing(
    run_step, azurite, container, ames: pd.DataFrame, tmp_path: Path
) -> None:
    source = make_predictions(tmp_path / "in", ames, rows=0)

    done = run_step(
        "save_predictions.py",
        *("--input", source, "--destination", f"blob://{container.container_name}"),
        env={"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string},
    )

    assert done.returncode == 2 and "holds no rows" in done.stderr
    assert not container.exists() or list(container.list_blobs()) == []


def test_a_blob_destination_without_a_connection_string_says_which_variable_is_missing(
    run_step, ames: pd.DataFrame, tmp_path: Path
) -> None:
    source = make_predictions(tmp_path / "in", ames, rows=2)

    done = run_step(
        "save_predictions.py",
        *("--input", source, "--destination", "blob://predictions"),
        env={"AZURE_STORAGE_CONNECTION_STRING": None},
    )

    assert done.returncode == 2
    assert "needs the environment variable AZURE_STORAGE_CONNECTION_STRING" in done.stderr
