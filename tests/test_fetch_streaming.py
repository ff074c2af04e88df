"""fetch_data at scale: the sample drawn block by block over row positions (exact size, reproducible for a
seed, the same whatever the reader's chunks), the dataset read in chunks with one schema, and the rows
written as Parquet parts of about a target size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.fixtures_local import load_step_module, read_parts

fetch = load_step_module("batchpred_steps.fetch")


@pytest.fixture(scope="module")
def ames(ames_csv: Path) -> pd.DataFrame:
    return pd.read_csv(ames_csv)


@pytest.fixture(scope="module")
def larger(ames: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The Ames rows seven times over (20,510 rows, unique Order), as CSV.gz and as Parquet."""
    folder = tmp_path_factory.mktemp("larger")
    frame = pd.concat([ames] * 7, ignore_index=True)
    frame["Order"] = np.arange(1, len(frame) + 1)
    frame.to_csv(folder / "larger.csv.gz", index=False)
    frame.to_parquet(folder / "larger.parquet", index=False, row_group_size=3_000)
    return {"csv": folder / "larger.csv.gz", "parquet": folder / "larger.parquet"}


@pytest.mark.parametrize(("total", "size"), [(10, 3), (70_000, 1), (200_000, 12_345), (200_000, 199_999)])
def test_sample_positions_are_exactly_the_asked_number_of_distinct_rows_in_order(
    total: int, size: int
) -> None:
    blocks = list(fetch.sample_positions(total, size, seed=11))
    positions = np.concatenate(blocks)

    assert len(positions) == size
    assert (np.diff(positions) > 0).all()
    assert positions[0] >= 0 and positions[-1] < total
    assert all(len(block) <= fetch.SAMPLE_BLOCK_ROWS for block in blocks)
    again = np.concatenate(list(fetch.sample_positions(total, size, seed=11)))
    other = np.concatenate(list(fetch.sample_positions(total, size, seed=12)))
    assert positions.tolist() == again.tolist()
    assert positions.tolist() != other.tolist()


def test_sample_positions_spread_over_every_block_as_a_uniform_draw_would() -> None:
    # 1,000 of 655,360 rows over 10 blocks: each block's count is hypergeometric(65,536; 589,824; 1,000),
    # mean 100 and sd ~9.0; over 20 seeds every block stays within 5 sd of its mean.
    counts = np.array(
        [[len(block) for block in fetch.sample_positions(655_360, 1_000, seed)] for seed in range(20)]
    )
    assert counts.shape == (20, 10)
    assert (counts.sum(axis=1) == 1_000).all()
    assert np.abs(counts - 100).max() < 45
    assert abs(counts.mean() - 100) < 3


@pytest.mark.parametrize("size", [0, 20_510, 99_999])
def test_a_sample_of_zero_or_at_least_every_row_takes_every_row_in_order(size: int) -> None:
    assert np.concatenate(list(fetch.sample_positions(20_510, size, 1))).tolist() == list(range(20_510))


@pytest.mark.parametrize("kind", ["csv", "parquet"])
@pytest.mark.parametrize("chunk_rows", [700, 50_000])
def test_the_streamed_sample_equals_the_in_memory_sample_whatever_the_chunks(
    larger: dict[str, Path], kind: str, chunk_rows: int
) -> None:
    table = fetch.Table(larger[kind], chunk_rows=chunk_rows)
    whole = pd.read_csv(larger["csv"])

    chunks = list(fetch.take_sample(table.chunks(), fetch.sample_positions(table.rows, 1_234, seed=5)))

    assert table.rows == len(whole) == 20_510
    assert all(chunk.num_rows <= chunk_rows for chunk in chunks)  # memory bounded by a chunk
    got = pd.concat([chunk.to_pandas() for chunk in chunks], ignore_index=True)
    expected = fetch.sample_rows(whole, 1_234, seed=5)
    assert got["Order"].tolist() == expected["Order"].tolist()
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)


def test_a_csv_read_in_chunks_keeps_one_type_per_column_as_a_whole_read_would(tmp_path: Path) -> None:
    # In the first chunk `late_text` is empty (read as floats) and `late_gap` whole numbers; in the second,
    # text and an empty cell: read whole they are text and floats, and every chunk must say the same.
    lines = ["id,late_text,late_gap"] + [f"{i},,{i}" for i in range(5)] + ["5,x,", "6,y,7"]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    table = fetch.Table(tmp_path / "t.csv", chunk_rows=5)

    chunks = list(table.chunks())

    assert [chunk.num_rows for chunk in chunks] == [5, 2]
    assert chunks[0].schema == chunks[1].schema
    got = pd.concat([chunk.to_pandas() for chunk in chunks], ignore_index=True)
    pd.testing.assert_frame_equal(got, pd.read_csv(tmp_path / "t.csv"))


def test_parts_are_cut_near_the_target_size_and_hold_every_row_once(
    larger: dict[str, Path], tmp_path: Path
) -> None:
    table = fetch.Table(larger["parquet"], chunk_rows=4_000)
    writer = fetch.PartWriter(tmp_path / "out", part_bytes=400_000)
    for chunk in table.chunks():
        writer.write(chunk)
    parts = writer.close()

    assert [p.name for p in parts] == [f"part-{i:05d}.parquet" for i in range(len(parts))]
    assert len(parts) >= 3
    sizes = [p.stat().st_size for p in parts]
    assert all(size < 400_000 * 1.6 for size in sizes), sizes
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in parts) == writer.rows == 20_510
    assert read_parts(tmp_path / "out")["Order"].tolist() == list(range(1, 20_511))


