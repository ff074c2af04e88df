// The app's identity gets AzureML Data Scientist on the existing workspace: deployed into the workspace's own
// resource group, which may differ from the app's.
param workspaceName string
param appPrincipalId string

@description('A second principal that publishes from outside the app (e.g. the deployment pipeline); empty: none.')
param publisherPrincipalId string = ''

// AzureML Data Scientist: run, submit and publish pipelines, read datasets and models; no workspace admin.
var amlDataScientistRoleId = 'f6c7c914-8db3-469d-8ca1-694a8f32e121'

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-04-01' existing = {
  name: workspaceName
}

resource appRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, appPrincipalId, amlDataScientistRoleId)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', amlDataScientistRoleId)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource publisherRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(publisherPrincipalId)) {
  name: guid(workspace.id, publisherPrincipalId, amlDataScientistRoleId)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', amlDataScientistRoleId)
    principalId: publisherPrincipalId
  }
}

output appRoleAssignmentId string = appRole.id
