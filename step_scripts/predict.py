"""Pipeline step 2 of 3, predict: add a `PredictedSalePrice` column to every row of the input, scored by the
model; every input column passes through unchanged and in order.

`--model` is a model folder (what Azure ML downloads), a model file, or a local registry folder
`<registry>/<ModelName>` of numbered versions, of which `--model-version` picks one. The input is streamed in
batches of `--batch-rows` and written as one Parquet part per batch, so memory stays bounded however many rows
come in. On Azure ML v1, aml_v1.py downloads the registered model into a folder first.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from batchpred_steps.cli import run_step, step_parser
from batchpred_steps.errors import StepError
from batchpred_steps.handoff import PREDICTION_COLUMN, read_metadata, write_metadata
from batchpred_steps.score import (
    clear_output,
    input_columns,
    load_model,
    missing_columns,
    missing_message,
    model_features,
    output_metadata,
    resolve_model,
    score,
)

log = logging.getLogger("predict")

# Tuned with bench/predict_step.py on 1,000,000 rows: from 10,000 to 50,000 rows a batch the CPU time is the
# same (and below one whole-frame predict: the trees walk a batch that stays in cache), while peak memory
# grows with the batch (about 370 MiB at 20,000 rows, 630 MiB at 50,000). Smaller batches pay the model's
# fixed cost per call (one pass over 500 trees) too often.
DEFAULT_BATCH_ROWS = 20_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = step_parser(__doc__)
    parser.add_argument(
        "--input", required=True, help="folder of Parquet parts to score (fetch_data's output)"
    )
    parser.add_argument(
        "--model", required=True, help="a model folder or file, or a local registry folder of versions"
    )
    parser.add_argument(
        "--model-version",
        default="latest",
        help="'latest' (default) or a version number: picks a registry folder's version; recorded",
    )
    parser.add_argument("--model-name", help="the model's name to record (default: its metadata.json's)")
    parser.add_argument("--output", required=True, help="folder to write the scored rows to (Parquet parts)")
    parser.add_argument(
        "--batch-rows",
        type=int,
        default=DEFAULT_BATCH_ROWS,
        help=f"rows scored and written at a time (default {DEFAULT_BATCH_ROWS})",
    )
    return parser.parse_args(argv)


def predict(
    source: Path,
    model_path: Path,
    output: Path,
    *,
    model_version: str = "latest",
    model_name: str | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> None:
    """Score every row of `source` with the model at `model_path` into `output`."""
    if batch_rows < 1:
        raise StepError(f"--batch-rows must be at least 1, not {batch_rows}")
    started = time.monotonic()
    columns = input_columns(source)  # checks the input before the model is even loaded
    if output.resolve() == source.resolve():
        raise StepError("--output must not be the --input folder")
    input_metadata = read_metadata(source)
    model_source = resolve_model(model_path, model_version, model_name)
    model = load_model(model_source.path)
    features = model_features(model, model_source.metadata)
    missing = missing_columns(columns, features)
    if missing:
        raise StepError(missing_message(missing))
    log.info("model %s version %s from %s", model_source.name, model_source.version, model_source.path)
    clear_output(output)
    rows = score(source, output, model, features, batch_rows)
    write_metadata(
        output,
        output_metadata(input_metadata, model_source.name, model_source.version, rows, model_source.metadata),
    )
    if rows == 0:
        log.warning("the input holds no rows: wrote an empty output with the %s column", PREDICTION_COLUMN)
    elapsed = time.monotonic() - started
    log.info(
        "scored %d rows in %.1f s (%.0f rows/s) into %s", rows, elapsed, rows / max(elapsed, 1e-9), output
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_step(
        lambda: predict(
            Path(args.input),
            Path(args.model),
            Path(args.output),
            model_version=args.model_version,
            model_name=args.model_name,
            batch_rows=args.batch_rows,
        ),
        io_failure="cannot read the input or write the output",
    )


if __name__ == "__main__":
    main()
