"""The command-line contract the step scripts share: an argument parser, logging, and every failure turned
into one `error: ...` line on stderr followed by StepFailed (exit code 2)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

from batchpred_steps.errors import StepError, StepFailed, one_line

log = logging.getLogger("batchpred_steps")

T = TypeVar("T")


def step_parser(doc: str | None) -> argparse.ArgumentParser:
    """The argument parser of a step script, described by the first paragraph of its docstring."""
    return argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])


def configure_logging() -> None:
    """INFO to stderr; the Azure SDKs' per-request lines only from WARNING."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)


def run_step(body: Callable[[], T], *, io_failure: str, azure_failure: str = "an Azure call failed") -> T:
    """Run a step's `body` under the contract all steps share and return what it returns.

    Any failure prints one `error: ...` line and raises StepFailed with the same message: a StepError says
    its message; an OSError is `<io_failure>: ...`; an azure-core error is
    `<azure_failure>: <type>: <first line>`; anything else is `<type>: <message>`, its traceback logged first.
    A StepFailed from an inner run_step passes through unchanged.
    """
    configure_logging()
    try:
        return body()
    except StepFailed:
        raise
    except Exception as error:
        if not isinstance(error, StepError | OSError) and not _is_azure_error(error):
            log.exception("the step failed")
        fail(failure_message(error, io_failure=io_failure, azure_failure=azure_failure), error)


def failure_message(error: Exception, *, io_failure: str, azure_failure: str = "an Azure call failed") -> str:
    """What a step says about `error` (see run_step): a StepError its message, an OSError
    `<io_failure>: ...`, an azure-core error `<azure_failure>: <type>: <first line>`, else `<type>: <message>`."""
    if isinstance(error, StepError):
        return str(error)
    if isinstance(error, OSError):
        return f"{io_failure}: {error}"
    if _is_azure_error(error):
        first_line = next(iter(str(error).splitlines()), "")
        return f"{azure_failure}: {type(error).__name__}: {first_line}"
    return f"{type(error).__name__}: {error}"


def fail(message: str, cause: BaseException | None = None) -> NoReturn:
    """Print the step's `error: ...` line and leave with StepFailed(message)."""
    line = one_line(message)
    print(f"error: {line}", file=sys.stderr, flush=True)
    raise StepFailed(line) from cause


def _is_azure_error(error: Exception) -> bool:
    """Whether `error` is an azure-core error; a step that never loaded azure-core cannot have raised one."""
    exceptions = sys.modules.get("azure.core.exceptions")
    return exceptions is not None and isinstance(error, exceptions.AzureError)
