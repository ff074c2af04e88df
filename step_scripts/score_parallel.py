"""The parallel predict's entry script (Azure ML's parallel-run contract): the platform's runtime (Azure ML's
ParallelRunStep or parallel job, or the local backend's pool) calls `init()` once in each worker process, then
`run(mini_batch)` with a list of Parquet part files of fetch_data's output (or a pandas DataFrame of rows).

Arguments, read from sys.argv with parse_known_args (the runtime adds its own): `--model PATH_OR_NAME
--model-version V [--model-name NAME] [--predictions-dir DIR]`. `--model` is what predict.py takes (a model
folder or file, or a local registry folder of versions); when no such path exists it is an Azure ML v1 model
name, which aml_v1.py downloads. The output folder is `--predictions-dir`, else the runtime's
`AZUREML_BI_OUTPUT_PATH` (`--output` is the runtime's own on v1).

Each part `<stem>.parquet` is scored in batches of 20,000 rows into `part-<stem>.parquet` of the output folder
(written whole or not at all: a retried mini-batch overwrites its part), and `_metadata.json` is written beside
them once, as predict.py writes it. `run` returns one line per item; a failure raises StepError with the one
line the step would print.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchpred_steps.cli import configure_logging, failure_message
from batchpred_steps.errors import StepError, one_line
from batchpred_steps.handoff import read_metadata, write_metadata_once
from batchpred_steps.score import (
    frame_part_name,
    load_model,
    model_features,
    output_metadata,
    resolve_model,
    score_frame,
    score_part,
    scored_part_name,
)

log = logging.getLogger("score_parallel")

BATCH_ROWS = 20_000  # predict.py's DEFAULT_BATCH_ROWS
OUTPUT_ENV = "AZUREML_BI_OUTPUT_PATH"
IO_FAILURE = "cannot read the input or write the output"


@dataclass
class Scorer:
    """What init() loads once per process."""

    model: Any
    features: list[str]
    model_name: str
    model_version: int | None
    model_metadata: dict[str, Any]  # the registry's notes (the quality gate's reference among them)
    output: Path


_scorer: Scorer | None = None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--model", required=True, help="a model folder or file, a local registry, or a v1 name"
    )
    parser.add_argument("--model-version", default="latest", help="'latest' (default) or a version number")
    parser.add_argument("--model-name", help="the model's name to record (default: its metadata.json's)")
    parser.add_argument("--predictions-dir", help=f"the output folder (default: ${OUTPUT_ENV})")
    args, _ = parser.parse_known_args(argv)
    return args


def load_scorer(args: argparse.Namespace, environ: Any = os.environ) -> Scorer:
    """The model the arguments name, loaded, and the output folder."""
    output = args.predictions_dir or environ.get(OUTPUT_ENV)
    if not output:
        raise StepError(f"no output folder: give --predictions-dir or set {OUTPUT_ENV}")
    if Path(args.model).exists():
        source = resolve_model(args.model, args.model_version, args.model_name)
        model = load_model(source.path)
    else:
        import aml_v1  # only here: the one module importing azureml, for a v1 model name

        with tempfile.TemporaryDirectory(prefix="score-parallel-model-") as folder:
            downloaded, name, version = aml_v1.download_model(args.model, args.model_version, Path(folder))
            source = resolve_model(downloaded, str(version), args.model_name or name)
            model = load_model(source.path)
    features = model_features(model, source.metadata)
    return Scorer(model, features, source.name, source.version, source.metadata, Path(output))


def score_items(scorer: Scorer, mini_batch: Any) -> list[str]:
    """Score a mini-batch (part files, or a DataFrame) into the scorer's output folder; one line per item."""
    if hasattr(mini_batch, "columns"):  # a DataFrame: its items are its rows
        name = frame_part_name(mini_batch)
        score_frame(mini_batch, scorer.output / name, scorer.model, scorer.features, BATCH_ROWS)
        write_metadata_once(scorer.output, metadata_of(scorer, {}))
        return [name] * len(mini_batch)
    results = []
    for item in mini_batch:
        source = Path(item)
        if source.suffix != ".parquet":  # a runtime may hand over every file of the folder
            results.append(f"{source.name}: skipped, not a Parquet part")
            continue
        target = scorer.output / scored_part_name(source)
        rows = score_part(source, target, scorer.model, scorer.features, BATCH_ROWS)
        write_metadata_once(scorer.output, metadata_of(scorer, read_metadata(source.parent)))
        results.append(f"{source.name}: {rows} rows -> {target.name}")
    return results


def metadata_of(scorer: Scorer, input_metadata: dict[str, Any]) -> dict[str, Any]:
    """What predict.py records beside its parts, but the row count, which no one process knows."""
    return output_metadata(
        input_metadata, scorer.model_name, scorer.model_version, None, scorer.model_metadata
    )


def _reported(body: Any) -> Any:
    """Run `body`; any failure becomes a StepError with the step's one line (printed as `error: ...`)."""
    try:
        return body()
    except Exception as error:
        message = one_line(failure_message(error, io_failure=IO_FAILURE))
        print(f"error: {message}", file=sys.stderr, flush=True)
        if isinstance(error, StepError) and str(error) == message:
            raise
        raise StepError(message) from error


def init() -> None:
    """Once per worker process: one thread per process for the model's OpenMP loops (the runtime runs several
    processes a node), then load the model."""
    global _scorer
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    configure_logging()
    args = parse_args(sys.argv[1:])
    _scorer = _reported(lambda: load_scorer(args))
    log.info("model %s version %s, output %s", _scorer.model_name, _scorer.model_version, _scorer.output)


def run(mini_batch: Any) -> list[str]:
    if _scorer is None:
        raise StepError("run() before init()")
    scorer = _scorer
    return _reported(lambda: score_items(scorer, mini_batch))
