"""The workspace resource provider's computes (`/rp/workspaces{WS}/computes`): the SDK lists them when a step
names its compute target by name."""

from __future__ import annotations

from typing import Any

from emulator.aml.state import iso
from emulator.aml.wire import SEG, RecordedRequest, Response, Route, ServiceError, route


class ComputeService:
    """Mixed into FakeAzureML; computes are kept in fake.computes (name -> ARM compute resource)."""

    def _compute_routes(self) -> list[Route]:
        return [
            route("GET", r"/computes", self._list_computes),
            route("GET", rf"/computes/{SEG}", self._get_compute),
        ]

    # compute targets (the SDK lists them when a step names its compute target by name)
    def add_compute(self, name: str, vm_size: str = "STANDARD_DS3_V2") -> dict[str, Any]:
        with self.lock:
            now = iso(self.clock())
            self.computes[name] = {
                "id": f"{self.workspace_path}/computes/{name}",
                "name": name,
                "location": "westeurope",
                "type": "Microsoft.MachineLearningServices/workspaces/computes",
                "tags": {},
                "properties": {
                    "computeType": "AmlCompute",
                    "computeLocation": "westeurope",
                    "description": None,
                    "createdOn": now,
                    "modifiedOn": now,
                    "resourceId": None,
                    "provisioningErrors": None,
                    "provisioningState": "Succeeded",
                    "isAttachedCompute": False,
                    "disableLocalAuth": True,
                    "properties": {
                        "vmSize": vm_size,
                        "vmPriority": "Dedicated",
                        "scaleSettings": {
                            "minNodeCount": 0,
                            "maxNodeCount": 4,
                            "nodeIdleTimeBeforeScaleDown": "PT120S",
                        },
                        "subnet": None,
                        "remoteLoginPortPublicAccess": "Disabled",
                        "allocationState": "Steady",
                        "allocationStateTransitionTime": now,
                        "errors": None,
                        "currentNodeCount": 0,
                        "targetNodeCount": 0,
                        "nodeStateCounts": {
                            "preparingNodeCount": 0,
                            "runningNodeCount": 0,
                            "idleNodeCount": 0,
                            "unusableNodeCount": 0,
                            "leavingNodeCount": 0,
                            "preemptedNodeCount": 0,
                        },
                    },
                },
            }
            return self.computes[name]

    def _list_computes(self, record: RecordedRequest) -> Response:
        return Response(200, {"value": list(self.computes.values())})

    def _get_compute(self, record: RecordedRequest, name: str) -> Response:
        if name not in self.computes:
            raise ServiceError(404, f"Compute {name} not found.", "ResourceNotFound")
        return Response(200, self.computes[name])
