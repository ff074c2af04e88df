"""fetch_data's logic: read a table from a file (or a folder holding one) in chunks, sample it, drop the
target, and write it as Parquet parts of about a target size; memory stays bounded by a chunk (and, for a
sample, by nothing that grows with the dataset)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchpred_steps.errors import StepError
from batchpred_steps.handoff import PART_NAME

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import pyarrow as pa

TARGET_COLUMN = "SalePrice"
DATA_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
# Rows read at a time (about 60 MB of Ames rows in pandas).
CHUNK_ROWS = 50_000
# The target size of a Parquet part on disk: each part is one mini-batch of the parallel predict, so this is
# the default of the PARALLEL_MINI_BATCH_SIZE setting (16MB).
DEFAULT_PART_BYTES = 16 * 1024 * 1024
# The sample is drawn block by block over row positions, in blocks of this many rows, whatever the reader's
# chunks are: the rows drawn depend only on (dataset rows, sample size, seed).
SAMPLE_BLOCK_ROWS = 1 << 16
# numpy's hypergeometric draw takes fewer than 10**9 rows on either side.
MAX_SAMPLED_ROWS = 10**9 - 1


# --- the sample ------------------------------------------------------------------------------------------


def sample_positions(total: int, sample_size: int, seed: int) -> Iterator[np.ndarray]:
    """The row positions (0-based, ascending) of a sample of `sample_size` of `total` rows drawn without
    replacement, reproducibly for `seed`, one sorted array per block of SAMPLE_BLOCK_ROWS rows.

    Every subset of `sample_size` rows is equally likely: how many rows a block gives is a hypergeometric draw
    (the block against the rows after it, for the rows still to pick), then which rows of the block a uniform
    choice. Memory is one block, however large `total` or `sample_size`. 0, or a size of at least `total`,
    means every row."""
    import numpy as np

    check_sample_size(sample_size)
    if sample_size == 0 or sample_size >= total:
        for start in range(0, total, SAMPLE_BLOCK_ROWS):
            yield np.arange(start, min(start + SAMPLE_BLOCK_ROWS, total), dtype=np.int64)
        return
    if total > MAX_SAMPLED_ROWS:
        raise StepError(
            f"cannot sample from more than {MAX_SAMPLED_ROWS:,} rows; use sample size 0 (every row)"
        )
    rng = np.random.default_rng(seed)
    wanted, left = sample_size, total
    for start in range(0, total, SAMPLE_BLOCK_ROWS):
        if wanted == 0:
            return
        size = min(SAMPLE_BLOCK_ROWS, total - start)
        picked = int(rng.hypergeometric(size, left - size, wanted)) if left > size else wanted
        yield np.sort(rng.choice(size, size=picked, replace=False)).astype(np.int64) + start
        wanted, left = wanted - picked, left - size


def sample_rows(frame: pd.DataFrame, sample_size: int, seed: int) -> pd.DataFrame:
    """`sample_size` rows of `frame` drawn without replacement, reproducibly for a given `seed`: the same rows
    fetch_data draws from a file of these rows, in their original order. 0 means every row, and so does a size
    at least as large as the frame. The index is reset, so the result does not depend on how the frame was
    read."""
    import numpy as np

    positions = list(sample_positions(len(frame), sample_size, seed))
    chosen = np.concatenate(positions) if positions else np.empty(0, dtype=np.int64)
    return frame.iloc[chosen].reset_index(drop=True)


def take_sample(chunks: Iterator[pa.Table], positions: Iterator[np.ndarray]) -> Iterator[pa.Table]:
    """The rows of `chunks` (consecutive, from row 0) at `positions` (ascending arrays), chunk by chunk."""
    import numpy as np

    pending = np.empty(0, dtype=np.int64)
    offset = 0
    for chunk in chunks:
        end = offset + chunk.num_rows
        while True:
            if len(pending) and pending[-1] >= end:
                break
            following = next(positions, None)
            if following is None:
                break
            pending = np.concatenate([pending, following])
        inside = int(np.searchsorted(pending, end))
        if inside:
            yield chunk.take(pending[:inside] - offset)
        pending = pending[inside:]
        offset = end


def check_sample_size(sample_size: int, name: str = "sample size") -> None:
    if sample_size < 0:
        raise StepError(f"{name} must be 0 (every row) or more, not {sample_size}")


def drop_target(frame: pd.DataFrame, target: str = TARGET_COLUMN) -> pd.DataFrame:
    """The rows without the column the model predicts (the new data would not have it)."""
    return frame.drop(columns=[target]) if target in frame.columns else frame


def drop_target_column(table: pa.Table, target: str = TARGET_COLUMN) -> pa.Table:
    """drop_target for an Arrow table."""
    return table.drop_columns([target]) if target in table.column_names else table


def fetch_metadata(
    dataset: str, source_rows: int, rows: int, sample_size: int, seed: int, dataset_version: str | None = None
) -> dict[str, Any]:
    """What predict and save_predictions learn about this step's output."""
    return {
        "dataset": dataset,
        "dataset_version": dataset_version,
        "dataset_rows": source_rows,
        "rows": rows,
        # kept under its own name through predict (which records its own `rows`): the quality gate's count check
        "fetched_rows": rows,
        "sample_size": sample_size,
        "seed": seed,
    }


