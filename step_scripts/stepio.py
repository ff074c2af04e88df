"""What the three step scripts share: Parquet hand-over between steps, the run id, and clean failures.

This folder is the steps' snapshot on Azure ML, so nothing here may import pipeline_def.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:  # pandas is imported where frames are read, so `--help` stays fast
    import pandas as pd
    from azureml.core import Workspace

PART_NAME = "part-{index:05d}.parquet"
# What a step records beside its Parquet parts (dataset, seed, model name and version) for the steps after it.
METADATA_FILE = "_metadata.json"


class StepError(Exception):
    """A failure the step reports as one clear line (bad input, missing column, unreadable model)."""


def fail(message: str, code: int = 2) -> NoReturn:
    # One line, whatever the message holds: a job's log is read by its last `error:` line, and some SDK
    # exceptions (WebserviceException) put their message on the lines after their first.
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    sys.exit(code)


def parquet_parts(folder: str | os.PathLike) -> list[Path]:
    """The Parquet files a previous step wrote into `folder`, in order."""
    path = Path(folder)
    if not path.is_dir():
        raise StepError(f"input folder {str(path)!r} does not exist")
    parts = sorted(p for p in path.iterdir() if p.suffix == ".parquet")
    if not parts:
        raise StepError(f"input folder {str(path)!r} holds no .parquet file")
    return parts


def read_frame(folder: str | os.PathLike) -> pd.DataFrame:
    """Every row a previous step wrote into `folder`, as one frame."""
    import pandas as pd

    frames = [pd.read_parquet(part) for part in parquet_parts(folder)]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


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
