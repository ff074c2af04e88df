"""The content service's snapshot calls (`/content/v1.0{WS}/snapshots/...`): what the SDK's publish sends
to store a step's source folder."""

from __future__ import annotations

from typing import Any

from tests.fake_aml.wire import SEG, RecordedRequest, Response, Route, ServiceError, route


class ContentService:
    """Mixed into FakeAzureML; snapshots are kept in fake.snapshots (id -> the body the SDK posted)."""

    def _content_routes(self) -> list[Route]:
        return [
            route("GET", r"/snapshots/latest/metadata", self._get_latest_snapshot),
            route("POST", r"/snapshots/getblob", self._get_snapshot_blobs),
            route("POST", rf"/snapshots/{SEG}", self._post_snapshot),
            route("GET", rf"/snapshots/{SEG}", self._get_snapshot),
        ]

    def _get_latest_snapshot(self, record: RecordedRequest) -> Response:
        # The SDK diffs the folder against this tree and uploads only what changed; an empty root means
        # "no snapshot yet" (every file is new, and getblob below then asks for no upload anyway).
        if not self.snapshots:
            return Response(200, {"id": None, "root": {}})
        snapshot_id = next(reversed(self.snapshots))
        return Response(
            200, {"id": snapshot_id, "root": self.snapshots[snapshot_id].get("DirTreeNode") or {}}
        )

    def _get_snapshot_blobs(self, record: RecordedRequest) -> Response:
        # No file nodes: the SDK then uploads nothing to *.blob.core.windows.net and just posts the tree.
        return Response(200, {"fileNodes": []})

    def _post_snapshot(self, record: RecordedRequest, snapshot_id: str) -> Response:
        info = record.json() or {}
        self.snapshots[snapshot_id] = info
        return Response(200, {"id": snapshot_id, "root": info.get("DirTreeNode"), "tags": None})

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
