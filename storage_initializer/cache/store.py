"""The node cache: one read-only file per entry, shared by every initializer on the node.

Layout of ``STORAGE_INITIALIZER_CACHE_DIR`` (a hostPath or an RWX volume)::

    v1/objects/<2 chars>/<name>        the file's bytes, mode 0444
    v1/objects/<2 chars>/<name>.json   size, inode and mtime of those bytes; its mtime is the last use
    v1/locks/<name>.lock               the entry's lock (see :mod:`.locks`)
    v1/tmp/                            entries being inserted

``<name>`` comes from :func:`.keys.cache_key`. The rules:

* An entry is filled by exactly one process at a time: it holds the entry's
  exclusive lock from the moment it decides to download the file until the
  file is published in its DEST and linked into the cache. Others wanting
  the same entry wait (polling, so a stop signal is honoured), then link it.
  A holder that dies releases the lock with its process; a waiter then
  finds no valid entry and downloads the file itself.
* An entry is valid when its record matches the file (size as listed, same
  inode and mtime as when it was inserted): writing to the file (possible
  for root, whom the read-only mode does not stop) changes its mtime, so a
  modified entry is detected and downloaded again. With
  ``STORAGE_INITIALIZER_CACHE_VERIFY=true`` a content-addressed entry is
  also hashed before each use.
* DEST gets a hard link to the entry when both are on one filesystem (the
  file appears in DEST at once, whatever its size), a reflink or a copy
  otherwise. The entry is read-only, so a model server writing through its
  DEST name fails instead of corrupting every other pod's copy; a program
  that rewrites a model file must write a new file and rename it over the
  old name (which only replaces DEST's link). ``STORAGE_INITIALIZER_CACHE_LINK=copy``
  gives each DEST a private copy instead.
* Eviction (see :mod:`.evict`) removes least recently used entries while the
  cache exceeds ``STORAGE_INITIALIZER_CACHE_MAX_SIZE``, skipping any entry
  whose lock it cannot take (being filled, checked or linked right now).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from storage_initializer.cache.evict import evict
from storage_initializer.cache.keys import CacheKey, cache_key
from storage_initializer.cache.locks import EntryLock, wait_until
from storage_initializer.cache.materialize import link_or_copy
from storage_initializer.engine.dest import publish, temp_path_for
from storage_initializer.errors import ConfigError
from storage_initializer.provider import RemoteObject

log = logging.getLogger("storage_initializer")

LAYOUT = "v1"


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bytes_saved: int = 0


class NodeCache:
    """The cache directory of this node; one per run, shared by every pair."""

    def __init__(self, root: str, max_size: int | None = None, verify: bool = False, link: bool = True) -> None:
        self.root = os.path.abspath(root)
        self.base = os.path.join(self.root, LAYOUT)
        self.objects = os.path.join(self.base, "objects")
        self.locks = os.path.join(self.base, "locks")
        self.tmp = os.path.join(self.base, "tmp")
        self.max_size = max_size
        self.verify = verify
        self.link = link
        self.stats = CacheStats()
        self._lock = threading.Lock()
        try:
            for path in (self.objects, self.locks, self.tmp):
                os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot use STORAGE_INITIALIZER_CACHE_DIR={root}: {exc.strerror or exc}",
                hint="mount a writable volume there (a hostPath or a ReadWriteMany volume) or unset the variable",
            ) from None
        if not os.access(self.base, os.W_OK | os.X_OK):
            raise ConfigError(
                f"STORAGE_INITIALIZER_CACHE_DIR={root} is not writable",
                hint="check the volume mount and the user the container runs as",
            )

    def session(self, source: str, stopped: Callable[[], bool]) -> CacheSession:
        return CacheSession(self, source, stopped)

    # -- paths ---------------------------------------------------------------
    def data_path(self, name: str) -> str:
        return os.path.join(self.objects, name[-2:], name)

    def record_path(self, name: str) -> str:
        return self.data_path(name) + ".json"

    def lock_for(self, name: str) -> EntryLock:
        return EntryLock(os.path.join(self.locks, name + ".lock"))

    def count(self, hit: bool, size: int) -> None:
        with self._lock:
            if hit:
                self.stats.hits += 1
                self.stats.bytes_saved += size
            else:
                self.stats.misses += 1

    # -- entries (the caller holds the entry's lock) ---------------------------
    def is_valid(self, key: CacheKey) -> bool:
        data = self.data_path(key.name)
        try:
            st = os.stat(data)
            with open(self.record_path(key.name), encoding="utf-8") as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            return False
        if not isinstance(record, dict):
            return False
        same = (
            st.st_size == key.size
            and record.get("size") == st.st_size
            and record.get("ino") == st.st_ino
            and record.get("mtime_ns") == st.st_mtime_ns
        )
        if not same:
            log.warning("cache entry %s was modified or is incomplete: downloading it again", key.name)
            return False
        if self.verify and key.sha256 is not None and _sha256_of(data) != key.sha256:
            log.warning("cache entry %s does not match its sha256: downloading it again", key.name)
            return False
        return True

    def remove(self, name: str) -> None:
        for path in (self.record_path(name), self.data_path(name)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def touch(self, name: str) -> None:
        """Mark the entry used now (the LRU clock: atime is unreliable under noatime/relatime)."""
        with contextlib.suppress(OSError):
            os.utime(self.record_path(name))

    def insert(self, key: CacheKey, published: str) -> None:
        """Make the file just published at ``published`` the entry ``key`` (read-only from now on)."""
        os.makedirs(os.path.dirname(self.data_path(key.name)), exist_ok=True)
        temp = os.path.join(self.tmp, f"{key.name}.{uuid.uuid4().hex}")
        try:
            link_or_copy(published, temp, allow_link=self.link)
            os.chmod(temp, 0o444)  # linked: DEST's name shares this mode (see the module's rules)
            st = os.stat(temp)
            record = {"size": st.st_size, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns, "sha256": key.sha256}
            self.remove(key.name)  # the record goes first: a crash in between leaves no valid entry
            os.replace(temp, self.data_path(key.name))
            record_temp = temp + ".json"
            with open(record_temp, "w", encoding="utf-8") as handle:
                json.dump(record, handle)
            os.replace(record_temp, self.record_path(key.name))
        finally:
            for leftover in (temp, temp + ".json"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)

    def evict(self, keep: str | None = None) -> None:
        if self.max_size is not None:
            evict(self, self.max_size, keep)


class CacheSession:
    """The cache as one pair sees it: the entries this pair is filling hold their locks here."""

    def __init__(self, cache: NodeCache, source: str, stopped: Callable[[], bool]) -> None:
        self.cache = cache
        self.source = source
        self.stopped = stopped
        self._filling: dict[str, tuple[CacheKey, EntryLock]] = {}
        self._lock = threading.Lock()

    def lookup(self, obj: RemoteObject, final: str, fsync: bool) -> bool:
        """Materialize ``obj`` at ``final`` from the cache (True), or claim its entry to fill (False).

        Waits while another process fills the entry. False also when the
        object cannot be cached or the run is stopping.
        """
        key = cache_key(self.source, obj)
        cache = self.cache
        if key is None or (cache.max_size is not None and key.size > cache.max_size):
            return False
        lock = cache.lock_for(key.name)
        waited = False

        def attempt() -> bool:
            nonlocal waited
            if lock.try_shared():
                if cache.is_valid(key):
                    return True
                lock.unlock()
            if lock.try_exclusive():
                return True
            if not waited:
                log.info("waiting for another initializer on this node that is downloading %s", obj.key)
                waited = True
            return False

        if not wait_until(attempt, self.stopped):
            lock.close()
            return False
        try:
            if cache.is_valid(key):
                temp = temp_path_for(final)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
                how = link_or_copy(cache.data_path(key.name), temp, allow_link=cache.link)
                publish(temp, final, fsync, maybe_linked=True)
                cache.touch(key.name)
                cache.count(True, key.size)
                log.debug("from the node cache (%s): %s", how, obj.key)
                lock.close()
                return True
        except BaseException:
            lock.close()
            raise
        if not lock.try_exclusive():  # held already unless the entry went bad under a shared lock
            lock.close()
            return False
        cache.remove(key.name)
        cache.count(False, key.size)
        with self._lock:
            self._filling[final] = (key, lock)
        return False

    def store(self, final: str) -> None:
        """The file this session claimed is published at ``final``: put it in the cache."""
        with self._lock:
            claimed = self._filling.pop(final, None)
        if claimed is None:
            return
        key, lock = claimed
        try:
            if os.path.getsize(final) == key.size:
                self.cache.insert(key, final)
                self.cache.evict(keep=key.name)
        except OSError as exc:
            log.warning("could not add %s to the node cache: %s", final, exc.strerror or exc)
        finally:
            lock.close()

    def close(self) -> None:
        """Release the entries of files that were not downloaded (a failure, a stop)."""
        with self._lock:
            claims = list(self._filling.values())
            self._filling.clear()
        for _key, lock in claims:
            lock.close()


def _sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()
