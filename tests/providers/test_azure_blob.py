"""The azure-blob provider against Azurite, Microsoft's real Blob emulator.

URIs use the real host names (``https://devstoreaccount1.blob.core.windows.net/...``);
``AZURE_STORAGE_CONNECTION_STRING`` for that account points the provider at
Azurite. A connection string holding only ``BlobEndpoint`` keeps the endpoint
and lets each test prove another credential variable on its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from azure.storage.blob import ContainerSasPermissions, ContentSettings, generate_container_sas
from storage_initializer_azure import AzureBlobProvider
from storage_initializer_azure._config import azure_env, choose_access, choose_token, parse_uri

from storage_initializer.errors import (
    AccessDeniedError,
    NotFoundError,
    ObjectChangedError,
    StorageInitializerError,
    UsageError,
)
from storage_initializer.provider import ProviderContext, RemoteObject
from storage_initializer.registry import Registry
from storage_initializer.runner import download
from storage_initializer.settings import Settings
from storage_initializer.testing import ConformanceStore, ProviderConformance
from tests.cli import run_cli, tree
from tests.servers.azurite import ACCOUNT_KEY, ACCOUNT_NAME, Azurite, MiB
from tests.servers.base import FakeHandler, FakeServer
from tests.servers.fault_proxy import ProxyFault

HOST = f"{ACCOUNT_NAME}.blob.core.windows.net"


def uri(container: str, path: str = "", host: str = HOST) -> str:
    return f"https://{host}/{container}/{path}" if path else f"https://{host}/{container}"


def endpoint_only(azurite: Azurite) -> dict[str, str]:
    """A connection string that names the endpoint but carries no credential."""
    return {"AZURE_STORAGE_CONNECTION_STRING": f"BlobEndpoint={azurite.endpoint};"}


def sas(container: str, permission: str = "rl", expiry: timedelta = timedelta(hours=1)) -> str:
    return generate_container_sas(
        ACCOUNT_NAME,
        container,
        account_key=ACCOUNT_KEY,
        permission=ContainerSasPermissions.from_string(permission),
        expiry=datetime.now(timezone.utc) + expiry,
    )


def provider(env: Mapping[str, str]) -> AzureBlobProvider:
    return AzureBlobProvider(ProviderContext(env=dict(env), stall_timeout=10, concurrency=4))


def fetch(env: Mapping[str, str], source: str, dest: Path, cls: type[AzureBlobProvider] = AzureBlobProvider) -> None:
    settings = Settings(env=dict(env), concurrency=4, retries=1, retry_backoff=0.01, heartbeat_seconds=60)
    (result,) = download([(source, str(dest))], settings=settings, registry=Registry.from_classes({"az": cls}))
    if result.error is not None:
        raise result.error


class AzuriteStore(ConformanceStore):
    provider_class = AzureBlobProvider

    def __init__(self, azurite: Azurite) -> None:
        super().__init__()
        self.azurite = azurite
        self.container = azurite.create_container(self.root_name)

    def env(self) -> Mapping[str, str]:
        return self.azurite.env()

    def malformed_uri(self) -> str:
        return "https://account.blob.core.windows.net/"  # no container

    def uri_for(self, key: str) -> str:
        return uri(self.container, quote(key))  # a URL: the provider decodes its path

    def put(self, key: str, data: bytes) -> None:
        self.azurite.upload(self.container, key, data)

    def denied_env(self) -> Mapping[str, str]:
        wrong = base64.b64encode(b"not the account key, 64 bytes long....................").decode()
        return {"AZURE_STORAGE_CONNECTION_STRING": self.azurite.connection_string.replace(ACCOUNT_KEY, wrong)}

    # No fail_once / stall_once: Azurite injects no faults (the Azure Files fake does).


class TestAzureBlobConformance(ProviderConformance):
    @pytest.fixture
    def store(self, azurite: Azurite) -> ConformanceStore:
        return AzuriteStore(azurite)


# -- URI forms -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [HOST, f"{ACCOUNT_NAME}.z12.blob.storage.azure.net", f"{ACCOUNT_NAME}.blob.core.chinacloudapi.cn"],
)
def test_uri_forms_reach_the_account(azurite: Azurite, tmp_path: Path, host: str) -> None:
    container = azurite.create_container()
    azurite.upload_tree(container, {"m/a.bin": b"a", "m/sub/b": b"bb"})
    fetch(azurite.env(), uri(container, "m", host), tmp_path)
    assert tree(tmp_path) == {"a.bin": b"a", "sub/b": b"bb"}


def test_uri_endpoints_without_connection_string() -> None:
    for host in ("acct.z7.blob.storage.azure.net", "acct.blob.core.usgovcloudapi.net"):
        target = parse_uri(f"https://{host}/cont/p%20q/r?sv=2024&sig=abc", "blob")
        access = choose_access(target, {})
        assert access.endpoint == f"https://{host}" and access.sas == "sv=2024&sig=abc"
        assert (target.account, target.container, target.path) == ("acct", "cont", "p q/r")


@pytest.mark.parametrize(
    "bad",
    [
        "https://acct.blob.core.windows.net/",
        "https://acct.blob.core.windows.net/Upper/x",
        "https://acct.file.core.windows.net/c/x",
        "http://acct.blob.core.windows.net/c/x",
        "https://acct.blob.core.windows.net/c/x?foo=bar",
    ],
)
def test_malformed_uris_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError):
        provider({}).validate(bad)


# -- directory semantics -----------------------------------------------------------------------


def test_object_wins_over_directory_and_root_lists_everything(azurite: Azurite, tmp_path: Path) -> None:
    container = azurite.create_container()
    azurite.upload_tree(container, {"model": b"the object", "model/x": b"dir"})
    fetch(azurite.env(), uri(container, "model"), tmp_path / "one")
    assert tree(tmp_path / "one") == {"model": b"the object"}
    fetch(azurite.env(), uri(container, "model/"), tmp_path / "dir")
    assert tree(tmp_path / "dir") == {"x": b"dir"}
    other = azurite.create_container()
    azurite.upload_tree(other, {"model": b"m", "other/y": b"y"})
    fetch(azurite.env(), uri(other), tmp_path / "all")
    assert tree(tmp_path / "all") == {"model": b"m", "other/y": b"y"}


def test_adls_folder_blobs_are_markers(azurite: Azurite, tmp_path: Path) -> None:
    container = azurite.create_container()
    client = azurite.service().get_container_client(container)
    client.upload_blob("m/folder", b"", metadata={"hdi_isfolder": "true"})
    client.upload_blob("m", b"", metadata={"hdi_isfolder": "true"})
    azurite.upload(container, "m/folder/w.bin", b"w")
    listed = {o.key: o for o in provider(azurite.env()).list(uri(container, "m"))}
    assert listed["folder/"].is_dir_marker and listed["folder/w.bin"].size == 1
    fetch(azurite.env(), uri(container, "m"), tmp_path)
    assert tree(tmp_path) == {"folder/w.bin": b"w"}


def test_non_ascii_and_space_keys(azurite: Azurite, tmp_path: Path) -> None:
    container = azurite.create_container()
    azurite.upload_tree(container, {"modèle v1/ü b/файл 1.bin": b"x", "modèle v1/a+b&c=d.txt": b"y"})
    fetch(azurite.env(), uri(container, "mod%C3%A8le%20v1"), tmp_path / "encoded")
    assert tree(tmp_path / "encoded") == {"ü b/файл 1.bin": b"x", "a+b&c=d.txt": b"y"}
    fetch(azurite.env(), uri(container, "modèle v1/ü b/файл 1.bin"), tmp_path / "raw")
    assert tree(tmp_path / "raw") == {"файл 1.bin": b"x"}


def test_traversal_key_never_writes_outside_dest(azurite: Azurite, tmp_path: Path) -> None:
    container = azurite.create_container()
    # Azure (and Azurite) turn '\' into '/', so this blob is named "model/a/../../evil".
    azurite.upload(container, "model/a\\..\\..\\evil", b"evil")
    azurite.upload(container, "model/ok", b"ok")
    assert any(o.key == "a/../../evil" for o in provider(azurite.env()).list(uri(container, "model")))
    dest = tmp_path / "deep" / "dest"
    result = run_cli([uri(container, "model"), str(dest)], azurite.env())
    assert result.returncode != 0
    assert "evil" in result.stderr and "ERROR" in result.stderr
    assert not [p for p in tmp_path.rglob("evil")]


# -- integrity and versions ----------------------------------------------------------------------


def test_large_object_ranged_and_md5_verified(azurite: Azurite, tmp_path: Path) -> None:
    container = azurite.create_container()
    chunk = hashlib.sha256(b"seed").digest() * (4 * MiB // 32)
    digest = azurite.upload_repeated(container, "big/model.safetensors", chunk, 75)  # 300 MiB
    (obj,) = provider(azurite.env()).list(uri(container, "big/model.safetensors"))
    assert obj.size == 300 * MiB and obj.checksums["md5"]
    result = run_cli([uri(container, "big"), str(tmp_path)], {**azurite.env(), "STORAGE_INITIALIZER_CONCURRENCY": "4"})
    assert result.returncode == 0, result.stderr
    sha = hashlib.sha256()
    with open(tmp_path / "model.safetensors", "rb") as handle:
        while block := handle.read(8 * MiB):
            sha.update(block)
    assert sha.hexdigest() == digest


def test_wrong_content_md5_is_an_integrity_error(azurite: Azurite, tmp_path: Path) -> None:
    container = azurite.create_container()
    azurite.upload(container, "f.bin", b"actual bytes")
    # Set Blob Properties stores whatever Content-MD5 it is given (a buggy uploader's).
    bad_md5 = bytearray(hashlib.md5(b"something else").digest())
    azurite.service().get_blob_client(container, "f.bin").set_http_headers(ContentSettings(content_md5=bad_md5))
    quick = {"STORAGE_INITIALIZER_RETRIES": "1", "STORAGE_INITIALIZER_RETRY_BACKOFF": "0.01"}
    result = run_cli([uri(container, "f.bin"), str(tmp_path)], {**azurite.env(), **quick})
    assert result.returncode == 1 and "md5" in result.stderr
    assert tree(tmp_path) == {}


class _ReplacingProvider(AzureBlobProvider):
    """Replaces the blob right after the first ranged read starts (a writer racing the download)."""

    azurite: Azurite
    replaced = False

    def _replace_once(self, uri: str, obj: RemoteObject) -> None:
        if not type(self).replaced:
            type(self).replaced = True
            container, name = uri.split("/")[3], obj.extra
            self.azurite.upload(container, name, b"n" * (obj.size or 0))

    def http_range(self, uri: str, obj: RemoteObject, start: int, end: int | None) -> Any:
        request = super().http_range(uri, obj, start, end)  # the engine's event loop reads the parts
        self._replace_once(uri, obj)
        return request

    def open_range(self, uri: str, obj: RemoteObject, start: int, end: int | None) -> Any:
        stream = super().open_range(uri, obj, start, end)
        self._replace_once(uri, obj)
        return stream


def test_version_change_mid_download_is_detected(azurite: Azurite, tmp_path: Path) -> None:
    container = azurite.create_container()
    azurite.upload(container, "v.bin", b"o" * (3 * MiB))
    _ReplacingProvider.azurite = azurite
    settings = Settings(
        env=azurite.env(), concurrency=1, part_size=MiB, multipart_threshold=MiB, retries=1, heartbeat_seconds=60
    )
    registry = Registry.from_classes({"az": _ReplacingProvider})
    (result,) = download([(uri(container, "v.bin"), str(tmp_path))], settings=settings, registry=registry)
    assert isinstance(result.error, ObjectChangedError)
    assert tree(tmp_path) == {}


def test_page_and_append_blobs(azurite: Azurite, tmp_path: Path) -> None:
    """Page blobs (sparse: unwritten pages read as zeros) in ranges, append blobs whole."""
    container = azurite.create_container()
    client = azurite.service().get_container_client(container)
    page = client.get_blob_client("m/page.bin")
    page.create_page_blob(size=3 * MiB)
    written = bytes(range(256)) * 2048  # 512 KiB at offset 1 MiB
    page.upload_page(written, offset=MiB, length=len(written))
    appended = client.get_blob_client("m/append.log")
    appended.create_append_blob()
    appended.append_block(b"first\n")
    appended.append_block(b"second\n")
    parts = {"STORAGE_INITIALIZER_PART_SIZE": "1MiB", "STORAGE_INITIALIZER_MULTIPART_THRESHOLD": "1MiB"}
    result = run_cli([uri(container, "m"), str(tmp_path)], {**azurite.env(), **parts})
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path) == {
        "append.log": b"first\nsecond\n",
        "page.bin": b"\0" * MiB + written + b"\0" * (2 * MiB - len(written)),
    }


def test_503_and_resets_are_retried(azurite: Azurite, fault_proxy_factory: Any, tmp_path: Path) -> None:
    container = azurite.create_container()
    azurite.upload_tree(container, {"m/a.bin": b"a" * 300_000, "m/b.bin": b"b"})
    proxy = fault_proxy_factory(azurite.port)
    proxy.add(ProxyFault("status", status=503, match="comp=list"))
    proxy.add(ProxyFault("status", status=503, match="a.bin"))
    proxy.add(ProxyFault("reset", after_bytes=100_000, match="a.bin"))
    conn = f"AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};BlobEndpoint={proxy.url}/{ACCOUNT_NAME}"
    env = {"AZURE_STORAGE_CONNECTION_STRING": conn, "STORAGE_INITIALIZER_RETRIES": "5"}
    result = run_cli([uri(container, "m"), str(tmp_path)], env)
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path) == {"a.bin": b"a" * 300_000, "b.bin": b"b"}
    assert len(proxy.injected) == 3 and result.stderr.count("retrying") == 3


def test_lower_case_no_proxy_wins(azurite: Azurite, tmp_path: Path) -> None:
    """``no_proxy`` beats ``NO_PROXY`` here as for every provider (Azure read ``NO_PROXY`` first)."""
    container = azurite.create_container()
    azurite.upload_tree(container, {"np/a.bin": b"a"})
    dead_proxy = {**azurite.env(), "HTTP_PROXY": "http://127.0.0.1:9", "STORAGE_INITIALIZER_RETRIES": "0"}
    exempt = {**dead_proxy, "no_proxy": "127.0.0.1", "NO_PROXY": "x.example"}
    direct = run_cli([uri(container, "np"), str(tmp_path / "a")], exempt)
    assert direct.returncode == 0, direct.stderr
    assert tree(tmp_path / "a") == {"a.bin": b"a"}
    proxied = {**dead_proxy, "no_proxy": "x.example", "NO_PROXY": "127.0.0.1"}
    assert run_cli([uri(container, "np"), str(tmp_path / "b")], proxied).returncode == 1  # through the dead proxy


def test_retry_after_is_honoured(azurite: Azurite, fault_proxy_factory: Any, tmp_path: Path) -> None:
    """503 + Retry-After: 2 on the listing and on a read: neither is asked again sooner."""
    container = azurite.create_container()
    azurite.upload_tree(container, {"ra/a.bin": b"a" * 300_000})
    proxy = fault_proxy_factory(azurite.port)
    proxy.add(ProxyFault("status", status=503, retry_after="2", match="comp=list"))
    proxy.add(ProxyFault("status", status=503, retry_after="2", match="a.bin"))
    conn = f"AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};BlobEndpoint={proxy.url}/{ACCOUNT_NAME}"
    env = {"AZURE_STORAGE_CONNECTION_STRING": conn, "STORAGE_INITIALIZER_RETRY_BACKOFF": "0.05"}
    result = run_cli([uri(container, "ra"), str(tmp_path)], env)
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path) == {"a.bin": b"a" * 300_000}
    assert len(proxy.injected) == 2
    assert proxy.retry_gap("comp=list") >= 1.95 and proxy.retry_gap("a.bin") >= 1.95


# -- listing streams ------------------------------------------------------------------------------


def test_listing_is_streamed_page_by_page(azurite: Azurite) -> None:
    container = azurite.create_container()
    azurite.upload_tree(container, {f"m/{i}": b"x" for i in range(6)})
    blob_provider = provider(azurite.env())
    blob_provider.page_size = 2  # type: ignore[misc]
    listing = iter(blob_provider.list(uri(container, "m")))
    assert next(listing).key == "0"
    azurite.upload(container, "m/9", b"late")  # only a lazily fetched later page can see it
    assert [o.key for o in listing] == ["1", "2", "3", "4", "5", "9"]


# -- credentials: each variable takes effect ----------------------------------------------------------


def test_access_key_variable(azurite: Azurite, tmp_path: Path) -> None:
    container = azurite.create_container()
    azurite.upload(container, "m/f", b"f")
    for name in ("AZURE_STORAGE_ACCESS_KEY", "AZ_STORAGE_ACCESS_KEY"):
        fetch({**endpoint_only(azurite), name: ACCOUNT_KEY}, uri(container, "m"), tmp_path / name)
        assert tree(tmp_path / name) == {"f": b"f"}
    # Without the key the container is private: the same request is refused (Azure says
    # 404 to anonymous requests on private containers, Azurite 403) and the hint says what to set.
    with pytest.raises((NotFoundError, AccessDeniedError)) as info:
        fetch(endpoint_only(azurite), uri(container, "m"), tmp_path / "anon")
    assert "AZURE_STORAGE_ACCESS_KEY" in str(info.value)


def test_sas_in_uri_and_in_connection_string(azurite: Azurite, tmp_path: Path) -> None:
    container = azurite.create_container()
    azurite.upload(container, "m/f", b"f")
    token = sas(container)
    fetch(endpoint_only(azurite), f"{uri(container, 'm')}?{token}", tmp_path / "uri")
    assert tree(tmp_path / "uri") == {"f": b"f"}
    conn = {"AZURE_STORAGE_CONNECTION_STRING": f"BlobEndpoint={azurite.endpoint};SharedAccessSignature={token}"}
    fetch(conn, uri(container, "m"), tmp_path / "conn")
    assert tree(tmp_path / "conn") == {"f": b"f"}


def test_sas_with_response_header_overrides_and_user_delegation_fields(azurite: Azurite, tmp_path: Path) -> None:
    # A SAS may carry rscc/rscd/rsct... (response headers), ses (encryption scope) and, for a
    # user delegation SAS (Azure AD, shared keys disabled), skoid/sktid/skt/ske/sks/skv.
    container = azurite.create_container()
    azurite.upload(container, "m/f", b"f")
    token = generate_container_sas(
        ACCOUNT_NAME,
        container,
        account_key=ACCOUNT_KEY,
        permission=ContainerSasPermissions.from_string("rl"),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
        cache_control="no-cache",
        content_type="application/octet-stream",
    )
    result = run_cli([f"{uri(container, 'm')}?{token}", str(tmp_path / "out")], endpoint_only(azurite))
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == {"f": b"f"}
    delegation = (
        "skoid=00000000-0000-0000-0000-000000000001&sktid=00000000-0000-0000-0000-000000000002"
        "&skt=2030-01-01T00%3A00%3A00Z&ske=2030-01-02T00%3A00%3A00Z&sks=b&skv=2025-01-05"
        "&sv=2025-01-05&sr=c&sp=rl&se=2030-01-02T00%3A00%3A00Z&ses=scope1&sig=c2lnbmF0dXJlMTIzNDU2"
    )
    assert parse_uri(f"{uri('c1x', 'm')}?{delegation}", "blob").sas == delegation


def test_sas_without_list_permission_says_so(azurite: Azurite, tmp_path: Path) -> None:
    container = azurite.create_container()
    azurite.upload(container, "m/f", b"f")
    read_only = sas(container, "r")
    fetch(endpoint_only(azurite), f"{uri(container, 'm/f')}?{read_only}", tmp_path)  # one blob: read suffices
    with pytest.raises(AccessDeniedError) as info:
        fetch(endpoint_only(azurite), f"{uri(container, 'm')}?{read_only}", tmp_path / "dir")
    assert "permission" in str(info.value) and "SAS in the URI" in str(info.value)


def test_anonymous_public_container(azurite: Azurite, tmp_path: Path) -> None:
    container = azurite.create_container(public=True)
    azurite.upload(container, "m/f", b"public")
    fetch(endpoint_only(azurite), uri(container, "m"), tmp_path)
    assert tree(tmp_path) == {"f": b"public"}


def test_connection_string_for_another_account_is_ignored() -> None:
    target = parse_uri("https://other.blob.core.windows.net/cont/m", "blob")
    env = {
        "AZURE_STORAGE_CONNECTION_STRING": f"AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY}",
        "AZURE_STORAGE_ACCESS_KEY": ACCOUNT_KEY,
    }
    access = choose_access(target, env)
    assert access.endpoint == "https://other.blob.core.windows.net"
    assert access.source == "account key in AZURE_STORAGE_ACCESS_KEY"


def test_connection_string_endpoint_rules() -> None:
    zone = parse_uri(f"https://{ACCOUNT_NAME}.z5.blob.storage.azure.net/cont/m", "blob")
    key_only = {"AZURE_STORAGE_CONNECTION_STRING": f"AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY}"}
    assert choose_access(zone, key_only).endpoint == f"https://{ACCOUNT_NAME}.z5.blob.storage.azure.net"
    suffix = {
        "AZURE_STORAGE_CONNECTION_STRING": key_only["AZURE_STORAGE_CONNECTION_STRING"] + ";EndpointSuffix=azs.local"
    }
    assert choose_access(zone, suffix).endpoint == f"https://{ACCOUNT_NAME}.blob.azs.local"


def test_use_development_storage() -> None:
    target = parse_uri(f"https://{HOST}/cont/m", "blob")
    access = choose_access(target, {"AZURE_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true"})
    assert access.endpoint == f"http://127.0.0.1:10000/{ACCOUNT_NAME}" and access.key == ACCOUNT_KEY


@pytest.mark.parametrize(
    ("env", "credential_type"),
    [
        ({"AZURE_CLIENT_ID": "cid"}, "ManagedIdentityCredential"),
        ({"AZ_CLIENT_ID": "cid", "AZ_TENANT_ID": "tid", "AZ_CLIENT_SECRET": "s3cr3t-value"}, "ClientSecretCredential"),
        (
            {"AZURE_CLIENT_ID": "cid", "AZURE_TENANT_ID": "tid", "AZURE_FEDERATED_TOKEN_FILE": "/var/run/token"},
            "WorkloadIdentityCredential",
        ),
    ],
)
def test_client_id_selects_an_azure_ad_credential(env: dict[str, str], credential_type: str) -> None:
    """Azure AD cannot be reached here: this proves which credential the client is built with.

    AZURE_CLIENT_ID beats AZURE_STORAGE_ACCESS_KEY, as in KServe.
    """
    blob_provider = provider({**env, "AZURE_STORAGE_ACCESS_KEY": ACCOUNT_KEY})
    access, client = blob_provider.service_client(parse_uri(f"https://{HOST}/cont/m", "blob"))
    assert access.token is not None and access.key is None
    assert type(client.credential).__name__ == credential_type
    blob_provider.close()


class _FakeImds:
    """Azure's instance metadata token endpoint, as ManagedIdentityCredential calls it.

    azure-identity sends IMDS requests to ``AZURE_POD_IDENTITY_AUTHORITY_HOST``
    when it is set. The token is a JWT that Azurite's basic OAuth accepts
    (issuer, audience, lifetime; the signature is not checked).
    """

    def __init__(self) -> None:
        self.requests: list[str] = []
        fake = self

        class Handler(FakeHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                fake.requests.append(self.path)
                now = int(time.time())
                claims = {"aud": "https://storage.azure.com", "iss": "https://sts.windows.net/tid/"}
                claims |= {"iat": now, "nbf": now - 60, "exp": now + 3600}
                token = ".".join([_b64({"alg": "none", "typ": "JWT"}), _b64(claims), "sig"])
                body = json.dumps(
                    {"access_token": token, "expires_in": "3600", "expires_on": str(now + 3600), "token_type": "Bearer"}
                ).encode()
                self.send(200, {"Content-Type": "application/json"}, body)

        self.server = FakeServer(Handler, self)
        self.url = self.server.url

    def stop(self) -> None:
        self.server.stop()


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_managed_identity_end_to_end(azurite_https: Azurite, tmp_path: Path) -> None:
    """AZURE_CLIENT_ID -> managed identity token -> Bearer requests, over TLS with REQUESTS_CA_BUNDLE.

    The token comes from a local IMDS stand-in and Azurite checks its claims, not
    its signature: what this proves is our side (credential choice, token
    request with the client id, bearer auth, CA bundle), not Azure AD itself.
    """
    container = azurite_https.create_container()
    azurite_https.upload(container, "m/f.bin", b"by token")
    imds = _FakeImds()
    try:
        env = {
            "AZURE_STORAGE_CONNECTION_STRING": f"BlobEndpoint={azurite_https.endpoint};",  # endpoint only
            "AZURE_CLIENT_ID": "my-client-id",
            "AZURE_POD_IDENTITY_AUTHORITY_HOST": imds.url,
            "REQUESTS_CA_BUNDLE": str(azurite_https.ca_path),
            "STORAGE_INITIALIZER_RETRIES": "0",
        }
        result = run_cli([uri(container, "m"), str(tmp_path / "ok")], env)
        assert result.returncode == 0, result.stderr
        assert tree(tmp_path / "ok") == {"f.bin": b"by token"}
        assert "managed identity for client my-client-id" in result.stderr
        assert imds.requests and "client_id=my-client-id" in imds.requests[0]
        untrusted = {k: v for k, v in env.items() if k != "REQUESTS_CA_BUNDLE"}
        result = run_cli([uri(container, "m"), str(tmp_path / "untrusted")], untrusted)
        assert result.returncode == 1 and "TLS verification failed" in result.stderr
        assert "set REQUESTS_CA_BUNDLE" in result.stderr
        assert "set REQUESTS_CA_BUNDLE" in result.stderr
    finally:
        imds.stop()


def test_token_choice_follows_default_azure_credential_order() -> None:
    base = {"AZURE_CLIENT_ID": "cid", "AZURE_TENANT_ID": "tid", "AZURE_AUTHORITY_HOST": "login.chinacloudapi.cn"}
    cert = {"AZURE_CLIENT_CERTIFICATE_PATH": "/c.pem", "AZURE_CLIENT_CERTIFICATE_PASSWORD": "pw-secret"}
    token_file = {"AZURE_FEDERATED_TOKEN_FILE": "/var/run/secrets/azure/tokens/azure-identity-token"}
    assert choose_token({"AZURE_TENANT_ID": "tid"}) is None  # no client id: no Azure AD (as KServe)
    secret = choose_token({**base, **cert, **token_file, "AZURE_CLIENT_SECRET": "s"})
    assert secret is not None and (secret.kind, secret.authority) == ("client_secret", "login.chinacloudapi.cn")
    by_cert = choose_token({**base, **cert, **token_file})
    assert by_cert is not None and (by_cert.kind, by_cert.certificate_password) == ("certificate", "pw-secret")
    workload = choose_token({**base, **token_file})
    assert workload is not None and (workload.kind, workload.token_file) == (
        "workload_identity",
        token_file["AZURE_FEDERATED_TOKEN_FILE"],
    )
    managed = choose_token({"AZURE_CLIENT_ID": "cid", **token_file})  # no tenant: managed identity
    assert managed is not None and managed.kind == "managed_identity"
    aliased = choose_token(azure_env({"AZ_CLIENT_ID": "az-cid", "AZURE_CLIENT_ID": "other"}))
    assert aliased is not None and aliased.client_id == "az-cid"  # AZ_* wins, as in KServe


@pytest.mark.usefixtures("short_refused_retry")
def test_proxy_variables_take_effect(azurite: Azurite, tmp_path: Path) -> None:
    container = azurite.create_container()
    azurite.upload(container, "f", b"f")
    dead_proxy = {**azurite.env(), "HTTP_PROXY": "http://127.0.0.1:9", "STORAGE_INITIALIZER_RETRIES": "0"}
    with pytest.raises(StorageInitializerError, match="connection refused") as refused:
        fetch(dead_proxy, uri(container, "f"), tmp_path / "proxied")
    assert not refused.value.retryable
    fetch({**dead_proxy, "NO_PROXY": "127.0.0.1"}, uri(container, "f"), tmp_path / "direct")
    assert tree(tmp_path / "direct") == {"f": b"f"}


# -- errors say what to check ---------------------------------------------------------------------------


def test_wrong_key_is_reported_without_the_secret(azurite: Azurite, tmp_path: Path) -> None:
    container = azurite.create_container()
    azurite.upload(container, "m/f", b"f")
    wrong = "d3Jvbmcta2V5LWZvci10ZXN0cy13cm9uZy1rZXktZm9yLXRlc3Rz"
    conn = f"AccountName={ACCOUNT_NAME};AccountKey={wrong};BlobEndpoint={azurite.endpoint}"
    env = {"AZURE_STORAGE_CONNECTION_STRING": conn}
    result = run_cli([uri(container, "m"), str(tmp_path)], env)
    assert result.returncode == 1
    error_lines = [line for line in result.stderr.splitlines() if "ERROR" in line]
    # Azure says 403 AuthenticationFailed, Azurite 403 AuthorizationFailure: both name the credential.
    assert len(error_lines) == 1 and "403" in error_lines[0]
    assert "AZURE_STORAGE_CONNECTION_STRING" in error_lines[0] and wrong not in result.stderr


def test_missing_container_and_unreachable_endpoint(azurite: Azurite, tmp_path: Path) -> None:
    result = run_cli([uri("no-such-container", "m"), str(tmp_path / "a")], azurite.env())
    assert result.returncode == 1 and "container does not exist" in result.stderr
    unreachable = {
        "AZURE_STORAGE_CONNECTION_STRING": f"BlobEndpoint=http://127.0.0.1:9/{ACCOUNT_NAME};",
        "STORAGE_INITIALIZER_RETRIES": "0",
    }
    result = run_cli([uri("cont", "m"), str(tmp_path / "b")], unreachable)
    assert result.returncode == 1
    assert "cannot reach http://127.0.0.1:9/devstoreaccount1: connection refused" in result.stderr
