"""The s3:// provider against the real SeaweedFS and moto's server mode.

Conformance, then the issue's cases end to end (through the real command
where the outcome is what a user sees), then the read and listing contract
through the provider API. Configuration variables: ``test_s3_config.py``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from storage_initializer_s3 import S3Provider, parse_uri
from storage_initializer_s3._listing import checksums_from
from storage_initializer_s3._sigv4 import SigV4Signer, canonical_query
from storage_initializer_s3._wire import parse_list_page

from storage_initializer.errors import (
    AccessDeniedError,
    NotFoundError,
    ObjectChangedError,
    StorageInitializerError,
    UnsafePathError,
    UsageError,
)
from storage_initializer.provider import ProviderContext, RemoteObject
from storage_initializer.registry import Registry
from storage_initializer.runner import download
from storage_initializer.settings import Settings
from storage_initializer.testing import ConformanceStore, ProviderConformance
from tests.cli import run_cli, run_cli_peak_rss
from tests.providers.s3_tools import RecordingProxy
from tests.servers.s3 import MiB, S3Server, SeaweedFS

_BUCKETS: dict[str, str] = {}


def shared_bucket(server: S3Server) -> str:
    """One bucket per server and session (SeaweedFS gives each bucket its own volumes);
    every test works below a unique prefix of it."""
    if server.endpoint_url not in _BUCKETS:
        _BUCKETS[server.endpoint_url] = server.new_bucket("shared")
    return _BUCKETS[server.endpoint_url]


def unique(name: str = "t") -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


def provider_for(env: Mapping[str, str], **context: Any) -> S3Provider:
    return S3Provider(ProviderContext(env=dict(env), stall_timeout=30, connect_timeout=5, concurrency=4, **context))


def files_under(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".storage-initializer" not in p.parts
    }


def _filer_port(server: SeaweedFS) -> int:
    import psutil

    assert server._process is not None
    for arg in psutil.Process(server._process.pid).cmdline():
        if arg.startswith("-filer.port="):
            return int(arg.split("=", 1)[1])
    raise AssertionError("no -filer.port in the SeaweedFS command line")


def _seed_empty_objects(server: SeaweedFS, bucket: str, keys: Iterable[str], connections: int = 4) -> None:
    """Create empty objects fast: pipelined PUTs to SeaweedFS's filer (what its S3 gateway
    writes to), ~7000/s here against ~250/s through boto3."""
    port, batch = _filer_port(server), 250
    names = list(keys)

    def worker(chunk: list[str]) -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock, sock.makefile("rb") as replies:
            for i in range(0, len(chunk), batch):
                part = chunk[i : i + batch]
                request = "PUT /buckets/{}/{} HTTP/1.1\r\nHost: filer\r\nContent-Length: 0\r\n\r\n"
                sock.sendall(b"".join(request.format(bucket, quote(k)).encode() for k in part))
                for _ in part:
                    status = replies.readline()
                    assert status.split()[1] in (b"200", b"201"), status
                    length = 0
                    while (line := replies.readline()) not in (b"\r\n", b""):
                        name, _, value = line.partition(b":")
                        assert name.lower() != b"transfer-encoding"
                        if name.lower() == b"content-length":
                            length = int(value)
                    replies.read(length)

    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(worker, [names[i::connections] for i in range(connections)]))


def fetch(
    env: Mapping[str, str], uri: str, dest: Path, provider_class: type[S3Provider] = S3Provider, **kw: Any
) -> Any:
    settings = Settings(env=dict(env), concurrency=4, retries=1, retry_backoff=0.05, heartbeat_seconds=60)
    settings = settings.with_overrides(**kw)
    registry = Registry.from_classes({"s3": provider_class})
    (result,) = download([(uri, str(dest))], settings=settings, registry=registry)
    return result


# -- conformance --------------------------------------------------------------------------


class S3Store(ConformanceStore):
    provider_class = S3Provider

    def __init__(self, server: S3Server) -> None:
        super().__init__()
        self.server = server
        self.bucket = shared_bucket(server)

    def env(self) -> Mapping[str, str]:
        return self.server.env()

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.root_name}/{key}" if key else f"s3://{self.bucket}/{self.root_name}"

    def put(self, key: str, data: bytes) -> None:
        self.server.put(self.bucket, f"{self.root_name}/{key}", data)

    def malformed_uri(self) -> str:
        return "s3://"

    def denied_env(self) -> Mapping[str, str]:
        return self.server.env(secret_key="not-the-secret-key")


class TestS3Conformance(ProviderConformance):
    @pytest.fixture
    def store(self, s3_server: S3Server) -> ConformanceStore:
        return S3Store(s3_server)


# -- URIs, signing and parsing (no server) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket", ("bucket", "")),
        ("s3://bucket/", ("bucket", "")),
        ("s3://bucket/model", ("bucket", "model")),
        ("s3://bucket/model/", ("bucket", "model/")),
        ("s3://bucket//model", ("bucket", "model")),  # KServe strips leading slashes
        ("s3://b.dotted-name/a b/ü?x#y%20", ("b.dotted-name", "a b/ü?x#y%20")),  # verbatim key
    ],
)
def test_uri_forms(uri: str, expected: tuple[str, str]) -> None:
    assert parse_uri(uri) == expected


@pytest.mark.parametrize("uri", ["s3://", "s3:///model", "s3://host:9000/bucket/m", "s3://key@bucket/m", "s3://-x/m"])
def test_malformed_uris_are_usage_errors(uri: str) -> None:
    with pytest.raises(UsageError, match=r"s3://BUCKET\[/PATH\]"):
        provider_for({}).validate(uri)


def test_storage_spec_bucket_fills_an_empty_bucket() -> None:
    env = {"STORAGE_CONFIG": '{"type": "s3", "bucket": "from-spec"}'}
    assert parse_uri("s3:///m", provider_for(env).settings.default_bucket) == ("from-spec", "m")


@pytest.mark.parametrize("token", [None, "session-token-value"])
@pytest.mark.parametrize("key", ["plain.bin", "dir/a b+c~ü=%.bin", "x/!$&'()*,;:@.txt"])
def test_signer_matches_botocore(monkeypatch: pytest.MonkeyPatch, key: str, token: str | None) -> None:
    """Our SigV4 header signature is byte-identical to botocore's for the same request."""
    import datetime

    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    now = datetime.datetime(2026, 1, 2, 3, 4, 5)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now)
    path = "/bucket/" + quote(key, safe="/~")
    query = canonical_query({"list-type": "2", "prefix": key, "continuation-token": "a+b/c=="})
    for q in ("", query):
        request = AWSRequest(
            method="GET",
            url=f"http://127.0.0.1:9000{path}" + (f"?{q}" if q else ""),
            headers={"x-amz-content-sha256": hashlib.sha256(b"").hexdigest(), "x-amz-checksum-mode": "ENABLED"},
        )
        botocore.auth.S3SigV4Auth(Credentials("AKIDEXAMPLE", "secret/KEY+example", token), "s3", "eu-west-3").add_auth(
            request
        )
        ours = SigV4Signer("eu-west-3").sign(
            "GET",
            "127.0.0.1:9000",
            path,
            "AKIDEXAMPLE",
            "secret/KEY+example",
            token,
            query=q,
            amz_headers={"x-amz-checksum-mode": "ENABLED"},
            now=now.replace(tzinfo=datetime.timezone.utc).timestamp(),
        )
        assert ours["authorization"] == request.headers["Authorization"]


