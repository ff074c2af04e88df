"""fetch_data: sampling the new rows (batchpred_steps.fetch, pure functions) and the step as a process with
its command line (`--dataset PATH --sample-size N [--seed S] --output DIR`), on the shipped Ames data."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from tests.fixtures_local import load_step_module, read_parts

fetch_data = load_step_module("batchpred_steps.fetch")
errors = load_step_module("batchpred_steps.errors")


@pytest.fixture(scope="module")
def ames(ames_csv: Path) -> pd.DataFrame:
    return pd.read_csv(ames_csv)


def test_sample_rows_draws_the_asked_number_reproducibly_for_a_seed(ames: pd.DataFrame) -> None:
    first = fetch_data.sample_rows(ames, 25, seed=7)
    again = fetch_data.sample_rows(ames, 25, seed=7)
    other = fetch_data.sample_rows(ames, 25, seed=8)

    assert len(first) == 25
    assert first["Order"].is_unique
    assert first["Order"].tolist() == again["Order"].tolist()
    assert first["Order"].tolist() != other["Order"].tolist()
    assert list(first.index) == list(range(25))


@pytest.mark.parametrize("size", [0, 2930, 5000])
def test_sample_rows_zero_or_more_than_the_data_takes_every_row_in_order(
    ames: pd.DataFrame, size: int
) -> None:
    rows = fetch_data.sample_rows(ames, size, seed=1)

    assert rows["Order"].tolist() == ames["Order"].tolist()


def test_sample_rows_refuses_a_negative_size(ames: pd.DataFrame) -> None:
    with pytest.raises(errors.StepError, match="sample size"):
        fetch_data.sample_rows(ames, -1, seed=1)


def test_drop_target_removes_sale_price_only_when_present(ames: pd.DataFrame) -> None:
    without = fetch_data.drop_target(ames)

    assert "SalePrice" not in without.columns
    assert list(without.columns) == [c for c in ames.columns if c != "SalePrice"]
    assert list(fetch_data.drop_target(without).columns) == list(without.columns)


def test_read_table_reads_csv_gzip_csv_and_parquet_alike(ames: pd.DataFrame, tmp_path: Path) -> None:
    head = ames.head(50)
    head.to_csv(tmp_path / "a.csv", index=False)
    head.to_csv(tmp_path / "a.csv.gz", index=False)
    head.to_parquet(tmp_path / "a.parquet", index=False)

    for name in ("a.csv", "a.csv.gz", "a.parquet"):
        frame = fetch_data.read_table(tmp_path / name)
        assert frame["PID"].tolist() == head["PID"].tolist(), name
        assert list(frame.columns) == list(ames.columns), name


def test_a_dataset_folder_is_read_through_its_data_files(tmp_path: Path) -> None:
    # what Azure ML v2 materialises for some inputs: the data file beside notes such as an MLTable file
    (tmp_path / "one" / "nested").mkdir(parents=True)
    (tmp_path / "one" / "MLTable").write_text("paths: []\n")
    (tmp_path / "one" / ".hidden.csv").write_text("x\n1\n")
    (tmp_path / "one" / "nested" / "ames.csv").write_text("Order,PID\n1,2\n")
    (tmp_path / "none").mkdir()
    (tmp_path / "two").mkdir()
    for name in ("a.csv", "b.parquet"):
        (tmp_path / "two" / name).write_bytes(b"")

    assert fetch_data.data_files(tmp_path / "one") == [tmp_path / "one" / "nested" / "ames.csv"]
    assert fetch_data.read_table(tmp_path / "one")["PID"].tolist() == [2]
    with pytest.raises(errors.StepError, match="holds no data file"):
        fetch_data.data_files(tmp_path / "none")
    with pytest.raises(errors.StepError, match=r"holds both Parquet \(b.parquet\) and CSV \(a.csv\) files"):
        fetch_data.data_files(tmp_path / "two")


def test_fetch_step_writes_the_sample_without_the_target_and_its_metadata(
    run_step, ames_csv: Path, ames: pd.DataFrame, tmp_path: Path
) -> None:
    out = tmp_path / "out"

    done = run_step("fetch_data.py", "--dataset", ames_csv, "--sample-size", 10, "--seed", 3, "--output", out)

    assert done.returncode == 0, done.stderr
    rows = read_parts(out)
    assert len(rows) == 10
    assert "SalePrice" not in rows.columns
    assert set(rows["PID"]) <= set(ames["PID"])
    assert json.loads((out / "_metadata.json").read_text()) == {
        "dataset": str(ames_csv),
        "dataset_version": None,
        "dataset_rows": 2930,
        "rows": 10,
        "fetched_rows": 10,
        "sample_size": 10,
        "seed": 3,
    }


def test_fetch_step_without_a_seed_records_the_one_it_drew_so_the_sample_can_be_redrawn(
    run_step, ames_csv: Path, tmp_path: Path
) -> None:
    first = run_step("fetch_data.py", "--dataset", ames_csv, "--sample-size", 5, "--output", tmp_path / "a")
    assert first.returncode == 0, first.stderr
    seed = json.loads((tmp_path / "a" / "_metadata.json").read_text())["seed"]
    again = run_step(
        "fetch_data.py", "--dataset", ames_csv, "--sample-size", 5, "--seed", seed, "--output", tmp_path / "b"
    )

    assert again.returncode == 0, again.stderr
    assert isinstance(seed, int)
    assert read_parts(tmp_path / "a")["Order"].tolist() == read_parts(tmp_path / "b")["Order"].tolist()


def test_fetch_step_with_a_size_above_the_data_takes_every_row_and_says_so(
    run_step, ames_csv: Path, tmp_path: Path
) -> None:
    done = run_step(
        "fetch_data.py", "--dataset", ames_csv, "--sample-size", 99999, "--output", tmp_path / "o"
    )

    assert done.returncode == 0, done.stderr
    assert len(read_parts(tmp_path / "o")) == 2930
    assert "larger than the dataset (2930 rows): taking every row" in done.stderr


def test_fetch_step_reads_a_parquet_dataset(run_step, ames: pd.DataFrame, tmp_path: Path) -> None:
    ames.to_parquet(tmp_path / "ames.parquet", index=False)

    done = run_step(
        "fetch_data.py",
        "--dataset",
        tmp_path / "ames.parquet",
        "--sample-size",
        0,
        "--output",
        tmp_path / "o",
    )

    assert done.returncode == 0, done.stderr
    assert read_parts(tmp_path / "o")["Order"].tolist() == ames["Order"].tolist()


def test_fetch_step_takes_a_folder_holding_one_data_file(run_step, ames_csv: Path, tmp_path: Path) -> None:
    folder = tmp_path / "materialised"
    folder.mkdir()
    (folder / ames_csv.name).write_bytes(ames_csv.read_bytes())

    done = run_step(
        "fetch_data.py", "--dataset", folder, "--sample-size", 4, "--seed", 1, "--output", tmp_path / "o"
    )

    assert done.returncode == 0, done.stderr
    assert len(read_parts(tmp_path / "o")) == 4
    assert json.loads((tmp_path / "o" / "_metadata.json").read_text())["dataset"] == str(folder)


def test_pandas_reads_the_columns_dataprep_inference_gets_wrong(
    run_step, ames_csv: Path, tmp_path: Path
) -> None:
    # docs/steps-and-model.md: dataprep reads PoolArea as a boolean and CentralAir (Y/N) as one; pandas does not
    done = run_step("fetch_data.py", "--dataset", ames_csv, "--sample-size", 0, "--output", tmp_path / "o")

    assert done.returncode == 0, done.stderr
    rows = read_parts(tmp_path / "o")
    assert rows["PoolArea"].dtype.kind == "i" and rows["PoolArea"].max() > 1
    assert set(rows["CentralAir"]) == {"Y", "N"}


def _write_garbage_gzip(path: Path) -> Path:
    path.write_bytes(gzip.compress(b"Order,PID\n1,2\n")[:12] + b"\x00garbage")
    return path


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("make_dataset", "message"),
    [
        (lambda d: d / "nowhere" / "ames.csv", "does not exist"),
        (lambda d: _write_garbage_gzip(d / "broken.csv.gz"), "cannot read dataset file"),
        (lambda d: _write(d / "empty.csv", b""), "is empty"),
        (lambda d: _write(d / "header.csv", b"Order,PID,SalePrice\n"), "holds no rows"),
        (lambda d: _write(d / "x.parquet", b"PAR1 not really"), "cannot read dataset"),
        (lambda d: "AmesHousing", "dataset 'AmesHousing' does not exist"),
    ],
    ids=["missing-path", "corrupt-gzip", "empty-file", "no-rows", "corrupt-parquet", "a-name-is-no-path"],
)
def test_fetch_step_reports_a_bad_dataset_in_one_line_and_exits_2(
    run_step, tmp_path: Path, make_dataset, message: str
) -> None:
    out = tmp_path / "out"

    done = run_step("fetch_data.py", "--dataset", make_dataset(tmp_path), "--sample-size", 5, "--output", out)

    assert done.returncode == 2
    error_lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and message in error_lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()


def test_fetch_step_refuses_a_negative_sample_size(run_step, ames_csv: Path, tmp_path: Path) -> None:
    done = run_step("fetch_data.py", "--dataset", ames_csv, "--sample-size", -3, "--output", tmp_path / "o")

    assert done.returncode == 2
    assert "error: --sample-size must be 0 (every row) or more, not -3" in done.stderr
    assert not (tmp_path / "o").exists()


def test_fetch_step_help_runs_alone(run_step) -> None:
    done = run_step("fetch_data.py", "--help")

    assert done.returncode == 0
    assert "--sample-size" in done.stdout and "--dataset" in done.stdout


def test_fetch_step_records_the_registered_name_and_version_it_was_given(run_step, ames_csv, tmp_path):
    """On Azure ML the step sees only a path: the name and version the platform resolved reach the manifest
    through these two plain values."""
    out = tmp_path / "out"
    done = run_step(
        "fetch_data.py",
        "--dataset", str(ames_csv), "--dataset-name", "AmesHousingCsv", "--dataset-version", "7",
        "--sample-size", "3", "--seed", "1", "--output", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    metadata = json.loads((out / "_metadata.json").read_text())
    assert (metadata["dataset"], metadata["dataset_version"]) == ("AmesHousingCsv", "7")
