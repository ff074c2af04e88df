"""Shared fixtures live in the modules below, one per area, so each can change alone."""

pytest_plugins = [
    "tests.fixtures_fakes",  # fake Azure ML service, fake managed identity, Azurite, aml_env
    "tests.fixtures_model",  # the baseline model trained once per session, the Ames data
    "tests.fixtures_local",  # local_env: the local backend in a temporary work dir
    "tests.fixtures_azure_path",  # the steps' venv, the emulated Azure path (workspace + Azurite + identity)
]
