"""Run by tests/test_sdk_sandbox.py in a fresh interpreter: publish the project's pipeline against the fakes while
an audit hook refuses every write outside the publish's private folder, then print what happened as JSON.

`python -m tests.sdk_sandbox_child [--preimport]` with TMPDIR an empty folder (where the private folders go)
and HOME a folder no write may reach. `--preimport` imports the SDK before the hook, with that HOME, as a
process that used the SDK earlier would have (the discovery cache's path is then already computed from it).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from pathlib import Path

sys.dont_write_bytecode = True  # the interpreter's own .pyc writes are not the SDK's

from emulator.aml import FakeAzureML  # noqa: E402
from emulator.identity import FakeManagedIdentity  # noqa: E402
from pipeline_def.azureml.definition import PRIVATE_FOLDER_PREFIX, publish_pipeline  # noqa: E402
from pipeline_def.settings import load_settings  # noqa: E402

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
# audit event -> (index of the path written, index of its dir_fd or None), for each path the event writes
_WRITE_EVENTS: dict[str, tuple[tuple[int, int | None], ...]] = {
    "os.mkdir": ((0, 2),),
    "os.rmdir": ((0, 1),),
    "os.remove": ((0, 1),),
    "os.rename": ((0, 2), (1, 3)),
    "os.link": ((1, 3),),
    "os.symlink": ((1, 2),),
    "os.truncate": ((0, None),),
    "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),),
    "os.utime": ((0, 3),),
    "os.mkfifo": ((0, 2),),
    "os.mknod": ((0, 3),),
    "os.setxattr": ((0, None),),
    "os.removexattr": ((0, None),),
    "shutil.rmtree": ((0, 1),),
    "shutil.copyfile": ((1, None),),
    "shutil.copytree": ((1, None),),
    "shutil.move": ((0, None), (1, None)),
    "tempfile.mkstemp": ((0, None),),
    "tempfile.mkdtemp": ((0, None),),
}


def _resolve(path: object, dir_fd: object) -> str:
    """An absolute path for an audited path argument: an open file descriptor, or a path relative to dir_fd
    (how shutil.rmtree removes what is inside a folder) or to the working directory."""
    if isinstance(path, int):
        return os.readlink(f"/proc/self/fd/{path}")
    path = os.fsdecode(path)
    if isinstance(dir_fd, int) and not os.path.isabs(path):
        return os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
    return os.path.abspath(path)


def written_paths(event: str, args: tuple) -> list[str]:
    """The paths an audit event writes (creates, changes or removes), [] for anything else."""
    if event == "open":
        path, mode, flags = args
        if path is None or isinstance(path, int):
            return []
        writes = (mode is not None and any(c in mode for c in "wax+")) or bool(flags & _WRITE_FLAGS)
        return [_resolve(path, None)] if writes else []
    return [
        _resolve(args[i], args[fd] if fd is not None else None)
        for i, fd in _WRITE_EVENTS.get(event, ())
        if i < len(args)
    ]


class WriteGuard:
    """An audit hook that lets a write through only inside a private folder of the publish
    (TMPDIR/azureml-sdk-*) and refuses (PermissionError) and records every other one."""

    def __init__(self, sandbox: Path) -> None:
        self.sandbox = str(sandbox)
        self.allowed: list[str] = []
        self.refused: list[list[str]] = []
        self.active = True

    def is_private(self, path: str) -> bool:
        relative = os.path.relpath(path, self.sandbox)
        return not relative.startswith("..") and relative.split(os.sep)[0].startswith(PRIVATE_FOLDER_PREFIX)

    def __call__(self, event: str, args: tuple) -> None:
        if not self.active:
            return
        for path in written_paths(event, args):
            if path == os.devnull:  # a subprocess's stdin/stdout (platform.uname), not a file
                continue
            if self.is_private(path):
                self.allowed.append(path)
            else:
                self.refused.append([event, path])
                raise PermissionError(f"sandbox refuses {event} on {path}")


def main() -> None:
    sandbox = Path(tempfile.gettempdir())  # TMPDIR, resolved before any write is guarded
    home = Path(os.environ["HOME"])
    if "--preimport" in sys.argv:
        import azureml.core  # noqa: F401
        import azureml.pipeline.core  # noqa: F401

    with (
        FakeManagedIdentity() as identity,
        FakeAzureML(resource_group="rg-sandbox", workspace_name="ws-sandbox") as aml,
    ):
        os.environ.update(aml.app_settings(**identity.environ()))
        from azure.identity import DefaultAzureCredential

        settings = load_settings()
        credential = DefaultAzureCredential()
        before = set(os.listdir(sandbox))  # what the preimport left, not the publishes
        path_before = list(sys.path)
        guard = WriteGuard(sandbox)
        sys.addaudithook(guard)

        published: list[str] = []
        errors: list[str] = []

        def publish(fingerprint: str) -> None:
            try:
                published.append(publish_pipeline(settings, credential, fingerprint))
            except Exception as error:  # reported to the test, which fails on it
                errors.append(f"{fingerprint}: {type(error).__name__}: {error}")

        publish("fp-1")
        publish("fp-2")
        threads = [threading.Thread(target=publish, args=(f"fp-{n}",)) for n in (3, 4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        guard.active = False  # what follows is this script's bookkeeping
        result = {
            "published": published,
            "errors": errors,
            "fake_pipelines": sorted(aml.pipelines),
            "snapshots": len(aml.snapshots),
            "allowed": guard.allowed,
            "refused": guard.refused,
            "private_folders": sorted({os.path.relpath(p, sandbox).split(os.sep)[0] for p in guard.allowed}),
            "left_in_tmpdir": sorted(set(os.listdir(sandbox)) - before),
            "left_in_home": sorted(os.listdir(home)),
            "home_after": os.environ.get("HOME"),
            "tmpdir_after": os.environ.get("TMPDIR"),
            "tempfile_after": tempfile.gettempdir(),
            # the parallel predict's ParallelRunStep is built from pipeline-core's base classes, and its build
            # adds the step folder to sys.path: the package is never loaded, the path is put back
            "pipeline_steps_loaded": sorted(m for m in sys.modules if m.startswith("azureml.pipeline.steps")),
            "sys_path_changed": sys.path != path_before,
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
