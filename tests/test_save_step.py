"""save_predictions: the layout and manifest it writes (`--input DIR --latest-dir DIR --history-dir DIR
--run-id ID [--pipeline-fingerprint FP]`, or `--destination ROOT`), the write order that keeps the latest
predictions whole, and that a failing save never loses or truncates them; in local folders, and through
aml_v1's upload to blob storage (Azurite) in the same order."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from tests.fixtures_local import load_step_module

publish = load_step_module("batchpred_steps.publish")
errors = load_step_module("batchpred_steps.errors")
handoff = load_step_module("batchpred_steps.handoff")
save_step = load_step_module("save_predictions")
partitioned = load_step_module("batchpred_steps.partitioned")

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
        handoff.write_frame(folder, frame.iloc[index * size : (index + 1) * size], index=index)
    metadata = {"dataset": "ames.csv.gz", "rows": rows, "fetched_rows": rows, "seed": 5, "sample_size": rows}
    metadata |= {"model_name": "HousePrices", "model_version": 3, "quality_reference": WIDE_REFERENCE}
    (folder / "_metadata.json").write_text(json.dumps(metadata))
    return folder


# A model reference whose plausible range holds the made-up prices (1 to 200) and which records no feature: the
# gate passes these tests' predictions (tests/test_quality_gate.py tests the gate itself).
WIDE_REFERENCE = {
    "target_min": 1.0,
    "target_max": 1000.0,
    "missing_share": {},
    "predictions": {"edges": [], "shares": [1.0], "rows": 1},
}


def latest_bytes(root: Path) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in LATEST_FILES}


# --- pure functions --------------------------------------------------------------------------------------


def test_run_folder_is_dated_in_utc_and_names_the_run() -> None:
    late_evening_in_new_york = datetime(2026, 3, 1, 22, 30, tzinfo=timezone(timedelta(hours=-5)))

    assert publish.run_folder("run_1", late_evening_in_new_york) == "2026-03-02/run_1"
    assert publish.run_folder("../../x", late_evening_in_new_york) == "2026-03-02/_.._x"
    assert publish.history_path("2026-03-02/run_1") == "history/2026-03-02/run_1"


def test_publish_plan_writes_history_first_and_the_latest_manifest_last(tmp_path: Path) -> None:
    csv_file, manifest = tmp_path / "p.csv", tmp_path / "m.json"
    folders = publish.Folders(tmp_path / "latest", tmp_path / "hist")

    plan = publish.publish_plan(folders, "2026-01-02/r1", csv_file, manifest)

    assert plan == [
        (tmp_path / "hist/2026-01-02/r1/predictions.csv", csv_file),
        (tmp_path / "hist/2026-01-02/r1/manifest.json", manifest),
        (tmp_path / "latest/predictions.csv", csv_file),
        (tmp_path / "latest/manifest.json", manifest),
    ]
    assert publish.Folders.under(tmp_path) == publish.Folders(
        tmp_path / "latest_predictions", tmp_path / "history"
    )


def test_publish_renames_each_staged_file_into_place_in_plan_order(tmp_path: Path) -> None:
    """What a reader of the folders sees after each rename: the history copy whole before the latest CSV
    changes, the new CSV before the new manifest; no partial file and no staged file left behind."""
    folders = publish.Folders(tmp_path / "latest", tmp_path / "history")
    folders.latest.mkdir()
    (folders.latest / "predictions.csv").write_text("old csv")
    (folders.latest / "manifest.json").write_text("old manifest")
    (tmp_path / "p.csv").write_text("new csv")
    (tmp_path / "m.json").write_text("new manifest")
    seen: list[dict[str, str]] = []

    def replace(temp: Path, target: Path) -> None:
        assert temp.parent == target.parent  # a rename within one folder: atomic
        os.replace(temp, target)
        # what a reader finds by name (the staged files are hidden, .<name>.<random>.tmp)
        published = [p for p in (*folders.latest.rglob("*"), *folders.history.rglob("*")) if p.is_file()]
        seen.append({str(p.relative_to(tmp_path)): p.read_text() for p in published if p.name[0] != "."})

    publish.publish(publish.publish_plan(folders, "d/r", tmp_path / "p.csv", tmp_path / "m.json"), replace)

    old = {"latest/manifest.json": "old manifest", "latest/predictions.csv": "old csv"}
    assert seen == [
        {**old, "history/d/r/predictions.csv": "new csv"},
        {**old, "history/d/r/manifest.json": "new manifest", "history/d/r/predictions.csv": "new csv"},
        {**old, "latest/predictions.csv": "new csv", "history/d/r/manifest.json": "new manifest",
         "history/d/r/predictions.csv": "new csv"},
        {"latest/predictions.csv": "new csv", "latest/manifest.json": "new manifest",
         "history/d/r/manifest.json": "new manifest", "history/d/r/predictions.csv": "new csv"},
    ]  # fmt: skip
    assert not [p for p in tmp_path.rglob(".*.tmp")]


def test_build_manifest_names_rows_model_run_fingerprint_time_and_columns() -> None:
    now = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)

    manifest = publish.build_manifest(
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

    rows, columns = publish.write_predictions_csv(source, tmp_path / "p.csv", "PredictedSalePrice")

    written = pd.read_csv(tmp_path / "p.csv")
    assert rows == 25 and len(written) == 25
    assert columns == list(written.columns) and columns[-1] == "PredictedSalePrice"
    assert written["PID"].tolist() == ames.head(25)["PID"].tolist()


def test_write_predictions_csv_refuses_an_input_without_the_prediction_column(
    ames: pd.DataFrame, tmp_path: Path
) -> None:
    handoff.write_frame(tmp_path / "in", ames.head(5))

    with pytest.raises(errors.StepError, match="no 'PredictedSalePrice' column"):
        publish.write_predictions_csv(tmp_path / "in", tmp_path / "p.csv", "PredictedSalePrice")


def test_write_predictions_csv_refuses_an_input_without_rows(ames: pd.DataFrame, tmp_path: Path) -> None:
    source = make_predictions(tmp_path / "in", ames, rows=0)

    with pytest.raises(errors.StepError, match="holds no rows"):
        publish.write_predictions_csv(source, tmp_path / "p.csv", "PredictedSalePrice")


# --- the step, local folders -----------------------------------------------------------------------------


def test_save_step_writes_latest_and_a_dated_history_copy_with_manifests(
    run_step, ames: pd.DataFrame, tmp_path: Path
) -> None:
    source = make_predictions(tmp_path / "in", ames, rows=12, parts=2)
    latest, history_root = tmp_path / "mnt" / "latest", tmp_path / "mnt2" / "history"

    done = run_step(
        "save_predictions.py",
        *("--input", source, "--latest-dir", latest, "--history-dir", history_root),
        *("--run-id", "local_20260101T000000_abcdef", "--pipeline-fingerprint", "fp1"),
    )

    assert done.returncode == 0, done.stderr
    manifest = json.loads((latest / "manifest.json").read_text())
    assert manifest["history_folder"] == f"history/{manifest['created_at'][:10]}/local_20260101T000000_abcdef"
    history = history_root / manifest["created_at"][:10] / "local_20260101T000000_abcdef"
    assert (history / "predictions.csv").read_bytes() == (latest / "predictions.csv").read_bytes()
    assert json.loads((history / "manifest.json").read_text()) == manifest
    written = pd.read_csv(latest / "predictions.csv")
    assert len(written) == manifest["rows"] == 12
    assert manifest["columns"] == list(written.columns)
    assert (manifest["model_name"], manifest["model_version"]) == ("HousePrices", 3)
    assert (manifest["run_id"], manifest["pipeline_fingerprint"]) == ("local_20260101T000000_abcdef", "fp1")
    assert datetime.fromisoformat(manifest["created_at"]).utcoffset() == timedelta(0)
    assert sorted(p.name for p in latest.iterdir()) == ["manifest.json", "predictions.csv"]


def test_a_second_save_replaces_latest_and_keeps_both_history_copies(
    run_step, ames: pd.DataFrame, tmp_path: Path
) -> None:
    dest = tmp_path / "datastore"
    for run_id, rows in (("run_a", 4), ("run_b", 7)):
        source = make_predictions(tmp_path / run_id, ames, rows=rows)
        done = run_step("save_predictions.py", "--input", source, "--destination", dest, "--run-id", run_id)
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
    assert (
        run_step("save_predictions.py", "--input", first, "--destination", dest, "--run-id", "r1").returncode
        == 0
    )
    before = latest_bytes(dest)
    source = make_predictions(tmp_path / "second", ames, rows=9, price=200.0)
    break_it(source, dest, ames)

    done = run_step("save_predictions.py", "--input", source, "--destination", dest, "--run-id", "r2")

    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert latest_bytes(dest) == before
    assert sorted(p.name for p in (dest / "latest_predictions").iterdir()) == [
        "manifest.json",
        "predictions.csv",
    ]


def _replace_rows(source: Path, frame: pd.DataFrame) -> None:
    handoff.write_frame(source, frame.drop(columns=["SalePrice"]))


def _block_history(dest: Path) -> None:
    # The history copy is written first; when it cannot be, nothing of the latest files may change.
    shutil.rmtree(dest / "history")
    (dest / "history").write_text("a file where the history folder should be")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--latest-dir", "l"], "give --latest-dir and --history-dir"),
        (["--destination", "d", "--latest-dir", "l"], "not both"),
    ],
)
def test_save_step_needs_both_folders_or_a_destination(run_step, tmp_path: Path, arguments, message) -> None:
    done = run_step("save_predictions.py", "--input", tmp_path, "--run-id", "r", *arguments)

    assert done.returncode == 2 and message in done.stderr


def test_save_step_help_runs_alone(run_step) -> None:
    done = run_step("save_predictions.py", "--help")

    assert done.returncode == 0
    for option in ("--latest-dir", "--history-dir", "--run-id", "--destination", "--pipeline-fingerprint"):
        assert option in done.stdout


# --- aml_v1's upload to blob storage (Azurite), in the same order ----------------------------------------


aml_v1 = load_step_module("aml_v1")


@pytest.fixture
def container(azurite):
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    client = service.get_container_client(f"predictions-{uuid.uuid4().hex[:12]}")
    client.create_container()
    yield client
    with contextlib.suppress(ResourceNotFoundError):
        client.delete_container()


def blob_bytes(container, name: str) -> bytes:
    return container.download_blob(name).readall()


def staged_save(source: Path, folder: Path, run_id: str, fingerprint: str | None = None):
    """What aml_v1 does before uploading: the step's own save into local staging folders."""
    staged = publish.Folders(folder / "latest", folder / "history")
    save_step.save(source, staged, run_id, fingerprint)
    return staged


