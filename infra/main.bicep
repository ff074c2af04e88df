// What `azd up` provisions: a Flex Consumption function app on Python 3.11 that drives an existing Azure ML
// workspace with its own system-assigned identity, its storage (identity only, no keys), Application Insights,
// and an alert that mails when a scheduled pipeline run fails.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; names the resource group and seeds the resource names.')
param environmentName string

@minLength(1)
@description('Region of the function app and its resources (one that offers Flex Consumption).')
param location string

@description('Resource group for the app; default rg-<environmentName>.')
param resourceGroupName string = ''

@description('Subscription of the Azure ML workspace (AML_SUBSCRIPTION_ID); default the deployment subscription.')
param amlSubscriptionId string = subscription().subscriptionId

@minLength(1)
@description('Resource group of the existing Azure ML workspace (AML_RESOURCE_GROUP); may differ from the app\'s.')
param amlResourceGroup string

@minLength(1)
@description('Name of the existing Azure ML workspace (AML_WORKSPACE_NAME).')
param amlWorkspaceName string

@minLength(1)
@description('Region of the Azure ML workspace, e.g. westeurope (AML_REGION).')
param amlRegion string

@minLength(1)
@description('Compute cluster the pipeline steps run on (AML_COMPUTE_NAME).')
param amlComputeName string

@description('Data-plane base URL override, e.g. for a workspace behind a private endpoint (AML_API_BASE); empty: derived from the region.')
param amlApiBase string = ''

@allowed(['azureml', 'azureml-v2'])
@description('How the app drives the workspace (PIPELINE_BACKEND): azureml (SDK v1 published pipeline and endpoint) or azureml-v2 (v2 components and pipeline jobs over REST; docs/migrate-to-v2.md).')
param pipelineBackend string = 'azureml'

@description('Azure Resource Manager base URL of the azureml-v2 backend (AML_ARM_BASE); empty: https://management.azure.com.')
param amlArmBase string = ''

@description('Registered tabular dataset that fetch_data samples (AML_DATASET_NAME).')
param amlDatasetName string = 'AmesHousing'

@description('Registered model that predict loads (AML_MODEL_NAME).')
param amlModelName string = 'HousePrices'

@description('Model version, a positive integer or latest (AML_MODEL_VERSION).')
param amlModelVersion string = 'latest'

@description('PipelineEndpoint the timer submits to (PIPELINE_ENDPOINT_NAME).')
param pipelineEndpointName string = 'house-price-batch-predictions'

@description('Experiment the runs are recorded under (PIPELINE_EXPERIMENT_NAME).')
param pipelineExperimentName string = 'house-price-batch-predictions'

@description('Six-field NCRONTAB schedule of the timer, UTC (PIPELINE_SCHEDULE).')
param pipelineSchedule string = '0 30 1,13 * * *'

@allowed([
  'skip'
  'allow'
])
@description('skip: a tick submits nothing while a run is still active; allow (PIPELINE_OVERLAP).')
param pipelineOverlap string = 'skip'

@minValue(0)
@description('Default of the sample_size parameter published with the pipeline, 0 = every row (PIPELINE_SAMPLE_SIZE).')
param pipelineSampleSize int = 10

@minLength(3)
@description('E-mail address the failed-run alert is sent to.')
param alertEmail string

@description('Object id of a principal that publishes from outside the app (the deployment pipeline\'s service principal); it gets the same workspace role. Empty: none.')
param publisherPrincipalId string = ''

@allowed([
  'ServicePrincipal'
  'User'
  'Group'
])
@description('Type of publisherPrincipalId (AML_PUBLISHER_PRINCIPAL_TYPE): ServicePrincipal for the deploy workflow\'s app registration, User for you (azd\'s AZURE_PRINCIPAL_TYPE is the type of the account azd runs as).')
param publisherPrincipalType string = 'ServicePrincipal'

@minLength(36)
@maxLength(36)
@description('Role definition (GUID) the app and the publisher get on the workspace (AML_ROLE_DEFINITION_ID); default AzureML Data Scientist. See docs/deploy.md for the narrower custom role.')
param amlRoleDefinitionId string = 'f6c7c914-8db3-469d-8ca1-694a8f32e121'

@description('Create the custom role infra/aml-pipeline-operator-role.json on the workspace and grant it instead of amlRoleDefinitionId (needs the right to create role definitions).')
param createCustomAmlRole bool = false

