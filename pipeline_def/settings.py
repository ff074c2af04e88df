"""Settings of the app (app settings in Azure, environment variables locally), parsed and validated once,
as a whole: every bad setting is named in one ConfigError, and no value is ever echoed back."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from pipeline_def.cron import is_valid_schedule
from pipeline_def.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STEP_SCRIPTS_DIR = PROJECT_ROOT / "step_scripts"
DEFAULT_DATASET_PATH = PROJECT_ROOT / "data" / "ames_housing.csv.gz"
DEFAULT_WORK_DIR = PROJECT_ROOT / ".local"

DEFAULT_SCHEDULE = "0 30 1,13 * * *"
DEFAULT_ENDPOINT_NAME = "house-price-batch-predictions"
DEFAULT_SAMPLE_SIZE = 10
# The parallel predict (issue #13): a mini-batch is one Parquet part of fetch_data's output, whose target size
# is the mini-batch size (step_scripts/batchpred_steps/fetch.py, DEFAULT_PART_BYTES, is the same 16 MB).
DEFAULT_MINI_BATCH_SIZE = "16MB"
# Locally a mini-batch costs under 0.02 s, so parts are smaller: more of them share the workers out more
# evenly (1M rows over 2 workers: 1.54x one worker in 4 parts of 16 MB, 1.87x in 13 of 4 MB; docs/benchmarks.md).
DEFAULT_LOCAL_MINI_BATCH_SIZE = "4MB"
_BYTE_SIZE = re.compile(r"(\d+)\s*([kmg]?)b?", re.IGNORECASE)
BACKENDS = ("azureml", "azureml-v2", "local")
# The backends on an Azure ML workspace: SDK v1's services, and v2's ARM routes (plain REST).
AZUREML_BACKENDS = ("azureml", "azureml-v2")
DEFAULT_ARM_BASE = "https://management.azure.com"
# The default datastore every workspace is created with (where the predictions land on both Azure backends).
DEFAULT_DATASTORE = "workspaceblobstore"
# What both Azure ML backends cannot run without (AML_API_BASE may stand in for AML_REGION); the infrastructure
# in infra/ sets each of them as an app setting.
REQUIRED_FOR_AZUREML = (
    "AML_SUBSCRIPTION_ID",
    "AML_RESOURCE_GROUP",
    "AML_WORKSPACE_NAME",
    "AML_REGION",
    "AML_COMPUTE_NAME",
)
OVERLAP_POLICIES = ("skip", "allow")

_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Azure resource names that end up in URL paths: no '/', '?', '#', '%' or spaces.
_RESOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._()-]{0,89}")
_AML_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,254}")
_REGION = re.compile(r"[a-z0-9]{2,40}")


@dataclass(frozen=True)
class Settings:
    backend: str = "azureml"
    subscription_id: str = ""
    resource_group: str = ""
    workspace_name: str = ""
    region: str = ""
    api_base: str = ""
    arm_base: str = DEFAULT_ARM_BASE
    compute_name: str = ""
    dataset_name: str = "AmesHousing"
    model_name: str = "HousePrices"
    model_version: str = "latest"
    endpoint_name: str = DEFAULT_ENDPOINT_NAME
    experiment_name: str = DEFAULT_ENDPOINT_NAME
    schedule: str = DEFAULT_SCHEDULE
    overlap: str = "skip"
    sample_size: int = DEFAULT_SAMPLE_SIZE
    local_dataset_path: Path = DEFAULT_DATASET_PATH
    local_work_dir: Path = DEFAULT_WORK_DIR
    azure_client_id: str | None = None
    gate_range_margin: float = 0.5
    gate_drift_psi: float = 0.25
    gate_drift_min_rows: int = 300
    gate_missing_tolerance: float = 0.2
    request_timeout: float = 30.0
    retry_budget: float = 120.0
    http_budget: float = 25.0
    node_count: int = 1
    parallel_mini_batch_size: int = 16 * 1024 * 1024
    parallel_process_count_per_node: int = 2
    parallel_run_invocation_timeout: int = 300
    parallel_run_max_try: int = 3
    parallel_error_threshold: int = 0
    local_parallel_workers: int = 0  # 0: one a core (os.cpu_count())
    local_mini_batch_size: int = 4 * 1024 * 1024

    @property
    def arm_scope(self) -> str:
        """The token scope of the ARM base (AML_ARM_BASE): a sovereign cloud's, or the emulator's."""
        return f"{self.arm_base}/.default"

    @property
    def workspace_path(self) -> str:
        """The `{WS}` path segment of every Azure ML data-plane URL."""
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{self.workspace_name}"
        )

    @property
    def parameter_defaults(self) -> dict[str, str]:
        """Pipeline parameter defaults as published (Azure ML parameter assignments are strings)."""
        return {
            "sample_size": str(self.sample_size),
            "model_version": self.model_version,
            "accept_drift": "false",
            "node_count": str(self.node_count),
        }

    @property
    def gate_values(self) -> dict[str, str]:
        """The quality gate's thresholds as save_predictions takes them (steps.BuildValue `gate_*`): fixed when
        the pipeline is built, so they are in the fingerprint (docs/quality-gate.md)."""
        return {
            "gate_range_margin": f"{self.gate_range_margin:g}",
            "gate_drift_psi": f"{self.gate_drift_psi:g}",
            "gate_drift_min_rows": str(self.gate_drift_min_rows),
            "gate_missing_tolerance": f"{self.gate_missing_tolerance:g}",
        }

    def portal_url(self, run_id: str) -> str:
        return f"https://ml.azure.com/runs/{run_id}?wsid={self.workspace_path}"

    def datastore_url(self, path: str, datastore: str = DEFAULT_DATASTORE) -> str:
        """Azure ML studio's browser of the workspace's default datastore at `path` (a folder such as
        `history/2026-01-02/<run_id>`, or a file), which a person opens with their own sign-in. The URL's
        shape is studio's, not a documented contract (docs/quality-gate.md, guesses)."""
        return (
            f"https://ml.azure.com/data/datastore/{datastore}/edit?wsid={self.workspace_path}"
            f"&activeFilePath={quote(path.strip('/'))}"
        )


