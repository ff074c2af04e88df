"""Size of the package the Functions host installs, and proof that the app runs from it alone.

1. `pip install --target <tmp> -r requirements.txt`, as a remote build does: disk use (as `du -sm`, MiB), files,
   and the biggest distributions (goal: at most 450 MB, half of the 901 MB the old requirements took).
2. A fresh interpreter with only that folder and the repository on sys.path (`-I -S`: no site-packages, no
   PYTHON* variables) imports function_app, builds the app's functions, imports pipeline_def.azureml.definition
   and builds the pipeline objects, then runs a timer tick against the fake Azure ML service started here: the
   tick publishes the pipeline with the SDK from that folder and submits a run. Every module it loaded must come
   from that folder, the repository or the standard library.

Run from the project root: `.venv/bin/python bench/package_size.py [--requirements FILE] [--keep DIR] [--json]`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GOAL_MB = 450
MIB = 1024 * 1024

# Runs in the fresh interpreter: argv[1] the installed folder, argv[2] the repository.
CHILD = r"""
import json, os, sys, sysconfig
target, repo = sys.argv[1], sys.argv[2]
sys.path[:0] = [target, repo]
site_dirs = [p for p in sys.path if "site-packages" in p and not p.startswith(target)]

import function_app
app_functions = function_app.app.get_functions()  # (may run once per app object)
functions = sorted(f.get_function_name() for f in app_functions)
heavy_after_app_import = sorted(m for m in sys.modules if m.split(".")[0] in ("azureml", "pandas", "sklearn"))

from azure.functions.timer import TimerRequest
from azure.identity import DefaultAzureCredential
from pipeline_def.azureml import definition
from pipeline_def.settings import load_settings

settings = load_settings()
with definition.private_sdk_state():
    workspace = definition.connect_workspace(settings, DefaultAzureCredential())
    pipeline = definition.build_pipeline(workspace, settings, "fp-bench")
built_steps = sorted(node.name for node in pipeline.graph.nodes)

timer = next(f for f in app_functions if f.get_function_name() == "scheduled_run")
timer.get_user_function()(TimerRequest(past_due=False))

