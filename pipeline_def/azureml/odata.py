"""The OData filters of run history's `runs:query`: which top-level pipeline runs a query asks for, written
with the very templates azureml-core's `_restclient/_odata` uses, so the live service has seen each piece."""

from __future__ import annotations

import re

# Run history's runType of a pipeline run (the SDK maps it to PipelineRun when it lists runs).
PIPELINE_RUN_TYPE = "azureml.PipelineRun"
# Run-history statuses of a run that has not ended.
ACTIVE_HISTORY_STATUSES = (
    "NotStarted",
    "Queued",
    "Preparing",
    "Provisioning",
    "Starting",
    "Running",
    "Finalizing",
    "CancelRequested",
    "NotResponding",
    "Pausing",
    "Paused",
    "Unapproved",
)
_ODATA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")


def runs_filter(
    *,
    pipeline_ids: tuple[str, ...] | list[str] = (),
    tags: dict[str, str] | None = None,
    any_of_tags: dict[str, str] | None = None,
    statuses: tuple[str, ...] | list[str] = (),
) -> str:
    """The filter for top-level pipeline runs:
    `(RunType eq azureml.PipelineRun or Properties/azureml.runsource eq azureml.PipelineRun)`,
    `(ParentRunId eq null)`, `(Properties/azureml.pipelineid eq "<id>")`, `(Tags/<k> eq "<v>")`,
    `(Status eq <status>)`. Pipeline ids are or-ed; `tags` are and-ed; a run matches `any_of_tags` or
    `statuses` when it has one of those tags or one of those statuses."""
    terms = [
        f"(RunType eq {PIPELINE_RUN_TYPE} or Properties/azureml.runsource eq {PIPELINE_RUN_TYPE})",
        "(ParentRunId eq null)",
    ]
    if pipeline_ids:
        terms.append(_or([f"(Properties/azureml.pipelineid eq {_quoted(p)})" for p in pipeline_ids]))
    for key, value in (tags or {}).items():
        terms.append(f"(Tags/{_key(key)} eq {_quoted(value)})")
    either = [f"(Tags/{_key(k)} eq {_quoted(v)})" for k, v in (any_of_tags or {}).items()]
    either += [f"(Status eq {_key(status)})" for status in statuses]
    if either:
        terms.append(_or(either))
    return "(" + " and ".join(terms) + ")"


def _or(terms: list[str]) -> str:
    return terms[0] if len(terms) == 1 else "(" + " or ".join(terms) + ")"


def _quoted(value: str) -> str:
    text = str(value)
    if '"' in text or "\\" in text:
        raise ValueError("a run query value cannot hold a double quote or a backslash")
    return f'"{text}"'


def _key(name: str) -> str:
    if not _ODATA_NAME.fullmatch(str(name)):
        raise ValueError(f"{name!r} cannot be named in a run query")
    return str(name)


__all__ = ["ACTIVE_HISTORY_STATUSES", "PIPELINE_RUN_TYPE", "runs_filter"]
