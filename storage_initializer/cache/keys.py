"""Which cache entry an object maps to.

Content-addressed where the store gives a strong digest (``sha256``: Hugging
Face LFS files, OCI blobs, S3 ``ChecksumSHA256``): two sources serving the
same bytes share one entry. Otherwise the entry is keyed by where the object
comes from and which version of it the store lists (source, key, size,
version, every announced checksum), so it is shared only by downloads of
that same object. An object with neither a version nor a checksum is never
cached: nothing would tell a changed object from the cached one.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from storage_initializer.provider import RemoteObject

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class CacheKey:
    """``name``: the entry's file name; ``sha256``: the content digest when the name is one."""

    name: str
    size: int
    sha256: str | None


def cache_key(source: str, obj: RemoteObject) -> CacheKey | None:
    """The entry for ``obj`` listed under ``source``, or ``None`` when it cannot be cached."""
    if obj.size is None or obj.is_dir_marker:
        return None
    digest = (obj.checksums.get("sha256") or "").lower()
    if _HEX64.match(digest):
        return CacheKey(f"sha256-{digest}", obj.size, digest)
    if obj.version is None and not obj.checksums:
        return None
    identity = json.dumps(
        [source, obj.key, obj.size, obj.version, sorted(obj.checksums.items())], separators=(",", ":")
    )
    return CacheKey("id-" + hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest(), obj.size, None)