def test_fetch_step_writes_parts_of_the_asked_size_with_the_seeded_sample(
    run_step, larger: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"

    done = run_step(
        "fetch_data.py", "--dataset", larger["csv"], "--sample-size", 15_000, "--seed", 9,
        "--output", out, "--part-bytes", 300_000,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) >= 3
    rows = read_parts(out)
    expected = fetch.drop_target(fetch.sample_rows(pd.read_csv(larger["csv"]), 15_000, seed=9))
    pd.testing.assert_frame_equal(rows, expected, check_dtype=False)
    assert json.loads((out / "_metadata.json").read_text())["rows"] == 15_000


def test_fetch_step_replaces_the_parts_an_earlier_attempt_left(
    run_step, ames_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-00042.parquet").write_bytes(b"left by an earlier attempt")

    done = run_step("fetch_data.py", "--dataset", ames_csv, "--sample-size", 5, "--seed", 1, "--output", out)

    assert done.returncode == 0, done.stderr
    assert [p.name for p in out.glob("part-*.parquet")] == ["part-00000.parquet"]
    assert len(read_parts(out)) == 5


@pytest.fixture(scope="module")
def split(larger: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The larger table as 11 parts (part-0 .. part-10, so name order and natural order differ), once as
    Parquet as Azure ML v1's dataset runtime writes them (`to_parquet_files().download()`: a column all
    empty in a part typed null, an integer column float in another part) and once as CSV.gz."""
    import pyarrow as pa

    whole = pd.read_csv(larger["csv"])
    folder = tmp_path_factory.mktemp("split")
    for kind in ("parquet", "csv"):
        (folder / kind).mkdir()
    bounds = np.linspace(0, len(whole), 12).astype(int)
    for index, (start, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        piece = whole.iloc[start:end]
        piece.to_csv(folder / "csv" / f"part-{index}.csv.gz", index=False)
        table = pa.Table.from_pandas(piece, preserve_index=False)
        if index == 3:  # a part where PoolQC is always empty: Parquet types it null
            table = table.set_column(
                table.schema.get_field_index("PoolQC"), "PoolQC", pa.nulls(len(piece), pa.null())
            )
        if index == 4:
            table = table.set_column(
                table.schema.get_field_index("LotArea"), "LotArea", table["LotArea"].cast(pa.float64())
            )
        pq.write_table(table, folder / "parquet" / f"part-{index}.parquet")
    (folder / "parquet" / "MLTable").write_text("paths: []\n")
    return {"parquet": folder / "parquet", "csv": folder / "csv", "whole": larger["csv"]}


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_folder_of_parts_is_read_as_one_table_in_natural_order(split: dict[str, Path], kind: str) -> None:
    table = fetch.Table(split[kind], chunk_rows=900)
    whole = pd.read_csv(split["whole"])

    chunks = list(table.chunks())

    assert [f.name for f in table.files] == [
        f"part-{i}.{'csv.gz' if kind == 'csv' else 'parquet'}" for i in range(11)
    ]
    assert table.rows == len(whole) == 20_510
    assert len({chunk.schema for chunk in chunks}) == 1
    assert all(chunk.num_rows <= 900 for chunk in chunks)
    got = pd.concat([chunk.to_pandas() for chunk in chunks], ignore_index=True)
    assert got["Order"].tolist() == list(range(1, 20_511))
    expected = whole.copy()
    if kind == "parquet":
        expected.loc[bounds_of(3, len(whole)), "PoolQC"] = None
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    # the same sample as from the one file
    sample = pd.concat(
        [
            c.to_pandas()
            for c in fetch.take_sample(table.chunks(), fetch.sample_positions(table.rows, 777, 3))
        ],
        ignore_index=True,
    )
    assert sample["Order"].tolist() == fetch.sample_rows(whole, 777, seed=3)["Order"].tolist()


def bounds_of(index: int, total: int) -> slice:
    bounds = np.linspace(0, total, 12).astype(int)
    return slice(bounds[index], bounds[index + 1] - 1)  # .loc is inclusive


def test_parts_with_other_columns_are_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    pd.DataFrame({"Order": [1], "PID": [2]}).to_csv(tmp_path / "d" / "part-0.csv", index=False)
    pd.DataFrame({"Order": [3], "Pid": [4]}).to_csv(tmp_path / "d" / "part-1.csv", index=False)
    pd.DataFrame({"PID": [2], "Order": [1]}).to_parquet(tmp_path / "p0.parquet", index=False)

    with pytest.raises(
        fetch.StepError, match=r"part-1.csv' has other columns than 'part-0.csv': missing PID; extra Pid"
    ):
        fetch.Table(tmp_path / "d")
    (tmp_path / "q").mkdir()
    pd.DataFrame({"Order": [1], "PID": [2]}).to_parquet(tmp_path / "q" / "part-0.parquet", index=False)
    (tmp_path / "p0.parquet").rename(tmp_path / "q" / "part-1.parquet")
    with pytest.raises(fetch.StepError, match="the same names in another order"):
        fetch.Table(tmp_path / "q")


def test_fetch_step_samples_a_folder_of_parts_as_it_samples_the_one_file(
    run_step, split: dict[str, Path], tmp_path: Path
) -> None:
    from_parts, from_file = tmp_path / "parts", tmp_path / "file"
    for source, out in ((split["csv"], from_parts), (split["whole"], from_file)):
        done = run_step(
            "fetch_data.py", "--dataset", source, "--sample-size", 5_000, "--seed", 4, "--output", out
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    pd.testing.assert_frame_equal(read_parts(from_parts), read_parts(from_file))
    assert json.loads((from_parts / "_metadata.json").read_text())["dataset_rows"] == 20_510
