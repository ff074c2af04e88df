"""The emulated workspace runs what was published: a submitted run executes the graph the SDK sent (module
nodes, edges, structured arguments, parameter links) with the run's parameters, each step as its own process
with the steps' Python, the job's AZUREML_* variables, a private HOME and the snapshot the SDK uploaded as
its working directory. Opt-in (`enable_execution`): without it runs move only when a test moves them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from emulator.aml.state import HISTORY_TERMINAL, FakeRun, FakeStep

# Each v1 step's script runs under azureml-core's own run context (RunStatusContext), as on Azure ML: the SDK
# itself then records a failed step's error in run history (v1_driver.py).
V1_DRIVER = Path(__file__).with_name("v1_driver.py")
# A ParallelRunStep's module runs `driver/amlbi_main.py`, a folder the service supplies; the emulated one
# (prs_driver/, see its amlbi_main.py) is copied into the step's working directory as `driver/`.
PRS_DRIVER = Path(__file__).with_name("prs_driver")
PARALLEL_MODULE_TYPE = "BatchInferencing"
PRS_LOGS = "logs"
# How long a canceled step gets between SIGTERM and SIGKILL.
CANCEL_GRACE_SECONDS = 5.0
DRIVER_LOG = "azureml-logs/70_driver_log.txt"
_DATA_REFERENCE = re.compile(r"\$AZUREML_DATAREFERENCE_(\w+)")


@dataclass
class Execution:
    """How steps are run: the interpreter of the steps' environment and where runs keep their folders."""

    step_python: Path
    workdir: Path
    # Variables every step process gets besides the job's own (e.g. a proxy for a test's storage).
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass
class _RunState:
    """What the executing thread of one run shares with cancel and with waiters."""

    done: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event = field(default_factory=threading.Event)
    process: subprocess.Popen | None = None
    thread: threading.Thread | None = None


@dataclass(frozen=True)
class _StepPlan:
    step: FakeStep
    script: str
    arguments: list[str]
    snapshot_id: str
    environment: dict[str, str]
    # a ParallelRunStep: the emulated driver's variables (PRS_NODE_COUNT, PRS_INPUTS); None for other steps
    parallel: dict[str, str] | None = None


