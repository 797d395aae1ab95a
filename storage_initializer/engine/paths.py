"""Map untrusted object keys to safe paths below DEST, and filter them.

A key is store data, not ours: it may carry ``..``, an absolute path, a
backslash, a drive letter or a NUL. :func:`safe_relpath` refuses all of them
instead of "cleaning" them, because two different keys must never be folded
onto one file and a surprising rename is worse than a clear error.
"""

from __future__ import annotations

import fnmatch
import re
import threading
from collections.abc import Sequence

from storage_initializer.errors import UnsafePathError

#: Directory (inside DEST) where the engine keeps its resume state.
STATE_DIR_NAME = ".storage-initializer"
#: Prefix and suffix of the temporary file a download is written to.
TEMP_PREFIX = "."
TEMP_SUFFIX = ".si-partial"

NAME_MAX = 255
PATH_MAX = 4000

_DRIVE_RE = re.compile(r"^[A-Za-z]:")


def safe_relpath(key: str) -> str:
    """Validate a '/'-separated relative key and return it unchanged.

    Raises :class:`UnsafePathError` naming the key and the rule it breaks.
    """
    shown = key.encode("unicode_escape").decode("ascii")[:300]
    if not key:
        raise UnsafePathError("empty object key")
    if "\x00" in key:
        raise UnsafePathError(f"object key {shown!r} contains a NUL byte")
    if "\\" in key:
        raise UnsafePathError(
            f"object key {shown!r} contains a backslash",
            hint="backslashes are path separators on some systems; rename the object",
        )
    if key.startswith("/"):
        raise UnsafePathError(f"object key {shown!r} is an absolute path")
    if _DRIVE_RE.match(key):
        raise UnsafePathError(f"object key {shown!r} starts with a drive letter")
    parts = key.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePathError(
                f"object key {shown!r} has an empty, '.' or '..' segment",
                hint="such keys could write outside DEST or fold two objects onto one file",
            )
        if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise UnsafePathError(f"object key {shown!r} has a segment longer than {NAME_MAX} bytes")
    if len(key.encode("utf-8", "surrogateescape")) > PATH_MAX:
        raise UnsafePathError(f"object key {shown!r} is longer than {PATH_MAX} bytes")
    if parts[0] == STATE_DIR_NAME:
        raise UnsafePathError(f"object key {shown!r} collides with the state directory {STATE_DIR_NAME}/")
    if parts[-1].startswith(TEMP_PREFIX) and parts[-1].endswith(TEMP_SUFFIX):
        raise UnsafePathError(f"object key {shown!r} collides with the temporary-file naming")
    return key


def is_own_artifact(key: str) -> bool:
    """Is ``key`` this tool's bookkeeping (resume state, a temporary file), not model content?

    A tree that was itself a DEST (a volume filled by an earlier run, a copy of one
    synced to a bucket, a tarball of one) carries these; they are skipped, never
    copied (they would collide with this DEST's own).
    """
    parts = key.strip("/").split("/")
    if parts[0] == STATE_DIR_NAME or STATE_DIR_NAME in parts[:-1]:  # any depth: a tree of earlier DESTs
        return True
    return parts[-1].startswith(TEMP_PREFIX) and parts[-1].endswith(TEMP_SUFFIX)


def _expand(pattern: str) -> str:
    # As huggingface_hub: "dir/" means everything below dir.
    return pattern + "*" if pattern.endswith("/") else pattern


class PathFilter:
    """KServe's allow/ignore rule: fnmatch on the relative path.

    A path is kept when it matches one allow pattern (or there are none) and
    no ignore pattern. Like KServe and huggingface_hub, ``*`` also crosses
    ``/`` (fnmatch semantics).
    """

    def __init__(self, allow: Sequence[str] = (), ignore: Sequence[str] = ()) -> None:
        self.allow = tuple(_expand(p) for p in allow)
        self.ignore = tuple(_expand(p) for p in ignore)

    def __bool__(self) -> bool:
        return bool(self.allow or self.ignore)

    def keep(self, relpath: str) -> bool:
        if self.allow and not any(fnmatch.fnmatchcase(relpath, p) for p in self.allow):
            return False
        return not any(fnmatch.fnmatchcase(relpath, p) for p in self.ignore)


class LayoutChecker:
    """Detect keys that cannot coexist on a filesystem: ``a`` and ``a/b``.

    One checker serves every pair writing to one DEST (thread-safe), so two
    sources can never write the same file there. Keeps one entry per file and
    per directory seen, so memory grows with the listing (about 100 bytes per
    object), never with file sizes.
    """

    def __init__(self) -> None:
        self._files: dict[str, object] = {}  # relative path -> the owner that claimed it
        self._dirs: set[str] = set()
        self._lock = threading.Lock()

    def claimed_by(self, relpath: str, owner: object) -> bool:
        return self._files.get(relpath) is owner

    def add(self, relpath: str, owner: object = None) -> None:
        """Claim ``relpath`` for ``owner`` (e.g. one pair's transfer)."""
        with self._lock:
            self._add(relpath, owner)

    def _add(self, relpath: str, owner: object) -> None:
        if relpath in self._files:
            if self._files[relpath] is not owner:
                raise UnsafePathError(
                    f"two sources write the same file {relpath!r} in one DEST",
                    hint="give each SRC_URI its own DEST_PATH",
                )
            raise UnsafePathError(f"two objects map to the same file {relpath!r}")
        if relpath in self._dirs:
            raise UnsafePathError(
                f"object {relpath!r} is both a file and a directory in the listing",
                hint="a store may hold 'a' and 'a/b'; a filesystem cannot",
            )
        parts = relpath.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in self._files:
                raise UnsafePathError(
                    f"object {relpath!r} needs {parent!r} to be a directory, but it is also an object",
                    hint="a store may hold 'a' and 'a/b'; a filesystem cannot",
                )
            self._dirs.add(parent)
        self._files[relpath] = owner
