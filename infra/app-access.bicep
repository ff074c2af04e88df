// The app's system-assigned identity on its own storage account and on its Application Insights component.
// The role assignment names hold the principal id (guid(scope, principal, role)), so that a site recreated under
// the same name gets new assignments instead of colliding with the dead principal's (RoleAssignmentUpdateNotPermitted).
param principalId string
param storageAccountName string
param appInsightsName string

// Built-in role definitions the app needs on its own storage account.
var storageRoles = {
  // The host's blobs: timer schedule monitor, singleton locks, keys, and the deployment package.
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  // The host writes its diagnostic events to a table. The app has no queue or blob trigger, so no queue role.
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
}

// Monitoring Metrics Publisher: the right to send telemetry to a component that takes Entra-authenticated
// ingestion only (DisableLocalAuth), granted at the component's scope.
var monitoringMetricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource storageRoleAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for role in items(storageRoles): {
  name: guid(storage.id, principalId, role.value)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.value)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}]

resource telemetryPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, principalId, monitoringMetricsPublisherRoleId)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisherRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
