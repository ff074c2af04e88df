"""The fingerprint (the published pipeline's Version) changes when, and only when, something that defines
the pipeline changes."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_def.fingerprint import FINGERPRINT_LENGTH, compute_fingerprint, step_script_files
from pipeline_def.settings import PROJECT_ROOT, STEP_SCRIPTS_DIR, load_settings
from pipeline_def.steps import STEP_ENVIRONMENT

GOOD = {
    "AML_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000001",
    "AML_RESOURCE_GROUP": "rg-test",
    "AML_WORKSPACE_NAME": "ws-test",
    "AML_REGION": "westeurope",
    "AML_COMPUTE_NAME": "cpu-cluster",
}


@pytest.fixture
def settings():
    return load_settings(GOOD)


@pytest.fixture
def scripts(tmp_path) -> Path:
    """A private copy of step_scripts, free to edit."""
    folder = tmp_path / "step_scripts"
    shutil.copytree(STEP_SCRIPTS_DIR, folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def test_fingerprint_is_stable_and_short_hex(settings, scripts):
    first = compute_fingerprint(settings, scripts)
    assert first == compute_fingerprint(settings, scripts)
    assert len(first) == FINGERPRINT_LENGTH
    int(first, 16)
    # the copy hashes like the original: names are relative to the folder
    assert first == compute_fingerprint(settings, STEP_SCRIPTS_DIR)


def test_fingerprint_is_the_same_in_another_process(settings):
    env = {**os.environ, **GOOD, "PYTHONHASHSEED": "123"}
    for name in ("PIPELINE_BACKEND", "PIPELINE_SAMPLE_SIZE", "AML_MODEL_VERSION", "AML_DATASET_NAME"):
        env.pop(name, None)
    env.pop("AML_MODEL_NAME", None)
    env.pop("AML_API_BASE", None)
    out = subprocess.run(
        [sys.executable, "-m", "pipeline_def", "fingerprint"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == compute_fingerprint(settings)


def test_changing_one_byte_of_a_step_script_changes_it(settings, scripts):
    before = compute_fingerprint(settings, scripts)
    script = scripts / "batchpred_steps" / "handoff.py"
    data = bytearray(script.read_bytes())
    data[-1:] = b"\n" if data[-1:] != b"\n" else b" "
    script.write_bytes(bytes(data))
    assert compute_fingerprint(settings, scripts) != before


def test_changing_the_step_requirements_changes_it(settings, scripts):
    before = compute_fingerprint(settings, scripts)
    requirements = scripts / "requirements.txt"
    requirements.write_text(requirements.read_text() + "tqdm==4.66.0\n")
    assert compute_fingerprint(settings, scripts) != before


def test_adding_or_renaming_a_script_changes_it(settings, scripts):
    before = compute_fingerprint(settings, scripts)
    (scripts / "helper.py").write_text("X = 1\n")
    added = compute_fingerprint(settings, scripts)
    assert added != before
    (scripts / "helper.py").rename(scripts / "helper2.py")
    assert compute_fingerprint(settings, scripts) not in (before, added)


def test_caches_and_hidden_files_do_not_change_it(settings, scripts):
    before = compute_fingerprint(settings, scripts)
    (scripts / "__pycache__").mkdir(exist_ok=True)
    (scripts / "__pycache__" / "predict.cpython-311.pyc").write_bytes(b"\0\1\2")
    (scripts / ".DS_Store").write_bytes(b"junk")
    (scripts / "predict.pyc").write_bytes(b"junk")
    # a tool's cache in a hidden folder (a mypy run inside step_scripts/ left 52 MB of it once)
    (scripts / ".mypy_cache" / "3.11").mkdir(parents=True, exist_ok=True)
    (scripts / ".mypy_cache" / "3.11" / "builtins.data.json").write_text("{}")
    assert compute_fingerprint(settings, scripts) == before
    assert all("__pycache__" not in p.parts for p in step_script_files(scripts))
    assert all(".mypy_cache" not in p.parts for p in step_script_files(scripts))


def test_what_the_fingerprint_leaves_out_the_v2_code_asset_leaves_out_too(scripts):
    """The shipped .amlignore keeps out of the upload what the fingerprint ignores (a hidden folder's files),
    so what is published is what was fingerprinted."""
    from pipeline_def.azureml_v2.code import code_files

    (scripts / ".mypy_cache" / "3.11").mkdir(parents=True, exist_ok=True)
    (scripts / ".mypy_cache" / "3.11" / "builtins.data.json").write_text("{}")
    (scripts / "__pycache__").mkdir(exist_ok=True)
    (scripts / "__pycache__" / "predict.cpython-311.pyc").write_bytes(b"\0")

    uploaded = {f.name for f in code_files(scripts)}

    assert not any(name.startswith((".mypy_cache/", "__pycache__/")) for name in uploaded)
    fingerprinted = {p.relative_to(scripts).as_posix() for p in step_script_files(scripts)}
    assert fingerprinted <= uploaded


@pytest.mark.parametrize(
    "field, value",
    [
        ("compute_name", "gpu-cluster"),
        ("dataset_name", "OtherHouses"),
        ("model_name", "OtherModel"),
        ("sample_size", 25),
        ("model_version", "3"),
    ],
)
def test_graph_shaping_settings_change_it(settings, scripts, field, value):
    changed = dataclasses.replace(settings, **{field: value})
    assert compute_fingerprint(changed, scripts) != compute_fingerprint(settings, scripts)


@pytest.mark.parametrize(
    "field, value",
    [
        ("schedule", "0 0 * * * *"),
        ("overlap", "allow"),
        ("experiment_name", "another-experiment"),
        ("request_timeout", 5.0),
        ("retry_budget", 10.0),
        ("region", "northeurope"),
    ],
)
def test_settings_that_do_not_shape_the_graph_leave_it_alone(settings, scripts, field, value):
    changed = dataclasses.replace(settings, **{field: value})
    assert compute_fingerprint(changed, scripts) == compute_fingerprint(settings, scripts)


def test_readme_and_tests_are_not_part_of_it(settings, tmp_path):
    # A project copy with its own README and tests: editing them leaves the step folder's fingerprint alone.
    project = tmp_path / "project"
    shutil.copytree(STEP_SCRIPTS_DIR, project / "step_scripts", ignore=shutil.ignore_patterns("__pycache__"))
    (project / "README.md").write_text("# one\n")
    (project / "tests").mkdir()
    (project / "tests" / "test_x.py").write_text("def test(): pass\n")
    before = compute_fingerprint(settings, project / "step_scripts")
    (project / "README.md").write_text("# two\n")
    (project / "tests" / "test_x.py").write_text("def test(): assert True\n")
    assert compute_fingerprint(settings, project / "step_scripts") == before


@pytest.mark.parametrize(
    "field, value",
    [
        ("base_image", "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:20250601.v1"),
        ("conda_channels", ("conda-forge", "anaconda")),
        ("conda_packages", ("pip>=26",)),
        ("python_version", "3.12"),
    ],
)
def test_changing_the_step_environment_changes_it(settings, scripts, field, value):
    assert STEP_ENVIRONMENT[field] != value
    default = compute_fingerprint(settings, scripts)
    assert compute_fingerprint(settings, scripts, dict(STEP_ENVIRONMENT)) == default
    assert compute_fingerprint(settings, scripts, {**STEP_ENVIRONMENT, field: value}) != default
