"""Per-entry file locks that a killed holder cannot leave stuck.

``flock(2)`` locks belong to the open file description: the kernel releases
them when the holder's process dies, however it dies (SIGKILL, OOM kill). An
exclusive lock is held while an entry is filled or evicted, a shared one
while it is checked and linked. Lock files are small and never removed:
removing one while another process has it open would let two processes
"hold" the same lock on two different files.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable


class EntryLock:
    """The lock of one cache entry (one open file description)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)

    def try_shared(self) -> bool:
        return self._try(fcntl.LOCK_SH)

    def try_exclusive(self) -> bool:
        return self._try(fcntl.LOCK_EX)

    def _try(self, kind: int) -> bool:
        try:
            fcntl.flock(self.fd, kind | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def unlock(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Release the lock (if held) and the descriptor."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def wait_until(attempt: Callable[[], bool], stopped: Callable[[], bool], interval: float = 0.1) -> bool:
    """Call ``attempt`` until it returns True (then True) or ``stopped`` does (then False)."""
    while True:
        if attempt():
            return True
        if stopped():
            return False
        time.sleep(interval)
