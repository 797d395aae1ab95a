"""A faithful fake of the Azure Files REST API (read side), for tests.

Azure Files has no emulator (Azurite serves Blob, Queue and Table only), so this
threaded HTTP server on 127.0.0.1 answers the operations a downloader uses, the
way the service documents them and the ``azure-storage-file-share`` SDK expects:

- List Directories and Files (``GET ?restype=directory&comp=list``): one level,
  ``prefix``, opaque ``marker``/``NextMarker`` paging, ``maxresults`` (default and
  cap 5000, <= 0 is 400), ``include=Timestamps,ETag,Attributes,PermissionKey``,
  ``x-ms-file-extended-info`` (FileId/DirectoryId), ``Encoded`` names.
- Get File / Get File Properties (``GET``/``HEAD``): ``x-ms-range`` wins over
  ``Range``; 206 with ``Content-Range``; 416 ``InvalidRange`` with
  ``Content-Range: bytes */SIZE`` when the start is past the end (so also for
  any range of an empty file, which the SDK then re-requests whole);
  ``Content-MD5`` of the whole file on full reads, of the range when
  ``x-ms-range-get-content-md5: true`` (ranges <= 4 MiB, else 400), and
  ``x-ms-content-md5`` (whole file) on ranged reads.
- Get Directory Properties (``?restype=directory``), Get Share Properties
  (``?restype=share``).
- Errors as XML ``<Error><Code/><Message/></Error>`` plus ``x-ms-error-code``
  (HEAD: header only): ShareNotFound, ParentNotFound, ResourceNotFound,
  AuthenticationFailed, AuthorizationFailure, AuthorizationPermissionMismatch,
  NoAuthenticationInformation, InvalidRange, ConditionHeadersNotSupported...

Faithfulness notes (each one a difference from a naive fake):

- Azure Files does **not** support conditional headers on reads: ``If-Match``,
  ``If-None-Match``, ``If-Modified-Since`` or ``If-Unmodified-Since`` on Get File
  is ``400 ConditionHeadersNotSupported``. A client pins a version by comparing
  the ``ETag`` of every ranged response with the listed one (the SDK's
  downloader does exactly that), never with ``If-Match``.
- Names are case-insensitive and case-preserving (SMB semantics): ``Model.bin``
  finds ``model.bin``, and two names differing only in case cannot coexist.
- The listing has ETags only with ``include=Etag`` (unquoted, as Blob listings
  write them; headers carry the quoted form) and sizes for files only;
  directories always carry an (empty) ``<Properties/>`` element, which the SDK
  dereferences unconditionally.
- Paths are percent-decoded before they are split, so ``a%2Fb`` (what the SDK's
  directory client sends for ``a/b``) is two segments, as on the service.
- Entries are listed in case-insensitive name order; the service documents no
  order, so a client must not depend on it.
- Anonymous access does not exist on Azure Files: a request with neither a
  SharedKey ``Authorization`` header nor a SAS is ``401
  NoAuthenticationInformation`` (``allow_anonymous=True`` turns that off for
  tests that need it).

Authentication is verified for real with the account key: SharedKey signatures
are recomputed from the request as received (the documented string-to-sign;
``x-ms-date`` older than 15 minutes is refused), and a SAS ``sig`` is recomputed
for account SAS (``ss``/``srt``) and service SAS (``sr=s`` share, ``sr=f``
file) with the layout of its ``sv``, with the start/expiry window, permissions
(``r`` read, ``l`` list), ``sip`` and ``spr`` checked (the fake speaks plain
HTTP, so ``spr=https`` is refused like the service would refuse it over HTTP).
Stored access policies (``si``) and user-delegation SAS are refused (not
implemented).

Seeding is a Python API (``put``, ``put_repeated`` for large files held as one
repeated chunk, ``mkdir``, ``delete``, ``put_unchecked`` for names the service
forbids); fault hooks (``stall``, ``cut``, ``replace_during_download``,
``deny_all``) and counters (``bytes_served``, ``connections_opened``,
``requests``) let tests provoke and observe failures.
"""

from __future__ import annotations

import base64
import email.utils
import functools
import hashlib
import hmac
import ipaddress
import itertools
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cached_property
from types import TracebackType
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit
from xml.sax.saxutils import escape, quoteattr

import pytest

from tests.servers.base import FakeHandler, FakeServer, Fault, Faults, Request, RequestLog

DEFAULT_ACCOUNT = "fakefilesaccount"
#: A fixed, obviously fake base64 key (64 bytes, like a real storage key).
DEFAULT_KEY = base64.b64encode(b"fake-azure-files-key-for-tests!!" * 2).decode()

MAX_RESULTS = 5000
MAX_RANGE_MD5 = 4 * 1024 * 1024
CLOCK_SKEW = timedelta(minutes=15)
SERVICE_VERSION = "2026-10-06"

