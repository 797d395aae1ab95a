"""Put a cached file at a path in DEST: hard link, else reflink, else copy."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil

_FICLONE = 0x40049409  # linux/fs.h: share the extents of another file (btrfs, XFS, bcachefs)

#: Errors that mean "no hard link here" (another filesystem, a filesystem without links, a link limit).
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})


def link_or_copy(source: str, target: str, allow_link: bool) -> str:
    """Create ``target`` (which must not exist) with the content of ``source``.

    Returns how: ``"link"``, ``"reflink"`` or ``"copy"``. A linked target is the
    cache's own read-only inode; a reflinked or copied one is a private, writable file.
    """
    if allow_link:
        try:
            os.link(source, target)
            return "link"
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
    if _reflink(source, target):
        return "reflink"
    shutil.copyfile(source, target)  # copy_file_range / sendfile underneath
    return "copy"


def _reflink(source: str, target: str) -> bool:
    try:
        src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError:
        os.close(src)
        return False
    try:
        fcntl.ioctl(dst, _FICLONE, src)
        return True
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(target)
        return False
    finally:
        os.close(src)
        os.close(dst)
