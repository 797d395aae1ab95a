"""Local paths and ``file://`` URIs (a PVC mounted into the init container).

Copies a file or a directory tree into DEST. A copy, not a link, by default:
a model server that writes into DEST must not edit the source volume. Where
the filesystem can (btrfs, XFS, bcachefs, ...) the copy is a reflink (the
``FICLONE`` ioctl: instant, no extra space, copy-on-write); elsewhere the
engine copies the bytes like any other store's (parallel parts, progress,
resume). Hard links are an explicit choice (``--link`` /
``STORAGE_INITIALIZER_LOCAL_LINK=true``): instant on the same filesystem,
and unlike KServe's symlinks they do not dangle in the model server's
container, which mounts only DEST; across filesystems they fall back to a
copy. Symlinks inside the source are followed (a Hugging Face cache snapshot
is made of them), with loop protection. A directory below the source where a
run is writing right now (a DEST of this process, or one whose state says a
run is in progress: ``/data -> /data/out``) is left out, so a DEST inside its
source is not copied into itself.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager

from storage_initializer.engine.paths import STATE_DIR_NAME
from storage_initializer.errors import AccessDeniedError, ConfigError, NotFoundError, ObjectChangedError, UsageError
from storage_initializer.provider import ByteStream, Provider, ProviderContext, RemoteObject, UriFormat

log = logging.getLogger("storage_initializer.local")

#: The variable behind ``--link``: hard-link instead of copying.
LINK_VARIABLE = "STORAGE_INITIALIZER_LOCAL_LINK"
#: ``ioctl(dest_fd, FICLONE, src_fd)``: share the source's blocks copy-on-write (Linux).
FICLONE = 0x40049409
#: Errors that mean "this filesystem (pair) cannot do that": copy another way.
_UNSUPPORTED = frozenset(
    {
        errno.EXDEV,  # another filesystem
        errno.EPERM,
        errno.EMLINK,
        errno.EACCES,
        errno.ENOTSUP,
        errno.EOPNOTSUPP,  # ext4, tmpfs: no reflinks
        errno.EINVAL,
        errno.ENOTTY,
        errno.ENOSYS,
    }
)

_active_lock = threading.Lock()
_active_dests: set[str] = set()


def note_active_dest(path: str) -> None:
    """Record a DEST this process writes into: a local source walk leaves it out."""
    with _active_lock:
        _active_dests.add(os.path.realpath(path))


def copy_onto_itself(src: str, dest: str) -> str | None:
    """Why copying local ``src`` into ``dest`` cannot work, or ``None``.

    The same directory would write the state and temporary files into the
    source and publish each file over itself; a file's own directory would
    replace the file with itself. (A DEST *below* a source directory is fine:
    the walk leaves it out.)
    """
    real_src, real_dest = os.path.realpath(src), os.path.realpath(dest)
    if real_src == real_dest:
        return "SRC and DEST are the same directory"
    if os.path.isfile(real_src) and os.path.dirname(real_src) == real_dest:
        return "DEST is the directory of the SRC file: the file would be copied onto itself"
    return None


def _is_active_dest(path: str) -> bool:
    with _active_lock:
        return bool(_active_dests) and os.path.realpath(path) in _active_dests


def local_path(uri: str) -> str:
    """``file:///a/b`` -> ``/a/b``; ``file://a/b`` -> ``a/b`` (as KServe); paths unchanged."""
    return uri[len("file://") :] if uri.startswith("file://") else uri


