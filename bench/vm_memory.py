"""Hold freed memory in the guest while the bench runs (VMs with free page reporting).

This machine is a VM whose kernel hands every freed 2 MiB block back to its host at once
(virtio-balloon free page reporting, ``min_free_ms`` 0). The host backs such a page again only
when it is next touched, and that fault is charged to whoever touches it: a tool writing its
download into fresh page cache. Touching 12 GiB of reported memory took 26 s of system CPU here
(2.2 s per GiB, against ~0.3 s per GiB for the copy itself), so one tool's client CPU for the
same 2 GiB moved between 0.8 and 2.3 s from run to run, depending on which pages it was given.

Every run deletes its DEST, so the next run allocates what the last one freed. Raising
``min_free_ms`` (how long a freed block stays unreported) to its largest accepted value keeps
those pages backed across the rounds, and every tool then writes into memory the host already
backs, as it would on a node. The old value is put back when the bench ends.

Measured (4 x 1 GiB model, client on CPU 1, store on CPU 0, 4 rounds): s5cmd's client CPU
read 3.4-8.1 s with reporting at once and 2.0-2.8 s with freed memory held.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

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
