"""Turning steps.py into the local backend's command lines, and the Settings a run record carries (so the
detached runner runs with the settings of the process that created the run)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline_def.errors import LocalRunError
from pipeline_def.local import parallel
from pipeline_def.local.model import model_folder
from pipeline_def.settings import STEP_SCRIPTS_DIR, Settings
from pipeline_def.steps import (
    BuildValue,
    DataIn,
    DataOut,
    Param,
    Step,
    entry_script_arguments,
    part_size_arguments,
)

PREDICTIONS_FILE = Path("latest_predictions") / "predictions.csv"


def destination_folder(settings: Settings) -> Path:
    """The local stand-in for the workspace's default datastore: latest_predictions/ and history/ in it."""
    return settings.local_work_dir / "datastore"


def resolve_argument(
    argument: Any, settings: Settings, parameters: Mapping[str, str], run_dir: Path, fingerprint: str
) -> str:
    """One steps.py argument as the local backend passes it: parameters as given (else their defaults),
    settings as local paths, data as folders of the run, the run id as the run folder's name (docs/product.md,
    "Running without Azure")."""
    if isinstance(argument, str):
        return argument
    if isinstance(argument, Param):
        return str(parameters.get(argument.name, settings.parameter_defaults[argument.name]))
    if isinstance(argument, BuildValue):
        values = {
            "dataset": str(settings.local_dataset_path),
            "dataset_name": settings.local_dataset_path.name,
            "dataset_version": "",  # a file has no registered version
            "model": str(model_folder(settings)),
            "latest": str(destination_folder(settings) / "latest_predictions"),
            "history": str(destination_folder(settings) / "history"),
            "run_id": run_dir.name,
            "fingerprint": fingerprint,
            **settings.gate_values,
        }
        if argument.name not in values:
            raise LocalRunError(f"steps.py uses a setting the local backend does not know: {argument.name!r}")
        return values[argument.name]
    if isinstance(argument, DataIn | DataOut):
        return str(run_dir / "data" / argument.name)
    raise LocalRunError(f"steps.py holds an argument the local backend cannot resolve: {argument!r}")


def step_command(
    step: Step, settings: Settings, parameters: Mapping[str, str], run_dir: Path, fingerprint: str
) -> list[str]:
    """The script and arguments of `step` (the interpreter is added when it runs). A step with `parallel` runs
    its entry script in the local parallel runtime (pipeline_def/local/parallel.py) over the parts of its
    items folder, with the PARALLEL_* settings and LOCAL_PARALLEL_WORKERS processes (0: one a core); the step
    writing those parts cuts them LOCAL_MINI_BATCH_SIZE bytes each."""

    def resolve(argument: Any) -> str:
        return resolve_argument(argument, settings, parameters, run_dir, fingerprint)

    if step.parallel is None:
        return [
            str(STEP_SCRIPTS_DIR / step.script),
            *map(resolve, step.arguments),
            *part_size_arguments(step, settings.local_mini_batch_size),
        ]
    return [
        str(Path(parallel.__file__).resolve()),
        "--entry-script", str(STEP_SCRIPTS_DIR / step.parallel.entry_script),
        "--items", resolve(DataIn(step.parallel.items)),
        "--workers", str(settings.local_parallel_workers),
        "--max-try", str(settings.parallel_run_max_try),
        "--timeout", str(settings.parallel_run_invocation_timeout),
        "--error-threshold", str(settings.parallel_error_threshold),
        "--",
        *map(resolve, entry_script_arguments(step)),
        "--predictions-dir", resolve(DataOut(step.parallel.output)),
    ]  # fmt: skip


def settings_to_record(settings: Settings) -> dict[str, Any]:
    return {
        f.name: str(value) if isinstance(value := getattr(settings, f.name), Path) else value
        for f in dataclasses.fields(settings)
    }


def settings_from_record(raw: Mapping[str, Any]) -> Settings:
    known = {f.name for f in dataclasses.fields(Settings)}
    values = {k: v for k, v in raw.items() if k in known}
    for name in ("local_dataset_path", "local_work_dir"):
        if name in values:
            values[name] = Path(values[name])
    return Settings(**values)
