"""What the steps of steps.py become on Azure ML v2, as request bodies (no I/O here): an environment (the dated
image and a conda file from step_scripts/requirements-v2.txt), one command component per step whose `command`
is the step's CLI with each placeholder mapped to `${{inputs.*}}`/`${{outputs.*}}` (table-driven: BINDINGS),
one pipeline component wiring them, and the pipeline job that runs it. The bodies are what azure-ai-ml 1.35.2
sends for the same objects, less its bookkeeping (tests/test_v2_fidelity.py holds that)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline_def.settings import Settings
from pipeline_def.steps import (
    STEP_ENVIRONMENT,
    STEPS,
    Argument,
    BuildValue,
    DataIn,
    DataOut,
    Param,
    Step,
    entry_script_arguments,
    part_size_arguments,
)

# The environment the steps run in on v2: v1's image and channels, and requirements-v2.txt (no azureml).
STEP_ENVIRONMENT_V2: dict[str, Any] = {
    "base_image": STEP_ENVIRONMENT["base_image"],
    "python_version": STEP_ENVIRONMENT["python_version"],
    "conda_channels": STEP_ENVIRONMENT["conda_channels"],
    "conda_packages": STEP_ENVIRONMENT["conda_packages"],  # pip, setuptools<81: the parallel-run runtime
    "requirements_file": "requirements-v2.txt",
}


@dataclass(frozen=True)
class Port:
    """What a BuildValue or Param becomes: an input or output of the pipeline component named `name`, of
    component type `spec`, bound to each node that uses it."""

    side: str  # "inputs" or "outputs"
    name: str
    spec: Mapping[str, str]


# The binding of steps.py's placeholders: one line each. DataIn/DataOut become node ports of type uri_folder
# of the same name, wired through `${{parent.jobs.<producer>.outputs.<name>}}`.
BINDINGS: dict[Argument, Port] = {
    BuildValue("dataset"): Port("inputs", "dataset", {"type": "uri_file"}),
    BuildValue("dataset_name"): Port("inputs", "dataset_name", {"type": "string"}),
    BuildValue("dataset_version"): Port("inputs", "dataset_version", {"type": "string"}),
    BuildValue("model"): Port("inputs", "model", {"type": "custom_model"}),
    BuildValue("run_id"): Port("inputs", "run_id", {"type": "string"}),
    BuildValue("fingerprint"): Port("inputs", "fingerprint", {"type": "string"}),
    BuildValue("latest"): Port("outputs", "latest", {"type": "uri_folder", "mode": "rw_mount"}),
    BuildValue("history"): Port("outputs", "history", {"type": "uri_folder", "mode": "rw_mount"}),
    Param("sample_size"): Port("inputs", "sample_size", {"type": "integer", "min": "0"}),
    Param("model_version"): Port("inputs", "model_version", {"type": "string"}),
    Param("accept_drift"): Port("inputs", "accept_drift", {"type": "string"}),
    # the quality gate's thresholds: literal inputs whose defaults (Settings.gate_values) are registered with
    # the components, so a changed threshold is a new component version, as on v1 a new published pipeline
    BuildValue("gate_range_margin"): Port("inputs", "gate_range_margin", {"type": "number"}),
    BuildValue("gate_drift_psi"): Port("inputs", "gate_drift_psi", {"type": "number"}),
    BuildValue("gate_drift_min_rows"): Port("inputs", "gate_drift_min_rows", {"type": "integer", "min": "1"}),
    BuildValue("gate_missing_tolerance"): Port("inputs", "gate_missing_tolerance", {"type": "number"}),
}
# Where the pipeline's outputs land in the default datastore (as save_predictions writes them on v1 and locally).
DATASTORE_PATHS = {"latest": "latest_predictions/", "history": "history/"}
# Literal arguments a step gets on v2 only (predict names the model it got as a downloaded folder).
EXTRA_ARGUMENTS: dict[str, Callable[[Settings], tuple[str, ...]]] = {
    "predict": lambda settings: ("--model-name", settings.model_name),
}
DEFAULT_DATASTORE_URI = "azureml://datastores/${{default_datastore}}/paths/"
# A parallel step (steps.py `parallel`) on v2: a `parallel` component over the files of its items input (one
# Parquet part a mini-batch: the producing step cuts them PARALLEL_MINI_BATCH_SIZE bytes each), its entry
# script given the step's arguments less items and output plus `--predictions-dir ${{outputs.<output>}}`; the
# node count is the pipeline input `node_count` (a run parameter), bound to the node's resources.
PARALLEL_FILES_PER_MINI_BATCH = 1
PARALLEL_OUTPUT_OPTION = "--predictions-dir"
NODE_COUNT_INPUT = "node_count"
PARALLEL_ENVIRONMENT_VARIABLES = {"OMP_NUM_THREADS": "1"}
# Component names: what azure-ai-ml accepts (lower-case letters, digits and '_', starting with a letter).
_COMPONENT_NAME = re.compile(r"[a-z][a-z0-9_]{0,199}")


@dataclass(frozen=True)
class Names:
    """The names the pipeline is registered under in a workspace, all derived from PIPELINE_ENDPOINT_NAME."""

    pipeline: str
    environment: str
    steps: dict[str, str]

    @classmethod
    def of(cls, settings: Settings, steps: tuple[Step, ...] = STEPS) -> Names:
        slug = re.sub(r"[^a-z0-9_]", "_", settings.endpoint_name.lower())[:150]
        if not slug[:1].isalpha():
            slug = f"p_{slug}"
        names = cls(
            pipeline=slug,
            environment=f"{settings.endpoint_name[:200]}-steps",
            steps={step.name: f"{slug}__{step.name}" for step in steps},
        )
        for name in (names.pipeline, *names.steps.values()):
            assert _COMPONENT_NAME.fullmatch(name), name
        return names


def requirement_lines(folder: Path) -> list[str]:
    """The pip requirements of requirements-v2.txt, comments dropped."""
    lines = (folder / STEP_ENVIRONMENT_V2["requirements_file"]).read_text().splitlines()
    return [
        line.split(" #", 1)[0].strip() for line in lines if line.strip() and not line.lstrip().startswith("#")
    ]


def conda_file(name: str, requirements: list[str]) -> str:
    """The conda file as azure-ai-ml writes a conda dict (YAML, keys sorted, block style)."""
    spec = STEP_ENVIRONMENT_V2
    lines = ["channels:", *(f"- {c}" for c in spec["conda_channels"]), "dependencies:"]
    lines += [f"- python={spec['python_version']}", *(f"- {p}" for p in spec["conda_packages"]), "- pip:"]
    lines += [f"  - {r}" for r in requirements]
    lines.append(f"name: {name}")
    return "\n".join(lines) + "\n"


def environment_body(names: Names, folder: Path) -> dict[str, Any]:
    return {
        "properties": {
            "condaFile": conda_file(names.environment, requirement_lines(folder)),
            "image": STEP_ENVIRONMENT_V2["base_image"],
            "isAnonymous": False,
            "isArchived": False,
            "description": "The house-price batch steps (step_scripts/requirements-v2.txt)",
        }
    }


def code_body(code_uri: str, content_hash: str, hash_version: int) -> dict[str, Any]:
    return {
        "properties": {
            "codeUri": code_uri,
            "isAnonymous": True,
            "properties": {"hash_sha256": content_hash, "hash_version": hash_version},
        }
    }


def _port(argument: Argument) -> Port:
    if isinstance(argument, DataIn):
        return Port("inputs", argument.name, {"type": "uri_folder"})
    if isinstance(argument, DataOut):
        return Port("outputs", argument.name, {"type": "uri_folder"})
    try:
        return BINDINGS[argument]
    except KeyError:
        raise ValueError(
            f"steps.py's {argument!r} has no Azure ML v2 binding (components.BINDINGS)"
        ) from None


def command(step: Step, settings: Settings) -> str:
    """The step's command line with every placeholder as `${{inputs.x}}` / `${{outputs.y}}`."""
    words = [f"python {shlex.quote(step.script)}"]
    for argument in step.arguments:
        if isinstance(argument, str):
            words.append(shlex.quote(argument))
        else:
            port = _port(argument)
            words.append(f"${{{{{port.side}.{port.name}}}}}")
    words += [shlex.quote(word) for word in EXTRA_ARGUMENTS.get(step.name, lambda _s: ())(settings)]
    words += [shlex.quote(word) for word in part_size_arguments(step, settings.parallel_mini_batch_size)]
    return " ".join(words)


