"""One worker process of the emulated parallel-run runtime: imports the entry script, calls `init()` once, then
`run(mini_batch)` for each mini-batch the master sends, and `shutdown()` (if defined) at the end.

Started by amlbi_main.py as `python driver/prs_worker.py <driver arguments>` in the node's working copy, with
its stdout and stderr going to logs/user/stdout/<node>/processNNN.{stdout,stderr}.txt. It talks to the master
over two pipes (file descriptors in PRS_WORKER_FDS), one JSON object a line:

    worker -> master  {"ready": true} | {"init_error": ..., "traceback": ...}
    master -> worker  {"index": i, "items": [paths]} | {"index": i, "table": {...}} | {"stop": true}
    worker -> master  {"index": i, "returned": n, "rows": [...]} | {"index": i, "error": ..., "traceback": ...}

Standard library only, except pandas/pyarrow when a mini-batch is tabular (the step environment has them)."""

from __future__ import annotations

import importlib.util
import inspect
import io
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any


class MiniBatchContext:
    """The second argument of `run(mini_batch, mini_batch_context)`."""

    def __init__(self, index: int, partition_key_value: dict[str, Any] | None = None) -> None:
        self.minibatch_index = index
        self.partition_key_value = partition_key_value or {}
        self.dataset = None


def _error_line(error: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(error), error)).strip().splitlines()[-1]


def _load(entry_script: str) -> Any:
    spec = importlib.util.spec_from_file_location(Path(entry_script).stem, entry_script)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _table(task: dict[str, Any]) -> Any:
    """A tabular mini-batch as a DataFrame: a byte range of a CSV file (whole lines, the header added) or row
    groups of a Parquet file."""
    import pandas as pd

    if task["kind"] == "csv":
        with open(task["file"], "rb") as handle:
            header = handle.readline()
            handle.seek(task["start"])
            body = handle.read(task["end"] - task["start"])
        return pd.read_csv(io.BytesIO(header + body))
    import pyarrow.parquet as pq

    with pq.ParquetFile(task["file"]) as parquet:
        return parquet.read_row_groups(task["row_groups"]).to_pandas()


def _count(returned: Any) -> tuple[int, list[str]]:
    """How many items run() reports as succeeded (the length of what it returned), and the returned rows as
    text lines (what append_row appends)."""
    if returned is None:
        return 0, []
    if hasattr(returned, "to_csv") and hasattr(returned, "__len__"):
        text = returned.to_csv(sep=" ", header=False, index=False)
        return len(returned), [line for line in text.splitlines()]
    if isinstance(returned, list | tuple):
        return len(returned), [str(item) for item in returned]
    raise TypeError(f"run() must return a list or a pandas DataFrame, not {type(returned).__name__}")


def main() -> None:
    read_fd, write_fd = (int(fd) for fd in os.environ["PRS_WORKER_FDS"].split(","))
    commands = os.fdopen(read_fd, "r", buffering=1)
    answers = os.fdopen(write_fd, "w", buffering=1)

    def say(message: dict[str, Any]) -> None:
        answers.write(json.dumps(message) + "\n")
        answers.flush()

    entry_script = os.environ["PRS_ENTRY_SCRIPT"]
    node, agent = os.environ["PRS_NODE"], os.environ["PRS_AGENT"]
    driver_dir = os.path.dirname(os.path.abspath(__file__))
    # the entry script's folder (the snapshot) and the driver's (azureml_user) are importable, as in the runtime
    sys.path[0:1] = [os.getcwd(), driver_dir]
    # the entry script sees the driver's whole command line (its own arguments among them: parse_known_args)
    sys.argv = [entry_script, *sys.argv[1:]]

    from azureml_user.parallel_run import _configure

    _configure(
        node,
        agent,
        os.path.join(os.environ["PRS_LOG_DIR"], "user", "entry_script_log", node),
        os.environ.get("PRS_LOGGING_LEVEL", "INFO"),
    )
    try:
        module = _load(entry_script)
        if hasattr(module, "init"):
            module.init()
        run = module.run
        takes_context = len(inspect.signature(run).parameters) >= 2
    except BaseException as error:  # noqa: BLE001 - whatever init raises is the entry script's error
        traceback.print_exc()
        say({"init_error": _error_line(error), "traceback": traceback.format_exc()})
        sys.exit(1)
    say({"ready": True})

    for line in commands:
        task = json.loads(line)
        if task.get("stop"):
            break
        index = task["index"]
        try:
            batch = task["items"] if "items" in task else _table(task["table"])
            returned = run(batch, MiniBatchContext(index)) if takes_context else run(batch)
            count, rows = _count(returned)
        except BaseException as error:  # noqa: BLE001 - a failed run() fails its mini-batch, not the worker
            traceback.print_exc()
            say({"index": index, "error": _error_line(error), "traceback": traceback.format_exc()})
            continue
        say({"index": index, "returned": count, "rows": rows})
    if hasattr(module, "shutdown"):
        module.shutdown()


if __name__ == "__main__":
    main()
