// The app's identity (and an optional publisher) get a role on the existing workspace: deployed into the
// workspace's own resource group, which may differ from the app's.
param workspaceName string
param appPrincipalId string

@description('A second principal that publishes from outside the app (e.g. the deployment pipeline); empty: none.')
param publisherPrincipalId string = ''

@allowed([
  'ServicePrincipal'
  'User'
  'Group'
])
@description('Type of publisherPrincipalId: ServicePrincipal (the deploy workflow\'s app registration) or User (you).')
param publisherPrincipalType string = 'ServicePrincipal'

// Default AzureML Data Scientist: run, submit and publish pipelines, read datasets and models; no workspace admin.
// It is broader than the app needs (every */delete and */action in the workspace, datastore secrets included).
@description('Built-in or custom role definition (GUID) the app and the publisher get on the workspace; ignored when createCustomAmlRole is true.')
param amlRoleDefinitionId string = 'f6c7c914-8db3-469d-8ca1-694a8f32e121'

@description('Create the narrower custom role aml-pipeline-operator-role.json (assignable on this workspace only) and grant it instead. Needs Microsoft.Authorization/roleDefinitions/write on the workspace\'s resource group.')
param createCustomAmlRole bool = false

// The custom role's actions: publishing and submitting SDK v1 pipelines (Microsoft's "Common scenarios" table in
// "Manage access to Azure ML workspaces"); the same file works with `az role definition create`.
var operatorRole = loadJsonContent('aml-pipeline-operator-role.json')
var customRoleId = guid(workspace.id, 'aml-pipeline-operator')
var roleId = createCustomAmlRole ? customRoleId : amlRoleDefinitionId

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-04-01' existing = {
  name: workspaceName
}

resource customRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = if (createCustomAmlRole) {
  name: customRoleId
  properties: {
    roleName: '${operatorRole.Name} ${uniqueString(workspace.id)}'
    description: operatorRole.Description
    type: 'CustomRole'
    permissions: [
      {
        actions: operatorRole.Actions
        notActions: []
      }
    ]
    assignableScopes: [
      workspace.id
    ]
  }
}

resource appRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, appPrincipalId, roleId)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    customRole
  ]
}

resource publisherRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(publisherPrincipalId)) {
  name: guid(workspace.id, publisherPrincipalId, roleId)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
    principalId: publisherPrincipalId
    principalType: publisherPrincipalType
  }
  dependsOn: [
    customRole
  ]
}

output appRoleAssignmentId string = appRole.id
