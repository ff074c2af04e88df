"""Pipeline step 1 of 3, fetch_data: take the new rows to score (a sample of the dataset, without its target)
and hand them to predict as Parquet with a small `_metadata.json`.

Locally `--dataset` is a CSV, CSV.gz or Parquet file; on Azure ML it is the name of a registered tabular
dataset, read at run time so that a new version of the data is picked up without republishing.
"""

from __future__ import annotations

import argparse
import logging
import re
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepio import StepError, aml_workspace, run_step, step_parser, write_frame, write_metadata

if TYPE_CHECKING:  # pandas is imported where frames are read, so `--help` stays fast
    import pandas as pd

log = logging.getLogger("fetch_data")

TARGET_COLUMN = "SalePrice"
FILE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
# A registered dataset name as Azure ML accepts it; anything else can only be meant as a file path.
_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,254}")


# --- computation -----------------------------------------------------------------------------------------


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


def fetch_metadata(dataset: str, source_rows: int, rows: int, sample_size: int, seed: int) -> dict[str, Any]:
    """What predict and save_predictions learn about this step's output."""
    return {
        "dataset": dataset,
        "dataset_rows": source_rows,
        "rows": rows,
        "sample_size": sample_size,
        "seed": seed,
    }


# --- reading the dataset ---------------------------------------------------------------------------------


def looks_like_file(dataset: str) -> bool:
    """Whether `--dataset` can only mean a file: it exists, has a data file suffix, or is no dataset name."""
    return (
        Path(dataset).exists()
        or dataset.lower().endswith(FILE_SUFFIXES)
        or _DATASET_NAME.fullmatch(dataset) is None
    )


def read_dataset_file(path: str | Path) -> pd.DataFrame:
    """Every row of a CSV, gzip-compressed CSV or Parquet file."""
    import pandas as pd

    file = Path(path)
    if not file.exists():
        raise StepError(f"dataset file {str(file)!r} does not exist")
    if not file.is_file():
        raise StepError(f"dataset {str(file)!r} is not a file")
    try:
        if file.name.lower().endswith((".parquet", ".pq")):
            return pd.read_parquet(file)
        return pd.read_csv(file)  # compression follows the suffix (.gz)
    except pd.errors.EmptyDataError as error:
        raise StepError(f"dataset file {str(file)!r} is empty") from error
    except Exception as error:  # a corrupt file shows up as many different exception types
        raise StepError(f"cannot read dataset file {str(file)!r}: {type(error).__name__}: {error}") from error


def read_registered_dataset(name: str) -> pd.DataFrame:
    """The latest version of the registered tabular dataset `name` in the workspace of this Azure ML run."""
    workspace = aml_workspace(
        f"dataset {name!r} is not an existing file (a registered dataset name is read only on Azure ML)"
    )
    from azureml.core import Dataset

    try:
        dataset = Dataset.get_by_name(workspace, name=name)
    except Exception as error:
        raise StepError(f"registered dataset {name!r} not found: {error}") from error
    return dataset.to_pandas_dataframe()


def load_dataset(dataset: str) -> pd.DataFrame:
    if looks_like_file(dataset):
        return read_dataset_file(dataset)
    return read_registered_dataset(dataset)


# --- the step --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = step_parser(__doc__)
    parser.add_argument(
        "--dataset", required=True, help="a CSV/CSV.gz/Parquet file, or a registered tabular dataset name"
    )
    parser.add_argument("--sample-size", type=int, required=True, help="rows to sample; 0 means every row")
    parser.add_argument("--seed", type=int, help="random seed of the sample (default: drawn and recorded)")
    parser.add_argument("--output", required=True, help="folder to write the rows to (Parquet)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_step(lambda: fetch(args), io_failure="cannot write the output")


def fetch(args: argparse.Namespace) -> None:
    check_sample_size(args.sample_size, "--sample-size")
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    frame = load_dataset(args.dataset)
    if len(frame) == 0:
        raise StepError(f"dataset {args.dataset!r} holds no rows")
    if args.sample_size > len(frame):
        log.info(
            "sample size %d is larger than the dataset (%d rows): taking every row",
            args.sample_size,
            len(frame),
        )
    rows = drop_target(sample_rows(frame, args.sample_size, seed))
    write_frame(args.output, rows)
    write_metadata(args.output, fetch_metadata(args.dataset, len(frame), len(rows), args.sample_size, seed))
    log.info(
        "fetched %d of %d rows of %s (sample size %d, seed %d) into %s",
        len(rows),
        len(frame),
        args.dataset,
        args.sample_size,
        seed,
        args.output,
    )


if __name__ == "__main__":
    sys.exit(main())