def test_the_upload_plan_puts_history_first_and_the_latest_manifest_last(
    ames: pd.DataFrame, tmp_path: Path
) -> None:
    staged = staged_save(make_predictions(tmp_path / "in", ames, rows=3), tmp_path / "s", "r1")
    day = next((tmp_path / "s" / "history").iterdir()).name

    plan = aml_v1.upload_plan(staged, "latest_predictions", "history")

    assert [name for name, _ in plan] == [
        f"history/{day}/r1/distribution.svg",  # the quality gate's picture and report, beside the copy
        f"history/{day}/r1/predictions.csv",
        f"history/{day}/r1/quality.json",
        f"history/{day}/r1/manifest.json",  # every manifest after the files it names
        "latest_predictions/predictions.csv",
        "latest_predictions/manifest.json",
    ]
    assert (
        aml_v1.datastore_path("default-datastore:latest_predictions/", "--latest-dir") == "latest_predictions"
    )
    with pytest.raises(errors.StepError, match="--history-dir on Azure ML v1 is default-datastore:<path>"):
        aml_v1.datastore_path("/mnt/history", "--history-dir")


def test_the_upload_writes_the_same_layout_as_the_local_step_under_a_prefix(
    container, ames: pd.DataFrame, tmp_path: Path
) -> None:
    staged = staged_save(make_predictions(tmp_path / "in", ames, rows=6), tmp_path / "s", "run_blob", "fp9")

    aml_v1.upload_in_order(
        aml_v1.BlobFolder(container, "batch/houses"),
        aml_v1.upload_plan(staged, "latest_predictions", "history"),
    )

    manifest = json.loads(blob_bytes(container, "batch/houses/latest_predictions/manifest.json"))
    history = f"batch/houses/{manifest['history_folder']}"
    assert sorted(b.name for b in container.list_blobs()) == sorted(
        [
            "batch/houses/latest_predictions/manifest.json",
            "batch/houses/latest_predictions/predictions.csv",
            f"{history}/manifest.json",
            f"{history}/predictions.csv",
            f"{history}/quality.json",
            f"{history}/distribution.svg",
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
    picture = container.get_blob_client(f"{history}/distribution.svg").get_blob_properties()
    assert picture.content_settings.content_type == "image/svg+xml"  # opens as a picture in a browser


def test_a_failing_upload_leaves_the_previous_latest_blobs_intact(
    container, ames: pd.DataFrame, tmp_path: Path
) -> None:
    from azure.core.exceptions import HttpResponseError

    destination = aml_v1.BlobFolder(container)
    first = staged_save(make_predictions(tmp_path / "first", ames, rows=5, price=100.0), tmp_path / "a", "r1")
    aml_v1.upload_in_order(destination, aml_v1.upload_plan(first, "latest_predictions", "history"))
    before = {name: blob_bytes(container, name) for name in LATEST_FILES}
    # Another writer holds a lease on the latest CSV: the upload of the new latest CSV fails half-way
    # through, after the history copy went up.
    lease = container.get_blob_client("latest_predictions/predictions.csv").acquire_lease()
    second = staged_save(
        make_predictions(tmp_path / "second", ames, rows=9, price=200.0), tmp_path / "b", "r2"
    )

    try:
        with pytest.raises(HttpResponseError):
            aml_v1.upload_in_order(destination, aml_v1.upload_plan(second, "latest_predictions", "history"))
    finally:
        lease.release()

    assert {name: blob_bytes(container, name) for name in LATEST_FILES} == before
    assert any(b.name.endswith("/r2/manifest.json") for b in container.list_blobs())


def test_aml_v1_outside_an_azure_ml_run_says_so_in_one_line(
    run_step, ames: pd.DataFrame, tmp_path: Path
) -> None:
    source = make_predictions(tmp_path / "in", ames, rows=3)

    done = run_step(
        "aml_v1.py", "save_predictions", "--input", source, "--latest-dir", "default-datastore:latest_predictions",
        "--history-dir", "default-datastore:history", "--run-id", "run-context:parent",
        env={"AZUREML_RUN_ID": None},
    )  # fmt: skip

    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        "error: aml_v1.py runs only inside an Azure ML step run (no run context found)"
    )


# --- large runs: Parquet parts under a fresh folder, the manifest naming every file, written last ---------


def save_in_process(source: Path, dest: Path, run_id: str, csv_max_rows: int, minute: int = 0) -> dict:
    now = datetime(2026, 3, 1, 12, minute, tzinfo=UTC)
    return save_step.save(
        source, publish.Folders.under(dest), run_id, "fp", now=now, csv_max_rows=csv_max_rows
    )


def test_a_run_above_the_csv_limit_publishes_parts_named_with_their_rows_and_no_csv(
    ames: pd.DataFrame, tmp_path: Path
) -> None:
    source = make_predictions(tmp_path / "in", ames, rows=50, parts=3)
    dest = tmp_path / "datastore"

    manifest = save_in_process(source, dest, "big_run", csv_max_rows=49)

    latest = dest / "latest_predictions"
    assert manifest == json.loads((latest / "manifest.json").read_text())
    assert (manifest["format"], manifest["predictions_file"], manifest["rows"]) == ("parquet", None, 50)
    folder = "parts/20260301T120000000000Z-big_run"
    assert manifest["files"] == [
        {"path": f"{folder}/part-00000.parquet", "rows": 17},
        {"path": f"{folder}/part-00001.parquet", "rows": 17},
        {"path": f"{folder}/part-00002.parquet", "rows": 16},
    ]
    assert not (latest / "predictions.csv").exists()
    published = pd.concat([pd.read_parquet(latest / f["path"]) for f in manifest["files"]], ignore_index=True)
    expected = pd.concat([pd.read_parquet(p) for p in sorted(source.glob("*.parquet"))], ignore_index=True)
    pd.testing.assert_frame_equal(published, expected)
    history = dest / manifest["history_folder"]
    assert json.loads((history / "manifest.json").read_text()) == manifest
    assert all(
        (history / f["path"]).read_bytes() == (latest / f["path"]).read_bytes() for f in manifest["files"]
    )


def test_each_run_switches_the_latest_set_and_removes_what_it_superseded(
    ames: pd.DataFrame, tmp_path: Path
) -> None:
    dest = tmp_path / "datastore"
    latest = dest / "latest_predictions"
    small = make_predictions(tmp_path / "small", ames, rows=5)
    big = make_predictions(tmp_path / "big", ames, rows=40, parts=2)

    def parts() -> list[str]:
        return sorted(p.name for p in (latest / "parts").iterdir()) if (latest / "parts").exists() else []

    save_in_process(small, dest, "r1", csv_max_rows=10, minute=1)
    first = save_in_process(big, dest, "r2", csv_max_rows=10, minute=2)
    assert sorted(p.name for p in latest.iterdir()) == ["manifest.json", "parts"]  # r1's CSV removed at once
    second = save_in_process(big, dest, "r3", csv_max_rows=10, minute=3)
    # r2's parts stay one run for the readers of r2's manifest
    assert parts() == ["20260301T120200000000Z-r2", "20260301T120300000000Z-r3"]
    assert first["files"] != second["files"]
    assert all((latest / f["path"]).is_file() for f in first["files"])
    third = save_in_process(small, dest, "r4", csv_max_rows=10, minute=4)

    assert sorted(p.name for p in latest.iterdir()) == ["manifest.json", "parts", "predictions.csv"]
    assert parts() == ["20260301T120300000000Z-r3"]  # r2's gone now; r3's (the previous) kept one run
    assert third["files"] == [{"path": "predictions.csv", "rows": 5}] and third["format"] == "csv"
    save_in_process(small, dest, "r5", csv_max_rows=10, minute=5)
    assert sorted(p.name for p in latest.iterdir()) == ["manifest.json", "predictions.csv"]
    assert sorted(p.name for p in (dest / "history" / "2026-03-01").iterdir()) == [
        "r1",
        "r2",
        "r3",
        "r4",
        "r5",
    ]


def test_a_retried_run_writes_its_parts_beside_the_set_readers_use(
    ames: pd.DataFrame, tmp_path: Path
) -> None:
    dest = tmp_path / "datastore"
    big = make_predictions(tmp_path / "big", ames, rows=40, parts=2)
    first = save_in_process(big, dest, "r1", csv_max_rows=10)

    again = save_in_process(big, dest, "r1", csv_max_rows=10)  # the same run id at the same time

    assert {Path(f["path"]).parent.name for f in again["files"]} == {"20260301T120000000000Z-r1-2"}
    assert sorted(p.name for p in (dest / "latest_predictions" / "parts").iterdir()) == [
        "20260301T120000000000Z-r1",  # the first try's set, which readers used: kept one run
        "20260301T120000000000Z-r1-2",
    ]
    assert first["rows"] == again["rows"] == 40


def test_a_failure_while_writing_the_new_parts_leaves_the_previous_latest_whole(
    ames: pd.DataFrame, tmp_path: Path
) -> None:
    dest = tmp_path / "datastore"
    latest = dest / "latest_predictions"
    save_in_process(make_predictions(tmp_path / "first", ames, rows=30, parts=2), dest, "r1", csv_max_rows=10)
    # The new set's folder cannot be made (a file stands there): the write fails after the history copy.
    (latest / "parts" / "blocked").write_text("in the way")
    before = {p.relative_to(latest): p.read_bytes() for p in latest.rglob("*") if p.is_file()}
    second = make_predictions(tmp_path / "second", ames, rows=40, parts=2, price=2.0)
    parts, columns = partitioned.input_parts(second, "PredictedSalePrice")
    facts = {"rows": 40, "columns": columns, "run_id": "r2", "fingerprint": None, "input_metadata": {},
             "now": datetime.now(UTC), "history": "history/2026-03-01/r2"}  # fmt: skip

    passed = save_step.Gated(passed=True, fields={}, report=[])

    with pytest.raises(OSError):
        save_step.save_parts(
            parts, publish.Folders.under(dest), "2026-03-01/r2", "parts/blocked", facts, passed
        )

    assert {p.relative_to(latest): p.read_bytes() for p in latest.rglob("*") if p.is_file()} == before
    assert json.loads((latest / "manifest.json").read_text())["run_id"] == "r1"
    assert (dest / "history" / "2026-03-01" / "r2" / "manifest.json").is_file()  # the history copy went first
    save_in_process(
        make_predictions(tmp_path / "third", ames, rows=20), dest, "r3", csv_max_rows=10, minute=5
    )
    # leftovers removed; r1's set (the manifest r3 replaced: r2 never published one) kept one run
    assert sorted(p.name for p in (latest / "parts").iterdir()) == [
        "20260301T120000000000Z-r1",
        "20260301T120500000000Z-r3",
    ]


def test_the_save_step_streams_a_large_input_into_parts_within_bounded_memory(
    run_step, ames: pd.DataFrame, tmp_path: Path
) -> None:
    source = make_predictions(tmp_path / "in", ames, rows=2930, parts=4)

    done = run_step(
        "save_predictions.py", "--input", source, "--destination", tmp_path / "d", "--run-id", "r",
        "--csv-max-rows", "1000",
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "d" / "latest_predictions" / "manifest.json").read_text())
    assert sum(f["rows"] for f in manifest["files"]) == 2930 and len(manifest["files"]) == 4
    assert "as parquet" in done.stderr


