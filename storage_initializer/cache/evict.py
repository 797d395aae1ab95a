"""Least-recently-used eviction under a size budget.

The last use of an entry is its record's mtime (touched on every hit). An
entry is removed only under its exclusive lock, taken without waiting: an
entry being filled, checked or linked by any process is skipped. Removing
an entry never disturbs a DEST that links it: the DEST's name keeps the
data (its space is freed when that DEST goes).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from storage_initializer.cache.store import NodeCache

log = logging.getLogger("storage_initializer")


def _entries(cache: NodeCache) -> list[tuple[float, int, str]]:
    """(last use, size, name) of every entry."""
    found = []
    for shard in os.scandir(cache.objects):
        if not shard.is_dir(follow_symlinks=False):
            continue
        for item in os.scandir(shard.path):
            if item.name.endswith(".json") or not item.is_file(follow_symlinks=False):
                continue
            size = item.stat(follow_symlinks=False).st_size
            try:
                used = os.stat(item.path + ".json").st_mtime
            except OSError:
                used = 0.0  # no record: an entry a crash left half-inserted goes first
            found.append((used, size, item.name))
    return found


def evict(cache: NodeCache, budget: int, keep: str | None = None) -> int:
    """Remove least recently used entries until the cache holds at most ``budget`` bytes."""
    entries = _entries(cache)
    total = sum(size for _, size, _ in entries)
    freed = 0
    for _used, size, name in sorted(entries):
        if total <= budget:
            break
        if name == keep:
            continue
        lock = cache.lock_for(name)
        try:
            if not lock.try_exclusive():
                log.debug("not evicting %s: in use", name)
                continue
            cache.remove(name)
        finally:
            lock.close()
        total -= size
        freed += size
    if freed:
        log.info("node cache: evicted %d bytes to stay within %d", freed, budget)
    return freed