@description('Resource id of a subnet delegated to Microsoft.App/environments, for VNet integration (AZURE_APP_SUBNET_ID), e.g. to reach a workspace behind a private endpoint; empty: none.')
param appSubnetId string = ''

@description('Most instances Flex Consumption may scale the app out to (the lowest cap Flex Consumption takes is 1).')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory of each instance, in MB (a publish loads the Azure ML SDK: 2048 at least).')
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}

// Every setting the app reads on the azureml and azureml-v2 backends, by the name pipeline_def/settings.py reads it.
// The timeouts and retry budget are left to the code's defaults.
var pipelineSettings = {
  PIPELINE_BACKEND: pipelineBackend
  AML_ARM_BASE: amlArmBase
  AML_SUBSCRIPTION_ID: amlSubscriptionId
  AML_RESOURCE_GROUP: amlResourceGroup
  AML_WORKSPACE_NAME: amlWorkspaceName
  AML_REGION: amlRegion
  AML_API_BASE: amlApiBase
  AML_COMPUTE_NAME: amlComputeName
  AML_DATASET_NAME: amlDatasetName
  AML_MODEL_NAME: amlModelName
  AML_MODEL_VERSION: amlModelVersion
  PIPELINE_ENDPOINT_NAME: pipelineEndpointName
  PIPELINE_EXPERIMENT_NAME: pipelineExperimentName
  PIPELINE_SCHEDULE: pipelineSchedule
  PIPELINE_OVERLAP: pipelineOverlap
  PIPELINE_SAMPLE_SIZE: string(pipelineSampleSize)
}

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: empty(resourceGroupName) ? 'rg-${environmentName}' : resourceGroupName
  location: location
  tags: tags
}

module monitoring 'monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    location: location
    tags: tags
    logAnalyticsName: 'log-${resourceToken}'
    appInsightsName: 'appi-${resourceToken}'
    actionGroupName: 'ag-${resourceToken}'
    alertRuleName: 'alert-failed-scheduled-run-${resourceToken}'
    alertEmail: alertEmail
  }
}

module app 'app.bicep' = {
  name: 'app'
  scope: rg
  params: {
    location: location
    tags: tags
    appName: 'func-${resourceToken}'
    planName: 'plan-${resourceToken}'
    storageAccountName: 'st${resourceToken}'
    appInsightsName: monitoring.outputs.appInsightsName
    pipelineSettings: pipelineSettings
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    appSubnetId: appSubnetId
  }
}

// The workspace may live in another resource group (or subscription): the role is granted there.
module amlAccess 'aml-access.bicep' = {
  name: 'aml-access-${resourceToken}'
  scope: resourceGroup(amlSubscriptionId, amlResourceGroup)
  params: {
    workspaceName: amlWorkspaceName
    appPrincipalId: app.outputs.principalId
    publisherPrincipalId: publisherPrincipalId
    publisherPrincipalType: publisherPrincipalType
    amlRoleDefinitionId: amlRoleDefinitionId
    createCustomAmlRole: createCustomAmlRole
  }
}

// azd keeps these in the environment (`azd env get-values`), so `python -m pipeline_def publish` can run
// with the app's own settings after `azd up`.
output AZURE_LOCATION string = location
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = app.outputs.appName
output AZURE_FUNCTION_APP_URL string = app.outputs.url
output PIPELINE_BACKEND string = pipelineBackend
output AML_ARM_BASE string = amlArmBase
output AML_SUBSCRIPTION_ID string = amlSubscriptionId
output AML_RESOURCE_GROUP string = amlResourceGroup
output AML_WORKSPACE_NAME string = amlWorkspaceName
output AML_REGION string = amlRegion
output AML_API_BASE string = amlApiBase
output AML_COMPUTE_NAME string = amlComputeName
output AML_DATASET_NAME string = amlDatasetName
output AML_MODEL_NAME string = amlModelName
output AML_MODEL_VERSION string = amlModelVersion
output PIPELINE_ENDPOINT_NAME string = pipelineEndpointName
output PIPELINE_EXPERIMENT_NAME string = pipelineExperimentName
output PIPELINE_SCHEDULE string = pipelineSchedule
output PIPELINE_OVERLAP string = pipelineOverlap
output PIPELINE_SAMPLE_SIZE string = string(pipelineSampleSize)
output AML_ROLE_ASSIGNMENT_ID string = amlAccess.outputs.appRoleAssignmentId
