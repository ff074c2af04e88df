"""`make demo-azureml`: the whole Azure path with no Azure. Starts the emulated workspace, Azurite and the
managed-identity endpoint, registers AmesHousing and HousePrices, runs one timer tick through function_app
(publish with the real SDK, submit over REST), follows the run through `GET /api/runs/{id}`, then downloads
the latest predictions and their manifest from the emulated default datastore.

    python -m emulator.demo [--out .local/demo-azureml] [--timeout 1800] [--step-python PATH]
                                 [--model-version N] [--backend azureml|azureml-v2]
                                 [--sample-size N] [--node-count N]

With `--sample-size` or `--node-count` (`SAMPLE_SIZE=0 NODE_COUNT=2 make demo-azureml`) the run is an HTTP run
with those run parameters (`POST /api/runs {"parameters": {...}}`) after a publish (`python -m pipeline_def
publish`), instead of the timer tick's run with the defaults; predict then runs as Azure ML's parallel run on
that many nodes of the emulated cluster, and the demo checks that every row was predicted once.

With `--backend azureml-v2` (or PIPELINE_BACKEND=azureml-v2, as `PIPELINE_BACKEND=azureml-v2 make
demo-azureml` sets it) the same tick runs on Azure ML v2 over plain REST: the Ames CSV is registered as the v2
`uri_file` data asset AmesHousingCsv, the tick registers the components and submits a pipeline job, and the steps
run in a venv of step_scripts/requirements-v2.txt (no azureml).

Exit 0 for a completed run; 1 for a failed or canceled run, or a tick that failed (naming the failed step and its
error line, or the tick's error); 2 when the emulated Azure could not be set up.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from emulator.azure import MODEL_NAME, EmulatedAzure
from emulator.azurite import AzuriteUnavailable, start_azurite, stop_azurite

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / ".local" / "demo-azureml"
POLL_SECONDS = 0.5
SHOW_ROWS = 5


_STARTED = time.monotonic()


def _say(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:6.1f} s] {message}", flush=True)


def _baseline_model() -> Path:
    """The newest version folder of the baseline model in the local registry (.local/models/HousePrices/<n>),
    trained on the shipped data when there is none, or none the quality gate can use (as `make demo` does)."""
    from pipeline_def.local.model import ensure_model, registered_versions
    from pipeline_def.settings import DEFAULT_DATASET_PATH, Settings

    settings = Settings(
        backend="local", local_dataset_path=DEFAULT_DATASET_PATH, local_work_dir=REPO_ROOT / ".local"
    )
    model_dir = ensure_model(settings)
    return model_dir / str(registered_versions(model_dir)[-1])


def _follow(app, run_id: str, timeout: float) -> dict:
    """Poll GET /api/runs/{id} until the run is terminal, printing each change of a step's status."""
    seen: dict[str, str] = {}
    status = None
    deadline = time.monotonic() + timeout
    while True:
        response = app.get_run(run_id)
        if response.status != 200:
            raise RuntimeError(f"GET /api/runs/{run_id} answered {response.status}: {response.json}")
        body = response.json
        if body["status"] != status:
            status = body["status"]
            _say(f"  run {status} (Azure ML: {body.get('aml_status')})")
        for step in body.get("steps") or []:
            if seen.get(step["name"]) != step["status"]:
                seen[step["name"]] = step["status"]
                _say(f"  step {step['name']:<17} {step['status']}")
        if body.get("terminal"):
            return body
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} did not end within {timeout:.0f} s (last status {status})")
        time.sleep(POLL_SECONDS)  # polling the run as a client would


