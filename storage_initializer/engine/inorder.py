"""Hash a file written by parallel ranged parts, in file order, while it is written.

Parts land out of order, but a digest must see the bytes in order. The
:class:`InOrderHasher` follows the *contiguous written prefix* of the file:
each part reports how far it has written (:meth:`InOrderHasher.landed`, with
the bytes just written when the caller has them), and whatever becomes
contiguous with the bytes already hashed is hashed at once, from those bytes
or read back with ``os.preadv`` while they are still in the page cache. No
part is buffered in memory (one reused buffer per thread), and when the last
part lands only the bytes not yet contiguous remain, so the digest is ready
without a second pass over the file.

Who hashes: the event loop (or a worker's stream) hashes the span it just
wrote when it extends the hashed prefix (at most a read buffer: the cost of
hashing a one-stream object in the loop); the larger spans that appear when a
part completes behind parts already written (up to ``file_concurrency`` parts)
are hashed by that part's worker (:meth:`part_done`), never by the loop. One
thread hashes at a time (``_holder``): a worker hashes until nothing
contiguous is left (checked as it lets go, under the lock), and a worker
finding the loop at it waits for its short span, so no span is left behind.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

from storage_initializer.engine.hashing import Digests
from storage_initializer.errors import IntegrityError

#: The most the event loop hashes in one landing (a read buffer, with room).
INLINE_MAX = 4 * 1024 * 1024
_INLINE, _WORKER = "inline", "worker"


class InOrderHasher:
    """The digests of a file written as ``parts`` (``[start, end)`` ranges covering it, in order)."""

    def __init__(
        self,
        digests: Digests,
        fd: int,
        parts: Sequence[tuple[int, int]],
        buffer: Callable[[], memoryview],
    ) -> None:
        self.digests = digests
        self._fd = fd
        self._parts = list(parts)
        self._buffer = buffer
        self._written = [start for start, _ in self._parts]  # how far each part has written
        self._frontier = 0  # the first part not completely written
        self._hashed = 0  # bytes [0, _hashed) are hashed
        self._holder: str | None = None  # who hashes now: the event loop (inline) or a worker
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)  # notified whenever the hashing role is let go
        #: Bytes hashed by reading the file back (the rest came from the bytes as they were written).
        self.read_back = 0
        #: Bytes that were on disk from an earlier run when hashing started (:meth:`resumed`).
        self.from_disk = 0

    # -- reports from the streams ---------------------------------------------------------
    def landed(self, index: int, offset: int, data: memoryview | None = None) -> None:
        """Part ``index`` has written up to ``offset`` (``data``: the bytes just written, ending there).

        Hashes what became contiguous if that is at most :data:`INLINE_MAX`
        bytes and nobody else is hashing; safe to call from the event loop.
        """
        with self._lock:
            self._written[index] = offset
            self._advance_frontier()
            start = self._hashed
            span = self._contiguous() - start
            if self._holder is not None or span <= 0 or span > INLINE_MAX:
                return
            self._holder = _INLINE
        budget = INLINE_MAX
        try:
            if data is not None and len(data) <= span and offset - len(data) == start:
                self.digests.update(data)  # exactly the bytes just written: no read back
                budget -= len(data)
                with self._lock:
                    self._hashed = start + len(data)
        except BaseException:
            self._drop()
            raise
        self._catch_up(budget)

    def part_done(self, index: int) -> None:
        """Part ``index`` is complete (called by its worker): hash everything now contiguous."""
        with self._lock:
            self._written[index] = self._parts[index][1]
            self._advance_frontier()
        if self._take(wait_for_worker=False):
            self._catch_up(None)

    def resumed(self, done: Sequence[int]) -> None:
        """Parts written by an earlier run (complete on disk): hash the prefix they make, from disk, once."""
        with self._lock:
            for index in done:
                self._written[index] = self._parts[index][1]
            self._advance_frontier()
            self.from_disk = self._contiguous()
        if self._take(wait_for_worker=True):
            self._catch_up(None)

    def resumed_part(self, index: int, offset: int) -> None:
        """Part ``index`` was written up to ``offset`` by an earlier run (hashed once in order)."""
        self.landed(index, offset)

    def finish(self) -> Digests:
        """Hash the rest (every part must be complete) and return the digests."""
        with self._lock:
            if self._frontier != len(self._parts):
                raise RuntimeError("finish() before every part was written")
        if self._take(wait_for_worker=True):
            self._catch_up(None)
        end = self._parts[-1][1] if self._parts else 0
        if self._hashed != end:
            raise RuntimeError(f"hashed {self._hashed} of {end} bytes")
        return self.digests

    # -- internals ------------------------------------------------------------------------
    def _advance_frontier(self) -> None:
        """(Lock held.) Move past the parts now completely written."""
        while self._frontier < len(self._parts) and self._written[self._frontier] >= self._parts[self._frontier][1]:
            self._frontier += 1

    def _contiguous(self) -> int:
        """(Lock held.) The end of the contiguous written prefix."""
        if self._frontier == len(self._parts):
            return self._parts[-1][1] if self._parts else 0
        return self._written[self._frontier]

    def _take(self, wait_for_worker: bool) -> bool:
        """Become the hashing thread (a worker); False when there is nothing to do for it.

        The event loop hashes only a bounded span: wait for it. Another worker hashes until
        nothing contiguous is left, so this one may go (unless it needs the final digest).
        """
        with self._lock:
            while True:
                if self._contiguous() == self._hashed and self._holder is None:
                    return False
                if self._holder is None:
                    self._holder = _WORKER
                    return True
                if self._holder == _WORKER and not wait_for_worker:
                    return False
                self._released.wait()

    def _let_go(self) -> None:
        """(Lock held.) Give up the hashing role."""
        self._holder = None
        self._released.notify_all()

    def _drop(self) -> None:
        with self._lock:
            self._let_go()

    def _catch_up(self, budget: int | None) -> None:
        """As the hashing thread: hash the contiguous prefix, reading it back, then let go.

        With a ``budget`` (the event loop), stop after about that many bytes; the rest is
        left to a worker's :meth:`part_done` or :meth:`finish`. Without, stop only when
        nothing contiguous is left unhashed (checked under the lock as the role is dropped).
        """
        buf: memoryview | None = None
        try:
            while True:
                with self._lock:
                    start, end = self._hashed, self._contiguous()
                    if start >= end or (budget is not None and budget <= 0):
                        self._let_go()
                        return
                if buf is None:
                    buf = self._buffer()
                want = min(len(buf), end - start)
                n = os.preadv(self._fd, [buf[:want]], start)
                if n <= 0:  # as when hashing a kept prefix (PairTransfer._hash_prefix): not a network error
                    raise IntegrityError(f"the temporary file ended at byte {start} of {end}", retryable=True)
                self.digests.update(buf[:n])
                self.read_back += n
                if budget is not None:
                    budget -= n
                with self._lock:
                    self._hashed = start + n
        except BaseException:
            self._drop()
            raise
