"""Size of the package the Functions host installs, and proof that the app runs from it alone, for both
installs: `v1` (requirements.txt as shipped) and `v2-only` (requirements.txt without its azureml lines, what a
PIPELINE_BACKEND=azureml-v2 deployment needs).

1. `pip install --target <tmp> -r <requirements>`, as a remote build does: disk use (as `du -sm`, MiB), files,
   and the biggest distributions (goal: at most 450 MB, half of the 901 MB the old requirements took).
2. A fresh interpreter with only that folder and the repository on sys.path (`-I -S`: no site-packages, no
   PYTHON* variables) imports function_app and builds the app's functions, then runs a timer tick against the
   emulated workspace started here. v1: it also imports pipeline_def.azureml.definition and builds the pipeline
   objects, and the tick publishes with the SDK from that folder and submits a run. v2-only: the tick registers
   the components over REST (the code asset uploaded to Azurite) and submits a job, and neither azureml nor
   azure.ai.ml is loaded. Every module it loaded must come from that folder, the repository or the stdlib.

Run from the project root: `.venv/bin/python bench/package_size.py [--variant v1|v2-only] [--requirements FILE]
[--keep DIR] [--json]`.
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
VARIANTS = ("v1", "v2-only")

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

# The v2-only folder: the app on Azure ML v2, no SDK at all.
CHILD_V2 = r"""
import json, os, sys, sysconfig
target, repo = sys.argv[1], sys.argv[2]
sys.path[:0] = [target, repo]
site_dirs = [p for p in sys.path if "site-packages" in p and not p.startswith(target)]

import function_app
app_functions = function_app.app.get_functions()
functions = sorted(f.get_function_name() for f in app_functions)
heavy = ("azureml", "pandas", "sklearn", "pyarrow", "numpy")
heavy_after_app_import = sorted(m for m in sys.modules if m.split(".")[0] in heavy)

from azure.functions.timer import TimerRequest

timer = next(f for f in app_functions if f.get_function_name() == "scheduled_run")
timer.get_user_function()(TimerRequest(past_due=False))