def test_the_upload_plan_of_a_parts_run_and_the_blobs_it_supersedes(
    ames: pd.DataFrame, tmp_path: Path
) -> None:
    staged = publish.Folders(tmp_path / "s" / "latest", tmp_path / "s" / "history")
    manifest = save_step.save(
        make_predictions(tmp_path / "in", ames, rows=30, parts=2), staged, "r9", csv_max_rows=10,
        now=datetime(2026, 3, 1, tzinfo=UTC),
    )  # fmt: skip
    folder = "parts/20260301T000000000000Z-r9"

    plan = [name for name, _ in aml_v1.upload_plan(staged, "latest_predictions", "history")]

    assert plan == [
        "history/2026-03-01/r9/distribution.svg",
        f"history/2026-03-01/r9/{folder}/part-00000.parquet",
        f"history/2026-03-01/r9/{folder}/part-00001.parquet",
        "history/2026-03-01/r9/quality.json",
        "history/2026-03-01/r9/manifest.json",
        f"latest_predictions/{folder}/part-00000.parquet",
        f"latest_predictions/{folder}/part-00001.parquet",
        "latest_predictions/manifest.json",
    ]
    existing = [
        "latest_predictions/manifest.json",
        "latest_predictions/predictions.csv",
        "latest_predictions/parts/20260101T000000000000Z-r1/part-00000.parquet",
        f"latest_predictions/{folder}/part-00000.parquet",
        f"latest_predictions/{folder}/part-00001.parquet",
    ]
    assert aml_v1.superseded_blobs(existing, "latest_predictions", manifest) == [
        "latest_predictions/parts/20260101T000000000000Z-r1/part-00000.parquet",
        "latest_predictions/predictions.csv",
    ]
    # the set the previous manifest named stays one run; a CSV goes at once whatever the previous said
    previous = {"files": [{"path": "parts/20260101T000000000000Z-r1/part-00000.parquet", "rows": 3}]}
    assert aml_v1.superseded_blobs(existing, "latest_predictions", manifest, previous) == [
        "latest_predictions/predictions.csv",
    ]
    csv_before = {"files": [{"path": "predictions.csv", "rows": 3}], "predictions_file": "predictions.csv"}
    assert aml_v1.superseded_blobs(existing, "latest_predictions", manifest, csv_before) == [
        "latest_predictions/parts/20260101T000000000000Z-r1/part-00000.parquet",
        "latest_predictions/predictions.csv",
    ]


def test_a_parts_run_uploaded_after_a_csv_run_leaves_only_its_own_set(
    container, ames: pd.DataFrame, tmp_path: Path
) -> None:
    destination = aml_v1.BlobFolder(container, "root")
    first = staged_save(make_predictions(tmp_path / "first", ames, rows=5), tmp_path / "a", "r1")
    aml_v1.upload_in_order(destination, aml_v1.upload_plan(first, "latest_predictions", "history"))
    second = publish.Folders(tmp_path / "b" / "latest", tmp_path / "b" / "history")
    manifest = save_step.save(
        make_predictions(tmp_path / "in", ames, rows=30, parts=2), second, "r2", csv_max_rows=10
    )

    aml_v1.upload_in_order(destination, aml_v1.upload_plan(second, "latest_predictions", "history"))
    for name in aml_v1.superseded_blobs(
        destination.names("latest_predictions/"), "latest_predictions", manifest
    ):
        destination.delete(name)

    latest = sorted(destination.names("latest_predictions/"))
    assert latest == sorted(
        ["latest_predictions/manifest.json", *(f"latest_predictions/{f['path']}" for f in manifest["files"])]
    )
    assert json.loads(blob_bytes(container, "root/latest_predictions/manifest.json")) == manifest
