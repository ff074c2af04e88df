"""The project's fake Azure ML service (SDK v1 pipelines, run history, ...) over real HTTP on 127.0.0.1; one
module per service, server.py for the HTTP plumbing."""

from emulator.aml.faults import Fault
from emulator.aml.server import FakeAzureML, RecordedRequest
from emulator.aml.state import DEFAULT_STEP_NAMES, FakeRun, FakeStep

__all__ = ["DEFAULT_STEP_NAMES", "FakeAzureML", "FakeRun", "FakeStep", "Fault", "RecordedRequest"]