def _version(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


class LocalProvider(Provider):
    """Files and directories on a filesystem the container can see."""

    uri_formats = (
        UriFormat(prefix="file://"),
        UriFormat(prefix="/"),
        UriFormat(prefix="./"),
        UriFormat(prefix="../"),
    )
    description = "local paths and file:// (a copy or a reflink; hard links with --link)"

    def __init__(self, context: ProviderContext) -> None:
        super().__init__(context)
        raw = self.env.get(LINK_VARIABLE, "").strip().lower()
        if raw not in ("", "1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ConfigError(f"{LINK_VARIABLE}={raw!r} is not a boolean", hint="use true or false")
        self.link = raw in ("1", "true", "yes", "on")
        self._no_clone: set[tuple[int, int]] = set()  # (source dev, dest dev) pairs where FICLONE failed

    def validate(self, uri: str) -> None:
        if not local_path(uri):
            raise UsageError(f"{uri!r} names no path", hint="use file:///absolute/path or /absolute/path")

    def list(self, uri: str) -> Iterator[RemoteObject]:
        root = local_path(uri)
        try:
            st = os.stat(root)
        except FileNotFoundError:
            raise NotFoundError(f"local path {root} does not exist", hint="check the volume mount") from None
        except PermissionError:
            raise AccessDeniedError(f"cannot read local path {root}: permission denied") from None
        if stat.S_ISREG(st.st_mode):
            yield RemoteObject(os.path.basename(root.rstrip("/")), st.st_size, _version(st), extra=root)
            return
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"local path {root} is neither a file nor a directory")
        yield from self._walk(root, "", {(st.st_dev, st.st_ino)})

    def _walk(self, directory: str, prefix: str, seen: set[tuple[int, int]]) -> Iterator[RemoteObject]:
        try:
            names = sorted(os.listdir(directory))
        except PermissionError:
            raise AccessDeniedError(f"cannot list {directory}: permission denied") from None
        for name in names:
            path = os.path.join(directory, name)
            key = f"{prefix}{name}"
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue  # a dangling symlink: nothing to copy
            if stat.S_ISDIR(st.st_mode):
                ident = (st.st_dev, st.st_ino)
                if ident in seen:
                    continue  # a symlink loop
                if _is_active_dest(path) or os.path.exists(os.path.join(path, STATE_DIR_NAME, "running")):
                    log.info("leaving out %s: a storage-initializer run is writing there", path)
                    continue
                yield from self._walk(path, key + "/", seen | {ident})
            elif stat.S_ISREG(st.st_mode):
                yield RemoteObject(key, st.st_size, _version(st), extra=path)

    def _check(self, obj: RemoteObject) -> str:
        path: str = obj.extra
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise NotFoundError(f"{path} disappeared during the copy") from None
        if _version(st) != obj.version:
            raise ObjectChangedError(f"{path} changed during the copy")
        return path

    def open_range(
        self, uri: str, obj: RemoteObject, start: int, end: int | None
    ) -> AbstractContextManager[ByteStream]:
        handle = open(self._check(obj), "rb", buffering=0)  # noqa: SIM115 - returned to the caller
        handle.seek(start)
        return handle

    def download_to(self, uri: str, obj: RemoteObject, path: str) -> bool:
        """A hard link (with ``--link``) or a reflink at ``path``; ``False``: let the engine copy."""
        source = os.path.realpath(self._check(obj))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        if self.link:
            try:
                os.link(source, path)
                return True
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    raise
                # another filesystem, or links not allowed: copy instead
        return self._reflink(source, path)

    def _reflink(self, source: str, path: str) -> bool:
        """Clone ``source`` to ``path`` copy-on-write where the filesystem can; else ``False``."""
        src_fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            devices = (os.fstat(src_fd).st_dev, os.stat(os.path.dirname(path) or ".").st_dev)
            if devices in self._no_clone:
                return False
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
            dst_fd = os.open(path, flags, 0o644)
            try:
                fcntl.ioctl(dst_fd, FICLONE, src_fd)
            except OSError as exc:
                os.close(dst_fd)
                os.unlink(path)
                if exc.errno not in _UNSUPPORTED:
                    raise
                self._no_clone.add(devices)
                log.debug("no reflink from %s to %s (%s): copying", source, path, exc.strerror)
                return False
            os.close(dst_fd)
            return True
        finally:
            os.close(src_fd)
