"""Injected faults of the fake Azure ML service: which requests they hit and how many times."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any


@dataclass
class Fault:
    method: str | None  # None or "*": any method
    path_pattern: re.Pattern[str]
    status: int | None = None
    retry_after: float | int | str | None = None
    delay: float | None = None
    drop: bool = False
    times: int | None = 1  # None: every matching request until cleared
    body: Any = None
    after_handling: bool = False
    # The requests that take the fault meet here before they are handled and again before they are answered:
    # with `parties` concurrent requests, all are handled before any is answered.
    rendezvous: threading.Barrier | None = None
    body_contains: str | None = None  # only requests whose body holds this text (e.g. one query's filter)
    hits: int = 0

    def matches(self, method: str, path: str, body: bytes = b"") -> bool:
        if self.method not in (None, "*") and self.method.upper() != method.upper():
            return False
        if self.body_contains is not None and self.body_contains.encode() not in body:
            return False
        return self.path_pattern.search(path) is not None


class FaultBook:
    """Thread-safe list of pending faults; each request takes at most one (the first that matches)."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, method: str, path: str, body: bytes = b"") -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path, body):
                    fault.hits += 1
                    if fault.times is not None and fault.hits >= fault.times:
                        self._faults.remove(fault)
                    return fault
        return None

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def pending(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)


def compile_pattern(path_pattern: str | re.Pattern[str]) -> re.Pattern[str]:
    if isinstance(path_pattern, re.Pattern):
        return path_pattern
    return re.compile(path_pattern, re.IGNORECASE)