class _Invalid(Exception):
    """A setting's value is malformed; the message says what it must be, never what it was."""


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in options:
            raise _Invalid(f"must be one of {', '.join(options)}")
        return raw.lower()

    return parse


def _schedule(raw: str) -> str:
    if not is_valid_schedule(raw):
        raise _Invalid("must be a six-field NCRONTAB expression such as '0 30 1,13 * * *'")
    return raw


def _aml_name(raw: str) -> str:
    if not _AML_NAME.fullmatch(raw):
        raise _Invalid("must be letters, digits, '-' or '_' (at most 255, starting alphanumeric)")
    return raw


def _model_version(raw: str) -> str:
    if raw.lower() == "latest":
        return "latest"
    if not (raw.isdigit() and int(raw) >= 1):
        raise _Invalid("must be a positive integer or 'latest'")
    return raw


def _whole_number(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if not raw.isdigit() or int(raw) < minimum:
            raise _Invalid(f"must be a whole number of at least {minimum}")
        return int(raw)

    return parse


def _whole_number_in(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        text = raw[1:] if raw.startswith("-") else raw
        if not (text.isascii() and text.isdigit()) or not low <= int(raw) <= high:
            raise _Invalid(f"must be a whole number from {low} to {high}")
        return int(raw)

    return parse


def _byte_size(raw: str) -> int:
    """Bytes as Azure ML's parallel run takes them: a number with an optional KB, MB or GB (powers of 1024)."""
    match = _BYTE_SIZE.fullmatch(raw)
    size = int(match.group(1)) * 1024 ** " kmg".index(match.group(2).lower() or " ") if match else 0
    if not 64 * 1024 <= size <= 2 * 1024**3:
        raise _Invalid("must be a size such as 16MB, from 64KB to 2GB")
    return size


def _number(low: float, high: float, what: str = "a number") -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not low <= value <= high:
            raise _Invalid(f"must be {what} from {low:g} to {high:g}")
        return value

    return parse


def _seconds(low: float, high: float) -> Callable[[str], float]:
    return _number(low, high, "a number of seconds")


def _guid(value: str) -> None:
    if not _GUID.fullmatch(value):
        raise _Invalid("must be a GUID")


def _resource_name(value: str) -> None:
    if not _RESOURCE_NAME.fullmatch(value):
        raise _Invalid("is not a valid Azure resource name")


def _http_url(example: str) -> Callable[[str], None]:
    def check(value: str) -> None:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise _Invalid(f"must be an http(s) URL such as {example}")

    return check


def _path(raw: str) -> Path:
    return Path(raw).expanduser().resolve()


def _dataset_file(path: Path) -> None:
    if not path.is_file():
        raise _Invalid("does not name an existing file")
    if not path.name.lower().endswith((".csv", ".csv.gz", ".parquet", ".pq")):
        raise _Invalid("must be a .csv, .csv.gz or .parquet file")


@dataclass(frozen=True)
class _Setting:
    """One app setting: where it lands in Settings and how it is read.

    `parse` turns the text (stripped; `default` when empty) into the field's value, or raises _Invalid, for
    every backend. `check` and `required` apply only when the chosen backend is one of `backends`.
    """

    env: str
    field: str
    default: str = ""
    parse: Callable[[str], Any] = str
    check: Callable[[Any], None] | None = None
    required: bool = False
    backends: tuple[str, ...] = BACKENDS


_AZUREML = AZUREML_BACKENDS
_V2 = ("azureml-v2",)
_LOCAL = ("local",)

# In the order their problems are reported. Adding a setting is one line here and a field of Settings.
SETTINGS_TABLE: tuple[_Setting, ...] = (
    _Setting("PIPELINE_BACKEND", "backend", "azureml", _choice(BACKENDS)),
    _Setting("PIPELINE_OVERLAP", "overlap", "skip", _choice(OVERLAP_POLICIES)),
    _Setting("PIPELINE_SCHEDULE", "schedule", DEFAULT_SCHEDULE, _schedule),
    _Setting("PIPELINE_ENDPOINT_NAME", "endpoint_name", DEFAULT_ENDPOINT_NAME, _aml_name),
    _Setting("PIPELINE_EXPERIMENT_NAME", "experiment_name", DEFAULT_ENDPOINT_NAME, _aml_name),
    _Setting("AML_DATASET_NAME", "dataset_name", "AmesHousing", _aml_name),
    _Setting("AML_MODEL_NAME", "model_name", "HousePrices", _aml_name),
    _Setting("AML_MODEL_VERSION", "model_version", "latest", _model_version),
    _Setting("PIPELINE_SAMPLE_SIZE", "sample_size", str(DEFAULT_SAMPLE_SIZE), _whole_number(0)),
    _Setting("PIPELINE_NODE_COUNT", "node_count", "1", _whole_number_in(1, 100)),
    _Setting("PARALLEL_MINI_BATCH_SIZE", "parallel_mini_batch_size", DEFAULT_MINI_BATCH_SIZE, _byte_size),
    _Setting(
        "PARALLEL_PROCESS_COUNT_PER_NODE", "parallel_process_count_per_node", "2", _whole_number_in(1, 64)
    ),
    _Setting(
        "PARALLEL_RUN_INVOCATION_TIMEOUT",
        "parallel_run_invocation_timeout",
        "300",
        _whole_number_in(1, 86400),
    ),
    _Setting("PARALLEL_RUN_MAX_TRY", "parallel_run_max_try", "3", _whole_number_in(1, 100)),
    # Failed mini-batch items (part files) a run tolerates; -1: any number.
    _Setting("PARALLEL_ERROR_THRESHOLD", "parallel_error_threshold", "0", _whole_number_in(-1, 1_000_000)),
    # The quality gate before predictions replace the latest (docs/quality-gate.md gives each default's reason).
    _Setting("GATE_RANGE_MARGIN", "gate_range_margin", "0.5", _number(0.0, 100.0)),
    _Setting("GATE_DRIFT_PSI", "gate_drift_psi", "0.25", _number(0.0, 100.0)),
    _Setting("GATE_DRIFT_MIN_ROWS", "gate_drift_min_rows", "300", _whole_number(1)),
    _Setting("GATE_MISSING_TOLERANCE", "gate_missing_tolerance", "0.2", _number(0.0, 1.0)),
    _Setting("AML_REQUEST_TIMEOUT_SECONDS", "request_timeout", "30", _seconds(1.0, 230.0)),
    _Setting("AML_RETRY_BUDGET_SECONDS", "retry_budget", "120", _seconds(0.0, 230.0)),
    # Everything one HTTP request spends on Azure ML; under 30 s, so the answer leaves room for our own work.
    _Setting("AML_HTTP_BUDGET_SECONDS", "http_budget", "25", _seconds(1.0, 29.0)),
    _Setting("AML_SUBSCRIPTION_ID", "subscription_id", check=_guid, required=True, backends=_AZUREML),
    _Setting("AML_RESOURCE_GROUP", "resource_group", check=_resource_name, required=True, backends=_AZUREML),
    _Setting("AML_WORKSPACE_NAME", "workspace_name", check=_resource_name, required=True, backends=_AZUREML),
    _Setting("AML_COMPUTE_NAME", "compute_name", check=_resource_name, required=True, backends=_AZUREML),
    _Setting(
        "AML_API_BASE",
        "api_base",
        parse=lambda raw: raw.rstrip("/"),
        check=_http_url("https://westeurope.api.azureml.ms"),
        backends=_AZUREML,
    ),
    _Setting("AML_REGION", "region", parse=str.lower),  # checked with AML_API_BASE, in load_settings
    # v2's control plane (environments, components, jobs); its token scope is `{AML_ARM_BASE}/.default`.
    _Setting(
        "AML_ARM_BASE",
        "arm_base",
        DEFAULT_ARM_BASE,
        lambda raw: raw.rstrip("/"),
        _http_url(DEFAULT_ARM_BASE),
        backends=_V2,
    ),
    _Setting(
        "LOCAL_DATASET_PATH",
        "local_dataset_path",
        str(DEFAULT_DATASET_PATH),
        _path,
        _dataset_file,
        backends=_LOCAL,
    ),
    _Setting("LOCAL_WORK_DIR", "local_work_dir", str(DEFAULT_WORK_DIR), _path),
    # The local backend's pool for a parallel step; 0: one worker a core.
    _Setting("LOCAL_PARALLEL_WORKERS", "local_parallel_workers", "0", _whole_number_in(0, 256)),
    # The local backend's mini-batch (fetch_data's part) size; PARALLEL_MINI_BATCH_SIZE is Azure ML's.
    _Setting("LOCAL_MINI_BATCH_SIZE", "local_mini_batch_size", DEFAULT_LOCAL_MINI_BATCH_SIZE, _byte_size),
    _Setting("AZURE_CLIENT_ID", "azure_client_id", parse=lambda raw: raw or None),
)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read every setting from `environ` (default: os.environ) and validate them together."""
    env = os.environ if environ is None else environ
    problems: list[str] = []
    values: dict[str, Any] = {}
    for setting in SETTINGS_TABLE:
        raw = _text(env, setting.env) or setting.default
        try:
            values[setting.field] = value = setting.parse(raw)
            if values.get("backend") not in setting.backends:
                continue
            if setting.required and not value:
                problems.append(f"{setting.env} is required")
            elif setting.check is not None and value:
                setting.check(value)
        except _Invalid as invalid:
            problems.append(f"{setting.env} {invalid}")

    # The rules that join two settings.
    missing_subscription = "AML_SUBSCRIPTION_ID is required"
    if missing_subscription in problems and not _text(env, "PIPELINE_BACKEND"):
        problems[problems.index(missing_subscription)] += (
            " (or set PIPELINE_BACKEND=local to run without Azure)"
        )
    if values.get("backend") in AZUREML_BACKENDS and not values["api_base"]:
        region = values["region"]
        if not region:
            problems.append("AML_REGION is required unless AML_API_BASE is set")
        elif not _REGION.fullmatch(region):
            problems.append("AML_REGION must be an Azure region name such as westeurope")
        else:
            values["api_base"] = f"https://{region}.api.azureml.ms"

    if problems:
        raise ConfigError(problems)
    return Settings(**values)


def _text(env: Mapping[str, str], name: str) -> str:
    """The setting's text, stripped; empty when unset."""
    return (env.get(name) or "").strip()
