"""Checksums: which one to verify, and how to compute it without a second pass.

A store may announce several digests; verifying one is enough, so the
cheapest available is chosen (crc32c when its C library is installed, then
sha256/sha1, which use CPU instructions, then md5, the slowest). Objects read
in one stream are hashed from the buffers as they arrive. Objects read as
parallel parts are hashed in order by :class:`SequentialHasher`, which
advances over the file (from the page cache) as soon as the next part is
complete, so hashing overlaps the download instead of adding a tail.
"""

from __future__ import annotations

import hashlib
import os
import threading
import zlib
from collections.abc import Mapping, Sequence
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


def choose_checksum(checksums: Mapping[str, str], size: int | None = None) -> Checksum | None:
    """Pick the cheapest checksum the store announced that we can compute.

    Algorithms: ``crc32c`` (needs google-crc32c's C extension), ``crc32``, ``sha256``,
    ``sha1``, ``git-sha1`` (git's blob id, e.g. the Hugging Face Hub's id of
    a non-LFS file; needs the size), ``sha512``, ``md5``.
    """
    for algorithm in _PREFERENCE:
        expected = checksums.get(algorithm)
        if not expected:
            continue
        if algorithm == "crc32c" and not _crc32c_available():
            continue
        if algorithm == "git-sha1" and size is None:
            continue
        return Checksum(algorithm, expected.lower(), size)
    return None


class SequentialHasher:
    """Hash a file written by parallel parts, in order, as parts complete."""

    def __init__(self, checksum: Checksum, fd: int, parts: Sequence[tuple[int, int]]) -> None:
        self.checksum = checksum
        self._hasher = checksum.new()
        self._fd = fd
        self._parts = list(parts)
        self._done = [False] * len(self._parts)
        self._next = 0
        self._lock = threading.Lock()
        self._state_lock = threading.Lock()

    def part_done(self, index: int, buffer: memoryview) -> None:
        """Record a finished part and hash what is now contiguous, if nobody else is."""
        with self._state_lock:
            self._done[index] = True
        if self._lock.acquire(blocking=False):
            try:
                self._advance(buffer)
            finally:
                self._lock.release()

    def hexdigest(self, buffer: memoryview) -> str:
        """Finish hashing (every part must be done) and return the digest."""
        with self._lock:
            self._advance(buffer)
            if self._next != len(self._parts):
                raise RuntimeError("hexdigest() before every part was written")
            return self._hasher.hexdigest()

    def _advance(self, buffer: memoryview) -> None:
        while True:
            with self._state_lock:
                if self._next >= len(self._parts) or not self._done[self._next]:
                    return
                start, end = self._parts[self._next]
            offset = start
            while offset < end:
                n = os.preadv(self._fd, [buffer[: min(len(buffer), end - offset)]], offset)
                if n <= 0:
                    raise OSError(f"short read while hashing at offset {offset}")
                self._hasher.update(buffer[:n])
                offset += n
            self._next += 1
