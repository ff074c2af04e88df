"""The one description of the pipeline: its three steps, their scripts and arguments, the data they hand
each other, and the run parameters. The Azure ML definition and the local runner are both built from it,
so the two cannot drift apart.

An argument is a literal string or one of four placeholders each backend resolves its own way:
`Param` (a run parameter: a PipelineParameter on Azure ML, its value locally), `BuildValue` (fixed when the
pipeline is built: a name on Azure ML, a path locally), `DataIn`/`DataOut` (PipelineData on Azure ML,
a folder locally). Every step script takes only paths and plain values; on Azure ML v1 the published step
runs `aml_v1.py <step> <arguments>`, which turns the names into paths first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline_def.errors import InvalidRequest


@dataclass(frozen=True)
class Param:
    name: str


@dataclass(frozen=True)
class BuildValue:
    """A value each platform binds its own way when it builds the pipeline: `dataset` (a file locally, the
    registered dataset's name on v1), `model` (the local registry folder, the registered model's name),
    `latest` and `history` (folders of the local datastore, datastore paths), `run_id` (the local run's id,
    the pipeline run resolved from the step's run context), `fingerprint`, and the quality gate's thresholds
    (GATE_VALUES: Settings.gate_values on every platform)."""

    name: str


@dataclass(frozen=True)
class DataIn:
    name: str


@dataclass(frozen=True)
class DataOut:
    name: str


Argument = str | Param | BuildValue | DataIn | DataOut


@dataclass(frozen=True)
class ParallelRun:
    """A step the platform's parallel runtime runs: `entry_script` (init()/run(mini_batch), Azure ML's
    parallel-run contract) over the files of the data `items` (one part file a mini-batch item), writing into
    the data `output`. The step's own script and arguments stay the single-process way to run it; a backend
    that runs the step in parallel gives the entry script the step's arguments without the `items` and
    `output` folders (the entry script's output folder is the runtime's)."""

    entry_script: str
    items: str
    output: str


@dataclass(frozen=True)
class Step:
    name: str
    script: str
    arguments: tuple[Argument, ...]
    # Whether Azure ML may reuse an earlier run's output when the step's inputs and arguments are unchanged.
    reusable: bool = True
    # Set when the platform may run the step in parallel over its input's parts.
    parallel: ParallelRun | None = None

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arguments if isinstance(a, DataIn))

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arguments if isinstance(a, DataOut))


STEPS: tuple[Step, ...] = (
    Step(
        name="fetch_data",
        script="fetch_data.py",
        arguments=(
            "--dataset", BuildValue("dataset"),
            "--dataset-name", BuildValue("dataset_name"),
            "--dataset-version", BuildValue("dataset_version"),
            "--sample-size", Param("sample_size"),
            "--output", DataOut("new_data"),
        ),
        reusable=False,  # samples anew on every run: "new data" must never be an earlier run's output
    ),
    Step(
        name="predict",
        script="predict.py",
        arguments=(
            "--input", DataIn("new_data"),
            "--model", BuildValue("model"),
            "--model-version", Param("model_version"),
            "--output", DataOut("predictions"),
        ),
        parallel=ParallelRun("score_parallel.py", items="new_data", output="predictions"),
    ),
    Step(
        name="save_predictions",
        script="save_predictions.py",
        arguments=(
            "--input", DataIn("predictions"),
            "--latest-dir", BuildValue("latest"),
            "--history-dir", BuildValue("history"),
            "--run-id", BuildValue("run_id"),
            "--pipeline-fingerprint", BuildValue("fingerprint"),
            # the quality gate: thresholds fixed when the pipeline is built, and the run's accept_drift
            "--range-margin", BuildValue("gate_range_margin"),
            "--drift-psi", BuildValue("gate_drift_psi"),
            "--drift-min-rows", BuildValue("gate_drift_min_rows"),
            "--missing-tolerance", BuildValue("gate_missing_tolerance"),
            "--accept-drift", Param("accept_drift"),
        ),
    ),
)  # fmt: skip

# The BuildValues of the quality gate's thresholds: each platform binds them to Settings.gate_values.
GATE_VALUES = ("gate_range_margin", "gate_drift_psi", "gate_drift_min_rows", "gate_missing_tolerance")
PARAMETER_NAMES = ("sample_size", "model_version", "accept_drift", "node_count")
MAX_SAMPLE_SIZE = 10_000_000
MAX_NODE_COUNT = 100


def validate_parameters(raw: Any) -> dict[str, str]:
    """Check run parameters given by a caller and return them as Azure ML wants them (strings).

    `raw` is what the caller sent (a JSON object, or None for no overrides). Unknown names, wrong types and
    out-of-range values raise InvalidRequest naming the parameter, so nothing is ever submitted with them.
    """
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidRequest("'parameters' must be a JSON object")
    unknown = sorted(str(k) for k in raw if k not in PARAMETER_NAMES)
    if unknown:
        raise InvalidRequest(
            f"unknown parameter(s): {', '.join(unknown)[:200]}; known: {', '.join(PARAMETER_NAMES)}"
        )
    result: dict[str, str] = {}
    if "sample_size" in raw:
        value = raw["sample_size"]
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest("'sample_size' must be a whole number (0 means every row)")
        if not 0 <= value <= MAX_SAMPLE_SIZE:
            raise InvalidRequest(f"'sample_size' must be from 0 to {MAX_SAMPLE_SIZE}")
        result["sample_size"] = str(value)
    if "model_version" in raw:
        value = raw["model_version"]
        if isinstance(value, str) and value.strip().lower() == "latest":
            result["model_version"] = "latest"
        elif isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1_000_000:
            result["model_version"] = str(value)
        elif isinstance(value, str) and value.isascii() and value.isdigit() and 1 <= int(value) <= 1_000_000:
            result["model_version"] = str(int(value))
        else:
            raise InvalidRequest("'model_version' must be a positive whole number or 'latest'")
    if "node_count" in raw:
        value = raw["node_count"]
        if isinstance(value, str) and value.isascii() and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_NODE_COUNT:
            raise InvalidRequest(f"'node_count' must be a whole number from 1 to {MAX_NODE_COUNT}")
        result["node_count"] = str(value)
    if "accept_drift" in raw:
        # publish despite the quality gate's drift check, never despite its other checks (HTTP and CLI runs)
        value = raw["accept_drift"]
        if not isinstance(value, bool):
            raise InvalidRequest("'accept_drift' must be true or false")
        result["accept_drift"] = "true" if value else "false"
    return result


# What the step writing a parallel step's items takes: the size of its Parquet parts (one part, one mini-batch).
PART_BYTES_OPTION = "--part-bytes"


def parallel_items(steps: tuple[Step, ...] = STEPS) -> set[str]:
    """The data the parallel steps take as items (written by the step before them as Parquet parts)."""
    return {s.parallel.items for s in steps if s.parallel is not None}


def part_size_arguments(step: Step, part_bytes: int, steps: tuple[Step, ...] = STEPS) -> tuple[str, ...]:
    """`--part-bytes <part_bytes>` for the step that writes a parallel step's items (it cuts its Parquet parts
    that size and a mini-batch is one part), nothing for the others. Each backend gives its own size:
    PARALLEL_MINI_BATCH_SIZE on Azure ML, LOCAL_MINI_BATCH_SIZE locally."""
    return (PART_BYTES_OPTION, str(part_bytes)) if parallel_items(steps) & set(step.outputs) else ()


def entry_script_arguments(step: Step) -> tuple[Argument, ...]:
    """What the parallel entry script of `step` takes: the step's arguments without the option and folder of
    its `items` input and of its `output` (the runtime hands the items over as mini-batches and says where
    the output goes)."""
    if step.parallel is None:
        raise ValueError(f"step {step.name} does not run in parallel")
    dropped = {DataIn(step.parallel.items), DataOut(step.parallel.output)}
    kept: list[Argument] = []
    for argument in step.arguments:
        if argument in dropped:
            kept.pop()  # its option, just before it
        else:
            kept.append(argument)
    return tuple(kept)


# The environment the steps run in on Azure ML. Its pip packages are step_scripts/requirements.txt (hashed
# with the scripts); the rest is here so that a change to it changes the fingerprint too.
STEP_ENVIRONMENT: dict[str, Any] = {
    "name": "house-price-batch-steps",
    # Dated, as the SDK (azureml-core 1.61, DEFAULT_CPU_IMAGE) lists it: without a tag the image is `latest`,
    # which would change under an unchanged fingerprint.
    "base_image": "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:20251130.v1",
    "python_version": "3.11",
    # conda-forge only: the anaconda/defaults channels carry commercial terms, and non-interactive builds stop
    # on their terms of service. `nodefaults` keeps conda from adding the image's configured default channels.
    "conda_channels": ("conda-forge", "nodefaults"),
    # azureml-dataprep 5.5 requires pip>=25.3; the rest comes from pip. Azure ML's parallel-run runtime (the
    # parallel predict) shells out to `python -m pip` and imports pkg_resources, which setuptools 81 removed: without
    # either it exits 42 before init() (docs' parallel-run notes 1.6).
    "conda_packages": ("pip>=25.3", "setuptools<81"),
    "requirements_file": "requirements.txt",
}
