"""The README and the docs name nothing that does not exist: every backticked module, function or path of the
project, every `make` target, every `python -m` module and every relative link resolves. Names are checked by
reading the source (ast), never by importing it, so the check stays fast and needs no heavy package."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", ROOT / "emulator" / "README.md", *(ROOT / "docs").glob("*.md")])
README_MAX_LINES = 250

PACKAGES = ("pipeline_def", "emulator", "step_scripts", "tests")
# Backticked paths starting with one of these are paths of this repository and must exist.
TOP_FOLDERS = (*PACKAGES, "bench", "infra", "docs", "data", ".github", ".ci")
PLACEHOLDER = re.compile(r"[<>{}*$…]|\.\.\.|\[")

FENCE = re.compile(r"^(```|~~~).*?^\1[^\S\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
DOTTED = re.compile(rf"(?:{'|'.join(PACKAGES)})(?:\.[A-Za-z_]\w*)+")
MAKE = re.compile(r"(?:^|[\s;&|(])make\s+([a-z][\w-]*)")
PYTHON_M = re.compile(r"python(?:3(?:\.\d+)?)?\s+(?:-\w+\s+)*-m\s+([\w.]+)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def problems(text: str, where: Path) -> list[str]:
    """What `text` (a Markdown file at `where`) names that does not exist in the repository."""
    found: list[str] = []
    prose = FENCE.sub("", text)
    code = [m.group(0) for m in FENCE.finditer(text)] + CODE_SPAN.findall(prose)
    for span in CODE_SPAN.findall(prose):
        name = span.split("(", 1)[0].strip()
        if DOTTED.fullmatch(name) and not _name_exists(name):
            found.append(f"no such module or attribute: `{name}`")
        path = re.sub(r":\d+(-\d+)?$", "", span.strip())
        if _looks_like_repo_path(path) and not (ROOT / path).exists():
            found.append(f"no such file: `{path}`")
    targets = makefile_targets()
    for chunk in code:
        for target in MAKE.findall(chunk):
            if target not in targets:
                found.append(f"no such make target: make {target}")
    for module in PYTHON_M.findall(text):
        if module.split(".")[0] in PACKAGES and _module_file(module) is None:
            found.append(f"no such module to run: python -m {module}")
    for target in LINK.findall(prose):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # http:, https:, mailto:
        file_part, _, anchor = target.partition("#")
        linked = (where.parent / file_part).resolve() if file_part else where
        if not linked.exists():
            found.append(f"broken link: {target}")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked.read_text()):
            found.append(f"no such heading: {target}")
    return found


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([\w.-]+)\s*:(?!=)", (ROOT / "Makefile").read_text(), re.MULTILINE))


def _looks_like_repo_path(span: str) -> bool:
    if " " in span or PLACEHOLDER.search(span) or "/" not in span:
        return False
    return span.split("/", 1)[0] in TOP_FOLDERS


def _module_file(dotted: str) -> Path | None:
    base = ROOT.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py", base / "__main__.py"):
        if candidate.is_file():
            return candidate
    return None


def _name_exists(dotted: str) -> bool:
    """`pkg.mod` is a module, or `pkg.mod.name[.member...]` names something `pkg/mod.py` defines or imports;
    a member of that (a method, an attribute) must be defined somewhere in the same top-level package."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        source = _module_file(".".join(parts[:cut]))
        if source is None:
            continue
        rest = parts[cut:]
        if not rest:
            return True
        if rest[0] not in _top_level_names(source):
            return False
        return all(member in _package_names(parts[0]) for member in rest[1:])
    return False


@cache
def _top_level_names(source: Path) -> frozenset[str]:
    names: set[str] = set()
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return frozenset(names)


@cache
def _package_names(package: str) -> frozenset[str]:
    """Every function, class and attribute name defined anywhere in a top-level package."""
    names: set[str] = set()
    for source in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return frozenset(names)


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    slugs = set()
    for heading in HEADING.findall(FENCE.sub("", markdown)):
        text = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower())
        slugs.add(text.replace(" ", "-"))
    return slugs


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_docs_name_only_what_exists(doc: Path) -> None:
    assert problems(doc.read_text(), doc) == []


def test_the_readme_stays_a_front_door() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= README_MAX_LINES


def test_the_readme_indexes_every_page_of_the_docs() -> None:
    linked = set(LINK.findall((ROOT / "README.md").read_text()))
    pages = [f"docs/{page.name}" for page in sorted((ROOT / "docs").glob("*.md"))]
    assert [page for page in pages if page not in linked] == []


def test_the_check_reports_every_kind_of_name_that_does_not_exist() -> None:
    text = "\n".join(
        [
            "Modules `pipeline_def.no_such_module` and `emulator.aml.NoSuchClass`,",
            "a function `pipeline_def.settings.no_such_function()` and a method `tests.conftest.x.y`,",
            "files `bench/no_such.py`, `infra/no_such.bicep` and `docs/no-such.md`,",
            "a link [there](no-such-page.md) and one [to a heading](README.md#no-such-heading).",
            "```bash",
            "make no-such-target",
            "python -m emulator.no_such_tool",
            "```",
        ]
    )
    assert problems(text, ROOT / "README.md") == [
        "no such module or attribute: `pipeline_def.no_such_module`",
        "no such module or attribute: `emulator.aml.NoSuchClass`",
        "no such module or attribute: `pipeline_def.settings.no_such_function`",
        "no such module or attribute: `tests.conftest.x.y`",
        "no such file: `bench/no_such.py`",
        "no such file: `infra/no_such.bicep`",
        "no such file: `docs/no-such.md`",
        "no such make target: make no-such-target",
        "no such module to run: python -m emulator.no_such_tool",
        "broken link: no-such-page.md",
        "no such heading: README.md#no-such-heading",
    ]


def test_the_check_accepts_names_that_exist() -> None:
    text = "\n".join(
        [
            "`pipeline_def.app.timer`, `pipeline_def.app.timer.timer_schedule()`, `emulator.aml.FakeAzureML`,",
            "`emulator.aml.FakeAzureML.enable_execution(step_python=...)`, `tests.fixtures_fakes.aml_env`,",
            "`pipeline_def/azureml/backend.py`, `bench/history_growth.py`, `infra/main.bicep`, `docs/product.md`,",
            "`step_scripts/<step>.py` (a placeholder), `make demo`, [the brief](docs/product.md#who-uses-it-and-why).",
            "```bash",
            "make test; STEP_ENV_CACHE=$(mktemp -d) make demo-azureml",
            ".venv/bin/python -m emulator.aml --port 8765; python -m pytest -q",
            "```",
        ]
    )
    assert problems(text, ROOT / "README.md") == []
