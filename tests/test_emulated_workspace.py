"""The emulated workspace as a step inside an Azure ML job sees it, pinned by the real azureml SDK: each test
runs the SDK (or a step script) in its own process with the job's variables from `fake.job_environment` and a
private HOME, against the fake on 127.0.0.1 and Azurite behind a lower-case http_proxy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from emulator.aml import FakeAzureML
from tests.fixtures_fakes import DEVSTORE_ACCOUNT, DEVSTORE_KEY, AzuriteBlob
from tests.fixtures_local import load_bench_module, read_parts

# Each test runs the SDK (or a step script) in a job's process: seconds each.
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
STEP_SCRIPTS = REPO_ROOT / "step_scripts"
RESULT = "RESULT:"  # dataprep prints to stdout; the snippet's answer is the line after this marker
TIMEOUT_SECONDS = 180

CSV_V1 = (
    b"Id,Lot Area,Neighborhood,SalePrice\n1,8450,CollgCr,208500\n2,9600,Veenker,181500\n3,11250,CollgCr,\n"
)
CSV_V2 = b"Id,Lot Area,Neighborhood,SalePrice\n7,7000,NAmes,99000\n"


@pytest.fixture
def workspace(azurite: AzuriteBlob) -> Iterator[FakeAzureML]:
    """The emulated workspace with workspaceblobstore in Azurite and one pipeline run (three step runs)."""
    with FakeAzureML() as fake:
        fake.use_blob_store(f"http://{azurite.host}:{azurite.port}", DEVSTORE_ACCOUNT, DEVSTORE_KEY)
        yield fake


@pytest.fixture
def step_run(workspace: FakeAzureML) -> str:
    """The run id of fetch_data's step run in a running pipeline run."""
    pipeline = workspace.add_published_pipeline("batch-prediction", "1")
    run = workspace.add_run(pipeline["Id"], experiment="batchpred", status="Running")
    return run.step("fetch_data").run_id


def job_process(
    fake: FakeAzureML, run_id: str, home: Path, argv: list[str], cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """A process with only the job's variables (no credentials of this machine), as Azure ML starts one."""
    home.mkdir(parents=True, exist_ok=True)
    environ = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), **fake.job_environment(run_id)}
    return subprocess.run(
        argv, cwd=cwd or home, env=environ, capture_output=True, text=True, timeout=TIMEOUT_SECONDS
    )


def in_job(fake: FakeAzureML, run_id: str, tmp_path: Path, code: str) -> Any:
    """Run `code` (which prints RESULT + json) with the real SDK inside the job; its parsed answer."""
    program = textwrap.dedent(code)
    done = job_process(fake, run_id, tmp_path / "home", [sys.executable, "-c", program])
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-5000:]}"
    answers = [line[len(RESULT) :] for line in done.stdout.splitlines() if line.startswith(RESULT)]
    assert answers, f"no {RESULT} line; stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    return json.loads(answers[-1])


def test_run_context_is_the_step_run_and_its_parent_the_pipeline_run(
    workspace: FakeAzureML, step_run: str, tmp_path: Path
) -> None:
    pipeline_run, _step = workspace.step_run(step_run)
    answer = in_job(
        workspace,
        step_run,
        tmp_path,
        """
        import json
        from azureml.core import Run
        run = Run.get_context()
        ws = run.experiment.workspace
        print("RESULT:" + json.dumps({
            "id": run.id, "type": type(run).__name__, "parent": run.parent.id,
            "parent_type": type(run.parent).__name__, "experiment": run.experiment.name,
            "workspace": [ws.subscription_id, ws.resource_group, ws.name],
        }))
        """,
    )
    assert answer == {
        "id": step_run,
        "type": "_SubmittedRun",
        "parent": pipeline_run.run_id,
        "parent_type": "PipelineRun",
        "experiment": "batchpred",
        "workspace": [workspace.subscription_id, workspace.resource_group, workspace.workspace_name],
    }
    history = workspace.calls("GET", "/history/")
    assert history and all(r.audience == "fake-aml-run-token" and r.status == 200 for r in history)
    assert workspace.calls("GET", "/pipelines/v1.0/")  # DataTypes: the parent is a pipeline run


