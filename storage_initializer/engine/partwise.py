"""Hash a file written by parallel ranged parts part by part, when its checksum is a CRC.

A CRC of a concatenation follows from the CRCs of its pieces and their lengths
(awscrt's ``combine_*``), so each part is hashed on its own as it lands, in
whatever order the parts arrive, and the file's CRC is the part CRCs combined
in file order. Unlike :class:`~.inorder.InOrderHasher` (needed for MD5 and
SHA, whose state cannot be combined), nothing waits for the parts before it:
the bytes are hashed right after they are written, while the page cache and
the CPU's caches still hold them, and the last part leaves only its own last
landing to hash. Measured on the 2 GiB S3 object (4 streams of 64 MiB parts,
client and store pinned to a core each): the in-order hasher left 0.2-0.3 s of
hashing after the last byte (the parts behind the first unfinished one), this
one a few milliseconds.

Who hashes: whoever reports a landing (the event loop, or a worker reading
through the provider's stream) hashes that span of that part at once. A part
is written by one stream at a time, and its worker's :meth:`part_done` runs
after its last landing, so a part's running CRC needs no lock.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from storage_initializer.engine.hashing import Checksum, Digests, aws_crc
from storage_initializer.errors import ConfigError, IntegrityError

#: Checksums whose digest combines from the parts' (awscrt >= 0.31), and their hex digits.
COMBINABLE = {"crc64nvme": 16, "crc32c": 8, "crc32": 8}


class PartwiseHasher:
    """The store's CRC ``checksum`` of a file written as ``parts`` (``[start, end)`` ranges covering it)."""

    def __init__(
        self,
        checksum: Checksum,
        fd: int,
        parts: Sequence[tuple[int, int]],
        buffer: Callable[[], memoryview],
    ) -> None:
        self.checksum = checksum
        self._fd = fd
        self._parts = list(parts)
        self._buffer = buffer
        self._hashed = [start for start, _ in self._parts]  # how far each part is hashed
        self._crcs = [0] * len(self._parts)
        self._crc: Callable[..., int] | None = None  # loaded at the first byte (see hashing._AwsCrc)
        #: Bytes hashed by reading the file back (the rest came from the bytes as they were written).
        self.read_back = 0
        #: Bytes that were on disk from an earlier run when hashing started (:meth:`resumed`).
        self.from_disk = 0

    def landed(self, index: int, offset: int, data: memoryview | None = None) -> None:
        """Part ``index`` has written up to ``offset`` (``data``: the bytes just written, ending there)."""
        start = self._hashed[index]
        if offset <= start:
            return
        crc = self._crc or self._load()
        if data is not None and offset - len(data) == start:
            self._crcs[index] = crc(data, self._crcs[index])
        else:
            self._read_back(index, start, offset)
        self._hashed[index] = offset

    def part_done(self, index: int) -> None:
        """Part ``index`` is complete (called by its worker): hash what its landings left."""
        self.landed(index, self._parts[index][1])

    def resumed(self, done: Sequence[int]) -> None:
        """Parts written by an earlier run (complete on disk): hash them from disk, once."""
        for index in done:
            before = self.read_back
            self.part_done(index)
            self.from_disk += self.read_back - before

    def finish(self) -> Digests:
        """Combine the part CRCs in file order (every part must be complete) into the file's digest."""
        self._crc or self._load()
        combine = aws_crc("combine_" + self.checksum.algorithm)
        value = 0
        for index, (start, end) in enumerate(self._parts):
            if self._hashed[index] != end:
                raise RuntimeError(f"finish() with part {index} hashed to {self._hashed[index]} of {end}")
            value = combine(value, self._crcs[index], end - start) if index else self._crcs[index]
        return Digests.known(self.checksum, f"{value:0{COMBINABLE[self.checksum.algorithm]}x}")

    def _load(self) -> Callable[..., int]:
        try:
            aws_crc("combine_" + self.checksum.algorithm)
        except AttributeError:
            raise ConfigError("the installed awscrt cannot combine CRCs", hint="install awscrt 0.31 or later") from None
        self._crc = aws_crc(self.checksum.algorithm)
        return self._crc

    def _read_back(self, index: int, start: int, end: int) -> None:
        crc = self._crc or self._load()
        buf = self._buffer()
        value = self._crcs[index]
        while start < end:
            n = os.preadv(self._fd, [buf[: min(len(buf), end - start)]], start)
            if n <= 0:  # as when hashing a kept prefix (PairTransfer._hash_prefix): not a network error
                raise IntegrityError(f"the temporary file ended at byte {start} of {end}", retryable=True)
            value = crc(buf[:n], value)
            start += n
            self.read_back += n
        self._crcs[index] = value
