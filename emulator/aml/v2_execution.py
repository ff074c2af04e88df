"""The emulated workspace runs a v2 pipeline job: the pipeline component's nodes (command components), in the
order their `${{parent.jobs.X.outputs.Y}}` bindings give, each as `bash -c <command>` in a fresh copy of its
code asset with the steps' interpreter first on PATH as `python`. Inputs are materialised as the runtime
mounts or downloads them (literals as text; uri_file/uri_folder and custom_model from the workspace storage in
Azurite), outputs are folders (a pipeline output bound to a datastore path is synced down before the node and
up after it). It reuses execution.py's process, cancel and wait machinery (`enable_execution`)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulator.aml.execution import PRS_DRIVER, _RunState, start_process, tee_stderr
from emulator.aml.state import HISTORY_TERMINAL, PIPELINE_OF_HISTORY, history_error, iso
from emulator.aml.v2_jobs import PIPELINE_FAILED, V2Run, V2Step

STD_LOG = "user_logs/std_log.txt"
# How much of the failed process's stderr the error message quotes (its last lines).
ERROR_TAIL_LINES = 20
ERROR_TAIL_CHARS = 3000
# The runtime's message for a user process that exits non-zero (see the README's guesses for the sources).
USER_PROCESS_FAILED = (
    "Execution failed. User process '{process}' exited with status code {exit_code}. "
    "Please check log file '" + STD_LOG + "' for error details. Error: {error}"
)
_PARENT_INPUT = re.compile(r"^\$\{\{\s*parent\.inputs\.([A-Za-z0-9_]+)\s*\}\}$")
_PARENT_OUTPUT = re.compile(r"^\$\{\{\s*parent\.outputs\.([A-Za-z0-9_]+)\s*\}\}$")
_NODE_OUTPUT = re.compile(r"^\$\{\{\s*parent\.jobs\.([A-Za-z0-9_]+)\.outputs\.([A-Za-z0-9_]+)\s*\}\}$")
_ANY_PARENT_INPUT = re.compile(r"\$\{\{\s*parent\.inputs\.([A-Za-z0-9_]+)\s*\}\}")
_OPTIONAL_BLOCK = re.compile(r"\$\[\[(.*?)\]\]", re.DOTALL)
_REFERENCE = re.compile(r"\$\{\{\s*(inputs|outputs)\.([A-Za-z0-9_]+)\s*\}\}")
_ASSET_TYPES = ("uri_file", "uri_folder", "custom_model", "mlflow_model", "mltable")


class NodeError(Exception):
    """A node that cannot be prepared (a missing input, an unknown asset): the node fails, the runtime's way."""


# The fields of a parallel component a pipeline node may set over the component's own.
PARALLEL_FIELDS = (
    "resources",
    "max_concurrency_per_instance",
    "mini_batch_size",
    "partition_keys",
    "retry_settings",
    "error_threshold",
    "mini_batch_error_threshold",
    "logging_level",
    "environment_variables",
    "input_data",
    "task",
)
_INPUT_REFERENCE = re.compile(r"^\$\{\{\s*inputs\.([A-Za-z0-9_]+)\s*\}\}$")


@dataclass
class _Node:
    step: V2Step
    spec: dict[str, Any]  # the node as the pipeline component lists it
    component: dict[str, Any]  # the command component's componentSpec (a parallel one: with a `command` made)
    code_uri: str | None
    parallel: dict[str, Any] | None = None  # a parallel node's effective settings (component, then node)


@dataclass
class _Prepared:
    command: str
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    synced: dict[str, tuple[Path, str]] = field(default_factory=dict)  # output -> (folder, datastore URI)
    parallel: dict[str, str] | None = None  # a parallel node's driver variables


