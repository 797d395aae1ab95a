"""Where the runs write: a journaled ext4, as a node's disk is, when this machine's disk is not.

This machine's root filesystem is an ext4 without a journal. On such a filesystem the inode
allocator will not reuse an inode freed in the last 60 s (300 s while its inode-table block is
dirty): every file created walks past each recently freed inode of its group, one buffer lookup
each (``find_inode_bit`` -> ``recently_deleted``). The bench deletes every run's DEST, so the
next run of the small dataset (4,000 files) pays for the 4,000 freed before it: 39% of ours's
client CPU and 26% of rclone's went there (`perf`, 2026-12-07), more than the rest of the file
system work together. A journaled ext4 (the default of `mkfs.ext4`, and what a kubelet's disk
holds; xfs has no such walk either) skips that check.

So, as root, the bench makes a sparse image beside its work directory, formats it ext4 with a
journal, attaches it with direct I/O (no second page cache for the image file) and writes every
run there; it is unmounted and deleted at the end. Measured on the small dataset (client on
CPU 1, store on CPU 0, 5 rounds): on the journal-less disk ours took 2.40 s and rclone tuned
2.17 s; on the journaled image ours 1.46 s and rclone tuned 1.84 s, each within 0.1 s over the
rounds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path


def _run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def has_journal(path: Path) -> bool | None:
    """Whether the ext4 holding ``path`` has a journal (``None``: not ext4, or unknown).

    A mounted ext4 with a journal has a ``/proc/fs/jbd2/DEVICE-N`` entry.
    """
    try:
        fstype, source = _run("findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", str(path)).split()[:2]
        if fstype != "ext4" or not os.path.isdir("/proc/fs/jbd2"):
            return None
        device = Path(source).name
        return any(name.startswith(device + "-") for name in os.listdir("/proc/fs/jbd2"))
    except (OSError, ValueError, subprocess.CalledProcessError):
        return None


@contextlib.contextmanager
def journaled_ext4(where: Path, size_gib: int) -> Iterator[Path | None]:
    """A fresh journaled ext4 of ``size_gib`` (sparse) mounted under ``where``; ``None`` if it cannot be."""
    tools = ("losetup", "mkfs.ext4", "mount", "umount")
    if os.geteuid() != 0 or not all(shutil.which(t) for t in tools):
        yield None
        return
    image = where / "dest-ext4.img"
    mountpoint = where / "dest-ext4"
    mountpoint.mkdir(parents=True, exist_ok=True)
    device = ""
    try:
        with open(image, "wb") as handle:
            handle.truncate(size_gib << 30)
        _run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(image))
        device = _run("losetup", "--direct-io=on", "--find", "--show", str(image))
        _run("mount", device, str(mountpoint))
    except (OSError, subprocess.CalledProcessError):
        if device:
            subprocess.run(["losetup", "-d", device], check=False)
        image.unlink(missing_ok=True)
        yield None
        return
    try:
        yield mountpoint
    finally:
        subprocess.run(["sync"], check=False)
        subprocess.run(["umount", str(mountpoint)], check=False)
        subprocess.run(["losetup", "-d", device], check=False)
        image.unlink(missing_ok=True)
