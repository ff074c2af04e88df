"""How a step fails: StepError for what it reports in one line, StepFailed for leaving the process with it."""

from __future__ import annotations

# A failed step exits with this code (argparse uses it for bad usage too).
EXIT_FAILED = 2


class StepError(Exception):
    """A failure the step reports as one clear line (bad input, missing column, unreadable model)."""


class StepFailed(SystemExit):
    """The step failed; its message is the one `error: ...` line it printed.

    A SystemExit, so the interpreter leaves quietly with exit code 2 (no traceback after the error line),
    and one that carries the message: whatever runs the script sees the exception with its text. On Azure ML
    v1, azureml-core's RunStatusContext records any exception leaving the script, SystemExit included, as
    `User program failed with <type>: <str(exception)>`; a bare `sys.exit(2)` would read
    `User program failed with SystemExit: 2`, this reads `User program failed with StepFailed: <message>`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = EXIT_FAILED  # what the interpreter exits with; str(self) stays the message

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


def one_line(message: str) -> str:
    """`message` on one line: a log is read by its last `error:` line, and some SDK exceptions
    (WebserviceException) put their message on the lines after their first."""
    return " ".join(str(message).split())
