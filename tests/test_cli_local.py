"""`python -m pipeline_def` with the local backend: run (as `make demo` does), status, list, and failures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline_def.settings import PROJECT_ROOT


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline_def", *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_run_prints_the_run_its_steps_the_predictions_path_and_a_preview(local_env: dict[str, str]) -> None:
    done = cli("run", "--backend", "local", "--sample-size", "7", "--show", "3")

    assert done.returncode == 0, done.stderr
    run_id = re.search(r"^run (local_\w+): completed$", done.stdout, re.M).group(1)
    for step in ("fetch_data", "predict", "save_predictions"):
        assert re.search(rf"^\s+{step}\s+completed$", done.stdout, re.M), done.stdout
    path = Path(re.search(r"^predictions_path: (.+)$", done.stdout, re.M).group(1))
    assert path == Path(local_env["LOCAL_WORK_DIR"]) / "datastore/latest_predictions/predictions.csv"
    assert len(pd.read_csv(path)) == 7
    preview = done.stdout[done.stdout.index("PredictedSalePrice") :].splitlines()
    assert len(preview) == 1 + 3  # the header and three rows

    status = cli("status", run_id)
    listing = cli("list")

    assert status.returncode == 0 and f"run {run_id}: completed" in status.stdout
    assert listing.returncode == 0 and listing.stdout.startswith(f"{run_id}  completed")


@pytest.mark.slow
def test_a_failing_run_exits_non_zero_and_names_the_step(
    local_env: dict[str, str], ames_csv: Path, tmp_path: Path
) -> None:
    pd.read_csv(ames_csv).drop(columns=["OverallQual"]).to_csv(tmp_path / "lacking.csv", index=False)

    done = cli(
        "run", "--backend", "local", "--show", "3", env={"LOCAL_DATASET_PATH": str(tmp_path / "lacking.csv")}
    )

    assert done.returncode == 1
    assert re.search(r"^error: run local_\w+ failed: step predict failed: .*OverallQual", done.stderr, re.M)
    assert "PredictedSalePrice" not in done.stdout


def test_a_bad_sample_size_is_refused_before_anything_runs(local_env: dict[str, str]) -> None:
    done = cli("run", "--backend", "local", "--sample-size", "-1")

    assert done.returncode == 1
    assert "error: 'sample_size' must be from 0 to" in done.stderr
    assert not (Path(local_env["LOCAL_WORK_DIR"]) / "runs").exists()


def test_a_node_count_out_of_range_is_refused_before_anything_runs(local_env: dict[str, str]) -> None:
    done = cli("run", "--backend", "local", "--node-count", "101")

    assert done.returncode == 1
    assert "error: 'node_count' must be a whole number from 1 to 100" in done.stderr
    assert not (Path(local_env["LOCAL_WORK_DIR"]) / "runs").exists()


def test_node_count_is_a_run_parameter_checked_like_the_others() -> None:
    from pipeline_def.errors import InvalidRequest
    from pipeline_def.steps import validate_parameters

    assert validate_parameters({"node_count": 4}) == {"node_count": "4"}
    assert validate_parameters({"node_count": "16"}) == {"node_count": "16"}
    for bad in (0, 101, -1, True, 2.5, "four"):
        with pytest.raises(InvalidRequest, match="'node_count' must be a whole number from 1 to 100"):
            validate_parameters({"node_count": bad})


def test_status_of_an_unknown_run_says_so(local_env: dict[str, str]) -> None:
    done = cli("status", "local_20260101T000000_abcdef")

    assert done.returncode == 1
    assert "error: no run with id 'local_20260101T000000_abcdef'" in done.stderr


def test_list_without_runs_says_so(local_env: dict[str, str]) -> None:
    done = cli("--backend", "local", "list")

    assert done.returncode == 0 and done.stdout.strip() == "no runs"
