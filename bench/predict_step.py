"""Benchmark of the predict step: scores a large batch (the Ames rows repeated, SalePrice dropped) through
`step_scripts/predict.py` and through a bare `model.predict` on the whole frame, each in its own process,
and prints throughput and peak memory of both.

    .venv/bin/python bench/predict_step.py [--rows 1000000] [--batch-rows 20000,50000] [--repeat 2] [--threads 1]

Goal: the step streams at no less than 0.8x the bare throughput with at most half of its peak memory. The
script trains the baseline model into a temporary registry and removes everything it wrote at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# The parent stays small (standard library only): a child's peak RSS is then its own, not the parent's
# copy-on-write pages, and wait4() gives each child's figures separately.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
STEP_SCRIPTS = PROJECT_ROOT / "step_scripts"
PREDICT = STEP_SCRIPTS / "predict.py"
DATASET = PROJECT_ROOT / "data" / "ames_housing.csv.gz"
RESULTS = PROJECT_ROOT / "bench" / "results" / "predict_step.json"
THROUGHPUT_GOAL = 0.8
MEMORY_GOAL = 0.5


@dataclass
class Measure:
    label: str
    rows: int
    wall: float  # seconds, process start to exit: imports, model load, reading, scoring, writing
    cpu: float  # user + system seconds of the child
    peak_rss_mib: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.wall


def run_child(label: str, rows: int, command: list[str], env: dict[str, str]) -> Measure:
    started = time.perf_counter()
    child = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = child.stdout.read(), child.stderr.read()
    child.stdout.close()
    child.stderr.close()
    if child.returncode != 0:
        sys.exit(f"{label} failed ({child.returncode}):\n{stdout.decode()}\n{stderr.decode()}")
    return Measure(label, rows, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


# --- child modes (heavy imports only here) ---------------------------------------------------------------


def prepare(output: Path, rows: int, part_rows: int) -> None:
    """Write `rows` rows of Ames data (repeated, without SalePrice) as Parquet parts of `part_rows`."""
    import numpy as np
    import pandas as pd

    frame = pd.read_csv(DATASET).drop(columns=["SalePrice"])
    output.mkdir(parents=True, exist_ok=True)
    for index, start in enumerate(range(0, rows, part_rows)):
        positions = np.arange(start, min(start + part_rows, rows)) % len(frame)
        frame.iloc[positions].to_parquet(output / f"part-{index:05d}.parquet", index=False)


def bare(source: Path, model_path: Path) -> None:
    """The baseline to beat: load the whole input, one model.predict over every row."""
    import joblib
    import pandas as pd

    model = joblib.load(model_path)
    frame = pd.read_parquet(source)
    predictions = model.predict(frame[list(model.feature_names_in_)])
    print(json.dumps({"rows": len(predictions), "mean": float(predictions.mean())}))


# --- the benchmark ---------------------------------------------------------------------------------------


def default_batch_rows() -> int:
    sys.path.insert(0, str(STEP_SCRIPTS))
    from predict import (
        DEFAULT_BATCH_ROWS,  # standard library and batchpred_steps only: keeps the parent small
    )

    return DEFAULT_BATCH_ROWS


def benchmark(args: argparse.Namespace) -> int:
    python = sys.executable
    batch_sizes = [int(b) for b in args.batch_rows.split(",")] if args.batch_rows else [default_batch_rows()]
    work = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    try:
        env = {**os.environ, "PIPELINE_BACKEND": "local", "LOCAL_WORK_DIR": str(work), "PYTHONPATH": ""}
        env.pop("LOCAL_DATASET_PATH", None)
        # Both scorers get the same OpenMP thread count. On a shared machine one thread each keeps the figures
        # about the step, not about OpenMP threads spinning against other processes.
        scoring_env = {**env, "OMP_NUM_THREADS": str(args.threads)}
        print(f"training the baseline model into {work} ...", flush=True)
        trained = subprocess.run(
            [python, "-m", "pipeline_def", "--json", "train", "--seed", "42"],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        model = json.loads(trained.stdout)
        source = work / "input"
        print(f"writing {args.rows:,} rows as Parquet parts of {args.part_rows:,} rows ...", flush=True)
        subprocess.run(
            [python, __file__, "_prepare", str(source), str(args.rows), str(args.part_rows)], check=True
        )
        bare_runs: list[Measure] = []
        step_runs: dict[int, list[Measure]] = {size: [] for size in batch_sizes}
        for attempt in range(args.repeat):
            print(f"round {attempt + 1} of {args.repeat} ...", flush=True)
            bare_runs.append(
                run_child(
                    "bare model.predict (whole frame)",
                    args.rows,
                    [python, __file__, "_bare", str(source), str(Path(model["path"]) / "model.joblib")],
                    scoring_env,
                )
            )
            for size in batch_sizes:
                output = work / f"output-{size}"
                step_runs[size].append(
                    run_child(
                        f"predict step --batch-rows {size}",
                        args.rows,
                        [python, str(PREDICT), "--input", str(source), "--model", str(Path(model["path"]).parent),
                         "--output", str(output), "--batch-rows", str(size)],
                        scoring_env,
                    )
                )  # fmt: skip
                shutil.rmtree(output)
        return report(args, model, bare_runs, step_runs)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def best(runs: list[Measure]) -> Measure:
    """The fastest of the repeats (the machine is shared; slower runs measure the neighbours), with the
    highest peak memory seen."""
    fastest = min(runs, key=lambda m: m.wall)
    return Measure(fastest.label, fastest.rows, fastest.wall, fastest.cpu, max(m.peak_rss_mib for m in runs))


def report(
    args: argparse.Namespace, model: dict, bare_runs: list[Measure], step_runs: dict[int, list[Measure]]
) -> int:
    baseline = best(bare_runs)
    rows = [baseline, *(best(runs) for runs in step_runs.values())]
    print()
    print(
        f"predict benchmark: {args.rows:,} rows (Ames rows repeated, SalePrice dropped), input in Parquet parts"
        f" of {args.part_rows:,} rows; model {model['name']} v{model['version']} (holdout R²"
        f" {model['holdout_r2']:.3f}); {os.cpu_count()} CPUs, OMP_NUM_THREADS={args.threads}; best of {args.repeat}"
    )
    header = f"{'run':<36} {'wall s':>8} {'rows/s':>10} {'CPU s':>8} {'peak RSS MiB':>13} {'vs bare':>17}"
    print(header)
    print("-" * len(header))
    met = True
    results = []
    for measure in rows:
        ratio_speed = measure.rows_per_second / baseline.rows_per_second
        ratio_memory = measure.peak_rss_mib / baseline.peak_rss_mib
        versus = "" if measure is baseline else f"{ratio_speed:.2f}x / {ratio_memory:.2f}x"
        print(
            f"{measure.label:<36} {measure.wall:>8.1f} {measure.rows_per_second:>10,.0f} {measure.cpu:>8.1f}"
            f" {measure.peak_rss_mib:>13,.0f} {versus:>17}"
        )
        results.append({**measure.__dict__, "rows_per_second": measure.rows_per_second})
        if measure is not baseline:
            met = met and ratio_speed >= THROUGHPUT_GOAL and ratio_memory <= MEMORY_GOAL
    print(
        f"'vs bare' is throughput / peak memory relative to the bare run; goal: >= {THROUGHPUT_GOAL}x throughput"
        f" with <= {MEMORY_GOAL}x memory: {'met' if met else 'NOT met'}"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"rows": args.rows, "part_rows": args.part_rows, "runs": results}, indent=2)
    )
    return 0 if met else 1


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_prepare":
        prepare(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_bare":
        bare(Path(sys.argv[2]), Path(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to score (default 1,000,000)")
    parser.add_argument("--part-rows", type=int, default=100_000, help="rows per input Parquet part")
    parser.add_argument("--batch-rows", help="comma-separated --batch-rows values (default: the step's)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the fastest of each is reported")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of both scorers (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (model, input)")
    return benchmark(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