def test_list_page_decodes_url_encoded_keys() -> None:
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<Name>b</Name><Prefix>d%2F</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys>"
        b"<EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>"
        b"<Contents><Key>d%2Fa+b%2Bc%C3%BC</Key><Size>5</Size><ETag>&quot;abc&quot;</ETag></Contents>"
        b"<Contents><Key>d%2F%01ctl</Key><Size>0</Size><ETag>&quot;d41d&quot;</ETag></Contents>"
        b"<NextContinuationToken>tok/en+=</NextContinuationToken></ListBucketResult>"
    )
    page = parse_list_page(body)
    assert [(e.key, e.size, e.etag) for e in page.entries] == [("d/a b+cü", 5, '"abc"'), ("d/\x01ctl", 0, '"d41d"')]
    assert page.truncated and page.next_token == "tok/en+="


def test_checksum_headers_become_hex_digests() -> None:
    sha = hashlib.sha256(b"hello").digest()
    headers = {"x-amz-checksum-sha256": base64.b64encode(sha).decode(), "x-amz-checksum-crc32c": "mnG7TA=="}
    assert checksums_from(headers) == {"sha256": sha.hex(), "crc32c": "9a71bb4c"}
    assert checksums_from({**headers, "x-amz-checksum-type": "COMPOSITE"}) == {}
    assert checksums_from({"x-amz-checksum-crc32c": "mnG7TA==-3"}) == {}


