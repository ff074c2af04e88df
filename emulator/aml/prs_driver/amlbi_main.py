"""The emulated parallel-run driver: what the emulated workspace runs for a v1 ParallelRunStep
(`python driver/amlbi_main.py <structured arguments>`, the module's Script) and for a v2 `parallel` node.

Azure ML drops its own `driver/` folder into the job's working directory (docs/parallel-run-notes.md 1.3); its
code is in no client package, so this one plays its part from what is documented (the notes' section 4 design):

- mini-batches from the input: file items (a mounted folder's files, sorted) by count; tabular items (CSV
  byte ranges on line boundaries, Parquet row groups) by size, never across files;
- `node count` x `--process_count_per_node` worker processes (prs_worker.py), each node with its own working
  copy, pulling mini-batches from one shared queue; `init()` once per process;
- a `run()` not answered within `--run_invocation_timeout` seconds: the process is killed (and restarted, so
  init() runs again) and the mini-batch goes back to the queue; a mini-batch fails after `--run_max_try`
  attempts (errors and timeouts alike); failed items (all of a failed mini-batch, and the items run() did not
  return) count against `--error_threshold` (-1: no limit), failed mini-batches against
  `--allowed_failed_count` / `--allowed_failed_percent`;
- `init()` failing 3 x process_count times on a node stops that node; when no node is left the job fails;
- logs in the documented layout under ./logs (the executor uploads them as the step run's artifacts):
  logs/job_result.txt, logs/job_progress_overview.<ts>.txt, logs/sys/master_role.txt,
  logs/user/error.txt, logs/user/error/<node>/processNNN.txt, logs/user/stdout/<node>/processNNN.stdout.txt
  (and .stderr.txt), logs/user/entry_script_log/<node>/processNNN.log.txt;
- exit code 0, or 42 when the job failed (the real error in logs/job_result.txt and logs/user/error.txt).

The executor passes what is not on the command line in environment variables: PRS_NODE_COUNT (the step's
NodeCount), PRS_INPUTS (JSON {input name: {"path", "kind": "file"|"tabular"}}). Standard library only (pyarrow
to list Parquet row groups of a tabular input)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

FAILED_EXIT_CODE = 42
DEFAULT_APPEND_ROW_FILE = "parallel_run_step.txt"
# documented: init() failing 3 x process_count_per_node times on a node stops restarts on it
INIT_FAILURES_PER_PROCESS = 3
_SIZE = re.compile(r"^(\d+)\s*([kmg]?b)?$", re.IGNORECASE)
_UNITS = {None: 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def parse_size(text: str) -> int:
    """'20971520', '10kb', '16MB' -> bytes (file inputs use the plain number as a count)."""
    found = _SIZE.match(str(text).strip())
    if not found:
        raise ValueError(f"mini_batch_size {text!r} is not a number or a size such as 10kb or 16MB")
    return int(found[1]) * _UNITS[(found[2] or "").lower() or None]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="amlbi_main.py", add_help=False)
    add = parser.add_argument
    add("--client_sdk_version")
    add("--scoring_module_name", required=True)
    add("--mini_batch_size")
    add("--error_threshold", type=int, default=-1)
    add("--allowed_failed_count", type=int)
    add("--allowed_failed_percent", type=float)
    add("--output_action", default="summary_only")
    add("--append_row_file_name", default=DEFAULT_APPEND_ROW_FILE)
    add("--logging_level", default="INFO")
    add("--run_invocation_timeout", type=float, default=60.0)
    add("--run_max_try", type=int, default=3)
    add("--create_snapshot_at_runtime")
    add("--output")
    add("--process_count_per_node", type=int)
    add("--partition_keys")
    known, _rest = parser.parse_known_args(argv)
    inputs = []
    for index, word in enumerate(argv[:-1]):
        found = re.fullmatch(r"--input_(f?ds)_(\d+)", word)
        if found:
            inputs.append((int(found[2]), argv[index + 1]))
    known.inputs = [name for _index, name in sorted(inputs)]
    return known


# ---------------------------------------------------------------------------------------------- mini-batches
@dataclass
class Task:
    index: int
    payload: dict[str, Any]  # {"items": [...]} or {"table": {...}}
    items: int
    attempts: int = 0


def file_batches(folders: list[Path], count: int) -> list[Task]:
    files = [p for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()]
    tasks = []
    for start in range(0, len(files), count):
        chunk = [str(p) for p in files[start : start + count]]
        tasks.append(Task(len(tasks), {"items": chunk}, len(chunk)))
    return tasks


def table_batches(files: list[Path], size: int) -> list[Task]:
    """Byte ranges of whole lines of each CSV (after its header) and runs of row groups of each Parquet file,
    each about `size` bytes; a mini-batch never crosses a file. Items are rows."""
    tasks: list[Task] = []
    for file in files:
        if file.suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            with pq.ParquetFile(file) as parquet:
                meta = parquet.metadata
                groups: list[int] = []
                taken = rows = 0
                for group in range(meta.num_row_groups):
                    groups.append(group)
                    taken += meta.row_group(group).total_byte_size
                    rows += meta.row_group(group).num_rows
                    if taken >= size:
                        tasks.append(Task(len(tasks), {"table": _pq(file, groups)}, rows))
                        groups, taken, rows = [], 0, 0
                if groups:
                    tasks.append(Task(len(tasks), {"table": _pq(file, groups)}, rows))
            continue
        with open(file, "rb") as handle:
            handle.readline()  # the header: given to every mini-batch of the file
            while True:
                start = handle.tell()
                chunk = handle.read(size)
                if not chunk:
                    break
                rest = b"" if chunk.endswith(b"\n") else handle.readline()  # to the end of the line
                lines = (chunk + rest).count(b"\n") + (0 if (chunk + rest).endswith(b"\n") else 1)
                end = handle.tell()
                table = {"kind": "csv", "file": str(file), "start": start, "end": end}
                tasks.append(Task(len(tasks), {"table": table}, lines))
    return tasks


def _pq(file: Path, groups: list[int]) -> dict[str, Any]:
    return {"kind": "parquet", "file": str(file), "row_groups": list(groups)}


# ---------------------------------------------------------------------------------------------- logs
class Logs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.Lock()
        (root / "sys").mkdir(parents=True, exist_ok=True)
        (root / "user").mkdir(parents=True, exist_ok=True)
        self.progress = root / f"job_progress_overview.{datetime.now(UTC):%Y%m%d%H}.txt"

    def _append(self, relative: str, text: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock, open(path, "a", encoding="utf-8") as handle:
            handle.write(text)

    def master(self, message: str) -> None:
        self._append("sys/master_role.txt", f"{_now()}|INFO|{message}\n")

    def overview(self, message: str) -> None:
        self._append(self.progress.name, f"{_now()} {message}\n")

    def user_error(self, node: str, agent: str, what: str, detail: str) -> None:
        entry = f"{_now()}|node {node}|{agent}|{what}\n{detail.rstrip()}\n\n"
        self._append("user/error.txt", entry)
        self._append(f"user/error/{node}/{agent}.txt", entry)

    def result(self, text: str) -> None:
        (self.root / "job_result.txt").write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------------------- workers
class Worker:
    """One worker process and its two pipes; `ask` waits (bounded) for its next answer line."""

    def __init__(self, process: subprocess.Popen, commands: TextIO, answers_fd: int) -> None:
        self.process = process
        self.commands = commands
        self.answers_fd = answers_fd
        self.buffer = b""

    def send(self, message: dict[str, Any]) -> None:
        self.commands.write(json.dumps(message) + "\n")
        self.commands.flush()

    def answer(self, timeout: float) -> dict[str, Any] | None:
        """The next line from the worker, None if it sent none within `timeout` or died."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.answers_fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self.answers_fd, 65536)
                if not chunk:
                    return None  # the worker is gone
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)

    def stop(self, kill: bool = False) -> None:
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                try:
                    self.send({"stop": True})
                    self.process.wait(timeout=30)
                except (OSError, subprocess.TimeoutExpired):
                    self.process.kill()
        self.process.wait()
        for close in (self.commands.close, lambda: os.close(self.answers_fd)):
            with contextlib.suppress(OSError):
                close()


