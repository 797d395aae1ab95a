"""Conformance fault hooks for the stores of the two model hubs, whose fakes share ``add_fault``."""

from __future__ import annotations

from typing import Any


class HubFaults:
    """``fail_once`` / ``stall_once`` of :class:`storage_initializer.testing.ConformanceStore` via ``hub.add_fault``."""

    hub: Any

    def fail_once(self, key: str) -> bool:
        self.hub.add_fault("status", key, status=503)
        return True

    def stall_once(self, key: str, seconds: float) -> bool:
        self.hub.add_fault("stall", key, after_bytes=1000, seconds=seconds)
        return True
