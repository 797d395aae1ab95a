"""The azure-file provider against the Azure Files fake (no emulator exists).

URIs use the real host names; ``AZURE_STORAGE_CONNECTION_STRING`` with a
``FileEndpoint`` for the fake's account points the provider at the fake. The
fake verifies SharedKey and SAS signatures with the account key, so every
credential test is a real authentication.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from storage_initializer_azure import AzureFileProvider
from storage_initializer_azure._config import parse_uri

from storage_initializer.errors import AccessDeniedError, IntegrityError, NotFoundError, UnsafePathError
from storage_initializer.provider import ProviderContext
from storage_initializer.registry import Registry
from storage_initializer.runner import download
from storage_initializer.settings import Settings
from storage_initializer.testing import ConformanceStore, ProviderConformance
from tests.cli import run_cli, tree
from tests.servers.fake_azure_files import DEFAULT_ACCOUNT, FakeAzureFiles
from tests.servers.fault_proxy import ProxyFault

MiB = 1024 * 1024
HOST = f"{DEFAULT_ACCOUNT}.file.core.windows.net"
QUICK = {"STORAGE_INITIALIZER_RETRIES": "2", "STORAGE_INITIALIZER_RETRY_BACKOFF": "0.01"}


def uri(share: str, path: str = "", host: str = HOST) -> str:
    return f"https://{host}/{share}/{path}" if path else f"https://{host}/{share}"


def endpoint_only(fake: FakeAzureFiles) -> dict[str, str]:
    return {"AZURE_STORAGE_CONNECTION_STRING": f"FileEndpoint={fake.endpoint};"}


def provider(env: Mapping[str, str]) -> AzureFileProvider:
    return AzureFileProvider(ProviderContext(env=dict(env), stall_timeout=10, concurrency=4))


def fetch(env: Mapping[str, str], source: str, dest: Path, **overrides: object) -> None:
    settings = Settings(
        env=dict(env), concurrency=4, retries=1, retry_backoff=0.01, heartbeat_seconds=60
    ).with_overrides(**overrides)
    registry = Registry.from_classes({"az": AzureFileProvider})
    (result,) = download([(source, str(dest))], settings=settings, registry=registry)
    if result.error is not None:
        raise result.error


class FakeFilesStore(ConformanceStore):
    provider_class = AzureFileProvider

    def __init__(self, fake: FakeAzureFiles) -> None:
        super().__init__()
        self.fake = fake
        self.share = fake.create_share(self.root_name)

    def env(self) -> Mapping[str, str]:
        return self.fake.env()

    def malformed_uri(self) -> str:
        return "https://account.file.core.windows.net/"  # no share

    def uri_for(self, key: str) -> str:
        return uri(self.share, quote(key))  # a URL: the provider decodes its path

    def put(self, key: str, data: bytes) -> None:
        if key.endswith("/"):  # Azure Files has real directories: a marker is an (empty) directory
            self.fake.mkdir(self.share, key)
        else:
            self.fake.put(self.share, key, data)

    def fail_once(self, key: str) -> bool:
        self.fake.cut(f"{self.share}/{key}", after_bytes=1000)
        return True

    def stall_once(self, key: str, seconds: float) -> bool:
        self.fake.stall(f"{self.share}/{key}", after_bytes=1000, seconds=seconds)
        return True


class TestAzureFileConformance(ProviderConformance):
    @pytest.fixture
    def store(self, fake_azure_files: FakeAzureFiles) -> ConformanceStore:
        return FakeFilesStore(fake_azure_files)


# -- URI forms and tree semantics ----------------------------------------------------------------


@pytest.mark.parametrize(
    "host", [HOST, f"{DEFAULT_ACCOUNT}.z3.file.storage.azure.net", f"{DEFAULT_ACCOUNT}.file.core.usgovcloudapi.net"]
)
def test_uri_forms_reach_the_account(fake_azure_files: FakeAzureFiles, tmp_path: Path, host: str) -> None:
    share = fake_azure_files.create_share()
    fake_azure_files.put(share, "m/a.bin", b"a")
    fetch(fake_azure_files.env(), uri(share, "m", host), tmp_path)
    assert tree(tmp_path) == {"a.bin": b"a"}


def test_any_depth_relative_to_path_and_siblings_excluded(fake_azure_files: FakeAzureFiles, tmp_path: Path) -> None:
    fake = fake_azure_files
    share = fake.create_share()
    deep = "a/b/c/d/e/f/g/h.bin"  # KServe stops at depth 5 and keeps the share-relative path
    for path in (f"models/model/{deep}", "models/model/top.txt", "models/model/empty"):
        fake.put(share, path, b"" if path.endswith("empty") else path.encode())
    fake.put(share, "models/model-v2/x", b"sibling")
    fake.put(share, "models/model.bin", b"sibling file")
    fake.mkdir(share, "models/model/empty-dir")
    fetch(fake.env(), uri(share, "models/model"), tmp_path / "dir")
    assert tree(tmp_path / "dir") == {
        deep: f"models/model/{deep}".encode(),
        "top.txt": b"models/model/top.txt",
        "empty": b"",
    }
    fetch(fake.env(), uri(share), tmp_path / "root")
    assert len(tree(tmp_path / "root")) == 5


def test_only_empty_directories_is_an_error(fake_azure_files: FakeAzureFiles, tmp_path: Path) -> None:
    share = fake_azure_files.create_share()
    fake_azure_files.mkdir(share, "m/empty/deeper")
    with pytest.raises(NotFoundError, match="only directory markers"):
        fetch(fake_azure_files.env(), uri(share, "m"), tmp_path)
    fake_azure_files.mkdir(share, "n")
    with pytest.raises(NotFoundError, match="empty directory"):
        fetch(fake_azure_files.env(), uri(share, "n"), tmp_path)


def test_non_ascii_and_space_names(fake_azure_files: FakeAzureFiles, tmp_path: Path) -> None:
    share = fake_azure_files.create_share()
    fake_azure_files.put(share, "modèle v1/ü b/файл 1.bin", b"x")
    fake_azure_files.put(share, "modèle v1/a+b&c=d.txt", b"y")
    fetch(fake_azure_files.env(), uri(share, "mod%C3%A8le%20v1"), tmp_path / "encoded")
    assert tree(tmp_path / "encoded") == {"ü b/файл 1.bin": b"x", "a+b&c=d.txt": b"y"}
    fetch(fake_azure_files.env(), uri(share, "modèle v1/ü b/файл 1.bin"), tmp_path / "raw")
    assert tree(tmp_path / "raw") == {"файл 1.bin": b"x"}


def test_names_the_service_forbids_are_refused(fake_azure_files: FakeAzureFiles, tmp_path: Path) -> None:
    share = fake_azure_files.create_share()
    fake_azure_files.put(share, "model/ok", b"ok")
    fake_azure_files.put_unchecked(share, "model", "..", None)  # a directory named ".."
    dest = tmp_path / "deep" / "dest"
    with pytest.raises(UnsafePathError):
        fetch(fake_azure_files.env(), uri(share, "model"), dest)
    assert not (tmp_path / "deep" / "ok").exists() and not (tmp_path / "ok").exists()


# -- integrity, versions, faults --------------------------------------------------------------------


def test_large_file(fake_azure_files: FakeAzureFiles, tmp_path: Path) -> None:
    share = fake_azure_files.create_share()
    chunk = hashlib.sha256(b"seed").digest() * (MiB // 32)
    digest = fake_azure_files.put_repeated(share, "big/model.bin", chunk, 300)  # 300 MiB, held as 1 MiB
    result = run_cli([uri(share, "big/model.bin"), str(tmp_path)], fake_azure_files.env())
    assert result.returncode == 0, result.stderr
    sha = hashlib.sha256()
    with open(tmp_path / "model.bin", "rb") as handle:
        while block := handle.read(8 * MiB):
            sha.update(block)
    assert sha.hexdigest() == digest


def test_single_file_md5_is_verified(fake_azure_files: FakeAzureFiles, tmp_path: Path) -> None:
    share = fake_azure_files.create_share()
    fake_azure_files.put(share, "f.bin", b"actual", content_md5=hashlib.md5(b"other").digest())
    (obj,) = provider(fake_azure_files.env()).list(uri(share, "f.bin"))
    assert obj.checksums == {"md5": hashlib.md5(b"other").hexdigest()}
    with pytest.raises(IntegrityError, match="md5"):
        fetch(fake_azure_files.env(), uri(share, "f.bin"), tmp_path)
    assert tree(tmp_path) == {}


def test_version_change_mid_download(fake_azure_files: FakeAzureFiles, tmp_path: Path) -> None:
    share = fake_azure_files.create_share()
    fake_azure_files.put(share, "v.bin", b"o" * (4 * MiB))
    fake_azure_files.replace_during_download(f"{share}/v.bin", b"n" * (4 * MiB), after_bytes=100_000)
    env = {
        **fake_azure_files.env(),
        **QUICK,
        "STORAGE_INITIALIZER_CONCURRENCY": "1",
        "STORAGE_INITIALIZER_PART_SIZE": "1MiB",
        "STORAGE_INITIALIZER_MULTIPART_THRESHOLD": "1MiB",
    }
    result = run_cli([uri(share, "v.bin"), str(tmp_path)], env)
    assert result.returncode == 1 and "changed during the download" in result.stderr
    assert tree(tmp_path) == {}


def test_stalled_and_cut_transfers_are_retried(fake_azure_files: FakeAzureFiles, tmp_path: Path) -> None:
    share = fake_azure_files.create_share()
    data = bytes(range(256)) * 4096
    fake_azure_files.put(share, "m/stalls.bin", data)
    fake_azure_files.put(share, "m/cut.bin", data)
    fake_azure_files.stall(f"{share}/m/stalls.bin", after_bytes=5000, seconds=60)
    fake_azure_files.cut(f"{share}/m/cut.bin", after_bytes=300_000)
    env = {**fake_azure_files.env(), **QUICK, "STORAGE_INITIALIZER_STALL_TIMEOUT": "0.5"}
    result = run_cli([uri(share, "m"), str(tmp_path)], env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("retrying") == 2
    assert tree(tmp_path) == {"stalls.bin": data, "cut.bin": data}


def test_503_on_listing_and_read_is_retried(
    fake_azure_files: FakeAzureFiles, fault_proxy_factory: Any, tmp_path: Path
) -> None:
    share = fake_azure_files.create_share()
    fake_azure_files.put(share, "m/sub/a.bin", b"a" * 300_000)
    proxy = fault_proxy_factory(fake_azure_files.port)
    proxy.add(ProxyFault("status", status=503, match="comp=list"))
    proxy.add(ProxyFault("status", status=503, match="a.bin"))
    conn = f"AccountName={DEFAULT_ACCOUNT};AccountKey={fake_azure_files.key};FileEndpoint={proxy.url}/{DEFAULT_ACCOUNT}"
    result = run_cli([uri(share, "m"), str(tmp_path)], {"AZURE_STORAGE_CONNECTION_STRING": conn, **QUICK})
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path) == {"sub/a.bin": b"a" * 300_000}
    assert len(proxy.injected) == 2 and result.stderr.count("retrying") == 2


def test_retry_after_is_honoured(fake_azure_files: FakeAzureFiles, fault_proxy_factory: Any, tmp_path: Path) -> None:
    """503 + Retry-After: 2 on the listing and on a read: neither is asked again sooner."""
    share = fake_azure_files.create_share()
    fake_azure_files.put(share, "ra/a.bin", b"a" * 300_000)
    proxy = fault_proxy_factory(fake_azure_files.port)
    proxy.add(ProxyFault("status", status=503, retry_after="2", match="comp=list"))
    proxy.add(ProxyFault("status", status=503, retry_after="2", match="a.bin"))
    conn = f"AccountName={DEFAULT_ACCOUNT};AccountKey={fake_azure_files.key};FileEndpoint={proxy.url}/{DEFAULT_ACCOUNT}"
    env = {"AZURE_STORAGE_CONNECTION_STRING": conn, **QUICK, "STORAGE_INITIALIZER_RETRY_BACKOFF": "0.05"}
    result = run_cli([uri(share, "ra"), str(tmp_path)], env)
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path) == {"a.bin": b"a" * 300_000}
    assert len(proxy.injected) == 2
    assert proxy.retry_gap("comp=list") >= 1.95 and proxy.retry_gap("a.bin") >= 1.95


def test_listing_is_streamed(fake_azure_files: FakeAzureFiles) -> None:
    share = fake_azure_files.create_share()
    for i in range(12_000):
        fake_azure_files.put(share, f"m/{i:05d}", b"", content_md5=False)
    listing = iter(provider(fake_azure_files.env()).list(uri(share, "m")))
    assert next(listing).key == "00000"
    lists = [r for r in fake_azure_files.requests if r.query.get("comp") == "list"]
    assert len(lists) == 1  # one page of 5000 asked for, the rest not yet
    assert sum(1 for _ in listing) == 11_999
    assert len([r for r in fake_azure_files.requests if r.query.get("comp") == "list"]) == 3


def test_connections_are_reused(fake_azure_files: FakeAzureFiles, tmp_path: Path) -> None:
    share = fake_azure_files.create_share()
    for i in range(20):
        fake_azure_files.put(share, f"m/{i}", b"x" * 1000)
    fetch(fake_azure_files.env(), uri(share, "m"), tmp_path, concurrency=1)
    assert len(tree(tmp_path)) == 20
    assert fake_azure_files.connections_opened <= 2  # keep-alive: not one TCP (TLS) handshake per file


# -- credentials ------------------------------------------------------------------------------------


def test_access_key_variables(fake_azure_files: FakeAzureFiles, tmp_path: Path) -> None:
    share = fake_azure_files.create_share()
    fake_azure_files.put(share, "m/f", b"f")
    for name in ("AZURE_STORAGE_ACCESS_KEY", "AZ_STORAGE_ACCESS_KEY"):
        fetch({**endpoint_only(fake_azure_files), name: fake_azure_files.key}, uri(share, "m"), tmp_path / name)
        assert tree(tmp_path / name) == {"f": b"f"}


def test_no_credentials_is_refused_before_any_request(fake_azure_files: FakeAzureFiles, tmp_path: Path) -> None:
    share = fake_azure_files.create_share()
    with pytest.raises(AccessDeniedError, match="no anonymous access") as info:
        fetch(endpoint_only(fake_azure_files), uri(share, "m"), tmp_path)
    assert "AZURE_STORAGE_ACCESS_KEY" in str(info.value)
    assert fake_azure_files.requests == []


def test_sas_in_uri_and_connection_string(fake_azure_files: FakeAzureFiles, tmp_path: Path) -> None:
    share = fake_azure_files.create_share()
    fake_azure_files.put(share, "m/f", b"f")
    token = fake_azure_files.share_sas(share)
    fetch(endpoint_only(fake_azure_files), f"{uri(share, 'm')}?{token}", tmp_path / "uri")
    assert tree(tmp_path / "uri") == {"f": b"f"}
    conn = f"FileEndpoint={fake_azure_files.endpoint};SharedAccessSignature={fake_azure_files.account_sas()}"
    fetch({"AZURE_STORAGE_CONNECTION_STRING": conn}, uri(share, "m"), tmp_path / "conn")
    assert tree(tmp_path / "conn") == {"f": b"f"}
    read_only = fake_azure_files.share_sas(share, permission="r")
    with pytest.raises(AccessDeniedError, match="lack a permission"):
        fetch(endpoint_only(fake_azure_files), f"{uri(share, 'm')}?{read_only}", tmp_path / "ro")


def test_wrong_key_is_reported_without_the_secret(fake_azure_files: FakeAzureFiles, tmp_path: Path) -> None:
    share = fake_azure_files.create_share()
    fake_azure_files.put(share, "m/f", b"f")
    wrong = "d3Jvbmcta2V5LWZvci10ZXN0cy13cm9uZy1rZXktZm9yLXRlc3Rz"
    env = {**endpoint_only(fake_azure_files), "AZURE_STORAGE_ACCESS_KEY": wrong}
    result = run_cli([uri(share, "m"), str(tmp_path)], env)
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert "refused the credentials (403 AuthenticationFailed)" in line and "AZURE_STORAGE_ACCESS_KEY" in line
    assert wrong not in result.stderr


def test_client_id_selects_azure_ad_with_backup_intent() -> None:
    """Azure AD is unreachable here: this shows the credential and token intent the client uses."""
    files = provider({"AZURE_CLIENT_ID": "cid"})
    access, client = files.service_client(parse_uri(f"https://{HOST}/share/m", "file"))
    assert access.token is not None and access.token.kind == "managed_identity"
    assert type(client.credential).__name__ == "ManagedIdentityCredential"
    assert client.file_request_intent == "backup"
    files.close()


def test_access_key_beats_client_id_as_in_kserve(fake_azure_files: FakeAzureFiles, tmp_path: Path) -> None:
    """KServe's Azure Files download uses AZURE_STORAGE_ACCESS_KEY whatever AZURE_CLIENT_ID says
    (AKS workload identity injects AZURE_CLIENT_ID into pods): the key must still be used."""
    share = fake_azure_files.create_share()
    fake_azure_files.put(share, "m/f", b"keyed bytes")
    for client_id in ({"AZURE_CLIENT_ID": "cid"}, {"AZ_CLIENT_ID": "cid", "AZ_TENANT_ID": "tid"}):
        dest = tmp_path / next(iter(client_id))
        env = {**endpoint_only(fake_azure_files), **client_id, "AZURE_STORAGE_ACCESS_KEY": fake_azure_files.key}
        result = run_cli([uri(share, "m"), str(dest)], {**env, **QUICK})
        assert result.returncode == 0, result.stderr
        assert tree(dest) == {"f": b"keyed bytes"}
        assert "account key in AZURE_STORAGE_ACCESS_KEY" in result.stderr


# -- errors say what to check ------------------------------------------------------------------------


def test_missing_share_path_and_firewall(fake_azure_files: FakeAzureFiles, tmp_path: Path) -> None:
    share = fake_azure_files.create_share()
    fake_azure_files.put(share, "m/f", b"f")
    with pytest.raises(NotFoundError, match="share does not exist"):
        fetch(fake_azure_files.env(), uri("no-such-share", "m"), tmp_path / "a")
    with pytest.raises(NotFoundError, match=r"not found \(404 ParentNotFound\)"):
        fetch(fake_azure_files.env(), uri(share, "nothing/here"), tmp_path / "b")
    fake_azure_files.deny_all = True
    with pytest.raises(AccessDeniedError, match="AuthorizationFailure") as info:
        fetch(fake_azure_files.env(), uri(share, "m"), tmp_path / "c")
    assert "network rules" in str(info.value)


def test_unreachable_endpoint(tmp_path: Path) -> None:
    env = {
        "AZURE_STORAGE_CONNECTION_STRING": f"FileEndpoint=http://127.0.0.1:9/{DEFAULT_ACCOUNT};AccountKey=a2V5",
        "STORAGE_INITIALIZER_RETRIES": "0",
    }
    result = run_cli([uri("share", "m"), str(tmp_path)], env)
    assert result.returncode == 1
    assert f"cannot reach http://127.0.0.1:9/{DEFAULT_ACCOUNT}: connection refused" in result.stderr
