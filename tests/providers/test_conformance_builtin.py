"""The shared conformance suite run against the built-in local and http providers."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest
from storage_initializer_http import HttpProvider

from storage_initializer.local import LocalProvider
from storage_initializer.testing import ConformanceStore, ProviderConformance
from tests.servers.http_server import HttpFileServer


class LocalStore(ConformanceStore):
    provider_class = LocalProvider
    supports_markers = False  # a filesystem has no marker objects

    def __init__(self, base: Path) -> None:
        super().__init__()
        self.base = base / self.root_name
        self.base.mkdir()

    def env(self) -> Mapping[str, str]:
        return {}

    def uri_for(self, key: str) -> str:
        return str(self.base / key) if key else str(self.base)

    def put(self, key: str, data: bytes) -> None:
        path = self.base / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        # Same-size rewrites within one clock tick must still look new.
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1000))


class HttpStore(ConformanceStore):
    provider_class = HttpProvider
    supports_directories = False  # a URL names one file

    def __init__(self, server: HttpFileServer) -> None:
        super().__init__()
        self.server = server

    def env(self) -> Mapping[str, str]:
        return {}

    def uri_for(self, key: str) -> str:
        return f"{self.server.url}/{self.root_name}/{key}"

    def put(self, key: str, data: bytes) -> None:
        self.server.add(f"/{self.root_name}/{key}", data)


class TestLocalConformance(ProviderConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> ConformanceStore:
        return LocalStore(tmp_path)


class TestHttpConformance(ProviderConformance):
    @pytest.fixture
    def store(self, http_server: HttpFileServer) -> ConformanceStore:
        return HttpStore(http_server)
