"""The plugin against a real FTP server: the shared conformance suite, then FTP specifics."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import Server
from storage_initializer_ftp import FtpLocation, FtpProvider

from storage_initializer.errors import AccessDeniedError, UsageError
from storage_initializer.provider import ProviderContext
from storage_initializer.testing import ConformanceStore, ProviderConformance


class FtpStore(ConformanceStore):
    provider_class = FtpProvider
    supports_markers = False  # files on a file system: no "dir/" marker objects

    def __init__(self, server: Server) -> None:
        super().__init__()
        self.server = server
        self.base = server.root / self.root_name
        self.base.mkdir()

    def env(self) -> Mapping[str, str]:
        return {}

    def uri_for(self, key: str) -> str:
        return f"{self.server.url}/{self.root_name}/{quote(key)}".rstrip("/")

    def put(self, key: str, data: bytes) -> None:
        path = self.base / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def replace(self, key: str, data: bytes) -> None:
        # MLST reports times to the second: a real replacement happens later than that.
        path = self.base / key
        later = path.stat().st_mtime + 2
        self.put(key, data)
        os.utime(path, (later, later))

    def malformed_uri(self) -> str:
        return f"{self.server.url}:99999/{self.root_name}/model.bin"

    def denied_env(self) -> Mapping[str, str]:
        return {"FTP_USERNAME": self.server.user, "FTP_PASSWORD": "not-the-password"}

    # fail_once / stall_once stay off: pyftpdlib serves files as they are, it injects no faults.


class TestFtpConformance(ProviderConformance):
    @pytest.fixture
    def store(self, ftp: Server) -> ConformanceStore:
        return FtpStore(ftp)


def provider(env: Mapping[str, str] | None = None) -> FtpProvider:
    return FtpProvider(ProviderContext(env=dict(env or {}), stall_timeout=10, connect_timeout=5, concurrency=2))


def test_uri_grammar() -> None:
    loc = FtpLocation.parse("ftp://user%40corp:p%2Fss@files.example.com:2121/models/iris/")
    assert (loc.host, loc.port, loc.path, loc.user, loc.password) == (
        "files.example.com", 2121, "/models/iris", "user@corp", "p/ss",
    )  # fmt: skip
    assert FtpLocation.parse("ftp://host").path == "/"
    assert FtpLocation.parse("ftp://host/a%20b").path == "/a b"
    for bad in ("ftp:///path", "ftp://host:99999/x", "ftp://host/x?y=1", "sftp://host/x", "ftp://host/a\r\nDELE b"):
        with pytest.raises(UsageError):
            FtpLocation.parse(bad)


def test_credentials_from_the_environment_and_from_the_uri(ftp: Server, tmp_path: Path) -> None:
    (ftp.root / "private.bin").write_bytes(b"secret weights")
    named = {"FTP_USERNAME": ftp.user, "FTP_PASSWORD": ftp.password}
    (obj,) = provider(named).list(f"{ftp.url}/private.bin")
    assert obj.size == len(b"secret weights")
    with pytest.raises(AccessDeniedError, match="FTP_USERNAME"):
        list(provider({**named, "FTP_PASSWORD": "wrong"}).list(f"{ftp.url}/private.bin"))
    with_userinfo = ftp.url.replace("ftp://", f"ftp://{ftp.user}:{ftp.password}@")
    (obj,) = provider({"FTP_PASSWORD": "wrong"}).list(f"{with_userinfo}/private.bin")  # the URI wins
    assert obj.key == "private.bin"


def test_version_is_modify_time_and_size(ftp: Server) -> None:
    path = ftp.root / "v.bin"
    path.write_bytes(b"12345")
    os.utime(path, (1_700_000_000, 1_700_000_000))
    (obj,) = provider().list(f"{ftp.url}/v.bin")
    assert obj.version == time.strftime("%Y%m%d%H%M%S", time.gmtime(1_700_000_000)) + ":5"