def test_a_registered_dataset_reads_the_seeded_csv_through_dataprep_and_azurite(
    workspace: FakeAzureML, step_run: str, tmp_path: Path
) -> None:
    first = workspace.register_dataset("AmesHousing", CSV_V1)
    workspace.register_dataset("AmesHousing", CSV_V2, description="second")
    answer = in_job(
        workspace,
        step_run,
        tmp_path,
        """
        import json
        from azureml.core import Dataset, Run
        ws = Run.get_context().experiment.workspace
        latest = Dataset.get_by_name(ws, "AmesHousing")
        first = Dataset.get_by_name(ws, "AmesHousing", version=1)
        print("RESULT:" + json.dumps({
            "latest": [latest.version, latest.to_pandas_dataframe().to_json(orient="split")],
            "first": [first.version, first.to_pandas_dataframe().to_json(orient="split")],
        }))
        """,
    )
    latest_version, latest_json = answer["latest"]
    first_version, first_json = answer["first"]
    assert (latest_version, first_version) == (2, 1)
    import io

    expected = pd.read_csv(io.BytesIO(CSV_V1))
    got = pd.read_json(io.StringIO(first_json), orient="split")
    assert got.columns.tolist() == ["Id", "Lot Area", "Neighborhood", "SalePrice"]
    assert got["Id"].tolist() == [1, 2, 3] and got["Lot Area"].tolist() == expected["Lot Area"].tolist()
    assert got["Neighborhood"].tolist() == ["CollgCr", "Veenker", "CollgCr"]
    assert got["SalePrice"].tolist()[:2] == [208500, 181500] and pd.isna(got["SalePrice"].iloc[2])
    assert pd.read_json(io.StringIO(latest_json), orient="split")["Id"].tolist() == [7]
    # the SDK records the dataset as the step's input (run history PATCH of the step run)
    _run, step = workspace.step_run(step_run)
    saved_ids = [d["identifier"]["savedId"] for p in step.patches for d in p.get("inputDatasets") or []]
    assert first.saved_id in saved_ids
    assert workspace.calls("GET", f"/dataversion/unregistered-{first.saved_id}/versions/1")


def test_an_unknown_dataset_name_is_a_user_error_naming_it(
    workspace: FakeAzureML, step_run: str, tmp_path: Path
) -> None:
    answer = in_job(
        workspace,
        step_run,
        tmp_path,
        """
        import json
        from azureml.core import Dataset, Run
        ws = Run.get_context().experiment.workspace
        try:
            Dataset.get_by_name(ws, "NoSuchData")
        except Exception as error:
            print("RESULT:" + json.dumps([type(error).__name__, str(error)]))
        """,
    )
    kind, message = answer
    assert kind == "UserErrorException"
    assert 'Cannot find dataset registered with name "NoSuchData"' in message
    # the SDK then looks for a v2 data asset of that name: also absent
    assert [r.status for r in workspace.calls("GET", "/dataversion/NoSuchData/")] == [404]


def test_the_default_datastore_gives_an_account_and_key_that_azure_storage_blob_uses_against_azurite(
    workspace: FakeAzureML, step_run: str, tmp_path: Path
) -> None:
    answer = in_job(
        workspace,
        step_run,
        tmp_path,
        """
        import json
        from azure.core.credentials import AzureNamedKeyCredential
        from azure.storage.blob import ContainerClient
        from azureml.core import Run
        store = Run.get_context().experiment.workspace.get_default_datastore()
        url = f"{store.protocol}://{store.account_name}.blob.{store.endpoint}"
        client = ContainerClient(url, store.container_name,
                                 credential=AzureNamedKeyCredential(store.account_name, store.account_key))
        client.upload_blob("from-the-step/hello.txt", b"hello", overwrite=True)
        print("RESULT:" + json.dumps([store.name, url, store.container_name]))
        """,
    )
    assert answer == [
        "workspaceblobstore",
        f"http://{DEVSTORE_ACCOUNT}.blob.core.windows.net",
        workspace.blob_store.container,
    ]
    blob = workspace.blob_store.container_client().download_blob("from-the-step/hello.txt").readall()
    assert blob == b"hello"


