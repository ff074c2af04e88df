"""Benchmark: one steady-state submission (the endpoint already current) through our REST path next to the
same submission through the azureml SDK, each in a fresh process including its imports, against the fake
Azure ML service and managed identity on 127.0.0.1. Reports HTTP calls to Azure ML, wall time and the ratio.

    .venv/bin/python bench/submit.py [--repeat N] [--json]      (figures also go to bench/results/submit.json)
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
RESULTS = ROOT / "bench" / "results" / "submit.json"
sys.path.insert(0, str(ROOT))

from emulator.aml import FakeAzureML  # noqa: E402
from emulator.identity import FakeManagedIdentity  # noqa: E402

# Each child prints the seconds from its first line (before any import of ours or of azureml) to the
# returned run; the parent also times the whole process, interpreter start-up included.
OURS = """
import time
started = time.perf_counter()
from pipeline_def.service import Service, make_backend
from pipeline_def.settings import load_settings
settings = load_settings()
run = Service(settings, make_backend(settings)).start_run({}).run
import sys
print(run.run_id, time.perf_counter() - started, "azureml" in sys.modules)
"""

SDK = """
import time
started = time.perf_counter()
from azure.identity import DefaultAzureCredential
from azureml.core import Workspace
from azureml.core.authentication import TokenAuthentication
from azureml.pipeline.core import PipelineEndpoint
import os
credential = DefaultAzureCredential()
auth = TokenAuthentication(
    lambda audience: credential.get_token(audience.rstrip("/") + "/.default").token, cloud="AzureCloud"
)
ws = Workspace(os.environ["AML_SUBSCRIPTION_ID"], os.environ["AML_RESOURCE_GROUP"],
               os.environ["AML_WORKSPACE_NAME"], auth=auth, _location="local",
               _disable_service_check=True, _workspace_id="bench-workspace", _cloud="AzureCloud")
ws._discovery_url_internal = os.environ["AML_API_BASE"] + "/discovery"
endpoint = PipelineEndpoint.get(workspace=ws, name=os.environ["PIPELINE_ENDPOINT_NAME"])
run = endpoint.submit(os.environ["PIPELINE_EXPERIMENT_NAME"])
print(run.id, time.perf_counter() - started, True)
"""


def run_child(code: str, env: dict[str, str], fake: FakeAzureML) -> dict:
    fake.clear_requests()
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"child failed:\n{result.stderr[-3000:]}")
    run_id, inside, azureml_imported = result.stdout.strip().splitlines()[-1].split()
    if run_id not in fake.runs:
        raise SystemExit(f"child reported run {run_id}, which the fake does not know")
    return {
        "calls": len(fake.requests),
        "calls_by_path": [f"{r.method} {r.path.split(fake.workspace_path)[-1]}" for r in fake.requests],
        "process_seconds": wall,
        "in_process_seconds": float(inside),
        "azureml_imported": azureml_imported == "True",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="submissions per path (median reported)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    with (
        FakeAzureML("00000000-0000-0000-0000-000000000001", "rg-test", "ws-test") as fake,
        FakeManagedIdentity() as identity,
        tempfile.TemporaryDirectory() as home,
    ):
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AML_", "PIPELINE_", "AZURE_", "MSI_", "IDENTITY_", "AZUREML_"))
        }
        env.update(
            fake.app_settings(
                PIPELINE_ENDPOINT_NAME="house-price-batch-predictions",
                PIPELINE_EXPERIMENT_NAME="house-price-batch-predictions",
                HOME=home,
                **identity.environ(),
            )
        )
        # The steady state: the endpoint's default version is the current fingerprint.
        from pipeline_def.fingerprint import compute_fingerprint
        from pipeline_def.settings import load_settings

        settings = load_settings(env)
        pipeline = fake.add_published_pipeline(
            settings.endpoint_name,
            compute_fingerprint(settings),
            parameter_defaults=settings.parameter_defaults,
        )
        fake.add_endpoint(settings.endpoint_name, pipeline["Id"])

        # Warm the OS file cache for both paths once, so neither pays the first disk read alone.
        run_child(OURS, env, fake)
        run_child(SDK, env, fake)
        ours = [run_child(OURS, env, fake) for _ in range(args.repeat)]
        sdk = [run_child(SDK, env, fake) for _ in range(args.repeat)]

    def summary(samples: list[dict]) -> dict:
        return {
            "calls": samples[-1]["calls"],
            "calls_by_path": samples[-1]["calls_by_path"],
            "process_seconds_median": statistics.median(s["process_seconds"] for s in samples),
            "in_process_seconds_median": statistics.median(s["in_process_seconds"] for s in samples),
            "azureml_imported": samples[-1]["azureml_imported"],
        }

    report = {"repeat": args.repeat, "ours": summary(ours), "sdk": summary(sdk)}
    report["speedup_process"] = (
        report["sdk"]["process_seconds_median"] / report["ours"]["process_seconds_median"]
    )
    report["speedup_in_process"] = (
        report["sdk"]["in_process_seconds_median"] / report["ours"]["in_process_seconds_median"]
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"steady-state submission, median of {args.repeat}, fresh process each (fake Azure ML on loopback)"
        )
        print(f"{'path':<10}{'calls':>7}{'process s':>12}{'import+submit s':>18}  azureml imported")
        for name in ("ours", "sdk"):
            r = report[name]
            print(
                f"{name:<10}{r['calls']:>7}{r['process_seconds_median']:>12.3f}"
                f"{r['in_process_seconds_median']:>18.3f}  {r['azureml_imported']}"
            )
        print(
            f"speed-up: {report['speedup_process']:.1f}x (whole process), "
            f"{report['speedup_in_process']:.1f}x (imports + submit)"
        )
        print("ours:", ", ".join(report["ours"]["calls_by_path"]))
        print("sdk: ", ", ".join(report["sdk"]["calls_by_path"]))
    ok = report["ours"]["calls"] <= 3 and report["speedup_process"] >= 3
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
