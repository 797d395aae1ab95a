"""Local paths and ``file://`` URIs (a PVC mounted into the init container).

Copies a file or a directory tree into DEST. On the same filesystem the
files are hard-linked (instant, no extra space, and unlike KServe's symlinks
they do not dangle in the model server's container, which mounts only DEST);
across filesystems they are copied through the engine like any other store.
Symlinks inside the source are followed (a Hugging Face cache snapshot is
made of them), with loop protection. A directory below the source where a
run is writing right now (its state says so: ``/data -> /data/out``) is
left out, so a DEST inside its source is not copied into itself.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import AbstractContextManager

from storage_initializer.engine.paths import STATE_DIR_NAME
from storage_initializer.errors import AccessDeniedError, NotFoundError, ObjectChangedError, UsageError
from storage_initializer.provider import ByteStream, Provider, RemoteObject, UriFormat

log = logging.getLogger("storage_initializer.local")


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
    description = "local paths and file:// (hard links when on the same filesystem)"

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
                if os.path.exists(os.path.join(path, STATE_DIR_NAME, "running")):
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
        source = os.path.realpath(self._check(obj))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        try:
            os.link(source, path)
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES, errno.ENOTSUP):
                return False  # another filesystem, or links not allowed: copy instead
            raise
        return True
