"""Hold freed memory in the guest while the bench runs (VMs with free page reporting).

This machine is a VM whose kernel hands every freed 2 MiB block back to its host at once
(virtio-balloon free page reporting, ``min_free_ms`` 0). The host backs such a page again only
when it is next touched, and that fault is charged to whoever touches it: a tool writing its
download into fresh page cache. Touching 12 GiB of reported memory took 26 s of system CPU here
(2.2 s per GiB, against ~0.3 s per GiB for the copy itself), so one tool's client CPU for the
same 2 GiB moved between 0.8 and 2.3 s from run to run, depending on which pages it was given.

The bench raises ``min_free_ms`` (how long a freed block stays unreported) to its largest
accepted value for the run, for every tool alike, and puts it back when the bench ends; it holds
less than its name says (see :func:`back_free_memory`, the opt-in second measure).

Measured (4 x 1 GiB model, client on CPU 1, store on CPU 0, 4 rounds): s5cmd's client CPU
read 3.4-8.1 s with reporting at once and 2.0-2.8 s with freed memory held.
"""

from __future__ import annotations

import contextlib
import mmap
import time
from collections.abc import Iterator
from pathlib import Path

import datasets

MIN_FREE_MS = Path("/sys/module/page_reporting/parameters/min_free_ms")
#: Tried in turn: this kernel refuses values above five minutes.
_HOLD_MS = (300_000, 120_000, 60_000)


@contextlib.contextmanager
def freed_pages_held() -> Iterator[dict[str, int] | None]:
    """Keep freed memory unreported while the block runs; yields what was set, or ``None``."""
    try:
        was = int(MIN_FREE_MS.read_text().strip())
    except (OSError, ValueError):
        yield None  # no free page reporting here (or not this kernel's knob)
        return
    held = None
    for ms in _HOLD_MS:
        if ms <= was:
            break
        try:
            MIN_FREE_MS.write_text(f"{ms}\n")
        except OSError:
            continue  # not root, or above the kernel's limit: try a shorter hold
        held = ms
        break
    try:
        yield {"was": was, "held": held if held is not None else was}
    finally:
        if held is not None:
            with contextlib.suppress(OSError):
                MIN_FREE_MS.write_text(f"{was}\n")


def back_free_memory(want: int, keep: int = 512 << 20) -> float:
    """Touch ``want`` bytes of free memory (leaving ``keep`` free), then free them; returns seconds.

    The hold above does not keep memory backed for long here: with ``min_free_ms`` at 300000
    (and ``max_waiting_mib`` raised too) the kernel still handed 12.6 GB of 15 GB free back to
    the host within 30 s of it being freed. Touching those 15 GB took 27-41 s when handed
    back and 9-11 s right after a touch. With ``--touch-memory``, just before each run the bench
    touches as much as the run will write (its dataset plus 256 MiB) and frees it, meaning the
    tool's page cache to come from pages the host backs, as on a node. Measured in shared mode
    on the 4 x 1 GiB model (ours, no verification): touching all free memory once per round, its client CPU went from
    3.2-3.5 s to 1.8-2.4 s; later, touching 5 GiB right before a run, 2.59-2.62 s against
    2.73-3.42 s for the runs between (the same hour). But a full pinned run touching before
    every run gave ours 2.3-3.7 s of client CPU on the model, and the rounds right after, without
    touching, 1.7-2.0 s (s5cmd 2.3-2.4 s in both): freeing gigabytes just before a run sets the
    kernel handing them back during it. So it is opt-in (``--touch-memory``).
    """
    free, _ = datasets.memory_free()
    size = min(want, free - keep) // mmap.PAGESIZE * mmap.PAGESIZE
    if size <= 0:
        return 0.0
    started = time.monotonic()
    populate = getattr(mmap, "MAP_POPULATE", 0)
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate
    with contextlib.suppress(OSError), mmap.mmap(-1, size, flags=flags) as area:
        if not populate:
            for offset in range(0, size, mmap.PAGESIZE):
                area[offset] = 1
    return time.monotonic() - started
