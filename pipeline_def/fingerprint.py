"""The pipeline fingerprint: the `Version` a published pipeline is compared against. It changes when, and only
when, something that defines the pipeline changes: the step scripts' bytes (with the steps' requirements),
the step description and environment, and the settings that shape the graph (the quality gate's thresholds
among them: they are arguments of the published save step)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline_def.settings import STEP_SCRIPTS_DIR, Settings
from pipeline_def.steps import STEP_ENVIRONMENT, STEPS

FINGERPRINT_LENGTH = 16
# Each platform's steps' requirements: a fingerprint covers its own platform's file, not the other's.
V1_REQUIREMENTS = STEP_ENVIRONMENT["requirements_file"]
V2_REQUIREMENTS = "requirements-v2.txt"


def step_script_files(folder: Path = STEP_SCRIPTS_DIR) -> list[Path]:
    """The files Azure ML uploads as the steps' snapshot: caches and editor droppings left out, as the
    folder's .amlignore leaves them out of the upload (hidden files, and anything in a hidden folder such as
    a .mypy_cache/ a tool left there)."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and path.suffix not in (".pyc", ".pyo")
    )


def compute_fingerprint(
    settings: Settings,
    folder: Path = STEP_SCRIPTS_DIR,
    environment: Mapping[str, Any] = STEP_ENVIRONMENT,
    *,
    skip: frozenset[str] = frozenset({V2_REQUIREMENTS}),
    platform: str | None = None,
) -> str:
    """A short, stable hex digest of everything that defines the published pipeline: `folder` holds the step
    scripts and their requirements, `environment` the rest of their environment (base image, channels...).
    `skip` names files of `folder` (relative, POSIX) that do not define it (the other platform's
    requirements); `platform`, when given, keeps one platform's fingerprint from equalling another's."""
    digest = hashlib.sha256()
    for path in step_script_files(folder):
        if path.relative_to(folder).as_posix() in skip:
            continue
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    shape = {
        "steps": [repr(step) for step in STEPS],
        "environment": dict(environment),
        "compute": settings.compute_name,
        "dataset": settings.dataset_name,
        "model": settings.model_name,
        "parameters": settings.parameter_defaults,
        "parallel": {
            "mini_batch_size": settings.parallel_mini_batch_size,
            "process_count_per_node": settings.parallel_process_count_per_node,
            "run_invocation_timeout": settings.parallel_run_invocation_timeout,
            "run_max_try": settings.parallel_run_max_try,
            "error_threshold": settings.parallel_error_threshold,
        },
        "quality_gate": settings.gate_values,
    }
    if platform is not None:
        shape["platform"] = platform
    digest.update(json.dumps(shape, sort_keys=True).encode())
    return digest.hexdigest()[:FINGERPRINT_LENGTH]
