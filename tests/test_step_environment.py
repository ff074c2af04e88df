"""The steps' environment as Azure ML builds it: step_scripts/requirements.txt resolves on Python 3.11 into a
venv holding exactly its pins, the three steps run there (offline) on a model trained in the dev venv, and the
rest of the environment (conda channels, base image) is what the pipeline publishes."""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from packaging.requirements import Requirement

from emulator.step_env import DEFAULT_REQUIREMENTS, MARKER, StepEnvError, step_python
from pipeline_def.settings import PROJECT_ROOT, STEP_SCRIPTS_DIR
from pipeline_def.steps import STEP_ENVIRONMENT
from tests.fixtures_local import read_parts

if str(STEP_SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(STEP_SCRIPTS_DIR))
predict_step = importlib.import_module("batchpred_steps.score")

# Every proxy variable (dataprep's Rust reader reads only the lower-case ones) aimed at a closed port: a step
# that reaches for the network fails at once instead of waiting.
NO_NETWORK = {
    name: "http://127.0.0.1:9" for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")
}


@pytest.fixture(scope="module")
def step_env() -> Path:
    """The steps' interpreter (built once per requirements hash, in $STEP_ENV_CACHE)."""
    return step_python(DEFAULT_REQUIREMENTS)


def offline_env(home: Path, **extra: str) -> dict[str, str]:
    """A step's environment with no Azure ML job variables, a private HOME and no way out to the network."""
    return {"PATH": os.environ["PATH"], "HOME": str(home), "no_proxy": "", **NO_NETWORK, **extra}


