"""The baseline house-price model (a seeded, log-target gradient-boosting regressor fitted on the Ames data)
and the local model registry the `local` backend's predict step loads it from.

Layout of the registry: `<local_work_dir>/models/<ModelName>/<version>/{model.joblib, metadata.json}`.
The pickle holds scikit-learn, numpy and standard-library objects only: on Azure ML it is loaded where this
package does not exist.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline_def.errors import LocalRunError
from pipeline_def.settings import Settings

if TYPE_CHECKING:  # pandas and scikit-learn are imported inside the functions that need them
    import pandas as pd

TARGET = "SalePrice"
# Row ids (a Kaggle-style `Id`, Ames' `Order`) and the parcel id: they identify a sale and say nothing about its
# price, so a model that split on them would learn the file's order, not houses.
ID_COLUMNS = ("Id", "Order", "PID")
HOLDOUT_FRACTION = 0.2
MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"
DEFAULT_SEED = 42

# The quality gate's reference (docs/quality-gate.md): the key in metadata.json, and how many bins of equal share of
# the training rows' predictions the drift check compares (deciles: enough to see a shift of a tenth of the
# price, few enough that 200 rows fill every bin).
QUALITY_REFERENCE_KEY = "quality_reference"
PREDICTION_BINS = 10

# Chosen on the shipped data (holdout R² about 0.93 to 0.94 over seeds) while training in about 2 seconds.
_LEARNING_RATE = 0.05
_MAX_ITER = 500


# --- computation: frames in, models and numbers out --------------------------------------------------------


def feature_columns(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The model's input columns of `frame`, split into (categorical, numeric), each in the frame's order.

    Every column but the ids and the target is a feature; text columns are categorical.
    """
    import pandas as pd

    features = [c for c in frame.columns if c not in (*ID_COLUMNS, TARGET)]
    categorical = [c for c in features if not pd.api.types.is_numeric_dtype(frame[c])]
    numeric = [c for c in features if c not in categorical]
    return categorical, numeric


