"""The shared conformance suite run against the built-in local and http providers."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

import pytest
from storage_initializer_http import HttpProvider

from storage_initializer.local import LocalProvider
from storage_initializer.testing import ConformanceStore, ProviderConformance
from tests.servers.http_server import Fault, HttpFileServer


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

    def malformed_uri(self) -> str:
        return "file://"

    # A local file cannot refuse root (CI runs as root), fail or stall: those hooks stay off.


class HttpStore(ConformanceStore):
    provider_class = HttpProvider
    supports_directories = False  # a URL names one file

    def __init__(self, server: HttpFileServer) -> None:
        super().__init__()
        self.server = server
        self.protected = False

    def env(self) -> Mapping[str, str]:
        return {}

    def _path(self, key: str) -> str:
        return f"/{self.root_name}/{quote(key)}"  # as requested: the server does not decode paths

    def uri_for(self, key: str) -> str:
        return self.server.url + self._path(key)

    def put(self, key: str, data: bytes) -> None:
        options = {"require_headers": {"Authorization": "Bearer right"}} if self.protected else {}
        self.server.add(self._path(key), data, **options)

    def malformed_uri(self) -> str:
        return f"{self.server.url}:notaport/{self.root_name}/model.bin"

    def denied_env(self) -> Mapping[str, str]:
        self.protected = True  # what put() stores from now on asks for a token nobody sends
        return {}

    def fail_once(self, key: str) -> bool:
        self.server.faults[self._path(key)] = Fault(status_codes=[503], status_skip=1)
        return True

    def stall_once(self, key: str, seconds: float) -> bool:
        self.server.faults[self._path(key)] = Fault(stall_after=1000, stall_seconds=seconds, stall_times=1)
        return True


class TestLocalConformance(ProviderConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> ConformanceStore:
        return LocalStore(tmp_path)


class TestHttpConformance(ProviderConformance):
    @pytest.fixture
    def store(self, http_server: HttpFileServer) -> ConformanceStore:
        return HttpStore(http_server)
