"""How the emulated workspace starts a v1 step's script: `python v1_driver.py <script> <arguments>`, run with
the steps' interpreter in the step's job environment.

Azure ML v1 runs a step's script inside azureml-core's run context: RunStatusContext
(azureml/_run_impl/run_context_manager.py) records any exception leaving the script, SystemExit with a
non-zero code included, as the step run's error, through RunHistoryFacade.set_failed_status ->
_error_details_to_dictionary -> RunClient.post_event_error (`POST .../runs/{id}/events`). This driver executes
that very piece of the SDK around the script, so the error run history shows for a failed step is the one the
SDK makes (`User program failed with <type>: <message>`), not a guess of the emulator. What it leaves out of
the real runtime's wrapper (heartbeats, log upload, stream redirection) is listed in docs/emulated-azure.md.

Standard library and azureml-core only: it runs in the steps' venv, outside this repository's packages.
"""

from __future__ import annotations

import os
import runpy
import sys


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: v1_driver.py <script> [arguments...]")
    script = sys.argv[1]
    # As `python <script> <arguments>` would have it: argv[0] the script, its folder first on sys.path.
    sys.argv = [script, *sys.argv[2:]]
    sys.path[0] = os.path.dirname(os.path.abspath(script))

    from azureml._run_impl.run_context_manager import RunStatusContext
    from azureml.core import Run

    # inside a job this is the step run (a _SubmittedRun: the SDK records the error and leaves the status to
    # the service, which here is the emulated workspace's executor)
    run = Run.get_context(allow_offline=False, used_for_context_manager=True)
    with RunStatusContext(run):
        runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