def is_data_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(DATA_SUFFIXES)


def data_file(path: str | Path) -> Path:
    """The data file `path` names: the file itself, or the one data file inside a folder (what Azure ML v2
    materialises for some inputs: the file beside an MLTable or other notes)."""
    given = Path(path)
    if not given.exists():
        raise StepError(f"dataset {str(given)!r} does not exist")
    if given.is_file():
        return given
    if not given.is_dir():
        raise StepError(f"dataset {str(given)!r} is neither a file nor a folder")
    found = sorted(p for p in given.rglob("*") if is_data_file(p))
    if len(found) == 1:
        return found[0]
    kinds = ", ".join(DATA_SUFFIXES)
    if not found:
        raise StepError(f"dataset folder {str(given)!r} holds no data file ({kinds})")
    names = ", ".join(str(p.relative_to(given)) for p in found[:5])
    raise StepError(f"dataset folder {str(given)!r} holds {len(found)} data files ({names}); expected one")


def is_parquet(file: Path) -> bool:
    return file.name.lower().endswith((".parquet", ".pq"))


# --- reading in chunks -----------------------------------------------------------------------------------


def merged_dtype(first: str, second: str) -> str:
    """The dtype a column read whole would get, from the dtypes two chunks of it got: numbers with numbers
    are floats when they differ (a chunk with an empty cell reads an integer column as floats), anything
    else with text is text (a chunk of empty cells reads a text column as floats)."""
    if first == second:
        return first
    numbers = ("int64", "float64")
    return "float64" if first in numbers and second in numbers else "str"


class Table:
    """A dataset file read in chunks of Arrow tables, each with the same schema, and its row count.

    A CSV is read twice: once to count its rows and settle each column's dtype over every chunk (pandas infers
    a dtype per chunk), then in chunks with those dtypes. A Parquet file has both in its footer."""

    def __init__(self, path: str | Path, chunk_rows: int = CHUNK_ROWS) -> None:
        self.file = data_file(path)
        self.chunk_rows = chunk_rows
        self._dtypes: dict[str, str] = {}
        self.rows = self._scan()

    def _scan(self) -> int:
        try:
            if is_parquet(self.file):
                import pyarrow.parquet as pq

                with pq.ParquetFile(self.file) as parquet:
                    return int(parquet.metadata.num_rows)
            rows = 0
            for chunk in self._csv_chunks():
                rows += len(chunk)
                for column, dtype in chunk.dtypes.items():
                    name = "str" if str(dtype) in ("object", "string", "str") else str(dtype)
                    known = self._dtypes.get(str(column))
                    self._dtypes[str(column)] = name if known is None else merged_dtype(known, name)
            return rows
        except StepError:
            raise
        except Exception as error:
            raise self._unreadable(error) from error

    def chunks(self) -> Iterator[pa.Table]:
        """Every row, in order, as Arrow tables of at most `chunk_rows` rows sharing one schema."""
        import pyarrow as pa

        try:
            if is_parquet(self.file):
                import pyarrow.parquet as pq

                with pq.ParquetFile(self.file) as parquet:
                    index = [c for c in (parquet.schema_arrow.pandas_metadata or {}).get("index_columns", [])
                             if isinstance(c, str)]  # fmt: skip
                    for batch in parquet.iter_batches(batch_size=self.chunk_rows):
                        yield pa.Table.from_batches([batch]).drop_columns(index)
                return
            schema = None
            for chunk in self._csv_chunks(self._dtypes):
                table = pa.Table.from_pandas(chunk, schema=schema, preserve_index=False)
                schema = table.schema
                yield table
        except StepError:
            raise
        except Exception as error:
            raise self._unreadable(error) from error

    def _csv_chunks(self, dtypes: dict[str, str] | None = None) -> Iterator[pd.DataFrame]:
        import pandas as pd

        try:
            with pd.read_csv(self.file, chunksize=self.chunk_rows, dtype=dtypes or None) as reader:
                yield from reader  # compression follows the suffix (.gz)
        except pd.errors.EmptyDataError as error:
            raise StepError(f"dataset file {str(self.file)!r} is empty") from error

    def _unreadable(self, error: Exception) -> StepError:
        return StepError(f"cannot read dataset file {str(self.file)!r}: {type(error).__name__}: {error}")


