"""The destination directory: safe directory creation, temp files, publishing.

Invariants:

* nothing is ever written through a symlink found inside DEST (directories
  are created one component at a time and checked with ``lstat``);
* a file is written to a hidden temporary name beside its final name and
  renamed into place only when complete and verified (``os.replace`` is
  atomic on POSIX: readers see the old file or the new one, never a mix);
* the temporary name is deterministic so a later run can resume it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading

from storage_initializer.engine.paths import NAME_MAX, TEMP_PREFIX, TEMP_SUFFIX
from storage_initializer.errors import DestinationError, UnsafePathError


def prepare_dest(path: str) -> str:
    """Create DEST if missing and check it is a writable directory.

    Returns the absolute path. A DEST that is a symlink to a directory is
    accepted (a mount point may be one); symlinks *inside* DEST never are.
    """
    if not path:
        raise DestinationError("DEST_PATH is empty")
    absolute = os.path.abspath(path)
    try:
        os.makedirs(absolute, exist_ok=True)
    except FileExistsError:
        raise DestinationError(
            f"DEST_PATH {path} exists and is not a directory", hint="remove it or choose another path"
        ) from None
    except PermissionError:
        raise DestinationError(
            f"cannot create DEST_PATH {path}: permission denied",
            hint="check the volume mount and the user the container runs as",
        ) from None
    except OSError as exc:
        raise DestinationError(f"cannot create DEST_PATH {path}: {exc.strerror}") from None
    if not os.path.isdir(absolute):
        raise DestinationError(f"DEST_PATH {path} is not a directory")
    if not os.access(absolute, os.W_OK | os.X_OK):
        raise DestinationError(
            f"DEST_PATH {path} is not writable",
            hint="check the volume mount and the user the container runs as",
        )
    return absolute


def temp_path_for(final_path: str) -> str:
    """The hidden temporary name beside ``final_path`` (deterministic, for resume).

    A final name within 12 bytes of NAME_MAX would overflow with the prefix
    and suffix: its temporary name keeps a truncated stem plus a hash of the
    whole name.
    """
    head, tail = os.path.split(final_path)
    name = f"{TEMP_PREFIX}{tail}{TEMP_SUFFIX}"
    raw = os.fsencode(tail)
    if len(os.fsencode(name)) > NAME_MAX:
        digest = hashlib.sha256(raw).hexdigest()[:16]
        room = NAME_MAX - len(TEMP_PREFIX) - len(TEMP_SUFFIX) - len(digest) - 1
        name = f"{TEMP_PREFIX}{os.fsdecode(raw[:room])}~{digest}{TEMP_SUFFIX}"
    return os.path.join(head, name)


def describe_os_error(exc: OSError, path: str) -> DestinationError:
    """Turn a local write failure into a clear destination error."""
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        return DestinationError(
            f"no space left on the device holding {path}",
            hint="give the volume more room (e.g. a larger emptyDir sizeLimit) or filter files",
        )
    if exc.errno == errno.EFBIG:
        return DestinationError(f"file too large for the destination filesystem: {path}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return DestinationError(f"cannot write {path}: {exc.strerror}", hint="check the volume mount")
    return DestinationError(f"cannot write {path}: {exc.strerror or exc}")


class DestDir:
    """Creates directories under DEST without ever following a symlink."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._known: set[str] = {""}
        self._lock = threading.Lock()

    def path_of(self, relpath: str) -> str:
        return os.path.join(self.root, *relpath.split("/"))

    def ensure_parent(self, relpath: str) -> str:
        """Create the parent directories of ``relpath``; return its absolute path."""
        parts = relpath.split("/")
        self.ensure_dir("/".join(parts[:-1]))
        return self.path_of(relpath)

    def ensure_dir(self, reldir: str) -> None:
        if reldir in self._known:
            return
        parts = reldir.split("/")
        current = ""
        for part in parts:
            current = f"{current}/{part}" if current else part
            if current in self._known:
                continue
            absolute = self.path_of(current)
            try:
                os.mkdir(absolute)
            except FileExistsError:
                pass
            except OSError as exc:
                raise describe_os_error(exc, absolute) from None
            try:
                mode = os.lstat(absolute).st_mode
            except OSError as exc:
                raise describe_os_error(exc, absolute) from None
            if stat.S_ISLNK(mode):
                raise UnsafePathError(
                    f"refusing to write through the symlink {absolute} -> {os.readlink(absolute)}",
                    hint="DEST must not contain symlinks where the model's directories go",
                )
            if not stat.S_ISDIR(mode):
                raise UnsafePathError(f"{absolute} exists and is not a directory, but the model needs one")
            with self._lock:
                self._known.add(current)

    def check_target(self, final_path: str) -> bool:
        """Refuse to replace a directory with a file (a symlink is replaced, not followed).

        Returns whether something is there already (nothing: no earlier download to recognise).
        """
        try:
            mode = os.lstat(final_path).st_mode
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(mode):
            raise UnsafePathError(f"{final_path} exists as a directory, but the model has a file there")
        return True


def publish(temp_path: str, final_path: str, fsync: bool, maybe_linked: bool = False) -> None:
    """Atomically move a completed temporary file to its final name.

    ``maybe_linked``: the temporary file may be a hard link to the file
    already at the final name (see below).
    """
    try:
        if fsync:
            fd = os.open(temp_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(temp_path, final_path)
        # rename(2) does nothing when both names are links to one inode (a
        # hard-linked local copy published twice): drop the temporary name.
        if maybe_linked and os.path.lexists(temp_path):
            os.unlink(temp_path)
        if fsync:
            dir_fd = os.open(os.path.dirname(final_path), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except IsADirectoryError:
        raise UnsafePathError(f"{final_path} exists as a directory, but the model has a file there") from None
    except OSError as exc:
        raise describe_os_error(exc, final_path) from None
