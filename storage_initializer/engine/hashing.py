"""Checksums: which one to verify, and how to compute it without a second pass.

A store may announce several digests; verifying one is enough, so the
cheapest available is chosen: crc64nvme and crc32c (C libraries, 7-14 GiB/s
here), crc32 (zlib, 1.8 GiB/s), sha256/sha1 (1 GiB/s), md5 (0.6 GiB/s, the
slowest). A store may also announce a digest in its answer to the read (an S3
GET with ``x-amz-checksum-mode``): :meth:`Digests.deferred` chooses when the
first byte is hashed, by which time the provider has seen that answer. Objects read
in one stream are hashed from the buffers as they arrive. Objects read as
parallel parts are hashed, for a CRC, part by part as each lands, the part CRCs
combined at the end (:class:`~.partwise.PartwiseHasher`); otherwise in order by
:class:`~.inorder.InOrderHasher`, which follows the contiguous written prefix of
the file (reading it back from the page cache). Either way hashing overlaps the
download instead of adding a tail.

A pin (``--expect-digest``, ``--expect-manifest``) needs the file's sha256:
:class:`Digests` computes it beside the store's checksum in the same pass,
or reuses the store's own sha256 when one is announced.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from storage_initializer.errors import IntegrityError


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


class _Crc32c:
    """CRC-32C (GCS's checksum) by google-crc32c's C extension, as big-endian hex.

    The extension takes ``bytes`` only (not a memoryview, not even a read-only one), so
    every buffer is copied first: 6.9 GiB/s here with the copy, against 14 GiB/s for
    awscrt's, which reads the buffer in place (:class:`_AwsCrc`, used when awscrt is
    installed and worth loading; see :data:`CRC64NVME_MIN`).
    """

    def __init__(self) -> None:
        import google_crc32c  # type: ignore[import-not-found, unused-ignore]

        self._impl: Any = google_crc32c.Checksum()  # type: ignore[no-untyped-call, unused-ignore]

    def update(self, data: bytes | memoryview, /) -> None:
        self._impl.update(bytes(data))

    def hexdigest(self) -> str:
        return str(self._impl.digest().hex())


class _AwsCrc:
    """A CRC by awscrt's C code (``crc64nvme``: S3's CRC-64/NVME; ``crc32c``), reading the
    buffer in place, as big-endian hex (:data:`CRCS` digits).

    The library is loaded at the first byte, not when the checksum is chosen: loading it
    costs ~35 ms of CPU, which before a download's first request delays every byte of it
    (measured on the 2 GiB S3 object: its GETs went out 39 ms after the HEAD); once the
    requests are out, the store is already sending.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._crc: Any = None
        self._digits = CRCS[name]
        self._value = 0

    def update(self, data: bytes | memoryview, /) -> None:
        if self._crc is None:
            self._crc = aws_crc(self._name)
        self._value = self._crc(data, self._value)

    def hexdigest(self) -> str:
        return f"{self._value:0{self._digits}x}"


def _crc32c_available() -> bool:
    return _google_crc32c_available() or awscrt_available()


@functools.cache
def _google_crc32c_available() -> bool:
    try:
        import google_crc32c

        return str(google_crc32c.implementation) == "c"
    except ImportError:
        return False


#: Loading awscrt's library costs ~35 ms of CPU (measured: ``python -X importtime -c
#: "import awscrt.checksums"``, 33 ms in ``_awscrt``), what MD5 spends on ~20 MB: it is loaded
#: once objects this large, or this many bytes in all, would have been hashed otherwise.
CRC64NVME_MIN = 16 * 1024 * 1024
_passed_over = 0  # bytes for which another digest was chosen, the library not being loaded


def _crc64nvme_worth(size: int | None, alone: bool) -> bool:
    global _passed_over
    if not alone and "awscrt.checksums" not in sys.modules:
        _passed_over += size or 0
        if _passed_over < CRC64NVME_MIN:
            return False
    return awscrt_available()


@functools.cache
def awscrt_available() -> bool:
    """Whether awscrt is installed: looked up, not loaded (see :class:`_AwsCrc`)."""
    return importlib.util.find_spec("awscrt") is not None and importlib.util.find_spec("_awscrt") is not None


def hash_from_file(fd: int, start: int, end: int, hasher: Hasher, buf: memoryview) -> None:
    """Feed bytes ``[start, end)`` of ``fd`` to ``hasher`` through ``buf`` (bytes already on disk)."""
    while start < end:
        n = os.preadv(fd, [buf[: min(len(buf), end - start)]], start)
        if n <= 0:  # the file is shorter than it should be: not a network error
            raise IntegrityError(f"the temporary file ended at byte {start} of {end}", retryable=True)
        hasher.update(buf[:n])
        start += n


def aws_crc(name: str) -> Callable[..., int]:
    """awscrt's function ``name`` (``crc64nvme``, ``combine_crc32c``...), loading the library."""
    import awscrt.checksums  # type: ignore[import-untyped, import-not-found, unused-ignore]

    function: Callable[..., int] = getattr(awscrt.checksums, name)
    return function