@dataclass
class Job:
    args: argparse.Namespace
    argv: list[str]
    logs: Logs
    nodes: list[Path]
    tasks: list[Task]
    pending: deque[Task] = field(default_factory=deque)
    in_flight: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)
    abort: str | None = None
    failed_items: int = 0
    failed_batches: int = 0
    succeeded_batches: int = 0
    returned_items: int = 0
    init_failures: dict[str, int] = field(default_factory=dict)
    dead_slots: int = 0
    first_error: str | None = None

    # ------------------------------------------------------------------ a worker process
    def start_worker(self, node: int, agent: str) -> tuple[Worker | None, str | None]:
        """Start a worker on `node` and wait for its init(); (worker, None) or (None, init's error)."""
        node_name = str(node)
        stdout_dir = self.logs.root / "user" / "stdout" / node_name
        stdout_dir.mkdir(parents=True, exist_ok=True)
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        environment = {
            **os.environ,
            "PRS_WORKER_FDS": f"{to_worker_r},{from_worker_w}",
            "PRS_ENTRY_SCRIPT": self.args.scoring_module_name,
            "PRS_NODE": node_name,
            "PRS_AGENT": agent,
            "PRS_LOG_DIR": str(self.logs.root),
            "PRS_LOGGING_LEVEL": self.args.logging_level,
        }
        if self.args.output:
            environment["AZUREML_BI_OUTPUT_PATH"] = self.args.output
        with (
            open(stdout_dir / f"{agent}.stdout.txt", "ab") as out,
            open(stdout_dir / f"{agent}.stderr.txt", "ab") as err,
        ):
            process = subprocess.Popen(
                [sys.executable, str(self.nodes[node] / "driver" / "prs_worker.py"), *self.argv],
                cwd=self.nodes[node],
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                pass_fds=(to_worker_r, from_worker_w),
            )
        os.close(to_worker_r)
        os.close(from_worker_w)
        worker = Worker(process, os.fdopen(to_worker_w, "w", buffering=1), from_worker_r)
        init_timeout = INIT_FAILURES_PER_PROCESS * self.args.run_invocation_timeout + 30
        answer = worker.answer(init_timeout)
        if answer is not None and answer.get("ready"):
            self.logs.master(f"node {node_name} {agent} started (pid {process.pid}), init() done")
            return worker, None
        error = (answer or {}).get("init_error") or (
            f"init() did not finish within {init_timeout:g} s"
            if process.poll() is None
            else "the worker died"
        )
        self.logs.user_error(node_name, agent, "init() failed", (answer or {}).get("traceback") or error)
        worker.stop(kill=True)
        return None, error

    # ------------------------------------------------------------------ one slot: a process on a node
    def slot(self, node: int, process_index: int) -> None:
        agent = f"process{process_index:03d}"
        node_name = str(node)
        worker: Worker | None = None
        try:
            while True:
                with self.cond:
                    while not self.pending and self.in_flight and self.abort is None:
                        self.cond.wait(0.5)
                    if self.abort is not None or not self.pending:
                        return
                    task = self.pending.popleft()
                    self.in_flight += 1
                if worker is None:
                    worker, error = self.start_worker(node, agent)
                    if worker is None:
                        if self._init_failed(node_name, task, error or "init() failed"):
                            return
                        continue
                task.attempts += 1
                worker.send({"index": task.index, **task.payload})
                answer = worker.answer(self.args.run_invocation_timeout)
                if answer is None:
                    died = worker.process.poll() is not None
                    worker.stop(kill=True)
                    worker = None  # a new process (init() again) for the next mini-batch
                    what = (
                        "the worker process died"
                        if died
                        else f"run() did not return within {self.args.run_invocation_timeout:g} s (killed)"
                    )
                    self.logs.user_error(node_name, agent, f"mini batch {task.index}: {what}", what)
                    self._failed_attempt(task, f"mini batch {task.index}: {what}")
                elif "error" in answer:
                    self.logs.user_error(
                        node_name,
                        agent,
                        f"mini batch {task.index} attempt {task.attempts}: run() raised",
                        answer.get("traceback") or answer["error"],
                    )
                    self._failed_attempt(task, answer["error"])
                else:
                    self._succeeded(task, int(answer.get("returned") or 0), answer.get("rows") or [])
        finally:
            if worker is not None:
                worker.stop(kill=self.abort is not None)

    def _init_failed(self, node_name: str, task: Task, error: str) -> bool:
        """The task goes back to the queue untried; True when this slot gives up (its node is out of tries)."""
        with self.cond:
            self.pending.appendleft(task)
            self.in_flight -= 1
            self.first_error = self.first_error or error
            failures = self.init_failures[node_name] = self.init_failures.get(node_name, 0) + 1
            limit = INIT_FAILURES_PER_PROCESS * self.args.process_count_per_node
            if failures < limit:
                return False
            self.dead_slots += 1
            if self.dead_slots >= len(self.nodes) * self.args.process_count_per_node:
                self.abort = f"init() failed {failures} times on every node; the last error: {error}"
            self.cond.notify_all()
            return True

    def _failed_attempt(self, task: Task, error: str) -> None:
        with self.cond:
            self.in_flight -= 1
            if task.attempts < self.args.run_max_try:
                self.pending.append(task)  # visible again: any process may take it
                self.logs.master(f"mini batch {task.index} failed attempt {task.attempts}: {error}; retrying")
            else:
                self.first_error = self.first_error or error
                self.failed_batches += 1
                self.failed_items += task.items
                self.logs.master(f"mini batch {task.index} failed after {task.attempts} attempts: {error}")
                self._check_thresholds(error)
            self.cond.notify_all()

    def _succeeded(self, task: Task, returned: int, rows: list[str]) -> None:
        if rows and self.args.output_action.lower() == "append_row" and self.args.output:
            with self.logs.lock, open(Path(self.args.output) / self.args.append_row_file_name, "a") as handle:
                handle.write("".join(row + "\n" for row in rows))
        with self.cond:
            self.in_flight -= 1
            self.succeeded_batches += 1
            self.returned_items += returned
            missing = max(task.items - returned, 0)
            if missing:
                self.failed_items += missing
                self.logs.master(f"mini batch {task.index}: run() returned {returned} of {task.items} items")
                self._check_thresholds(f"run() returned {returned} results for {task.items} items")
            self.cond.notify_all()

    def _check_thresholds(self, error: str) -> None:
        threshold = self.args.error_threshold
        if threshold is not None and threshold >= 0 and self.failed_items > threshold:
            self.abort = (
                f"the error threshold was exceeded: {self.failed_items} failed items > error_threshold "
                f"{threshold}; the first error: {self.first_error or error}"
            )
        allowed = self.args.allowed_failed_count
        if allowed is not None and allowed >= 0 and self.failed_batches > allowed:
            self.abort = (
                f"{self.failed_batches} failed mini batches > allowed_failed_count {allowed}; "
                f"the first error: {self.first_error or error}"
            )