class ExecutionService:
    """Mixed into FakeAzureML: `enable_execution(...)` makes every submitted run execute in a background
    thread; `wait_for_run` waits (bounded) for its end; `step_log` reads a step's log."""

    execution: Execution | None = None

    def enable_execution(
        self, step_python: Path, workdir: Path, extra_env: dict[str, str] | None = None
    ) -> Execution:
        """Execute submitted runs from now on. Publishes from now on keep their snapshot files (see
        content.keep_snapshots: the publishing process needs `fake.snapshot_uploads.environ()`)."""
        workdir = Path(workdir)
        self.keep_snapshots(workdir / "snapshot-uploads")
        with self.lock:
            self.execution = Execution(Path(step_python), workdir, dict(extra_env or {}))
            self._executions: dict[str, _RunState] = {}
        return self.execution

    def wait_for_run(self, run_id: str, timeout: float) -> FakeRun:
        """Wait until the executing run ends (a terminal status); TimeoutError after `timeout` seconds."""
        state = self._executions.get(run_id)
        if state is None:
            raise KeyError(f"run {run_id} is not executing (enable_execution before the submit)")
        if not state.done.wait(timeout):
            raise TimeoutError(f"run {run_id} did not end within {timeout} s: {self.runs[run_id].status}")
        return self.runs[run_id]

    def step_log(self, run_id: str, step_name: str) -> str:
        """The stdout and stderr of a step run of an executed run ("" before it started)."""
        step = self.runs[run_id].step(step_name)
        if step.log_path is None or not step.log_path.exists():
            return ""
        return step.log_path.read_text(errors="replace")

    def upload_logs(self, step_run_id: str, folder: Path) -> None:
        """A parallel step's logs/ folder as artifacts of its step run (where the studio shows them)."""
        for path, data in parallel_logs(folder).items():
            self.put_artifact("ExperimentRun", f"dcid.{step_run_id}", path, data)

    # ------------------------------------------------------------------ hooks (called under self.lock)
    def _start_execution(self, run: FakeRun) -> None:
        if self.execution is None:
            return
        self._execute_in_thread(
            run,
            f"run-{run.run_id[:8]}",
            lambda state: self._execute_steps(run, state),
            lambda error: self._end_run(
                run, "Failed", f"The emulated workspace could not run the pipeline: {error}"
            ),
        )

    def _execute_in_thread(
        self,
        run: FakeRun,
        name: str,
        execute: Callable[[_RunState], None],
        fail: Callable[[Exception], None],
    ) -> None:
        """Run `execute` in a thread of its own (a v1 run or a v2 job, the state `wait_for_run` and cancel use);
        an exception from it, a defect of the emulator or a broken graph, ends the run through `fail`, visibly
        (called under self.lock)."""
        state = _RunState()
        self._executions[run.run_id] = state

        def body() -> None:
            try:
                execute(state)
            except Exception as error:
                with self.lock:
                    fail(error)
            finally:
                state.done.set()

        state.thread = threading.Thread(target=body, name=name, daemon=True)
        state.thread.start()

    def _stop_execution(self, run: FakeRun) -> None:
        state = getattr(self, "_executions", {}).get(run.run_id)
        if state is None:
            return
        state.cancel.set()
        _terminate(state.process)

    def _stop_all_executions(self) -> None:
        for state in list(getattr(self, "_executions", {}).values()):
            state.cancel.set()
            _terminate(state.process)
        for state in list(getattr(self, "_executions", {}).values()):
            if state.thread is not None:
                state.thread.join(timeout=CANCEL_GRACE_SECONDS + 5)

    # ------------------------------------------------------------------ the run's thread
    def _execute_steps(self, run: FakeRun, state: _RunState) -> None:
        assert self.execution is not None
        run_dir = self.execution.workdir / "runs" / run.run_id
        with self.lock:
            if state.cancel.is_set() or run.history_status in HISTORY_TERMINAL:
                self._end_run(run, "Canceled")
                return
            order = self._graph_order(run)
            now = self.clock()
            run.status, run.history_status, run.started = "Running", "Running", now
        outputs: dict[tuple[str, str], Path] = {}
        for node, module in order:
            with self.lock:
                step = next(s for s in run.steps if s.node_id == node["Id"])
                if state.cancel.is_set():
                    self._end_run(run, "Canceled")
                    return
                self._set_step(step, "Queued", self.clock())
                plan = self._plan_step(run, step, node, module, run_dir, outputs)
            rc, error = self._run_step(plan, run_dir / step.name, state)
            with self.lock:
                now = self.clock()
                if state.cancel.is_set():
                    self._set_step(step, "Canceled", now)
                    self._end_run(run, "Canceled")
                    return
                if rc != 0:
                    step.error_message = error
                    self._set_step(step, "Failed", now)
                    self._end_run(run, "Failed", f"Step {step.name} failed: {error}")
                    return
                self._set_step(step, "Completed", now)
        with self.lock:
            self._end_run(run, "Finished")

    def _end_run(self, run: FakeRun, status: str, error: str | None = None) -> None:
        """Settle the run (pipelines-service code) and leave no step busy: unfinished steps of a canceled
        run are Canceled; steps that never started after a failure stay NotStarted."""
        now = self.clock()
        for step in run.steps:
            if step.status in HISTORY_TERMINAL or step.status == "NotStarted":
                continue
            self._set_step(step, "Canceled", now)
        if status == "Canceled":
            for step in run.steps:
                if step.status == "NotStarted":
                    self._set_step(step, "Canceled", now)
        history = {"Finished": "Completed", "Failed": "Failed", "Canceled": "Canceled"}[status]
        run.status, run.history_status = status, history
        run.started = run.started or now
        run.ended = now
        if error:
            run.error_message = error

    def _graph_order(self, run: FakeRun) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """The module nodes of the run's graph, each after the nodes whose outputs it takes (Kahn's order,
        ties in the order the SDK listed the nodes)."""
        pipeline = self.pipelines[run.pipeline_id]
        graph = (self.graphs.get(pipeline["GraphId"]) or {}).get("Graph")
        if not graph:
            raise ValueError(f"pipeline {run.pipeline_id} has no graph to execute (it was not published)")
        nodes = list(graph.get("ModuleNodes") or [])
        after: dict[str, set[str]] = {n["Id"]: set() for n in nodes}
        for edge in graph.get("Edges") or []:
            source = (edge.get("SourceOutputPort") or {}).get("NodeId")
            target = (edge.get("DestinationInputPort") or {}).get("NodeId")
            if source in after and target in after:
                after[target].add(source)
        ordered: list[dict[str, Any]] = []
        while len(ordered) < len(nodes):
            done = {n["Id"] for n in ordered}
            ready = [n for n in nodes if n["Id"] not in done and after[n["Id"]] <= done]
            if not ready:
                raise ValueError("the graph has a cycle")
            ordered.append(ready[0])
        return [(node, self.modules[node["ModuleId"]]["Data"]) for node in ordered]

    def _plan_step(
        self,
        run: FakeRun,
        step: FakeStep,
        node: dict[str, Any],
        module: dict[str, Any],
        run_dir: Path,
        outputs: dict[tuple[str, str], Path],
    ) -> _StepPlan:
        """The command line and environment of one step, resolved from the graph and the run."""
        assert self.execution is not None
        interface = module.get("StructuredInterface") or {}
        node_params = {p["Name"]: p for p in node.get("ModuleParameters") or []}
        defaults = {p["Name"]: p.get("DefaultValue") for p in interface.get("Parameters") or []}

        def parameter(name: str, otherwise: str | None = None) -> str:
            # ValueType "1": linked to the pipeline parameter named by Value; "0": a literal value; with neither
            # (nor an interface default), `otherwise` when the value lives elsewhere
            given = node_params.get(name)
            if given is not None and str(given.get("ValueType")) == "1":
                linked = given.get("Value") or name
                if linked in run.parameters:
                    return run.parameters[linked]
            if given is not None and given.get("Value") is not None:
                return str(given["Value"])
            if defaults.get(name) is not None:
                return str(defaults[name])
            if otherwise is not None:
                return otherwise
            raise ValueError(f"step {step.name}: no value for parameter {name}")

        graph = self.graphs[self.pipelines[run.pipeline_id]["GraphId"]]["Graph"]
        sources = {
            (e["DestinationInputPort"]["NodeId"], e["DestinationInputPort"]["PortName"]): (
                e["SourceOutputPort"]["NodeId"],
                e["SourceOutputPort"]["PortName"],
            )
            for e in graph.get("Edges") or []
        }
        # Every output port is a folder of its own per run, as a datastore mount gives one; a port consumed as
        # a dataset (`PipelineData.as_dataset()`) reaches the script as `$AZUREML_DATAREFERENCE_<name>`,
        # which the runtime sets and expands.
        references: dict[str, str] = {}
        for port in interface.get("Outputs") or []:
            if port.get("SkipProcessing"):
                continue
            folder = run_dir / "data" / node["Id"] / port["Name"]
            folder.mkdir(parents=True, exist_ok=True)
            outputs[(node["Id"], port["Name"])] = folder
            references[port.get("DataReferenceName") or port["Name"]] = str(folder)
        for port in interface.get("Inputs") or []:
            source = sources.get((node["Id"], port["Name"]))
            if source is not None and source in outputs:
                references[port.get("DataReferenceName") or port["Name"]] = str(outputs[source])

        def expand(text: str) -> str:
            return _DATA_REFERENCE.sub(lambda m: references.get(m[1], m[0]), text)

        arguments: list[str] = []
        for argument in interface.get("Arguments") or []:
            kind, value = argument.get("ValueType"), argument.get("Value")
            if kind == "Literal":
                arguments.append(expand(str(value)))
            elif kind == "Parameter":
                arguments.append(parameter(value))
            elif kind == "Output":
                folder = outputs.get((node["Id"], value)) or run_dir / "data" / node["Id"] / value
                folder.mkdir(parents=True, exist_ok=True)
                outputs[(node["Id"], value)] = folder
                arguments.append(str(folder))
            elif kind == "Input":
                source = sources.get((node["Id"], value))
                if source is None or source not in outputs:
                    raise ValueError(f"step {step.name}: input {value} has no producing step")
                arguments.append(str(outputs[source]))
            else:
                raise ValueError(f"step {step.name}: argument kind {kind!r} is not emulated")
        script = parameter("Script")
        environment: dict[str, str] = {}
        runconfig = json.loads(node.get("Runconfig") or module.get("Runconfig") or "{}")
        environment.update(((runconfig.get("environment") or {}).get("environmentVariables")) or {})
        environment.update(runconfig.get("environmentVariables") or {})
        for spec in interface.get("Parameters") or []:
            if spec.get("SetEnvironmentVariable"):
                variable = spec.get("EnvironmentVariableOverride") or f"AML_PARAMETER_{spec['Name']}"
                environment[variable] = parameter(spec["Name"])
        environment.update({f"AZUREML_DATAREFERENCE_{name}": path for name, path in references.items()})
        environment.update(self.job_environment(step.run_id))  # the job's AZUREML_* variables (jobs.py)
        snapshot_id = (module.get("DataLocation") or {}).get("StorageId")
        if not snapshot_id:
            raise ValueError(f"step {step.name}: its module names no snapshot")
        parallel = None
        if module.get("ModuleType") == PARALLEL_MODULE_TYPE:
            parallel = self._parallel_plan(run, step, node, interface, sources, outputs, run_dir, runconfig)
            # a node_count linked to a pipeline parameter is the run's value of it; a fixed one is only in the
            # run configuration (the SDK sends NodeCount with ValueType 0 and no Value)
            parallel["PRS_NODE_COUNT"] = parameter("NodeCount", str(runconfig.get("nodeCount") or 1))
        return _StepPlan(step, script, arguments, snapshot_id, environment, parallel)

    def _parallel_plan(
        self,
        run: FakeRun,
        step: FakeStep,
        node: dict[str, Any],
        interface: dict[str, Any],
        sources: dict[tuple[str, str], tuple[str, str]],
        outputs: dict[tuple[str, str], Path],
        run_dir: Path,
        runconfig: dict[str, Any],
    ) -> dict[str, str]:
        """A ParallelRunStep's inputs as the driver gets them: each input port (the `--input_fds_N` /
        `--input_ds_N` names) as a folder a producing step wrote (file items), or a registered tabular
        dataset's file downloaded from the workspace storage (tabular items)."""
        graph = self.graphs[self.pipelines[run.pipeline_id]["GraphId"]]["Graph"]
        dataset_of_port: dict[str, dict[str, Any]] = {}
        for dataset_node in graph.get("DatasetNodes") or []:
            for edge in graph.get("Edges") or []:
                if (edge.get("SourceOutputPort") or {}).get("NodeId") == dataset_node.get("Id"):
                    target = edge.get("DestinationInputPort") or {}
                    if target.get("NodeId") == node["Id"]:
                        dataset_of_port[target.get("PortName")] = dataset_node
        inputs: dict[str, dict[str, str]] = {}
        for port in interface.get("Inputs") or []:
            name = port.get("Name")
            source = sources.get((node["Id"], name))
            if source is not None and source in outputs:
                inputs[name] = {"path": str(outputs[source]), "kind": "file"}
            elif name in dataset_of_port:
                folder = run_dir / "data" / node["Id"] / f"input-{name}"
                inputs[name] = {
                    "path": str(self._download_dataset(dataset_of_port[name], folder)),
                    "kind": "tabular",
                }
            else:
                raise ValueError(f"step {step.name}: input {name} has no producing step or dataset")
        return {"PRS_INPUTS": json.dumps(inputs)}

    def _download_dataset(self, dataset_node: dict[str, Any], folder: Path) -> Path:
        """The file behind a graph's registered-dataset node (DataSetReference {Id, Version}), downloaded."""
        value = ((dataset_node.get("DataSetDefinition") or {}).get("Value")) or {}
        reference = value.get("DataSetReference") or {}
        with self.lock:
            versions = [
                v for vs in self.datasets.values() for v in vs if v.registered_id == reference.get("Id")
            ]
        if not versions:
            raise ValueError(f"dataset {reference.get('Id')} is not registered")
        wanted = reference.get("Version")
        entry = next((v for v in versions if str(v.version) == str(wanted)), versions[-1])
        assert self.blob_store is not None
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / Path(entry.blob_path).name
        target.write_bytes(self.blob_store.container_client().download_blob(entry.blob_path).readall())
        return target

    def _process_environment(self, step_dir: Path, *first_on_path: Path) -> dict[str, str]:
        """What a step's (or a v2 node's) process starts from: PATH with `first_on_path` and then the steps'
        interpreter's folder, a private HOME and TMPDIR in `step_dir`, UTF-8, unbuffered output, and
        enable_execution's extra_env."""
        assert self.execution is not None
        home, tmp = step_dir / "home", step_dir / "tmp"
        for folder in (home, tmp):
            folder.mkdir(parents=True, exist_ok=True)
        path = [*first_on_path, self.execution.step_python.parent]
        return {
            "PATH": ":".join(str(folder) for folder in path) + ":/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "TMPDIR": str(tmp),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            **self.execution.extra_env,
        }

    def _keep_logs(self, step_run_id: str, name: str, log_path: Path, parallel_working: Path | None) -> None:
        """A finished step's (or node's) log as the artifact `name` of its run, and a parallel step's logs/
        folder of `parallel_working` (with no blob store: nothing)."""
        if self.blob_store is not None:
            self.put_artifact("ExperimentRun", f"dcid.{step_run_id}", name, log_path.read_bytes())
            if parallel_working is not None:
                self.upload_logs(step_run_id, parallel_working / PRS_LOGS)

    def _run_step(self, plan: _StepPlan, step_dir: Path, state: _RunState) -> tuple[int, str | None]:
        """Run one step's process to its end; return its exit code and, if it failed, its error: what the
        SDK in the process posted to run history (the step's Error event), else its last `error:` line,
        else its exit code and last line of stderr (a process that died before the SDK could say anything)."""
        assert self.execution is not None
        working = self.write_snapshot(plan.snapshot_id, step_dir / "wd")
        if plan.parallel is not None:
            shutil.copytree(PRS_DRIVER, working / "driver", ignore=shutil.ignore_patterns("__pycache__"))
        environment = {**self._process_environment(step_dir), **plan.environment, **(plan.parallel or {})}
        log_path = step_dir / DRIVER_LOG
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [str(self.execution.step_python), str(V1_DRIVER), plan.script, *plan.arguments]
        with self.lock:
            if state.cancel.is_set():
                return -1, "canceled"
            plan.step.log_path = log_path
            with open(log_path, "ab") as log:
                log.write(f"[emulated job] {' '.join(command)}\n".encode())
                log.flush()
                state.process = start_process(command, working, environment, log)
            self._set_step(plan.step, "Running", self.clock())
        process = state.process
        error_line = None
        last_line = None
        for text in tee_stderr(process, log_path):
            line = text.strip()
            if line:
                last_line = line
            if line.startswith("error: "):
                error_line = line.removeprefix("error: ")
        rc = process.wait()
        state.process = None
        # where Azure ML keeps a step's driver log: an artifact of the step run's data container
        self._keep_logs(
            plan.step.run_id, DRIVER_LOG, log_path, working if plan.parallel is not None else None
        )
        if rc == 0:
            return 0, None
        with self.lock:
            posted = plan.step.error_message if plan.step.error is not None else None
        fallback = f"{plan.script} exited with code {rc}: {last_line or 'no output on stderr'}"
        return rc, posted or error_line or fallback


