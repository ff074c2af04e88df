"""Pipeline step 1 of 3, fetch_data: take the new rows to score (a sample of the dataset, without its target)
and hand them to predict as Parquet parts `part-NNNNN.parquet` of about `--part-bytes` with a small
`_metadata.json`; each part is one mini-batch of the parallel predict.

`--dataset` is a CSV, CSV.gz or Parquet file, or a folder of such files of one kind, read as one table in
natural name order (part-2 before part-10): what Azure ML v2 materialises beside an MLTable file, or the
Parquet parts aml_v1.py has Azure ML v1's dataset runtime write from the registered dataset.
The files are streamed in chunks: memory stays bounded by a chunk however many rows they hold. A sample of N rows
takes two passes (count, then pick the rows at positions drawn for the seed); a CSV is counted anyway, to
settle its columns' types.
"""

from __future__ import annotations

import argparse
import logging
import secrets
from pathlib import Path

from batchpred_steps.cli import run_step, step_parser
from batchpred_steps.errors import StepError
from batchpred_steps.fetch import (
    DEFAULT_PART_BYTES,
    PartWriter,
    Table,
    check_sample_size,
    drop_target_column,
    fetch_metadata,
    sample_positions,
    take_sample,
)
from batchpred_steps.handoff import clear_parts, write_metadata

log = logging.getLogger("fetch_data")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = step_parser(__doc__)
    parser.add_argument(
        "--dataset", required=True, help="a CSV/CSV.gz/Parquet file, or a folder of such files"
    )
    parser.add_argument(
        "--dataset-name", help="the dataset's registered name, for the record (default: the path)"
    )
    parser.add_argument(
        "--dataset-version", help="the registered version read, for the record (default: none)"
    )
    parser.add_argument("--sample-size", type=int, required=True, help="rows to sample; 0 means every row")
    parser.add_argument("--seed", type=int, help="random seed of the sample (default: drawn and recorded)")
    parser.add_argument("--output", required=True, help="folder to write the rows to (Parquet parts)")
    parser.add_argument(
        "--part-bytes",
        type=int,
        default=DEFAULT_PART_BYTES,
        help=f"target size of a Parquet part on disk (default {DEFAULT_PART_BYTES}: 16 MB)",
    )
    return parser.parse_args(argv)


def fetch(
    dataset: str | Path,
    sample_size: int,
    seed: int | None,
    output: str | Path,
    *,
    dataset_name: str | None = None,
    dataset_version: str | None = None,
    part_bytes: int = DEFAULT_PART_BYTES,
) -> None:
    """Sample `sample_size` rows of `dataset` into Parquet parts of `output`; the metadata names the dataset
    `dataset_name` (the registered name), else by the path given, and its registered `dataset_version` when
    there is one."""
    check_sample_size(sample_size, "--sample-size")
    seed = seed if seed is not None else secrets.randbelow(2**31)
    name = dataset_name or str(dataset)
    table = Table(dataset)
    if table.rows == 0:
        raise StepError(f"dataset {name!r} holds no rows")
    if sample_size > table.rows:
        log.info(
            "sample size %d is larger than the dataset (%d rows): taking every row", sample_size, table.rows
        )
    clear_parts(output)
    writer = PartWriter(output, part_bytes)
    for chunk in take_sample(table.chunks(), sample_positions(table.rows, sample_size, seed)):
        writer.write(drop_target_column(chunk))
    parts = writer.close()
    write_metadata(
        output, fetch_metadata(name, table.rows, writer.rows, sample_size, seed, dataset_version or None)
    )
    log.info(
        "fetched %d of %d rows of %s (%d file(s); sample size %d, seed %d) into %d part(s) of %s",
        writer.rows, table.rows, name, len(table.files), sample_size, seed, len(parts), output,
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
            part_bytes=args.part_bytes,
        ),
        io_failure="cannot write the output",
    )


if __name__ == "__main__":
    main()