_ERRORS: dict[str, tuple[int, str]] = {
    "ShareNotFound": (404, "The specified share does not exist."),
    "ParentNotFound": (404, "The specified parent path does not exist."),
    "ResourceNotFound": (404, "The specified resource does not exist."),
    "AuthenticationFailed": (
        403,
        "Server failed to authenticate the request. Make sure the value of Authorization header "
        "is formed correctly including the signature.",
    ),
    "AuthorizationFailure": (403, "This request is not authorized to perform this operation."),
    "AuthorizationPermissionMismatch": (
        403,
        "This request is not authorized to perform this operation using this permission.",
    ),
    "AuthorizationResourceTypeMismatch": (
        403,
        "This request is not authorized to perform this operation using this resource type.",
    ),
    "AuthorizationServiceMismatch": (
        403,
        "This request is not authorized to perform this operation using this service.",
    ),
    "AuthorizationSourceIPMismatch": (
        403,
        "This request is not authorized to perform this operation using this source IP.",
    ),
    "AuthorizationProtocolMismatch": (
        403,
        "This request is not authorized to perform this operation using this protocol.",
    ),
    "NoAuthenticationInformation": (
        401,
        "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.",
    ),
    "InvalidRange": (416, "The range specified is invalid for the current size of the resource."),
    "ConditionHeadersNotSupported": (400, "Condition headers are not supported."),
    "MissingRequiredHeader": (400, "An HTTP header that's mandatory for this request is not specified."),
    "InvalidHeaderValue": (400, "The value for one of the HTTP headers is not in the correct format."),
    "OutOfRangeInput": (400, "One of the request inputs is out of range."),
    "OutOfRangeQueryParameterValue": (
        400,
        "One of the query parameters specified in the request URI is outside the permissible range.",
    ),
    "InvalidQueryParameterValue": (
        400,
        "Value for one of the query parameters specified in the request URI is invalid.",
    ),
    "InvalidUri": (400, "The requested URI does not represent any resource on the server."),
    "UnsupportedHttpVerb": (405, "The resource doesn't support specified Http Verb."),
}

_CONDITIONAL_HEADERS = ("If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since")
_INVALID_NAME_CHARS = re.compile(r'["\\/:|<>*?\x00-\x1f]')
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_etag_counter = itertools.count()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _rfc1123(moment: datetime) -> str:
    return email.utils.format_datetime(moment.astimezone(timezone.utc), usegmt=True)