def program_arguments(step: Step, settings: Settings) -> str:
    """A parallel step's entry-script arguments with every placeholder as `${{inputs.x}}`, then where its
    output goes (`--predictions-dir ${{outputs.<output>}}`) and the step's v2 extras."""
    assert step.parallel is not None
    words = []
    for argument in entry_script_arguments(step):
        if isinstance(argument, str):
            words.append(shlex.quote(argument))
        else:
            port = _port(argument)
            words.append(f"${{{{{port.side}.{port.name}}}}}")
    words += [PARALLEL_OUTPUT_OPTION, f"${{{{outputs.{step.parallel.output}}}}}"]
    words += [shlex.quote(word) for word in EXTRA_ARGUMENTS.get(step.name, lambda _s: ())(settings)]
    return " ".join(words)


def parallel_settings(step: Step, settings: Settings, code_id: str, environment_id: str) -> dict[str, Any]:
    """The fields of a parallel component that azure-ai-ml copies into its pipeline node too."""
    assert step.parallel is not None
    return {
        "mini_batch_error_threshold": -1,  # failed items count (error_threshold), not failed mini-batches
        "max_concurrency_per_instance": settings.parallel_process_count_per_node,
        "task": {
            "type": "run_function",
            "code": f"azureml:{code_id}",
            "entry_script": step.parallel.entry_script,
            "program_arguments": program_arguments(step, settings),
            "environment": f"azureml:{environment_id}",
        },
        "input_data": f"${{{{inputs.{step.parallel.items}}}}}",
        "retry_settings": {
            "timeout": settings.parallel_run_invocation_timeout,
            "max_retries": settings.parallel_run_max_try - 1,  # retries after the first try
        },
    }


