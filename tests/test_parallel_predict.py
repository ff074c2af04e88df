"""The parallel predict: the entry script's contract (step_scripts/score_parallel.py: init() once, run(mini_batch)
with part files or a DataFrame, deterministic output parts, a retry that overwrites) run in this process, and
the local parallel runtime (pipeline_def/local/parallel.py) that plays Azure ML's part with a process pool:
every row scored exactly once and as the single-process predict scores it, retries, time-outs and the error
threshold, a failure told in the entry script's own words."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest

from pipeline_def.settings import PROJECT_ROOT, STEP_SCRIPTS_DIR
from tests.fixtures_local import load_step_module, read_parts

RUNTIME = PROJECT_ROOT / "pipeline_def" / "local" / "parallel.py"
ENTRY_SCRIPT = STEP_SCRIPTS_DIR / "score_parallel.py"

score_parallel = load_step_module("score_parallel")
errors = load_step_module("batchpred_steps.errors")


@pytest.fixture(scope="module")
def parts(ames_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every shipped row, fetched into small Parquet parts (about 40 KB: 4 or more)."""
    out = tmp_path_factory.mktemp("fetched") / "new_data"
    done = subprocess.run(
        [sys.executable, "fetch_data.py", "--dataset", str(ames_csv), "--sample-size", "0", "--seed", "1",
         "--output", str(out), "--part-bytes", "40000"],
        cwd=STEP_SCRIPTS_DIR, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(list(out.glob("part-*.parquet"))) >= 3
    return out


@pytest.fixture(scope="module")
def single_process(
    parts: Path, trained_registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> pd.DataFrame:
    """What predict.py (one process) writes for the same parts."""
    out = tmp_path_factory.mktemp("single") / "predictions"
    done = subprocess.run(
        [sys.executable, "predict.py", "--input", str(parts), "--model", str(trained_registry / "HousePrices"),
         "--output", str(out)],
        cwd=STEP_SCRIPTS_DIR, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return read_parts(out)


@pytest.fixture
def entry(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """init() of the entry script with these arguments as sys.argv (and a runtime's own arguments too)."""

    def init(*arguments: str) -> None:
        monkeypatch.setattr(
            sys, "argv", ["score_parallel.py", "--mini_batch_size", "1", *map(str, arguments)]
        )
        score_parallel.init()

    yield init
    score_parallel._scorer = None


def runtime(
    items: Path,
    output: Path,
    *entry_arguments: str,
    workers: int = 2,
    script: Path = ENTRY_SCRIPT,
    **options: str,
) -> subprocess.CompletedProcess:
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in options.items()]
    return subprocess.run(
        [sys.executable, str(RUNTIME), "--entry-script", str(script), "--items", str(items),
         "--workers", str(workers), *flags, "--", *entry_arguments, "--predictions-dir", str(output)],
        cwd=STEP_SCRIPTS_DIR, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


# --- the entry script, in process ------------------------------------------------------------------------


def test_init_loads_the_model_once_and_run_writes_one_part_per_input_part(
    entry, parts: Path, trained_registry: Path, single_process: pd.DataFrame, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    files = sorted(parts.glob("part-*.parquet"))

    entry("--model", trained_registry / "HousePrices", "--model-version", "1", "--predictions-dir", tmp_path)
    first = score_parallel.run([str(files[0]), str(files[1])])
    rest = score_parallel.run([str(f) for f in files[2:]])

    import os

    assert os.environ["OMP_NUM_THREADS"] == "1"
    assert len(first) == 2 and len(rest) == len(files) - 2  # one entry per item
    assert sorted(p.name for p in tmp_path.glob("*.parquet")) == [f"part-{f.stem}.parquet" for f in files]
    scored = read_parts(tmp_path)
    pd.testing.assert_frame_equal(scored, single_process)
    metadata = json.loads((tmp_path / "_metadata.json").read_text())
    assert metadata["model_name"] == "HousePrices" and metadata["model_version"] == 1
    assert metadata["dataset_rows"] == 2930 and metadata["prediction_column"] == "PredictedSalePrice"


def test_a_retried_mini_batch_overwrites_its_part_and_the_metadata_is_written_once(
    entry, parts: Path, trained_registry: Path, tmp_path: Path
) -> None:
    part = str(sorted(parts.glob("part-*.parquet"))[0])
    entry("--model", trained_registry / "HousePrices", "--predictions-dir", tmp_path)
    score_parallel.run([part])
    before = (tmp_path / "part-part-00000.parquet").read_bytes()
    (tmp_path / "_metadata.json").write_text('{"written": "first"}')

    again = score_parallel.run([part])

    assert sorted(p.name for p in tmp_path.iterdir()) == ["_metadata.json", "part-part-00000.parquet"]
    assert (tmp_path / "part-part-00000.parquet").read_bytes() == before
    assert json.loads((tmp_path / "_metadata.json").read_text()) == {"written": "first"}
    assert again == [f"part-00000.parquet: {len(pd.read_parquet(part))} rows -> part-part-00000.parquet"]


def test_a_dataframe_mini_batch_is_named_by_its_content_and_counts_its_rows(
    entry, parts: Path, trained_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZUREML_BI_OUTPUT_PATH", str(tmp_path))  # no --predictions-dir: the runtime's folder
    rows = pd.read_parquet(sorted(parts.glob("part-*.parquet"))[0]).head(300)
    entry("--model", trained_registry / "HousePrices")

    returned = score_parallel.run(rows)
    again = score_parallel.run(rows.copy())
    other = score_parallel.run(rows.head(299))

    assert len(returned) == 300 and len(other) == 299
    assert returned[0] == again[0] != other[0]
    assert returned[0].startswith("part-") and returned[0].endswith(".parquet")
    assert len(pd.read_parquet(tmp_path / returned[0])) == 300
    assert len(list(tmp_path.glob("part-*.parquet"))) == 2


def test_other_files_of_the_items_folder_are_counted_but_not_scored(
    entry, parts: Path, trained_registry: Path, tmp_path: Path
) -> None:
    entry("--model", trained_registry / "HousePrices", "--predictions-dir", tmp_path)

    returned = score_parallel.run([str(parts / "_metadata.json")])

    assert returned == ["_metadata.json: skipped, not a Parquet part"]
    assert list(tmp_path.glob("*.parquet")) == []


def test_a_failure_is_a_step_error_with_the_steps_own_line(
    entry, parts: Path, trained_registry: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "in" / "part-00000.parquet"
    bad.parent.mkdir()
    pd.read_parquet(sorted(parts.glob("part-*.parquet"))[0]).drop(columns=["OverallQual"]).to_parquet(bad)
    entry("--model", trained_registry / "HousePrices", "--predictions-dir", tmp_path / "out")

    with pytest.raises(
        errors.StepError, match=r"^the input lacks 1 column\(s\) the model needs: OverallQual$"
    ):
        score_parallel.run([str(bad)])
    assert "error: the input lacks 1 column(s) the model needs: OverallQual" in capsys.readouterr().err
    assert not (tmp_path / "out" / "part-part-00000.parquet").exists()


def test_without_an_output_folder_or_with_a_missing_model_init_fails_clearly(
    entry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AZUREML_BI_OUTPUT_PATH", raising=False)
    with pytest.raises(
        errors.StepError, match="no output folder: give --predictions-dir or set AZUREML_BI_OUTPUT"
    ):
        entry("--model", tmp_path)
    # not a path: a v1 model name, which only aml_v1 can resolve, inside an Azure ML run
    with pytest.raises(errors.StepError, match="aml_v1.py runs only inside an Azure ML step run"):
        entry("--model", "HousePrices", "--predictions-dir", tmp_path)


# --- the local parallel runtime --------------------------------------------------------------------------


def test_two_workers_score_every_row_exactly_once_as_one_process_does(
    parts: Path, trained_registry: Path, single_process: pd.DataFrame, tmp_path: Path
) -> None:
    done = runtime(parts, tmp_path / "out", "--model", str(trained_registry / "HousePrices"), workers=2)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "over 2 worker process(es)" in done.stdout
    scored = read_parts(tmp_path / "out")
    assert len(scored) == 2930 and scored["Order"].is_unique
    pd.testing.assert_frame_equal(scored, single_process)
    assert (tmp_path / "out" / "_metadata.json").is_file()


FLAKY = """
    import os, sys, time
    from pathlib import Path

    def init():
        global out
        out = Path(sys.argv[sys.argv.index("--predictions-dir") + 1])
        out.mkdir(parents=True, exist_ok=True)
        if os.environ.get("FAIL_INIT"):
            raise RuntimeError("no model here")

    def run(mini_batch):
        name = Path(mini_batch[0]).name
        tries = out / (name + ".tries")
        tries.write_text(str(int(tries.read_text() or 0) + 1 if tries.exists() else 1))
        behaviour = os.environ.get(name, "")
        if behaviour == "always" or (behaviour == "once" and tries.read_text() == "1"):
            raise ValueError(f"{name} is broken")
        if behaviour == "slow-once" and tries.read_text() == "1":
            time.sleep(30)
        if behaviour == "die-once" and tries.read_text() == "1":
            os._exit(9)
        return [name]
"""


@pytest.fixture
def flaky(tmp_path: Path) -> tuple[Path, Path]:
    """An entry script told by the environment to fail (once or always), hang or die on a part; and 5 parts."""
    script = tmp_path / "flaky.py"
    script.write_text(textwrap.dedent(FLAKY))
    items = tmp_path / "items"
    items.mkdir()
    for index in range(5):
        (items / f"part-{index:05d}.parquet").write_bytes(b"")
    return script, items


def _tries(out: Path) -> dict[str, int]:
    return {p.name.removesuffix(".tries"): int(p.read_text()) for p in sorted(out.glob("*.tries"))}


def test_a_failing_a_hanging_and_a_dying_mini_batch_are_tried_again(
    flaky: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script, items = flaky
    monkeypatch.setenv("part-00001.parquet", "once")
    monkeypatch.setenv("part-00002.parquet", "slow-once")
    monkeypatch.setenv("part-00003.parquet", "die-once")

    done = runtime(items, tmp_path / "out", script=script, workers=2, timeout="2", max_try="3")

    assert done.returncode == 0, done.stdout + done.stderr
    assert _tries(tmp_path / "out") == {
        "part-00000.parquet": 1, "part-00001.parquet": 2, "part-00002.parquet": 2,
        "part-00003.parquet": 2, "part-00004.parquet": 1,
    }  # fmt: skip
    assert "part-00001.parquet: try 1 of 3 failed: ValueError: part-00001.parquet is broken" in done.stdout
    assert (
        "part-00002.parquet: try 1 of 3 failed: run() of part-00002.parquet timed out after 2 s"
        in done.stdout
    )
    assert "part-00003.parquet: try 1 of 3 failed: the worker process died (exit code 9)" in done.stdout


def test_a_mini_batch_failing_every_try_fails_the_step_with_the_entry_scripts_error(
    flaky: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script, items = flaky
    monkeypatch.setenv("part-00002.parquet", "always")

    done = runtime(items, tmp_path / "out", script=script, workers=2, max_try="2")

    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "error: ValueError: part-00002.parquet is broken"
    assert _tries(tmp_path / "out")["part-00002.parquet"] == 2


def test_failed_items_within_the_error_threshold_let_the_step_succeed(
    flaky: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script, items = flaky
    monkeypatch.setenv("part-00002.parquet", "always")

    tolerated = runtime(items, tmp_path / "a", script=script, workers=2, max_try="1", error_threshold="1")
    ignored = runtime(items, tmp_path / "b", script=script, workers=1, max_try="1", error_threshold="-1")

    assert tolerated.returncode == 0, tolerated.stderr
    assert "1 failed item(s) (threshold 1)" in tolerated.stdout
    assert ignored.returncode == 0, ignored.stderr


def test_an_init_failure_fails_the_step_at_once_with_its_line(
    flaky: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script, items = flaky
    monkeypatch.setenv("FAIL_INIT", "1")

    done = runtime(items, tmp_path / "out", script=script, workers=2)

    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "error: RuntimeError: no model here"
    assert _tries(tmp_path / "out") == {}


def test_an_items_folder_without_parts_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "items").mkdir()

    done = runtime(tmp_path / "items", tmp_path / "out", "--model", "x")

    assert done.returncode == 2
    assert done.stderr.strip().endswith("holds no .parquet file")
