"""Benchmark of the pipeline at scale (issue #13): the three steps on generated Ames-like tables
(bench/bigdata.py), the predict run by the local parallel runtime as the local backend runs it.

    .venv/bin/python bench/scale.py [--rows 100000,1000000,10000000] [--speedup-rows 1000000]
        [--overhead-sizes 1MB,8MB,32MB] [--skip-steps] [--skip-speedup] [--skip-overhead]

- rows/s of the parallel predict at 1 and 2 workers on `--speedup-rows` rows (goal: 2 workers >= 1.7x one);
- peak RSS of the largest process of each step (fetch_data, the parallel predict with 2 workers,
  save_predictions) at each of `--rows` (goal: flat within 1.2x from 1M to 10M rows);
- the per-mini-batch overhead: one worker over the same rows cut into parts of each `--overhead-sizes`, the
  wall time fitted as a + b x mini-batches (b is the overhead);
- from those figures, a projection of 100M rows on 4 nodes x 4 processes.

The tables are generated once into .local/bench/ (reused); the runs write under .local/bench/runs/, replaced
each time. The load average is printed with each figure: the machine is shared. Results also go to
bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STEPS = PROJECT_ROOT / "step_scripts"
RUNTIME = PROJECT_ROOT / "pipeline_def" / "local" / "parallel.py"
BENCH_DIR = PROJECT_ROOT / ".local" / "bench"
RESULTS = PROJECT_ROOT / "bench" / "results" / "scale.json"
MIB = 1024 * 1024
DEFAULT_PART_BYTES = 16 * MIB
SPEEDUP_GOAL = 1.7
MEMORY_GOAL = 1.2


def load() -> float:
    return os.getloadavg()[0]


def measure(command: list[str], cwd: Path = STEPS, env: dict[str, str] | None = None) -> dict[str, float]:
    """Run `command` in a fresh intermediate process (with `env`, default this one's); wall seconds, and the
    peak RSS of the largest process of its tree (RUSAGE_CHILDREN of that intermediate: the step, or the
    runtime and its workers)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "_measure", "--", *command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds": time.perf_counter() - started, "peak_rss_mib": figures["peak_rss_mib"], "load": load()}


def _measure(command: list[str]) -> None:
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        sys.exit(done.returncode)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mib": round(peak, 1)}))


def dataset(rows: int, suffix: str = ".parquet") -> Path:
    """The generated table of `rows` rows in .local/bench/ (Parquet, or CSV for ".csv"), made once."""
    path = BENCH_DIR / f"ames-{rows}{suffix}"
    if not path.exists():
        bigdata = str(PROJECT_ROOT / "bench" / "bigdata.py")
        subprocess.run([sys.executable, bigdata, "--rows", str(rows), "--out", str(path)], check=True)
    return path


def model() -> Path:
    """The baseline model in .local/bench/work's registry (trained once)."""
    work = BENCH_DIR / "work"
    registry = work / "models" / "HousePrices"
    if not (registry / "1" / "model.joblib").is_file():
        env = {**os.environ, "PIPELINE_BACKEND": "local", "LOCAL_WORK_DIR": str(work)}
        subprocess.run(
            [sys.executable, "-m", "pipeline_def", "--backend", "local", "train"],
            cwd=PROJECT_ROOT,
            env=env,
            check=True,
        )
    return registry


def fetch(source: Path, out: Path, part_bytes: int = DEFAULT_PART_BYTES) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    return measure(
        [sys.executable, "fetch_data.py", "--dataset", str(source), "--sample-size", "0", "--seed", "1",
         "--output", str(out), "--part-bytes", str(part_bytes)]
    )  # fmt: skip


def predict(items: Path, out: Path, workers: int) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    return measure(
        [sys.executable, str(RUNTIME), "--entry-script", str(STEPS / "score_parallel.py"), "--items", str(items),
         "--workers", str(workers), "--timeout", "3600", "--", "--model", str(model()), "--predictions-dir", str(out)]
    )  # fmt: skip


def save(predictions: Path, destination: Path) -> dict[str, float]:
    shutil.rmtree(destination, ignore_errors=True)
    return measure(
        [sys.executable, "save_predictions.py", "--input", str(predictions), "--destination", str(destination),
         "--run-id", "bench"]
    )  # fmt: skip


def parts_of(folder: Path) -> int:
    return len(list(folder.glob("part-*.parquet")))


def report(label: str, figures: dict[str, float], rows: int) -> None:
    print(
        f"  {label:<34} {figures['seconds']:8.1f} s {rows / figures['seconds']:>10,.0f} rows/s "
        f"{figures['peak_rss_mib']:8.0f} MiB peak  (load {figures['load']:.2f})",
        flush=True,
    )


def bench_steps(sizes: list[int], results: dict) -> None:
    print("peak RSS of the largest process of each step (predict: 2 workers)")
    for rows in sizes:
        runs = BENCH_DIR / "runs" / str(rows)
        figures = {"fetch_data": fetch(dataset(rows), runs / "new_data")}
        report(f"{rows:>10,} fetch_data ({parts_of(runs / 'new_data')} parts)", figures["fetch_data"], rows)
        figures["predict"] = predict(runs / "new_data", runs / "predictions", workers=2)
        report(f"{rows:>10,} predict (2 workers)", figures["predict"], rows)
        figures["save_predictions"] = save(runs / "predictions", runs / "datastore")
        report(f"{rows:>10,} save_predictions", figures["save_predictions"], rows)
        results.setdefault("steps", {})[str(rows)] = figures
        shutil.rmtree(runs, ignore_errors=True)
    steps = results["steps"]
    if "1000000" in steps and "10000000" in steps:
        for step in ("fetch_data", "predict", "save_predictions"):
            ratio = steps["10000000"][step]["peak_rss_mib"] / steps["1000000"][step]["peak_rss_mib"]
            print(f"  {step}: peak at 10M / at 1M = {ratio:.2f}x (goal <= {MEMORY_GOAL}x)")


def bench_speedup(rows: int, sizes: list[str], repeat: int, results: dict) -> None:
    """1 and 2 workers over the same parts, for each part size (16 MB: 1M rows are only 4 parts); the fastest
    of `repeat` runs each (the machine is shared: a slower run measures the neighbours)."""
    runs = BENCH_DIR / "runs" / "speedup"
    results["speedup"] = {}
    for size in sizes:
        fetch(dataset(rows), runs / "new_data", int(size.upper().removesuffix("MB")) * MIB)
        parts = parts_of(runs / "new_data")
        print(f"parallel predict on {rows:,} rows in {parts} parts of {size}")
        figures = {}
        for workers in (1, 2):
            tries = [predict(runs / "new_data", runs / "predictions", workers) for _ in range(repeat)]
            figures[str(workers)] = min(tries, key=lambda figure: figure["seconds"])
            report(f"{workers} worker(s), fastest of {repeat}", figures[str(workers)], rows)
        speedup = figures["1"]["seconds"] / figures["2"]["seconds"]
        print(f"  2 workers: {speedup:.2f}x one (goal >= {SPEEDUP_GOAL}x)")
        results["speedup"][size] = {"rows": rows, "parts": parts, "runs": figures, "speedup": speedup}
    shutil.rmtree(runs, ignore_errors=True)


def bench_overhead(rows: int, sizes: list[str], results: dict) -> None:
    runs = BENCH_DIR / "runs" / "overhead"
    print(f"one worker over {rows:,} rows in mini-batches (parts) of each size")
    points = []
    for size in sizes:
        part_bytes = int(size.upper().removesuffix("MB")) * MIB
        fetch(dataset(rows), runs / "new_data", part_bytes)
        count = parts_of(runs / "new_data")
        figures = predict(runs / "new_data", runs / "predictions", workers=1)
        report(f"{size} parts: {count} mini-batches", figures, rows)
        points.append({"size": size, "mini_batches": count, **figures})
    n = [p["mini_batches"] for p in points]
    t = [p["seconds"] for p in points]
    mean_n, mean_t = sum(n) / len(n), sum(t) / len(t)
    slope = sum((a - mean_n) * (b - mean_t) for a, b in zip(n, t, strict=True)) / sum(
        (a - mean_n) ** 2 for a in n
    )
    fixed = mean_t - slope * mean_n
    print(f"  wall = {fixed:.1f} s + {slope:.3f} s x mini-batches")
    results["overhead"] = {"rows": rows, "points": points, "per_mini_batch_s": slope, "fixed_s": fixed}
    shutil.rmtree(runs, ignore_errors=True)


def project(results: dict) -> None:
    """100M rows on 4 nodes x 4 processes, from the measured figures (a projection, not a measurement)."""
    speedup, overhead, steps = results.get("speedup"), results.get("overhead"), results.get("steps", {})
    if not speedup or not overhead:
        return
    speedup = next(iter(speedup.values())) if "runs" not in speedup else speedup
    rows, processes = 100_000_000, 16
    one = speedup["rows"] / (
        speedup["runs"]["1"]["seconds"] if "1" in speedup["runs"] else speedup["runs"][1]["seconds"]
    )
    bytes_per_row = (BENCH_DIR / f"ames-{speedup['rows']}.parquet").stat().st_size / speedup["rows"]
    mini_batches = rows * bytes_per_row / DEFAULT_PART_BYTES
    compute = rows / one / processes
    per_batch = max(overhead["per_mini_batch_s"], 0.0) * mini_batches / processes
    largest = max(steps, key=int) if steps else None
    fetch_rate = int(largest) / steps[largest]["fetch_data"]["seconds"] if largest else None
    save_rate = int(largest) / steps[largest]["save_predictions"]["seconds"] if largest else None
    projection = {
        "rows": rows,
        "processes": processes,
        "rows_per_s_one_process": one,
        "mini_batches_16MB": mini_batches,
        "predict_compute_s": compute,
        "predict_overhead_s": per_batch,
        "fetch_s": rows / fetch_rate if fetch_rate else None,
        "save_s": rows / save_rate if save_rate else None,
    }
    results["projection_100M_4x4"] = projection
    print("PROJECTION (from the figures above, not measured): 100M rows on 4 nodes x 4 processes")
    print(f"  predict: {mini_batches:,.0f} mini-batches of 16 MB; {compute / 60:.1f} min compute + "
          f"{per_batch / 60:.1f} min mini-batch overhead per process")  # fmt: skip
    if fetch_rate and save_rate:
        print(f"  fetch_data (one process): {rows / fetch_rate / 60:.1f} min; "
              f"save_predictions (one process): {rows / save_rate / 60:.1f} min")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_measure"]:
        _measure(argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", default="100000,1000000,10000000")
    parser.add_argument("--speedup-rows", type=int, default=1_000_000)
    parser.add_argument("--speedup-sizes", default="16MB,4MB", help="part sizes of the speedup runs")
    parser.add_argument("--overhead-sizes", default="1MB,8MB,32MB")
    parser.add_argument("--repeat", type=int, default=2, help="speedup runs: the fastest of this many")
    parser.add_argument("--skip-steps", action="store_true")
    parser.add_argument("--skip-speedup", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args(argv)
    results: dict = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["cpus"] = os.cpu_count()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()}")
    if not args.skip_speedup:
        bench_speedup(args.speedup_rows, args.speedup_sizes.split(","), args.repeat, results)
    if not args.skip_overhead:
        bench_overhead(args.speedup_rows, args.overhead_sizes.split(","), results)
    if not args.skip_steps:
        bench_steps([int(r) for r in args.rows.split(",")], results)
    project(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