roots = [os.path.realpath(target), os.path.realpath(repo)]
roots += [os.path.realpath(sysconfig.get_paths()[key]) for key in ("stdlib", "platstdlib")]
loaded = {os.path.realpath(m.__file__) for m in list(sys.modules.values()) if getattr(m, "__file__", None)}
outside = sorted(p for p in loaded if not any(p.startswith(r + os.sep) for r in roots))
sdk = sorted(m for m in sys.modules if m.split(".")[0] == "azureml" or m.startswith("azure.ai.ml"))
print(json.dumps({
    "site_packages_on_path": site_dirs,
    "functions": functions,
    "heavy_after_app_import": heavy_after_app_import,
    "sdk_modules_after_tick": sdk,
    "built_steps": [],
    "modules_loaded": len(sys.modules),
    "modules_outside": outside,
}))
"""


def v2_only_requirements(requirements: Path, destination: Path) -> Path:
    """requirements.txt without its azureml lines (and their comments' effect is nil): the v2-only install."""
    kept = [line for line in requirements.read_text().splitlines() if not line.strip().startswith("azureml")]
    destination.write_text("\n".join(kept) + "\n")
    return destination


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


def run_from_folder(target: Path, variant: str = "v1") -> dict:
    """The app from `target` alone, in a fresh interpreter, against the emulated workspace started here (with
    Azurite for v2's code upload)."""
    from contextlib import ExitStack

    from emulator.aml import FakeAzureML
    from emulator.azurite import DEVSTORE_ACCOUNT, DEVSTORE_KEY, start_azurite, stop_azurite
    from emulator.identity import FakeManagedIdentity

    with ExitStack() as stack:
        identity = stack.enter_context(FakeManagedIdentity())
        aml = stack.enter_context(FakeAzureML(resource_group="rg-bench", workspace_name="ws-bench"))
        home = stack.enter_context(tempfile.TemporaryDirectory())
        backend = "azureml-v2" if variant == "v2-only" else "azureml"
        env = aml.app_settings(
            backend, PATH=os.environ.get("PATH", "/usr/bin:/bin"), HOME=home, **identity.environ()
        )
        child = CHILD
        if variant == "v2-only":
            blob, process = start_azurite(Path(home) / "azurite")
            stack.callback(stop_azurite, process)
            aml.use_blob_store(blob.url, DEVSTORE_ACCOUNT, DEVSTORE_KEY)
            data = Path(home) / "ames.csv"
            data.write_text("Order,PID\n1,10\n")
            aml.register_data_v2("AmesHousing", data)
            aml.register_model("HousePrices", {"model.joblib": b"m"})
            child = CHILD_V2
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-c", child, str(target), str(ROOT)],
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
        v2_components = aml.v2_assets["components"]
        result.update(
            {
                "seconds": round(elapsed, 2),
                "published_pipelines": len(aml.pipelines) if variant == "v1" else len(v2_components) and 1,
                "endpoints": len(aml.endpoints),
                "components_registered": sum(len(v) for v in v2_components.values()),
                "runs_submitted": len(aml.runs),
            }
        )
        return result


def measure(variant: str, requirements: Path, keep: Path | None, no_run: bool) -> dict:
    """Install `requirements` (the v2-only cut of it for `v2-only`) into a fresh folder, size it and, unless
    `no_run`, run the app from it."""
    scratch = tempfile.mkdtemp(prefix="package-size-")
    target = keep.resolve() if keep else Path(scratch) / "site-packages"
    try:
        if variant == "v2-only":
            requirements = v2_only_requirements(requirements, Path(scratch) / "requirements-v2-only.txt")
        install_s = install(requirements.resolve(), target)
        size = disk_use(target)
        report = {
            "variant": variant,
            "requirements": str(requirements),
            "install_s": round(install_s, 1),
            **size,
            "goal_mb": GOAL_MB,
            "size_goal_met": size["disk_mb"] <= GOAL_MB,
            "biggest": biggest_distributions(target),
        }
        if not no_run:
            run = run_from_folder(target, variant)
            report["run"] = run
            report["runs_from_folder_alone"] = (
                not run["site_packages_on_path"]
                and not run["modules_outside"]
                and not run["heavy_after_app_import"]
                and not run.get("sdk_modules_after_tick")
                and run["published_pipelines"] == 1
                and run["runs_submitted"] == 1
            )
        return report
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def print_report(report: dict) -> None:
    print(
        f"[{report['variant']}] pip install --target <tmp> -r {Path(report['requirements']).name}: "
        f"{report['install_s']} s"
    )
    print(
        f"  installed: {report['disk_mb']} MB on disk (du -sm), {report['apparent_mb']} MB apparent, "
        f"{report['files']:,} files (goal <= {GOAL_MB} MB: {'met' if report['size_goal_met'] else 'NOT met'})"
    )
    print("  biggest: " + ", ".join(f"{name} {mb} MB" for name, mb in report["biggest"]))
    if "run" in report:
        run = report["run"]
        what = (
            f"published {run['published_pipelines']} pipeline, made {run['endpoints']} endpoint"
            if report["variant"] == "v1"
            else f"registered {run['components_registered']} component versions, loaded "
            f"{len(run['sdk_modules_after_tick'])} azureml/azure.ai.ml modules"
        )
        print(
            f"  from that folder alone (-I -S, no site-packages), {run['seconds']} s: functions "
            f"{', '.join(run['functions'])}; a timer tick {what}, submitted {run['runs_submitted']} run; "
            f"{run['modules_loaded']} modules, {len(run['modules_outside'])} from outside the folder, the repo "
            "and the stdlib"
        )
        for path in run["modules_outside"][:10]:
            print(f"    outside: {path}")
        print(f"  runs from the folder alone: {'yes' if report['runs_from_folder_alone'] else 'NO'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS, help="one install only (default: both)")
    parser.add_argument("--requirements", type=Path, default=ROOT / "requirements.txt")
    parser.add_argument("--keep", type=Path, help="install into this (new) folder and keep it (one variant)")
    parser.add_argument(
        "--no-run", action="store_true", help="measure the size only (e.g. of old requirements)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    variants = [args.variant] if args.variant else list(VARIANTS)
    if args.keep:
        if len(variants) != 1:
            parser.error("--keep needs --variant")
        if args.keep.exists() and any(args.keep.iterdir()):
            parser.error(f"{args.keep} is not empty")

    reports = [measure(v, args.requirements, args.keep, args.no_run) for v in variants]
    if args.json:
        print(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
    else:
        for report in reports:
            print_report(report)
    ok = all(r["size_goal_met"] and r.get("runs_from_folder_alone", True) for r in reports)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
