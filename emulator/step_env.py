"""The steps' own virtual environment, built from step_scripts/requirements.txt as Azure ML builds theirs, and
cached by the hash of the requirements' bytes and the interpreter's version, so it is built once per change.

`python -m emulator.step_env [requirements file]` builds it when needed and prints its interpreter's path.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline_def.settings import STEP_SCRIPTS_DIR
from pipeline_def.steps import STEP_ENVIRONMENT

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REQUIREMENTS = STEP_SCRIPTS_DIR / STEP_ENVIRONMENT["requirements_file"]
DEFAULT_CACHE = REPO / ".local" / "step-envs"
# Written last into a built venv: its presence in a cache folder means the build finished.
MARKER = "step-env.json"
PIP_TAIL_LINES = 40
BUILD_TIMEOUT_SECONDS = 1800


class StepEnvError(RuntimeError):
    """The steps' environment could not be built (the message ends with the failing command's output)."""


def cache_dir() -> Path:
    return Path(os.environ.get("STEP_ENV_CACHE") or DEFAULT_CACHE)


def base_python(version: str = STEP_ENVIRONMENT["python_version"]) -> Path:
    """The machine's interpreter of the steps' Python version (Azure ML's image gets the same minor version)."""
    found = shutil.which(f"python{version}")
    if found is None:
        raise StepEnvError(f"python{version} is not on PATH; the steps' environment needs it")
    return Path(found)


def _full_version(python: Path) -> str:
    done = subprocess.run(
        [str(python), "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def env_key(requirements: bytes, python_version: str) -> str:
    """What a cached venv is keyed by: the requirements' bytes and the interpreter's full version."""
    digest = hashlib.sha256()
    digest.update(python_version.encode() + b"\0")
    digest.update(requirements)
    return digest.hexdigest()


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An flock on `lock_path`: one builder per key at a time, released even if the holder is killed."""
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
    )
    if done.returncode != 0:
        tail = "\n".join(done.stdout.splitlines()[-PIP_TAIL_LINES:])
        raise StepEnvError(f"{what} failed (exit {done.returncode}): {' '.join(command)}\n{tail}")


def _repoint_scripts(built_at: Path, venv: Path) -> None:
    """The venv is built in a temporary folder and then renamed: its scripts' shebangs, `activate` and
    pyvenv.cfg name the temporary path, so point them at the final one (the interpreter itself does not care)."""
    old, new = str(built_at).encode(), str(venv).encode()
    for script in [built_at / "pyvenv.cfg", *(built_at / "bin").iterdir()]:
        if script.is_symlink() or not script.is_file():
            continue
        content = script.read_bytes()
        if old in content:
            script.write_bytes(content.replace(old, new))


def _build(target: Path, python: Path, requirements_file: Path, prompt: str) -> None:
    _run([str(python), "-m", "venv", "--prompt", prompt, str(target)], "creating the venv")
    pip = [str(target / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "install", "--upgrade", "pip"], "upgrading pip")
    _run([*pip, "install", "-r", str(requirements_file)], f"pip install -r {requirements_file}")


def step_python(requirements_file: Path = DEFAULT_REQUIREMENTS, cache: Path | None = None) -> Path:
    """The interpreter of a venv holding exactly `requirements_file`, built on first use.

    The venv is built in a temporary folder beside the cache entry and renamed into place, under a file lock
    per key: a concurrent caller waits and then uses it, and a failed build raises StepEnvError (with pip's
    error tail) and leaves nothing in the cache."""
    requirements_file = Path(requirements_file).resolve()
    cache = Path(cache) if cache is not None else cache_dir()
    python = base_python()
    version = _full_version(python)
    requirements = requirements_file.read_bytes()
    key = env_key(requirements, version)
    name = f"py{version}-{key[:16]}"
    venv = cache / name
    interpreter = venv / "bin" / "python"
    if (venv / MARKER).is_file():
        return interpreter

    cache.mkdir(parents=True, exist_ok=True)
    with _exclusive(cache / f"{name}.lock"):
        if (venv / MARKER).is_file():  # another process built it while this one waited
            return interpreter
        # Left by a builder that was killed: nobody else builds this key while the lock is held.
        for stale in cache.glob(f".build-{name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if venv.exists():
            shutil.rmtree(venv)
        print(f"building the steps' venv from {requirements_file} into {venv}", file=sys.stderr)
        building = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=cache))
        started = time.monotonic()
        try:
            building.chmod(0o755)  # mkdtemp makes it private; the venv is for every user of the machine
            _build(building, python, requirements_file, prompt=name)
            _repoint_scripts(building, venv)
            marker = {
                "requirements_file": str(requirements_file),
                "requirements_sha256": hashlib.sha256(requirements).hexdigest(),
                "python_version": version,
                "base_python": str(python),
                "build_seconds": round(time.monotonic() - started, 1),
                "built_by_pid": os.getpid(),
            }
            (building / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
            os.rename(building, venv)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        print(f"built the steps' venv {venv} in {marker['build_seconds']} s", file=sys.stderr)
    return interpreter


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    requirements_file = Path(args[0]) if args else DEFAULT_REQUIREMENTS
    try:
        print(step_python(requirements_file))
    except StepEnvError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