# --- writing parts ---------------------------------------------------------------------------------------


class PartWriter:
    """Arrow tables written as Parquet parts `part-00000.parquet`, `part-00001.parquet`, ... of `folder`, each
    of about `part_bytes` on disk. A part is cut at a row count estimated from the bytes a row took so far
    (row groups and compression make that only an estimate), so a table is written in slices."""

    def __init__(self, folder: str | Path, part_bytes: int = DEFAULT_PART_BYTES) -> None:
        if part_bytes < 1:
            raise StepError(f"the part size must be at least 1 byte, not {part_bytes}")
        self.folder = Path(folder)
        self.part_bytes = part_bytes
        self.parts: list[Path] = []
        self.rows = 0
        self._part_rows = 0
        self._closed_bytes = 0
        self._sink: Any = None
        self._writer: Any = None

    def write(self, table: pa.Table) -> None:
        start = 0
        while start < table.num_rows:
            self._open(table.schema)
            piece = table.slice(start, min(table.num_rows - start, self._part_target() - self._part_rows))
            self._writer.write_table(piece)  # one row group, on disk once written
            start += piece.num_rows
            self.rows += piece.num_rows
            self._part_rows += piece.num_rows
            if self._part_rows >= self._part_target() or self._sink.tell() >= self.part_bytes:
                self._close_part()

    def close(self, schema: pa.Schema | None = None) -> list[Path]:
        """Close the last part and return every part; with no row written, one empty part of `schema`."""
        if self._writer is None and not self.parts and schema is not None:
            self._open(schema)
        self._close_part()
        return self.parts

    def _part_target(self) -> int:
        """Rows a part should hold: from the bytes a row took so far, else a first slice to learn it."""
        written, rows = self._closed_bytes + (self._sink.tell() if self._sink else 0), self.rows
        if rows == 0:
            return 2_000
        return max(1, math.ceil(self.part_bytes * rows / written))

    def _open(self, schema: pa.Schema) -> None:
        if self._writer is not None:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / PART_NAME.format(index=len(self.parts))
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pq.ParquetWriter(self._sink, schema)
        self._part_rows = 0
        self.parts.append(path)

    def _close_part(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._closed_bytes += self._sink.tell()
            self._sink.close()
            self._writer = self._sink = None


def read_table(path: str | Path) -> pd.DataFrame:
    """Every row of a CSV, gzip-compressed CSV or Parquet file, or of the one such file in a folder."""
    import pandas as pd

    file = data_file(path)
    try:
        if file.name.lower().endswith((".parquet", ".pq")):
            return pd.read_parquet(file)
        return pd.read_csv(file)  # compression follows the suffix (.gz)
    except pd.errors.EmptyDataError as error:
        raise StepError(f"dataset file {str(file)!r} is empty") from error
    except Exception as error:  # a corrupt file shows up as many different exception types
        raise StepError(f"cannot read dataset file {str(file)!r}: {type(error).__name__}: {error}") from error
