"""The steps' logic with no platform in it: reading, sampling, scoring and publishing on local paths and plain
values. The step CLIs (fetch_data.py, predict.py, save_predictions.py) are thin over it, and aml_v1.py turns
Azure ML v1 names into the paths it takes. Nothing here imports azureml, azure or pipeline_def."""