class V2ExecutionService:
    """Mixed into FakeAzureML (before V2JobService): with `enable_execution(...)`, every v2 pipeline job
    runs in a background thread; `wait_for_run(job_name, timeout)` and `step_log` work as for v1 runs."""

    def _start_v2_execution(self, run: V2Run) -> None:
        if self.execution is None:
            return
        self._execute_in_thread(
            run,
            f"job-{run.run_id[:12]}",
            lambda state: self._execute_v2_nodes(run, state),
            lambda error: self._end_v2_run(
                run, "Failed", _system_error(f"The emulated workspace could not run the job: {error}")
            ),
        )

    def _execute_v2_nodes(self, run: V2Run, state: _RunState) -> None:
        assert self.execution is not None
        job_dir = self.execution.workdir / "jobs" / run.run_id
        with self.lock:
            if state.cancel.is_set() or run.history_status in HISTORY_TERMINAL:
                self._end_v2_run(run, "Canceled")
                return
            nodes = self._v2_nodes(run)
            inputs = self._parent_inputs(run)
            self._set_v2_status(run, "Running")
        produced: dict[tuple[str, str], Path] = {}
        for node in nodes:
            with self.lock:
                if state.cancel.is_set():
                    self._end_v2_run(run, "Canceled")
                    return
                self._set_step(node.step, "Queued", self.clock())
            node_dir = job_dir / node.step.name
            try:
                prepared = self._prepare_node(run, node, inputs, produced, node_dir)
            except NodeError as error:
                with self.lock:
                    node.step.error = _system_error(str(error))
                    self._set_step(node.step, "Failed", self.clock())
                    self._end_v2_run(run, "Failed", _pipeline_error([node.step.name]))
                return
            rc, error = self._run_node(node, prepared, node_dir, state)
            for name, (folder, uri) in prepared.synced.items():
                if rc is not None:  # the process ran: what it wrote through the mount is in the datastore
                    self.upload_folder(folder, uri)
                produced[(node.step.name, name)] = folder
            for name, folder in prepared.outputs.items():
                produced[(node.step.name, name)] = folder
            with self.lock:
                now = self.clock()
                if state.cancel.is_set():
                    self._set_step(node.step, "Canceled", now)
                    self._end_v2_run(run, "Canceled")
                    return
                if rc != 0:
                    node.step.error = error
                    self._set_step(node.step, "Failed", now)
                    self._end_v2_run(run, "Failed", _pipeline_error([node.step.name]))
                    return
                self._set_step(node.step, "Completed", now)
        with self.lock:
            self._end_v2_run(run, "Completed")

    # ------------------------------------------------------------------ status
    def _set_v2_status(self, run: V2Run, status: str) -> None:
        now = self.clock()
        run.history_status = status
        if run.transitions[-1] != status:
            run.transitions.append(status)
        run.status = PIPELINE_OF_HISTORY.get(status, "Running")
        if status == "Running":
            run.started = run.started or now
        if status in HISTORY_TERMINAL:
            run.started = run.started or now
            run.ended = now

    def _end_v2_run(self, run: V2Run, status: str, error: dict[str, Any] | None = None) -> None:
        """Settle the job. A canceled job leaves no node unfinished; after a failure the nodes that never
        started stay NotStarted (continue_on_step_failure: false)."""
        now = self.clock()
        for step in run.steps:
            if step.status in HISTORY_TERMINAL:
                continue
            if step.status != "NotStarted" or status == "Canceled":
                self._set_step(step, "Canceled", now)
        run.error = error
        self._set_v2_status(run, status)

    # ------------------------------------------------------------------ planning
    def _v2_nodes(self, run: V2Run) -> list[_Node]:
        """The command nodes of the job's pipeline component, each after the nodes whose outputs it takes
        (Kahn's order, ties in the component's order)."""
        component = self._component_by_id(run.job["properties"]["componentId"])
        specs: dict[str, dict[str, Any]] = component["properties"]["componentSpec"]["jobs"]
        after: dict[str, set[str]] = {name: set() for name in specs}
        for name, spec in specs.items():
            for binding in (spec.get("inputs") or {}).values():
                found = _NODE_OUTPUT.match(str(_binding_value(binding) or ""))
                if found and found[1] in after:
                    after[name].add(found[1])
        ordered: list[str] = []
        while len(ordered) < len(specs):
            ready = [n for n in specs if n not in ordered and after[n] <= set(ordered)]
            if not ready:
                raise ValueError("the pipeline component's nodes bind each other in a cycle")
            ordered.append(ready[0])
        nodes = []
        for name in ordered:
            spec = specs[name]
            kind = spec.get("type", "command")
            if kind not in ("command", "parallel"):
                raise ValueError(f"node {name}: type {kind!r} is not emulated (command and parallel only)")
            registered = self._component_by_id(str(spec.get("componentId") or ""))
            component_spec = registered["properties"]["componentSpec"]
            parallel = None
            if kind == "parallel":
                parallel = {key: component_spec.get(key) for key in PARALLEL_FIELDS}
                parallel.update({key: spec[key] for key in PARALLEL_FIELDS if spec.get(key) is not None})
                component_spec = {**component_spec, "command": parallel_command(name, parallel)}
                code = (parallel.get("task") or {}).get("code")
            else:
                code = component_spec.get("code")
            nodes.append(
                _Node(
                    step=run.step(name),  # type: ignore[arg-type]
                    spec=spec,
                    component=component_spec,
                    code_uri=self._code_uri(code) if code else None,
                    parallel=parallel,
                )
            )
        return nodes

    def _code_uri(self, code: str) -> str:
        text = code.removeprefix("azureml:")
        if "/codes/" in text:
            name, _, version = text.partition("/codes/")[2].partition("/versions/")
        else:
            name, _, version = text.partition(":")
        return self._version("codes", name, version)["properties"]["codeUri"]

    def _parent_inputs(self, run: V2Run) -> dict[str, dict[str, Any]]:
        """The job's inputs over the pipeline component's defaults: {name: {"type", "value" | "uri", ...}}."""
        component = self._component_by_id(run.job["properties"]["componentId"])
        declared = component["properties"]["componentSpec"].get("inputs") or {}
        found: dict[str, dict[str, Any]] = {}
        for name, spec in declared.items():
            if (spec or {}).get("default") is not None:
                found[name] = {"type": "literal", "value": str(spec["default"])}
        for name, given in (run.job["properties"].get("inputs") or {}).items():
            kind = str(given.get("jobInputType") or given.get("job_input_type") or "literal")
            if kind == "literal":
                found[name] = {"type": "literal", "value": str(given.get("value"))}
            else:
                found[name] = {"type": kind, "uri": given.get("uri"), "mode": given.get("mode")}
        return found

    def _prepare_node(
        self,
        run: V2Run,
        node: _Node,
        parent_inputs: dict[str, dict[str, Any]],
        produced: dict[tuple[str, str], Path],
        node_dir: Path,
    ) -> _Prepared:
        """Inputs materialised, outputs given folders, the command with every reference substituted."""
        prepared = _Prepared(command=str(node.component.get("command") or ""))
        declared_inputs = node.component.get("inputs") or {}
        bindings = node.spec.get("inputs") or {}
        for name, spec in declared_inputs.items():
            spec = spec or {}
            value = self._node_input(name, spec, bindings.get(name), parent_inputs, produced, node_dir)
            if value is None and spec.get("default") is not None:
                value = str(spec["default"])
            if value is not None:
                prepared.inputs[name] = value
        job_outputs = run.job["properties"].get("outputs") or {}
        output_bindings = node.spec.get("outputs") or {}
        for name in node.component.get("outputs") or {}:
            folder = node_dir / "outputs" / name
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            bound = _PARENT_OUTPUT.match(str(_binding_value(output_bindings.get(name)) or ""))
            uri = (job_outputs.get(bound[1]) or {}).get("uri") if bound else None
            if uri:
                uri = self._output_uri(str(uri), node.step.name, name)
                self.download_into(uri, folder)  # rw_mount: what is there already is visible
                prepared.synced[name] = (folder, uri)
            else:
                prepared.outputs[name] = folder
            prepared.inputs.setdefault(f"__output__{name}", str(folder))
        prepared.command = _substitute(node.step.name, prepared.command, prepared.inputs)
        if node.parallel is not None:
            prepared.parallel = self._parallel_environment(node, prepared, parent_inputs)
        prepared.inputs = {k: v for k, v in prepared.inputs.items() if not k.startswith("__output__")}
        return prepared

    def _parallel_environment(
        self, node: _Node, prepared: _Prepared, parent_inputs: dict[str, dict[str, Any]]
    ) -> dict[str, str]:
        """What the emulated parallel driver needs beyond its command line: the node count (resources.
        instance_count, maybe bound to a pipeline input), the input_data input (uri_folder/uri_file: file
        items; mltable: tabular), and the parallel settings' environment_variables."""
        assert node.parallel is not None
        count = (node.parallel.get("resources") or {}).get("instance_count") or 1
        bound = _PARENT_INPUT.match(str(count))
        if bound:
            count = (parent_inputs.get(bound[1]) or {}).get("value") or (
                ((node.component.get("inputs") or {}).get(bound[1]) or {}).get("default") or 1
            )
        reference = _INPUT_REFERENCE.match(str(node.parallel.get("input_data") or ""))
        if not reference or reference[1] not in prepared.inputs:
            raise NodeError(
                f"node {node.step.name}: input_data {node.parallel.get('input_data')!r} has no value"
            )
        kind = ((node.component.get("inputs") or {}).get(reference[1]) or {}).get("type")
        inputs = {
            reference[1]: {
                "path": prepared.inputs[reference[1]],
                "kind": "tabular" if kind == "mltable" else "file",
            }
        }
        variables = {str(k): str(v) for k, v in (node.parallel.get("environment_variables") or {}).items()}
        return {**variables, "PRS_NODE_COUNT": str(int(str(count))), "PRS_INPUTS": json.dumps(inputs)}

    def _node_input(
        self,
        name: str,
        spec: dict[str, Any],
        binding: Any,
        parent_inputs: dict[str, dict[str, Any]],
        produced: dict[tuple[str, str], Path],
        node_dir: Path,
    ) -> str | None:
        value = _binding_value(binding)
        if value is None:
            return None
        text = str(value)
        from_node = _NODE_OUTPUT.match(text)
        if from_node:
            source = produced.get((from_node[1], from_node[2]))
            if source is None:
                raise NodeError(f"input {name}: node {from_node[1]} produced no output {from_node[2]}")
            return str(source)
        from_parent = _PARENT_INPUT.match(text)
        if from_parent:
            given = parent_inputs.get(from_parent[1])
            if given is None:
                return None  # absent: the component's default, or an optional input left out
            if given["type"] == "literal":
                return given["value"]
            return str(self._materialise(name, given, node_dir))
        kind = (
            binding.get("job_input_type") or binding.get("jobInputType")
            if isinstance(binding, dict)
            else None
        )
        if kind in _ASSET_TYPES and isinstance(binding, dict) and binding.get("uri"):
            return str(self._materialise(name, {"type": kind, "uri": binding["uri"]}, node_dir))
        # a literal, maybe with parent inputs inside it
        return _ANY_PARENT_INPUT.sub(lambda m: (parent_inputs.get(m[1]) or {}).get("value", ""), text)

    def _materialise(self, name: str, given: dict[str, Any], node_dir: Path) -> Path:
        """A data or model input as the runtime hands it to the process: a local file or folder."""
        uri = str(given.get("uri") or "")
        target = node_dir / "inputs" / name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        try:
            location = self._asset_location(given["type"], uri)
            return self.download_uri(location, target)
        except (FileNotFoundError, ValueError, KeyError) as error:
            raise NodeError(
                f"input {name} ({given['type']} {uri}) could not be materialised: {error}"
            ) from error

    def _asset_location(self, kind: str, uri: str) -> str:
        """The storage URI behind an input's `uri`: a data or model version's, or a datastore URI as it is."""
        if uri.startswith("azureml://"):
            return uri
        text = uri.removeprefix("azureml:")
        for asset_kind, field_name in (("data", "dataUri"), ("models", "modelUri")):
            marker = f"/{asset_kind}/"
            if marker in text:
                name, _, version = text.partition(marker)[2].partition("/versions/")
                return self._version(asset_kind, name, version)["properties"][field_name]
        name, _, version = text.partition(":")
        asset_kind = "models" if kind in ("custom_model", "mlflow_model") else "data"
        field_name = "modelUri" if asset_kind == "models" else "dataUri"
        if not version:
            raise ValueError(f"{uri} names no version")
        return self._version(asset_kind, name, version)["properties"][field_name]

    def _output_uri(self, uri: str, node_name: str, output_name: str) -> str:
        return (
            uri.replace("${{name}}", node_name)
            .replace("${{output_name}}", output_name)
            .replace("${{default_datastore}}", "workspaceblobstore")
        )

    def download_into(self, uri: str, folder: Path) -> None:
        """Copy what is stored under the datastore folder `uri` into `folder` (nothing if there is none)."""
        try:
            found = self.download_uri(uri, folder.parent / f".{folder.name}-sync")
        except FileNotFoundError:
            return
        if found.is_dir():
            shutil.copytree(found, folder, dirs_exist_ok=True)
            shutil.rmtree(found)

    # ------------------------------------------------------------------ the node's process
    def _run_node(
        self, node: _Node, prepared: _Prepared, node_dir: Path, state: _RunState
    ) -> tuple[int | None, dict[str, Any] | None]:
        """Run one node's command to its end: (exit code, None) or (exit code, the runtime's error); exit
        code None when the job was canceled before the process started."""
        assert self.execution is not None
        working = node_dir / "wd"
        if working.exists():
            shutil.rmtree(working)
        working.mkdir(parents=True)
        if node.code_uri:
            code = self.download_uri(node.code_uri, node_dir / "code")
            shutil.copytree(code, working, dirs_exist_ok=True) if code.is_dir() else shutil.copy2(
                code, working
            )
        if prepared.parallel is not None:
            shutil.copytree(PRS_DRIVER, working / "driver", ignore=shutil.ignore_patterns("__pycache__"))
        python = self.execution.step_python
        shims = node_dir / "bin"  # `python` is the steps' interpreter whatever its file is called
        shims.mkdir(parents=True, exist_ok=True)
        for alias in ("python", "python3"):
            # a script, not a symlink: a venv's interpreter finds its pyvenv.cfg (and so its packages) only
            # when started by its own path
            shim = shims / alias
            if not shim.exists():
                shim.write_text(f'#!/bin/sh\nexec {shlex.quote(str(python))} "$@"\n')
                shim.chmod(0o755)
        environment = {
            **self._process_environment(node_dir, shims),
            **(prepared.parallel or {}),
            **self.job_environment(node.step.run_id),
        }
        log_path = node_dir / STD_LOG
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            if state.cancel.is_set():
                return None, None
            node.step.log_path = log_path
            with open(log_path, "wb") as log:
                state.process = start_process(
                    ["/bin/bash", "-c", prepared.command], working, environment, log
                )
            self._set_step(node.step, "Running", self.clock())
        process = state.process
        stderr_lines: list[str] = []
        for line in tee_stderr(process, log_path):
            stderr_lines.append(line.rstrip("\n"))
            del stderr_lines[:-ERROR_TAIL_LINES]
        rc = process.wait()
        state.process = None
        # where the runtime keeps a node's log: an artifact of the node's run
        self._keep_logs(
            node.step.run_id, STD_LOG, log_path, working if prepared.parallel is not None else None
        )
        if rc == 0:
            return 0, None
        return rc, node_error(prepared.command, rc, stderr_lines, iso(self.clock()))

    # ------------------------------------------------------------------ for tests
    def node_log(self, job_name: str, node_name: str) -> str:
        """The user_logs/std_log.txt of a node of an executed v2 job ("" before it started)."""
        return self.step_log(job_name, node_name)


