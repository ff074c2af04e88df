"""The steps' code asset as azure-ai-ml 1.35.2 builds it from a local folder: which files it uploads (every file
under the folder, links followed, less what the folder's `.amlignore` or else `.gitignore` excludes) and the
content hash it registers them by (`hash_version` 202208, `_asset_utils.get_content_hash`), so an upload the
SDK or another publisher made is found again by its hash instead of being uploaded twice."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

HASH_VERSION = 202208
IGNORE_FILES = (".amlignore", ".gitignore")
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class CodeFile:
    path: Path  # on this machine
    name: str  # relative to the folder, POSIX: the blob name under the code asset's folder


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern[str]
    include: bool  # False for a negated (`!`) pattern


def ignore_patterns(folder: Path) -> list[_Pattern]:
    """The patterns of the folder's `.amlignore`, or else its `.gitignore` (none if it has neither)."""
    for name in IGNORE_FILES:
        path = folder / name
        if path.is_file():
            return [p for p in map(_compile, path.read_text().splitlines()) if p is not None]
    return []


def _compile(line: str) -> _Pattern | None:
    """One line of an ignore file as git's wildmatch reads it (the subset pathspec's GitWildMatchPattern
    implements for `*`, `?`, `**`, `[...]`, a leading `!` or `/` and a trailing `/`); None for a blank line or
    a comment."""
    pattern = line.rstrip()
    if not pattern or pattern.startswith("#"):
        return None
    include = True
    if pattern.startswith("!"):
        include, pattern = False, pattern[1:]
    if pattern.startswith("\\"):
        pattern = pattern[1:]
    directory_only = pattern.endswith("/")
    pattern = pattern.rstrip("/")
    anchored = "/" in pattern
    body = _glob(pattern.lstrip("/"))
    prefix = "^" if anchored else "^(?:.+/)?"
    suffix = "/.*$" if directory_only else "(?:/.*)?$"
    return _Pattern(re.compile(prefix + body + suffix, re.DOTALL), include)


def _glob(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            out.append("/.*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            inner = pattern[i + 1 : end]
            out.append("[" + ("^" + inner[1:] if inner.startswith("!") else inner) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def _excluded(name: str, patterns: list[_Pattern]) -> bool:
    """The last pattern that matches decides (a negation re-includes)."""
    excluded = False
    for pattern in patterns:
        if pattern.regex.match(name):
            excluded = pattern.include
    return excluded


def code_files(folder: Path) -> list[CodeFile]:
    """The files azure-ai-ml uploads for a code asset of `folder`, sorted by name."""
    folder = Path(folder).resolve()
    patterns = ignore_patterns(folder)
    found = []
    for root, _dirs, files in os.walk(folder, followlinks=True):
        for file_name in files:
            path = Path(root, file_name)
            name = path.relative_to(folder).as_posix()
            if not _excluded(name, patterns):
                found.append(CodeFile(path.resolve(), name))
    return sorted(found, key=lambda f: f.name)


def content_hash(files: list[CodeFile]) -> str:
    """azure-ai-ml's content hash (hash_version 202208) of a folder's files: the file count, then for each
    file, in the order of its lower-cased name, `#name#` and its size, then every file's bytes in that order."""
    ordered = sorted(files, key=lambda f: f.name.lower())
    digest = hashlib.sha256()
    digest.update(str(len(ordered)).encode())
    for file in ordered:
        digest.update(f"#{file.name}#".encode())
        digest.update(str(os.path.getsize(file.path)).encode())
    for file in ordered:
        with open(file.path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


__all__ = ["HASH_VERSION", "CodeFile", "code_files", "content_hash", "ignore_patterns"]
