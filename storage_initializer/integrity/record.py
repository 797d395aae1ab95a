"""What a pair downloaded: per file its size, version and the checksums verified.

:class:`Listing` wraps a provider's listing to keep what the store said about
each object (the engine may drop a checksum it cannot apply while reading;
the snapshot taken at listing time tells which one was chosen).
:func:`build_record` turns the pairs into the JSON document of ``--record``
and :func:`summary_line` into the one-line termination message.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from storage_initializer.engine.hashing import FileHashes, choose_checksum
from storage_initializer.engine.paths import PathFilter, is_own_artifact
from storage_initializer.provider import RemoteObject
from storage_initializer.redact import redact

#: How a file is said to have been hashed when an earlier run (or the node cache) downloaded it.
EARLIER = "when an earlier run downloaded it"
#: The kubelet keeps this many bytes of a termination message.
TERMINATION_LIMIT = 4096


@dataclass
class FileEntry:
    """One downloaded file as the record shows it."""

    path: str
    size: int | None
    version: str | None
    verified: dict[str, str] = field(default_factory=dict)  # algorithm -> hex, checked by the engine
    sha256: str | None = None  # known or computed for a pin
    #: How the engine hashed the file this run ("while streaming"...); None: not hashed by it.
    hashed: str | None = None
    #: algorithm -> {"against": ["store", "--expect-digest"...], "hashed": "while streaming"...}.
    verified_by: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: What the provider adds (``Provider.object_details``: S3's ``version_id``).
    details: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"path": self.path, "size": self.size, "version": self.version}
        for name, value in sorted(self.details.items()):
            doc.setdefault(name, value)  # never over a field of ours
        doc["checksums"] = dict(sorted(self.verified.items()))
        if self.sha256 and self.verified.get("sha256") != self.sha256:
            doc["sha256"] = self.sha256
        if self.verified_by:
            doc["verified_by"] = dict(sorted(self.verified_by.items()))
        return doc

    def pinned(self, pin: str, sha256: str) -> str:
        """Note that ``pin`` (a flag) matched ``sha256``; return how the file was hashed for it (for the log)."""
        from_store = self.verified.get("sha256") == sha256
        # Not known before the pin was checked: the pin read the file.
        hashed = "after the download" if self.sha256 != sha256 else self.hashed or EARLIER
        self.sha256 = sha256
        if from_store and "sha256" in self.verified_by:
            self.verified_by["sha256"]["against"].append(pin)
            return f"the store's sha256, verified {hashed}"
        self.verified_by["sha256"] = {"against": [pin], "hashed": hashed}
        return f"hashed {hashed}"


class Listing:
    """Records the objects a provider lists, as they stream to the engine.

    With ``keep=False`` (no record, no check asked for) only each file's size
    is kept, for the summary: memory stays small for a listing of 100k objects.
    """

    def __init__(self, allow: Sequence[str], ignore: Sequence[str], keep: bool = True) -> None:
        self._filter = PathFilter(tuple(allow), tuple(ignore))
        self._keep = keep
        self._lock = threading.Lock()
        self._objects: dict[str, tuple[RemoteObject, dict[str, str]]] = {}
        self._sizes: dict[str, int] = {}

    def observe(self, objects: Iterable[RemoteObject]) -> Iterator[RemoteObject]:
        for obj in objects:
            keep = obj.intermediate or self._filter.keep(obj.key)  # patterns apply to assembled files
            if not obj.is_dir_marker and not is_own_artifact(obj.key) and keep:
                with self._lock:
                    self._sizes[obj.key] = obj.size or 0
                    if self._keep:
                        self._objects[obj.key] = (obj, {k: v.lower() for k, v in obj.checksums.items()})
            yield obj

    def totals(self) -> tuple[int, int]:
        """(files, bytes) listed and kept."""
        with self._lock:
            return len(self._sizes), sum(self._sizes.values())

    def entries(
        self,
        verify_checksums: bool,
        hashes: Mapping[str, FileHashes] | None = None,
        details: Callable[[RemoteObject], Mapping[str, str]] | None = None,
    ) -> list[FileEntry]:
        """The files kept, with the checksums the engine verified (if verification was on).

        ``hashes`` is what the engine hashed this run; a file it did not (complete
        from an earlier run, from the node cache) shows the checksum it would have
        chosen, verified when that file was downloaded. ``details`` gives the
        provider's per-file facts (:meth:`Provider.object_details`).
        """
        result = []
        with self._lock:
            items = sorted(self._objects.items())
        for key, (obj, listed) in items:
            done = (hashes or {}).get(key)
            verified: dict[str, str] = {}
            how = EARLIER
            if done is not None:
                verified = dict(done.verified)
                how = done.how
            else:
                chosen = choose_checksum(listed, obj.size) if verify_checksums else None
                # Still announced after the download: the engine checked it (a withdrawn one it skips).
                if chosen is not None and (obj.checksums.get(chosen.algorithm) or "").lower() == chosen.expected:
                    verified[chosen.algorithm] = chosen.expected
            entry = FileEntry(key, obj.size, obj.version, verified, verified.get("sha256"))
            if done is not None:
                entry.sha256 = done.sha256 or entry.sha256
                entry.hashed = done.how
            entry.verified_by = {algorithm: {"against": ["store"], "hashed": how} for algorithm in verified}
            if details is not None:
                entry.details = {str(k): redact(str(v)) for k, v in details(obj).items()}
            result.append(entry)
        return result


@dataclass
class PairRecord:
    """Everything the record says about one pair."""

    uri: str
    dest: str
    source: str | None = None
    resolved: list[str] = field(default_factory=list)
    #: What the source resolved to at the store (a commit, a manifest digest), from the provider.
    details: dict[str, str] = field(default_factory=dict)
    provider: str | None = None
    files: list[FileEntry] = field(default_factory=list)
    file_count: int = 0
    bytes: int = 0
    extracted: int | None = None
    pins: dict[str, Any] = field(default_factory=dict)
    signature: dict[str, Any] | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "uri": self.uri,
            "dest": self.dest,
            "source": self.source,
            "resolved": self.resolved,
            "source_details": self.details,
            "provider": self.provider,
            "status": "error" if self.error else "ok",
            "file_count": self.file_count,
            "bytes": self.bytes,
            "files": [f.as_json() for f in self.files],
        }
        if self.extracted is not None:
            doc["extracted_files"] = self.extracted
        if self.pins:
            doc["pins"] = self.pins
        if self.signature is not None:
            doc["signature"] = self.signature
        if self.error:
            doc["error"] = self.error
        return doc


def build_record(pairs: Sequence[PairRecord], tool_version: str) -> bytes:
    """The record document: stable key order, one trailing newline."""
    doc = {"record_version": 1, "tool": f"storage-initializer {tool_version}", "pairs": [p.as_json() for p in pairs]}
    return (json.dumps(doc, indent=2, sort_keys=False) + "\n").encode("utf-8")


def record_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def summary_line(pairs: Sequence[PairRecord], digest: str | None, limit: int = TERMINATION_LIMIT - 1) -> str:
    """One line for the termination message: resolved source, files, bytes, the record's digest.

    Kept under ``limit`` bytes (the kubelet keeps 4 KiB): long sources are
    shortened, then folded into a count.
    """
    tail = f"; record {digest}" if digest else ""
    parts = [_pair_summary(p, p.source or p.uri) for p in pairs]
    line = "downloaded " + "; ".join(parts) + tail
    if len(line.encode("utf-8")) <= limit:
        return line
    parts = [_pair_summary(p, _shorten(p.source or p.uri, 200)) for p in pairs]
    line = "downloaded " + "; ".join(parts) + tail
    if len(line.encode("utf-8")) <= limit:
        return line
    files = sum(p.file_count for p in pairs)
    size = sum(p.bytes for p in pairs)
    line = f"downloaded {len(pairs)} sources: {files} files, {size} bytes{tail}"
    return line.encode("utf-8")[:limit].decode("utf-8", "ignore")


def _pair_summary(pair: PairRecord, source: str) -> str:
    return f"{source} ({pair.file_count} files, {pair.bytes} bytes)"


def _shorten(text: str, room: int) -> str:
    return text if len(text) <= room else text[: room - 3] + "..."