def _iso7(moment: datetime) -> str:
    """The service's ISO 8601 form with 7 fractional digits (``2026-01-02T03:04:05.1234567Z``)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def _new_etag() -> str:
    """A service-style ETag: quoted ``0x`` + FILETIME ticks, unique per change."""
    ticks = int(time.time() * 10_000_000) + 116_444_736_000_000_000 + next(_etag_counter)
    return f'"0x{ticks:X}"'


class ServiceError(Exception):
    """An error answer: status, ``x-ms-error-code`` and XML body."""

    def __init__(self, code: str, detail: str | None = None, headers: dict[str, str] | None = None) -> None:
        self.status, self.message = _ERRORS[code]
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        super().__init__(f"{self.status} {code}")


class RepeatedContent:
    """``chunk * count`` without holding it: large test files cost no memory."""

    def __init__(self, chunk: bytes, count: int) -> None:
        self.chunk, self.count = bytes(chunk), count

    def __len__(self) -> int:
        return len(self.chunk) * self.count

    def __getitem__(self, item: slice) -> bytes:
        start, stop, _ = item.indices(len(self))
        size = len(self.chunk)
        out = bytearray()
        while start < stop:
            offset = start % size
            piece = self.chunk[offset : min(size, offset + stop - start)]
            out += piece
            start += len(piece)
        return bytes(out)


Content = bytes | RepeatedContent


@dataclass
class FileEntry:
    name: str
    data: Content
    content_md5: bytes | None
    etag: str = field(default_factory=_new_etag)
    last_modified: datetime = field(default_factory=_now)
    created: datetime = field(default_factory=_now)
    file_id: str = field(default_factory=lambda: str(uuid.uuid4().int >> 64))


@dataclass
class DirEntry:
    name: str
    children: dict[str, FileEntry | DirEntry] = field(default_factory=dict)  # key: name.casefold()
    etag: str = field(default_factory=_new_etag)
    last_modified: datetime = field(default_factory=_now)
    created: datetime = field(default_factory=_now)
    file_id: str = field(default_factory=lambda: str(uuid.uuid4().int >> 64))

    def get(self, name: str) -> FileEntry | DirEntry | None:
        return self.children.get(name.casefold())


def _split_path(path: str) -> list[str]:
    return [part for part in path.strip("/").split("/") if part]


class FakeAzureFiles:
    """An Azure Files account served over HTTP on 127.0.0.1, path-style.

    ``endpoint`` (``http://127.0.0.1:PORT/<account>``) is the ``account_url``
    the SDK takes; files live at ``<endpoint>/<share>/<dir>/<file>``.
    """

    def __init__(
        self,
        account: str = DEFAULT_ACCOUNT,
        key: str = DEFAULT_KEY,
        *,
        allow_anonymous: bool = False,
    ) -> None:
        self.account = account
        self.key = key
        self.allow_anonymous = allow_anonymous
        self.deny_all = False  # True: every request is 403 AuthorizationFailure (firewall)
        self.bytes_served = 0
        self.connections_opened = 0
        self.faults = Faults()
        self._log = RequestLog()
        self._shares: dict[str, DirEntry] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()  # set to end stalls early (reset/stop)
        self._server = FakeServer(_Handler, self, log=self._log)
        self.port = self._server.port

    @property
    def requests(self) -> list[Request]:
        """Every request received (``query``: each parameter's first value)."""
        return self._log.all()

    # -- addresses ---------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.account}"

    url = endpoint

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={self.key};"
            f"FileEndpoint={self.endpoint};"
        )

    def env(self) -> dict[str, str]:
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}

    # -- lifecycle ---------------------------------------------------------

    def stop(self) -> None:
        self._wake.set()
        self._server.stop()

    def __enter__(self) -> FakeAzureFiles:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget shares, faults, counters and the request log."""
        with self._lock:
            self._wake.set()
            self._wake = threading.Event()
            self._shares.clear()
            self.faults.clear()
            self._log.clear()
            self.bytes_served = 0
            self.connections_opened = 0
            self.deny_all = False

    # -- seeding -------------------------------------------------------------

    def create_share(self, name: str | None = None) -> str:
        name = name or f"s{uuid.uuid4().hex[:20]}"
        if not re.fullmatch(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]", name):
            raise ValueError(f"invalid share name {name!r} (3-63 chars of a-z, 0-9, single '-')")
        with self._lock:
            self._shares.setdefault(name, DirEntry(name=""))
        return name

    def mkdir(self, share: str, path: str) -> None:
        """Create a directory and its parents (the share too)."""
        self._walk_create(share, _split_path(path))

    def put(self, share: str, path: str, data: bytes, *, content_md5: bool | bytes = True) -> str:
        """Create or replace a file (parents created); return its new ETag.

        ``content_md5`` stores the file's Content-MD5 (Azure Files keeps only
        what the uploader set, e.g. ``azcopy --put-md5``): True computes it,
        False stores none, bytes store that (possibly wrong) digest.
        """
        if isinstance(content_md5, bytes):
            md5: bytes | None = content_md5
        else:
            md5 = hashlib.md5(data).digest() if content_md5 else None
        return self._store(share, path, bytes(data), md5)

    def put_unchecked(self, share: str, directory: str, name: str, data: bytes | None) -> None:
        """Insert an entry whose name the real service would refuse (``..``, ``a\\b``...).

        Only to prove that a client never trusts names from a listing.
        ``data=None`` makes it a directory.
        """
        parent = self._walk_create(share, _split_path(directory))
        entry: FileEntry | DirEntry = DirEntry(name=name) if data is None else FileEntry(name, data, None)
        with self._lock:
            parent.children[name.casefold()] = entry

    def put_repeated(self, share: str, path: str, chunk: bytes, count: int, *, content_md5: bool = True) -> str:
        """Create a ``len(chunk) * count`` byte file held as one chunk; return its SHA-256."""
        md5, sha = hashlib.md5(), hashlib.sha256()
        for _ in range(count):
            md5.update(chunk)
            sha.update(chunk)
        self._store(share, path, RepeatedContent(chunk, count), md5.digest() if content_md5 else None)
        return sha.hexdigest()

    def _store(self, share: str, path: str, data: Content, md5: bytes | None) -> str:
        parts = _split_path(path)
        if not parts:
            raise ValueError("a file needs a name")
        parent = self._walk_create(share, parts[:-1])
        with self._lock:
            existing = parent.get(parts[-1])
            if isinstance(existing, DirEntry):
                raise ValueError(f"{path!r} is a directory")
            name = existing.name if existing else parts[-1]
            entry = FileEntry(name=name, data=data, content_md5=md5)
            if existing:
                entry.created, entry.file_id = existing.created, existing.file_id
            parent.children[name.casefold()] = entry
            return entry.etag

    def delete(self, share: str, path: str) -> None:
        parts = _split_path(path)
        with self._lock:
            parent = self._lookup_dir(share, parts[:-1])
            del parent.children[parts[-1].casefold()]

    def _walk_create(self, share: str, parts: list[str]) -> DirEntry:
        self.create_share(share)
        with self._lock:
            node = self._shares[share]
            for part in parts:
                if _INVALID_NAME_CHARS.search(part) or part in {".", ".."} or part.endswith("."):
                    raise ValueError(f"{part!r} is not a valid Azure Files name")
                child = node.get(part)
                if child is None:
                    child = DirEntry(name=part)
                    node.children[part.casefold()] = child
                elif isinstance(child, FileEntry):
                    raise ValueError(f"{part!r} is a file")
                node = child
            return node

    def _lookup_dir(self, share: str, parts: list[str]) -> DirEntry:
        node = self._shares[share]
        for part in parts:
            child = node.get(part)
            assert isinstance(child, DirEntry)
            node = child
        return node

    # -- SAS helpers (the real SDK generates them) ----------------------------

    def account_sas(self, permission: str = "rl", expiry: timedelta = timedelta(hours=1)) -> str:
        from azure.storage.fileshare import AccountSasPermissions, ResourceTypes, generate_account_sas

        return generate_account_sas(
            self.account,
            self.key,
            ResourceTypes(service=True, container=True, object=True),
            AccountSasPermissions.from_string(permission),
            _now() + expiry,
        )

    def share_sas(self, share: str, permission: str = "rl", expiry: timedelta = timedelta(hours=1)) -> str:
        from azure.storage.fileshare import ShareSasPermissions, generate_share_sas

        return generate_share_sas(
            self.account, share, self.key, ShareSasPermissions.from_string(permission), _now() + expiry
        )

    # -- faults --------------------------------------------------------------

    def stall(self, path: str | None = None, after_bytes: int = 0, seconds: float = 60.0, times: int = 1) -> None:
        """Stop sending a file body after ``after_bytes`` for ``seconds``.

        ``path`` is ``"share/dir/file"`` (None: any file).
        """
        self.faults.add(Fault("stall", path, after_bytes, seconds=seconds, times=times, resume=True))

    def cut(self, path: str | None = None, after_bytes: int = 0, times: int = 1) -> None:
        """Close the connection after ``after_bytes`` of a file body."""
        self.faults.add(Fault("cut", path, after_bytes, times=times))

    def replace_during_download(self, path: str, data: bytes, after_bytes: int = 0) -> None:
        """Replace a file (new ETag) once ``after_bytes`` of it went out in one response."""
        self.faults.add(Fault("replace", path, after_bytes, data=data))

    def _replace(self, fault: Fault, path: str) -> None:
        share, _, rest = path.partition("/")
        self.put(share, rest, fault.data)

    # -- authentication --------------------------------------------------------

    def authenticate(self, req: _Request, needs: Literal["r", "l"], resource: str) -> None:
        """Raise ServiceError unless the request may do ``needs`` on ``resource``.

        ``resource`` is ``/share[/path]`` (decoded) and the kind ``s`` (share or
        directory operation) or ``o`` (file) is derived by the caller.
        """
        if self.deny_all:
            raise ServiceError("AuthorizationFailure")
        auth = req.headers.get("Authorization")
        if auth:
            self._check_shared_key(req, auth)
        elif "sig" in req.query:
            self._check_sas(req, needs, resource)
        elif not self.allow_anonymous:
            raise ServiceError("NoAuthenticationInformation")

    def _check_shared_key(self, req: _Request, auth: str) -> None:
        scheme, _, credential = auth.partition(" ")
        account, _, signature = credential.partition(":")
        if scheme != "SharedKey" or account != self.account or not signature:
            raise ServiceError("AuthenticationFailed", "The authorization header is not of the SharedKey form.")
        date = req.headers.get("x-ms-date") or req.headers.get("Date")
        if not date:
            raise ServiceError("AuthenticationFailed", "Request date header not specified.")
        try:
            sent = email.utils.parsedate_to_datetime(date)
        except (TypeError, ValueError):
            raise ServiceError("AuthenticationFailed", f"The Date header is malformed: {date}") from None
        if abs(_now() - sent) > CLOCK_SKEW:
            raise ServiceError("AuthenticationFailed", f"Request date header too old: '{date}'")
        string_to_sign = self.shared_key_string_to_sign(req)
        if not hmac.compare_digest(self._sign(string_to_sign), signature):
            raise ServiceError(
                "AuthenticationFailed",
                f"The MAC signature found in the HTTP request '{signature}' is not the same as any "
                f"computed signature. Server used following string to sign: '{string_to_sign}'.",
            )
        if not req.headers.get("x-ms-version"):
            raise ServiceError("MissingRequiredHeader", "x-ms-version")

    def shared_key_string_to_sign(self, req: _Request) -> str:
        """The documented SharedKey string-to-sign of a request as received."""
        h = req.headers
        content_length = h.get("Content-Length", "")
        lines = [
            req.method,
            h.get("Content-Encoding", ""),
            h.get("Content-Language", ""),
            "" if content_length == "0" else content_length,
            h.get("Content-MD5", ""),
            h.get("Content-Type", ""),
            h.get("Date", ""),
            h.get("If-Modified-Since", ""),
            h.get("If-Match", ""),
            h.get("If-None-Match", ""),
            h.get("If-Unmodified-Since", ""),
            h.get("Range", ""),
        ]
        ms_headers: dict[str, list[str]] = {}
        for name, value in req.header_items:
            if name.lower().startswith("x-ms-"):
                ms_headers.setdefault(name.lower(), []).append(" ".join(value.split()))
        canonical_headers = "".join(f"{name}:{','.join(ms_headers[name])}\n" for name in sorted(ms_headers))
        resource = f"/{self.account}{req.raw_path}"
        params: dict[str, list[str]] = {}
        for name, value in req.query_items:
            params.setdefault(name.lower(), []).append(value)
        for name in sorted(params):
            resource += f"\n{name}:{','.join(sorted(params[name]))}"
        return "\n".join(lines) + "\n" + canonical_headers + resource

    def _sign(self, string_to_sign: str) -> str:
        digest = hmac.new(base64.b64decode(self.key), string_to_sign.encode("utf-8"), hashlib.sha256)
        return base64.b64encode(digest.digest()).decode()

    def _check_sas(self, req: _Request, needs: Literal["r", "l"], resource: str) -> None:
        q = req.query
        version = q.get("sv", "")
        if not version:
            raise ServiceError("AuthenticationFailed", "sv is mandatory.")
        if "si" in q or "skoid" in q:
            raise ServiceError(
                "AuthenticationFailed", "stored access policies and user delegation SAS: not in this fake"
            )
        if "ss" in q:
            string_to_sign = "\n".join(
                [self.account, *(q.get(k, "") for k in ("sp", "ss", "srt", "st", "se", "sip", "spr", "sv"))]
            ) + ("\n\n" if version >= "2020-12-06" else "\n")
        else:
            sr = q.get("sr", "")
            if sr not in {"s", "f"}:
                raise ServiceError("AuthenticationFailed", f"Invalid signed resource sr={sr!r}.")
            # The signed resource is the one requested: a SAS for another share or
            # file fails the signature, as on the service.
            signed = resource if sr == "f" else "/" + resource.split("/")[1]
            fields = ("si", "sip", "spr", "sv", "rscc", "rscd", "rsce", "rscl", "rsct")
            canonical = f"/file/{self.account}{signed}"
            string_to_sign = "\n".join(
                [
                    q.get("sp", ""),
                    q.get("st", ""),
                    q.get("se", ""),
                    canonical,
                    *(q.get(k, "") for k in fields),
                ]
            )
        if not hmac.compare_digest(self._sign(string_to_sign), q["sig"]):
            raise ServiceError(
                "AuthenticationFailed", f"Signature did not match. String to sign used was {string_to_sign}"
            )
        now = _now()
        start = _parse_iso(q["st"]) if q.get("st") else None
        expiry = _parse_iso(q["se"]) if q.get("se") else None
        if expiry is None or now > expiry or (start is not None and now < start - CLOCK_SKEW):
            raise ServiceError(
                "AuthenticationFailed",
                f"Signed expiry time [{q.get('se')}] must be after signed start time [{q.get('st')}] "
                "and the current time",
            )
        if q.get("spr") == "https":
            raise ServiceError("AuthorizationProtocolMismatch")
        if q.get("sip") and not _ip_allowed(q["sip"], req.client_ip):
            raise ServiceError("AuthorizationSourceIPMismatch")
        if "ss" in q:
            if "f" not in q.get("ss", ""):
                raise ServiceError("AuthorizationServiceMismatch")
            kind = "o" if req.is_file_op else "c"
            if kind not in q.get("srt", ""):
                raise ServiceError("AuthorizationResourceTypeMismatch")
        if needs not in q.get("sp", ""):
            raise ServiceError("AuthorizationPermissionMismatch")

    # -- operations ------------------------------------------------------------

    def handle(self, req: _Request) -> _Response:
        parts = req.parts
        if not parts or parts[0] != self.account:
            raise ServiceError("InvalidUri")
        if req.method not in {"GET", "HEAD"}:
            raise ServiceError("UnsupportedHttpVerb")
        share, path = (parts[1] if len(parts) > 1 else ""), parts[2:]
        restype, comp = req.query.get("restype"), req.query.get("comp")
        if not share:
            raise ServiceError("InvalidUri", "account-level operations are not in this fake")
        resource = "/" + "/".join([share, *path])
        req.is_file_op = restype is None and comp is None
        if restype == "directory" and comp == "list":
            if req.method != "GET":
                raise ServiceError("UnsupportedHttpVerb")
            self.authenticate(req, "l", resource)
            return self._list(req, share, path)
        if comp is not None:
            raise ServiceError("InvalidQueryParameterValue", f"comp={comp} is not in this fake")
        self.authenticate(req, "r", resource)
        if restype == "share":
            if path:
                raise ServiceError("InvalidUri")
            return self._share_properties(share)
        if restype == "directory":
            return self._directory_properties(share, path)
        if restype is not None:
            raise ServiceError("InvalidQueryParameterValue", f"restype={restype}")
        if not path:
            raise ServiceError("InvalidUri")
        return self._get_file(req, share, path)

    def _resolve(self, share: str, path: list[str]) -> FileEntry | DirEntry:
        """Walk a path like the service: ShareNotFound, ParentNotFound or ResourceNotFound."""
        node: FileEntry | DirEntry | None = self._shares.get(share)
        if node is None:
            raise ServiceError("ShareNotFound")
        for index, part in enumerate(path):
            if not isinstance(node, DirEntry):
                raise ServiceError("ParentNotFound")
            child = node.get(part)
            if child is None:
                raise ServiceError("ParentNotFound" if index < len(path) - 1 else "ResourceNotFound")
            node = child
        return node

    def _share_properties(self, share: str) -> _Response:
        with self._lock:
            root = self._shares.get(share)
            if root is None:
                raise ServiceError("ShareNotFound")
            return _Response(
                200,
                {
                    "ETag": root.etag,
                    "Last-Modified": _rfc1123(root.last_modified),
                    "x-ms-share-quota": "5120",
                    "x-ms-access-tier": "TransactionOptimized",
                    "x-ms-access-tier-change-time": _rfc1123(root.created),
                    "x-ms-enabled-protocols": "SMB",
                    "x-ms-lease-status": "unlocked",
                    "x-ms-lease-state": "available",
                },
            )

    def _directory_properties(self, share: str, path: list[str]) -> _Response:
        with self._lock:
            node = self._resolve(share, path)
        if not isinstance(node, DirEntry):
            raise ServiceError("ResourceNotFound")
        return _Response(200, {"ETag": node.etag, **_smb_headers(node, "Directory")})

    def _get_file(self, req: _Request, share: str, path: list[str]) -> _Response:
        for name in _CONDITIONAL_HEADERS:
            if name in req.headers:
                raise ServiceError("ConditionHeadersNotSupported")
        with self._lock:
            node = self._resolve(share, path)
        if not isinstance(node, FileEntry):
            raise ServiceError("ResourceNotFound")
        size = len(node.data)
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": node.etag,
            "Accept-Ranges": "bytes",
            "x-ms-type": "File",
            **_smb_headers(node, "Archive"),
        }
        byte_range = _parse_range(req) if req.method == "GET" else None
        want_range_md5 = req.headers.get("x-ms-range-get-content-md5", "").lower() == "true"
        if want_range_md5 and byte_range is None and req.method == "GET":
            raise ServiceError("MissingRequiredHeader", "Range")
        if byte_range is None:
            if node.content_md5 is not None:
                headers["Content-MD5"] = base64.b64encode(node.content_md5).decode()
            return _Response(200, headers, length=size, file_path="/".join([share, *path]), content=node.data)
        start, end = byte_range
        if start >= size:
            raise ServiceError("InvalidRange", headers={"Content-Range": f"bytes */{size}"})
        end = min(size - 1, end if end is not None else size - 1)
        length = end + 1 - start
        if want_range_md5:
            if length > MAX_RANGE_MD5:
                raise ServiceError("OutOfRangeInput", "x-ms-range-get-content-md5 needs a range <= 4 MiB")
            range_md5 = hashlib.md5(node.data[start : end + 1]).digest()
            headers["Content-MD5"] = base64.b64encode(range_md5).decode()
        if node.content_md5 is not None:
            headers["x-ms-content-md5"] = base64.b64encode(node.content_md5).decode()
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        file_path = "/".join([share, *path])
        return _Response(206, headers, length=length, file_path=file_path, content=node.data, offset=start)

    def _list(self, req: _Request, share: str, path: list[str]) -> _Response:
        q = req.query
        try:
            max_results = int(q.get("maxresults", MAX_RESULTS))
        except ValueError:
            raise ServiceError("InvalidQueryParameterValue", "maxresults") from None
        if max_results <= 0:
            raise ServiceError("OutOfRangeQueryParameterValue", "maxresults")
        max_results = min(max_results, MAX_RESULTS)
        include = {item.strip().lower() for item in q.get("include", "").split(",") if item.strip()}
        if include - {"timestamps", "etag", "attributes", "permissionkey"}:
            raise ServiceError("InvalidQueryParameterValue", "include")
        extended = req.headers.get("x-ms-file-extended-info", "").lower() == "true"
        prefix = q.get("prefix", "")
        marker = q.get("marker", "")
        after = _decode_marker(marker) if marker else None
        with self._lock:
            node = self._resolve(share, path)
            if not isinstance(node, DirEntry):
                raise ServiceError("ResourceNotFound")
            entries = sorted(
                (c for c in node.children.values() if c.name.casefold().startswith(prefix.casefold())),
                key=lambda c: (c.name.casefold(), c.name),
            )
        if after is not None:
            entries = [c for c in entries if (c.name.casefold(), c.name) > after]
        page, rest = entries[:max_results], entries[max_results:]
        next_marker = _encode_marker(page[-1].name) if rest else ""
        out = [
            '<?xml version="1.0" encoding="utf-8"?>',
            f"<EnumerationResults ServiceEndpoint={quoteattr(self.endpoint + '/')} "
            f"ShareName={quoteattr(share)} DirectoryPath={quoteattr('/'.join(path))}>",
        ]
        if "prefix" in q:
            out.append(f"<Prefix>{escape(prefix)}</Prefix>")
        out.append(f"<Marker>{escape(marker)}</Marker>" if marker else "<Marker />")
        if "maxresults" in q:
            out.append(f"<MaxResults>{max_results}</MaxResults>")
        if extended:
            out.append(f"<DirectoryId>{node.file_id}</DirectoryId>")
        out.append("<Entries>")
        for child in page:
            out.append(_entry_xml(child, include, extended))
        out.append("</Entries>")
        out.append(f"<NextMarker>{escape(next_marker)}</NextMarker>" if next_marker else "<NextMarker />")
        out.append("</EnumerationResults>")
        body = "".join(out).encode("utf-8")
        return _Response(200, {"Content-Type": "application/xml"}, body, length=len(body))


def _entry_xml(child: FileEntry | DirEntry, include: set[str], extended: bool) -> str:
    tag = "File" if isinstance(child, FileEntry) else "Directory"
    name = child.name
    if _XML_INVALID.search(name):
        name_xml = f'<Name Encoded="true">{escape(quote(name, safe=""))}</Name>'
    else:
        name_xml = f"<Name>{escape(name)}</Name>"
    props = []
    if isinstance(child, FileEntry):
        props.append(f"<Content-Length>{len(child.data)}</Content-Length>")
    if "timestamps" in include:
        stamp = _iso7(child.last_modified)
        props += [
            f"<CreationTime>{_iso7(child.created)}</CreationTime>",
            f"<LastAccessTime>{stamp}</LastAccessTime>",
            f"<LastWriteTime>{stamp}</LastWriteTime>",
            f"<ChangeTime>{stamp}</ChangeTime>",
            f"<Last-Modified>{_rfc1123(child.last_modified)}</Last-Modified>",
        ]
    if "etag" in include:
        # Unquoted, as Blob listings write it (headers carry the quoted form).
        props.append(f"<Etag>{escape(child.etag.strip(chr(34)))}</Etag>")
    parts = [f"<{tag}>"]
    if extended:
        parts.append(f"<FileId>{child.file_id}</FileId>")
    parts.append(name_xml)
    parts.append(f"<Properties>{''.join(props)}</Properties>" if props else "<Properties />")
    if "attributes" in include:
        parts.append(f"<Attributes>{'Archive' if tag == 'File' else 'Directory'}</Attributes>")
    if "permissionkey" in include:
        parts.append("<PermissionKey>4066528134148476695*1</PermissionKey>")
    parts.append(f"</{tag}>")
    return "".join(parts)


def _smb_headers(node: FileEntry | DirEntry, attributes: str) -> dict[str, str]:
    return {
        "Last-Modified": _rfc1123(node.last_modified),
        "x-ms-server-encrypted": "true",
        "x-ms-file-attributes": attributes,
        "x-ms-file-creation-time": _iso7(node.created),
        "x-ms-file-last-write-time": _iso7(node.last_modified),
        "x-ms-file-change-time": _iso7(node.last_modified),
        "x-ms-file-permission-key": "4066528134148476695*1",
        "x-ms-file-id": node.file_id,
        "x-ms-file-parent-id": "0",
        "x-ms-lease-state": "available",
        "x-ms-lease-status": "unlocked",
    }


def _encode_marker(last_name: str) -> str:
    """An opaque continuation token in the service's style (``2!<len>!<base64>``)."""
    payload = base64.b64encode(f"{last_name.casefold()}\x00{last_name}".encode()).decode()
    return f"2!{len(payload)}!{payload}"


