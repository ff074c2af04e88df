"""The contract the three step scripts share (stepio): any failure is one `error: ...` line on stderr and exit
code 2, whatever raised it; `_metadata.json` is read one way."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures_local import load_step_module

stepio = load_step_module("stepio")


def fails_with(body, capsys: pytest.CaptureFixture[str], **context: str) -> str:
    code = stepio.run_step(body, io_failure="cannot write", **context)
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(error_lines) == 1
    return error_lines[0]


def raising(error: BaseException):
    def body() -> None:
        raise error

    return body


def test_a_step_that_returns_exits_0_and_says_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert stepio.run_step(lambda: None, io_failure="cannot write") == 0
    assert "error: " not in capsys.readouterr().err


def test_every_kind_of_failure_is_one_error_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    assert fails_with(raising(stepio.StepError("no rows\nat all")), capsys) == "error: no rows at all"
    assert fails_with(raising(PermissionError("denied")), capsys) == "error: cannot write: denied"
    azure = raising(ResourceNotFoundError("gone\nthe SDK's details"))
    assert (
        fails_with(azure, capsys, azure_failure="cannot upload")
        == "error: cannot upload: ResourceNotFoundError: gone"
    )
    assert fails_with(raising(ZeroDivisionError("oops")), capsys) == "error: ZeroDivisionError: oops"


def test_metadata_is_empty_when_missing_and_an_error_when_malformed(tmp_path: Path) -> None:
    assert stepio.read_metadata(tmp_path) == {}
    stepio.write_metadata(tmp_path, {"rows": 3})
    assert stepio.read_metadata(tmp_path) == {"rows": 3}
    (tmp_path / stepio.METADATA_FILE).write_text("{not json")
    with pytest.raises(stepio.StepError, match="cannot read"):
        stepio.read_metadata(tmp_path)
    (tmp_path / stepio.METADATA_FILE).write_text('"a string"')
    with pytest.raises(stepio.StepError, match="does not hold a JSON object"):
        stepio.read_metadata(tmp_path)


def test_the_prediction_column_is_named_once() -> None:
    predict, save = load_step_module("predict"), load_step_module("save_predictions")
    assert predict.PREDICTION_COLUMN is save.PREDICTION_COLUMN is stepio.PREDICTION_COLUMN
    assert "PREDICTION_COLUMN =" not in Path(predict.__file__).read_text() + Path(save.__file__).read_text()
