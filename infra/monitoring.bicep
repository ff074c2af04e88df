// Log Analytics and Application Insights for the app, and the alert on failed scheduled runs: each timer tick
// logs how the previous scheduled run ended, at ERROR when it failed or was canceled, and the rule mails then.
param location string
param tags object
param logAnalyticsName string
param appInsightsName string
param actionGroupName string
param alertRuleName string

@description('E-mail address the failed-run alert is sent to.')
param alertEmail string

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
    // Entra-authenticated ingestion only: the instrumentation key in the connection string is readable by anyone
    // who can read the app settings, and would let them write fake "previous scheduled run" traces (the alert's
    // input). The app signs its telemetry with its identity (app.bicep, app-access.bicep).
    DisableLocalAuth: true
  }
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: actionGroupName
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'batchpred'
    enabled: true
    emailReceivers: [
      {
        name: 'failed-run-mail'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

// The query lives in its own file so that the README and the tests read the same text the rule runs.
resource failedRunAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: alertRuleName
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Scheduled pipeline run failed'
    description: 'A timer tick logged that the previous scheduled Azure ML pipeline run failed or was canceled.'
    severity: 1
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: loadTextContent('failed-scheduled-run.kql')
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    // Each failure is one log line: one mail per failure, nothing to resolve.
    autoMitigate: false
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

output appInsightsName string = appInsights.name
output alertRuleId string = failedRunAlert.id
