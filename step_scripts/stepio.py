"""What the three step scripts share: the command-line contract (`run_step`: logging, and one `error: ...`
line and exit code 2 for any failure), Parquet and `_metadata.json` hand-over between steps, and the run id.

This folder is the steps' snapshot on Azure ML, so nothing here may import pipeline_def.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas is imported where frames are read, so `--help` stays fast
    import pandas as pd
    from azureml.core import Workspace

PART_NAME = "part-{index:05d}.parquet"
# What a step records beside its Parquet parts (dataset, seed, model name and version) for the steps after it.
METADATA_FILE = "_metadata.json"
# The column predict adds and save_predictions publishes.
PREDICTION_COLUMN = "PredictedSalePrice"
# A step that fails exits with this code after its `error: ...` line (argparse uses it for bad usage too).
EXIT_FAILED = 2

log = logging.getLogger("stepio")


class StepError(Exception):
    """A failure the step reports as one clear line (bad input, missing column, unreadable model)."""


def step_parser(doc: str) -> argparse.ArgumentParser:
    """The argument parser of a step script, described by the first paragraph of its docstring."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0])


def run_step(
    body: Callable[[], object], *, io_failure: str, azure_failure: str = "an Azure call failed"
) -> int:
    """Run a step's `body` under the contract all steps share; return the exit code for sys.exit.

    Logging goes to stderr at INFO (the Azure SDKs' per-request lines at WARNING). Success is 0. Any failure
    is exit code 2 after one `error: ...` line, which the local runner and a reader of the Azure ML log look
    for: a StepError says its message; an OSError is `<io_failure>: ...`; an azure-core error is
    `<azure_failure>: <type>: <first line>`; anything else is `<type>: <message>`, its traceback logged first.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)  # the SDK logs every HTTP request at INFO
    try:
        body()
    except StepError as error:
        return report_failure(str(error))
    except OSError as error:
        return report_failure(f"{io_failure}: {error}")
    except Exception as error:
        if _is_azure_error(error):
            first_line = next(iter(str(error).splitlines()), "")
            return report_failure(f"{azure_failure}: {type(error).__name__}: {first_line}")
        log.exception("the step failed")
        return report_failure(f"{type(error).__name__}: {error}")
    return 0


def report_failure(message: str) -> int:
    """Write the step's `error: ...` line and return the failure exit code."""
    # One line, whatever the message holds: a job's log is read by its last `error:` line, and some SDK
    # exceptions (WebserviceException) put their message on the lines after their first.
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    return EXIT_FAILED


def _is_azure_error(error: Exception) -> bool:
    """Whether `error` is an azure-core error; a step that never loaded azure-core cannot have raised one."""
    exceptions = sys.modules.get("azure.core.exceptions")
    return exceptions is not None and isinstance(error, exceptions.AzureError)


def parquet_parts(folder: str | os.PathLike) -> list[Path]:
    """The Parquet files a previous step wrote into `folder`, in order."""
    path = Path(folder)
    if not path.is_dir():
        raise StepError(f"input folder {str(path)!r} does not exist")
    parts = sorted(p for p in path.iterdir() if p.suffix == ".parquet")
    if not parts:
        raise StepError(f"input folder {str(path)!r} holds no .parquet file")
    return parts


def iter_batches(folder: str | os.PathLike, batch_rows: int) -> Iterator[pd.DataFrame]:
    """The rows of `folder` in frames of at most `batch_rows`, without holding the whole input in memory."""
    import pyarrow.parquet as pq

    for part in parquet_parts(folder):
        with pq.ParquetFile(part) as parquet:
            for batch in parquet.iter_batches(batch_size=batch_rows):
                yield batch.to_pandas()


def write_frame(folder: str | os.PathLike, frame: pd.DataFrame, index: int = 0) -> Path:
    """Write `frame` as part `index` of `folder` (created if missing) and return the file's path."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    target = path / PART_NAME.format(index=index)
    frame.to_parquet(target, index=False)
    return target


def read_metadata(folder: str | os.PathLike) -> dict[str, Any]:
    """What the previous steps recorded beside their rows in `folder`; {} when they recorded nothing.
    StepError when the file is there but unreadable or not a JSON object."""
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise StepError(f"cannot read {str(path)!r}: {error}") from error
    if not isinstance(metadata, dict):
        raise StepError(f"{str(path)!r} does not hold a JSON object")
    return metadata


def write_metadata(folder: str | os.PathLike, metadata: dict[str, Any]) -> None:
    """Record `metadata` beside the rows in `folder`, for the steps after this one."""
    (Path(folder) / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")


def on_azure_ml() -> bool:
    """True inside an Azure ML step run (Azure ML sets AZUREML_RUN_ID there)."""
    return bool(os.environ.get("AZUREML_RUN_ID"))


def aml_workspace(unavailable: str) -> Workspace:
    """The workspace of the Azure ML run this step belongs to; outside Azure ML, StepError(unavailable)."""
    if not on_azure_ml():
        raise StepError(unavailable)
    from azureml.core import Run

    return Run.get_context().experiment.workspace


def current_run_id() -> str:
    """The pipeline run this step belongs to: PIPELINE_RUN_ID when the local runner set it, otherwise the
    parent of the Azure ML step run, otherwise 'offline'."""
    run_id = os.environ.get("PIPELINE_RUN_ID")
    if run_id:
        return run_id
    if on_azure_ml():
        from azureml.core import Run

        run = Run.get_context()
        parent = getattr(run, "parent", None)
        return parent.id if parent is not None else run.id
    return "offline"
