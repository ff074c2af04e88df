"""Pipeline step 2 of 3, predict: add a `PredictedSalePrice` column to every row of the input, scored by the
registered model; every input column passes through unchanged and in order.

The input is streamed in batches of `--batch-rows` and written as one Parquet part per batch, so memory stays
bounded however many rows come in. `--model` is a .joblib file, a model version folder, a local registry
folder `<registry>/<ModelName>` (version from `--model-version`), or on Azure ML a registered model
`name[:version]`.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepio import (
    METADATA_FILE,
    PART_NAME,
    PREDICTION_COLUMN,
    StepError,
    aml_workspace,
    iter_batches,
    parquet_parts,
    read_metadata,
    run_step,
    step_parser,
    write_frame,
    write_metadata,
)

if TYPE_CHECKING:  # pandas is imported where frames are read, so `--help` stays fast
    import pandas as pd
    from azureml.core import Workspace

log = logging.getLogger("predict")

MODEL_FILE = "model.joblib"
MODEL_METADATA_FILE = "metadata.json"
MODEL_SUFFIXES = (".joblib", ".pkl", ".pickle")
# Tuned with bench/predict_step.py on 1,000,000 rows: from 10,000 to 50,000 rows a batch the CPU time is the
# same (and below one whole-frame predict: the trees walk a batch that stays in cache), while peak memory
# grows with the batch (about 370 MiB at 20,000 rows, 630 MiB at 50,000). Smaller batches pay the model's
# fixed cost per call (one pass over 500 trees) too often.
DEFAULT_BATCH_ROWS = 20_000
_MODEL_REFERENCE = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9_-]{0,254})(?::(?P<version>[0-9]+|latest))?")


# --- computation -----------------------------------------------------------------------------------------


def missing_columns(columns: list[str], features: list[str]) -> list[str]:
    """The model's features that `columns` lacks, in the model's order."""
    present = set(columns)
    return [feature for feature in features if feature not in present]


def predict_frame(model: Any, frame: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """`frame` with a `PredictedSalePrice` column added at the end; every other column untouched, in order.

    Only the model's `features` are given to it, in the order it was fitted with, so extra columns (ids,
    even the true price) and columns in another order are fine.
    """
    missing = missing_columns(list(frame.columns), features)
    if missing:
        raise StepError(missing_message(missing))
    if PREDICTION_COLUMN in frame.columns:
        raise StepError(f"the input already has a {PREDICTION_COLUMN!r} column; refusing to overwrite it")
    if len(frame) == 0:  # scikit-learn refuses zero rows; an empty batch simply has no predictions
        import pandas as pd

        return frame.assign(**{PREDICTION_COLUMN: pd.Series(index=frame.index, dtype="float64")})
    try:
        predictions = model.predict(frame[features])
    except Exception as error:  # whatever the model raises, the step reports it in one line
        raise StepError(f"the model could not score the rows: {type(error).__name__}: {error}") from error
    return frame.assign(**{PREDICTION_COLUMN: predictions})


def missing_message(missing: list[str]) -> str:
    shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
    return f"the input lacks {len(missing)} column(s) the model needs: {shown}"


def model_features(model: Any, model_metadata: dict[str, Any]) -> list[str]:
    """The input columns the model needs: what scikit-learn recorded at fit time, else the registry's note."""
    names = getattr(model, "feature_names_in_", None)
    if names is not None:
        return [str(name) for name in names]
    if model_metadata.get("features"):
        return [str(name) for name in model_metadata["features"]]
    raise StepError("the model does not say which columns it needs (no feature_names_in_, no metadata)")


def parse_model_reference(reference: str, model_version: str) -> tuple[str, str]:
    """(name, version) of a registered model given as `name[:version]`; `--model-version` wins unless it is
    "latest"."""
    match = _MODEL_REFERENCE.fullmatch(reference)
    if match is None:
        raise StepError(f"--model {reference!r} is neither an existing path nor a model name[:version]")
    version = normalise_version(model_version)
    return match["name"], version if version != "latest" else (match["version"] or "latest")


