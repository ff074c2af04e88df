"""fetch_data's logic: read a table from a file (or a folder holding one), sample it, drop the target."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchpred_steps.errors import StepError

if TYPE_CHECKING:
    import pandas as pd

TARGET_COLUMN = "SalePrice"
DATA_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")


def sample_rows(frame: pd.DataFrame, sample_size: int, seed: int) -> pd.DataFrame:
    """`sample_size` rows of `frame` drawn without replacement, reproducibly for a given `seed`.

    0 means every row, and so does a size at least as large as the frame; either way the rows keep their
    original order. The index is reset, so the result does not depend on how the frame was read.
    """
    check_sample_size(sample_size)
    if sample_size == 0 or sample_size >= len(frame):
        return frame.reset_index(drop=True)
    return frame.sample(n=sample_size, random_state=seed).reset_index(drop=True)


def check_sample_size(sample_size: int, name: str = "sample size") -> None:
    if sample_size < 0:
        raise StepError(f"{name} must be 0 (every row) or more, not {sample_size}")


def drop_target(frame: pd.DataFrame, target: str = TARGET_COLUMN) -> pd.DataFrame:
    """The rows without the column the model predicts (the new data would not have it)."""
    return frame.drop(columns=[target]) if target in frame.columns else frame


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
