"""Pipeline step 1 of 3, fetch_data: take the new rows to score (a sample of the dataset, without its target)
and hand them to predict as Parquet with a small `_metadata.json`.

`--dataset` is a CSV, CSV.gz or Parquet file, or a folder holding exactly one such file (what Azure ML v2
materialises for some inputs). On Azure ML v1, aml_v1.py reads the registered dataset into such a file first.
"""

from __future__ import annotations

import argparse
import logging
import secrets
from pathlib import Path

from batchpred_steps.cli import run_step, step_parser
from batchpred_steps.errors import StepError
from batchpred_steps.fetch import check_sample_size, drop_target, fetch_metadata, read_table, sample_rows
from batchpred_steps.handoff import write_frame, write_metadata

log = logging.getLogger("fetch_data")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = step_parser(__doc__)
    parser.add_argument(
        "--dataset", required=True, help="a CSV/CSV.gz/Parquet file, or a folder holding exactly one"
    )
    parser.add_argument(
        "--dataset-name", help="the dataset's registered name, for the record (default: the path)"
    )
    parser.add_argument(
        "--dataset-version", help="the registered version read, for the record (default: none)"
    )
    parser.add_argument("--sample-size", type=int, required=True, help="rows to sample; 0 means every row")
    parser.add_argument("--seed", type=int, help="random seed of the sample (default: drawn and recorded)")
    parser.add_argument("--output", required=True, help="folder to write the rows to (Parquet)")
    return parser.parse_args(argv)


def fetch(
    dataset: str | Path,
    sample_size: int,
    seed: int | None,
    output: str | Path,
    *,
    dataset_name: str | None = None,
    dataset_version: str | None = None,
) -> None:
    """Sample `sample_size` rows of `dataset` into `output`; the metadata names the dataset `dataset_name`
    (the registered name), else by the path given, and its registered `dataset_version` when there is one."""
    check_sample_size(sample_size, "--sample-size")
    seed = seed if seed is not None else secrets.randbelow(2**31)
    name = dataset_name or str(dataset)
    frame = read_table(dataset)
    if len(frame) == 0:
        raise StepError(f"dataset {name!r} holds no rows")
    if sample_size > len(frame):
        log.info(
            "sample size %d is larger than the dataset (%d rows): taking every row", sample_size, len(frame)
        )
    rows = drop_target(sample_rows(frame, sample_size, seed))
    write_frame(output, rows)
    write_metadata(
        output, fetch_metadata(name, len(frame), len(rows), sample_size, seed, dataset_version or None)
    )
    log.info(
        "fetched %d of %d rows of %s (sample size %d, seed %d) into %s",
        len(rows), len(frame), name, sample_size, seed, output,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_step(
        lambda: fetch(
            args.dataset,
            args.sample_size,
            args.seed,
            args.output,
            dataset_name=args.dataset_name or None,
            dataset_version=args.dataset_version or None,
        ),
        io_failure="cannot write the output",
    )


if __name__ == "__main__":
    main()