class _Known:
    """A digest already computed: :meth:`Digests.known`."""

    def __init__(self, hexdigest: str) -> None:
        self._hexdigest = hexdigest

    def update(self, data: bytes | memoryview, /) -> None:
        raise RuntimeError("a known digest takes no more bytes")

    def hexdigest(self) -> str:
        return self._hexdigest


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


#: The CRCs (C code, 7-14 GiB/s here), with their hex digits: cheap enough to hash on the
#: event loop from the bytes as they arrive, and combinable from the CRCs of a file's parts
#: (awscrt's ``combine_*``, see :mod:`~.partwise`).
CRCS = {"crc64nvme": 16, "crc32c": 8, "crc32": 8}

# Preference order: fastest first.
_PREFERENCE = ("crc64nvme", "crc32c", "crc32", "sha256", "sha1", "git-sha1", "sha512", "md5")


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
            # awscrt when it is loaded already or the object pays for loading it (google-crc32c
            # copies every buffer); the only choice when google-crc32c's C extension is missing.
            loaded_or_worth = "awscrt.checksums" in sys.modules or (self.size or 0) >= CRC64NVME_MIN
            use_awscrt = not _google_crc32c_available() or (loaded_or_worth and awscrt_available())
            return _AwsCrc("crc32c") if use_awscrt else _Crc32c()
        if self.algorithm == "crc64nvme":
            return _AwsCrc("crc64nvme")
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
    pin needs it anyway: one hash then serves both). Algorithms: ``crc64nvme``
    (needs awscrt; taken once :data:`CRC64NVME_MIN` bytes would have been hashed
    otherwise, or when nothing else is announced), ``crc32c``
    (needs google-crc32c's C extension or awscrt), ``crc32``, ``sha256``, ``sha1``,
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
        if algorithm == "crc64nvme" and not _crc64nvme_worth(size, len(checksums) == 1):
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

    __slots__ = ("_checksum", "_choose", "_own", "_sha256", "_store")

    def __init__(self, checksum: Checksum | None, sha256: bool) -> None:
        self._choose: Callable[[], Checksum | None] | None = None
        self._sha256 = sha256
        self._set(checksum)

    def _set(self, checksum: Checksum | None) -> None:
        sha256 = self._sha256
        self._checksum = checksum
        self._store = checksum.new() if checksum is not None else None
        shared = checksum is not None and checksum.algorithm == "sha256"
        self._own = hashlib.sha256() if sha256 and not shared else None

    @classmethod
    def make(cls, checksum: Checksum | None, sha256: bool) -> Digests | None:
        """The hashers needed, or ``None`` when nothing is to be computed."""
        return cls(checksum, sha256) if checksum is not None or sha256 else None

    @classmethod
    def known(cls, checksum: Checksum, hexdigest: str) -> Digests:
        """Digests of a file whose ``checksum`` digest was computed elsewhere (combined from its parts)."""
        digests = cls(None, sha256=False)
        digests._checksum = checksum
        digests._store = _Known(hexdigest)
        return digests

    @classmethod
    def deferred(cls, choose: Callable[[], Checksum | None], sha256: bool) -> Digests:
        """Digests whose store checksum ``choose()`` names when the first byte is hashed.

        By then the provider has checked the store's answer to the read, which may
        announce a cheaper digest than the listing did (see :class:`RemoteObject`).
        """
        digests = cls(None, sha256)
        digests._choose = choose
        return digests

    @property
    def checksum(self) -> Checksum | None:
        if self._choose is not None:
            self._resolve()
        return self._checksum

    @property
    def idle(self) -> bool:
        """Nothing to compute (resolves a deferred choice: call it once the answer is known)."""
        if self._choose is not None:
            self._resolve()
        return self._store is None and self._own is None

    @property
    def cheap(self) -> bool:
        """Only a CRC to compute (resolves a deferred choice, like :attr:`idle`)."""
        checksum = self.checksum
        return checksum is not None and checksum.algorithm in CRCS and self._own is None

    def _resolve(self) -> None:
        choose, self._choose = self._choose, None
        assert choose is not None
        self._set(choose())

    def update(self, data: bytes | memoryview, /) -> None:
        if self._choose is not None:
            self._resolve()
        if self._store is not None:
            self._store.update(data)
        if self._own is not None:
            self._own.update(data)

    def hexdigest(self) -> str:
        """The store checksum's digest (call :meth:`sha256` for the pin's)."""
        if self._choose is not None:
            self._resolve()
        return self._store.hexdigest() if self._store is not None else ""

    def sha256(self) -> str | None:
        """The file's sha256 when one was asked for or announced by the store."""
        if self._choose is not None:
            self._resolve()
        if self._own is not None:
            return str(self._own.hexdigest())
        if self._checksum is not None and self._checksum.algorithm == "sha256" and self._store is not None:
            return self._store.hexdigest()
        return None
