"""Publishing inside a sandbox: the SDK's state lives in a private temporary folder for the call, so a publish
works when nothing outside that folder may be written, and leaves nothing behind (issue: a refused write
under $HOME/.azureml aborted the publish)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Each test publishes with the SDK in a fresh process under an audit hook.
pytestmark = pytest.mark.slow

pytest.importorskip("azureml.pipeline.core")

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("preimport", [False, True], ids=["first-import-in-publish", "sdk-imported-before"])
def test_publish_writes_only_inside_its_private_folder_and_removes_it(tmp_path: Path, preimport: bool):
    tmpdir, home = tmp_path / "tmp", tmp_path / "home"
    tmpdir.mkdir()
    home.mkdir()
    home.chmod(0o555)  # read-only for a non-root user; the audit hook refuses writes there for anyone
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AML_", "AZUREML_", "PIPELINE_", "AZURE_", "IDENTITY_", "MSI_"))
    }
    env.update({"HOME": str(home), "TMPDIR": str(tmpdir), "TEMP": str(tmpdir), "TMP": str(tmpdir)})
    command = [sys.executable, "-m", "tests.sdk_sandbox_child", *(["--preimport"] if preimport else [])]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip(), done.stderr[-3000:]
    result = json.loads(done.stdout)

    # four publishes (two in a row, two at once from two threads) all went through, none refused a write
    assert result["errors"] == []
    assert result["refused"] == []
    assert len(result["published"]) == 4
    assert sorted(result["published"]) == result["fake_pipelines"]
    # each wrote its caches (discovery, snapshot) in a folder of its own, which is gone afterwards
    assert len(result["private_folders"]) == 4
    assert any(path.endswith("/.azureml/.discovery") for path in result["allowed"])
    assert any("/.azureml/.projectcontent/" in path for path in result["allowed"])
    assert result["left_in_tmpdir"] == []
    assert result["left_in_home"] == []
    assert result["pipeline_steps_loaded"] == []  # the app publishes without azureml-pipeline-steps
    assert result["sys_path_changed"] is False
    # and the process's own HOME and temporary folder are back as they were
    assert result["home_after"] == str(home)
    assert result["tmpdir_after"] == result["tempfile_after"] == str(tmpdir)
