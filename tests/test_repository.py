"""The repository stands alone: no tracked file points at a folder outside it (a clone elsewhere has none)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A machine's work folder, a sibling checkout's shared folder, or a scratch path of this machine (spelt in
# pieces so that this file does not match itself).
OUTSIDE = re.compile("|".join(re.escape(p) for p in ("/" + "work/", ".." + "/shared", "/tmp" + "/bar")))
SKIPPED = {"package-lock.json"}


def _tracked_files() -> list[Path]:
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    return [ROOT / name for name in listing.split("\0") if name and Path(name).name not in SKIPPED]


def test_no_tracked_file_names_a_path_outside_the_repository() -> None:
    leaks = []
    for path in _tracked_files():
        if not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # binary data (the gzipped data set)
        leaks += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in OUTSIDE.finditer(text)]
    assert leaks == []


def test_the_wire_contract_the_fakes_follow_is_in_the_repository() -> None:
    assert (ROOT / "docs" / "aml-v1-rest.md").is_file()
    assert (ROOT / "docs" / "product.md").is_file()
