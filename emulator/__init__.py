"""The Azure that runs on one machine: an emulated Azure ML workspace (`emulator.aml`, a real HTTP server on
127.0.0.1 that speaks the REST contract of docs/aml-v1-rest.md and executes what is published), a loopback
managed-identity endpoint (`emulator.identity`), Azurite wiring (`emulator.azurite`), the steps' own venv
(`emulator.step_env`), the three put together (`emulator.azure`), a host that calls function_app.py without
`func` (`emulator.functions_host`) and the demo `make demo-azureml` runs (`emulator.demo`).

Development tooling: the tests and the benchmarks import it; the deployed app never does (.funcignore)."""
