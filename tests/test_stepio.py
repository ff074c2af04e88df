"""The contract the three step scripts share (batchpred_steps.cli, .errors, .handoff): any failure is one
`error: ...` line on stderr and StepFailed carrying the same message (exit code 2, no traceback), whatever
raised it; `_metadata.json` is read one way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_def.settings import STEP_SCRIPTS_DIR
from tests.fixtures_local import load_step_module

cli = load_step_module("batchpred_steps.cli")
errors = load_step_module("batchpred_steps.errors")
handoff = load_step_module("batchpred_steps.handoff")


def fails_with(body, capsys: pytest.CaptureFixture[str], **context: str) -> str:
    with pytest.raises(errors.StepFailed) as failed:
        cli.run_step(body, io_failure="cannot write", **context)
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert failed.value.code == 2 and len(error_lines) == 1
    assert error_lines[0] == f"error: {failed.value}"  # the exception says what the line says
    return error_lines[0]


def raising(error: BaseException):
    def body() -> None:
        raise error

    return body


def test_a_step_that_returns_gives_back_its_value_and_says_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.run_step(lambda: 7, io_failure="cannot write") == 7
    assert "error: " not in capsys.readouterr().err


def test_every_kind_of_failure_is_one_error_line_and_step_failed(capsys: pytest.CaptureFixture[str]) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    assert fails_with(raising(errors.StepError("no rows\nat all")), capsys) == "error: no rows at all"
    assert fails_with(raising(PermissionError("denied")), capsys) == "error: cannot write: denied"
    azure = raising(ResourceNotFoundError("gone\nthe SDK's details"))
    assert (
        fails_with(azure, capsys, azure_failure="cannot upload")
        == "error: cannot upload: ResourceNotFoundError: gone"
    )
    assert fails_with(raising(ZeroDivisionError("oops")), capsys) == "error: ZeroDivisionError: oops"


def test_step_failed_is_what_azureml_core_names_and_quotes() -> None:
    # azureml-core's _error_details_to_dictionary: "User program failed with {type name}: {str(exception)}"
    failed = errors.StepFailed("model version 99 is not registered")

    assert isinstance(failed, SystemExit) and failed.code == 2
    assert (type(failed).__name__, str(failed)) == ("StepFailed", "model version 99 is not registered")


def test_a_failing_script_leaves_with_exit_code_2_its_error_line_and_no_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(STEP_SCRIPTS_DIR / "predict.py"), "--input", tmp_path / "missing",
         "--model", tmp_path, "--output", tmp_path / "out"],
        cwd=STEP_SCRIPTS_DIR, capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == f"error: input folder {str(tmp_path / 'missing')!r} does not exist"
    assert "Traceback" not in done.stderr


def test_metadata_is_empty_when_missing_and_an_error_when_malformed(tmp_path: Path) -> None:
    assert handoff.read_metadata(tmp_path) == {}
    handoff.write_metadata(tmp_path, {"rows": 3})
    assert handoff.read_metadata(tmp_path) == {"rows": 3}
    (tmp_path / handoff.METADATA_FILE).write_text("{not json")
    with pytest.raises(errors.StepError, match="cannot read"):
        handoff.read_metadata(tmp_path)
    (tmp_path / handoff.METADATA_FILE).write_text('"a string"')
    with pytest.raises(errors.StepError, match="does not hold a JSON object"):
        handoff.read_metadata(tmp_path)


def test_the_prediction_column_is_named_once() -> None:
    core = STEP_SCRIPTS_DIR / "batchpred_steps"
    defined = [p.name for p in [*core.glob("*.py"), *STEP_SCRIPTS_DIR.glob("*.py")]
               if "PREDICTION_COLUMN =" in p.read_text()]  # fmt: skip
    assert defined == ["handoff.py"]