def parallel_component_body(
    step: Step, names: Names, settings: Settings, version: str, code_id: str, environment_id: str
) -> dict[str, Any]:
    """The parallel component of a steps.py step with `parallel`, as azure-ai-ml's parallel_run_function
    registers it (tests/test_v2_fidelity.py)."""
    ports = _ports(step)
    return {
        "properties": {
            "componentSpec": {
                "name": names.steps[step.name],
                "version": version,
                "display_name": step.name,
                "is_deterministic": step.reusable,
                "inputs": _with_defaults(ports["inputs"], _defaults(settings, version)),
                "outputs": ports["outputs"],
                "type": "parallel",
                "resources": {"instance_count": settings.node_count},
                "logging_level": "INFO",
                "mini_batch_size": str(PARALLEL_FILES_PER_MINI_BATCH),
                "error_threshold": settings.parallel_error_threshold,
                **parallel_settings(step, settings, code_id, environment_id),
            },
            "isAnonymous": False,
            "isArchived": False,
            "properties": {},
            "tags": {},
        }
    }


def component_body(
    step: Step, names: Names, settings: Settings, version: str, code_id: str, environment_id: str
) -> dict[str, Any]:
    """A step's component: a parallel one for a step with `parallel`, else a command one."""
    make = parallel_component_body if step.parallel is not None else command_component_body
    return make(step, names, settings, version, code_id, environment_id)


def _ports(step: Step) -> dict[str, dict[str, dict[str, str]]]:
    found: dict[str, dict[str, dict[str, str]]] = {"inputs": {}, "outputs": {}}
    for argument in step.arguments:
        if not isinstance(argument, str):
            port = _port(argument)
            found[port.side][port.name] = dict(port.spec)
    return found


def _with_defaults(
    inputs: dict[str, dict[str, str]], defaults: Mapping[str, str]
) -> dict[str, dict[str, str]]:
    return {
        name: {**spec, **({"default": defaults[name]} if name in defaults else {})}
        for name, spec in inputs.items()
    }


def _defaults(settings: Settings, version: str) -> dict[str, str]:
    """The inputs' defaults registered with the components: the sample size, the fingerprint, accept_drift
    (false unless a run says otherwise) and the quality gate's thresholds."""
    return {
        "sample_size": str(settings.sample_size),
        "fingerprint": version,
        "accept_drift": "false",
        **settings.gate_values,
    }


def command_component_body(
    step: Step, names: Names, settings: Settings, version: str, code_id: str, environment_id: str
) -> dict[str, Any]:
    ports = _ports(step)
    defaults = _defaults(settings, version)
    return {
        "properties": {
            "componentSpec": {
                "command": command(step, settings),
                "code": f"azureml:{code_id}",
                "environment": f"azureml:{environment_id}",
                "name": names.steps[step.name],
                "version": version,
                "display_name": step.name,
                "is_deterministic": step.reusable,
                "inputs": _with_defaults(ports["inputs"], defaults),
                "outputs": ports["outputs"],
                "type": "command",
            },
            "isAnonymous": False,
            "isArchived": False,
            "properties": {},
            "tags": {},
        }
    }


