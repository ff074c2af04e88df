"""The OData filter and order-by subset run history's `runs:query` is asked with: what azureml-core's
`_restclient/_odata` builds (`(RunType eq azureml.PipelineRun or Properties/azureml.runsource eq ...)`,
`(Tags/k eq "v")`, `(Properties/k eq "v")`, `(Status eq Running)`, `(ParentRunId eq null)`,
`(CreatedUtc ge ...)`, `RunId eq x or RunId eq y`) joined with `and` / `or` and parentheses. Anything else
is a 400, so a filter the fake does not understand fails a test instead of matching every run."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from emulator.aml.wire import ServiceError

Predicate = Callable[[dict[str, Any]], bool]

_TOKEN = re.compile(r'\s*(?:(?P<open>\()|(?P<close>\))|"(?P<quoted>[^"]*)"|(?P<word>[^\s()"]+))')
_OPERATORS = ("eq", "ne", "gt", "ge", "lt", "le")
# OData field -> RunDto key (camelCase), for the top-level fields the SDK's filters name
_FIELDS = {
    "runid": "runId",
    "runtype": "runType",
    "status": "status",
    "parentrunid": "parentRunId",
    "createdutc": "createdUtc",
    "starttimeutc": "startTimeUtc",
    "endtimeutc": "endTimeUtc",
    "target": "target",
    "name": "name",
    "displayname": "displayName",
}


def parse_filter(text: str | None) -> Predicate:
    """A predicate over RunDto dicts; None or blank matches every run."""
    if text is None or not text.strip():
        return lambda dto: True
    tokens = _tokenize(text)
    predicate, rest = _parse_or(tokens)
    if rest:
        raise _bad(f"unexpected {rest[0][1]!r} in the filter")
    return predicate


def sort_key(orderby: str | None) -> tuple[Callable[[dict[str, Any]], Any], bool]:
    """(key, reverse) for `orderby` such as `CreatedUtc desc` (default: CreatedUtc desc)."""
    parts = (orderby or "CreatedUtc desc").split()
    if not parts or len(parts) > 2 or parts[0].lower() not in _FIELDS:
        raise _bad(f"cannot order by {orderby!r}")
    direction = parts[1].lower() if len(parts) == 2 else "asc"
    if direction not in ("asc", "desc"):
        raise _bad(f"cannot order by {orderby!r}")
    key = _FIELDS[parts[0].lower()]
    return (lambda dto: (dto.get(key) is not None, dto.get(key) or "")), direction == "desc"


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None:
            raise _bad(f"cannot read the filter at {text[position : position + 20]!r}")
        kind = match.lastgroup or "word"
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


def _parse_or(tokens: list[tuple[str, str]]) -> tuple[Predicate, list[tuple[str, str]]]:
    return _parse_joined(tokens, "or", _parse_and, any)


def _parse_and(tokens: list[tuple[str, str]]) -> tuple[Predicate, list[tuple[str, str]]]:
    return _parse_joined(tokens, "and", _parse_factor, all)


def _parse_joined(
    tokens: list[tuple[str, str]],
    word: str,
    parse_term: Callable[[list[tuple[str, str]]], tuple[Predicate, list[tuple[str, str]]]],
    combine: Callable[[Iterable[bool]], bool],
) -> tuple[Predicate, list[tuple[str, str]]]:
    """Terms of `parse_term` joined by `word` (`and` binds tighter than `or`), combined with `combine`."""
    left, tokens = parse_term(tokens)
    terms = [left]
    while tokens and tokens[0] == ("word", word):
        right, tokens = parse_term(tokens[1:])
        terms.append(right)
    if len(terms) == 1:
        return left, tokens
    return (lambda dto: combine(term(dto) for term in terms)), tokens


def _parse_factor(tokens: list[tuple[str, str]]) -> tuple[Predicate, list[tuple[str, str]]]:
    if not tokens:
        raise _bad("the filter ends too early")
    if tokens[0][0] == "open":
        inner, rest = _parse_or(tokens[1:])
        if not rest or rest[0][0] != "close":
            raise _bad("unbalanced parentheses in the filter")
        return inner, rest[1:]
    if len(tokens) < 3 or tokens[0][0] != "word" or tokens[1] not in [("word", op) for op in _OPERATORS]:
        raise _bad(f"expected '<field> <op> <value>' at {tokens[0][1]!r}")
    field, operator, (kind, raw) = tokens[0][1], tokens[1][1], tokens[2]
    if kind not in ("quoted", "word"):
        raise _bad(f"expected a value after {field} {operator}")
    value = None if (kind == "word" and raw == "null") else raw
    read = _reader(field)
    return _compare(read, operator, value), tokens[3:]


def _reader(field: str) -> Callable[[dict[str, Any]], Any]:
    head, _, rest = field.partition("/")
    if head.lower() in ("tags", "properties") and rest:
        bag = head.lower()
        return lambda dto: (dto.get(bag) or {}).get(rest)
    if rest or head.lower() not in _FIELDS:
        raise _bad(f"unknown field {field!r} in the filter")
    key = _FIELDS[head.lower()]
    return lambda dto: dto.get(key)


def _compare(read: Callable[[dict[str, Any]], Any], operator: str, value: str | None) -> Predicate:
    if operator == "eq":
        return lambda dto: read(dto) == value
    if operator == "ne":
        return lambda dto: read(dto) != value
    if value is None:
        raise _bad(f"'{operator} null' is not a comparison")

    def ordered(dto: dict[str, Any]) -> bool:
        found = read(dto)
        if found is None:
            return False
        # ISO 8601 UTC strings of one format order as text; what run history compares as dates
        return {"gt": found > value, "ge": found >= value, "lt": found < value, "le": found <= value}[
            operator
        ]

    return ordered


def _bad(message: str) -> ServiceError:
    return ServiceError(400, f"Invalid query: {message}.", "BadArgument")
