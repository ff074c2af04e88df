"""The content service's snapshot calls (`/content/v1.0{WS}/snapshots/...`): what the SDK's publish sends
to store a step's source folder. By default no file is uploaded (getblob hands out no upload URL); after
`keep_snapshots(folder)` every file is uploaded through blob_capture's proxy and kept, so a snapshot can be
written out again (`write_snapshot`) for a step to run from."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from emulator.aml.blob_capture import SnapshotUploads
from emulator.aml.wire import SEG, RecordedRequest, Response, Route, ServiceError, route

# The storage account the upload URLs name (reached only through blob_capture's proxy).
SNAPSHOT_ACCOUNT = "fakeamlsnapshots"


class ContentService:
    """Mixed into FakeAzureML; snapshots are kept in fake.snapshots (id -> the body the SDK posted) and, with
    keep_snapshots, their files in fake.snapshot_contents (id -> {relative path: bytes})."""

    snapshot_uploads: SnapshotUploads | None = None

    def keep_snapshots(self, folder: Path) -> SnapshotUploads:
        """Make publishes upload their files and keep them. The publishing process needs
        `fake.snapshot_uploads.environ()` in its environment (the proxy and the CA that receive the upload)."""
        with self.lock:
            if self.snapshot_uploads is None:
                self.snapshot_contents: dict[str, dict[str, bytes | None]] = {}
                self.snapshot_uploads = SnapshotUploads(Path(folder)).start()
            return self.snapshot_uploads

    def _stop_snapshot_uploads(self) -> None:
        if self.snapshot_uploads is not None:
            self.snapshot_uploads.stop()

    def _content_routes(self) -> list[Route]:
        return [
            route("GET", r"/snapshots/latest/metadata", self._get_latest_snapshot),
            route("POST", r"/snapshots/getblob", self._get_snapshot_blobs),
            route("POST", rf"/snapshots/{SEG}", self._post_snapshot),
            route("GET", rf"/snapshots/{SEG}", self._get_snapshot),
        ]

    def _get_latest_snapshot(self, record: RecordedRequest) -> Response:
        # The SDK diffs the folder against this tree and uploads only what changed; an empty root means
        # "no snapshot yet" (every file is new).
        if not self.snapshots:
            return Response(200, {"id": None, "root": {}})
        snapshot_id = next(reversed(self.snapshots))
        return Response(
            200, {"id": snapshot_id, "root": self.snapshots[snapshot_id].get("DirTreeNode") or {}}
        )

    def _get_snapshot_blobs(self, record: RecordedRequest) -> Response:
        if self.snapshot_uploads is None:
            # No file nodes: the SDK then uploads nothing to *.blob.core.windows.net and just posts the tree.
            return Response(200, {"fileNodes": []})
        names = (record.json() or {}).get("FileNames") or []
        batch = uuid.uuid4().hex
        nodes = [
            {
                "fullName": name,
                "blobUri": f"https://{SNAPSHOT_ACCOUNT}.blob.core.windows.net/snapshots/{batch}/"
                f"{quote(name)}?sv=2021-08-06&sr=b&sp=cw&sig=fake",
            }
            for name in names
        ]
        return Response(200, {"fileNodes": nodes})

    def _post_snapshot(self, record: RecordedRequest, snapshot_id: str) -> Response:
        info = record.json() or {}
        self.snapshots[snapshot_id] = info
        if self.snapshot_uploads is not None:
            self._keep_snapshot_files(snapshot_id, info)
        return Response(200, {"id": snapshot_id, "root": info.get("DirTreeNode"), "tags": None})

    def _keep_snapshot_files(self, snapshot_id: str, info: dict[str, Any]) -> None:
        # The SDK uploads only the files that differ from the parent snapshot; the others are the parent's.
        assert self.snapshot_uploads is not None
        parent = self.snapshot_contents.get(info.get("ParentSnapshotId") or "", {})
        uploaded: dict[str, bytes | None] = {}
        for node in (info.get("FileRevisionList") or {}).get("FileNodes") or []:
            blob_path = unquote(urlsplit(node.get("BlobUri") or "").path)
            uploaded[node.get("FullName")] = self.snapshot_uploads.take(blob_path)
        self.snapshot_contents[snapshot_id] = {
            name: uploaded[name] if name in uploaded else parent.get(name)
            for name in self.snapshot_files(snapshot_id)
        }

    def write_snapshot(self, snapshot_id: str, destination: Path) -> Path:
        """Write the kept files of a snapshot under `destination` (what a job gets as its working directory)."""
        with self.lock:
            files = dict(getattr(self, "snapshot_contents", {}).get(snapshot_id) or {})
        if not files:
            raise KeyError(f"snapshot {snapshot_id} was not kept (keep_snapshots before the publish)")
        missing = sorted(name for name, data in files.items() if data is None)
        if missing:
            raise KeyError(f"snapshot {snapshot_id}: no bytes were uploaded for {', '.join(missing)}")
        for name, data in files.items():
            target = Path(destination) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data or b"")
        return Path(destination)

    def _get_snapshot(self, record: RecordedRequest, snapshot_id: str) -> Response:
        if snapshot_id not in self.snapshots:
            raise ServiceError(404, f"Snapshot {snapshot_id} not found.", "UserError")
        return Response(200, {"id": snapshot_id, "root": self.snapshots[snapshot_id].get("DirTreeNode")})

    # snapshot contents as file names, for tests that check what a publish would upload
    def snapshot_files(self, snapshot_id: str) -> list[str]:
        def walk(node: dict[str, Any], prefix: str) -> list[str]:
            names: list[str] = []
            for name, child in (node.get("Children") or node.get("children") or {}).items():
                kind = child.get("Type") or child.get("type")
                if kind == "File" or kind == "file":
                    names.append(prefix + name)
                else:
                    names.extend(walk(child, prefix + name + "/"))
            return names

        return sorted(walk(self.snapshots[snapshot_id].get("DirTreeNode") or {}, ""))