roots = [os.path.realpath(target), os.path.realpath(repo)]
roots += [os.path.realpath(sysconfig.get_paths()[key]) for key in ("stdlib", "platstdlib")]
loaded = {os.path.realpath(m.__file__) for m in list(sys.modules.values()) if getattr(m, "__file__", None)}
outside = sorted(p for p in loaded if not any(p.startswith(r + os.sep) for r in roots))
print(json.dumps({
    "site_packages_on_path": site_dirs,
    "functions": functions,
    "heavy_after_app_import": heavy_after_app_import,
    "built_steps": built_steps,
    "azureml_from": os.path.dirname(sys.modules["azureml.core"].__file__),
    "modules_loaded": len(sys.modules),
    "modules_outside": outside,
}))
"""


def install(requirements: Path, target: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-input", "--target", str(target)]
        + ["-r", str(requirements)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"pip install failed:\n{done.stderr[-4000:]}")
    return time.perf_counter() - started


def disk_use(folder: Path) -> dict:
    """Disk use as `du` counts it (allocated blocks, each inode once), apparent size and regular files."""
    seen: set[tuple[int, int]] = set()
    blocks = apparent = files = 0
    for path in [folder, *folder.rglob("*")]:
        info = path.lstat()
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        blocks += info.st_blocks * 512
        apparent += info.st_size
        files += path.is_file() and not path.is_symlink()
    return {"disk_mb": math.ceil(blocks / MIB), "apparent_mb": round(apparent / MIB), "files": files}


def biggest_distributions(target: Path, count: int = 8) -> list[tuple[str, float]]:
    """The distributions taking most room, by the files their RECORD lists (pip lists the .pyc it compiles)."""
    sizes = []
    for record in target.glob("*.dist-info/RECORD"):
        paths = (target / line.split(",")[0] for line in record.read_text().splitlines() if line)
        total = sum(path.stat().st_size for path in paths if path.is_file())
        sizes.append((record.parent.name.removesuffix(".dist-info"), round(total / MIB, 1)))
    return sorted(sizes, key=lambda item: -item[1])[:count]


def run_from_folder(target: Path) -> dict:
    """The app from `target` alone, in a fresh interpreter, against the fakes started here."""
    from emulator.aml import FakeAzureML
    from emulator.identity import FakeManagedIdentity

    with (
        FakeManagedIdentity() as identity,
        FakeAzureML(resource_group="rg-bench", workspace_name="ws-bench") as aml,
        tempfile.TemporaryDirectory() as home,
    ):
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": home,
            "PIPELINE_BACKEND": "azureml",
            "AML_SUBSCRIPTION_ID": aml.subscription_id,
            "AML_RESOURCE_GROUP": aml.resource_group,
            "AML_WORKSPACE_NAME": aml.workspace_name,
            "AML_API_BASE": aml.base_url,
            "AML_COMPUTE_NAME": "cpu-cluster",
            **identity.environ(),
        }
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-c", CHILD, str(target), str(ROOT)],
            cwd=home,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"the app failed to run from {target}:\n{done.stderr[-4000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result.update(
            {
                "seconds": round(elapsed, 2),
                "published_pipelines": len(aml.pipelines),
                "endpoints": len(aml.endpoints),
                "runs_submitted": len(aml.runs),
            }
        )
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requirements", type=Path, default=ROOT / "requirements.txt")
    parser.add_argument("--keep", type=Path, help="install into this (new) folder and keep it")
    parser.add_argument(
        "--no-run", action="store_true", help="measure the size only (e.g. of old requirements)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    scratch = None
    if args.keep:
        target = args.keep.resolve()
        if target.exists() and any(target.iterdir()):
            parser.error(f"{target} is not empty")
    else:
        scratch = tempfile.mkdtemp(prefix="package-size-")
        target = Path(scratch) / "site-packages"
    try:
        install_s = install(args.requirements.resolve(), target)
        size = disk_use(target)
        report = {
            "requirements": str(args.requirements),
            "install_s": round(install_s, 1),
            **size,
            "goal_mb": GOAL_MB,
            "size_goal_met": size["disk_mb"] <= GOAL_MB,
            "biggest": biggest_distributions(target),
        }
        if not args.no_run:
            run = run_from_folder(target)
            report["run"] = run
            report["runs_from_folder_alone"] = (
                not run["site_packages_on_path"]
                and not run["modules_outside"]
                and not run["heavy_after_app_import"]
                and run["published_pipelines"] == 1
                and run["runs_submitted"] == 1
            )
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)

    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"pip install --target <tmp> -r {args.requirements.name}: {report['install_s']} s")
        print(
            f"  installed: {report['disk_mb']} MB on disk (du -sm), {report['apparent_mb']} MB apparent, "
            f"{report['files']:,} files (goal <= {GOAL_MB} MB: {'met' if report['size_goal_met'] else 'NOT met'})"
        )
        print("  biggest: " + ", ".join(f"{name} {mb} MB" for name, mb in report["biggest"]))
        if "run" in report:
            run = report["run"]
            print(
                f"from that folder alone (-I -S, no site-packages), {run['seconds']} s: functions "
                f"{', '.join(run['functions'])}; pipeline steps {', '.join(run['built_steps']) or '-'}; "
                f"a timer tick published {run['published_pipelines']} pipeline, made {run['endpoints']} endpoint, "
                f"submitted {run['runs_submitted']} run; {run['modules_loaded']} modules, "
                f"{len(run['modules_outside'])} from outside the folder, the repo and the stdlib"
            )
            for path in run["modules_outside"][:10]:
                print(f"    outside: {path}")
            print(f"  runs from the folder alone: {'yes' if report['runs_from_folder_alone'] else 'NO'}")
    ok = report["size_goal_met"] and report.get("runs_from_folder_alone", True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