def split_holdout(
    frame: pd.DataFrame, seed: int, fraction: float = HOLDOUT_FRACTION
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, holdout): a random `fraction` of the rows held out, the same rows for the same seed."""
    from sklearn.model_selection import train_test_split

    train, holdout = train_test_split(frame, test_size=fraction, random_state=seed)
    return train, holdout


def build_model(categorical: list[str], numeric: list[str], seed: int) -> Any:
    """An unfitted regressor of the price: gradient boosting on log1p(price) with native categorical splits.

    Text columns are cast to object first, so a column that arrives all-empty (read as floats) or as booleans
    still encodes; values never seen in training, and missing values, become NaN, which the trees treat as
    missing instead of failing.
    """
    from operator import methodcaller

    import numpy as np
    from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, OrdinalEncoder

    # methodcaller pickles by reference to the standard library, unlike a lambda or a function of ours.
    as_object = FunctionTransformer(methodcaller("astype", object), feature_names_out="one-to-one")
    encode = OrdinalEncoder(
        handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan
    )
    columns = ColumnTransformer(
        [
            ("categorical", Pipeline([("as_object", as_object), ("encode", encode)]), list(categorical)),
            ("numeric", "passthrough", list(numeric)),
        ],
        verbose_feature_names_out=False,
    )
    boosting = HistGradientBoostingRegressor(
        learning_rate=_LEARNING_RATE,
        max_iter=_MAX_ITER,
        # the encoded categorical columns come first in the ColumnTransformer's output
        categorical_features=list(range(len(categorical))),
        random_state=seed,
    )
    return TransformedTargetRegressor(
        regressor=Pipeline([("columns", columns), ("boosting", boosting)]),
        func=np.log1p,
        inverse_func=np.expm1,
    )


def evaluate(model: Any, frame: pd.DataFrame) -> dict[str, float]:
    """How well `model` predicts the target of `frame`: RMSE and R², in dollars and on the log scale."""
    import numpy as np
    from sklearn.metrics import r2_score, root_mean_squared_error

    truth = frame[TARGET].to_numpy(dtype=float)
    predicted = model.predict(frame[list(model.feature_names_in_)])
    return {
        "rmse": float(root_mean_squared_error(truth, predicted)),
        "r2": float(r2_score(truth, predicted)),
        "rmse_log": float(root_mean_squared_error(np.log1p(truth), np.log1p(predicted))),
        "r2_log": float(r2_score(np.log1p(truth), np.log1p(predicted))),
    }


def train(frame: pd.DataFrame, seed: int = DEFAULT_SEED) -> tuple[Any, dict[str, Any]]:
    """Fit the baseline model on all but a seeded holdout of `frame` and measure it on that holdout.

    Returns (model, facts): the facts are the features and the holdout metrics. The model is the one the
    metrics describe (it has not seen the holdout rows).
    """
    if TARGET not in frame.columns:
        raise LocalRunError(f"cannot train: the training data has no {TARGET!r} column")
    labelled = frame[frame[TARGET].notna()]
    if len(labelled) < 50:
        raise LocalRunError(f"cannot train: the training data has {len(labelled)} priced rows (50 needed)")
    categorical, numeric = feature_columns(labelled)
    features = [c for c in labelled.columns if c in categorical or c in numeric]
    train_rows, holdout_rows = split_holdout(labelled, seed)
    model = build_model(categorical, numeric, seed)
    model.fit(train_rows[features], train_rows[TARGET].to_numpy(dtype=float))
    metrics = evaluate(model, holdout_rows)
    reference = quality_reference(model, train_rows, features)
    facts = {
        "features": list(model.feature_names_in_),
        "categorical_features": categorical,
        "numeric_features": numeric,
        "target": TARGET,
        "train_rows": len(train_rows),
        "holdout_rows": len(holdout_rows),
        **{f"holdout_{name}": value for name, value in metrics.items()},
        QUALITY_REFERENCE_KEY: reference,
    }
    return model, facts


def quality_reference(model: Any, train_rows: pd.DataFrame, features: list[str]) -> dict[str, Any]:
    """What the quality gate compares a run with, taken from the rows the model was fitted on: the target's
    range, each feature's share of missing values, and the distribution of the model's own predictions of
    those rows over PREDICTION_BINS bins of equal share (the drift check's first reference).

    A value falls in bin `searchsorted(edges, value, side="right")`: the step side bins the same way
    (step_scripts/batchpred_steps/quality.py), so the shares here and there are comparable."""
    import numpy as np

    target = train_rows[TARGET].to_numpy(dtype=float)
    predicted = np.asarray(model.predict(train_rows[features]), dtype=float)
    quantiles = np.linspace(0, 1, PREDICTION_BINS + 1)[1:-1]
    # rounded before counting: the step side bins with the edges as written to metadata.json
    edges = np.unique(np.round(np.quantile(predicted, quantiles), 2))
    counts = np.bincount(np.searchsorted(edges, predicted, side="right"), minlength=len(edges) + 1)
    missing = train_rows[features].isna().mean()
    return {
        "target": TARGET,
        "target_min": float(target.min()),
        "target_max": float(target.max()),
        "training_rows": len(train_rows),
        "missing_share": {name: round(float(missing[name]), 6) for name in features},
        "predictions": {
            "source": "the model's predictions of its training rows",
            "rows": len(predicted),
            "edges": [float(edge) for edge in edges],
            "shares": [round(float(count) / len(predicted), 6) for count in counts],
        },
    }


# --- the registry: thin file I/O ---------------------------------------------------------------------------


def model_registry_dir(settings: Settings) -> Path:
    """The local model registry: `<local_work_dir>/models`."""
    return Path(settings.local_work_dir) / "models"


def model_folder(settings: Settings) -> Path:
    """`<registry>/<model name>`: the folder whose numbered subfolders are the model's versions."""
    return model_registry_dir(settings) / settings.model_name


def registered_versions(model_dir: Path) -> list[int]:
    """The complete versions under `<registry>/<ModelName>`, ascending (other entries are ignored)."""
    if not model_dir.is_dir():
        return []
    return sorted(
        int(entry.name)
        for entry in model_dir.iterdir()
        if entry.name.isdigit() and int(entry.name) >= 1 and (entry / MODEL_FILE).is_file()
    )


def read_dataset(path: Path) -> pd.DataFrame:
    """Every row of a CSV, gzip-compressed CSV or Parquet file."""
    import pandas as pd

    try:
        if path.name.lower().endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except Exception as error:  # a missing or corrupt file shows up as many exception types
        raise LocalRunError(f"cannot read the training data {str(path)!r}: {error}") from error


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def register_model(registry: Path, name: str, model: Any, metadata: dict[str, Any]) -> dict[str, Any]:
    """Store `model` as the next version of `name` and return its metadata with "version" and "path".

    The version folder is written aside and renamed into place, so a reader never sees half a model, and two
    concurrent registrations cannot take the same number (the second rename fails and tries the next one).
    """
    import joblib

    model_dir = registry / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    try:
        joblib.dump(model, staging / MODEL_FILE)
        while True:
            versions = registered_versions(model_dir)
            version = versions[-1] + 1 if versions else 1
            record = {"name": name, "version": version, **metadata}
            (staging / METADATA_FILE).write_text(json.dumps(record, indent=2) + "\n")
            try:
                os.rename(staging, model_dir / str(version))
            except OSError:
                if (model_dir / str(version)).exists():
                    continue  # someone registered this version meanwhile
                raise
            return {**record, "path": str(model_dir / str(version))}
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def train_and_register(settings: Settings, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """Train the baseline model on settings.local_dataset_path and register it as the next version of
    settings.model_name in the local registry. Returns its metadata, with "version" and "path"."""
    import sklearn

    dataset = Path(settings.local_dataset_path)
    if not dataset.is_file():
        raise LocalRunError(f"cannot train: the training data {str(dataset)!r} is not a file")
    checksum = file_sha256(dataset)
    model, facts = train(read_dataset(dataset), seed)
    metadata = {
        **facts,
        "seed": seed,
        "training_data_path": str(dataset),
        "training_data_sha256": checksum,
        "scikit_learn_version": sklearn.__version__,
        "python_version": platform.python_version(),
        "trained_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return register_model(model_registry_dir(settings), settings.model_name, model, metadata)


def ensure_model(settings: Settings) -> Path:
    """`<registry>/<model_name>`, after training the baseline into it when it holds no version yet, or when its
    newest version predates the quality gate (no `quality_reference` in its metadata.json: save_predictions
    could never publish with it, so the baseline is trained again as the next version)."""
    model_dir = model_folder(settings)
    if not why_train(model_dir):
        return model_dir
    model_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(model_dir / ".train.lock"):
        # a concurrent caller may have trained while this one waited for the lock
        if why_train(model_dir):
            train_and_register(settings)
    return model_dir


def why_train(model_dir: Path) -> str | None:
    """Why the local registry needs the baseline trained now (a sentence for the log), or None."""
    versions = registered_versions(model_dir)
    if not versions:
        return "no model yet"
    try:
        metadata = json.loads((model_dir / str(versions[-1]) / METADATA_FILE).read_text())
    except (OSError, ValueError):
        metadata = {}
    if not isinstance(metadata, dict) or QUALITY_REFERENCE_KEY not in metadata:
        return f"version {versions[-1]} predates the quality gate (no {QUALITY_REFERENCE_KEY})"
    return None


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` (where the OS offers one), so two local runs that start at once
    on an empty registry train one model, not two."""
    try:
        import fcntl
    except ImportError:  # Windows: a rare duplicate version is harmless
        yield
        return
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
