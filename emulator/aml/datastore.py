"""The datastore service (`/datastore/v1.0{WS}/...`): the workspace's default datastore and a datastore by
name. With a blob store attached (`use_blob_store`, Azurite), `workspaceblobstore` is that store with its
account key, protocol `http`, so that `http://{account}.blob.core.windows.net/...` reached through a
lower-case `http_proxy` lands in Azurite (which takes the account from the Host header)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from emulator.aml.wire import SEG, RecordedRequest, Response, Route, route

DEFAULT_DATASTORE = "workspaceblobstore"
BLOB_ENDPOINT_SUFFIX = "core.windows.net"
# the container of the workspace storage account where the artifact service keeps artifacts (models)
ARTIFACTS_CONTAINER = "azureml"


@dataclass(frozen=True)
class BlobStore:
    """The storage account behind `workspaceblobstore`: an Azurite blob service at `proxy_url`."""

    proxy_url: str  # http://127.0.0.1:{port} of Azurite, used as the job's http_proxy
    account: str
    key: str
    container: str

    @property
    def url(self) -> str:
        """The container's URL as the SDK and the steps spell it (reached through the proxy)."""
        return f"http://{self.account}.blob.{BLOB_ENDPOINT_SUFFIX}/{self.container}"

    def container_client(self, container: str | None = None) -> Any:
        """azure-storage-blob's ContainerClient on Azurite directly (path-style URL, no proxy), for seeding;
        by default the datastore's container."""
        from azure.core.credentials import AzureNamedKeyCredential
        from azure.storage.blob import ContainerClient

        return ContainerClient(
            f"{self.proxy_url}/{self.account}",
            container or self.container,
            credential=AzureNamedKeyCredential(self.account, self.key),
        )


class DatastoreService:
    """Mixed into FakeAzureML; `fake.blob_store` is the attached storage (None: an unreachable https store)."""

    def use_blob_store(
        self, proxy_url: str, account: str, key: str, container: str | None = None
    ) -> BlobStore:
        """Back `workspaceblobstore` with the blob service at `proxy_url` (Azurite: `http://127.0.0.1:{port}`)
        and create its container. Needed by register_dataset / register_model and by steps that write to the
        default datastore."""
        from azure.core.exceptions import ResourceExistsError

        store = BlobStore(
            proxy_url.rstrip("/"), account, key, container or f"azureml-blobstore-{self.workspace_id}"
        )
        for name in (store.container, ARTIFACTS_CONTAINER):  # the datastore's, the artifact service's
            with contextlib.suppress(ResourceExistsError):
                store.container_client(name).create_container()
        with self.lock:
            self.blob_store = store
        return store

    def _datastore_routes(self) -> list[Route]:
        return [
            route("GET", r"/default", self._get_default_datastore),
            route("GET", rf"/datastores/{SEG}", self._get_datastore),
        ]

    # what the SDK needs to publish
    def _datastore(self, name: str) -> dict[str, Any]:
        store = self.blob_store
        if store is not None and name == DEFAULT_DATASTORE:
            return {
                "name": name,
                "dataStoreType": "AzureBlob",
                "hasBeenValidated": True,
                "azureStorageSection": {
                    "accountName": store.account,
                    "containerName": store.container,
                    "endpoint": BLOB_ENDPOINT_SUFFIX,
                    "protocol": "http",
                    "credentialType": "AccountKey",
                    "credential": store.key,
                    "accountKey": store.key,
                    "sasToken": None,
                    "isSas": False,
                    "blobCacheTimeout": 0,
                    "subscriptionId": self.subscription_id,
                    "resourceGroup": self.resource_group,
                    "serviceDataAccessAuthIdentity": "None",
                },
                "tags": {},
            }
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
