"""`python -m emulator.aml --port N`: run the fake Azure ML service alone (for manual curl tries)."""

from __future__ import annotations

import argparse
import json
import threading

from emulator.aml.server import FakeAzureML
from emulator.identity import make_token


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m emulator.aml", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    parser.add_argument("--subscription-id", default="00000000-0000-0000-0000-000000000001")
    parser.add_argument("--resource-group", default="rg-test")
    parser.add_argument("--workspace-name", default="ws-test")
    parser.add_argument(
        "--seed-endpoint",
        metavar="NAME",
        help="add a published pipeline and a pipeline endpoint of this name",
    )
    args = parser.parse_args(argv)
    fake = FakeAzureML(args.subscription_id, args.resource_group, args.workspace_name)
    fake.start(port=args.port)
    if args.seed_endpoint:
        pipeline = fake.add_published_pipeline(
            f"{args.seed_endpoint}-pipeline", "1", {"sample_size": "10", "model_version": "latest"}
        )
        endpoint = fake.add_endpoint(args.seed_endpoint, pipeline["Id"])
        print(json.dumps({"pipeline_id": pipeline["Id"], "endpoint_id": endpoint["Id"]}))
    print(fake.base_url, flush=True)
    print(f"workspace path: {fake.workspace_path}", flush=True)
    print(f"a token it accepts: {make_token('https://management.azure.com', 0)}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
