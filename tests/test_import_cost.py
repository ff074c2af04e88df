"""Importing the Functions app (what every cold start pays) loads none of the heavy libraries: azureml,
pandas, scikit-learn, pyarrow (nor numpy, which they pull in)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("azureml", "pandas", "sklearn", "pyarrow", "numpy")

_PROBE = """
import json, sys
import {module}
print(json.dumps(sorted({{name.split(".")[0] for name in sys.modules}})))
"""


def _top_level_modules_after_import(module: str, env: dict[str, str]) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module=module)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.fixture
def clean_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AML_", "PIPELINE_", "LOCAL_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@pytest.mark.parametrize("module", ["function_app", "pipeline_def.app.http_api", "pipeline_def.app.timer"])
def test_importing_the_app_loads_no_heavy_library(clean_env, module):
    loaded = _top_level_modules_after_import(module, clean_env)
    assert module.split(".")[0] in loaded
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_the_probe_sees_a_heavy_import_when_there_is_one(clean_env):
    # The check above would pass vacuously if the probe could not see imports; it can.
    assert "pandas" in _top_level_modules_after_import("pandas", clean_env)
