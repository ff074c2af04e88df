"""predict's logic: find and load the model in a local folder, and score frames with it, batch by batch."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchpred_steps.errors import StepError
from batchpred_steps.handoff import (
    METADATA_FILE,
    PART_NAME,
    PREDICTION_COLUMN,
    iter_batches,
    parquet_parts,
    write_frame,
)

if TYPE_CHECKING:
    import pandas as pd

MODEL_FILE = "model.joblib"
MODEL_METADATA_FILE = "metadata.json"
MODEL_SUFFIXES = (".joblib", ".pkl", ".pickle")
# What the model's metadata.json records for the quality gate, handed on to save_predictions (quality.py).
QUALITY_REFERENCE_KEY = "quality_reference"


# --- computation -----------------------------------------------------------------------------------------


def missing_columns(columns: list[str], features: list[str]) -> list[str]:
    """The model's features that `columns` lacks, in the model's order."""
    present = set(columns)
    return [feature for feature in features if feature not in present]


def missing_message(missing: list[str]) -> str:
    shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
    return f"the input lacks {len(missing)} column(s) the model needs: {shown}"


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


def model_features(model: Any, model_metadata: dict[str, Any]) -> list[str]:
    """The input columns the model needs: what scikit-learn recorded at fit time, else the registry's note."""
    names = getattr(model, "feature_names_in_", None)
    if names is not None:
        return [str(name) for name in names]
    if model_metadata.get("features"):
        return [str(name) for name in model_metadata["features"]]
    raise StepError("the model does not say which columns it needs (no feature_names_in_, no metadata)")


def normalise_version(value: str | int) -> str:
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
    input_metadata: dict[str, Any],
    model_name: str,
    model_version: int | None,
    rows: int | None,
    model_metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What save_predictions learns about this step's output: the input's notes plus the model and rows (None
    from a parallel predict's processes, none of which knows the total), and the quality gate's reference the
    model recorded at training (its metadata.json's, when it has one)."""
    reference = (model_metadata or {}).get(QUALITY_REFERENCE_KEY)
    return {
        **input_metadata,
        "model_name": model_name,
        "model_version": model_version,
        "rows": rows,
        "prediction_column": PREDICTION_COLUMN,
        **({QUALITY_REFERENCE_KEY: reference} if reference is not None else {}),
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


def is_registry_folder(path: Path) -> bool:
    """A local registry folder `<registry>/<ModelName>` holds numbered version folders, not a model."""
    return (
        path.is_dir() and not (path / MODEL_FILE).is_file() and any(p.name.isdigit() for p in path.iterdir())
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


def resolve_model(
    path: str | Path, model_version: str = "latest", model_name: str | None = None
) -> ModelSource:
    """The model `path` names, with the name and version to record.

    `path` is a model folder (what Azure ML downloads), a model file, or a local registry folder of numbered
    versions, of which `model_version` picks one ("latest": the highest). For a folder or file the platform
    already chose the version: a numeric `model_version` is recorded as given, else the folder's
    metadata.json says. `model_name` is recorded as given, else metadata.json's name, else the file's stem.
    """
    given = Path(path)
    if not given.exists():
        raise StepError(f"model {str(given)!r} does not exist")
    requested = normalise_version(model_version)
    registry = is_registry_folder(given)
    if registry:
        given = given / str(choose_version(registry_versions(given), requested))
    file = find_model_file(given) if given.is_dir() else given
    metadata = read_json_object(file.parent / MODEL_METADATA_FILE)
    noted = metadata.get("version") if isinstance(metadata.get("version"), int) else None
    if registry:
        version: int | None = int(given.name)
    else:
        version = int(requested) if requested != "latest" else noted
    name = model_name or str(metadata.get("name") or file.stem)
    return ModelSource(path=file, name=name, version=version, metadata=metadata)


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


# --- scoring a folder ------------------------------------------------------------------------------------


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


# --- scoring one mini-batch item (the parallel predict) ----------------------------------------------------


def scored_part_name(item: str | os.PathLike) -> str:
    """The output part of the input part `item`: `part-<its stem>.parquet`. Named after the input alone, so a
    retried mini-batch overwrites its part, never adds a second one."""
    return f"part-{Path(item).stem}.parquet"


def frame_part_name(frame: pd.DataFrame) -> str:
    """The output part of a tabular mini-batch: `part-<16 hex of a hash of its content>.parquet`, the same for
    the same rows however often they are scored."""
    import pandas as pd

    digest = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return f"part-{digest.hexdigest()[:16]}.parquet"


def score_frames(frames: Iterator[pd.DataFrame], target: Path, model: Any, features: list[str]) -> int:
    """Score `frames` into the one Parquet file `target`, written whole or not at all (a temporary file in its
    folder, renamed into place); returns the rows. No frame at all leaves no file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    rows, writer = 0, None
    try:
        for frame in frames:
            table = pa.Table.from_pandas(predict_frame(model, frame, features), preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(temp, table.schema)
            writer.write_table(table.cast(writer.schema) if table.schema != writer.schema else table)
            rows += len(frame)
        if writer is not None:
            writer.close()
            writer = None
            os.replace(temp, target)
    finally:
        if writer is not None:
            writer.close()
        Path(temp).unlink(missing_ok=True)
    return rows


def score_part(source: Path, target: Path, model: Any, features: list[str], batch_rows: int) -> int:
    """Score every row of the Parquet part `source` into `target`, `batch_rows` at a time; returns the rows."""
    import pyarrow.parquet as pq

    def frames() -> Iterator[pd.DataFrame]:
        with pq.ParquetFile(source) as parquet:
            if parquet.metadata.num_rows == 0:
                yield parquet.schema_arrow.empty_table().to_pandas()
                return
            for batch in parquet.iter_batches(batch_size=batch_rows):
                yield batch.to_pandas()

    try:
        return score_frames(frames(), target, model, features)
    except (StepError, OSError):
        raise
    except Exception as error:  # pyarrow reports a corrupt part with several exception types
        raise StepError(
            f"cannot read the input part {str(source)!r}: {type(error).__name__}: {error}"
        ) from error


def score_frame(frame: pd.DataFrame, target: Path, model: Any, features: list[str], batch_rows: int) -> int:
    """Score the rows of `frame` into `target`, `batch_rows` at a time; returns the rows."""
    starts = range(0, len(frame), batch_rows) if len(frame) else range(1)
    return score_frames((frame.iloc[start : start + batch_rows] for start in starts), target, model, features)
