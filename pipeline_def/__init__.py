"""Publishes and runs the batch-prediction pipeline: on Azure ML over REST, or as local processes."""
