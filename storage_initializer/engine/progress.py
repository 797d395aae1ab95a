"""Progress accounting, the log heartbeat and the terminal progress bar.

``kubectl logs`` has no terminal, so by default progress is one log line
every few seconds (bytes done / total, rate, ETA). A live bar replaces the
heartbeat only when stderr is a terminal.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

log = logging.getLogger("storage_initializer")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_seconds(s: float) -> str:
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Progress:
    """Thread-safe counters shared by every transfer of the run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.bytes_done = 0
        self.bytes_total = 0
        self.files_done = 0
        self.files_total = 0
        self.unknown_sizes = 0  # planned files whose size the store did not say
        self.files_skipped = 0
        self.bytes_skipped = 0
        self.retries = 0

    def add_planned(self, size: int | None) -> None:
        with self._lock:
            self.files_total += 1
            self.bytes_total += size or 0
            self.unknown_sizes += size is None

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes_done += n

    def file_done(self) -> None:
        with self._lock:
            self.files_done += 1

    def file_skipped(self, size: int) -> None:
        with self._lock:
            self.files_skipped += 1
            self.bytes_skipped += size

    def add_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)

    def line(self) -> str:
        with self._lock:
            done, total = self.bytes_done, self.bytes_total
            files_done, files_total = self.files_done, self.files_total
            unknown = self.unknown_sizes
        rate = done / self.elapsed()
        if unknown:  # the total is a lower bound: no percentage, no ETA
            text = f"{human_bytes(done)} / " + (f"over {human_bytes(total)}" if total else "unknown")
            total = 0
        else:
            text = f"{human_bytes(done)} / {human_bytes(total)}"
        if total:
            text += f" ({100 * done / total:.0f}%)"
        text += f", {human_bytes(rate)}/s"
        if total and rate > 0 and done < total:
            text += f", ETA {human_seconds((total - done) / rate)}"
        return text + f", files {files_done}/{files_total}"


class Reporter:
    """Background thread printing the heartbeat (or the live bar on a TTY)."""

    def __init__(self, progress: Progress, interval: float, bar: bool | None) -> None:
        self.progress = progress
        self.interval = interval
        self.bar = sys.stderr.isatty() if bar is None else bar
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def __enter__(self) -> Reporter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        if self.bar:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def _run(self) -> None:
        period = 0.2 if self.bar else self.interval
        while not self._stop.wait(period):
            if self.bar:
                sys.stderr.write("\r\033[K" + self.progress.line())
                sys.stderr.flush()
            elif self.progress.files_total > self.progress.files_done:
                log.info("progress: %s", self.progress.line())
