"""A deterministic generator of large Ames-like tables, for the scale benchmarks and for trying the parallel
predict on more rows than the shipped 2,930.

    .venv/bin/python bench/bigdata.py --rows 1000000 [--out .local/bench/ames-1000000.parquet] [--seed 0]
    make bigdata ROWS=1000000 [OUT=...]

Each row is a row of the shipped data (data/ames_housing.csv.gz) drawn at random, with multiplicative jitter
(normal, 5 %) on its continuous columns (areas, frontage, porch and veneer sizes, values, the price), rounded
back to whole numbers; ids are unique: `Order` is the row number from 1, `PID` 1,000,000,000 plus it. Rows are
made in blocks of 100,000, each from its own seeded random stream, so memory stays one block however many rows
are asked for, and the first N rows of a larger table are the table of N rows (for one block size). Written as Parquet (one row
group per block) or, with a `.csv.gz` or `.csv` name, as CSV. The file is usable as LOCAL_DATASET_PATH and
registrable as a dataset in the emulated workspace.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SOURCE = PROJECT_ROOT / "data" / "ames_housing.csv.gz"
BLOCK_ROWS = 100_000
JITTER = 0.05
PID_BASE = 1_000_000_000
# Continuous columns (many distinct values, no calendar or count meaning) get the jitter; the rest is copied.
CONTINUOUS_MIN_DISTINCT = 100
NOT_JITTERED = ("Order", "PID", "YearBuilt", "YearRemodAdd", "GarageYrBlt", "MoSold", "YrSold")


def continuous_columns(source: pd.DataFrame) -> list[str]:
    import pandas as pd

    return [
        c
        for c in source.columns
        if pd.api.types.is_numeric_dtype(source[c])
        and c not in NOT_JITTERED
        and source[c].nunique() >= CONTINUOUS_MIN_DISTINCT
    ]


def block(source: pd.DataFrame, first: int, rows: int, seed: int, jittered: list[str]) -> pd.DataFrame:
    """`rows` rows from row number `first` (1-based), from a random stream of their own."""
    import numpy as np

    rng = np.random.default_rng([seed, first])
    frame = source.iloc[rng.integers(0, len(source), size=rows)].reset_index(drop=True)
    for column in jittered:
        values = frame[column].to_numpy(dtype="float64")
        noisy = np.maximum(np.round(values * rng.normal(1.0, JITTER, size=rows)), 0.0)
        frame[column] = noisy if np.isnan(values).any() else noisy.astype(source[column].dtype)
    frame["Order"] = np.arange(first, first + rows, dtype="int64")
    frame["PID"] = frame["Order"] + PID_BASE
    return frame


def generate(rows: int, seed: int = 0, block_rows: int = BLOCK_ROWS) -> Iterator[pd.DataFrame]:
    """The `rows` rows, `block_rows` at a time."""
    import pandas as pd

    source = pd.read_csv(SOURCE)
    jittered = continuous_columns(source)
    for start in range(0, rows, block_rows):
        yield block(source, start + 1, min(block_rows, rows - start), seed, jittered)


def write(rows: int, out: Path, seed: int = 0, block_rows: int = BLOCK_ROWS) -> Path:
    """Write the table of `rows` rows to `out` (Parquet, or CSV for a .csv/.csv.gz name), through a temporary
    file renamed into place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(f".{out.name}.tmp")
    if out.name.endswith((".csv", ".csv.gz")):
        opener = gzip.open if out.name.endswith(".gz") else open
        with opener(temp, "wt", newline="", encoding="utf-8") as text:  # type: ignore[operator]
            for number, frame in enumerate(generate(rows, seed, block_rows)):
                frame.to_csv(text, header=number == 0, index=False)
    else:
        writer = None
        for frame in generate(rows, seed, block_rows):
            table = pa.Table.from_pandas(frame, preserve_index=False)
            writer = writer or pq.ParquetWriter(temp, table.schema)
            writer.write_table(table.cast(writer.schema))
        if writer is not None:
            writer.close()
    temp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--out", type=Path, help="default: .local/bench/ames-<rows>.parquet")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error("--rows must be at least 1")
    out = args.out or PROJECT_ROOT / ".local" / "bench" / f"ames-{args.rows}.parquet"
    started = time.monotonic()
    write(args.rows, out, args.seed)
    seconds = time.monotonic() - started
    print(f"{args.rows:,} rows in {out} ({out.stat().st_size / 2**20:,.1f} MiB, {seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
