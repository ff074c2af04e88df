"""The emulated workspace runs parallel steps as Azure ML does, pinned by the real SDKs: a toy pipeline
published with azureml-pipeline-steps' own ParallelRunStep (v1) and one built with azure-ai-ml's
parallel_run_function (v2), each over a toy entry script, run at 2 nodes x 2 processes: every item scored
once by workers on both nodes, one injected run() failure retried, one run() over the invocation timeout killed
and retried, failures over the error threshold failing the step with exit code 42 and the entry script's error in
logs/user/error.txt and logs/job_result.txt (the step run's artifacts)."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from emulator.aml import FakeAzureML
from tests.fixtures_fakes import DEVSTORE_ACCOUNT, DEVSTORE_KEY, AzuriteBlob, sdk_workspace

pytest.importorskip("azureml.pipeline.steps")

RUN_TIMEOUT = 120.0
ITEMS = 10

MAKE = """
import argparse, pathlib
p = argparse.ArgumentParser(); p.add_argument("--out"); a = p.parse_args()
for i in range(ITEMS):
    pathlib.Path(a.out, f"item-{i:02d}.txt").write_text(str(i))
print("made items")
""".replace("ITEMS", str(ITEMS))

# The toy entry script. Its --mode (a pipeline parameter) injects the faults: fail-once (item-03's first try
# raises), sleep-once (item-03's first try outlives the invocation timeout), fail-always (item-03 and item-05
# always raise). Each scored item is written with open(..., "x"): an item scored twice fails the test.
SCORE = """
import argparse, os, pathlib, time
from azureml_user.parallel_run import EntryScript

def init():
    global args, out, who
    p = argparse.ArgumentParser()
    p.add_argument("--mode", default="ok"); p.add_argument("--factor", type=int, default=1)
    p.add_argument("--predictions-dir")
    args, _ = p.parse_known_args()
    entry = EntryScript()
    out = pathlib.Path(args.predictions_dir or entry.output_dir)
    who = f"{os.getcwd()}|{entry.agent_name}|{os.getpid()}"
    entry.logger.info("init in %s", who)