def prepare_nodes(count: int) -> list[Path]:
    """A working copy per node (as each node of a cluster has its own): node 0 is this folder; the others are
    copies of it under $TMPDIR, without ./logs."""
    here = Path.cwd()
    nodes = [here]
    for node in range(1, count):
        copy = Path(os.environ.get("TMPDIR", "/tmp")) / f"prs-node-{node}-{os.getpid()}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(here, copy, ignore=shutil.ignore_patterns("logs", "__pycache__"))
        nodes.append(copy)
    return nodes


def inputs_of(args: argparse.Namespace) -> tuple[str, list[Path]]:
    given = json.loads(os.environ.get("PRS_INPUTS") or "{}")
    kinds, paths = set(), []
    for name in args.inputs:
        if name not in given:
            raise ValueError(f"input {name!r} was not provided to the step")
        kinds.add(given[name]["kind"])
        paths.append(Path(given[name]["path"]))
    if len(kinds) != 1:
        raise ValueError("a parallel run step needs inputs, all of one kind (file or tabular)")
    return kinds.pop(), paths


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logs = Logs(Path.cwd() / "logs")
    node_count = int(os.environ.get("PRS_NODE_COUNT") or 1)
    args.process_count_per_node = args.process_count_per_node or os.cpu_count() or 1
    logs.master(f"arguments: {argv}")
    logs.master(f"{node_count} node(s) x {args.process_count_per_node} process(es)")
    try:
        kind, paths = inputs_of(args)
        if kind == "file":
            count = int(args.mini_batch_size or 10)
            tasks = file_batches(paths, count)
        else:
            files = [p for path in paths for p in ([path] if path.is_file() else sorted(path.rglob("*")))]
            files = [p for p in files if p.is_file() and p.suffix in (".csv", ".parquet", ".pq")]
            tasks = table_batches(files, parse_size(args.mini_batch_size or "1MB"))
    except (ValueError, OSError) as error:
        logs.result(f"Job failed: {error}\n")
        print(f"[parallel run] job failed: {error}", file=sys.stderr)
        return FAILED_EXIT_CODE
    items = sum(t.items for t in tasks)
    logs.overview(
        f"Scheduling finished. Scheduled {len(tasks)} mini batches. There are {len(tasks)} tasks with "
        f"{items} items."
    )
    nodes = prepare_nodes(node_count)
    job = Job(args, argv, logs, nodes, tasks, pending=deque(tasks))
    slots = [
        threading.Thread(target=job.slot, args=(node, process), name=f"slot-{node}-{process}", daemon=True)
        for node in range(node_count)
        for process in range(args.process_count_per_node)
    ]
    for thread in slots:
        thread.start()
    for thread in slots:
        thread.join()
    for copy in nodes[1:]:
        shutil.rmtree(copy, ignore_errors=True)

    summary = (
        f"{len(tasks)} mini batches: {job.succeeded_batches} succeeded, {job.failed_batches} failed; "
        f"{items} items, {job.returned_items} returned, {job.failed_items} failed."
    )
    if job.abort is None and job.pending:
        job.abort = f"{len(job.pending)} mini batches were never processed"
    percent = args.allowed_failed_percent
    if (
        job.abort is None
        and percent is not None
        and tasks
        and 100 * job.failed_batches / len(tasks) > percent
    ):
        job.abort = (
            f"{job.failed_batches} of {len(tasks)} mini batches failed > allowed_failed_percent {percent}"
        )
    logs.overview(summary)
    if job.abort is not None:
        logs.result(f"Job failed: {job.abort}\n{summary}\n")
        logs.master(f"job failed: {job.abort}")
        print(f"[parallel run] job failed: {job.abort}; see logs/job_result.txt", file=sys.stderr)
        return FAILED_EXIT_CODE
    logs.result(f"Job succeeded.\n{summary}\n")
    logs.master("job succeeded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