def parallel_logs(folder: Path) -> dict[str, bytes]:
    """The parallel-run driver's logs/ folder as {"logs/<path>": bytes}."""
    if not folder.is_dir():
        return {}
    return {
        f"{PRS_LOGS}/{p.relative_to(folder).as_posix()}": p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def start_process(
    command: list[str], working: Path, environment: dict[str, str], log: IO[bytes]
) -> subprocess.Popen:
    """A step's (or a v2 node's) process: no stdin, stdout into `log`, stderr piped for the caller to read, in
    its own process group (cancel stops it and its children)."""
    return subprocess.Popen(
        command,
        cwd=working,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def tee_stderr(process: subprocess.Popen, log_path: Path) -> Iterator[str]:
    """A started process's stderr line by line (decoded) as it comes, each also appended to its log."""
    assert process.stderr is not None
    with open(log_path, "ab", buffering=0) as log:
        for raw in process.stderr:
            log.write(raw)
            yield raw.decode(errors="replace")


def _terminate(process: subprocess.Popen | None) -> None:
    """SIGTERM to the step's process group, SIGKILL after a grace period (in a thread: never block a request)."""
    if process is None or process.poll() is not None:
        return

    def stop() -> None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=CANCEL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    threading.Thread(target=stop, name="stop-step", daemon=True).start()