def normalise_version(value: str) -> str:
    """'latest' or a positive whole number as text; anything else is an error."""
    text = str(value).strip()
    if text.lower() in ("", "latest"):
        return "latest"
    if text.isascii() and text.isdigit() and int(text) >= 1:
        return str(int(text))
    raise StepError(f"model version must be a positive whole number or 'latest', not {value!r}")


def choose_version(available: list[int], requested: str) -> int:
    """The version to load among `available`: the highest for "latest", else exactly the one asked for."""
    if not available:
        raise StepError("the model registry folder holds no version")
    requested = normalise_version(requested)
    if requested == "latest":
        return max(available)
    if int(requested) not in available:
        shown = ", ".join(str(v) for v in sorted(available))
        raise StepError(f"model version {requested} is not registered (available: {shown})")
    return int(requested)


def output_metadata(
    input_metadata: dict[str, Any], model_name: str, model_version: int | None, rows: int
) -> dict[str, Any]:
    """What save_predictions learns about this step's output: the input's notes plus the model and rows."""
    return {
        **input_metadata,
        "model_name": model_name,
        "model_version": model_version,
        "rows": rows,
        "prediction_column": PREDICTION_COLUMN,
    }


# --- finding and loading the model -----------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    path: Path  # the pickled model
    name: str
    version: int | None
    metadata: dict[str, Any]  # the registry's metadata.json beside the model, or {}


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path` (a model's registry notes), or {} when the file is missing or holds something
    else: the notes are optional, the model file is what counts."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def registry_versions(model_dir: Path) -> list[int]:
    return sorted(
        int(entry.name)
        for entry in model_dir.iterdir()
        if entry.name.isdigit() and int(entry.name) >= 1 and (entry / MODEL_FILE).is_file()
    )


def find_model_file(folder: Path) -> Path:
    """The pickled model inside a version folder (or a downloaded model folder): model.joblib, else the one
    file with a model suffix."""
    if (folder / MODEL_FILE).is_file():
        return folder / MODEL_FILE
    candidates = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(MODEL_SUFFIXES))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise StepError(f"no model file ({', '.join(MODEL_SUFFIXES)}) in {str(folder)!r}")
    raise StepError(f"{len(candidates)} model files in {str(folder)!r}; name the one to use")


def local_model_source(path: Path, model_version: str) -> ModelSource:
    """The model a local path names: a model file, a version folder, or a registry folder of versions (the
    one `model_version` picks)."""
    requested = normalise_version(model_version)
    registry = (
        path.is_dir() and not (path / MODEL_FILE).is_file() and any(p.name.isdigit() for p in path.iterdir())
    )
    if registry:
        path = path / str(choose_version(registry_versions(path), requested))
    file = find_model_file(path) if path.is_dir() else path
    metadata = read_json_object(file.parent / MODEL_METADATA_FILE)
    version = metadata.get("version") if isinstance(metadata.get("version"), int) else None
    if not registry and requested != "latest" and version is not None and version != int(requested):
        raise StepError(f"model version {requested} was asked for, but {str(file)!r} is version {version}")
    return ModelSource(
        path=file, name=str(metadata.get("name") or file.stem), version=version, metadata=metadata
    )


def download_registered_model(workspace: Workspace, name: str, version: str, target: Path) -> ModelSource:
    """Download a model registered in the workspace of this Azure ML run (only runs on Azure ML)."""
    from azureml.core import Model

    try:
        model = Model(workspace, name=name, version=None if version == "latest" else int(version))
        downloaded = Path(model.download(target_dir=str(target), exist_ok=True))
    except Exception as error:
        raise StepError(f"cannot get registered model {name}:{version}: {error}") from error
    file = find_model_file(downloaded) if downloaded.is_dir() else downloaded
    metadata = read_json_object(file.parent / MODEL_METADATA_FILE)
    return ModelSource(path=file, name=model.name, version=int(model.version), metadata=metadata)


def resolve_model(reference: str, model_version: str, download_dir: Path) -> ModelSource:
    path = Path(reference)
    if path.exists():
        return local_model_source(path, model_version)
    name, version = parse_model_reference(reference, model_version)
    workspace = aml_workspace(
        f"model {reference!r} is not an existing path (a registered model name is resolved only on Azure ML)"
    )
    return download_registered_model(workspace, name, version, download_dir)


def load_model(path: Path) -> Any:
    import joblib

    try:
        model = joblib.load(path)
    except Exception as error:  # truncated, corrupt or foreign files fail in many ways
        raise StepError(
            f"cannot load the model file {str(path)!r}: {type(error).__name__}: {error}"
        ) from error
    if not callable(getattr(model, "predict", None)):
        raise StepError(f"the model file {str(path)!r} holds a {type(model).__name__}, which cannot predict")
    return model


# --- the step --------------------------------------------------------------------------------------------


def input_columns(folder: Path) -> list[str]:
    """The columns of the input, from the first Parquet part's schema (nothing is read)."""
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(parquet_parts(folder)[0]).names)
    except StepError:
        raise
    except Exception as error:
        raise StepError(f"cannot read the input's schema: {type(error).__name__}: {error}") from error


def empty_input_frame(folder: Path) -> pd.DataFrame:
    """The input's columns with no rows, for an input that holds no row at all."""
    import pyarrow.parquet as pq

    return pq.read_schema(parquet_parts(folder)[0]).empty_table().to_pandas()


def clear_output(folder: Path) -> None:
    """Remove what a previous attempt of this step left, so its parts cannot mix with this attempt's and its
    `_metadata.json` (written last) cannot vouch for a failed attempt."""
    if folder.is_dir():
        for part in folder.glob(PART_NAME.replace("{index:05d}", "*")):
            part.unlink()
        (folder / METADATA_FILE).unlink(missing_ok=True)


def score(source: Path, output: Path, model: Any, features: list[str], batch_rows: int) -> int:
    """Score every row of `source` into parts of `output`, one batch at a time; returns the rows written."""
    rows = 0
    parts = 0
    for batch in iter_batches(source, batch_rows):
        write_frame(output, predict_frame(model, batch, features), index=parts)
        parts += 1
        rows += len(batch)
    if parts == 0:
        # no rows at all: still hand over the columns, the prediction column included, as an empty part
        write_frame(output, predict_frame(model, empty_input_frame(source), features), index=0)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = step_parser(__doc__)
    parser.add_argument(
        "--input", required=True, help="folder of Parquet parts to score (fetch_data's output)"
    )
    parser.add_argument(
        "--model", required=True, help="a .joblib file, a model (registry) folder, or name[:version]"
    )
    parser.add_argument(
        "--model-version",
        default="latest",
        help="'latest' (default) or a version number; wins over ':version'",
    )
    parser.add_argument("--output", required=True, help="folder to write the scored rows to (Parquet parts)")
    parser.add_argument(
        "--batch-rows",
        type=int,
        default=DEFAULT_BATCH_ROWS,
        help=f"rows scored and written at a time (default {DEFAULT_BATCH_ROWS})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_step(lambda: predict(args), io_failure="cannot read the input or write the output")


def predict(args: argparse.Namespace) -> None:
    if args.batch_rows < 1:
        raise StepError(f"--batch-rows must be at least 1, not {args.batch_rows}")
    source, output = Path(args.input), Path(args.output)
    started = time.monotonic()
    columns = input_columns(source)  # checks the input before the model is even loaded
    if output.resolve() == source.resolve():
        raise StepError("--output must not be the --input folder")
    input_metadata = read_metadata(source)
    with tempfile.TemporaryDirectory(prefix="predict-model-") as download_dir:
        model_source = resolve_model(args.model, args.model_version, Path(download_dir))
        model = load_model(model_source.path)
    features = model_features(model, model_source.metadata)
    missing = missing_columns(columns, features)
    if missing:
        raise StepError(missing_message(missing))
    log.info("model %s version %s from %s", model_source.name, model_source.version, model_source.path)
    clear_output(output)
    rows = score(source, output, model, features, args.batch_rows)
    write_metadata(output, output_metadata(input_metadata, model_source.name, model_source.version, rows))
    if rows == 0:
        log.warning("the input holds no rows: wrote an empty output with the %s column", PREDICTION_COLUMN)
    elapsed = time.monotonic() - started
    log.info(
        "scored %d rows in %.1f s (%.0f rows/s) into %s", rows, elapsed, rows / max(elapsed, 1e-9), output
    )


if __name__ == "__main__":
    sys.exit(main())