# -- the cases, end to end ----------------------------------------------------------


TREE = {
    "model/config.json": b'{"a": 1}',
    "model/weights/part-1.bin": os.urandom(70_000),
    "model/weights/deeper/part-2.bin": os.urandom(1000),
    "model/empty.txt": b"",
    "model/sub dir/with space.txt": b"space",
    "model/ünïcødé/日本語.txt": b"unicode",
    "model/weird+chars=%20&!.txt": b"weird",
}
MARKERS = ("model/", "model/weights/", "model/only-marker/")
SIBLINGS = {"model-v2/weights.bin": b"sibling", "model.bin": b"sibling file", "model0/x": b"after", "modelA": b"a"}


def test_directory_download_end_to_end(s3_server: S3Server, tmp_path: Path) -> None:
    """Nested tree, empty file, markers, spaces, non-ASCII and URL-special characters; never siblings."""
    bucket, root = shared_bucket(s3_server), unique()
    s3_server.put_many(bucket, {f"{root}/{k}": v for k, v in {**TREE, **SIBLINGS}.items()})
    s3_server.put_many(bucket, {f"{root}/{m}": b"" for m in MARKERS})
    result = run_cli([f"s3://{bucket}/{root}/model", str(tmp_path / "out")], s3_server.env())
    assert result.returncode == 0, result.stderr
    assert files_under(tmp_path / "out") == {k.removeprefix("model/"): v for k, v in TREE.items()}
    assert not (tmp_path / "out" / "only-marker").exists() or not any((tmp_path / "out" / "only-marker").iterdir())
    assert s3_server.secret_key not in result.stderr


def test_object_wins_over_directory_of_the_same_name(s3_server: S3Server, tmp_path: Path) -> None:
    """KServe: s3://b/model downloads the object ``model`` when it exists, not model/."""
    bucket, root = shared_bucket(s3_server), unique()
    # One after the other: SeaweedFS's filer can lose one of two concurrent PUTs of a file and a
    # directory of the same name (seen once in CI: `model/inner.bin` vanished).
    s3_server.put(bucket, f"{root}/model", b"the object")
    s3_server.put(bucket, f"{root}/model/inner.bin", b"inner")
    result = fetch(s3_server.env(), f"s3://{bucket}/{root}/model", tmp_path / "a")
    assert result.error is None
    assert files_under(tmp_path / "a") == {"model": b"the object"}
    result = fetch(s3_server.env(), f"s3://{bucket}/{root}/model/", tmp_path / "b")  # trailing slash: the directory
    assert result.error is None
    assert files_under(tmp_path / "b") == {"inner.bin": b"inner"}


