"""One whole blob as a stream that survives broken connections.

Tar layers are merged while they stream, so a reset in the middle of a
multi-gigabyte layer must not start the layer (or the image) over: after a
transient failure the blob is reopened with a ranged ``GET`` from the byte
where it broke, after a backoff, and the reader above (decompressor, tar
parser, digest) never notices. A read that makes progress starts a fresh
count of attempts, as the engine does for its own ranged reads.
"""

from __future__ import annotations

import io
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from storage_initializer.errors import TransientError, classify
from storage_initializer.provider import ByteStream

log = logging.getLogger("storage_initializer.oci")

#: Opens the blob at a byte offset; the stream returned is closed by the caller.
Opener = Callable[[int], ByteStream]


class ResumingStream(io.RawIOBase):
    """Reads ``size`` bytes from ``opener(offset)`` streams, reopening after transient errors."""

    def __init__(self, opener: Opener, size: int, name: str, retries: int, backoff: float) -> None:
        self.opener = opener
        self.size = size
        self.name = name
        self.retries = retries
        self.backoff = backoff
        self.offset = 0
        self._stream: ByteStream | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.offset >= self.size:
            return 0
        attempt = 0
        while True:
            try:
                if self._stream is None:
                    self._stream = self.opener(self.offset)
                data = self._stream.read(min(len(buffer), self.size - self.offset))
                if not data:
                    raise TransientError(f"blob {self.name} ended at byte {self.offset} of {self.size}")
            except Exception as exc:
                error = classify(exc)
                self._drop()
                if not error.retryable or attempt >= self.retries:
                    raise error from None
                attempt += 1
                delay = min(self.backoff * 2 ** (attempt - 1), 30.0) * random.uniform(0.5, 1.0)
                log.warning(
                    "blob %s: %s; retrying from byte %d in %.1fs (%d/%d)",
                    self.name,
                    error,
                    self.offset,
                    delay,
                    attempt,
                    self.retries,
                )
                time.sleep(delay)
                continue
            n = len(data)
            buffer[:n] = data
            self.offset += n
            return n

    def _drop(self) -> None:
        if self._stream is not None:
            try:
                self._stream.close()
            except Exception:  # a broken connection may fail to close too
                log.debug("closing a broken blob stream failed", exc_info=True)
            self._stream = None

    def close(self) -> None:
        self._drop()
        super().close()