def _first_try(name):
    try:
        os.close(os.open(out / f".tried-{name}", os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False

def run(mini_batch):
    done = []
    for item in mini_batch:
        name = pathlib.Path(item).stem
        if name == "item-03" and args.mode in ("fail-once", "sleep-once") and _first_try(name):
            if args.mode == "fail-once":
                raise RuntimeError("injected failure of " + name)
            time.sleep(120)
        if args.mode == "fail-always" and name in ("item-03", "item-05"):
            raise ValueError("cannot score " + name)
        value = int(pathlib.Path(item).read_text()) * args.factor
        with open(out / f"{name}.out", "x") as handle:
            handle.write(f"{value}|{who}\\n")
        done.append(name)
    return done
"""
# A tabular input's mini-batch is a DataFrame: each is written under its first and last Order (open "x": a
# mini-batch scored twice fails the test) with the worker that scored it.
SCORE_ROWS = """
import os, pathlib
from azureml_user.parallel_run import EntryScript

def init():
    global out, who
    entry = EntryScript()
    out = pathlib.Path(entry.output_dir)
    who = f"{os.getcwd()}|{entry.agent_name}"

def run(mini_batch):
    ids = mini_batch["Order"].tolist()
    with open(out / f"rows-{ids[0]:05d}-{ids[-1]:05d}.out", "x") as handle:
        handle.write(" ".join(map(str, ids)) + "|" + ",".join(mini_batch.columns) + "|" + who + "\\n")
    return mini_batch[["Order"]]
"""
# 600 rows of about 30 bytes (a quoted field with a comma in each): 18 KB, cut into mini-batches of 2 KB.
ROWS = 600
ROWS_CSV = "Order,Name,Value\n" + "".join(f'{i},"house {i}, Ames",{i * 0.5}\n' for i in range(1, ROWS + 1))
REPORT = """
import argparse, pathlib
p = argparse.ArgumentParser(); p.add_argument("--scored"); a = p.parse_args()
print("report:", len(list(pathlib.Path(a.scored).glob("*.out"))), "scored")
"""


def _scored(folder: Path) -> dict[str, tuple[int, str]]:
    """{item: (value, 'node-cwd|agent|pid')} of what the toy entry script wrote."""
    found = {}
    for path in sorted(folder.glob("*.out")):
        value, who = path.read_text().strip().split("|", 1)
        found[path.stem] = (int(value), who)
    return found


def _artifact(fake: FakeAzureML, step_run_id: str, path: str) -> str:
    """A step run's artifact through the artifact service, as a client reads it."""
    response = requests.get(
        f"{fake.base_url}/artifact/v2.0{fake.workspace_path}/artifacts/content/ExperimentRun/"
        f"dcid.{step_run_id}/{path}",
        headers={"Authorization": "Bearer test-token"},
        timeout=10,
    )
    response.raise_for_status()
    return response.text


# ---------------------------------------------------------------------------------------------- SDK v1
@pytest.fixture(scope="module")
def v1(azurite: AzuriteBlob, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A workspace executing runs with this interpreter, and a toy pipeline published with the real
    ParallelRunStep: make (10 files) -> score-items (ParallelRunStep, node_count a pipeline parameter, 2
    processes per node, 1 file a mini-batch, 5 s invocation timeout, 2 tries, error threshold 1) -> report."""
    from azureml.core import Environment, RunConfiguration
    from azureml.pipeline.core import Pipeline, PipelineData, PipelineParameter
    from azureml.pipeline.steps import ParallelRunConfig, ParallelRunStep, PythonScriptStep

    tmp = tmp_path_factory.mktemp("parallel-v1")
    with pytest.MonkeyPatch.context() as monkeypatch, FakeAzureML(workspace_name="ws-parallel-v1") as fake:
        monkeypatch.setenv("HOME", str(tmp / "home"))
        (tmp / "home").mkdir()
        fake.use_blob_store(azurite.url, DEVSTORE_ACCOUNT, DEVSTORE_KEY)
        fake.enable_execution(step_python=Path(sys.executable), workdir=tmp / "aml")
        for name, value in fake.snapshot_uploads.environ().items():
            monkeypatch.setenv(name, value)
        folder = tmp / "steps"
        folder.mkdir()
        for name, text in {"make.py": MAKE, "score.py": SCORE, "report.py": REPORT}.items():
            (folder / name).write_text(text)
        workspace = sdk_workspace(fake)
        made = PipelineData("made", is_directory=True).as_dataset()
        scored = PipelineData("scored", is_directory=True)
        environment = Environment("toy-env")
        common = {"compute_target": "cpu-cluster", "source_directory": str(folder)}
        config = ParallelRunConfig(
            entry_script="score.py",
            mini_batch_size="1",
            error_threshold=1,
            output_action="summary_only",
            environment=environment,
            node_count=PipelineParameter("node_count", default_value=2),
            process_count_per_node=2,
            run_invocation_timeout=5,
            run_max_try=2,
            environment_variables={"OMP_NUM_THREADS": "1"},
            **common,
        )
        mode = PipelineParameter("mode", default_value="ok")
        warnings.simplefilter("ignore", UserWarning)  # the SDK's advice on the env's azureml pip packages
        steps = [
            PythonScriptStep(
                "make.py",
                name="make",
                arguments=["--out", made],
                outputs=[made],
                runconfig=RunConfiguration(),
                **common,
            ),
            ParallelRunStep(
                name="score-items",
                parallel_run_config=config,
                inputs=[made],
                output=scored,
                arguments=["--mode", mode, "--factor", "3"],
                allow_reuse=False,
            ),
            PythonScriptStep(
                "report.py",
                name="report",
                arguments=["--scored", scored],
                inputs=[scored],
                runconfig=RunConfiguration(),
                **common,
            ),
        ]
        published = Pipeline(workspace, steps=steps).publish(name="toy-parallel", version="1")

        from azureml.core import Dataset

        (folder / "score_rows.py").write_text(SCORE_ROWS)
        fake.register_dataset("toy-rows", ROWS_CSV.encode())
        rows = Dataset.get_by_name(workspace, "toy-rows").as_named_input("rows")
        by_size = ParallelRunConfig(
            entry_script="score_rows.py",
            mini_batch_size="2KB",
            error_threshold=0,
            output_action="summary_only",
            environment=environment,
            node_count=2,
            process_count_per_node=2,
            run_invocation_timeout=30,
            **common,
        )
        scored_rows = PipelineData("scored_rows", is_directory=True)
        step = ParallelRunStep(
            name="score-rows",
            parallel_run_config=by_size,
            inputs=[rows],
            output=scored_rows,
            allow_reuse=False,
        )
        tabular = Pipeline(workspace, steps=[step]).publish(name="toy-parallel-rows", version="1")
        yield SimpleNamespace(fake=fake, pipeline_id=published.id, tabular_id=tabular.id)


def _run_v1(
    v1: SimpleNamespace,
    parameters: dict[str, str],
    pipeline_id: str | None = None,
    step_name: str = "score-items",
    output: str = "scored",
) -> SimpleNamespace:
    response = requests.post(
        f"{v1.fake.pipelines_url}/PipelineRuns/PipelineSubmit/{pipeline_id or v1.pipeline_id}",
        json={"ExperimentName": "toy-parallel", "ParameterAssignments": parameters},
        headers={"Authorization": "Bearer test-token"},
        timeout=10,
    )
    response.raise_for_status()
    run = v1.fake.wait_for_run(response.json()["Id"], RUN_TIMEOUT)
    step = run.step(step_name)
    folder = v1.fake.execution.workdir / "runs" / run.run_id / "data" / step.node_id / output
    return SimpleNamespace(run=run, step=step, output=folder, log=v1.fake.step_log(run.run_id, step_name))


@pytest.mark.azure_path
def test_v1_parallel_run_step_scores_every_item_once_on_two_nodes_of_two_processes(v1) -> None:
    done = _run_v1(v1, {"node_count": "2"})

    assert done.run.history_status == "Completed", (done.run.error_message, done.step.error, done.log)
    assert [(s.name, s.status) for s in done.run.steps] == [
        ("make", "Completed"),
        ("score-items", "Completed"),
        ("report", "Completed"),
    ]
    scored = _scored(done.output)
    assert {name: value for name, (value, _who) in scored.items()} == {
        f"item-{i:02d}": 3 * i for i in range(ITEMS)
    }
    workers = {who for _value, who in scored.values()}
    assert len({who.split("|")[0] for who in workers}) == 2  # two nodes, each in its own working copy
    assert {who.split("|")[1] for who in workers} <= {"process000", "process001"}
    assert "report: 10 scored" in v1.fake.step_log(done.run.run_id, "report")
    # the documented log layout, as the step run's artifacts
    result = _artifact(v1.fake, done.step.run_id, "logs/job_result.txt")
    assert result.startswith("Job succeeded.") and "10 mini batches: 10 succeeded, 0 failed" in result
    logs = {a.split(f"dcid.{done.step.run_id}/", 1)[1] for a in v1.fake.artifacts if done.step.run_id in a}
    for node in ("0", "1"):
        assert f"logs/user/stdout/{node}/process000.stdout.txt" in logs
        assert f"logs/user/entry_script_log/{node}/process000.log.txt" in logs
    assert "logs/sys/master_role.txt" in logs
    assert any(name.startswith("logs/job_progress_overview.") for name in logs)
    master = _artifact(v1.fake, done.step.run_id, "logs/sys/master_role.txt")
    assert "2 node(s) x 2 process(es)" in master
    # the variables of ParallelRunConfig reached the workers' environment? the master runs with them
    assert "OMP_NUM_THREADS" in json.dumps(v1.fake.graphs)


@pytest.mark.azure_path
def test_v1_node_count_is_the_run_parameter_linked_to_node_count(v1) -> None:
    done = _run_v1(v1, {"node_count": "1"})

    assert done.run.history_status == "Completed", (done.run.error_message, done.step.error, done.log)
    assert len({who.split("|")[0] for _v, who in _scored(done.output).values()}) == 1
    assert "1 node(s) x 2 process(es)" in _artifact(v1.fake, done.step.run_id, "logs/sys/master_role.txt")


@pytest.mark.azure_path
def test_v1_a_failed_run_call_is_retried_and_a_run_call_over_the_timeout_is_killed_and_retried(v1) -> None:
    for mode, said in (
        ("fail-once", "RuntimeError: injected failure of item-03"),
        ("sleep-once", "within 5 s"),
    ):
        done = _run_v1(v1, {"mode": mode})

        assert done.run.history_status == "Completed", (mode, done.step.error, done.log)
        assert sorted(_scored(done.output)) == [f"item-{i:02d}" for i in range(ITEMS)], mode
        errors = _artifact(v1.fake, done.step.run_id, "logs/user/error.txt")
        assert said in errors, (mode, errors)
        master = _artifact(v1.fake, done.step.run_id, "logs/sys/master_role.txt")
        assert "failed attempt 1" in master and "retrying" in master


@pytest.mark.azure_path
def test_v1_failures_over_the_error_threshold_fail_the_step_with_exit_42_and_the_error_in_the_logs(
    v1,
) -> None:
    done = _run_v1(v1, {"mode": "fail-always"})

    assert done.run.history_status == "Failed"
    assert [(s.name, s.status) for s in done.run.steps] == [
        ("make", "Completed"),
        ("score-items", "Failed"),
        ("report", "NotStarted"),
    ]
    # run history says what azureml-core's run context records for the driver's exit: no more
    assert done.step.error["message"] == "User program failed with SystemExit: 42"
    result = _artifact(v1.fake, done.step.run_id, "logs/job_result.txt")
    assert result.startswith(
        "Job failed: the error threshold was exceeded: 2 failed items > error_threshold 1"
    )
    assert "ValueError: cannot score item-0" in result
    errors = _artifact(v1.fake, done.step.run_id, "logs/user/error.txt")
    assert "Traceback (most recent call last):" in errors and "ValueError: cannot score item-0" in errors


@pytest.mark.azure_path
def test_v1_a_tabular_dataset_is_cut_into_mini_batches_by_size_and_every_row_scored_once(v1) -> None:
    done = _run_v1(v1, {}, pipeline_id=v1.tabular_id, step_name="score-rows", output="scored_rows")

    assert done.run.history_status == "Completed", (done.run.error_message, done.step.error, done.log)
    batches = [path.read_text().strip().split("|") for path in sorted(done.output.glob("rows-*.out"))]
    ids = [int(i) for text, _columns, _node, _agent in batches for i in text.split()]
    assert sorted(ids) == list(range(1, ROWS + 1))  # every row once: no mini-batch lost, none twice
    assert {columns for _ids, columns, _node, _agent in batches} == {"Order,Name,Value"}  # header in each
    size = len(ROWS_CSV.encode()) - len("Order,Name,Value\n")
    assert len(batches) == -(-size // 2048)  # cut by size: about 2 KB of whole lines each
    assert all(len(text.split()) >= 2048 // 40 for text, *_ in batches[:-1])
    assert len({node for _ids, _columns, node, _agent in batches}) == 2  # spread over both nodes
    result = _artifact(v1.fake, done.step.run_id, "logs/job_result.txt")
    assert result.startswith("Job succeeded.") and f"{ROWS} items, {ROWS} returned, 0 failed" in result


# ---------------------------------------------------------------------------------------------- SDK v2
@pytest.fixture(scope="module")
def v2(azurite: AzuriteBlob, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A workspace executing v2 jobs with this interpreter, and a toy pipeline registered with azure-ai-ml:
    make (a command node, 10 files) -> score (parallel_run_function: instance_count bound to the pipeline
    input node_count, max_concurrency_per_instance 2, 1 file a mini-batch, retry_settings timeout 5 s and 1
    retry, error_threshold 1)."""
    from azure.ai.ml import Input, Output, dsl
    from azure.ai.ml.entities import CommandComponent, Environment
    from azure.ai.ml.parallel import RunFunction, parallel_run_function

    from emulator.identity import FakeManagedIdentity
    from tests.fixtures_fakes import ml_client

    tmp = tmp_path_factory.mktemp("parallel-v2")
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        FakeAzureML(workspace_name="ws-parallel-v2") as fake,
        FakeManagedIdentity(jwt=True) as identity,
    ):
        monkeypatch.setenv("HOME", str(tmp / "home"))
        (tmp / "home").mkdir()
        monkeypatch.setenv("AZUREML_CURRENT_CLOUD", "AzureCloud")
        for name, value in identity.environ().items():
            monkeypatch.setenv(name, value)
        fake.use_blob_store(azurite.url, DEVSTORE_ACCOUNT, DEVSTORE_KEY)
        fake.enable_execution(step_python=Path(sys.executable), workdir=tmp / "aml")
        folder = tmp / "steps"
        folder.mkdir()
        for name, text in {"make.py": MAKE, "score.py": SCORE}.items():
            (folder / name).write_text(text)
        client = ml_client(fake)
        environment = client.environments.create_or_update(
            Environment(name="toy-env", version="1", image="img", conda_file={"name": "toy"})
        )
        make_component = client.components.create_or_update(
            CommandComponent(
                name="toy_make",
                version="1",
                code=str(folder),
                environment=environment,
                command="python make.py --out ${{outputs.out}}",
                outputs={"out": Output(type="uri_folder")},
            )
        )
        score_component = client.components.create_or_update(
            parallel_run_function(
                name="toy_score",
                version="1",
                inputs={"parts": Input(type="uri_folder"), "mode": Input(type="string", default="ok")},
                outputs={"scored": Output(type="uri_folder")},
                input_data="${{inputs.parts}}",
                instance_count=2,
                max_concurrency_per_instance=2,
                mini_batch_size="1",
                error_threshold=1,
                retry_settings={"max_retries": 1, "timeout": 5},
                environment_variables={"OMP_NUM_THREADS": "1"},
                task=RunFunction(
                    code=str(folder),
                    entry_script="score.py",
                    environment=environment,
                    program_arguments="--mode ${{inputs.mode}} --factor 3 --predictions-dir ${{outputs.scored}}",
                ),
            ).component
        )

        def toy_parallel(mode, node_count):
            # the variables name the nodes: make, score
            make = make_component()
            score = score_component(parts=make.outputs.out, mode=mode)
            score.resources.instance_count = node_count
            return {"scored": score.outputs.scored}

        toy_parallel.__annotations__ = {"mode": Input(type="string"), "node_count": Input(type="integer")}
        pipeline = client.components.create_or_update(
            dsl.pipeline(name="toy_parallel", version="1")(toy_parallel)
        )
        yield SimpleNamespace(fake=fake, client=client, pipeline=pipeline, jobs=iter(range(1000)))


def _run_v2(v2: SimpleNamespace, mode: str = "ok", node_count: int = 2) -> SimpleNamespace:
    from azure.ai.ml.entities import PipelineJob

    name = f"toy-parallel-{next(v2.jobs)}"
    job = PipelineJob(
        component=v2.pipeline,
        name=name,
        experiment_name="toy-parallel",
        inputs={"mode": mode, "node_count": node_count},
    )
    job.settings.default_compute = "cpu-cluster"
    v2.client.jobs.create_or_update(job)
    run = v2.fake.wait_for_run(name, RUN_TIMEOUT)
    node = run.step("score")
    output = v2.fake.execution.workdir / "jobs" / name / "score" / "outputs" / "scored"
    return SimpleNamespace(run=run, step=node, output=output, log=v2.fake.step_log(name, "score"))


@pytest.mark.azure_path
def test_v2_parallel_node_scores_every_item_once_on_two_instances_of_two_processes(v2) -> None:
    done = _run_v2(v2)

    assert done.run.history_status == "Completed", (done.step.error, done.log)
    scored = _scored(done.output)
    assert {name: value for name, (value, _who) in scored.items()} == {
        f"item-{i:02d}": 3 * i for i in range(ITEMS)
    }
    assert len({who.split("|")[0] for _value, who in scored.values()}) == 2
    master = _artifact(v2.fake, done.step.run_id, "logs/sys/master_role.txt")
    assert "2 node(s) x 2 process(es)" in master
    assert "--run_invocation_timeout', '5', '--run_max_try', '2'" in master
    assert v2.client.jobs.get(done.run.run_id).status == "Completed"
    children = list(v2.client.jobs.list(parent_job_name=done.run.run_id))
    assert [(c.display_name, c.status) for c in children] == [("make", "Completed"), ("score", "Completed")]


@pytest.mark.azure_path
def test_v2_retries_a_failed_and_a_timed_out_run_call_and_takes_the_node_count_input(v2) -> None:
    for mode, said in (
        ("fail-once", "RuntimeError: injected failure of item-03"),
        ("sleep-once", "within 5 s"),
    ):
        done = _run_v2(v2, mode, node_count=1)

        assert done.run.history_status == "Completed", (mode, done.step.error, done.log)
        assert sorted(_scored(done.output)) == [f"item-{i:02d}" for i in range(ITEMS)], mode
        assert len({who.split("|")[0] for _value, who in _scored(done.output).values()}) == 1
        assert said in _artifact(v2.fake, done.step.run_id, "logs/user/error.txt"), mode


@pytest.mark.azure_path
def test_v2_failures_over_the_error_threshold_fail_the_node_with_exit_42(v2) -> None:
    done = _run_v2(v2, "fail-always")

    assert done.run.history_status == "Failed"
    assert v2.client.jobs.get(done.run.run_id).status == "Failed"
    message = done.step.error["error"]["message"]
    assert message.startswith("Execution failed. User process 'python' exited with status code 42.")
    result = _artifact(v2.fake, done.step.run_id, "logs/job_result.txt")
    assert result.startswith(
        "Job failed: the error threshold was exceeded: 2 failed items > error_threshold 1"
    )
    assert "ValueError: cannot score item-0" in _artifact(v2.fake, done.step.run_id, "logs/user/error.txt")
