"""fetch_data's logic: read a table from a file (or a folder of parts) in chunks, sample it, drop the
target, and write it as Parquet parts of about a target size; memory stays bounded by a chunk (and, for a
sample, by nothing that grows with the dataset)."""

from __future__ import annotations

import contextlib
import math
import re
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


def natural_key(path: Path) -> list[Any]:
    """Sort key of a path that orders numbered names by number: part-2 before part-10."""
    return [int(piece) if piece.isdigit() else piece for piece in re.split(r"(\d+)", path.as_posix())]


def data_files(path: str | Path) -> list[Path]:
    """The data files `path` names: the file itself, or every data file inside a folder, in natural name
    order (part-2 before part-10), all CSV (or CSV.gz) or all Parquet. A folder is what Azure ML gives: the
    one file v2 materialises beside an MLTable file, or the parts v1's dataset writes (aml_v1.py)."""
    given = Path(path)
    if not given.exists():
        raise StepError(f"dataset {str(given)!r} does not exist")
    if given.is_file():
        return [given]
    if not given.is_dir():
        raise StepError(f"dataset {str(given)!r} is neither a file nor a folder")
    found = sorted(
        (p for p in given.rglob("*") if is_data_file(p)), key=lambda p: natural_key(p.relative_to(given))
    )
    if not found:
        raise StepError(f"dataset folder {str(given)!r} holds no data file ({', '.join(DATA_SUFFIXES)})")
    kinds = {is_parquet(p) for p in found}
    if len(kinds) > 1:
        parquet = next(p for p in found if is_parquet(p)).relative_to(given)
        csv = next(p for p in found if not is_parquet(p)).relative_to(given)
        raise StepError(
            f"dataset folder {str(given)!r} holds both Parquet ({parquet}) and CSV ({csv}) files; "
            "expected one kind"
        )
    return found


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
    """A dataset (a file, or a folder of parts) read in chunks of Arrow tables, each with the same schema, and
    its row count. The files are read one after the other, as one table; every file must have the same
    columns in the same order.

    CSV is read twice: once to count the rows and settle each column's dtype over every chunk of every file
    (pandas infers a dtype per chunk), then in chunks with those dtypes. Parquet has both in its footers: the
    files' schemas are unified (a part whose column is all empty may type it as null, or an integer column as
    another part's floats)."""

    def __init__(self, path: str | Path, chunk_rows: int = CHUNK_ROWS) -> None:
        self.files = data_files(path)
        self.chunk_rows = chunk_rows
        self._columns: list[str] | None = None
        self._dtypes: dict[str, str] = {}
        self._schema: pa.Schema | None = None
        self.rows = self._scan()

    @property
    def parquet(self) -> bool:
        return is_parquet(self.files[0])

    def _scan(self) -> int:
        rows = 0
        for file in self.files:
            with self._reading(file):
                rows += self._scan_parquet(file) if self.parquet else self._scan_csv(file)
        return rows

    def _scan_parquet(self, file: Path) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        with pq.ParquetFile(file) as parquet:
            schema = _without_index(parquet.schema_arrow)
            self._check_columns(file, schema.names)
            self._schema = (
                schema
                if self._schema is None
                else pa.unify_schemas([self._schema, schema], promote_options="permissive")
            )
            return int(parquet.metadata.num_rows)

    def _scan_csv(self, file: Path) -> int:
        rows = 0
        for chunk in self._csv_chunks(file):
            self._check_columns(file, [str(c) for c in chunk.columns])
            rows += len(chunk)
            for column, dtype in chunk.dtypes.items():
                name = "str" if str(dtype) in ("object", "string", "str") else str(dtype)
                known = self._dtypes.get(str(column))
                self._dtypes[str(column)] = name if known is None else merged_dtype(known, name)
        return rows

    def _check_columns(self, file: Path, columns: list[str]) -> None:
        if self._columns is None:
            self._columns = columns
        elif columns != self._columns:
            first = self.files[0].name
            raise StepError(
                f"dataset file {str(file)!r} has other columns than {first!r}: "
                f"{_difference(columns, self._columns)}"
            )

    def chunks(self) -> Iterator[pa.Table]:
        """Every row, in order, as Arrow tables of at most `chunk_rows` rows sharing one schema."""
        import pyarrow as pa

        schema = self._schema
        for file in self.files:
            with self._reading(file):
                if self.parquet:
                    import pyarrow.parquet as pq

                    with pq.ParquetFile(file) as parquet:
                        index = _index_columns(parquet.schema_arrow)
                        for batch in parquet.iter_batches(batch_size=self.chunk_rows):
                            yield pa.Table.from_batches([batch]).drop_columns(index).cast(schema)
                    continue
                for chunk in self._csv_chunks(file, self._dtypes):
                    table = pa.Table.from_pandas(chunk, schema=schema, preserve_index=False)
                    schema = table.schema
                    yield table

    @contextlib.contextmanager
    def _reading(self, file: Path) -> Iterator[None]:
        """A failure to read `file` as one StepError naming it."""
        try:
            yield
        except StepError:
            raise
        except Exception as error:  # a corrupt file shows up as many different exception types
            raise StepError(
                f"cannot read dataset file {str(file)!r}: {type(error).__name__}: {error}"
            ) from error

    def _csv_chunks(self, file: Path, dtypes: dict[str, str] | None = None) -> Iterator[pd.DataFrame]:
        import pandas as pd

        try:
            with pd.read_csv(file, chunksize=self.chunk_rows, dtype=dtypes or None) as reader:
                yield from reader  # compression follows the suffix (.gz)
        except pd.errors.EmptyDataError as error:
            raise StepError(f"dataset file {str(file)!r} is empty") from error


def _index_columns(schema: pa.Schema) -> list[str]:
    """The columns pandas stored its index in (named in the schema's pandas metadata)."""
    return [c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)]


def _without_index(schema: pa.Schema) -> pa.Schema:
    import pyarrow as pa

    index = set(_index_columns(schema))
    return pa.schema([f for f in schema if f.name not in index])


def _difference(columns: list[str], expected: list[str]) -> str:
    missing = [c for c in expected if c not in columns]
    extra = [c for c in columns if c not in expected]
    if not missing and not extra:
        return "the same names in another order"
    said = ([f"missing {', '.join(missing[:5])}"] if missing else []) + (
        [f"extra {', '.join(extra[:5])}"] if extra else []
    )
    return "; ".join(said)


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
    """Every row of a CSV, gzip-compressed CSV or Parquet file, or of the data files in a folder, whole."""
    import pandas as pd

    table = Table(path)
    chunks = [chunk.to_pandas() for chunk in table.chunks()]
    return pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame(columns=table._columns or [])
