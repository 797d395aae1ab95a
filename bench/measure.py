"""Run one command and measure it: wall time, CPU of its process tree, peak RSS of the tree.

* Wall: ``time.monotonic()`` from just before ``Popen`` to the moment
  ``wait4`` reaps the process (so interpreter start-up counts, as in a pod);
  a thread blocks in ``wait4``, so the end is timed to the microsecond, not
  to the sampling interval.
* CPU: user + system from ``wait4``'s rusage, which includes every
  descendant the tool reaped (worker processes, wrapper scripts' children).
* Peak RSS: the sum of the RSS of every live process in the tree, sampled
  every ``interval`` seconds with psutil, and never less than the tool's own
  maximum RSS as the kernel counts it (exact, catches spikes between
  samples). The tree is re-listed every 5th sample (listing scans /proc);
  sampling costs the harness well under 5% of a core, the same for every tool.

The tool runs under ``/usr/bin/time``: ``ru_maxrss`` of a process started
straight from this (large) Python process would include the harness's own
RSS, which Linux carries over into the child through fork/vfork and exec;
``time`` is small, so the maximum it reports (``%M``) is the tool's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

TIME = "/usr/bin/time"  # Debian package `time`


@dataclass
class Measured:
    wall: float
    cpu_user: float
    cpu_sys: float
    peak_rss: int  # bytes, whole process tree
    exit_code: int
    timed_out: bool

    @property
    def cpu(self) -> float:
        return self.cpu_user + self.cpu_sys


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return [root]


def _rss(procs: list[psutil.Process]) -> int:
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


#: CPUs the measured tool runs on (pinned mode; set by bench.py), or None: every CPU.
CLIENT_CPUS: frozenset[int] | None = None


def _pin() -> None:
    """In the child, before exec: the tool's CPUs (inherited by everything it starts)."""
    os.setsid()
    if CLIENT_CPUS is not None:
        os.sched_setaffinity(0, CLIENT_CPUS)


def run(
    argv: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    timeout: float,
    interval: float = 0.05,
    cwd: Path | None = None,
) -> Measured:
    """Run ``argv`` (stdout and stderr to ``log_path``) and measure it."""
    maxrss_path = log_path.with_suffix(".maxrss")
    maxrss_path.unlink(missing_ok=True)
    wrapped = [TIME, "-f", "%M", "-o", str(maxrss_path), *argv]
    with open(log_path, "wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(wrapped, env=dict(env), stdout=log, stderr=subprocess.STDOUT, cwd=cwd, preexec_fn=_pin)
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            root = None
        peak = 0
        timed_out = False
        procs: list[psutil.Process] = []
        samples = 0
        # A thread blocks in wait4 so the end is seen the moment it happens: polling every
        # ``interval`` put every wall time on a 50 ms grid (a 15 ms run read as 60 ms).
        reaped: dict[str, Any] = {}
        ended = threading.Event()

        def reap() -> None:
            _, status, usage = os.wait4(proc.pid, 0)
            reaped.update(wall=time.monotonic() - started, status=status, usage=usage)
            ended.set()

        threading.Thread(target=reap, name="reaper", daemon=True).start()
        while not ended.wait(interval):
            if root is not None:
                # Listing the tree scans /proc (a few ms): every 5th sample only.
                if samples % 5 == 0:
                    procs = _tree(root)[1:]  # not `time` itself
                peak = max(peak, _rss(procs))
                samples += 1
            if not timed_out and time.monotonic() - started > timeout:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the tool's own process group
        wall, status, usage = reaped["wall"], reaped["status"], reaped["usage"]
        proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen quiet
    # Anything the tool left in its process group (daemonised helpers) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    tool_maxrss = 0
    with contextlib.suppress(OSError, ValueError, IndexError):  # empty when the tool was killed
        tool_maxrss = int(maxrss_path.read_text().split()[-1]) * 1024
    return Measured(
        wall=wall,
        cpu_user=usage.ru_utime,
        cpu_sys=usage.ru_stime,
        peak_rss=max(peak, tool_maxrss),
        exit_code=proc.returncode,
        timed_out=timed_out,
    )
