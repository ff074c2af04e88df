// The function app on Flex Consumption (FC1, Linux, Python 3.11) and its storage account, which it reaches with
// its system-assigned identity only: shared keys are disabled on the account and no key appears in a setting.
param location string
param tags object
param appName string
param planName string
param storageAccountName string
param appInsightsName string

@description('The pipeline settings (name: value) the app reads; see main.bicep.')
param pipelineSettings object

param maximumInstanceCount int
param instanceMemoryMB int

@description('Resource id of a subnet delegated to Microsoft.App/environments for VNet integration (e.g. to reach a workspace behind a private endpoint); empty: none.')
param appSubnetId string = ''

var deploymentContainerName = 'deployment-package'

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: storageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true // Linux
  }
}

// Host storage by identity: the host builds the blob/queue/table URIs from the account name and takes its
// tokens from the system-assigned identity. Flex Consumption takes the runtime from functionAppConfig, so
// FUNCTIONS_WORKER_RUNTIME and FUNCTIONS_EXTENSION_VERSION must not be set. Application Insights takes no
// key-based ingestion (monitoring.bicep: DisableLocalAuth): the host signs its telemetry with the system-assigned
// identity (Authorization=AAD, no ClientId for a system-assigned identity), which app-access.bicep makes a
// Monitoring Metrics Publisher on the component.
var hostSettings = {
  AzureWebJobsStorage__accountName: storage.name
  AzureWebJobsStorage__credential: 'managedidentity'
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD'
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: appName
  location: location
  tags: union(tags, {
    'azd-service-name': 'api'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    virtualNetworkSubnetId: empty(appSubnetId) ? null : appSubnetId
    siteConfig: {
      minTlsVersion: '1.2'
      // Deploys use Entra tokens (azd, functions-action with OIDC): no FTP, and no basic credentials (below).
      ftpsState: 'Disabled'
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
  dependsOn: [
    deploymentContainer
  ]
}

// The app settings as the site's `appsettings` config resource, not as a `[for ...]` loop in siteConfig: a for
// expression must be computable when the deployment starts (Bicep error BCP178), and hostSettings holds a runtime
// value (the connection string of App Insights). An object needs no loop, so runtime values are fine here; this is
// how Azure Verified Modules write app settings (avm/res/web/site config--appsettings). The resource replaces the
// whole set, as siteConfig.appSettings did.
resource siteAppSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'appsettings'
  properties: union(hostSettings, pipelineSettings)
  // The host switches to identity-based storage and telemetry with these settings: apply them once the roles
  // exist (a new assignment can still take minutes to take effect).
  dependsOn: [
    access
  ]
}

// No basic (user name and password) publishing credentials on FTP or on the SCM (Kudu) site.
resource ftpPolicy 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPolicy 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

// The identity's roles on the storage account and on App Insights. A module, so that the principal id is one of
// its parameters: a role assignment's name must be computable when the deployment starts (BCP120), which
// site.identity.principalId is not in this file, and the name should hold the principal (review N5).
module access 'app-access.bicep' = {
  name: 'app-access'
  params: {
    principalId: site.identity.principalId
    storageAccountName: storage.name
    appInsightsName: appInsights.name
  }
}

output appName string = site.name
output url string = 'https://${site.properties.defaultHostName}'
output principalId string = site.identity.principalId
