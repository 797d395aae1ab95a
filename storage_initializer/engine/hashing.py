"""Checksums: which one to verify, and how to compute it without a second pass.

A store may announce several digests; verifying one is enough, so the
cheapest available is chosen (crc32c when its C library is installed, then
sha256/sha1, which use CPU instructions, then md5, the slowest). Objects read
in one stream are hashed from the buffers as they arrive. Objects read as
parallel parts are hashed in order by :class:`~.inorder.InOrderHasher`, which
follows the contiguous written prefix of the file (reading it back from the
page cache), so hashing overlaps the download instead of adding a tail.

A pin (``--expect-digest``, ``--expect-manifest``) needs the file's sha256:
:class:`Digests` computes it beside the store's checksum in the same pass,
or reuses the store's own sha256 when one is announced.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


class _Crc32c:
    def __init__(self) -> None:
        import google_crc32c  # type: ignore[import-not-found, unused-ignore]

        self._impl: Any = google_crc32c.Checksum()  # type: ignore[no-untyped-call, unused-ignore]

    def update(self, data: bytes | memoryview, /) -> None:
        self._impl.update(bytes(data))  # the C extension refuses memoryviews

    def hexdigest(self) -> str:
        return str(self._impl.digest().hex())


def _crc32c_available() -> bool:
    try:
        import google_crc32c

        return str(google_crc32c.implementation) == "c"
    except ImportError:
        return False


class _Crc32:
    """zlib's CRC-32 (S3's ``ChecksumCRC32``), as big-endian hex."""

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes | memoryview, /) -> None:
        self._value = zlib.crc32(data, self._value)

    def hexdigest(self) -> str:
        return f"{self._value:08x}"


class _GitBlobSha1:
    """Git's object id of a file: sha1 of ``b"blob <size>\\0"`` + the content."""

    def __init__(self, size: int) -> None:
        self._impl = hashlib.sha1(f"blob {size}\0".encode())

    def update(self, data: bytes | memoryview, /) -> None:
        self._impl.update(data)

    def hexdigest(self) -> str:
        return self._impl.hexdigest()


# Preference order: fastest first.
_PREFERENCE = ("crc32c", "crc32", "sha256", "sha1", "git-sha1", "sha512", "md5")


_CONSTRUCTORS: dict[str, Any] = {
    "md5": hashlib.md5,
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
}


@dataclass(frozen=True)
class Checksum:
    """The digest to verify an object against, and how to compute it."""

    algorithm: str
    expected: str
    size: int | None = None

    def new(self) -> Hasher:
        if self.algorithm == "crc32c":
            return _Crc32c()
        if self.algorithm == "crc32":
            return _Crc32()
        if self.algorithm == "git-sha1":
            assert self.size is not None
            return _GitBlobSha1(self.size)
        constructor = _CONSTRUCTORS.get(self.algorithm)
        # hashlib.new() looks the name up on every call: a few microseconds per small file.
        return constructor() if constructor is not None else hashlib.new(self.algorithm)


def choose_checksum(
    checksums: Mapping[str, str], size: int | None = None, prefer: str | None = None
) -> Checksum | None:
    """Pick the cheapest checksum the store announced that we can compute.

    ``prefer`` names an algorithm to take first when announced (``sha256`` when a
    pin needs it anyway: one hash then serves both). Algorithms: ``crc32c``
    (needs google-crc32c's C extension), ``crc32``, ``sha256``, ``sha1``,
    ``git-sha1`` (git's blob id, e.g. the Hugging Face Hub's id of
    a non-LFS file; needs the size), ``sha512``, ``md5``.
    """
    order = _PREFERENCE if prefer is None else (prefer, *_PREFERENCE)
    for algorithm in order:
        expected = checksums.get(algorithm)
        if not expected:
            continue
        if algorithm == "crc32c" and not _crc32c_available():
            continue
        if algorithm == "git-sha1" and size is None:
            continue
        return Checksum(algorithm, expected.lower(), size)
    return None


@dataclass(frozen=True)
class FileHashes:
    """What the engine hashed of one file: the store checksums it verified, the sha256, and how."""

    verified: Mapping[str, str]  # algorithm -> the store's digest, checked
    sha256: str | None  # the file's sha256 when a pin asked for it (or the store announced it)
    how: str  # "while streaming", "after the download"...


class Digests:
    """Every hash one download feeds, in one pass: the store's checksum and/or a sha256.

    ``checksum`` is the store's digest to verify (``None``: none announced, or
    verification off); ``sha256`` asks for the file's sha256 too (for a pin). A
    store's sha256 serves both. Quacks like a :class:`Hasher` (``hexdigest`` is
    the store checksum's) so the event loop can feed it.
    """

    __slots__ = ("_own", "_store", "checksum")

    def __init__(self, checksum: Checksum | None, sha256: bool) -> None:
        self.checksum = checksum
        self._store = checksum.new() if checksum is not None else None
        shared = checksum is not None and checksum.algorithm == "sha256"
        self._own: Any = hashlib.sha256() if sha256 and not shared else None

    @classmethod
    def make(cls, checksum: Checksum | None, sha256: bool) -> Digests | None:
        """The hashers needed, or ``None`` when nothing is to be computed."""
        return cls(checksum, sha256) if checksum is not None or sha256 else None

    def update(self, data: bytes | memoryview, /) -> None:
        if self._store is not None:
            self._store.update(data)
        if self._own is not None:
            self._own.update(data)

    def hexdigest(self) -> str:
        """The store checksum's digest (call :meth:`sha256` for the pin's)."""
        return self._store.hexdigest() if self._store is not None else ""

    def sha256(self) -> str | None:
        """The file's sha256 when one was asked for or announced by the store."""
        if self._own is not None:
            return str(self._own.hexdigest())
        if self.checksum is not None and self.checksum.algorithm == "sha256" and self._store is not None:
            return self._store.hexdigest()
        return None