def parallel_command(name: str, settings: dict[str, Any]) -> str:
    """The emulated driver's command line for a parallel node, in the v1 step's structured-argument words
    (the v2 runtime's translation is not public): entry_script, mini_batch_size, the two thresholds,
    retry_settings (timeout; max_retries + 1 tries), max_concurrency_per_instance, logging_level, append_row_to
    (else summary_only), the input_data input, then task.program_arguments with its `${{inputs.x}}` and
    `${{outputs.y}}` left for the runner to substitute."""
    task = settings.get("task") or {}
    entry = task.get("entry_script")
    if not entry:
        raise ValueError(f"node {name}: a parallel node's task names no entry_script")
    retry = settings.get("retry_settings") or {}
    words = ["python", "driver/amlbi_main.py", "--scoring_module_name", shlex.quote(str(entry))]

    def option(flag: str, value: Any) -> None:
        if value is not None and value != "":
            words.extend([flag, shlex.quote(str(value))])

    option("--mini_batch_size", settings.get("mini_batch_size"))
    option("--error_threshold", settings.get("error_threshold", -1))
    option("--allowed_failed_count", settings.get("mini_batch_error_threshold"))
    option("--logging_level", settings.get("logging_level"))
    option("--run_invocation_timeout", retry.get("timeout", 60))
    option("--run_max_try", int(retry.get("max_retries", 2)) + 1)
    option("--process_count_per_node", settings.get("max_concurrency_per_instance"))
    append_to = task.get("append_row_to")
    if append_to:
        words.extend(["--output_action", "append_row", "--output", str(append_to)])
    else:
        words.extend(["--output_action", "summary_only"])
    reference = _INPUT_REFERENCE.match(str(settings.get("input_data") or ""))
    if not reference:
        raise ValueError(
            f"node {name}: input_data must be ${{{{inputs.<name>}}}}, not {settings.get('input_data')!r}"
        )
    words.extend(["--input_fds_0", reference[1]])
    program = str(task.get("program_arguments") or "").strip()
    return " ".join(words) + (f" {program}" if program else "")