def _show_rows(csv_path: Path, count: int) -> None:
    with open(csv_path, newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    shown = ("PID", "Neighborhood", "GrLivArea", "YearBuilt", "PredictedSalePrice")
    keep = [header.index(name) for name in shown if name in header]
    print("  " + " | ".join(header[i] for i in keep))
    for row in body[:count]:
        print("  " + " | ".join(row[i] for i in keep))
    print(f"  ({len(body)} rows, {len(header)} columns)", flush=True)


def _show_parallel_predict(azure: EmulatedAzure, run_id: str) -> None:
    """What the emulated parallel-run driver says of the predict step (its logs, the step run's artifacts)."""
    predict = azure.fake.runs[run_id].step("predict").run_id
    logs = azure.fake.blob_store.container_client("azureml")
    for path in ("logs/sys/master_role.txt", "logs/job_result.txt"):
        try:
            text = logs.download_blob(f"ExperimentRun/dcid.{predict}/{path}").readall().decode()
        except Exception:  # not a parallel step (an older pipeline): nothing to show
            return
        for line in text.splitlines():
            if "node(s) x" in line or "mini batches" in line:
                _say(f"  predict (parallel run): {line.split('|')[-1].strip()}")


def _every_row_once(csv_path: Path) -> bool:
    """With sample_size 0: every row of the shipped data predicted exactly once (by its Order number)."""
    import gzip

    with gzip.open(REPO_ROOT / "data" / "ames_housing.csv.gz", "rt", newline="") as handle:
        shipped = sorted(int(row["Order"]) for row in csv.DictReader(handle))
    with open(csv_path, newline="") as handle:
        predicted = sorted(int(row["Order"]) for row in csv.DictReader(handle))
    same = predicted == shipped
    _say(
        f"every shipped row predicted once: {'yes' if same else 'NO'} "
        f"({len(predicted)} predictions, {len(set(predicted))} distinct rows of {len(shipped)})"
    )
    return same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the downloaded files go")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the run")
    parser.add_argument(
        "--step-python", type=Path, help="the steps' interpreter (default: emulator.step_env)"
    )
    parser.add_argument(
        "--model-version",
        help="AML_MODEL_VERSION to publish with (default latest; e.g. 99 shows a failed run on v1, a refused "
        "submit on v2)",
    )
    parser.add_argument(
        "--backend",
        choices=("azureml", "azureml-v2"),
        default=os.environ.get("PIPELINE_BACKEND")
        if os.environ.get("PIPELINE_BACKEND") == "azureml-v2"
        else "azureml",
        help="SDK v1's services (default) or Azure ML v2 over REST (default when PIPELINE_BACKEND=azureml-v2)",
    )
    parser.add_argument("--sample-size", type=int, help="run parameter sample_size (0: every row)")
    parser.add_argument(
        "--node-count", type=int, help="run parameter node_count (the parallel predict's nodes)"
    )
    args = parser.parse_args(argv)
    v2 = args.backend == "azureml-v2"
    parameters = {
        name: value
        for name, value in (("sample_size", args.sample_size), ("node_count", args.node_count))
        if value is not None
    }

    if args.step_python is None:
        from emulator.step_env import step_python
        from pipeline_def.settings import STEP_SCRIPTS_DIR

        requirements = STEP_SCRIPTS_DIR / ("requirements-v2.txt" if v2 else "requirements.txt")
        _say(f"steps' environment: building or reusing the venv of step_scripts/{requirements.name} ...")
        args.step_python = step_python(requirements)
    _say(f"steps' environment: {args.step_python}")

    work = Path(tempfile.mkdtemp(prefix="demo-azureml-"))
    try:
        azurite, azurite_process = start_azurite(work / "azurite")
    except AzuriteUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    azure = EmulatedAzure(work / "workspace", azurite, args.step_python, backend=args.backend)
    try:
        azure.start()
        _say(f"emulated workspace: {azure.fake.base_url} (default datastore in Azurite at {azurite.url})")
        data_version = azure.register_ames(REPO_ROOT / "data" / "ames_housing.csv.gz")
        kind = "v2 uri_file data asset" if v2 else "tabular dataset"
        _say(f"registered {kind} {azure.dataset_name} (version {data_version})")
        version = azure.register_model_version(_baseline_model())
        _say(f"registered model {MODEL_NAME} (version {version}: the baseline model of .local/models/)")
        home = work / "home"
        home.mkdir()
        azure.apply_environ(home)
        if args.model_version:
            os.environ["AML_MODEL_VERSION"] = args.model_version

        from emulator.functions_host import LoadedApp

        app = LoadedApp()
        if parameters:
            from pipeline_def.service import get_service

            _say("publishing (as `python -m pipeline_def publish` does) ...")
            published = get_service().publish()
            _say(f"published version {published.target.version}")
            _say(f"POST /api/runs with parameters {json.dumps(parameters)} ...")
            response = app.start_run({"parameters": parameters})
            if response.status != 202:
                print(f"error: POST /api/runs answered {response.status}: {response.json}", file=sys.stderr)
                return 1
            run_id = response.json["run_id"]
        else:
            if v2:
                _say(
                    "timer tick through function_app (registers the v2 components, then submits a job; "
                    "REST) ..."
                )
            else:
                _say("timer tick through function_app (publishes with the SDK, then submits over REST) ...")
            try:
                app.tick(past_due=False)
            except Exception as error:  # the tick's typed error (e.g. a model version that is not registered)
                print(f"error: the timer tick failed: {getattr(error, 'message', error)}", file=sys.stderr)
                return 1
            listed = app.list_runs({"limit": "1"})
            (run,) = listed.json["runs"]
            run_id = run["run_id"]
        _say(f"run {run_id} submitted; following GET /api/runs/{run_id}")
        body = _follow(app, run_id, args.timeout)

        if body["status"] != "completed":
            failed = [s["name"] for s in body.get("steps") or [] if s["status"] == "failed"]
            where = f"step {failed[0]}" if failed else "the run"
            # the route's error names the step and its error line; older apps leave it out, and then the
            # failed step run's own error (run history) says it
            message = body.get("error")  # already "step <name> failed: <its error>"
            if not message and failed:
                step_error = getattr(azure.fake.runs[run_id].step(failed[0]), "error_message", None)
                message = f"{where}: {step_error}"
            print(f"error: run {run_id} {body['status']}: {message}", file=sys.stderr)
            for name in failed:
                print(f"--- log of {name} ---\n{azure.fake.step_log(run_id, name)[-3000:]}", flush=True)
            return 1
        destination = args.out / run_id
        files = azure.download_latest(destination)
        _say(f"predictions: {files['predictions.csv']}")
        _say(f"manifest:    {files['manifest.json']}")
        manifest = json.loads(files["manifest.json"].read_text())
        print("  " + json.dumps({k: v for k, v in sorted(manifest.items()) if k != "columns"}))
        _show_rows(files["predictions.csv"], SHOW_ROWS)
        _show_parallel_predict(azure, run_id)
        if args.sample_size == 0 and not _every_row_once(files["predictions.csv"]):
            return 1
        _say("done")
        return 0
    finally:
        azure.stop()
        stop_azurite(azurite_process)


if __name__ == "__main__":
    sys.exit(main())
