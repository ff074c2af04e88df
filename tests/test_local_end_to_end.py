"""The whole pipeline on this machine, on the shipped Ames data: the predictions it saves are real ones."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline_def.local.backend import LocalBackend
from pipeline_def.settings import load_settings


def r_squared(truth: pd.Series, predicted: pd.Series) -> float:
    residual = ((truth - predicted) ** 2).sum()
    total = ((truth - truth.mean()) ** 2).sum()
    return float(1 - residual / total)


@pytest.mark.slow
def test_every_row_is_scored_and_the_predictions_agree_with_the_true_prices(
    local_env: dict[str, str], ames_csv: Path
) -> None:
    backend = LocalBackend(load_settings())

    run = backend.run(backend.published_target(), {"sample_size": "0"}, {"trigger": "test"})

    assert run.status == "completed", run.error
    predicted = pd.read_csv(run.predictions_path)
    truth = pd.read_csv(ames_csv, usecols=["Order", "PID", "SalePrice"])
    joined = predicted.merge(truth, on=["Order", "PID"], how="inner", validate="one_to_one")
    assert len(predicted) == len(joined) == 2930
    assert "SalePrice" not in predicted.columns  # fetch_data dropped the target before predicting
    assert predicted["PredictedSalePrice"].notna().all() and (predicted["PredictedSalePrice"] > 0).all()
    assert r_squared(joined["SalePrice"], joined["PredictedSalePrice"]) > 0.85
    manifest = json.loads((Path(run.predictions_path).parent / "manifest.json").read_text())
    assert manifest["rows"] == 2930 and manifest["run_id"] == run.run_id


@pytest.mark.slow
def test_a_sample_of_ten_yields_exactly_ten_distinct_houses(
    local_env: dict[str, str], ames_csv: Path
) -> None:
    backend = LocalBackend(load_settings())

    run = backend.run(backend.published_target(), {"sample_size": "10"}, {})

    assert run.status == "completed", run.error
    predicted = pd.read_csv(run.predictions_path)
    assert len(predicted) == 10 and predicted["PID"].is_unique
    assert set(predicted["PID"]) <= set(pd.read_csv(ames_csv, usecols=["PID"])["PID"])
    datastore = Path(local_env["LOCAL_WORK_DIR"]) / "datastore"
    history = list(datastore.glob(f"history/*/{run.run_id}/predictions.csv"))
    assert len(history) == 1 and history[0].read_bytes() == Path(run.predictions_path).read_bytes()