def _decode_marker(marker: str) -> tuple[str, str]:
    try:
        _, _, payload = marker.split("!", 2)
        folded, _, name = base64.b64decode(payload, validate=True).decode().partition("\x00")
    except ValueError:
        raise ServiceError("InvalidQueryParameterValue", "marker") from None
    return folded, name


_RANGE_RE = re.compile(r"bytes=(\d+)-(\d*)")


def _parse_range(req: _Request) -> tuple[int, int | None] | None:
    """``x-ms-range`` wins over ``Range``; a malformed ``x-ms-range`` is 400, ``Range`` ignored."""
    for name in ("x-ms-range", "Range"):
        value = req.headers.get(name)
        if value is None:
            continue
        match = _RANGE_RE.fullmatch(value.strip())
        if match is None or (match.group(2) and int(match.group(2)) < int(match.group(1))):
            if name == "x-ms-range":
                raise ServiceError("InvalidHeaderValue", "x-ms-range")
            continue
        return int(match.group(1)), int(match.group(2)) if match.group(2) else None
    return None


def _parse_iso(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ServiceError("AuthenticationFailed", f"invalid time {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _ip_allowed(sip: str, client: str) -> bool:
    low, _, high = sip.partition("-")
    address = ipaddress.ip_address(client)
    return ipaddress.ip_address(low) <= address <= ipaddress.ip_address(high or low)


@dataclass
class _Request:
    method: str
    raw_path: str
    query_items: list[tuple[str, str]]
    header_items: list[tuple[str, str]]
    client_ip: str
    is_file_op: bool = False

    @property
    def parts(self) -> list[str]:
        # Decoded first, then split: the SDK's directory client sends "a%2Fb" for
        # "a/b", and the service treats an encoded slash as a separator.
        return _split_path(unquote(self.raw_path))

    @property
    def query(self) -> dict[str, str]:
        return dict(self.query_items)

    @cached_property
    def headers(self) -> _Headers:
        return _Headers(self.header_items)


class _Headers(dict[str, str]):
    """Case-insensitive view of request headers (duplicates joined by commas)."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        merged: dict[str, str] = {}
        for name, value in items:
            key = name.lower()
            merged[key] = f"{merged[key]},{value}" if key in merged else value
        super().__init__(merged)

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(key.lower(), default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


@dataclass
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    length: int = 0
    file_path: str | None = None  # set for Get File bodies: faults apply
    content: Content = b""  # Get File: the file's content, served from ``offset``
    offset: int = 0


class _Handler(FakeHandler):
    server_version = "Windows-Azure-File/1.0"
    sys_version = "Microsoft-HTTPAPI/2.0"
    disable_nagle_algorithm = False

    def setup(self) -> None:
        super().setup()
        with self.owner._lock:
            self.owner.connections_opened += 1

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_PUT = do_DELETE = do_POST = do_GET

    def _serve(self) -> None:
        fake: FakeAzureFiles = self.owner
        self.read_body()
        split = urlsplit(self.path)
        req = _Request(
            method=self.command,
            raw_path=split.path,
            query_items=parse_qsl(split.query, keep_blank_values=True),
            header_items=list(self.headers.items()),
            client_ip=self.client_address[0],
        )
        self.record()
        request_id = str(uuid.uuid4())
        try:
            response = fake.handle(req)
        except ServiceError as error:
            response = _error_response(error, request_id, self.command == "HEAD")
        common = {
            "x-ms-request-id": request_id,
            "x-ms-version": req.headers.get("x-ms-version") or SERVICE_VERSION,
            "x-ms-client-request-id": req.headers.get("x-ms-client-request-id") or "",
        }
        headers = {name: value for name, value in {**common, **response.headers}.items() if value}
        headers["Content-Length"] = str(response.length)
        if self.close_connection:  # the request said "Connection: close": say so, as HTTP/1.1 servers do
            headers["Connection"] = "close"
        if response.file_path is None:
            self.send(response.status, headers, response.body)
            return
        self.send(response.status, headers)
        if self.command == "HEAD":
            return
        path = response.file_path
        body = _Slice(response.content, response.offset, response.length)

        def counted(n: int) -> None:
            with fake._lock:
                fake.bytes_served += n

        faults = fake.faults.pending(path, ("stall", "cut", "replace"))
        replace = functools.partial(_replace_hook, fake, path)
        self.stream(body, faults, claim=fake.faults.claim, replace=replace, wake=fake._wake, counted=counted)


def _replace_hook(fake: FakeAzureFiles, path: str, fault: Fault) -> None:
    fake._replace(fault, path)


@dataclass(frozen=True)
class _Slice:
    """``length`` bytes of a file's content from ``offset``, sliced lazily (contents may be huge)."""

    content: Content
    offset: int
    length: int

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item: slice) -> bytes:
        return bytes(self.content[self.offset + item.start : self.offset + item.stop])


def _error_response(error: ServiceError, request_id: str, head: bool) -> _Response:
    headers = {"x-ms-error-code": error.code, **error.headers}
    if head:
        return _Response(error.status, headers)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"
    detail = ""
    if error.detail:
        tag = "AuthenticationErrorDetail" if error.code == "AuthenticationFailed" else "ExceptionDetails"
        if error.code in {"MissingRequiredHeader", "InvalidHeaderValue"}:
            tag = "HeaderName"
        elif error.code.endswith("QueryParameterValue"):
            tag = "QueryParameterName"
        detail = f"<{tag}>{escape(error.detail)}</{tag}>"
    body = (
        '<?xml version="1.0" encoding="utf-8"?><Error>'
        f"<Code>{error.code}</Code><Message>{escape(error.message)}\n"
        f"RequestId:{request_id}\nTime:{when}</Message>{detail}</Error>"
    ).encode()
    headers["Content-Type"] = "application/xml"
    return _Response(error.status, headers, body, length=len(body))


@pytest.fixture(scope="session")
def fake_azure_files_server() -> Iterator[FakeAzureFiles]:
    with FakeAzureFiles() as server:
        yield server


@pytest.fixture
def fake_azure_files(fake_azure_files_server: FakeAzureFiles) -> Iterator[FakeAzureFiles]:
    """The shared fake, emptied for each test (faults, counters and shares reset)."""
    fake_azure_files_server.reset()
    fake_azure_files_server.allow_anonymous = False
    yield fake_azure_files_server
    fake_azure_files_server.reset()