def node_error(command: str, exit_code: int, stderr_lines: list[str], time: str | None) -> dict[str, Any]:
    """The run-history error of a node whose process exited non-zero, in the common runtime's shape: a
    UserError whose message names the user process and its exit code, points at user_logs/std_log.txt and
    quotes the end of the process's stderr."""
    process = _user_process(command)
    tail = "\n".join(line for line in stderr_lines if line.strip())[-ERROR_TAIL_CHARS:]
    message = USER_PROCESS_FAILED.format(process=process, exit_code=exit_code, error=tail or "(no stderr)")
    return history_error(
        "UserError",
        message,
        time=time,
        component_name="CommonRuntime",
        message_parameters={},
        additionalInfo=None,
    )


def _pipeline_error(failed: list[str]) -> dict[str, Any]:
    nodes = ", ".join(f"/{name}" for name in failed)
    return {
        "error": {
            "code": "UserError",
            "message": PIPELINE_FAILED.format(nodes=nodes),
            "messageParameters": {},
            "details": [],
            "innerError": None,
        },
        "correlation": None,
    }


def _system_error(message: str) -> dict[str, Any]:
    return {
        "error": {"code": "SystemError", "message": message, "messageParameters": {}, "details": []},
        "correlation": None,
    }


def _user_process(command: str) -> str:
    """The program a command line starts ('python' for `python x.py ...`), as the runtime names it."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    for word in words:
        if "=" in word.split("/")[0] and not word.startswith(("/", ".")):
            continue  # VAR=value prefixes
        return word
    return "/bin/bash"


def _binding_value(binding: Any) -> Any:
    if isinstance(binding, dict):
        return binding.get("value") if "value" in binding else binding.get("uri")
    return binding


def _substitute(node: str, command: str, values: dict[str, str]) -> str:
    """`$[[...]]` blocks kept only when every input they name is present, then each `${{inputs.x}}` and
    `${{outputs.y}}` replaced by its shell-quoted value."""

    def lookup(kind: str, name: str) -> str | None:
        return values.get(name) if kind == "inputs" else values.get(f"__output__{name}")

    def optional(block: re.Match[str]) -> str:
        inner = block[1]
        present = all(lookup(k, n) is not None for k, n in _REFERENCE.findall(inner))
        return inner if present else ""

    def replace(reference: re.Match[str]) -> str:
        value = lookup(reference[1], reference[2])
        if value is None:
            raise NodeError(f"node {node}: the command uses {reference[0]}, which has no value")
        return shlex.quote(value)

    return _REFERENCE.sub(replace, _OPTIONAL_BLOCK.sub(optional, command))
