"""Progress accounting, the log heartbeat and the terminal progress bar.

``kubectl logs`` has no terminal, so by default progress is one log line
every few seconds (bytes done / total, rate, ETA). A live bar replaces the
heartbeat only when stderr is a terminal.

Units are binary everywhere (KiB, MiB, GiB; rates in MiB/s), in the
heartbeat, the bar and the summary alike. The rate is measured over the last
few seconds, and no ETA is shown until bytes have flowed for
:data:`ETA_AFTER_SECONDS`: the first second (connections, listing, TCP slow
start) says nothing about the rest.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("storage_initializer")

#: Seconds of data flow before an ETA is shown.
ETA_AFTER_SECONDS = 3.0
#: The rate is measured over about this many seconds.
RATE_WINDOW_SECONDS = 10.0
BAR_WIDTH = 24


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_rate(bytes_per_second: float) -> str:
    """``12.3 MiB/s``: the one rate unit of the program (the summary's too)."""
    return f"{bytes_per_second / (1024 * 1024):.1f} MiB/s"


def human_seconds(s: float) -> str:
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def plural(count: int, noun: str) -> str:
    """``1 file``, ``2 files``, ``0 files``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


class Progress:
    """Thread-safe counters shared by every transfer of the run."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.started = clock()
        self.bytes_done = 0
        self.bytes_total = 0
        self.files_done = 0
        self.files_total = 0
        self.unknown_sizes = 0  # planned files whose size the store did not say
        self.files_skipped = 0
        self.bytes_skipped = 0
        self.retries = 0
        self.first_byte_at: float | None = None
        self._samples: deque[tuple[float, int]] = deque(maxlen=256)

    def add_planned(self, size: int | None) -> None:
        with self._lock:
            self.files_total += 1
            self.bytes_total += size or 0
            self.unknown_sizes += size is None

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes_done += n
            if self.first_byte_at is None and n > 0:
                self.first_byte_at = self._clock()

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
        return max(self._clock() - self.started, 1e-9)

    def rate(self) -> float:
        """Bytes per second over the last :data:`RATE_WINDOW_SECONDS` (since the first byte)."""
        now = self._clock()
        with self._lock:
            done, first = self.bytes_done, self.first_byte_at
            samples = self._samples
            samples.append((now, done))
            while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW_SECONDS:
                samples.popleft()
            then, done_then = samples[0]
        if first is None:
            return 0.0
        if now - then >= 1.0 and then >= first:
            return max(done - done_then, 0) / (now - then)
        return done / max(now - first, 1e-3)

    def flowing_for(self) -> float:
        """Seconds since the first byte arrived (0 before)."""
        first = self.first_byte_at
        return 0.0 if first is None else self._clock() - first

    def snapshot(self) -> tuple[int, int, int, int, int]:
        with self._lock:
            return self.bytes_done, self.bytes_total, self.files_done, self.files_total, self.unknown_sizes

    def line(self, done_override: float | None = None) -> str:
        """``12.0 MiB / 40.0 MiB (30%), 4.0 MiB/s, ETA 7s, files 1/3``.

        ``done_override``: the bytes to show (the bar's smoothed count).
        """
        rate = self.rate()
        done, total, files_done, files_total, unknown = self.snapshot()
        if done_override is not None:
            done = int(done_override)
        if unknown:  # the total is a lower bound: no percentage, no ETA
            text = f"{human_bytes(done)} / " + (f"over {human_bytes(total)}" if total else "unknown")
            total = 0
        else:
            text = f"{human_bytes(done)} / {human_bytes(total)}"
        if total:
            text += f" ({100 * done / total:.0f}%)"
        text += f", {human_rate(rate)}"
        if total and rate > 0 and done < total and self.flowing_for() >= ETA_AFTER_SECONDS:
            text += f", ETA {human_seconds((total - done) / rate)}"
        return text + f", files {files_done}/{files_total}"


class Smoother:
    """The byte count the terminal bar shows: smooth between the engine's buffer-sized steps.

    The engine counts bytes one buffer (1 MiB) at a time, so at a few MiB/s
    the real count moves in visible jumps. Between two real updates the shown
    count advances at the measured rate, never more than one step (the
    largest increment seen) past the real count, never backwards, never past
    the total.
    """

    def __init__(self) -> None:
        self.shown = 0.0
        self._real = 0
        self._real_at = 0.0
        self._step = 0

    def update(self, real: int, total: int, rate: float, now: float) -> float:
        if real < self._real:  # a retry that started over took bytes back
            self.shown = float(real)
        elif real > self._real:
            self._step = max(self._step, real - self._real)
        if real != self._real:
            self._real, self._real_at = real, now
        target = real + min(rate * max(now - self._real_at, 0.0), float(self._step))
        if total:
            target = min(target, float(total))
        self.shown = max(self.shown, target)
        return self.shown


def bar_graphic(done: float, total: int, width: int = BAR_WIDTH) -> str:
    """``[#########.........]``, or nothing when the total is unknown."""
    if total <= 0:
        return ""
    filled = min(width, int(width * done / total))
    return "[" + "#" * filled + "." * (width - filled) + "] "


class Reporter:
    """Background thread printing the heartbeat (or the live bar on a TTY)."""

    def __init__(self, progress: Progress, interval: float, bar: bool | None) -> None:
        self.progress = progress
        self.interval = interval
        self.bar = sys.stderr.isatty() if bar is None else bar
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._smoother = Smoother()

    def __enter__(self) -> Reporter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        if self.bar:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def bar_line(self) -> str:
        progress = self.progress
        done, total, _, _, unknown = progress.snapshot()
        total = 0 if unknown else total
        shown = self._smoother.update(done, total, progress.rate(), time.monotonic())
        return bar_graphic(shown, total) + progress.line(done_override=shown)

    def _run(self) -> None:
        period = 0.1 if self.bar else self.interval
        while not self._stop.wait(period):
            if self.bar:
                sys.stderr.write("\r\033[K" + self.bar_line())
                sys.stderr.flush()
            elif self.progress.files_total > self.progress.files_done:
                log.info("progress: %s", self.progress.line())
