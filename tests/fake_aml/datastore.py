"""The datastore service (`/datastore/v1.0{WS}/...`): the workspace's default datastore and a datastore by
name."""

from __future__ import annotations

from typing import Any

from tests.fake_aml.wire import SEG, RecordedRequest, Response, Route, route


class DatastoreService:
    """Mixed into FakeAzureML."""

    def _datastore_routes(self) -> list[Route]:
        return [
            route("GET", r"/default", self._get_default_datastore),
            route("GET", rf"/datastores/{SEG}", self._get_datastore),
        ]

    # what the SDK needs to publish
    def _datastore(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "dataStoreType": "AzureBlob",
            "hasBeenValidated": True,
            "azureStorageSection": {
                "accountName": "fakeamlstorage",
                "containerName": "azureml-blobstore-00000000",
                "endpoint": "core.windows.net",
                "protocol": "https",
                "credentialType": "None",
                "credential": None,
                "isSas": False,
                "blobCacheTimeout": 0,
            },
            "tags": {},
        }

    def _get_default_datastore(self, record: RecordedRequest) -> Response:
        return Response(200, self._datastore("workspaceblobstore"))

    def _get_datastore(self, record: RecordedRequest, name: str) -> Response:
        return Response(200, self._datastore(name))
