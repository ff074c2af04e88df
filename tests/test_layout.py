"""The tree shows the architecture: every pipeline_def module imports only modules below it in LAYERS, so
there is no import circle and no backend reaches up into the service or the Functions layer that build it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "pipeline_def"

# Bottom first: a module may import only modules listed before it (function-level imports included).
LAYERS = [
    "pipeline_def.errors",
    "pipeline_def.azureml.history_run",
    "pipeline_def.runs",
    "pipeline_def.cron",
    "pipeline_def.budget",
    "pipeline_def.settings",
    "pipeline_def.steps",
    "pipeline_def.fingerprint",
    "pipeline_def.backend",
    "pipeline_def.azureml.odata",
    "pipeline_def.azureml.transport",
    "pipeline_def.azureml.run_history",
    "pipeline_def.azureml.client",
    "pipeline_def.azureml.definition",
    "pipeline_def.azureml.publisher",
    "pipeline_def.azureml.backend",
    "pipeline_def.azureml_v2.code",
    "pipeline_def.azureml_v2.components",
    "pipeline_def.azureml_v2.client",
    "pipeline_def.azureml_v2.publisher",
    "pipeline_def.azureml_v2.backend",
    "pipeline_def.local.model",
    "pipeline_def.local.parallel",
    "pipeline_def.local.commands",
    "pipeline_def.local.records",
    "pipeline_def.local.processes",
    "pipeline_def.local.runner",
    "pipeline_def.local.backend",
    "pipeline_def.service",
    "pipeline_def.app.http_api",
    "pipeline_def.app.timer",
    "pipeline_def.__main__",
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline_def"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in LAYERS else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pipeline_def"))
    return found


def test_every_module_is_placed_in_a_layer() -> None:
    modules = {_module_name(p) for p in ROOT.rglob("*.py") if p.name != "__init__.py"}
    assert modules == set(LAYERS)


def test_no_module_imports_upward() -> None:
    rank = {name: index for index, name in enumerate(LAYERS)}
    upward = []
    for path in ROOT.rglob("*.py"):
        if path.name == "__init__.py":
            continue
        name = _module_name(path)
        for imported in _imports(path):
            if imported in rank and rank[imported] >= rank[name]:
                upward.append(f"{name} imports {imported}")
    assert upward == []


# What ships (function_app.py, pipeline_def/, step_scripts/) stands alone: it never imports the emulated Azure or
# the tests, which .funcignore keeps out of the package; the emulator never imports the tests.
SHIPPED = [
    ROOT.parent / "function_app.py",
    *ROOT.rglob("*.py"),
    *(ROOT.parent / "step_scripts").rglob("*.py"),
]
EMULATOR = list((ROOT.parent / "emulator").rglob("*.py"))


def _top_level_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
    return found


def test_what_ships_never_imports_the_emulator_or_the_tests() -> None:
    reaching = [
        f"{path.relative_to(ROOT.parent)} imports {name}"
        for path in SHIPPED
        for name in _top_level_imports(path) & {"emulator", "tests"}
    ]
    assert reaching == []


def test_the_emulator_never_imports_the_tests() -> None:
    assert EMULATOR, "emulator/ has no modules"
    reaching = [str(p.relative_to(ROOT.parent)) for p in EMULATOR if "tests" in _top_level_imports(p)]
    assert reaching == []


# step_scripts/ is the steps' snapshot (v1) and code asset (v2): it never imports pipeline_def (not there), and
# only the v1 adapter touches Azure; the core and the three CLIs take paths and plain values.
STEP_SCRIPTS = ROOT.parent / "step_scripts"


def _all_imports(path: Path) -> set[str]:
    """Every module `path` imports, at any level (function-level imports included), as its top name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
    return found


def test_step_scripts_never_import_pipeline_def() -> None:
    reaching = [
        str(p.relative_to(ROOT.parent))
        for p in STEP_SCRIPTS.rglob("*.py")
        if "pipeline_def" in _all_imports(p)
    ]
    assert reaching == []


def test_only_the_v1_adapter_imports_azureml_or_azure() -> None:
    importing = sorted(
        str(p.relative_to(STEP_SCRIPTS))
        for p in STEP_SCRIPTS.rglob("*.py")
        if _all_imports(p) & {"azureml", "azure"}
    )
    assert importing == ["aml_v1.py"]
