"""bench/bigdata.py, the generator of large Ames-like tables: deterministic for a seed, unique ids, block by
block (the first N rows of a larger table are the table of N rows), the shipped data's columns and types, and a
file fetch_data and the model take as they take the shipped data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tests.fixtures_local import load_bench_module

bigdata = load_bench_module("bigdata")


BLOCK = 1_000  # rows a block: several blocks in a small table


def write(rows: int, out: Path, seed: int = 0) -> Path:
    return bigdata.write(rows, out, seed, block_rows=BLOCK)


def test_the_same_seed_gives_the_same_table_and_another_seed_another(tmp_path: Path) -> None:
    first = pd.read_parquet(write(3_500, tmp_path / "a.parquet", seed=1))
    again = pd.read_parquet(write(3_500, tmp_path / "b.parquet", seed=1))
    other = pd.read_parquet(write(3_500, tmp_path / "c.parquet", seed=2))

    pd.testing.assert_frame_equal(first, again)
    assert not first["GrLivArea"].equals(other["GrLivArea"])
    assert first["Order"].tolist() == list(range(1, 3_501))
    assert first["PID"].is_unique and first["Order"].is_unique


def test_rows_are_shipped_rows_with_jitter_on_continuous_columns_only(ames_csv: Path, tmp_path: Path) -> None:
    source = pd.read_csv(ames_csv)
    rows = pd.read_parquet(write(2_500, tmp_path / "t.parquet"))

    assert list(rows.columns) == list(source.columns)
    assert dict(rows.dtypes.astype(str)) == dict(source.dtypes.astype(str))
    jittered = bigdata.continuous_columns(source)
    assert {"GrLivArea", "LotArea", "SalePrice"} <= set(jittered)
    assert not {"OverallQual", "YearBuilt", "Order", "PID"} & set(jittered)
    for column in ("Neighborhood", "OverallQual", "YearBuilt"):
        assert set(rows[column].dropna()) <= set(source[column].dropna())
    assert not set(rows["GrLivArea"]) <= set(source["GrLivArea"])
    assert (rows["GrLivArea"] >= 0).all()
    assert abs(rows["SalePrice"].mean() / source["SalePrice"].mean() - 1) < 0.1


def test_the_first_rows_of_a_larger_table_are_the_smaller_table(tmp_path: Path) -> None:
    smaller = pd.read_parquet(write(2_000, tmp_path / "s.parquet"))
    larger = pd.read_parquet(write(4_321, tmp_path / "l.parquet"))

    pd.testing.assert_frame_equal(larger.head(2_000), smaller)


def test_a_csv_gz_table_reads_back_as_the_parquet_one(tmp_path: Path) -> None:
    parquet = pd.read_parquet(write(1_500, tmp_path / "t.parquet"))
    csv = pd.read_csv(write(1_500, tmp_path / "t.csv.gz"))

    pd.testing.assert_frame_equal(csv, parquet, check_dtype=False)
