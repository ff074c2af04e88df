"""What one step hands the next: a folder of Parquet parts and a small `_metadata.json` beside them."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchpred_steps.errors import StepError

if TYPE_CHECKING:  # pandas is imported where frames are read, so `--help` stays fast
    import pandas as pd

PART_NAME = "part-{index:05d}.parquet"
# What a step records beside its Parquet parts (dataset, seed, model name and version) for the steps after it.
METADATA_FILE = "_metadata.json"
# The column predict adds and save_predictions publishes.
PREDICTION_COLUMN = "PredictedSalePrice"


def parquet_parts(folder: str | os.PathLike) -> list[Path]:
    """The Parquet files a previous step wrote into `folder`, in order."""
    path = Path(folder)
    if not path.is_dir():
        raise StepError(f"input folder {str(path)!r} does not exist")
    parts = sorted(p for p in path.iterdir() if p.suffix == ".parquet")
    if not parts:
        raise StepError(f"input folder {str(path)!r} holds no .parquet file")
    return parts


def iter_batches(folder: str | os.PathLike, batch_rows: int) -> Iterator[pd.DataFrame]:
    """The rows of `folder` in frames of at most `batch_rows`, without holding the whole input in memory."""
    import pyarrow.parquet as pq

    for part in parquet_parts(folder):
        with pq.ParquetFile(part) as parquet:
            for batch in parquet.iter_batches(batch_size=batch_rows):
                yield batch.to_pandas()


def write_frame(folder: str | os.PathLike, frame: pd.DataFrame, index: int = 0) -> Path:
    """Write `frame` as part `index` of `folder` (created if missing) and return the file's path."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    target = path / PART_NAME.format(index=index)
    frame.to_parquet(target, index=False)
    return target


def clear_parts(folder: str | os.PathLike) -> None:
    """Remove the parts and metadata an earlier attempt left in `folder`, so they cannot mix with this one's."""
    path = Path(folder)
    if path.is_dir():
        for part in path.glob("part-*.parquet"):
            part.unlink()
        (path / METADATA_FILE).unlink(missing_ok=True)


def read_metadata(folder: str | os.PathLike) -> dict[str, Any]:
    """What the previous steps recorded beside their rows in `folder`; {} when they recorded nothing.
    StepError when the file is there but unreadable or not a JSON object."""
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise StepError(f"cannot read {str(path)!r}: {error}") from error
    if not isinstance(metadata, dict):
        raise StepError(f"{str(path)!r} does not hold a JSON object")
    return metadata


def write_metadata(folder: str | os.PathLike, metadata: dict[str, Any]) -> None:
    """Record `metadata` beside the rows in `folder`, for the steps after this one."""
    (Path(folder) / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")


def write_metadata_once(folder: str | os.PathLike, metadata: dict[str, Any]) -> bool:
    """write_metadata for many writers of the same `metadata` (the parallel predict's processes): written once,
    through a temporary file renamed into place, so a reader never sees half of it; False when it was there."""
    target = Path(folder) / METADATA_FILE
    if target.is_file():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{METADATA_FILE}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(json.dumps(metadata, indent=2) + "\n")
        os.replace(temp, target)
    finally:
        Path(temp).unlink(missing_ok=True)
    return True
