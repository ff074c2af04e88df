"""The discovery service (`GET /discovery`): where the SDK finds every other service; all of them are this
one fake."""

from __future__ import annotations


class DiscoveryService:
    """Mixed into FakeAzureML."""

    def _discovery(self) -> dict[str, str]:
        base = self.base_url
        return {
            "api": base,
            "catalog": base,
            "experimentation": base,
            "gallery": base,
            "history": base,
            "hyperdrive": base,
            "labeling": base,
            "modelmanagement": base,
            "pipelines": base,
            "studio": base,
        }