def test_bucket_root(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    bucket = seaweedfs.new_bucket("root")
    seaweedfs.put_many(bucket, {"a.txt": b"a", "d/b.txt": b"b", "d/": b""})
    for number, uri in enumerate((f"s3://{bucket}", f"s3://{bucket}/")):
        dest = tmp_path / f"out{number}"
        result = fetch(seaweedfs.env(), uri, dest)
        assert result.error is None
        assert files_under(dest) == {"a.txt": b"a", "d/b.txt": b"b"}


def test_traversal_keys_never_write_outside_dest(moto_s3: S3Server, tmp_path: Path) -> None:
    """moto stores such keys verbatim, as S3 does (SeaweedFS refuses them)."""
    bucket, root = shared_bucket(moto_s3), unique()
    moto_s3.put_many(bucket, {f"{root}/model/ok.txt": b"ok", f"{root}/model/../../escaped.txt": b"evil"})
    dest = tmp_path / "inner" / "dest"
    result = run_cli([f"s3://{bucket}/{root}/model", str(dest)], moto_s3.env())
    assert result.returncode != 0
    assert "'..'" in result.stderr and "ERROR" in result.stderr
    assert not list(tmp_path.rglob("escaped.txt"))


def test_only_a_directory_marker_is_not_found(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    bucket, root = shared_bucket(seaweedfs), unique()
    seaweedfs.put(bucket, f"{root}/model/", b"")
    result = run_cli([f"s3://{bucket}/{root}/model", str(tmp_path / "out")], seaweedfs.env())
    assert result.returncode == 1
    assert f"s3://{bucket}/{root}/model" in result.stderr
    assert "only its directory marker" in result.stderr


def test_siblings_are_never_paged_through(seaweedfs: SeaweedFS) -> None:
    """1001 siblings sort before "m/" and fill the first page: the listing then jumps to
    Prefix="m/" instead of paging through them (two ListObjectsV2 requests in all)."""
    bucket, root = shared_bucket(seaweedfs), unique()
    _seed_empty_objects(seaweedfs, bucket, (f"{root}/m-{i:04d}" for i in range(1001)))
    seaweedfs.put_many(bucket, {f"{root}/m/a": b"a", f"{root}/m/b": b"b", f"{root}/m0": b"after"})
    with RecordingProxy(seaweedfs.endpoint_url) as proxy:
        provider = provider_for({**seaweedfs.env(), "AWS_ENDPOINT_URL": proxy.url})
        keys = sorted(o.key for o in provider.list(f"s3://{bucket}/{root}/m"))
        provider.close()
    assert keys == ["a", "b"]
    lists = [r.target for r in proxy.requests if "list-type=2" in r.target]
    assert len(lists) == 2
    assert f"prefix={quote(root, safe='')}%2Fm%2F" in lists[1]


def test_a_directory_spanning_pages_is_complete(seaweedfs: SeaweedFS) -> None:
    """The first page (Prefix="d") ends inside the directory: the rest is listed from there."""
    bucket, root = shared_bucket(seaweedfs), unique()
    names = [f"{root}/d/f{i:04d}" for i in range(1500)]
    _seed_empty_objects(seaweedfs, bucket, [*names, f"{root}/d-sibling", f"{root}/d.bin"])
    with RecordingProxy(seaweedfs.endpoint_url) as proxy:
        provider = provider_for({**seaweedfs.env(), "AWS_ENDPOINT_URL": proxy.url})
        keys = [o.key for o in provider.list(f"s3://{bucket}/{root}/d")]
        provider.close()
    assert sorted(keys) == sorted(k.removeprefix(f"{root}/d/") for k in names)
    assert len(keys) == len(set(keys))
    assert sum("list-type=2" in r.target for r in proxy.requests) == 2


def test_version_change_mid_download_restarts_nothing_spliced(s3_server: S3Server, tmp_path: Path) -> None:
    """The object is replaced after its first part was read: the download fails with
    ObjectChangedError (If-Match -> 412) instead of splicing two versions."""
    bucket, root = shared_bucket(s3_server), unique()
    key = f"{root}/big.bin"
    s3_server.put(bucket, key, os.urandom(3 * MiB))
    calls: list[int] = []

    class ReplacingProvider(S3Provider):
        def _replace_on_second_read(self, start: int) -> None:
            calls.append(start)
            if len(calls) == 2:
                s3_server.put(bucket, key, os.urandom(3 * MiB))

        def http_range(self, uri: str, obj: RemoteObject, start: int, end: int | None) -> Any:
            self._replace_on_second_read(start)
            return super().http_range(uri, obj, start, end)

    result = fetch(
        s3_server.env(),
        f"s3://{bucket}/{key}",
        tmp_path / "out",
        ReplacingProvider,
        concurrency=1,
        part_size=1 * MiB,
        multipart_threshold=1 * MiB,
    )
    assert isinstance(result.error, ObjectChangedError), result.error
    assert "changed during the download" in str(result.error)
    assert not (tmp_path / "out" / "big.bin").exists()


def test_wrong_credentials_say_what_to_check(s3_server: S3Server, tmp_path: Path) -> None:
    bucket, root = shared_bucket(s3_server), unique()
    s3_server.put(bucket, f"{root}/m/x", b"x")
    uri = f"s3://{bucket}/{root}/m"
    secret = "Wr0ngSecretThatMustNotLeak123"
    cases = {
        "does not know the access key": s3_server.env("AKIAUNKNOWNKEY000000", secret),
        "rejected the request signature": s3_server.env(s3_server.access_key, secret),
        "denied access": s3_server.env(s3_server.denied_access_key, s3_server.denied_secret_key),
    }
    for expected, env in cases.items():
        provider = provider_for(env)
        with pytest.raises(AccessDeniedError, match=expected) as info:
            list(provider.list(uri))
        provider.close()
        assert uri in str(info.value) and "AWS_SECRET_ACCESS_KEY" in str(info.value)
    result = run_cli([uri, str(tmp_path / "out")], {**s3_server.env(s3_server.access_key, secret)})
    assert result.returncode == 1
    assert "ERROR" in result.stderr and uri in result.stderr and "check AWS_SECRET_ACCESS_KEY" in result.stderr
    assert secret not in result.stderr and "Traceback" not in result.stderr


def test_missing_bucket_and_missing_path(s3_server: S3Server, tmp_path: Path) -> None:
    provider = provider_for(s3_server.env())
    with pytest.raises(NotFoundError, match=r"does not exist.*check the bucket name"):
        list(provider.list(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/m"))
    uri = f"s3://{shared_bucket(s3_server)}/{unique()}/nothing"
    with pytest.raises(NotFoundError, match="nothing to download"):
        list(provider.list(uri))
    provider.close()
    result = run_cli([uri, str(tmp_path / "b")], s3_server.env())
    assert result.returncode == 1
    assert uri in result.stderr and "nothing to download" in result.stderr


def test_unreachable_endpoint(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "secretsecretsecret",
        "S3_MAX_ATTEMPTS": "1",
        "STORAGE_INITIALIZER_RETRIES": "0",
    }
    result = run_cli(["s3://bucket/m", str(tmp_path / "out")], env)
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr and "AWS_ENDPOINT_URL" in result.stderr
    assert f"cannot reach http://127.0.0.1:{port}: connection refused" in result.stderr


def test_no_credentials_at_all(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    env = {
        "AWS_ENDPOINT_URL": seaweedfs.endpoint_url,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }
    result = run_cli(["s3://bucket/m", str(tmp_path / "out")], env)
    assert result.returncode == 1
    assert "no AWS credentials found" in result.stderr and "awsAnonymousCredential" in result.stderr


# -- reads and checksums -------------------------------------------------------------------


def test_checksums_offered(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """md5 from single-part ETags; additional checksums from HEAD for large objects; none for
    multipart ETags."""
    import storage_initializer_s3._listing as listing

    monkeypatch.setattr(listing, "HEAD_MIN_SIZE", 6 * MiB)
    bucket, root = shared_bucket(s3_server), unique()
    small, large = b"small", os.urandom(7 * MiB)
    s3_server.put(bucket, f"{root}/d/small", small)
    sha = hashlib.sha256(large).digest()
    s3_server.put(bucket, f"{root}/d/large", large, ChecksumAlgorithm="SHA256")
    multipart = s3_server.put_large(bucket, f"{root}/d/multipart", 11 * MiB, part_size=5 * MiB)
    provider = provider_for(s3_server.env())
    objects = {o.key: o for o in provider.list(f"s3://{bucket}/{root}/d")}
    provider.close()
    assert objects["small"].checksums == {"md5": hashlib.md5(small).hexdigest()}
    assert objects["large"].checksums["sha256"] == sha.hex()
    assert objects["large"].checksums["md5"] == hashlib.md5(large).hexdigest()
    assert objects["multipart"].size == multipart.size and "md5" not in objects["multipart"].checksums
    assert objects["multipart"].version == multipart.etag


def test_kms_encrypted_objects_offer_no_md5(moto_s3: S3Server) -> None:
    """An SSE-KMS object's ETag is not an MD5 on AWS; moto marks the object the same way."""
    bucket, root = shared_bucket(moto_s3), unique()
    moto_s3.put(bucket, f"{root}/d/a", b"aaaa", ServerSideEncryption="aws:kms")
    moto_s3.put(bucket, f"{root}/d/b", b"bbbb", ServerSideEncryption="aws:kms")
    moto_s3.put(bucket, f"{root}/plain", b"plain")
    provider = provider_for(moto_s3.env())
    objects = list(provider.list(f"s3://{bucket}/{root}/d"))
    (plain,) = provider.list(f"s3://{bucket}/{root}/plain")
    provider.close()
    assert len(objects) == 2 and all("md5" not in o.checksums for o in objects)
    assert plain.checksums["md5"] == hashlib.md5(b"plain").hexdigest()


def test_a_kms_object_among_plain_ones_downloads(moto_s3: S3Server, tmp_path: Path) -> None:
    """The SSE probe (one HEAD) sees a plain object, so the listing offers ETags as MD5s; a
    later SSE-KMS object (bucket default encryption changed) shows its encryption only in
    its GET answer. Its ETag is no MD5 there: it is downloaded verified by size, not failed."""
    bucket, root = shared_bucket(moto_s3), unique()
    moto_s3.put(bucket, f"{root}/d/a-plain", b"plain bytes")
    moto_s3.put(bucket, f"{root}/d/b-kms", b"kms bytes", ServerSideEncryption="aws:kms")
    big = os.urandom(3 * MiB)  # read as parallel ranged parts
    moto_s3.put(bucket, f"{root}/d/c-kms-parts", big, ServerSideEncryption="aws:kms")
    moto_s3.put(bucket, f"{root}/d/d-plain", b"more plain bytes")
    env = {**moto_s3.env(), "STORAGE_INITIALIZER_PART_SIZE": "1M", "STORAGE_INITIALIZER_MULTIPART_THRESHOLD": "1M"}
    result = run_cli([f"s3://{bucket}/{root}/d", str(tmp_path / "out")], env)
    assert result.returncode == 0, result.stderr
    assert files_under(tmp_path / "out") == {
        "a-plain": b"plain bytes",
        "b-kms": b"kms bytes",
        "c-kms-parts": big,
        "d-plain": b"more plain bytes",
    }
    assert "b-kms" in result.stderr and "aws:kms" in result.stderr  # said why it is not MD5-verified


def test_concurrent_ranged_reads(seaweedfs: SeaweedFS) -> None:
    """Many threads reading ranges of one object through one provider get exact bytes."""
    bucket, key = shared_bucket(seaweedfs), f"{unique()}/r.bin"
    data = os.urandom(4 * MiB)
    seaweedfs.put(bucket, key, data)
    provider = provider_for(seaweedfs.env())
    (obj,) = provider.list(f"s3://{bucket}/{key}")
    ranges = [(i * 65_537, min(len(data), (i + 1) * 65_537 + 17)) for i in range(64)]

    def read(span: tuple[int, int]) -> bool:
        buffer = memoryview(bytearray(span[1] - span[0]))
        with provider.open_range("s3://x", obj, *span) as stream:
            got = 0
            while got < len(buffer) and (n := stream.readinto(buffer[got:])):
                got += n
        return bytes(buffer[:got]) == data[span[0] : span[1]]

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(read, ranges))
    provider.close()


@pytest.mark.slow
def test_300_mib_object(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    """300 MiB, single-part (so its MD5 ETag is verified too), read as parallel ranges."""
    bucket = seaweedfs.new_bucket("large")
    big = seaweedfs.put_large(bucket, "models/llm/model.safetensors", 300 * MiB, seed=3, multipart=False)
    result = run_cli([f"s3://{bucket}/models/llm", str(tmp_path / "out")], seaweedfs.env(), timeout=120)
    assert result.returncode == 0, result.stderr
    path = tmp_path / "out" / "model.safetensors"
    assert path.stat().st_size == big.size
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(8 * MiB):
            digest.update(chunk)
    assert digest.hexdigest() == big.sha256()


# -- 100k objects ------------------------------------------------------------------------------


@pytest.mark.slow
def test_100k_object_listing_streams_in_flat_memory(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    bucket = seaweedfs.new_bucket("many")
    count = 100_000
    _seed_empty_objects(seaweedfs, bucket, (f"model/shard-{i // 1000:03d}/f{i:06d}" for i in range(count)))
    seaweedfs.put(bucket, "model/shard-099/f099999", b"last one")  # the one file the CLI run keeps
    provider = provider_for(seaweedfs.env())
    tracemalloc.start()
    seen = 0
    for obj in provider.list(f"s3://{bucket}/model"):
        seen += 1
        assert obj.key.startswith("shard-")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    provider.close()
    assert seen == count
    assert peak < 16 * MiB, f"listing {count} objects peaked at {peak / MiB:.1f} MiB"
    # Through the engine: the whole listing is streamed and filtered; one file lands.
    result, peak_kib = run_cli_peak_rss(
        [f"s3://{bucket}/model", str(tmp_path / "out")],
        {**seaweedfs.env(), "STORAGE_ALLOW_PATTERNS": '["shard-099/f099999"]'},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert files_under(tmp_path / "out") == {"shard-099/f099999": b"last one"}
    print(f"peak RSS of the CLI over a 100k-object listing: {peak_kib / 1024:.0f} MiB")
    assert peak_kib < 256 * 1024


def test_errors_keep_their_types_through_the_provider(seaweedfs: SeaweedFS) -> None:
    provider = provider_for(seaweedfs.env(seaweedfs.denied_access_key, seaweedfs.denied_secret_key))
    with pytest.raises(AccessDeniedError):
        list(provider.list(f"s3://{shared_bucket(seaweedfs)}/x"))
    provider = provider_for(seaweedfs.env())
    with pytest.raises(NotFoundError, match="does not exist"):
        list(provider.list("s3://no-such-bucket-zz/x"))
    bucket, key = shared_bucket(seaweedfs), f"{unique()}/gone"
    seaweedfs.put(bucket, key, b"data")
    (obj,) = provider.list(f"s3://{bucket}/{key}")
    seaweedfs.client().delete_object(Bucket=bucket, Key=key)
    with pytest.raises(StorageInitializerError) as info, provider.open_range("s3://x", obj, 0, None):
        pass
    assert isinstance(info.value, (NotFoundError, ObjectChangedError))
    provider.close()


@pytest.mark.parametrize("key", ["m/a/../../../x", "m//x", "m/./x"])
def test_unsafe_keys_fail_before_anything_is_written(moto_s3: S3Server, tmp_path: Path, key: str) -> None:
    bucket, root = shared_bucket(moto_s3), unique()
    moto_s3.put(bucket, f"{root}/{key}", b"evil")
    result = fetch(moto_s3.env(), f"s3://{bucket}/{root}/m", tmp_path / "out")
    assert isinstance(result.error, UnsafePathError)
    assert not list(tmp_path.rglob("x"))


def test_many_files_reuse_connections_without_pool_warnings(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    """The listing (two pages here) runs beside the workers: the connection pool has room for
    both, so no connection is thrown away with urllib3's "Connection pool is full" warning."""
    bucket, root = shared_bucket(seaweedfs), unique()
    files = {f"{root}/m/d{i % 5}/f{i}.bin": i.to_bytes(4, "big") * 50 for i in range(1500)}
    seaweedfs.put_many(bucket, files)
    env = {**seaweedfs.env(), "STORAGE_INITIALIZER_CONCURRENCY": "4"}
    result = run_cli([f"s3://{bucket}/{root}/m", str(tmp_path / "out")], env)
    assert result.returncode == 0, result.stderr
    assert len(files_under(tmp_path / "out")) == 1500
    assert "Connection pool is full" not in result.stderr


def _start_until(args: list[str], env: dict[str, str], ready: Callable[[], bool]) -> subprocess.Popen[bytes]:
    """Start the command with ``args`` and return once ``ready()`` (within 60 s)."""
    from tests.cli import clean_env

    argv = [sys.executable, "-m", "storage_initializer", *args]
    proc = subprocess.Popen(argv, env=clean_env(env), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not ready():
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the download never got going")
        time.sleep(0.05)
    return proc


def test_parts_stopped_mid_way_resume_and_the_combined_crc_covers_the_bytes_kept(
    seaweedfs: SeaweedFS, fault_proxy_factory: Any, tmp_path: Path
) -> None:
    """A 40 MiB object in 8 MiB parts, verified by its CRC64NVME part by part, stopped (SIGTERM)
    with every stream stalled 3 MiB into its part: the rerun fetches only what no part wrote,
    hashes the kept bytes from disk, and the combined CRC is the object's."""
    import json
    import signal

    from awscrt.checksums import crc64nvme

    from tests.cli import tree
    from tests.servers.fault_proxy import ProxyFault

    bucket = seaweedfs.new_bucket("rp")
    data = os.urandom(40 * MiB)
    crc = base64.b64encode(crc64nvme(data).to_bytes(8, "big")).decode()
    seaweedfs.put(bucket, "m/w.bin", data, ChecksumCRC64NVME=crc)
    proxy = fault_proxy_factory(int(seaweedfs.endpoint_url.rsplit(":", 1)[1]))
    # Every connection stalls 3 MiB into its body: each of the 4 streams, in its first part.
    proxy.add(ProxyFault("stall", times=-1, after_bytes=3 * MiB, seconds=600, match="w.bin", unless="list-type"))
    env = {**seaweedfs.env(), "AWS_ENDPOINT_URL": proxy.url, "STORAGE_INITIALIZER_PART_SIZE": "8M"}
    dest = tmp_path / "out"
    temp = dest / ".w.bin.si-partial"
    proc = _start_until(  # 2 MiB written by each stream
        [f"s3://{bucket}/m", str(dest)], env, lambda: temp.exists() and temp.stat().st_blocks * 512 >= 8 * MiB
    )
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143, stderr
    (record,) = [json.loads(p.read_text()) for p in (dest / ".storage-initializer/partial").glob("*.json")]
    progress = {int(i): offset for i, offset in record["progress"].items()}
    assert record["done"] == [] and len(progress) == 4, record
    assert all(i * 8 * MiB < offset <= i * 8 * MiB + 3 * MiB for i, offset in progress.items()), record
    kept = sum(offset - i * 8 * MiB for i, offset in progress.items())
    proxy.clear()
    before = proxy.bytes_down
    record_path = tmp_path / "record.json"
    result = run_cli(["--record", str(record_path), f"s3://{bucket}/m", str(dest)], env)
    assert result.returncode == 0, result.stderr
    assert f"resuming w.bin: 0 of 5 parts already downloaded, and {kept} bytes of 4 more" in result.stderr
    assert tree(dest) == {"w.bin": data}
    assert proxy.bytes_down - before <= len(data) - kept + 64 * 1024  # the rest, the listing, headers
    (pair,) = json.loads(record_path.read_text())["pairs"]
    verified = pair["files"][0]["verified_by"]["crc64nvme"]
    assert f"({kept} bytes, on disk from an interrupted download" in verified["hashed"], verified


def test_a_killed_single_stream_resumes_and_verifies_the_checksum_of_the_whole(
    seaweedfs: SeaweedFS, fault_proxy_factory: Any, tmp_path: Path
) -> None:
    """An 8 MiB object (one stream, verified by its checksum) killed mid-body: the rerun fetches the
    rest only and hashes the kept prefix from disk; a prefix damaged on disk fails the checksum of the
    whole and is fetched again."""
    import signal

    from tests.cli import tree
    from tests.servers.fault_proxy import ProxyFault

    bucket = seaweedfs.new_bucket("rs")
    data = os.urandom(8 * MiB)
    seaweedfs.put(bucket, "m/w.bin", data)
    proxy = fault_proxy_factory(int(seaweedfs.endpoint_url.rsplit(":", 1)[1]))
    proxy.add(ProxyFault("stall", after_bytes=3 * MiB, seconds=600, match="w.bin", unless="list-type"))
    env = {**seaweedfs.env(), "AWS_ENDPOINT_URL": proxy.url, "STORAGE_INITIALIZER_MULTIPART_THRESHOLD": "64M"}
    dest = tmp_path / "out"
    args = [f"s3://{bucket}/m", str(dest)]
    temp = dest / ".w.bin.si-partial"

    def started() -> bool:
        return temp.exists() and temp.stat().st_size >= 2 * MiB

    proc = _start_until(args, env, started)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    kept = temp.stat().st_size
    proxy.clear()
    before = proxy.bytes_down
    result = run_cli(args, env)
    assert result.returncode == 0, result.stderr
    assert f"resuming w.bin from byte {kept}" in result.stderr
    assert tree(dest) == {"w.bin": data}
    assert proxy.bytes_down - before <= len(data) - kept + 64 * 1024  # the rest, the listing, headers

    # Again, with the kept prefix damaged on disk: the checksum of the whole catches it, fetched anew.
    (dest / "w.bin").unlink()
    proxy.add(ProxyFault("stall", after_bytes=3 * MiB, seconds=600, match="w.bin", unless="list-type"))
    proc = _start_until(args, env | {"STORAGE_INITIALIZER_RETRY_BACKOFF": "0.05"}, started)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    proxy.clear()
    with open(temp, "r+b") as handle:
        handle.write(b"\0" * 100)
    result = run_cli(args, env | {"STORAGE_INITIALIZER_RETRY_BACKOFF": "0.05"})
    assert result.returncode == 0, result.stderr
    assert "the store announced" in result.stderr and "retrying w.bin" in result.stderr
    assert tree(dest) == {"w.bin": data}
