"""Fixtures (local): the `local` backend in a temporary work dir (`local_env`), and helpers to run a step
script the way the runner does (a separate process) or to import its pure functions."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

from pipeline_def.settings import PROJECT_ROOT, STEP_SCRIPTS_DIR

STEP_TIMEOUT_SECONDS = 120.0
# Settings a developer's shell may hold that would change what the local backend does in a test.
_LOCAL_SETTINGS = (
    "LOCAL_DATASET_PATH",
    "AML_MODEL_NAME",
    "AML_MODEL_VERSION",
    "PIPELINE_SAMPLE_SIZE",
    "PIPELINE_OVERLAP",
    "PIPELINE_RUN_ID",
    "AZUREML_RUN_ID",
    "AZURE_STORAGE_CONNECTION_STRING",
)


@pytest.fixture
def local_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, trained_registry: Path
) -> Iterator[dict[str, str]]:
    """PIPELINE_BACKEND=local with LOCAL_WORK_DIR a fresh tmp dir whose model registry already holds the
    session's trained model (so no test retrains); returns what it set."""
    from pipeline_def.service import reset_service

    work_dir = tmp_path / "local-work"
    shutil.copytree(trained_registry, work_dir / "models")
    for name in _LOCAL_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    values = {"PIPELINE_BACKEND": "local", "LOCAL_WORK_DIR": str(work_dir)}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    reset_service()
    try:
        yield values
    finally:
        reset_service()


def read_parts(folder: str | os.PathLike) -> pd.DataFrame:
    """Every row a step wrote into `folder`, as one frame: its Parquet parts, found as the next step finds them."""
    parts = load_step_module("batchpred_steps.handoff").parquet_parts(folder)
    return pd.concat([pd.read_parquet(part) for part in parts], ignore_index=True)


def load_step_module(name: str) -> ModuleType:
    """A step script or a module of the steps' core (`batchpred_steps.fetch`) imported, for its pure
    functions (the scripts import `batchpred_steps` as a sibling, as they do on Azure ML, so their folder goes
    on sys.path)."""
    folder = str(STEP_SCRIPTS_DIR)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def load_bench_module(name: str) -> ModuleType:
    """A module of bench/ (`bigdata`, the large-table generator) imported, as its scripts import each other."""
    folder = str(PROJECT_ROOT / "bench")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


@pytest.fixture
def run_step() -> Callable[..., subprocess.CompletedProcess]:
    """Run `step_scripts/<script>` with arguments as its own process, as the local runner and Azure ML do;
    `env` adds to (or, with a None value, removes from) the current environment."""

    def run(script: str, *args: str, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
        environ = dict(os.environ)
        for name, value in (env or {}).items():
            if value is None:
                environ.pop(name, None)
            else:
                environ[name] = value
        return subprocess.run(
            [sys.executable, str(STEP_SCRIPTS_DIR / script), *map(str, args)],
            cwd=STEP_SCRIPTS_DIR,
            env=environ,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_SECONDS,
        )

    return run
