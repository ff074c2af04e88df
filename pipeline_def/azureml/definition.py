"""The Azure ML pipeline built from steps.py with the SDK v1: the only module that imports azureml.
It runs only when the endpoint is stale and a new version must be published, never on the steady-state path."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline_def import steps as step_description
from pipeline_def.settings import STEP_SCRIPTS_DIR, Settings

if TYPE_CHECKING:
    from azureml.core import Workspace
    from azureml.pipeline.core import Pipeline

# Every v1 step runs this adapter with its step's name first: it turns the names below into local paths
# (step_scripts/aml_v1.py, which spells the same two markers).
V1_ENTRY_SCRIPT = "aml_v1.py"
# BuildValue("latest") and ("history"): paths of the workspace's default datastore, which aml_v1 uploads to.
DATASTORE_PREFIX = "default-datastore:"
LATEST_PATH = f"{DATASTORE_PREFIX}latest_predictions"
HISTORY_PATH = f"{DATASTORE_PREFIX}history"
# BuildValue("run_id"): only the step run knows its pipeline run; aml_v1 reads it from the run context.
RUN_CONTEXT_PARENT = "run-context:parent"
# BuildValue("dataset_version"): the version of the registered dataset the step reads, known only then.
REGISTERED_VERSION = "registered-dataset:version"

# The SDK's state is process-wide (environment variables, tempfile's directory, a default argument): one
# publish at a time may aim it at its private folder.
_SDK_STATE_LOCK = threading.Lock()
_STATE_ENV = ("HOME", "TMPDIR", "TEMP", "TMP")
PRIVATE_FOLDER_PREFIX = "azureml-sdk-"


def connect_workspace(settings: Settings, credential: Any) -> Workspace:
    """The SDK's Workspace aimed at `settings.api_base`, authenticated by the azure-identity credential, with no
    ARM call (the SDK would otherwise look the workspace up on management.azure.com)."""
    from azureml.core import Workspace
    from azureml.core.authentication import TokenAuthentication

    def get_token_for_audience(audience: str) -> str:
        # The SDK passes a resource such as "https://management.core.windows.net/"; azure-identity wants a
        # scope: the resource without its trailing slash, plus "/.default".
        return credential.get_token(audience.rstrip("/") + "/.default").token

    # An explicit cloud keeps the SDK from fetching cloud metadata from the internet.
    auth = TokenAuthentication(get_token_for_audience, cloud="AzureCloud")
    workspace = Workspace(
        settings.subscription_id,
        settings.resource_group,
        settings.workspace_name,
        auth=auth,
        _location=settings.region or "local",
        _disable_service_check=True,
        # The SDK uses the workspace id only as the key of its service-discovery cache; a stable id derived
        # from the workspace path spares an ARM lookup of the real one.
        _workspace_id=str(uuid.uuid5(uuid.NAMESPACE_URL, settings.workspace_path)),
        _cloud="AzureCloud",
    )
    workspace._discovery_url_internal = f"{settings.api_base}/discovery"
    return workspace


def step_requirements(folder: Path) -> list[str]:
    """The pip requirements of the steps: the lines of their requirements file without comments."""
    spec = step_description.STEP_ENVIRONMENT
    lines = (folder / spec["requirements_file"]).read_text().splitlines()
    return [
        line.split(" #", 1)[0].strip() for line in lines if line.strip() and not line.lstrip().startswith("#")
    ]


def _run_configuration(folder: Path) -> Any:
    from azureml.core import Environment, RunConfiguration
    from azureml.core.conda_dependencies import CondaDependencies

    spec = step_description.STEP_ENVIRONMENT
    conda = CondaDependencies.create(
        python_version=spec["python_version"],
        conda_packages=list(spec["conda_packages"]),
        pip_packages=step_requirements(folder),
        # The requirements as written: pinning would rewrite azureml-* pins to this client's SDK version.
        pin_sdk_version=False,
    )
    # The SDK's template brings the anaconda channel and pip options that point pip at a find-links page of
    # all of PyPI; the environment is exactly steps.STEP_ENVIRONMENT and the requirements file.
    for channel in list(conda.conda_channels):
        conda.remove_channel(channel)
    for channel in spec["conda_channels"]:
        conda.add_channel(channel)
    for option in list(conda.pip_options):
        conda.remove_pip_option(option)
    environment = Environment(spec["name"])
    environment.python.conda_dependencies = conda
    environment.docker.base_image = spec["base_image"]
    environment.environment_variables = {}
    run_config = RunConfiguration()
    run_config.environment = environment
    return run_config


def build_pipeline(
    workspace: Workspace,
    settings: Settings,
    fingerprint: str,
    folder: Path = STEP_SCRIPTS_DIR,
    *,
    step_class: type | None = None,
    parallel_classes: tuple[type, type] | None = None,
) -> Pipeline:
    """PythonScriptSteps from steps.STEPS, joined by PipelineData, with the run parameters as
    PipelineParameters whose defaults are the settings'. Each step runs `aml_v1.py <step> <arguments>`, its
    build values being names (dataset, model, datastore paths, the run-context marker) aml_v1 resolves.

    The steps are azureml-pipeline-core's `_PythonScriptStepBase`: azureml-pipeline-steps' `PythonScriptStep`
    is that class with nothing added (its methods only call the base), and the base names its step type
    "PythonScriptStep" all the same. Leaving azureml-pipeline-steps out spares the deployed app the AutoML
    client and dataprep it depends on. `step_class` lets the fidelity test build the SDK's own class.

    A step of steps.py with `parallel` (predict) is a ParallelRunStep over the files its `items` data holds (the
    producing step's PipelineData promoted to a FileDataset, mounted), built from pipeline-core's
    `_ParallelRunStepBase`/`_ParallelRunConfigBase` for the same reason (`parallel_classes`: the SDK's
    ParallelRunStep and ParallelRunConfig, for the fidelity test); see `_parallel_step`. The build changes
    `sys.path` (the base class adds the source directory to it): it is put back before returning."""
    from azureml.pipeline.core import Pipeline, PipelineData, PipelineParameter
    from azureml.pipeline.core._python_script_step_base import _PythonScriptStepBase

    PythonScriptStep = step_class or _PythonScriptStepBase
    saved_path = list(sys.path)

    defaults = settings.parameter_defaults
    parameters = {
        name: PipelineParameter(name=name, default_value=defaults[name])
        for name in step_description.PARAMETER_NAMES
    }
    fixed = {
        "dataset": settings.dataset_name,
        "dataset_name": settings.dataset_name,
        "dataset_version": REGISTERED_VERSION,
        "model": settings.model_name,
        "latest": LATEST_PATH,
        "history": HISTORY_PATH,
        "run_id": RUN_CONTEXT_PARENT,
        "fingerprint": fingerprint,
        **settings.gate_values,  # literal arguments of the published step: in the fingerprint
    }
    data: dict[str, Any] = {}
    run_config = _run_configuration(Path(folder))
    # A (name, type) tuple names the compute without the ARM lookup a bare name would cost.
    compute = (settings.compute_name, "AmlCompute")
    # The data a parallel step takes as items: its producer's PipelineData is promoted to a FileDataset.
    items = step_description.parallel_items()

    def value(argument: Any, step: step_description.Step) -> Any:
        if isinstance(argument, str):
            return argument
        if isinstance(argument, step_description.Param):
            return parameters[argument.name]
        if isinstance(argument, step_description.BuildValue):
            return fixed[argument.name]
        if isinstance(argument, step_description.DataIn | step_description.DataOut):
            return data[argument.name]
        raise TypeError(f"unknown argument {argument!r} in step {step.name}")

    built = []
    try:
        for step in step_description.STEPS:
            for argument in step.arguments:
                if isinstance(argument, step_description.DataOut):
                    made = PipelineData(argument.name, is_directory=True)
                    data[argument.name] = made.as_dataset() if argument.name in items else made
            if step.parallel is not None:
                built.append(
                    _parallel_step(
                        step, settings, folder, run_config, parameters, data, value, parallel_classes
                    )
                )
                continue
            arguments: list[Any] = [Path(step.script).stem]  # aml_v1.py's first argument: which step
            arguments += [value(argument, step) for argument in step.arguments]
            # the step writing a parallel step's items cuts Parquet parts of the mini-batch size
            arguments += step_description.part_size_arguments(step, settings.parallel_mini_batch_size)
            built.append(
                PythonScriptStep(
                    script_name=V1_ENTRY_SCRIPT,
                    name=step.name,
                    arguments=arguments,
                    inputs=[data[name] for name in step.inputs],
                    outputs=[data[name] for name in step.outputs],
                    compute_target=compute,
                    runconfig=run_config,
                    source_directory=str(folder),
                    allow_reuse=step.reusable,
                )
            )
        return Pipeline(workspace=workspace, steps=built, description=_description(fingerprint))
    finally:
        sys.path[:] = saved_path


# A parallel step's workers: one OpenMP thread each (process_count_per_node processes share a node's cores).
PARALLEL_ENVIRONMENT_VARIABLES = {"OMP_NUM_THREADS": "1"}
# Its items are the Parquet parts the producing step wrote, each about PARALLEL_MINI_BATCH_SIZE bytes (the
# producing step cuts them that size): a FileDataset's mini-batch size is a number of files, so one part each.
PARALLEL_FILES_PER_MINI_BATCH = "1"


def _parallel_step(
    step: step_description.Step,
    settings: Settings,
    folder: Path,
    run_config: Any,
    parameters: dict[str, Any],
    data: dict[str, Any],
    value: Any,
    parallel_classes: tuple[type, type] | None,
) -> Any:
    """The ParallelRunStep of a steps.py step with `parallel`: entry script `parallel.entry_script` from the
    step folder, over the files of the `items` FileDataset (mounted), writing to the `output` PipelineData
    (the runtime's `--output`, which the entry script reads as AZUREML_BI_OUTPUT_PATH), with the step's
    arguments less items and output (steps.entry_script_arguments; `--output` is reserved by the SDK).
    NodeCount is the `node_count` pipeline parameter; processes per node, invocation timeout, tries and the
    error threshold are the settings'; the environment is the other steps' with OMP_NUM_THREADS=1. The compute
    is its plain name: the base class turns a string into (name, "AmlCompute") itself, so there is no ARM
    lookup, while a tuple crashes its metadata (docs' parallel-run notes 1.7)."""
    from azureml.pipeline.core._parallel_run_config_base import _ParallelRunConfigBase
    from azureml.pipeline.core._parallel_run_step_base import _ParallelRunStepBase

    ParallelRunStep, ParallelRunConfig = parallel_classes or (_ParallelRunStepBase, _ParallelRunConfigBase)
    parallel = step.parallel
    assert parallel is not None
    config = ParallelRunConfig(
        environment=run_config.environment,
        entry_script=parallel.entry_script,
        error_threshold=settings.parallel_error_threshold,
        output_action="summary_only",  # the entry script writes its own Parquet parts
        compute_target=settings.compute_name,
        node_count=parameters["node_count"],
        process_count_per_node=settings.parallel_process_count_per_node,
        mini_batch_size=PARALLEL_FILES_PER_MINI_BATCH,
        source_directory=str(folder),
        run_invocation_timeout=settings.parallel_run_invocation_timeout,
        run_max_try=settings.parallel_run_max_try,
        environment_variables=dict(PARALLEL_ENVIRONMENT_VARIABLES),
    )
    # (the SDK checks the environment's pip lines by name: requirements.txt's azureml-core and
    # azureml-dataset-runtime[fuse], what a mounted FileDataset needs, satisfy it without a warning)
    return ParallelRunStep(
        name=step.name,
        parallel_run_config=config,
        inputs=[data[parallel.items]],
        output=data[parallel.output],
        arguments=[value(a, step) for a in step_description.entry_script_arguments(step)],
        allow_reuse=step.reusable,
    )


def _description(fingerprint: str) -> str:
    return f"House-price batch predictions (fingerprint {fingerprint})"


@contextlib.contextmanager
def private_sdk_state() -> Iterator[Path]:
    """Aim everything the SDK writes at a new private folder for the duration, then remove the folder.

    What a publish writes, found with an audit hook (tests/test_sdk_sandbox.py): the service-discovery
    cache `~/.azureml/.discovery` (its path is a default argument, computed from HOME when the SDK is first
    imported), the snapshot cache `$HOME/.azureml/.projectcontent/<workspace hash>/latestsnapshot` (HOME read
    at call time; a refused mkdir there aborts the publish), and, where azureml-dataprep is installed (the dev
    venv, not the deployed app), a log folder under `tempfile.gettempdir()` made when it is first imported.
    So HOME and TMPDIR/TEMP/TMP point into the folder, tempfile's cached directory too, and the discovery
    cache's default path is set for the call; all are put back afterwards. Only one caller at a time (a lock):
    the state is process-wide. A thread of the same process that makes a temporary file without `dir=`
    during a publish makes it in the folder and loses it with the folder; nothing in this app does."""
    with _SDK_STATE_LOCK:
        saved_env = {name: os.environ.get(name) for name in _STATE_ENV}
        saved_path = list(sys.path)  # a ParallelRunStep's build adds its source directory to sys.path
        tempfile.gettempdir()  # resolve (and cache) the system's temporary folder before pointing it at ours
        saved_tempdir = tempfile.tempdir
        discovery_loaded = "azureml._base_sdk_common.service_discovery" in sys.modules
        outer_discovery_file = os.path.join(os.path.expanduser("~"), ".azureml", ".discovery")
        root = Path(tempfile.mkdtemp(prefix=PRIVATE_FOLDER_PREFIX))
        home, temp = root / "home", root / "tmp"
        home.mkdir()
        temp.mkdir()
        discovery_init = None
        saved_defaults = None
        try:
            os.environ["HOME"] = str(home)
            for name in _STATE_ENV[1:]:
                os.environ[name] = str(temp)
            tempfile.tempdir = str(temp)
            from azureml._base_sdk_common.service_discovery import CachedServiceDiscovery

            # The SDK builds a CachedServiceDiscovery for every service URL it looks up, always with the default
            # file_path, which was frozen when the SDK was first imported: change the default, not HOME alone.
            discovery_init = CachedServiceDiscovery.__init__
            saved_defaults = discovery_init.__defaults__ if discovery_loaded else (outer_discovery_file,)
            discovery_init.__defaults__ = (str(home / ".azureml" / ".discovery"),)
            yield root
        finally:
            if discovery_init is not None:
                discovery_init.__defaults__ = saved_defaults
            tempfile.tempdir = saved_tempdir
            sys.path[:] = saved_path
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            shutil.rmtree(root, ignore_errors=True)


def publish_pipeline(
    settings: Settings, credential: Any, fingerprint: str, folder: Path = STEP_SCRIPTS_DIR
) -> str:
    """Build and publish a new pipeline whose Version is `fingerprint`; return its id. The SDK's caches live
    in a private temporary folder for the call (`private_sdk_state`), so a read-only HOME is fine and nothing
    is left behind."""
    # The SDK prints progress ("Created step ...") to stdout; keep stdout for the CLI's own answer.
    with private_sdk_state(), contextlib.redirect_stdout(sys.stderr):
        workspace = connect_workspace(settings, credential)
        pipeline = build_pipeline(workspace, settings, fingerprint, folder)
        published = pipeline.publish(
            name=settings.endpoint_name,
            description=_description(fingerprint),
            version=fingerprint,
            continue_on_step_failure=False,
        )
    return published.id


__all__ = [
    "HISTORY_PATH",
    "LATEST_PATH",
    "RUN_CONTEXT_PARENT",
    "V1_ENTRY_SCRIPT",
    "PRIVATE_FOLDER_PREFIX",
    "build_pipeline",
    "connect_workspace",
    "private_sdk_state",
    "publish_pipeline",
]
