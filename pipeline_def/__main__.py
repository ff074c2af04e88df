"""The command line: `python -m pipeline_def run|status|list|cancel|publish|fingerprint|train`.

Every command reads the same settings as the Functions app (environment variables); `--backend` overrides
PIPELINE_BACKEND. Errors print one line to stderr and exit non-zero.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline_def.errors import PipelineError
from pipeline_def.settings import BACKENDS, Settings, load_settings

if TYPE_CHECKING:
    from pipeline_def.service import Service

PREVIEW_COLUMNS = ("Order", "PID", "Neighborhood", "GrLivArea", "OverallQual", "YearBuilt")


def main(argv: list[str] | None = None, *, sleep: Callable[[float], None] = time.sleep) -> int:
    """Run one command; `sleep` is how waiting for a run passes the time between two reads of it."""
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](_Invocation(args, _settings(args.backend), sleep))
    except PipelineError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline_def", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=BACKENDS, help="overrides PIPELINE_BACKEND")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    # The same two options are accepted after the command too (`run --backend local`, as `make demo` does);
    # SUPPRESS keeps a subcommand from resetting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--backend", choices=BACKENDS, default=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)
    add_command = functools.partial(commands.add_parser, parents=[common])

    run = add_command("run", help="run the pipeline now (locally: waits for it to finish)")
    run.add_argument("--sample-size", type=int, help="rows to score (0 means every row)")
    run.add_argument("--model-version", help="model version to use (default: the latest)")
    run.add_argument(
        "--accept-drift",
        action="store_true",
        default=None,
        help="publish even if the quality gate's drift check fails (never despite its other checks)",
    )
    run.add_argument(
        "--node-count",
        type=int,
        help="nodes of the parallel predict on Azure ML (default PIPELINE_NODE_COUNT)",
    )
    run.add_argument("--show", type=int, default=0, metavar="N", help="print the first N predicted rows")
    waiting = run.add_mutually_exclusive_group()
    waiting.add_argument(
        "--wait", action="store_true", default=None, help="wait for the run to end (the default locally)"
    )
    waiting.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        help="start the run and return (the default on Azure ML)",
    )

    status = add_command("status", help="show one run")
    status.add_argument("run_id")
    listing = add_command("list", help="show the most recent runs, newest first")
    listing.add_argument("--limit", type=int, default=20)
    cancel = add_command("cancel", help="cancel a run")
    cancel.add_argument("run_id")
    add_command("publish", help="publish the pipeline if it is not current (Azure ML v1 or v2)")
    add_command("fingerprint", help="print the fingerprint the published pipeline is compared to")
    train = add_command("train", help="train the baseline model into the local model registry")
    train.add_argument("--seed", type=int, default=42)
    return parser


def _settings(backend: str | None) -> Settings:
    env = dict(os.environ)
    if backend:
        env["PIPELINE_BACKEND"] = backend
    return load_settings(env)


@dataclass(frozen=True)
class _Invocation:
    """One command as given: its arguments, the settings, and how waiting passes the time."""

    args: argparse.Namespace
    settings: Settings
    sleep: Callable[[float], None]

    def service(self) -> Service:
        from pipeline_def.service import Service, make_backend

        return Service(self.settings, make_backend(self.settings, sleep=self.sleep))


def _run(cli: _Invocation) -> int:
    args = cli.args
    parameters: dict[str, Any] = {}
    if args.sample_size is not None:
        parameters["sample_size"] = args.sample_size
    if args.model_version is not None:
        parameters["model_version"] = args.model_version
    if args.node_count is not None:
        parameters["node_count"] = args.node_count
    if args.accept_drift:
        parameters["accept_drift"] = True
    # A local run waits by default: it runs in this process, as `make demo` shows.
    wait = args.wait if args.wait is not None else cli.settings.backend == "local"
    started = cli.service().start_run(
        parameters,
        trigger="cli",
        wait=wait,
        # Progress goes to stderr, so that stdout stays the run (or its JSON).
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    run = started.run
    _emit(args, started.to_dict(), _format_run)
    if args.show and run.predictions_path:
        print(preview(run.predictions_path, args.show))
    if run.status in ("failed", "canceled"):
        print(f"error: run {run.run_id} {run.status}: {run.error or 'no reason given'}", file=sys.stderr)
        return 1
    return 0


def _status(cli: _Invocation) -> int:
    _emit(cli.args, cli.service().get_run(cli.args.run_id).to_dict(), _format_run)
    return 0


def _list(cli: _Invocation) -> int:
    runs = cli.service().list_runs(cli.args.limit)
    _emit(cli.args, {"runs": [r.to_dict() for r in runs]}, _format_runs)
    return 0


def _cancel(cli: _Invocation) -> int:
    run_id = cli.args.run_id
    cli.service().cancel(run_id)
    _emit(cli.args, {"run_id": run_id, "cancel": "requested"}, lambda r: f"cancel requested: {r['run_id']}")
    return 0


def _publish(cli: _Invocation) -> int:
    published = cli.service().publish()
    body = {
        "published": published.published,
        "version": published.target.version,
        "current": published.target.current,
    }
    _emit(cli.args, body, lambda r: ("published " if r["published"] else "already current ") + str(r))
    return 0


def _fingerprint(cli: _Invocation) -> int:
    """The version the published pipeline is compared to: on v2, the version the components are registered
    at (it covers requirements-v2.txt and the v2 environment, not v1's)."""
    if cli.settings.backend == "azureml-v2":
        from pipeline_def.azureml_v2.publisher import v2_fingerprint

        print(v2_fingerprint(cli.settings))
        return 0
    from pipeline_def.fingerprint import compute_fingerprint

    print(compute_fingerprint(cli.settings))
    return 0


def _train(cli: _Invocation) -> int:
    from pipeline_def.local.model import train_and_register

    record = train_and_register(cli.settings, seed=cli.args.seed)
    _emit(cli.args, record, lambda r: "\n".join(f"{k}: {v}" for k, v in r.items()))
    return 0


COMMANDS: dict[str, Callable[[_Invocation], int]] = {
    "run": _run,
    "status": _status,
    "list": _list,
    "cancel": _cancel,
    "publish": _publish,
    "fingerprint": _fingerprint,
    "train": _train,
}


def preview(path: str | os.PathLike[str], n: int) -> str:
    """The first `n` predicted rows, a few telling columns wide (for `run --show`): of the CSV, or of the first
    Parquet part a large run's manifest names."""
    import pandas as pd

    if str(path).endswith(".json"):
        first = json.loads(Path(path).read_text(encoding="utf-8"))["files"][0]["path"]
        frame = pd.read_parquet(Path(path).parent / first).head(max(n, 0))
    else:
        frame = pd.read_csv(path, nrows=max(n, 0))
    columns = [c for c in PREVIEW_COLUMNS if c in frame.columns]
    if "PredictedSalePrice" in frame.columns:
        frame["PredictedSalePrice"] = frame["PredictedSalePrice"].round(0)
        columns.append("PredictedSalePrice")
    if not columns:
        columns = list(frame.columns[:8])
    return frame[columns].to_string(index=False)


def _emit(args: argparse.Namespace, body: dict[str, Any], text: Callable[[dict[str, Any]], str]) -> None:
    print(json.dumps(body, indent=2, default=str) if args.json else text(body))


def _format_run(run: dict[str, Any]) -> str:
    lines = [f"run {run['run_id']}: {run['status']}"]
    for step in run.get("steps") or []:
        lines.append(f"  {step['name']:<18} {step['status']}")
    for key in ("created_at", "ended_at", "error", "predictions_path", "portal_url"):
        if run.get(key):
            lines.append(f"{key}: {run[key]}")
    lines += _format_predictions(run.get("predictions"))
    return "\n".join(lines)


def _format_predictions(found: dict[str, Any] | None) -> list[str]:
    """Where the predictions went and the quality gate's one-line verdict (GET /api/runs/{id}'s
    `predictions`)."""
    if not found:
        return []
    gate = found.get("gate") or {}
    verdict = gate.get("verdict") or "unknown"
    if gate.get("failed_check"):
        verdict += f" at {gate['failed_check']} (the latest predictions were left as they were)"
    lines = [f"quality gate: {verdict}"]
    if gate.get("report_path"):
        lines.append(f"quality report: {gate.get('report_url') or gate['report_path']}")
    lines.append(f"rows: {found.get('rows')}")
    lines.append(f"history: {found.get('history_path')}")
    if found.get("latest_path"):
        lines.append(f"latest: {found['latest_path']}")
    if found.get("url"):
        lines.append(f"open: {found['url']}")
    return lines


def _format_runs(body: dict[str, Any]) -> str:
    runs = body["runs"]
    if not runs:
        return "no runs"
    return "\n".join(f"{r['run_id']}  {r['status']:<10} {r.get('created_at') or ''}" for r in runs)


if __name__ == "__main__":
    sys.exit(main())
