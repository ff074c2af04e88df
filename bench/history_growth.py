"""Benchmark: does a tick, or `GET /api/runs?limit=20`, cost more as the endpoint's run history grows?

For 10, 1,000 and 10,000 past runs seeded in the fake Azure ML service (runs of the endpoint's pipeline in the
app's experiment, every fifth one started over HTTP, the rest by the timer, all ended), count the Azure ML
calls and the response bytes of one steady-state tick (Service.tick) and of one listing of 20 runs
(Service.list_runs inside an HTTP request's budget), through the real client against the fake over HTTP.
Beside them, for comparison, the bytes of `GET PipelineRuns/Pipeline/{id}`, what the overlap check read
before (every run the pipeline ever had). Goal: at 10,000 runs within 1.1x of the figures at 10.

    .venv/bin/python bench/history_growth.py [--sizes 10 1000 10000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emulator.aml import FakeAzureML  # noqa: E402
from emulator.identity import FakeManagedIdentity  # noqa: E402

GOAL_RATIO = 1.1
LIST_LIMIT = 20


class CountingSession(requests.Session):
    """A requests session that counts the calls and response body bytes it carried to Azure ML."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.bytes = 0

    def request(self, *args, **kwargs):  # type: ignore[override]
        response = super().request(*args, **kwargs)
        self.calls += 1
        self.bytes += len(response.content)
        return response

    def reset(self) -> None:
        self.calls = self.bytes = 0


def seed(fake: FakeAzureML, pipeline_id: str, experiment: str, count: int) -> None:
    for index in range(count):
        trigger = "http" if index % 5 == 4 else "timer"
        fake.add_run(pipeline_id, experiment=experiment, status="Finished", tags={"trigger": trigger})


def measure(count: int, identity: FakeManagedIdentity) -> dict:
    from pipeline_def.azureml.backend import AzureMLBackend
    from pipeline_def.azureml.client import AzureMLClient
    from pipeline_def.budget import http_request_budget
    from pipeline_def.fingerprint import compute_fingerprint
    from pipeline_def.service import Service
    from pipeline_def.settings import load_settings

    with FakeAzureML() as fake:
        env = fake.app_settings(**identity.environ())
        settings = load_settings(env)
        pipeline = fake.add_published_pipeline(
            settings.endpoint_name,
            compute_fingerprint(settings),
            parameter_defaults=settings.parameter_defaults,
        )
        fake.add_endpoint(settings.endpoint_name, pipeline["Id"])
        seed(fake, pipeline["Id"], settings.experiment_name, count)

        session = CountingSession()
        client = AzureMLClient(settings, session=session)
        client.token()  # the token is fetched once per hour in steady state: not part of the figures
        old = session.get(
            f"{fake.pipelines_url}/PipelineRuns/Pipeline/{pipeline['Id']}",
            headers={"Authorization": f"Bearer {client.token()}"},
            timeout=60,
        )
        before_bytes = len(old.content)

        service = Service(settings, AzureMLBackend(settings, client=client))
        session.reset()
        with http_request_budget():
            listed = service.list_runs(LIST_LIMIT)
        listing = {"calls": session.calls, "bytes": session.bytes, "runs": len(listed)}

        session.reset()
        service = Service(settings, AzureMLBackend(settings, client=client))  # a tick starts fresh
        outcome = service.tick(scheduled_for="2026-01-01T01:30:00Z")
        if outcome.action != "submitted":
            raise SystemExit(f"the tick did not submit: {outcome}")
        tick = {"calls": session.calls, "bytes": session.bytes}
        return {"past_runs": count, "tick": tick, "list_20": listing, "before_bytes": before_bytes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 1000, 10000])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    os.environ["HOME"] = tempfile.mkdtemp(prefix="bench-home-")
    with FakeManagedIdentity() as identity:
        os.environ.update(identity.environ())  # DefaultAzureCredential reads the process environment
        rows = [measure(count, identity) for count in args.sizes]
    first, last = rows[0], rows[-1]
    ratios = {
        "tick_calls": last["tick"]["calls"] / first["tick"]["calls"],
        "tick_bytes": last["tick"]["bytes"] / first["tick"]["bytes"],
        "list_calls": last["list_20"]["calls"] / first["list_20"]["calls"],
        "list_bytes": last["list_20"]["bytes"] / first["list_20"]["bytes"],
    }
    result = {"rows": rows, "ratios_last_to_first": {k: round(v, 3) for k, v in ratios.items()}}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{'past runs':>10} | {'tick calls':>10} | {'tick bytes':>10} | {'list calls':>10} | "
        f"{'list bytes':>10} | {'listed':>6} | {'bytes/listed':>12} | {'before: GET PipelineRuns/Pipeline':>34}"
    )
    for row in rows:
        print(
            f"{row['past_runs']:>10,} | {row['tick']['calls']:>10} | {row['tick']['bytes']:>10,} | "
            f"{row['list_20']['calls']:>10} | {row['list_20']['bytes']:>10,} | {row['list_20']['runs']:>6} | "
            f"{row['list_20']['bytes'] // max(1, row['list_20']['runs']):>12,} | {row['before_bytes']:>34,}"
        )
    print(
        f"ratio {last['past_runs']:,} / {first['past_runs']:,}: "
        + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
        + f" (goal <= {GOAL_RATIO}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
