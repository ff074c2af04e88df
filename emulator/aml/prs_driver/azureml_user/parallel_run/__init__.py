"""`from azureml_user.parallel_run import EntryScript`, as the parallel-run runtime provides it to an entry
script: `logger`, `log_dir` (logs/user/entry_script_log/<node>/), `output_dir` (env AZUREML_BI_OUTPUT_PATH),
`agent_name` (processNNN). Emulated: the worker process (prs_worker.py) sets who it is before the entry
script's init() runs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

_STATE: dict[str, str] = {}


def _configure(node: str, agent_name: str, log_dir: str, level: str = "INFO") -> None:
    """Called by the emulated worker before it imports the entry script."""
    _STATE.update(node=node, agent_name=agent_name, log_dir=log_dir, level=level)


class EntryScript:
    """What the entry script may ask of the runtime about the process it runs in."""

    @property
    def agent_name(self) -> str:
        return _STATE.get("agent_name", "process000")

    @property
    def node_id(self) -> str:
        return _STATE.get("node", "0")

    @property
    def log_dir(self) -> str:
        folder = _STATE.get("log_dir") or os.path.join("logs", "user", "entry_script_log", self.node_id)
        Path(folder).mkdir(parents=True, exist_ok=True)
        return folder

    @property
    def working_dir(self) -> str:
        return os.getcwd()

    @property
    def output_dir(self) -> str:
        return os.environ.get("AZUREML_BI_OUTPUT_PATH", "")

    @property
    def logger(self) -> logging.Logger:
        logger = logging.getLogger(f"entry_script.{self.agent_name}")
        if not getattr(logger, "_emulated_handler", False):
            handler = logging.FileHandler(os.path.join(self.log_dir, f"{self.agent_name}.log.txt"))
            handler.setFormatter(logging.Formatter("%(asctime)s|%(levelname)s|%(message)s"))
            logger.addHandler(handler)
            logger.setLevel(_STATE.get("level", "INFO"))
            logger._emulated_handler = True  # type: ignore[attr-defined]
        return logger


__all__ = ["EntryScript"]
