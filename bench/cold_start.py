"""Cold start and steady-state tick figures for the Functions app.

1. Wall time of a fresh `python -c "import function_app"` next to a fresh `python -c "import azureml.core"`,
   interleaved, several times each: medians and their ratio (goal: the app costs at most a third).
2. One steady-state timer tick (published and current, no run active) through the real timer function
   against the fake Azure ML service started here: wall time and Azure ML HTTP calls (goal: at most 5, the
   fifth being the check that keeps one run per scheduled occurrence).

Run from the project root: `.venv/bin/python bench/cold_start.py [--repeat 7] [--json]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

IMPORT_GOAL_RATIO = 1 / 3
TICK_GOAL_CALLS = 5
SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"


def time_import(module: str) -> float:
    """Seconds for a fresh interpreter to start and import `module` (bytecode caches warm, as on a host)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, check=True, env=_clean_env())
    return time.perf_counter() - started


def measure_imports(repeat: int) -> dict:
    for module in ("function_app", "azureml.core"):  # warm the bytecode caches once, not measured
        time_import(module)
    app_times: list[float] = []
    sdk_times: list[float] = []
    for _ in range(repeat):
        app_times.append(time_import("function_app"))
        sdk_times.append(time_import("azureml.core"))
    app, sdk = statistics.median(app_times), statistics.median(sdk_times)
    return {
        "repeat": repeat,
        "import_function_app_s": [round(t, 3) for t in app_times],
        "import_azureml_core_s": [round(t, 3) for t in sdk_times],
        "median_function_app_s": round(app, 3),
        "median_azureml_core_s": round(sdk, 3),
        "ratio": round(app / sdk, 3),
        "goal_met": app / sdk <= IMPORT_GOAL_RATIO,
    }


def measure_tick() -> dict:
    """A steady-state tick through the timer function against the fake Azure ML service."""
    from azure.functions.timer import TimerRequest

    from emulator.aml import FakeAzureML
    from emulator.identity import FakeManagedIdentity
    from pipeline_def.fingerprint import compute_fingerprint
    from pipeline_def.service import reset_service
    from pipeline_def.settings import load_settings

    workspace = {"subscription_id": SUBSCRIPTION, "resource_group": "rg-bench", "workspace_name": "ws-bench"}
    with (
        FakeManagedIdentity() as identity,
        FakeAzureML(**workspace) as aml,
        tempfile.TemporaryDirectory() as home,
    ):
        os.environ.update(aml.app_settings(PIPELINE_OVERLAP="skip", HOME=home, **identity.environ()))
        for name in ("AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AML_REGION"):
            os.environ.pop(name, None)
        settings = load_settings()
        pipeline = aml.add_published_pipeline(
            settings.endpoint_name,
            compute_fingerprint(settings),
            parameter_defaults=settings.parameter_defaults,
        )
        aml.add_endpoint(settings.endpoint_name, pipeline["Id"])
        reset_service()

        import function_app

        timer = next(f for f in function_app.app.get_functions() if f.get_function_name() == "scheduled_run")
        tick = timer.get_user_function()

        # The first tick of a process also fetches a token and builds the client: measured, reported apart.
        started = time.perf_counter()
        tick(TimerRequest(past_due=False))
        first_s = time.perf_counter() - started
        first_calls = len(aml.requests)
        # The first tick's run ended, and stands for the previous occurrence: a second tick of the same
        # occurrence would join it (one run per occurrence), which is not the steady state.
        for run in list(aml.runs.values()):
            aml.set_run_status(run.run_id, "Finished")
            run.tags["batchpred_occurrence"] = f"{settings.endpoint_name}@the previous occurrence"

        aml.clear_requests()
        identity_before = len(identity.requests)
        started = time.perf_counter()
        tick(TimerRequest(past_due=False))
        steady_s = time.perf_counter() - started
        calls = [f"{r.method} {r.path.replace(aml.workspace_path, '{WS}')}" for r in aml.requests]
        loaded_sdk = sorted(m for m in sys.modules if m.split(".")[0] in ("azureml", "pandas", "sklearn"))
        return {
            "first_tick_s": round(first_s, 4),
            "first_tick_azureml_calls": first_calls,
            "steady_tick_s": round(steady_s, 4),
            "steady_tick_azureml_calls": len(calls),
            "steady_tick_identity_calls": len(identity.requests) - identity_before,
            "steady_tick_calls": calls,
            "runs_submitted": len(aml.runs),
            "heavy_modules_loaded": loaded_sdk[:5],
            "goal_met": len(calls) <= TICK_GOAL_CALLS,
        }


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("AML_", "PIPELINE_"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="fresh imports of each module (default 7)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    imports = measure_imports(args.repeat)
    tick = measure_tick()
    if args.json:
        print(json.dumps({"imports": imports, "tick": tick}, indent=2))
    else:
        print(f"python {sys.version.split()[0]}, {args.repeat} fresh interpreters per module (medians)")
        print(f"  import function_app   {imports['median_function_app_s']:.3f} s")
        print(f"  import azureml.core   {imports['median_azureml_core_s']:.3f} s")
        print(
            f"  ratio                 {imports['ratio']:.3f} (goal <= {IMPORT_GOAL_RATIO:.3f}: "
            f"{'met' if imports['goal_met'] else 'NOT met'})"
        )
        print(
            f"first tick in a process {tick['first_tick_s'] * 1000:.1f} ms, "
            f"{tick['first_tick_azureml_calls']} Azure ML calls"
        )
        print(
            f"steady-state tick       {tick['steady_tick_s'] * 1000:.1f} ms, "
            f"{tick['steady_tick_azureml_calls']} Azure ML calls (goal <= {TICK_GOAL_CALLS}: "
            f"{'met' if tick['goal_met'] else 'NOT met'})"
        )
        for call in tick["steady_tick_calls"]:
            print(f"    {call}")
        if tick["heavy_modules_loaded"]:
            print(f"  heavy modules loaded by the ticks: {', '.join(tick['heavy_modules_loaded'])}")
    return 0 if imports["goal_met"] and tick["goal_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
