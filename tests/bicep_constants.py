"""Bicep's deploy-time-constant rule, checked on pycep's parse tree (no Bicep compiler runs here).

Some positions in a Bicep file need a value that is known when the deployment starts: the array of every `for`
expression (error BCP178), a resource's `if` condition (BCP177) and the `name` of a resource or module (BCP120).
The compiler follows variables into their declarations and flags any read of a resource's runtime state
(Bicep: src/Bicep.Core/TypeSystem/DeployTimeConstantValidator.cs and DeployTimeConstant*ViolationVisitor.cs).

The rule as checked here, on purpose a little stricter than the compiler:
- on a resource symbol (created or `existing`), only `id`, `name`, `type` and `apiVersion` are constants; anything
  else (`properties`, `identity`, the whole resource object) is a runtime value;
- on a module symbol, only `name` is a constant (its `outputs` are runtime values);
- `reference(...)` and every `list*(...)` call are runtime values;
- parameters, literals, loop variables and other functions are constants; a variable is what its value is.
pycep gives identifiers and string literals alike, so a string literal spelled like a resource symbol counts as
that symbol (a false alarm at worst), except for a bare word as a whole name, which can only be a literal;
`${...}` interpolations are parsed as expressions of their own."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from pycep import BicepParser

RESOURCE_CONSTANTS = frozenset({"id", "name", "type", "apiVersion"})
MODULE_CONSTANTS = frozenset({"name"})
RUNTIME_FUNCTIONS = frozenset({"reference", "list_func"})
INTERPOLATION = re.compile(r"\$\{((?:[^{}']|'[^']*'|\{[^{}]*\})*)\}")


@dataclass(frozen=True)
class Violation:
    where: str  # e.g. "resources.site ... for-expression"
    why: str  # the runtime read, e.g. "appInsights.properties"

    def __str__(self) -> str:
        return f"{self.where}: needs a deploy-time constant but reads {self.why}"


@functools.cache
def _parser() -> BicepParser:
    return BicepParser(cache=False)


@functools.cache
def _parse_cached(text: str) -> Any:
    return _parser().parse(text=text)


def _parse(text: str) -> dict[str, Any]:
    return _parse_cached(text)


class _Checker:
    def __init__(self, tree: dict[str, Any]) -> None:
        self.tree = tree
        self.resources = set(tree.get("resources") or {})
        self.modules = set(tree.get("modules") or {})
        self.variables = {name: var["value"] for name, var in (tree.get("variables") or {}).items()}
        self._variable_cache: dict[str, str | None] = {}

    # What runtime value (if any) an expression reads; None: it is a deploy-time constant.
    def runtime_read(self, expr: Any, visiting: frozenset[str] = frozenset()) -> str | None:
        if isinstance(expr, str):
            if "${" in expr:
                return self._interpolations(expr, visiting)
            return self._chain([expr], visiting)
        if isinstance(expr, list):
            return self._first(self.runtime_read(item, visiting) for item in expr)
        if not isinstance(expr, dict):
            return None  # numbers, booleans, null
        if "function" in expr:
            kind = expr["function"]["type"]
            params = expr["function"].get("parameters") or {}
            if kind in RUNTIME_FUNCTIONS or kind.startswith("list"):
                return f"{params.get('func_name') or kind}(...)"
            return self._first(self.runtime_read(value, visiting) for value in params.values())
        if "operator" in expr:
            operator = expr["operator"]
            if operator["type"] in ("property_accessor", "index_accessor"):
                return self._chain(self._segments(expr), visiting)
            return self._first(self.runtime_read(value, visiting) for value in operator["operands"].values())
        if "loop_type" in expr:
            # A nested loop: what it builds depends on its array (checked as a position of its own) and its body.
            return self._first(
                self.runtime_read(part, visiting)
                for part in (expr["loop_type"]["detail"]["array_name"], expr.get("config"))
            )
        return self._first(self.runtime_read(value, visiting) for value in expr.values())

    @staticmethod
    def _first(reads: Any) -> str | None:
        return next((read for read in reads if read), None)

    def _segments(self, expr: Any) -> list[Any]:
        """A property/index chain as a flat list: names (str), ("index", expr) pairs, or a non-chain root."""
        if isinstance(expr, dict) and "operator" in expr:
            operator = expr["operator"]
            operands = operator["operands"]
            if operator["type"] == "property_accessor":
                return self._segments(operands["operand_1"]) + self._segments(operands["operand_2"])
            if operator["type"] == "index_accessor":
                return self._segments(operands["operand_1"]) + [("index", operands["operand_2"])]
        return [expr]

    def _chain(self, segments: list[Any], visiting: frozenset[str]) -> str | None:
        root, rest = segments[0], segments[1:]
        indexes = [segment[1] for segment in rest if isinstance(segment, tuple)]
        if read := self._first(self.runtime_read(index, visiting) for index in indexes):
            return read
        members = [segment for segment in rest if isinstance(segment, str)]
        if not isinstance(root, str):
            return self.runtime_read(root, visiting)
        if root in self.resources or root in self.modules:
            allowed = RESOURCE_CONSTANTS if root in self.resources else MODULE_CONSTANTS
            if members and members[0] in allowed:
                return None
            return ".".join([root, *members[:1]])
        if root in self.variables:
            return self._variable(root, visiting)
        return None  # a parameter, a loop variable or a literal

    def _variable(self, name: str, visiting: frozenset[str]) -> str | None:
        if name in visiting:
            return None
        if name not in self._variable_cache:
            read = self.runtime_read(self.variables[name], visiting | {name})
            self._variable_cache[name] = f"{read} (through variable {name})" if read else None
        return self._variable_cache[name]

    def _interpolations(self, text: str, visiting: frozenset[str]) -> str | None:
        for inner in INTERPOLATION.findall(text):
            value = _parse(f"var interpolated = {inner}\n")["variables"]["interpolated"]["value"]
            if read := self.runtime_read(value, visiting):
                return read
        return None

    # The positions that need a deploy-time constant.
    def positions(self) -> list[tuple[str, Any]]:
        found: list[tuple[str, Any]] = []

        def walk(node: Any, path: str) -> None:
            if isinstance(node, dict):
                if "loop_type" in node:
                    found.append((f"{path} for-expression", node["loop_type"]["detail"]["array_name"]))
                for key, value in node.items():
                    walk(value, f"{path}.{key}")
            elif isinstance(node, list):
                for index, value in enumerate(node):
                    walk(value, f"{path}[{index}]")

        walk(self.tree, "")
        for kind in ("resources", "modules"):
            for symbol, declared in (self.tree.get(kind) or {}).items():
                config = declared.get("config") or {}
                if "loop_type" in config or "condition" in config:
                    if config.get("condition") is not None:
                        found.append((f"{kind}.{symbol} if-condition", config["condition"]))
                    config = config.get("config") or {}
                # A bare word as a name is a string literal: a resource or module object is no string.
                name = config.get("name")
                if name is not None and not (isinstance(name, str) and "${" not in name):
                    found.append((f"{kind}.{symbol} name", name))
        return found

    def violations(self) -> list[Violation]:
        return [
            Violation(where, read)
            for where, expr in self.positions()
            if (read := self.runtime_read(expr)) is not None
        ]


def deploy_time_violations(text: str) -> list[Violation]:
    """Every place in this Bicep source where a deploy-time constant is needed and a runtime value is read."""
    return _Checker(_parse(text)).violations()
