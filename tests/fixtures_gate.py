"""Helpers (the quality gate on the emulated workspace, v1 and v2 alike): a model version that predicts one price
far outside the plausible range, feeds registered as the next dataset version, and runs started over HTTP (their
answers read with fixtures_azure_path.finished_run) and the latest blobs. test_quality_gate_azureml.py runs with
them once per backend, one workspace each."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import joblib
import pandas as pd

from emulator.azure import DATASET_NAME, DATASET_NAME_V2, MODEL_NAME, EmulatedAzure
from emulator.functions_host import LoadedApp

CONSTANT_PRICE = 5_000_000.0
# On v1 the fake infers column types from the values: an emptied numeric column says nothing, so it is declared
# (as AmesHousing's registration in docs/steps-and-model.md declares two columns).
EMPTIED_FEATURE = "GrLivArea"


def constant_model_folder(trained_registry: Path, folder: Path, price: float = CONSTANT_PRICE) -> Path:
    """A model folder (model.joblib + metadata.json) predicting `price` for every house: scikit-learn's
    DummyRegressor on the baseline's features, with the baseline's metadata (and so its quality reference)."""
    from sklearn.dummy import DummyRegressor

    metadata = json.loads((trained_registry / MODEL_NAME / "1" / "metadata.json").read_text())
    features = pd.DataFrame([[0] * len(metadata["features"])], columns=metadata["features"])
    folder.mkdir(parents=True)
    joblib.dump(
        DummyRegressor(strategy="constant", constant=price).fit(features, [price]), folder / "model.joblib"
    )
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


def register_feed(azure: EmulatedAzure, frame: pd.DataFrame, folder: Path, name: str) -> None:
    """`frame` as the newest version of the dataset fetch_data reads (v1's tabular dataset, v2's CSV asset)."""
    path = folder / f"{name}.csv"
    frame.to_csv(path, index=False)
    if azure.backend == "azureml-v2":
        azure.fake.register_data_v2(DATASET_NAME_V2, path)
    else:
        azure.fake.register_dataset(DATASET_NAME, path, column_types={EMPTIED_FEATURE: "float"})


def ames_frame(ames_csv: Path) -> pd.DataFrame:
    return pd.read_csv(gzip.open(ames_csv))


def start(app: LoadedApp, parameters: dict) -> str:
    response = app.start_run({"parameters": parameters})
    assert response.status == 202, response
    return response.json["run_id"]


def latest_blobs(azure: EmulatedAzure) -> dict[str, bytes | None]:
    return {
        name: azure.read_datastore(f"latest_predictions/{name}")
        for name in ("predictions.csv", "manifest.json")
    }