def test_a_registered_model_downloads_by_version_and_as_latest(
    workspace: FakeAzureML, step_run: str, tmp_path: Path
) -> None:
    folder = tmp_path / "house_prices"
    folder.mkdir()
    (folder / "model.joblib").write_bytes(b"model one")
    (folder / "metadata.json").write_text('{"version": 1}')
    workspace.register_model("HousePrices", folder, tags={"stage": "baseline"})
    workspace.register_model("HousePrices", {"model.joblib": b"model two"}, artifact_ids=True)
    answer = in_job(
        workspace,
        step_run,
        tmp_path,
        """
        import json, os
        from pathlib import Path
        from azureml.core import Model, Run
        ws = Run.get_context().experiment.workspace
        found = {}
        for key, version in (("one", 1), ("latest", None)):
            model = Model(ws, name="HousePrices", version=version)
            target = Path(f"download-{key}").resolve()
            path = Path(model.download(target_dir=str(target), exist_ok=True))
            files = {p.relative_to(target).as_posix(): p.read_text() for p in target.rglob("*") if p.is_file()}
            found[key] = [model.version, model.tags, path.relative_to(target).as_posix(), files]
        print("RESULT:" + json.dumps(found))
        """,
    )
    assert answer["one"] == [
        1,
        {"stage": "baseline"},
        "house_prices",
        {"house_prices/model.joblib": "model one", "house_prices/metadata.json": '{"version": 1}'},
    ]
    assert answer["latest"] == [2, {}, "model.joblib", {"model.joblib": "model two"}]
    assert workspace.calls("GET", "/models/HousePrices:1")  # by id
    assert any(r.query == {"name": "HousePrices", "count": "1"} for r in workspace.calls("GET", "/models"))
    assert workspace.calls("GET", "/artifacts/prefix/contentinfo/LocalUpload/")  # version 1: by prefix
    assert workspace.calls("GET", "/artifacts/contentinfo/LocalUpload/")  # version 2: by artifact id


def test_an_unknown_model_version_or_name_is_model_not_found(
    workspace: FakeAzureML, step_run: str, tmp_path: Path
) -> None:
    workspace.register_model("HousePrices", {"model.joblib": b"m"})
    answer = in_job(
        workspace,
        step_run,
        tmp_path,
        """
        import json
        from azureml.core import Model, Run
        ws = Run.get_context().experiment.workspace
        errors = []
        for name, version in (("HousePrices", 9), ("NoSuchModel", None)):
            try:
                Model(ws, name=name, version=version)
            except Exception as error:
                errors.append([type(error).__name__, error.message])
        print("RESULT:" + json.dumps(errors))
        """,
    )
    assert answer == [
        ["WebserviceException", "ModelNotFound: Model with id HousePrices:9 not found in provided workspace"],
        ["WebserviceException", "ModelNotFound: Model with name NoSuchModel not found in provided workspace"],
    ]
    assert [r.status for r in workspace.calls("GET", "/models/HousePrices:9")] == [404]


def test_aml_v1_runs_the_three_steps_in_a_job_with_the_arguments_the_v1_definition_gives(
    workspace: FakeAzureML, step_run: str, tmp_path: Path, ames_csv: Path, trained_registry: Path
) -> None:
    """`aml_v1.py <step> <v1 arguments>` as the published steps run it: fetch_data reads the registered dataset,
    predict downloads the registered model, save_predictions publishes to the default datastore with the
    pipeline run's id from the run context; each step its own process in its own step run, with a copy of the
    step scripts as working directory (as Azure ML runs a step from its snapshot; dataprep writes logs/ there)."""
    import gzip
    import shutil

    from pipeline_def.azureml.definition import HISTORY_PATH, LATEST_PATH, RUN_CONTEXT_PARENT, V1_ENTRY_SCRIPT

    snapshot = tmp_path / "snapshot"
    shutil.copytree(STEP_SCRIPTS, snapshot, ignore=shutil.ignore_patterns("__pycache__", "logs"))

    workspace.register_dataset("AmesHousing", gzip.decompress(ames_csv.read_bytes()))
    workspace.register_model("HousePrices", trained_registry / "HousePrices" / "1")
    pipeline_run, _ = workspace.step_run(step_run)
    fetched, scored = tmp_path / "fetched", tmp_path / "scored"
    steps = [
        ("fetch_data", ["--dataset", "AmesHousing", "--sample-size", "5", "--seed", "1", "--output", fetched]),
        ("predict", ["--input", fetched, "--model", "HousePrices", "--model-version", "latest", "--output", scored]),
        (
            "save_predictions",
            ["--input", scored, "--latest-dir", LATEST_PATH, "--history-dir", HISTORY_PATH,
             "--run-id", RUN_CONTEXT_PARENT, "--pipeline-fingerprint", "fp1"],
        ),
    ]  # fmt: skip
    for name, args in steps:
        run_id = pipeline_run.step(name).run_id
        done = job_process(
            workspace,
            run_id,
            tmp_path / f"home-{name}",
            [sys.executable, str(snapshot / V1_ENTRY_SCRIPT), name, *map(str, args)],
            cwd=snapshot,
        )
        assert done.returncode == 0, (
            f"{name}:\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-5000:]}"
        )
    container = workspace.blob_store.container_client()
    manifest = json.loads(container.download_blob("latest_predictions/manifest.json").readall())
    rows = container.download_blob("latest_predictions/predictions.csv").readall().decode().splitlines()
    assert len(rows) == 1 + 5
    assert manifest["run_id"] == pipeline_run.run_id
    assert (manifest["rows"], manifest["dataset"], manifest["pipeline_fingerprint"]) == (
        5,
        "AmesHousing",
        "fp1",
    )
    assert (manifest["model_name"], manifest["model_version"]) == ("HousePrices", 1)
    history = f"{manifest['history_folder']}/manifest.json"
    assert json.loads(container.download_blob(history).readall()) == manifest

    # a model version that does not exist fails at predict, in aml_v1, in one line
    missing = job_process(
        workspace,
        pipeline_run.step("predict").run_id,
        tmp_path / "home-missing",
        [sys.executable, str(snapshot / V1_ENTRY_SCRIPT), "predict", "--input", str(fetched),
         "--model", "HousePrices", "--model-version", "9", "--output", str(tmp_path / "never")],
        cwd=snapshot,
    )  # fmt: skip
    assert missing.returncode == 2
    assert missing.stderr.splitlines()[-1].startswith(
        "error: cannot get registered model HousePrices:9: WebserviceException: Message: ModelNotFound"
    ), missing.stderr[-3000:]
    assert "Traceback" not in missing.stderr


