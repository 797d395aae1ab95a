"""The shared conformance suite against the in-memory provider (the contract without a network)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest

from storage_initializer.testing import ConformanceStore, ProviderConformance
from tests.core.memory_provider import MemoryProvider


class MemoryStore(ConformanceStore):
    provider_class = MemoryProvider

    def env(self) -> Mapping[str, str]:
        return {}

    def uri_for(self, key: str) -> str:
        return f"mem://{self.root_name}/{key}" if key else f"mem://{self.root_name}"

    def put(self, key: str, data: bytes) -> None:
        full = f"{self.root_name}/{key}"
        MemoryProvider.objects[full] = data
        version = MemoryProvider.versions.get(full)
        MemoryProvider.versions[full] = f"v{int(version[1:]) + 1}" if version else "v1"

    def malformed_uri(self) -> str:
        return "mem://"

    def denied_env(self) -> Mapping[str, str]:
        MemoryProvider.denied.add(f"{self.root_name}/secret.bin")
        return {}

    def fail_once(self, key: str) -> bool:
        MemoryProvider.flaky.add(f"{self.root_name}/{key}")
        return True

    # stall_once stays off: bytes in memory have no connection that could stall.


class TestMemoryConformance(ProviderConformance):
    @pytest.fixture
    def store(self) -> Iterator[ConformanceStore]:
        MemoryProvider.reset()
        yield MemoryStore()
        MemoryProvider.reset()
