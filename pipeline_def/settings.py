"""Settings of the app (app settings in Azure, environment variables locally), parsed and validated once,
as a whole: every bad setting is named in one ConfigError, and no value is ever echoed back."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pipeline_def.cron import is_valid_schedule
from pipeline_def.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STEP_SCRIPTS_DIR = PROJECT_ROOT / "step_scripts"
DEFAULT_DATASET_PATH = PROJECT_ROOT / "data" / "ames_housing.csv.gz"
DEFAULT_WORK_DIR = PROJECT_ROOT / ".local"

DEFAULT_SCHEDULE = "0 30 1,13 * * *"
DEFAULT_ENDPOINT_NAME = "house-price-batch-predictions"
DEFAULT_SAMPLE_SIZE = 10
BACKENDS = ("azureml", "local")
# What the azureml backend cannot run without (AML_API_BASE may stand in for AML_REGION); the infrastructure
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
    request_timeout: float = 30.0
    retry_budget: float = 120.0
    http_budget: float = 25.0

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
        return {"sample_size": str(self.sample_size), "model_version": self.model_version}

    def portal_url(self, run_id: str) -> str:
        return f"https://ml.azure.com/runs/{run_id}?wsid={self.workspace_path}"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read every setting from `environ` (default: os.environ) and validate them together."""
    env = os.environ if environ is None else environ
    problems: list[str] = []

    def get(name: str, default: str = "") -> str:
        return (env.get(name) or "").strip() or default

    backend = get("PIPELINE_BACKEND", "azureml").lower()
    if backend not in BACKENDS:
        problems.append(f"PIPELINE_BACKEND must be one of {', '.join(BACKENDS)}")

    overlap = get("PIPELINE_OVERLAP", "skip").lower()
    if overlap not in OVERLAP_POLICIES:
        problems.append(f"PIPELINE_OVERLAP must be one of {', '.join(OVERLAP_POLICIES)}")

    schedule = get("PIPELINE_SCHEDULE", DEFAULT_SCHEDULE)
    if not is_valid_schedule(schedule):
        problems.append("PIPELINE_SCHEDULE must be a six-field NCRONTAB expression such as '0 30 1,13 * * *'")

    endpoint_name = get("PIPELINE_ENDPOINT_NAME", DEFAULT_ENDPOINT_NAME)
    experiment_name = get("PIPELINE_EXPERIMENT_NAME", DEFAULT_ENDPOINT_NAME)
    dataset_name = get("AML_DATASET_NAME", "AmesHousing")
    model_name = get("AML_MODEL_NAME", "HousePrices")
    for name, value in (
        ("PIPELINE_ENDPOINT_NAME", endpoint_name),
        ("PIPELINE_EXPERIMENT_NAME", experiment_name),
        ("AML_DATASET_NAME", dataset_name),
        ("AML_MODEL_NAME", model_name),
    ):
        if not _AML_NAME.fullmatch(value):
            problems.append(
                f"{name} must be letters, digits, '-' or '_' (at most 255, starting alphanumeric)"
            )

    model_version = get("AML_MODEL_VERSION", "latest")
    if model_version.lower() == "latest":
        model_version = "latest"
    elif not (model_version.isdigit() and int(model_version) >= 1):
        problems.append("AML_MODEL_VERSION must be a positive integer or 'latest'")

    sample_size = _int_setting(get, "PIPELINE_SAMPLE_SIZE", DEFAULT_SAMPLE_SIZE, 0, problems)
    request_timeout = _float_setting(get, "AML_REQUEST_TIMEOUT_SECONDS", 30.0, 1.0, 230.0, problems)
    retry_budget = _float_setting(get, "AML_RETRY_BUDGET_SECONDS", 120.0, 0.0, 230.0, problems)
    # Everything one HTTP request spends on Azure ML; under 30 s, so the answer leaves room for our own work.
    http_budget = _float_setting(get, "AML_HTTP_BUDGET_SECONDS", 25.0, 1.0, 29.0, problems)

    subscription_id = get("AML_SUBSCRIPTION_ID")
    resource_group = get("AML_RESOURCE_GROUP")
    workspace_name = get("AML_WORKSPACE_NAME")
    region = get("AML_REGION").lower()
    api_base = get("AML_API_BASE").rstrip("/")
    compute_name = get("AML_COMPUTE_NAME")
    if backend == "azureml":
        if not subscription_id:
            problems.append(
                "AML_SUBSCRIPTION_ID is required"
                + ("" if get("PIPELINE_BACKEND") else " (or set PIPELINE_BACKEND=local to run without Azure)")
            )
        elif not _GUID.fullmatch(subscription_id):
            problems.append("AML_SUBSCRIPTION_ID must be a GUID")
        for name, value in (
            ("AML_RESOURCE_GROUP", resource_group),
            ("AML_WORKSPACE_NAME", workspace_name),
            ("AML_COMPUTE_NAME", compute_name),
        ):
            if not value:
                problems.append(f"{name} is required")
            elif not _RESOURCE_NAME.fullmatch(value):
                problems.append(f"{name} is not a valid Azure resource name")
        if api_base:
            parts = urlsplit(api_base)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
                problems.append(
                    "AML_API_BASE must be an http(s) URL such as https://westeurope.api.azureml.ms"
                )
        elif not region:
            problems.append("AML_REGION is required unless AML_API_BASE is set")
        elif not _REGION.fullmatch(region):
            problems.append("AML_REGION must be an Azure region name such as westeurope")
        if region and not api_base and _REGION.fullmatch(region):
            api_base = f"https://{region}.api.azureml.ms"

    local_dataset_path = Path(get("LOCAL_DATASET_PATH", str(DEFAULT_DATASET_PATH))).expanduser()
    local_work_dir = Path(get("LOCAL_WORK_DIR", str(DEFAULT_WORK_DIR))).expanduser()
    if backend == "local":
        if not local_dataset_path.is_file():
            problems.append("LOCAL_DATASET_PATH does not name an existing file")
        elif not local_dataset_path.name.lower().endswith((".csv", ".csv.gz", ".parquet", ".pq")):
            problems.append("LOCAL_DATASET_PATH must be a .csv, .csv.gz or .parquet file")

    if problems:
        raise ConfigError(problems)
    return Settings(
        backend=backend,
        subscription_id=subscription_id,
        resource_group=resource_group,
        workspace_name=workspace_name,
        region=region,
        api_base=api_base,
        compute_name=compute_name,
        dataset_name=dataset_name,
        model_name=model_name,
        model_version=model_version,
        endpoint_name=endpoint_name,
        experiment_name=experiment_name,
        schedule=schedule,
        overlap=overlap,
        sample_size=sample_size,
        local_dataset_path=local_dataset_path.resolve(),
        local_work_dir=local_work_dir.resolve(),
        azure_client_id=get("AZURE_CLIENT_ID") or None,
        request_timeout=request_timeout,
        retry_budget=retry_budget,
        http_budget=http_budget,
    )


def _int_setting(get, name: str, default: int, minimum: int, problems: list[str]) -> int:
    raw = get(name, str(default))
    if not raw.isdigit() or int(raw) < minimum:
        problems.append(f"{name} must be a whole number of at least {minimum}")
        return default
    return int(raw)


def _float_setting(get, name: str, default: float, low: float, high: float, problems: list[str]) -> float:
    raw = get(name, str(default))
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        problems.append(f"{name} must be a number of seconds from {low:g} to {high:g}")
        return default
    return value