def run_in(python: Path, *args: str | Path, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(python), *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{args[:2]} failed:\n{done.stdout}\n{done.stderr}"
    return done


def pinned(requirements_file: Path) -> dict[str, str]:
    """name -> version of every `name==version` line."""
    pins = {}
    for line in requirements_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"not pinned: {line}"
            pins[requirement.name] = specifier.version
    return pins


# --- the requirements resolve, and the venv holds them ----------------------------------------------------


@pytest.mark.step_env
def test_the_requirements_resolve_into_a_venv_with_exactly_the_pinned_versions(step_env: Path, tmp_path):
    pins = pinned(DEFAULT_REQUIREMENTS)
    assert {"pandas", "numpy", "scikit-learn", "azureml-core", "azureml-dataset-runtime"} <= set(pins)
    script = "import json, sys\nfrom importlib.metadata import version\nprint(json.dumps({n: version(n) for n in sys.argv[1:]}))"
    done = run_in(step_env, "-c", script, *pins, env=offline_env(tmp_path), cwd=tmp_path)
    assert json.loads(done.stdout) == pins
    version = run_in(
        step_env,
        "-c",
        "import platform; print(platform.python_version())",
        env=offline_env(tmp_path),
        cwd=tmp_path,
    )
    assert version.stdout.startswith(STEP_ENVIRONMENT["python_version"] + ".")
    # no broken or missing dependency among everything pip installed
    run_in(step_env, "-m", "pip", "check", env=offline_env(tmp_path), cwd=tmp_path)


@pytest.mark.step_env
def test_the_steps_run_in_their_venv_offline_on_a_model_trained_in_the_dev_venv(
    step_env: Path, trained_registry: Path, ames_csv: Path, tmp_path: Path
):
    env = offline_env(tmp_path / "home")
    (tmp_path / "home").mkdir()
    model_file = trained_registry / "HousePrices" / "1" / "model.joblib"
    new_data, predictions, destination = tmp_path / "A", tmp_path / "B", tmp_path / "datastore"

    run_in(step_env, STEP_SCRIPTS_DIR / "fetch_data.py", "--dataset", ames_csv, "--sample-size", "20",
           "--output", new_data, env=env, cwd=tmp_path)  # fmt: skip
    run_in(step_env, STEP_SCRIPTS_DIR / "predict.py", "--input", new_data, "--model", model_file,
           "--output", predictions, env=env, cwd=tmp_path)  # fmt: skip
    run_in(step_env, STEP_SCRIPTS_DIR / "save_predictions.py", "--input", predictions,
           "--destination", destination, "--run-id", "offline", env=env, cwd=tmp_path)  # fmt: skip

    rows = read_parts(new_data)
    assert len(rows) == 20 and "SalePrice" not in rows.columns
    saved = pd.read_csv(destination / "latest_predictions" / "predictions.csv")
    assert list(saved["PID"]) == list(rows["PID"])
    assert list(saved.columns) == [*rows.columns, "PredictedSalePrice"]
    # The step venv scores exactly as the dev venv that trained the model.
    model = joblib.load(model_file)
    expected = predict_step.predict_frame(model, rows, list(model.feature_names_in_))["PredictedSalePrice"]
    np.testing.assert_allclose(saved["PredictedSalePrice"].to_numpy(), expected.to_numpy(), rtol=1e-9)
    manifest = json.loads((destination / "latest_predictions" / "manifest.json").read_text())
    assert (manifest["rows"], manifest["model_name"], manifest["model_version"]) == (20, "HousePrices", 1)


@pytest.mark.step_env
def test_the_parallel_predict_runs_in_the_steps_venv_through_the_local_runtime(
    step_env: Path, trained_registry: Path, ames_csv: Path, tmp_path: Path
):
    env = offline_env(tmp_path / "home")
    (tmp_path / "home").mkdir()
    new_data, predictions = tmp_path / "A", tmp_path / "B"
    run_in(step_env, STEP_SCRIPTS_DIR / "fetch_data.py", "--dataset", ames_csv, "--sample-size", "0",
           "--output", new_data, "--part-bytes", "60000", env=env, cwd=tmp_path)  # fmt: skip

    run_in(step_env, PROJECT_ROOT / "pipeline_def" / "local" / "parallel.py",
           "--entry-script", STEP_SCRIPTS_DIR / "score_parallel.py", "--items", new_data, "--workers", "2", "--",
           "--model", trained_registry / "HousePrices", "--predictions-dir", predictions, env=env, cwd=tmp_path)  # fmt: skip

    rows, scored = read_parts(new_data), read_parts(predictions)
    assert len(list(new_data.glob("part-*.parquet"))) >= 2
    assert list(scored["Order"]) == list(rows["Order"]) and len(scored) == 2930
    model = joblib.load(trained_registry / "HousePrices" / "1" / "model.joblib")
    expected = predict_step.predict_frame(model, rows, list(model.feature_names_in_))["PredictedSalePrice"]
    np.testing.assert_allclose(scored["PredictedSalePrice"].to_numpy(), expected.to_numpy(), rtol=1e-9)


@pytest.fixture
def served_csv(ames_csv: Path, tmp_path: Path) -> Iterator[str]:
    """The shipped Ames CSV, uncompressed, over plain HTTP on 127.0.0.1."""
    folder = tmp_path / "served"
    folder.mkdir()
    (folder / "ames.csv").write_bytes(pd.read_csv(ames_csv).to_csv(index=False).encode())
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/ames.csv"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


TABULAR_TO_PARQUET = """
import json, sys
from azureml.core import Dataset
files = Dataset.Tabular.from_delimited_files(path=sys.argv[1]).to_parquet_files().download(target_path="parts")
import pandas
frame = pandas.concat([pandas.read_parquet(f) for f in sorted(files)], ignore_index=True)
print(json.dumps({
    "pandas": pandas.__version__,
    "files": len(files),
    "shape": list(frame.shape),
    "dtypes": {name: str(frame[name].dtype) for name in ("Order", "SalePrice", "LotFrontage", "MSZoning")},
    "zoning": frame["MSZoning"].tolist(),
    "prices": frame["SalePrice"].tolist(),
}))
"""


@pytest.mark.step_env
def test_dataprep_writes_a_tabular_dataset_as_parquet_the_step_venvs_pandas_reads(
    step_env: Path, served_csv: str, ames_csv: Path, tmp_path: Path
):
    # What aml_v1.py's fetch_data does with the registered dataset (to_parquet_files().download(), through
    # dataprep's Rust runtime), without the [pandas] extra (which would pin pandas<2 and numpy<2).
    env = offline_env(tmp_path, no_proxy="127.0.0.1,localhost")
    done = run_in(step_env, "-c", TABULAR_TO_PARQUET, served_csv, env=env, cwd=tmp_path)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    reference = pd.read_csv(ames_csv)
    assert result["pandas"] == pinned(DEFAULT_REQUIREMENTS)["pandas"]
    assert result["files"] >= 1
    assert result["shape"] == list(reference.shape)
    assert result["dtypes"]["Order"] == "int64" and result["dtypes"]["LotFrontage"] == "float64"
    assert result["zoning"] == reference["MSZoning"].tolist()
    assert result["prices"] == reference["SalePrice"].tolist()


# --- the rest of the environment: conda channels and the base image ----------------------------------------


def test_the_published_environment_is_conda_forge_only_on_a_dated_image_the_sdk_lists(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # the SDK writes under $HOME/.azureml
    from azureml.core.runconfig import DEFAULT_CPU_IMAGE

    from pipeline_def.azureml.definition import _run_configuration, step_requirements

    environment = _run_configuration(STEP_SCRIPTS_DIR).environment
    text = environment.python.conda_dependencies.serialize_to_string()  # the conda YAML Azure ML builds from
    spec = environment.python.conda_dependencies.as_dict()

    assert spec["channels"] == list(STEP_ENVIRONMENT["conda_channels"]) == ["conda-forge", "nodefaults"]
    assert not re.search(r"\banaconda\b|^\s*-\s*defaults\s*$", text, re.MULTILINE), text
    conda = [item for item in spec["dependencies"] if isinstance(item, str)]
    assert conda == [f"python={STEP_ENVIRONMENT['python_version']}", *STEP_ENVIRONMENT["conda_packages"]]
    (pip,) = [item["pip"] for item in spec["dependencies"] if isinstance(item, dict)]
    assert pip == step_requirements(STEP_SCRIPTS_DIR)  # as written: no pip option, no azureml-defaults
    assert "azureml-defaults" not in text

    image = environment.docker.base_image
    assert image == STEP_ENVIRONMENT["base_image"]
    assert re.fullmatch(r"mcr\.microsoft\.com/azureml/[\w.-]+:\d{8}\.v\d+", image), image
    assert image == DEFAULT_CPU_IMAGE, "the SDK lists another dated image: move to it on purpose"


# --- the builder: atomic, shared, and clean when pip fails --------------------------------------------------


def build_in_process(requirements: Path, cache: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "emulator.step_env", str(requirements)],
        cwd=PROJECT_ROOT,
        env={**os.environ, "STEP_ENV_CACHE": str(cache)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.step_env
def test_two_processes_building_at_once_share_one_build(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# nothing but pip\n")
    cache = tmp_path / "cache"

    builders = [build_in_process(requirements, cache) for _ in range(2)]
    outputs = [builder.communicate(timeout=600) for builder in builders]

    assert [builder.returncode for builder in builders] == [0, 0], outputs
    paths = {stdout.strip() for stdout, _ in outputs}
    assert len(paths) == 1
    assert sum("built the steps' venv" in stderr for _, stderr in outputs) == 1
    venv = Path(paths.pop()).parents[1]
    assert sorted(p.name for p in cache.iterdir()) == [venv.name, f"{venv.name}.lock"]
    assert json.loads((venv / MARKER).read_text())["requirements_file"] == str(requirements)
    # scripts name the venv's final folder, not the temporary one it was built in
    assert (venv / "bin" / "pip").read_text().splitlines()[0] == f"#!{venv}/bin/python"

    again = build_in_process(requirements, cache)
    stdout, stderr = again.communicate(timeout=60)
    assert (again.returncode, stdout.strip(), stderr) == (0, str(venv / "bin" / "python"), "")


@pytest.mark.step_env
def test_a_failed_build_raises_with_pips_error_and_leaves_no_half_built_venv(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("--no-index\nsurely-not-installable==0.0.0\n")
    cache = tmp_path / "cache"

    with pytest.raises(StepEnvError, match=r"(?s)pip install -r .*No matching distribution found"):
        step_python(requirements, cache)

    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []
    shutil.rmtree(cache)
