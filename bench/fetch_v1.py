"""Benchmark of Azure ML v1's fetch_data at scale (issue #13): the peak memory of `aml_v1.py fetch_data` on a
registered tabular dataset of 100k, 1M and 10M generated rows (bench/bigdata.py, as CSV), in the emulated
workspace, as the step runs in a job: the real SDK and dataprep's Rust runtime in the steps' own venv write the
dataset as Parquet parts (`to_parquet_files().download()`), then fetch_data streams them into its parts.

    .venv/bin/python bench/fetch_v1.py [--rows 100000,1000000,10000000] [--sample-size 0]

Goal (issue #13): the peak at 10M rows within 1.2x of the peak at 1M. The CSVs are generated once into
.local/bench/ (reused; 10M rows is 3.4 GB); Azurite runs in memory, so it holds the largest CSV while it is
measured. Results go to bench/results/fetch_v1.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(PROJECT_ROOT / "bench"))  # scale.py's measure: the same peak-RSS measurement

import scale  # noqa: E402

from emulator.aml import FakeAzureML  # noqa: E402
from emulator.azurite import DEVSTORE_ACCOUNT, DEVSTORE_KEY, start_azurite, stop_azurite  # noqa: E402
from emulator.step_env import step_python  # noqa: E402

RESULTS = PROJECT_ROOT / "bench" / "results" / "fetch_v1.json"
MEMORY_GOAL = 1.2


def fetch_in_job(
    fake: FakeAzureML, python: Path, dataset: str, sample_size: int, work: Path, scripts: Path
) -> dict:
    """aml_v1.py fetch_data in a step run of its own, from a copy of `scripts` (as Azure ML runs a step from
    its snapshot); wall seconds and the peak RSS of the step's process tree (scale.py's `measure`)."""
    pipeline = fake.add_published_pipeline("bench-fetch", str(time.time_ns()))
    run = fake.add_run(pipeline["Id"], experiment="bench", status="Running")
    snapshot, home, out = work / "snapshot", work / "home", work / "fetched"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(scripts, snapshot, ignore=shutil.ignore_patterns("__pycache__", "logs"))
    home.mkdir(parents=True)
    environ = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "TMPDIR": str(work),
        **fake.job_environment(run.step("fetch_data").run_id),
    }
    command = [
        str(python), str(snapshot / "aml_v1.py"), "fetch_data", "--dataset", dataset,
        "--sample-size", str(sample_size), "--seed", "1", "--output", str(out),
    ]  # fmt: skip
    figures = scale.measure(command, cwd=snapshot, env=environ)
    metadata = json.loads((out / "_metadata.json").read_text())
    parts = scale.parts_of(out)
    shutil.rmtree(work, ignore_errors=True)
    return {**figures, "rows": metadata["rows"], "parts": parts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", default="100000,1000000,10000000")
    parser.add_argument("--sample-size", type=int, default=0, help="0: every row")
    parser.add_argument(
        "--step-scripts",
        type=Path,
        default=PROJECT_ROOT / "step_scripts",
        help="the step scripts to run (an older version's, to compare; default: step_scripts/)",
    )
    args = parser.parse_args(argv)
    sizes = [int(r) for r in args.rows.split(",")]
    python = step_python()
    results: dict = {"cpus": os.cpu_count(), "sample_size": args.sample_size, "rows": {}}
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()}; steps' python {python}")
    with tempfile.TemporaryDirectory(prefix="bench-fetch-v1-") as scratch:
        azurite, process = start_azurite(Path(scratch) / "azurite")
        try:
            with FakeAzureML(workspace_name="ws-bench") as fake:
                fake.use_blob_store(azurite.url, DEVSTORE_ACCOUNT, DEVSTORE_KEY)
                for rows in sizes:
                    source = scale.dataset(rows, ".csv")
                    name = f"AmesBench{rows}"
                    started = time.perf_counter()
                    fake.register_dataset(name, source)
                    uploaded = time.perf_counter() - started
                    figures = fetch_in_job(
                        fake, python, name, args.sample_size, Path(scratch) / "work", args.step_scripts
                    )
                    fake.blob_store.container_client().delete_blob(fake.datasets[name][-1].blob_path)
                    mib = source.stat().st_size / 2**20
                    print(
                        f"{rows:>11,} rows ({mib:,.0f} MiB CSV, uploaded in {uploaded:.0f} s): "
                        f"{figures['seconds']:6.1f} s, {figures['rows'] / figures['seconds']:9,.0f} rows/s, "
                        f"peak {figures['peak_rss_mib']:6.0f} MiB, {figures['parts']} part(s) "
                        f"(load {figures['load']:.2f})"
                    )
                    results["rows"][str(rows)] = {"csv_mib": mib, **figures}
        finally:
            stop_azurite(process)
    measured = results["rows"]
    if "1000000" in measured and "10000000" in measured:
        ratio = measured["10000000"]["peak_rss_mib"] / measured["1000000"]["peak_rss_mib"]
        results["peak_10M_over_1M"] = ratio
        print(f"  peak at 10M / at 1M = {ratio:.2f}x (goal <= {MEMORY_GOAL}x)")
    if args.step_scripts != PROJECT_ROOT / "step_scripts":
        return 0  # a comparison run: the results file keeps the current scripts' figures
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
