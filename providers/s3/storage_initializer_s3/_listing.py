"""What ``s3://bucket/path`` names, as a stream of :class:`RemoteObject`.

**One object or a directory, in one request.** ``s3://b/model`` lists
``Prefix="model"`` once. S3 returns keys in UTF-8 binary order, so the object
``model`` (a prefix of every other key) comes first if it exists, and then it
is the answer (KServe: the object wins). Otherwise the page's ``model/...``
keys are the directory; siblings such as ``model-v2/...`` or ``model.bin``
are skipped. If the page is truncated the listing continues with
``Prefix="model/"`` (after the last directory key already seen), so however
many siblings there are, at most that first page of them is ever read. A
single object or a directory of up to ~1000 keys costs one request; a
trailing slash (``s3://b/model/``) or the bucket root is always a directory.
Stores that order keys differently are still listed correctly (SeaweedFS
lists ``model/...`` before ``model-v2``: such keys from the first page are
not repeated); only the shortcut depends on S3's order. (S3 "directory
buckets" do not sort keys and reject such prefixes: not supported, as in
KServe.)

**Checksums.** A single-part ETag (32 hex digits) is the MD5 of the object,
offered as ``md5``, except for SSE-KMS/DSSE-KMS/SSE-C objects (their ETag is
something else). A listing does not say how objects are encrypted, so the
first object with such an ETag is probed with one ``HeadObject`` and the
answer applies to the listing; an object encrypted otherwise than the probed
one shows it in its GET answer, and ``open_range`` then withdraws its
``md5``. Objects of :data:`HEAD_MIN_SIZE` or more each get a ``HeadObject``
with ``x-amz-checksum-mode: ENABLED``: their full-object additional
checksums (CRC32C, SHA-256, SHA-1, CRC32, CRC64NVME; hex) are cheaper for the
engine to verify than MD5, and multipart objects have no other. Composite
(per-part) checksums and multipart ETags (``-N``) are not digests of the
object and are not offered; the size always is verified.

**Version ids.** ListObjectsV2 carries none. An object that gets a
``HeadObject`` (a single object, the large ones, the SSE probe) takes its
``x-amz-version-id`` from it; the others learn it from their first GET answer
(see :class:`ObjectRef`). Reads are pinned to it once known, and the record
names it per file.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from storage_initializer.errors import NotFoundError
from storage_initializer.provider import RemoteObject

from ._wire import Listed, Page, S3Wire

log = logging.getLogger("storage_initializer.s3")

MiB = 1024 * 1024
#: Objects at least this large get their own HeadObject (for additional checksums): the engine's
#: default multipart threshold, above which objects are read as ranged parts, and S3 names an
#: object's checksums on whole-object answers only. (One HEAD, ~1 ms, against hashing 32 MiB
#: with MD5, 50 ms, instead of CRC64NVME.)
HEAD_MIN_SIZE = 32 * MiB

_MD5_ETAG_RE = re.compile(r"^[0-9a-fA-F]{32}$")
#: Response headers of S3's additional checksums -> the engine's algorithm names.
_CHECKSUM_HEADERS = (
    ("x-amz-checksum-crc32c", "crc32c"),
    ("x-amz-checksum-sha256", "sha256"),
    ("x-amz-checksum-sha1", "sha1"),
    ("x-amz-checksum-crc32", "crc32"),
    ("x-amz-checksum-crc64nvme", "crc64nvme"),
)
#: Server-side encryption whose ETag is not the MD5 of the content.
_OPAQUE_ETAG_SSE = ("aws:kms", "aws:kms:dsse")


@dataclass(frozen=True)
class ObjectRef:
    """What ``open_range`` needs about a listed object (kept in ``RemoteObject.extra``).

    ``version_id`` is S3's ``x-amz-version-id`` from a ``HeadObject`` (a versioned
    bucket; ``null`` for an object written before versioning was enabled, as S3 says it).
    A listed object that got no HEAD learns it from its first GET answer
    (:meth:`learned`); either way later reads are pinned to it (``versionId=``).
    """

    bucket: str
    key: str
    etag: str | None  # as S3 sends it, quotes included (for If-Match)
    md5_from_etag: bool = False
    version_id: str | None = None
    served: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def current_version(self) -> str | None:
        """The version id reads are pinned to: from the HEAD, else from the first GET answer."""
        return self.version_id or self.served.get("version_id")

    def learned(self, version_id: str) -> None:
        """The version id a GET answer carried (the first one is kept)."""
        self.served.setdefault("version_id", version_id)


def etag_md5(etag: str | None) -> str | None:
    """The MD5 a single-part ETag stands for (lowercase hex), else ``None``."""
    bare = (etag or "").strip().strip('"')
    return bare.lower() if _MD5_ETAG_RE.match(bare) else None


def opaque_etag(headers: Mapping[str, str]) -> bool:
    """True when the object's encryption makes its ETag something other than an MD5."""
    sse = (headers.get("x-amz-server-side-encryption") or "").strip().lower()
    return sse in _OPAQUE_ETAG_SSE or bool(headers.get("x-amz-server-side-encryption-customer-algorithm"))


def version_id(headers: Mapping[str, str]) -> str | None:
    """S3's version id of the object an answer is about; ``None`` when the bucket is not versioned.

    S3 sends no ``x-amz-version-id`` for an unversioned bucket, and ``null`` (a real id,
    usable as ``versionId=null``) for an object written before versioning was enabled:
    that is recorded as S3 says it, never made up.
    """
    value = (headers.get("x-amz-version-id") or "").strip()
    return value or None


