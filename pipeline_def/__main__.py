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
from typing import Any

from pipeline_def.errors import PipelineError
from pipeline_def.settings import Settings, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline_def", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("azureml", "local"), help="overrides PIPELINE_BACKEND")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    # The same two options are accepted after the command too (`run --backend local`, as `make demo` does);
    # SUPPRESS keeps a subcommand from resetting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--backend", choices=("azureml", "local"), default=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)
    add_command = functools.partial(commands.add_parser, parents=[common])

    run = add_command("run", help="run the pipeline now (locally: waits for it to finish)")
    run.add_argument("--sample-size", type=int, help="rows to score (0 means every row)")
    run.add_argument("--model-version", help="model version to use (default: the latest)")
    run.add_argument("--show", type=int, default=0, metavar="N", help="print the first N predicted rows")
    run.add_argument("--no-wait", action="store_true", help="local backend: start the run and return")

    status = add_command("status", help="show one run")
    status.add_argument("run_id")
    listing = add_command("list", help="show the most recent runs, newest first")
    listing.add_argument("--limit", type=int, default=20)
    cancel = add_command("cancel", help="cancel a run")
    cancel.add_argument("run_id")
    add_command("publish", help="publish the pipeline if the endpoint is not current (Azure ML)")
    add_command("fingerprint", help="print the fingerprint the published pipeline is compared to")
    train = add_command("train", help="train the baseline model into the local model registry")
    train.add_argument("--seed", type=int, default=42)

    args = parser.parse_args(argv)
    try:
        settings = _settings(args.backend)
        return _dispatch(args, settings)
    except PipelineError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _settings(backend: str | None) -> Settings:
    env = dict(os.environ)
    if backend:
        env["PIPELINE_BACKEND"] = backend
    return load_settings(env)


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline_def.service import Service, make_backend

    if args.command == "fingerprint":
        from pipeline_def.fingerprint import compute_fingerprint

        print(compute_fingerprint(settings))
        return 0
    if args.command == "train":
        from pipeline_def.local.model import train_and_register

        record = train_and_register(settings, seed=args.seed)
        _emit(args, record, lambda r: "\n".join(f"{k}: {v}" for k, v in r.items()))
        return 0

    backend = make_backend(settings)
    service = Service(settings, backend)
    if args.command == "run":
        parameters: dict[str, Any] = {}
        if args.sample_size is not None:
            parameters["sample_size"] = args.sample_size
        if args.model_version is not None:
            parameters["model_version"] = args.model_version
        if settings.backend == "local" and not args.no_wait:
            from pipeline_def.steps import validate_parameters

            # Progress goes to stderr, so that stdout stays the run (or its JSON).
            run = backend.run(
                validate_parameters(parameters),
                {"trigger": "cli"},
                progress=lambda line: print(line, file=sys.stderr, flush=True),
            )
        else:
            run = service.start_run(parameters, trigger="cli")
        _emit(args, run.to_dict(), _format_run)
        if settings.backend == "local" and args.show and run.extra.get("predictions_path"):
            from pipeline_def.local.runner import preview

            print(preview(run.extra["predictions_path"], args.show))
        if run.status in ("failed", "canceled"):
            print(f"error: run {run.run_id} {run.status}: {run.error or 'no reason given'}", file=sys.stderr)
            return 1
        return 0
    if args.command == "status":
        _emit(args, service.get_run(args.run_id).to_dict(), _format_run)
        return 0
    if args.command == "list":
        runs = service.list_runs(args.limit)
        _emit(args, {"runs": [r.to_dict() for r in runs]}, _format_runs)
        return 0
    if args.command == "cancel":
        service.cancel(args.run_id)
        _emit(
            args, {"run_id": args.run_id, "cancel": "requested"}, lambda r: f"cancel requested: {r['run_id']}"
        )
        return 0
    if args.command == "publish":
        outcome = backend.ensure_published()
        body = {
            "published": outcome.published,
            "pipeline_id": outcome.pipeline_id,
            "version": outcome.version,
            "endpoint_id": outcome.endpoint_id,
        }
        _emit(args, body, lambda r: ("published " if r["published"] else "already current ") + str(r))
        return 0
    raise AssertionError(args.command)


def _emit(args: argparse.Namespace, body: dict[str, Any], text) -> None:
    print(json.dumps(body, indent=2, default=str) if args.json else text(body))


def _format_run(run: dict[str, Any]) -> str:
    lines = [f"run {run['run_id']}: {run['status']}"]
    for step in run.get("steps") or []:
        lines.append(f"  {step['name']:<18} {step['status']}")
    for key in ("created_at", "ended_at", "error", "predictions_path", "portal_url"):
        if run.get(key):
            lines.append(f"{key}: {run[key]}")
    return "\n".join(lines)


def _format_runs(body: dict[str, Any]) -> str:
    runs = body["runs"]
    if not runs:
        return "no runs"
    return "\n".join(f"{r['run_id']}  {r['status']:<10} {r.get('created_at') or ''}" for r in runs)


if __name__ == "__main__":
    sys.exit(main())
