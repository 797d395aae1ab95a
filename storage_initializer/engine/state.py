"""Resume state: in ``DEST/.storage-initializer/`` while a run needs it, on the files after.

After a successful run DEST holds exactly the model: it is the model
server's repository (Triton loads every directory in it, TF Serving and
MLServer scan it). So the state directory exists only while a run is in
progress or after one failed (to resume), and is removed once every pair
writing to DEST succeeded. What a later run needs to skip a file that is
already complete travels with the file instead: an extended attribute
``user.storage-initializer`` (source, size, version, checksums, mtime) set
when it is published. The listing of an extracted archive is kept the same
way on DEST itself. Where the filesystem has no user extended attributes,
nothing is recorded after success and a rerun downloads again (correct,
only slower); resume after a failure never depends on them.

While the state directory exists:

* ``manifest.jsonl``: one line per file published and verified, with the
  source it came from (the URI without query, fragment and userinfo), the
  object's size and version and the file's mtime. A rerun skips a file whose
  line matches the source, the store's listing and the file on disk.
* ``partial/<id>.json``: for a file downloaded in parts, which parts are
  already in its temporary file; for a file read as one stream (1 MiB or
  more, from a store that serves ranges), that its temporary file holds a
  prefix of this very object, so a rerun continues after the bytes on disk. Written (atomically) after each part's bytes
  are in the file, so after a crash every part it lists is really there.
* ``running``: present while a run is in progress; a run that finds it
  cleans up temporary files the crashed run left behind, once it succeeds.

Only process death is covered by default (the page cache survives it). Set
``STORAGE_INITIALIZER_FSYNC=true`` to also survive power loss on a volume
that outlives the node.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from storage_initializer.engine.dest import describe_os_error
from storage_initializer.engine.paths import STATE_DIR_NAME, TEMP_PREFIX, TEMP_SUFFIX, LayoutChecker
from storage_initializer.provider import RemoteObject


def source_key(uri: str) -> str:
    """The part of a source URI that names the store and path, for the resume state.

    Query and fragment (presigned signatures, SAS tokens change from run to run) and
    userinfo (credentials) are left out, so they never reach the disk either.
    """
    base = uri.split("#", 1)[0].split("?", 1)[0]
    scheme, sep, rest = base.partition("://")
    if sep:
        authority, slash, path = rest.partition("/")
        base = f"{scheme.lower()}://{authority.rpartition('@')[2]}{slash}{path}"
    return base.rstrip("/")


@dataclass(frozen=True)
class ManifestEntry:
    source: str | None
    size: int
    version: str | None
    checksums: Mapping[str, str]
    mtime_ns: int
    extracted: bool = False


def _identity_matches(entry: ManifestEntry, source: str, obj: RemoteObject) -> bool:
    """Is the recorded download of the same content the store lists now?

    Versions are only comparable within one source (two HTTP servers' ETags, two buckets'
    generations may collide), so a file from another source is never taken as done.
    """
    if entry.source != source:
        return False
    if obj.size is not None and obj.size != entry.size:
        return False
    if obj.version is not None:
        return obj.version == entry.version
    # No version: fall back to an announced checksum; without one we cannot know.
    return _digests_agree(dict(entry.checksums), obj.checksums, versioned=False)


def _digests_agree(recorded: object, listed: Mapping[str, str], versioned: bool) -> bool:
    """Do the digests recorded (manifest, partial record) and the listing's describe the same content?

    Either may hold more (a provider adds what its answer announced, see
    :class:`RemoteObject`): the digests both name must agree, and without a
    version at least one must be shared.
    """
    if not isinstance(recorded, dict):
        return False
    shared = set(recorded) & set(listed)
    if not shared and not versioned:
        return False
    return all(str(recorded[a]).lower() == listed[a].lower() for a in shared)


#: The extended attribute that records a published file's identity (and, on DEST, extracted archives).
XATTR = "user.storage-initializer"
XATTR_EXTRACTED = "user.storage-initializer.extracted"
_NO_XATTRS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.ENOSPC, errno.E2BIG})


def _entry_from(raw: dict[str, Any]) -> ManifestEntry:
    return ManifestEntry(
        source=raw.get("source"),
        size=int(raw["size"]),
        version=raw.get("version"),
        checksums=dict(raw.get("checksums") or {}),
        mtime_ns=int(raw["mtime_ns"]),
        extracted=bool(raw.get("extracted", False)),
    )


def _record(entry: ManifestEntry) -> dict[str, Any]:
    record: dict[str, Any] = {
        "source": entry.source,
        "size": entry.size,
        "version": entry.version,
        "checksums": dict(entry.checksums),
        "mtime_ns": entry.mtime_ns,
    }
    if entry.extracted:
        record["extracted"] = True
    return record


#: The ``part_size`` of a file read as one stream: its temporary file holds a prefix of the object.
STREAM = -1


class DestState:
    """Reads and writes the resume state of one DEST."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.dir = os.path.join(root, STATE_DIR_NAME)
        self.partial_dir = os.path.join(self.dir, "partial")
        self._manifest_path = os.path.join(self.dir, "manifest.jsonl")
        self._running_path = os.path.join(self.dir, "running")
        self._lock = threading.Lock()
        self._entries: dict[str, ManifestEntry] = {}
        self._manifest_fd: int | None = None
        self.previous_run_interrupted = False
        self._xattrs = hasattr(os, "setxattr")
        self._extracted: dict[str, ManifestEntry] = {}
        #: The files claimed so far by the pairs writing to this DEST.
        self.layout = LayoutChecker()

    # -- lifecycle -----------------------------------------------------------
    def open(self) -> None:
        os.makedirs(self.partial_dir, exist_ok=True)
        self.previous_run_interrupted = os.path.exists(self._running_path)
        with open(self._running_path, "w") as marker:
            marker.write(str(os.getpid()))
        self._load_manifest()
        self._load_extracted()
        self._manifest_fd = os.open(self._manifest_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def close(self, success: bool) -> None:
        import shutil  # here, not at start-up: shutil loads zlib, bz2 and lzma

        if self._manifest_fd is not None:
            os.close(self._manifest_fd)
            self._manifest_fd = None
        if success:
            if self.previous_run_interrupted:
                self.sweep_leftovers()
            self._save_extracted()
            # DEST holds the model and nothing else: what a rerun needs is on the files.
            shutil.rmtree(self.dir, ignore_errors=True)
        elif not self.previous_run_interrupted and not self._entries and not self._holds_work():
            shutil.rmtree(self.dir, ignore_errors=True)  # nothing to resume from: leave DEST as it was

    def _holds_work(self) -> bool:
        """Partial files, or anything besides our own bookkeeping (intermediate objects staged here)."""
        own = {os.path.basename(self._manifest_path), os.path.basename(self._running_path), "partial"}
        return bool(os.listdir(self.partial_dir)) or any(name not in own for name in os.listdir(self.dir))

    # -- extended attributes -------------------------------------------------
    def _get_xattr(self, path: str, name: str) -> dict[str, Any] | None:
        if not self._xattrs:
            return None
        try:
            raw = json.loads(os.getxattr(path, name, follow_symlinks=False))
        except OSError as exc:
            if exc.errno in _NO_XATTRS and exc.errno not in (errno.EPERM, errno.EACCES):
                self._xattrs = False
            return None
        except ValueError:
            return None
        return raw if isinstance(raw, dict) else None

    def _set_xattr(self, path: str, name: str, value: dict[str, Any]) -> None:
        if not self._xattrs:
            return
        try:
            os.setxattr(path, name, json.dumps(value, separators=(",", ":")).encode(), follow_symlinks=False)
        except OSError as exc:
            if exc.errno in _NO_XATTRS:
                self._xattrs = False  # this filesystem keeps none: a rerun after success downloads again

    def _load_extracted(self) -> None:
        raw = self._get_xattr(self.root, XATTR_EXTRACTED) or {}
        for path, record in raw.items():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                self._extracted[path] = _entry_from(record)

    def _save_extracted(self) -> None:
        extracted = {p: e for p, e in self._entries.items() if e.extracted} | {
            p: e for p, e in self._extracted.items() if p not in self._entries
        }
        if extracted:
            self._set_xattr(self.root, XATTR_EXTRACTED, {p: _record(e) for p, e in extracted.items()})

    def _load_manifest(self) -> None:
        try:
            # Damaged bytes (a torn or corrupted block) spoil their line only.
            with open(self._manifest_path, encoding="utf-8", errors="replace") as handle:
                lines = handle.readlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                raw: dict[str, Any] = json.loads(line)
                self._entries[raw["path"]] = _entry_from(raw)
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line after a crash: ignore it
        if len(lines) > 2 * len(self._entries) + 100:
            self._compact()

    def _compact(self) -> None:
        temp = self._manifest_path + ".tmp"
        with open(temp, "w", encoding="utf-8") as handle:
            for path, entry in self._entries.items():
                handle.write(self._line(path, entry))
        os.replace(temp, self._manifest_path)

    @staticmethod
    def _line(path: str, entry: ManifestEntry) -> str:
        return json.dumps({"path": path, **_record(entry)}, separators=(",", ":")) + "\n"

    # -- completed files -----------------------------------------------------
    def is_complete(self, relpath: str, final_path: str, source: str, obj: RemoteObject) -> bool:
        entry = self._entries.get(relpath)
        if entry is None:
            raw = self._get_xattr(final_path, XATTR)
            with contextlib.suppress(ValueError, KeyError, TypeError):
                entry = _entry_from(raw) if raw is not None else None
        if entry is None or entry.extracted or not _identity_matches(entry, source, obj):
            return False
        try:
            st = os.lstat(final_path)
        except OSError:
            return False
        return st.st_size == entry.size and st.st_mtime_ns == entry.mtime_ns

    def was_extracted(self, relpath: str, source: str, obj: RemoteObject) -> bool:
        entry = self._entries.get(relpath) or self._extracted.get(relpath)
        return entry is not None and entry.extracted and _identity_matches(entry, source, obj)

    def label(self, temp_path: str, source: str, obj: RemoteObject) -> ManifestEntry | None:
        """Set the identity attribute on a file about to be renamed to its final name; return the entry.

        It travels with the rename (which keeps the inode, its size and mtime), so a kill between
        the rename and :meth:`record_complete` leaves a file a rerun still recognises (rather than
        downloading it again). ``None``: the file is gone (the rename fails next, and says why).
        """
        try:
            st = os.stat(temp_path)
        except OSError:
            return None
        entry = ManifestEntry(source, st.st_size, obj.version, dict(obj.checksums), st.st_mtime_ns)
        self._set_xattr(temp_path, XATTR, _record(entry))
        return entry

    def record_complete(
        self,
        relpath: str,
        final_path: str,
        source: str,
        obj: RemoteObject,
        *,
        extracted: bool = False,
        labelled: ManifestEntry | None = None,
    ) -> None:
        """``labelled``: what :meth:`label` set on the file before the rename (recorded as is)."""
        entry = labelled
        if entry is None:
            if extracted:
                size, mtime_ns = obj.size or 0, 0
            else:
                st = os.stat(final_path)
                size, mtime_ns = st.st_size, st.st_mtime_ns
            entry = ManifestEntry(source, size, obj.version, dict(obj.checksums), mtime_ns, extracted)
            if not extracted:
                self._set_xattr(final_path, XATTR, _record(entry))
        # Written at once (one small O_APPEND write): a file published a moment
        # before a SIGKILL is then not downloaded again by the rerun.
        line = self._line(relpath, entry).encode("utf-8")
        with self._lock:
            self._entries[relpath] = entry
            if self._manifest_fd is not None:
                try:
                    os.write(self._manifest_fd, line)
                except OSError as exc:  # a full disk says so, rather than looking like a network error
                    raise describe_os_error(exc, self.root) from None

    # -- partial files -------------------------------------------------------
    def _partial_path(self, relpath: str) -> str:
        digest = hashlib.sha256(relpath.encode("utf-8", "surrogateescape")).hexdigest()[:40]
        return os.path.join(self.partial_dir, digest + ".json")

    def _load_record(self, relpath: str, source: str, obj: RemoteObject, part_size: int) -> dict[str, Any] | None:
        """The partial record of ``relpath``, if it describes this very object (and cut)."""
        if obj.version is None and not obj.checksums:
            return None
        try:
            with open(self._partial_path(relpath), encoding="utf-8") as handle:
                raw = json.load(handle)
            if not isinstance(raw, dict):
                return None
        except (OSError, ValueError):
            return None
        same = (
            raw.get("path") == relpath
            and raw.get("source") == source
            and raw.get("size") == obj.size
            and raw.get("version") == obj.version
            and _digests_agree(raw.get("checksums"), obj.checksums, versioned=obj.version is not None)
            and raw.get("part_size") == part_size
        )
        return raw if same else None

    def has_stream(self, relpath: str, source: str, obj: RemoteObject) -> bool:
        """Is the temporary file of ``relpath`` a stream of this very object (so its bytes are reusable)?"""
        return self._load_record(relpath, source, obj, STREAM) is not None

    def save_stream(self, relpath: str, source: str, obj: RemoteObject) -> None:
        """Record that ``relpath``'s temporary file receives this object from its first byte."""
        self.save_parts(relpath, source, obj, STREAM, set())

    def load_parts(
        self, relpath: str, source: str, obj: RemoteObject, part_size: int
    ) -> tuple[set[int], dict[int, int]]:
        """The parts already in the temporary file, if it is the same object: the indices of the
        complete ones, and how far each part in progress had written (index -> file offset)."""
        raw = self._load_record(relpath, source, obj, part_size)
        if raw is None:
            return set(), {}
        try:
            done = {int(i) for i in raw.get("done", [])}
            progress = {int(i): int(offset) for i, offset in dict(raw.get("progress") or {}).items()}
        except (TypeError, ValueError):
            return set(), {}
        return done, progress

    def save_parts(
        self,
        relpath: str,
        source: str,
        obj: RemoteObject,
        part_size: int,
        done: set[int],
        progress: Mapping[int, int] | None = None,
    ) -> None:
        """Record the complete parts and, for parts in progress, the offset each has written up to."""
        path = self._partial_path(relpath)
        temp = path + f".{threading.get_ident()}.tmp"
        record: dict[str, Any] = {
            "path": relpath,
            "source": source,
            "size": obj.size,
            "version": obj.version,
            "checksums": dict(obj.checksums),
            "part_size": part_size,
            "done": sorted(done),
        }
        if progress:
            record["progress"] = {str(index): offset for index, offset in sorted(progress.items())}
        try:
            with open(temp, "w", encoding="utf-8") as handle:
                json.dump(record, handle)
            os.replace(temp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise describe_os_error(exc, self.root) from None

    def forget_parts(self, relpath: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._partial_path(relpath))

    def sweep_leftovers(self) -> None:
        """Remove temporary files and partial records a crashed run left behind.

        A directory below the root that has its own state directory is another DEST (a
        pair of this run may be writing there now): it is left alone.
        """
        for name in os.listdir(self.partial_dir):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.partial_dir, name))
        for directory, dirnames, filenames in os.walk(self.root):
            if STATE_DIR_NAME in dirnames:
                if directory != self.root:
                    dirnames.clear()
                    continue
                dirnames.remove(STATE_DIR_NAME)
            for name in filenames:
                if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(directory, name))