def checksums_from(headers: Mapping[str, str]) -> dict[str, str]:
    """Full-object additional checksums (base64 big-endian in S3) as lowercase hex.

    Composite checksums of multipart uploads (``x-amz-checksum-type: COMPOSITE``
    or a ``-N`` suffix) are checksums of part checksums: skipped.
    """
    if (headers.get("x-amz-checksum-type") or "").strip().upper() == "COMPOSITE":
        return {}
    found = {}
    for header, algorithm in _CHECKSUM_HEADERS:
        value = (headers.get(header) or "").strip()
        if not value or "-" in value:
            continue
        try:
            found[algorithm] = base64.b64decode(value, validate=True).hex()
        except (binascii.Error, ValueError):
            continue
    return found


class Listing:
    """One ``list()`` call: pages, the object-or-directory decision, checksums."""

    def __init__(self, wire: S3Wire, uri: str, bucket: str) -> None:
        self.wire = wire
        self.uri = uri
        self.bucket = bucket
        self.md5_trusted: bool | None = None  # decided by the first HEAD (the SSE probe)
        self.found = 0  # files and markers below the directory
        self.own_marker = False  # the directory's own "path/" marker object

    def pages(self, prefix: str, start_after: str | None = None) -> Iterator[Page]:
        token: str | None = None
        while True:
            page = self.wire.list_page(self.uri, self.bucket, prefix, token, start_after)
            yield page
            token = page.next_token
            if not page.truncated or not token:
                return

    def object_or_directory(self, path: str) -> Iterator[RemoteObject]:
        first = self.wire.list_page(self.uri, self.bucket, path, None, None)
        if first.entries and first.entries[0].key == path:
            yield self.single(path)
            return
        prefix = path + "/"
        yield from self.entries(first.entries, prefix)
        if first.truncated and first.entries:
            last = first.entries[-1].key
            if last.startswith(prefix):  # the page ends inside the directory: go on from there
                for page in self.pages(prefix, start_after=last):
                    yield from self.entries(page.entries, prefix)
            elif last < prefix:  # the page ends among siblings sorting before "path/": jump there
                # A store that lists "path/..." before "path-..." (SeaweedFS walks its directory
                # tree) already returned some of them: skip those (at most one page of keys).
                seen = {e.key for e in first.entries if e.key.startswith(prefix)}
                for page in self.pages(prefix):
                    entries = [e for e in page.entries if e.key not in seen] if seen else page.entries
                    yield from self.entries(entries, prefix)
        self.finish(prefix)

    def directory(self, prefix: str) -> Iterator[RemoteObject]:
        for page in self.pages(prefix):
            yield from self.entries(page.entries, prefix)
        self.finish(prefix)

    def entries(self, entries: list[Listed], prefix: str) -> Iterator[RemoteObject]:
        for entry in entries:
            if not entry.key.startswith(prefix):
                continue  # a sibling such as model-v2/ or model.bin
            relative = entry.key[len(prefix) :]
            if not relative:
                self.own_marker = True  # "model/" itself: a directory marker
                continue
            self.found += 1
            if relative.endswith("/"):  # a marker: the engine skips it
                yield RemoteObject(key=relative, size=0, extra=ObjectRef(self.bucket, entry.key, entry.etag))
                continue
            yield self.remote(relative, entry)

    def finish(self, prefix: str) -> None:
        if self.found:
            return
        what = "only its directory marker" if self.own_marker else "no object"
        below = f"under {prefix!r}" if prefix else "in it"
        raise NotFoundError(
            f"{self.uri}: nothing to download: bucket {self.bucket!r} holds {what} {below}",
            hint="check the path (keys are case-sensitive); an empty model is an error",
        )

    def single(self, key: str) -> RemoteObject:
        return self.from_head(key.rsplit("/", 1)[-1], key, self.wire.head(self.uri, self.bucket, key))

    def remote(self, relative: str, entry: Listed) -> RemoteObject:
        size = entry.size or 0
        if size >= HEAD_MIN_SIZE or (self.md5_trusted is None and size and etag_md5(entry.etag)):
            return self.from_head(relative, entry.key, self.wire.head(self.uri, self.bucket, entry.key))
        md5 = etag_md5(entry.etag) if self.md5_trusted is not False else None
        return RemoteObject(
            key=relative,
            size=entry.size,
            version=entry.etag.strip('"') if entry.etag else None,
            checksums={"md5": md5} if md5 else {},
            extra=ObjectRef(self.bucket, entry.key, entry.etag, md5_from_etag=bool(md5)),
        )

    def from_head(self, relative: str, key: str, headers: Mapping[str, str]) -> RemoteObject:
        etag = headers.get("ETag")
        md5 = etag_md5(etag)
        if md5 and opaque_etag(headers):
            md5 = None
        if etag_md5(etag) and self.md5_trusted is None:
            self.md5_trusted = md5 is not None
            if md5 is None:
                log.info("s3://%s: objects are KMS/SSE-C encrypted, ETags are not MD5s", self.bucket)
        checksums = checksums_from(headers)
        if md5:
            checksums["md5"] = md5
        length = (headers.get("Content-Length") or "").strip()
        return RemoteObject(
            key=relative,
            size=int(length) if length.isdigit() else None,
            version=etag.strip('"') if etag else None,
            checksums=checksums,
            extra=ObjectRef(self.bucket, key, etag, md5_from_etag=md5 is not None, version_id=version_id(headers)),
        )
