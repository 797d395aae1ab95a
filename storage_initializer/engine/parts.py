"""How an object is cut into ranged parts.

Deterministic for a given size and settings, because a resumed run must cut
a partially downloaded file exactly as the run that started it did.
"""

from __future__ import annotations

from storage_initializer.provider import RemoteObject
from storage_initializer.settings import MiB, Settings

MIN_PART = 8 * MiB
MAX_PART = 64 * MiB
AUTO_THRESHOLD = 32 * MiB


def part_size_for(size: int, settings: Settings) -> int:
    """The part size for an object of ``size`` bytes.

    Automatic sizing aims at about two parts per worker (so a slow part does
    not hold up the end of the file) within 8-64 MiB: fewer, larger parts
    cost less CPU per byte; smaller ones spread better over workers.
    """
    if settings.part_size:
        return settings.part_size
    target = -(-size // (2 * settings.concurrency))
    return max(MIN_PART, min(MAX_PART, target))


def plan_parts(obj: RemoteObject, settings: Settings) -> list[tuple[int, int]] | None:
    """The ``[start, end)`` ranges to fetch, or ``None`` to read one stream.

    One stream is used when the size is unknown, the store cannot serve
    ranges, or the object is below the multipart threshold.
    """
    if obj.size is None or not obj.supports_ranges:
        return None
    threshold = settings.multipart_threshold or AUTO_THRESHOLD
    if obj.size < threshold:
        return None
    step = part_size_for(obj.size, settings)
    if step >= obj.size:
        return None
    return [(start, min(start + step, obj.size)) for start in range(0, obj.size, step)]
