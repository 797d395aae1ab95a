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
from collections.abc import Mapping, Sequence
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


# Preference order: fastest first.
_PREFERENCE = ("crc32c", "sha256", "sha1", "sha512", "md5")


def choose_checksum(checksums: Mapping[str, str]) -> tuple[str, str] | None:
    """Pick the cheapest (algorithm, expected hex digest) we can compute."""
    for algorithm in _PREFERENCE:
        expected = checksums.get(algorithm)
        if not expected:
            continue
        if algorithm == "crc32c" and not _crc32c_available():
            continue
        return algorithm, expected.lower()
    return None


def new_hasher(algorithm: str) -> Hasher:
    if algorithm == "crc32c":
        return _Crc32c()
    return hashlib.new(algorithm)


class SequentialHasher:
    """Hash a file written by parallel parts, in order, as parts complete."""

    def __init__(self, algorithm: str, fd: int, parts: Sequence[tuple[int, int]]) -> None:
        self.algorithm = algorithm
        self._hasher = new_hasher(algorithm)
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
