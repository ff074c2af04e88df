"""The local backend's parallel runtime: for a step with `parallel` (steps.py), it plays the part Azure ML's
parallel run plays on a cluster, with a pool of worker processes on this machine.

    python pipeline_def/local/parallel.py --entry-script SCRIPT --items DIR [--workers N] [--max-try 3]
        [--timeout 300] [--error-threshold 0] -- ENTRY-SCRIPT ARGUMENTS...

Each Parquet part of DIR is one mini-batch. Each worker (N processes, 0: one a core) imports the entry script
with the arguments after `--` as its sys.argv, calls `init()` once, then `run([part])` for each mini-batch it
is given. A mini-batch whose run() raises, outlasts `--timeout` seconds (its worker is killed and replaced) or
whose worker dies is tried again, up to `--max-try` times in all; then its items count as failed. The step
fails when more items failed than `--error-threshold` (-1: any number), or when init() fails, with the entry
script's own error line (`error: ...`, exit code 2), as the step scripts fail.

It runs as a script in the step's process (no pipeline_def import: the steps run without it on the path), so
it uses the standard library only.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import queue
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXIT_FAILED = 2
POLL_SECONDS = 0.2


@dataclass
class Config:
    entry_script: Path
    items: Path
    entry_arguments: list[str]
    workers: int = 0
    max_try: int = 3
    timeout: float = 300.0
    error_threshold: int = 0


class StepFailure(Exception):
    """The step fails with this one line."""


def mini_batches(items: Path) -> list[list[str]]:
    """One mini-batch a Parquet part of `items`, in name order."""
    if not items.is_dir():
        raise StepFailure(f"input folder {str(items)!r} does not exist")
    parts = sorted(p for p in items.iterdir() if p.suffix == ".parquet" and not p.name.startswith("."))
    if not parts:
        raise StepFailure(f"input folder {str(items)!r} holds no .parquet file")
    return [[str(part)] for part in parts]


def describe(error: BaseException) -> str:
    """An exception as one line: a StepError (the steps' own errors) says its message, anything else
    `<type>: <message>`."""
    text = (
        str(error)
        if type(error).__name__ in ("StepError", "StepFailed")
        else f"{type(error).__name__}: {error}"
    )
    return " ".join(text.split())


# --- a worker process ------------------------------------------------------------------------------------


def _worker(number: int, config: Config, tasks: Any, results: Any) -> None:
    """Import the entry script, init() once, then run() each mini-batch `tasks` hands over until None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when a worker stops
    sys.argv = [str(config.entry_script), *config.entry_arguments]
    sys.path.insert(0, str(config.entry_script.parent))
    try:
        name = config.entry_script.stem
        spec = importlib.util.spec_from_file_location(name, config.entry_script)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[name] = module  # imported as the runtime imports it: by its name
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        module.init()
    except BaseException as error:  # noqa: BLE001 - whatever init raises, the driver reports it
        results.put(("init_failed", number, None, describe(error)))
        return
    results.put(("ready", number, None, None))
    while (task := tasks.get()) is not None:
        index, batch = task
        try:
            returned = module.run(batch)
            results.put(("done", number, index, len(returned) if returned is not None else 0))
        except BaseException as error:  # noqa: BLE001
            results.put(("failed", number, index, describe(error)))


@dataclass
class _Worker:
    number: int
    process: Any
    tasks: Any
    ready: bool = False
    task: int | None = None
    started: float = 0.0


# --- the driver ------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    mini_batches: int
    failed_items: int = 0
    tries: int = 0
    errors: list[str] = field(default_factory=list)


class Runtime:
    """The pool and the mini-batch queue, with retries, time-outs and the error threshold."""

    def __init__(self, config: Config, batches: list[list[str]], clock: Any = time.monotonic) -> None:
        self.config = config
        self.batches = batches
        self.clock = clock
        self.context = multiprocessing.get_context("spawn")
        self.results = self.context.Queue()
        self.workers: dict[int, _Worker] = {}
        self.pending: deque[int] = deque(range(len(batches)))
        self.tries = [0] * len(batches)
        self.done: set[int] = set()
        self.outcome = Outcome(len(batches))
        self._numbers = 0

    def run(self) -> Outcome:
        count = min(self.config.workers or os.cpu_count() or 1, len(self.batches))
        say(f"{len(self.batches)} mini-batch(es) of {self.config.items} over {count} worker process(es)")
        try:
            for _ in range(count):
                self._start_worker()
            while len(self.done) < len(self.batches):
                self._dispatch()
                self._receive()
                self._watch()
        finally:
            self._stop_all()
        return self.outcome

    def _start_worker(self) -> None:
        self._numbers += 1
        tasks = self.context.Queue()
        process = self.context.Process(
            target=_worker, args=(self._numbers, self.config, tasks, self.results), daemon=True
        )
        process.start()
        self.workers[self._numbers] = _Worker(self._numbers, process, tasks)

    def _dispatch(self) -> None:
        for worker in self.workers.values():
            if worker.ready and worker.task is None and self.pending:
                worker.task, worker.started = self.pending.popleft(), self.clock()
                self.tries[worker.task] += 1
                self.outcome.tries += 1
                worker.tasks.put((worker.task, self.batches[worker.task]))

    def _receive(self) -> None:
        try:
            kind, number, index, value = self.results.get(timeout=POLL_SECONDS)
        except queue.Empty:
            return
        worker = self.workers.get(number)
        if worker is None:  # a worker killed after it sent this
            return
        if kind == "init_failed":
            raise StepFailure(value)
        if kind == "ready":
            worker.ready = True
        elif kind == "done" and index == worker.task:
            worker.task = None
            expected = len(self.batches[index])
            self._finished(index, failed_items=max(expected - value, 0), error=None)
        elif kind == "failed" and index == worker.task:
            worker.task = None
            self._attempt_failed(index, value)

    def _watch(self) -> None:
        """Kill a worker past the time-out, replace a dead one; their mini-batch counts as a failed try."""
        for worker in list(self.workers.values()):
            if worker.task is not None and self.clock() - worker.started > self.config.timeout:
                error = f"run() of {self._name(worker.task)} timed out after {self.config.timeout:g} s"
            elif not worker.process.is_alive():
                if not worker.ready:
                    raise StepFailure(
                        f"a worker process died in init() (exit code {worker.process.exitcode})"
                    )
                error = f"the worker process died (exit code {worker.process.exitcode})"
            else:
                continue
            task = worker.task
            self._stop(worker)
            self._start_worker()
            if task is not None:
                self._attempt_failed(task, error)

    def _attempt_failed(self, index: int, error: str) -> None:
        if self.tries[index] < self.config.max_try:
            say(f"{self._name(index)}: try {self.tries[index]} of {self.config.max_try} failed: {error}")
            self.pending.append(index)
            return
        self._finished(index, failed_items=len(self.batches[index]), error=error)

    def _finished(self, index: int, failed_items: int, error: str | None) -> None:
        self.done.add(index)
        if failed_items:
            self.outcome.failed_items += failed_items
            self.outcome.errors.append(
                error or f"run() returned fewer results than items for {self._name(index)}"
            )
            say(f"{self._name(index)}: failed after {self.tries[index]} tries: {self.outcome.errors[-1]}")
            threshold = self.config.error_threshold
            if threshold != -1 and self.outcome.failed_items > threshold:
                raise StepFailure(self.outcome.errors[-1])
        else:
            say(f"{self._name(index)}: done ({len(self.done)}/{len(self.batches)})")

    def _name(self, index: int) -> str:
        return ", ".join(Path(item).name for item in self.batches[index])

    def _stop(self, worker: _Worker) -> None:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join()
        self.workers.pop(worker.number, None)

    def _stop_all(self) -> None:
        for worker in self.workers.values():
            if worker.process.is_alive():
                worker.tasks.put(None)
        deadline = time.monotonic() + 5.0
        for worker in list(self.workers.values()):
            worker.process.join(timeout=max(deadline - time.monotonic(), 0.0))
            self._stop(worker)


def say(line: str) -> None:
    print(f"parallel: {line}", flush=True)


def parse_args(argv: list[str]) -> Config:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--entry-script", required=True, type=Path)
    parser.add_argument("--items", required=True, type=Path, help="the folder of Parquet parts")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (default 0: one a core)")
    parser.add_argument("--max-try", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one run() may take")
    parser.add_argument("--error-threshold", type=int, default=0, help="failed items tolerated; -1: any")
    cut = argv.index("--") if "--" in argv else len(argv)
    args, entry = parser.parse_args(argv[:cut]), argv[cut + 1 :]
    return Config(
        entry_script=args.entry_script.resolve(),
        items=args.items,
        entry_arguments=entry,
        workers=args.workers,
        max_try=max(args.max_try, 1),
        timeout=args.timeout,
        error_threshold=args.error_threshold,
    )


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signal.SIGTERM)  # leaves through Runtime.run's clean-up, which stops the workers


def main(argv: list[str] | None = None) -> int:
    config = parse_args(sys.argv[1:] if argv is None else argv)
    # Run as a script, this folder is sys.path[0]; the workers must not find its modules by their bare names.
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        del sys.path[0]
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.monotonic()
    try:
        outcome = Runtime(config, mini_batches(config.items)).run()
    except StepFailure as failure:
        print(f"error: {failure}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    seconds = time.monotonic() - started
    say(
        f"{outcome.mini_batches} mini-batch(es) in {seconds:.1f} s, {outcome.tries} run() call(s), "
        f"{outcome.failed_items} failed item(s) (threshold {config.error_threshold})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
