"""Azure ML v1's adapter, the only step module that imports azureml: `python aml_v1.py <step> <arguments>`
turns the v1 names among the step's arguments into the local paths the step takes, then runs the same core.

- fetch_data `--dataset NAME`: the latest version of the registered tabular dataset, written by the SDK's
  dataset runtime as Parquet parts in a temporary folder (`to_parquet_files().download()`: it streams, so the
  memory does not grow with the dataset, unlike `to_pandas_dataframe()`), which fetch_data reads as one table;
- predict `--model NAME --model-version latest|N`: `Model(ws, NAME, version).download()` into a temporary
  folder (a version that does not exist fails here); the registry's name and version are recorded;
- save_predictions `--latest-dir default-datastore:<path> --history-dir default-datastore:<path>
  --run-id run-context:parent`: the step publishes into local staging folders, which are then uploaded to the
  workspace's default datastore in the same order (history, latest CSV or parts, latest manifest), each blob
  upload atomic, and then the latest CSV the new manifest supersedes and the parts of the set before the
  previous one are deleted; the run id is the pipeline run's (the parent of this step run). The latest CSV
  and manifest are downloaded first, for the quality gate; a failed gate uploads the history folder only.
  The run's summary (rows, folders, the gate's verdict) becomes tags of this step run.

Transitional: used only while the v1 backend exists.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchpred_steps.cli import fail, run_step
from batchpred_steps.errors import StepError
from batchpred_steps.gate import QualityGateFailed
from batchpred_steps.partitioned import PARTS_DIR, parts_folders, read_manifest
from batchpred_steps.publish import CSV_NAME, MANIFEST_NAME, Folders
from batchpred_steps.run_summary import summary_of

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

log = logging.getLogger("aml_v1")

# What a blob is served as (a browser opens the quality gate's picture as one).
CONTENT_TYPES = {".csv": "text/csv", ".svg": "image/svg+xml", ".json": "application/json"}
# What pipeline_def/azureml/definition.py passes for the values only the run can resolve.
DATASTORE_PREFIX = "default-datastore:"
RUN_CONTEXT_PARENT = "run-context:parent"


# --- the run ---------------------------------------------------------------------------------------------


def run_context() -> Any:
    """The step run this process belongs to (azureml-core's run context); StepError outside Azure ML."""
    from azureml.core import Run
    from azureml.core.run import _OfflineRun

    run = Run.get_context()
    if isinstance(run, _OfflineRun):
        raise StepError("aml_v1.py runs only inside an Azure ML step run (no run context found)")
    return run


def workspace() -> Any:
    return run_context().experiment.workspace


def pipeline_run_id(value: str) -> str:
    """`run-context:parent` is the pipeline run this step run belongs to; anything else is taken as given."""
    if value != RUN_CONTEXT_PARENT:
        return value
    run = run_context()
    parent = getattr(run, "parent", None)
    return parent.id if parent is not None else run.id


# --- fetch_data: a registered dataset -> a file ----------------------------------------------------------


def dataset_to_folder(name: str, folder: Path) -> tuple[Path, str | None]:
    """The latest version of the registered tabular dataset `name`, as Parquet parts in `folder`, and that
    version. The SDK's dataset runtime writes one part per partition of the dataset, streaming."""
    from azureml.core import Dataset

    try:
        dataset = Dataset.get_by_name(workspace(), name=name)
    except StepError:
        raise
    except Exception as error:
        raise StepError(f"registered dataset {name!r} not found: {error}") from error
    try:
        dataset.to_parquet_files().download(target_path=str(folder), overwrite=True)
    except Exception as error:
        raise StepError(
            f"cannot read registered dataset {name!r}: {type(error).__name__}: {error}"
        ) from error
    version = getattr(dataset, "version", None)
    return folder, None if version is None else str(version)


def fetch_data(argv: list[str]) -> None:
    import fetch_data as step

    args = step.parse_args(argv)

    def body() -> None:
        with tempfile.TemporaryDirectory(prefix="aml-v1-dataset-") as folder:
            parts, version = dataset_to_folder(args.dataset, Path(folder))
            step.fetch(
                parts,
                args.sample_size,
                args.seed,
                args.output,
                dataset_name=args.dataset_name or args.dataset,
                dataset_version=version,
                part_bytes=args.part_bytes,
            )

    run_step(body, io_failure="cannot write the output")


# --- predict: a registered model name and version -> a folder --------------------------------------------


def download_model(name: str, version: str, target: Path) -> tuple[Path, str, int]:
    """Download model `name` at `version` ("latest" or a number) from the workspace's registry into `target`;
    return the downloaded folder (or file), and the registry's name and version."""
    from azureml.core import Model
    from batchpred_steps.score import normalise_version

    version = normalise_version(version)
    try:
        model = Model(workspace(), name=name, version=None if version == "latest" else int(version))
        downloaded = Path(model.download(target_dir=str(target), exist_ok=True))
    except StepError:
        raise
    except Exception as error:
        raise StepError(f"cannot get registered model {name}:{version}: {error}") from error
    return downloaded, str(model.name), int(model.version)


def predict(argv: list[str]) -> None:
    import predict as step

    args = step.parse_args(argv)

    def body() -> None:
        with tempfile.TemporaryDirectory(prefix="aml-v1-model-") as folder:
            downloaded, name, version = download_model(args.model, args.model_version, Path(folder))
            step.predict(
                Path(args.input),
                downloaded,
                Path(args.output),
                model_version=str(version),
                model_name=args.model_name or name,
                batch_rows=args.batch_rows,
            )

    run_step(body, io_failure="cannot read the input or write the output")


# --- save_predictions: the default datastore -> local folders, uploaded in order -------------------------


@dataclass
class BlobFolder:
    """A folder of a blob container (`prefix`, may be empty)."""

    container: ContainerClient
    prefix: str = ""

    def upload(self, name: str, source: Path) -> None:
        """One blob upload: the blob is committed whole or not at all."""
        from azure.storage.blob import ContentSettings

        kind = CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream")  # Parquet parts
        with open(source, "rb") as data:
            self.container.upload_blob(
                self.blob_name(name),
                data,
                overwrite=True,
                content_settings=ContentSettings(content_type=kind),
            )

    def blob_name(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def names(self, starting_with: str) -> list[str]:
        """The blobs under `starting_with`, as names relative to this folder."""
        cut = len(self.blob_name(""))
        return [
            b.name[cut:] for b in self.container.list_blobs(name_starts_with=self.blob_name(starting_with))
        ]

    def delete(self, name: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with contextlib.suppress(ResourceNotFoundError):  # removed meanwhile: what was wanted
            self.container.delete_blob(self.blob_name(name))


def datastore_path(value: str, option: str) -> str:
    """The datastore path of `default-datastore:<path>`."""
    if not value.startswith(DATASTORE_PREFIX):
        raise StepError(f"{option} on Azure ML v1 is {DATASTORE_PREFIX}<path>, not {value!r}")
    return value[len(DATASTORE_PREFIX) :].strip("/")


def _join(root: str, relative: str) -> str:
    return f"{root}/{relative}" if root else relative


def upload_plan(
    staged: Folders, latest_path: str, history_path: str, *, latest: bool = True
) -> list[tuple[str, Path]]:
    """(blob name, staged file) in the order that keeps the latest predictions whole: every file of the
    history copy (its CSV or parts and report before its manifest), then (unless `latest` is False: a failed
    gate) the latest CSV or parts, then the latest manifest."""

    def files(folder: Path, root: str) -> list[tuple[str, Path]]:
        found = sorted(
            (p for p in folder.rglob("*") if p.is_file()),
            key=lambda p: (p.name == MANIFEST_NAME, p.relative_to(folder).as_posix()),
        )
        return [(_join(root, p.relative_to(folder).as_posix()), p) for p in found]

    return [*files(staged.history, history_path), *(files(staged.latest, latest_path) if latest else [])]


def superseded_blobs(
    names: list[str], latest_path: str, manifest: dict[str, Any], previous: dict[str, Any] | None = None
) -> list[str]:
    """Of the blobs `names` under the latest folder, those the new `manifest` supersedes: parts in folders
    neither it nor the `previous` manifest names (the previous set stays one run for its readers, as
    partitioned.remove_superseded keeps it), and the CSV when the new manifest names none."""
    kept = {_join(latest_path, folder) for folder in parts_folders(manifest) | parts_folders(previous)}
    parts = _join(latest_path, f"{PARTS_DIR}/")
    stale = [n for n in names if n.startswith(parts) and str(Path(n).parent.as_posix()) not in kept]
    csv = _join(latest_path, CSV_NAME)
    return stale + ([csv] if manifest.get("predictions_file") is None and csv in names else [])


def download_latest(source: BlobFolder, latest_path: str, folder: Path) -> None:
    """The latest CSV and manifest of the datastore into `folder`, those that exist."""
    from azure.core.exceptions import ResourceNotFoundError

    folder.mkdir(parents=True, exist_ok=True)
    for name in (CSV_NAME, MANIFEST_NAME):
        blob = f"{latest_path}/{name}" if latest_path else name
        try:
            with open(folder / name, "wb") as out:
                source.container.download_blob(source.blob_name(blob)).readinto(out)
        except ResourceNotFoundError:
            (folder / name).unlink(missing_ok=True)


def tag_step_run(tags: dict[str, str]) -> None:
    """The run's summary as tags of this step run, where the app reads it (pipeline_def/runs.py); a failure
    to tag is a warning: the predictions are saved by now."""
    try:
        run_context().set_tags(tags)
    except Exception as error:  # the SDK raises many types; the summary is not worth failing the step for
        log.warning("could not tag the step run with its summary: %s: %s", type(error).__name__, error)


def upload_in_order(destination: BlobFolder, plan: list[tuple[str, Path]]) -> None:
    """Upload each (blob name, file) one after the other: a failure leaves every later blob as it was."""
    for name, source in plan:
        destination.upload(name, source)


def default_datastore() -> BlobFolder:
    """The default datastore of the workspace this step runs in, with the datastore's own credential: its
    account key, its SAS token, or (credential-less datastore) the compute's identity."""
    from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
    from azure.storage.blob import ContainerClient

    datastore = workspace().get_default_datastore()
    protocol, endpoint = datastore.protocol or "https", datastore.endpoint or "core.windows.net"
    account_url = f"{protocol}://{datastore.account_name}.blob.{endpoint}"
    if datastore.account_key:
        credential: Any = AzureNamedKeyCredential(datastore.account_name, datastore.account_key)
    elif datastore.sas_token:
        credential = AzureSasCredential(datastore.sas_token.lstrip("?"))
    else:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    return BlobFolder(ContainerClient(account_url, datastore.container_name, credential=credential))


def save_predictions(argv: list[str]) -> None:
    import save_predictions as step

    args = step.parse_args(argv)

    def body() -> None:
        latest_path = datastore_path(args.latest_dir or "", "--latest-dir")
        history_path = datastore_path(args.history_dir or "", "--history-dir")
        run_id = pipeline_run_id(args.run_id)
        destination = default_datastore()
        with tempfile.TemporaryDirectory(prefix="aml-v1-publish-") as folder:
            staged = Folders(Path(folder) / "latest", Path(folder) / "history")
            # the quality gate compares this run with the latest predictions: the staged latest folder starts
            # as the datastore's (it is never uploaded back; the new files replace the blobs)
            download_latest(destination, latest_path, staged.latest)
            previous = read_manifest(staged.latest / MANIFEST_NAME)
            try:
                manifest = step.save(
                    Path(args.input),
                    staged,
                    run_id,
                    args.pipeline_fingerprint,
                    prediction_column=args.prediction_column,
                    gate=step.gate_settings(args),
                    csv_max_rows=args.csv_max_rows,
                )
            except QualityGateFailed as failed:
                # the history copy and its report are kept; the latest blobs are not touched
                upload_in_order(destination, upload_plan(staged, latest_path, history_path, latest=False))
                tag_step_run(summary_of(failed.manifest, latest=None))
                raise
            upload_in_order(destination, upload_plan(staged, latest_path, history_path))
        stale = superseded_blobs(destination.names(_join(latest_path, "")), latest_path, manifest, previous)
        for name in stale:
            destination.delete(name)
        tag_step_run(summary_of(manifest, latest=latest_path))
        log.info("uploaded to %s/%s", destination.container.url, latest_path)

    # A storage error leaves the latest blobs untouched (see upload_plan); the step reports it in one line.
    run_step(body, io_failure="cannot write the predictions", azure_failure="cannot upload the predictions")


STEPS: dict[str, Callable[[list[str]], None]] = {
    "fetch_data": fetch_data,
    "predict": predict,
    "save_predictions": save_predictions,
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return
    if not argv or argv[0] not in STEPS:
        fail(f"usage: aml_v1.py {{{','.join(STEPS)}}} <the step's arguments>")
    STEPS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