def test_aml_v1_fetch_streams_a_dataset_of_several_partitions_through_the_sdks_parquet_parts(
    workspace: FakeAzureML, step_run: str, tmp_path: Path, run_step
) -> None:
    """A registered dataset larger than dataprep's 20 MiB partition: aml_v1.py has the SDK write it as Parquet
    parts (`to_parquet_files().download()`, never a DataFrame of the whole) and fetch_data reads them as one
    table: every row once, in order, as fetch_data reads the CSV itself."""
    bigdata = load_bench_module("bigdata")
    csv = bigdata.write(80_000, tmp_path / "ames-80000.csv")  # 26 MB: two partitions
    workspace.register_dataset("AmesLarge", csv)
    snapshot = tmp_path / "snapshot"
    shutil.copytree(STEP_SCRIPTS, snapshot, ignore=shutil.ignore_patterns("__pycache__", "logs"))
    fetched, local = tmp_path / "fetched", tmp_path / "local"

    done = job_process(
        workspace,
        step_run,
        tmp_path / "home",
        [sys.executable, str(snapshot / "aml_v1.py"), "fetch_data", "--dataset", "AmesLarge",
         "--sample-size", "0", "--seed", "1", "--output", str(fetched), "--part-bytes", str(4 * 1024 * 1024)],
        cwd=snapshot,
    )  # fmt: skip

    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-5000:]}"
    assert "fetched 80000 of 80000 rows of AmesLarge (2 file(s);" in done.stderr, done.stderr[-3000:]
    rows = read_parts(fetched)
    assert rows["Order"].tolist() == list(range(1, 80_001))
    same = run_step("fetch_data.py", "--dataset", csv, "--sample-size", 0, "--seed", 1, "--output", local)
    assert same.returncode == 0, same.stderr
    pd.testing.assert_frame_equal(rows, read_parts(local), check_dtype=False)
    metadata = json.loads((fetched / "_metadata.json").read_text())
    assert (metadata["dataset"], metadata["dataset_version"], metadata["rows"]) == ("AmesLarge", "1", 80_000)


def test_the_v1_definition_and_aml_v1_spell_the_same_markers() -> None:
    from pipeline_def.azureml import definition
    from pipeline_def.steps import STEPS
    from tests.fixtures_local import load_step_module

    aml_v1 = load_step_module("aml_v1")

    assert definition.LATEST_PATH.startswith(aml_v1.DATASTORE_PREFIX)
    assert definition.HISTORY_PATH.startswith(aml_v1.DATASTORE_PREFIX)
    assert definition.RUN_CONTEXT_PARENT == aml_v1.RUN_CONTEXT_PARENT
    assert Path(aml_v1.__file__).name == definition.V1_ENTRY_SCRIPT
    assert set(aml_v1.STEPS) == {Path(step.script).stem for step in STEPS}


def test_the_fake_accepts_a_run_token_it_issued_until_it_expires(
    workspace: FakeAzureML, step_run: str
) -> None:
    import urllib.error
    import urllib.request
    from datetime import timedelta

    url = f"{workspace.history_url}/runs/{step_run}"

    def status(token: str) -> int:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    environ = workspace.job_environment(step_run)
    assert status(environ["AZUREML_RUN_TOKEN"]) == 200
    assert status(workspace.run_token(step_run, lifetime=timedelta(seconds=-1))) == 401
    assert environ["http_proxy"] == workspace.blob_store.proxy_url
    assert environ["no_proxy"] == "127.0.0.1,localhost"