def pipeline_component_body(
    names: Names,
    settings: Settings,
    version: str,
    workspace_path: str,
    steps: tuple[Step, ...] = STEPS,
    *,
    code_id: str = "",
    environment_id: str = "",
) -> dict[str, Any]:
    """The pipeline component: its inputs and outputs are the steps' BuildValues and Params, and each node
    (named after its step) binds them, and the outputs of the node before, by `${{parent...}}`."""
    inputs: dict[str, dict[str, str]] = {}
    outputs: dict[str, dict[str, str]] = {}
    producers: dict[str, str] = {}
    jobs: dict[str, Any] = {}
    for step in steps:
        node_inputs: dict[str, Any] = {}
        node_outputs: dict[str, Any] = {}
        for argument in step.arguments:
            if isinstance(argument, str):
                continue
            port = _port(argument)
            if isinstance(argument, DataIn):
                if argument.name not in producers:
                    raise ValueError(f"step {step.name} reads {argument.name}, which no earlier step writes")
                value = f"${{{{parent.jobs.{producers[argument.name]}.outputs.{argument.name}}}}}"
            elif isinstance(argument, DataOut):
                producers[argument.name] = step.name
                continue
            else:
                value = f"${{{{parent.{port.side}.{port.name}}}}}"
                spec = {k: v for k, v in port.spec.items() if k != "mode"}
                (inputs if port.side == "inputs" else outputs)[port.name] = spec
            if port.side == "inputs":
                node_inputs[port.name] = {"value": value, "job_input_type": "literal"}
            else:
                node_outputs[port.name] = {"value": value, "type": "literal"}
        node: dict[str, Any] = {"name": step.name, "type": "command", "inputs": node_inputs}
        if step.parallel is not None:
            # what azure-ai-ml copies from a registered parallel component into its node, the node count bound
            # to the pipeline input, and the node's environment variables
            inputs[NODE_COUNT_INPUT] = {"type": "integer"}
            node = {
                "type": "parallel",
                "resources": {"instance_count": f"${{{{parent.inputs.{NODE_COUNT_INPUT}}}}}"},
                "environment_variables": dict(PARALLEL_ENVIRONMENT_VARIABLES),
                **parallel_settings(step, settings, code_id, environment_id),
                "name": step.name,
                "inputs": node_inputs,
                "mini_batch_size": PARALLEL_FILES_PER_MINI_BATCH,
            }
        if node_outputs:
            node["outputs"] = node_outputs
        node["componentId"] = f"{workspace_path}/components/{names.steps[step.name]}/versions/{version}"
        jobs[step.name] = node
    defaults = {**_defaults(settings, version), NODE_COUNT_INPUT: str(settings.node_count)}
    return {
        "properties": {
            "componentSpec": {
                "name": names.pipeline,
                "version": version,
                "display_name": settings.endpoint_name,
                "inputs": _with_defaults(inputs, defaults),
                "outputs": outputs,
                "type": "pipeline",
                "jobs": jobs,
            },
            "isAnonymous": False,
            "properties": {},
            "tags": {},
        }
    }


@dataclass(frozen=True)
class JobInputs:
    """What a submit resolved: the ARM ids of the data and model versions, and the literal inputs."""

    data_id: str
    model_id: str
    literals: dict[str, str]


def job_body(
    settings: Settings,
    component_id: str,
    name: str,
    resolved: JobInputs,
    tags: dict[str, str],
    display_name: str,
) -> dict[str, Any]:
    """The pipeline job of the registered pipeline component `component_id` (no node graph of its own)."""
    compute_id = f"{settings.workspace_path}/computes/{settings.compute_name}"
    inputs: dict[str, Any] = {
        "dataset": {"uri": resolved.data_id, "jobInputType": "uri_file"},
        "model": {"uri": resolved.model_id, "jobInputType": "custom_model", "mode": "Download"},
    }
    inputs.update(
        {key: {"value": value, "jobInputType": "literal"} for key, value in resolved.literals.items()}
    )
    outputs = {
        port: {"uri": DEFAULT_DATASTORE_URI + path, "mode": "ReadWriteMount", "jobOutputType": "uri_folder"}
        for port, path in DATASTORE_PATHS.items()
    }
    return {
        "properties": {
            "componentId": component_id,
            "displayName": display_name,
            "tags": dict(tags),
            "properties": {},
            "experimentName": settings.experiment_name,
            "jobs": {},
            "isArchived": False,
            "inputs": inputs,
            "outputs": outputs,
            "computeId": compute_id,
            "settings": {"default_compute": compute_id, "continue_on_step_failure": False},
            "jobType": "Pipeline",
        }
    }


__all__ = [
    "BINDINGS",
    "DATASTORE_PATHS",
    "STEP_ENVIRONMENT_V2",
    "JobInputs",
    "Names",
    "Port",
    "code_body",
    "command",
    "command_component_body",
    "component_body",
    "parallel_component_body",
    "program_arguments",
    "conda_file",
    "environment_body",
    "job_body",
    "pipeline_component_body",
    "requirement_lines",
]
