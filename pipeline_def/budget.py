"""How long an HTTP request may spend on Azure ML: the HTTP layer opens an `http_request_budget()` scope
around each answer, and the Azure ML client gives every call made inside it one shared deadline
(AML_HTTP_BUDGET_SECONDS from its first call, token included) and at most HTTP_MAX_ATTEMPTS attempts. Outside
a scope (the timer, the command line) the client keeps its longer AML_RETRY_BUDGET_SECONDS per call."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# Attempts of any one call (a submit included) while answering an HTTP request.
HTTP_MAX_ATTEMPTS = 4


@dataclass
class HttpRequestBudget:
    """The scope of one HTTP answer. `deadline` is set, on the client's own clock, by the first Azure ML call
    made in the scope; every later call in the scope shares it."""

    max_attempts: int = HTTP_MAX_ATTEMPTS
    deadline: float | None = None

    def deadline_from(self, now: Callable[[], float], seconds: float) -> float:
        if self.deadline is None:
            self.deadline = now() + seconds
        return self.deadline


_current: contextvars.ContextVar[HttpRequestBudget | None] = contextvars.ContextVar(
    "pipeline_def_http_request_budget", default=None
)


@contextmanager
def http_request_budget() -> Iterator[HttpRequestBudget]:
    """Answering an HTTP request: the Azure ML calls made inside share one bounded budget."""
    budget = HttpRequestBudget()
    token = _current.set(budget)
    try:
        yield budget
    finally:
        _current.reset(token)


def current_http_budget() -> HttpRequestBudget | None:
    """The budget of the HTTP request being answered in this context, or None outside one."""
    return _current.get()


__all__ = ["HTTP_MAX_ATTEMPTS", "HttpRequestBudget", "current_http_budget", "http_request_budget"]
