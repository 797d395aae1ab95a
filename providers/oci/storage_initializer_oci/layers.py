"""Merge tar layers (and raw files) into one plain tar of the final tree.

Image layers are applied as the image spec says (layer.md, "Whiteouts"): a
``.wh.NAME`` entry deletes ``NAME`` of the layers below, a
``.wh..wh..opq`` entry hides everything the layers below hold in its
directory, and a path in an upper layer replaces the same path below. The
merge walks the layers from the top down, so each blob is streamed exactly
once and nothing is written twice: a member is emitted unless an upper layer
already decided its path or hid one of its ancestors. For a modelcar image
only what lies under ``/models/`` is kept, at the root.

The output is an uncompressed tar stream that the engine extracts as it
arrives, with its safe archive rules (:mod:`storage_initializer.archive`: nothing outside
DEST, no devices, links kept inside, bomb cap), so those rules live in one
place.

The blobs come from DEST's staging area, where the engine downloaded and
verified them against their digests (ranged, resumable, retried); the merge
checks each one's size again (and, with ``verify``, its digest), so a blob
altered on disk in between fails the merge and nothing is published.
"""

from __future__ import annotations

import hashlib
import io
import logging
import posixpath
import tarfile
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import IO, Any

from storage_initializer.engine.paths import safe_relpath
from storage_initializer.errors import ArchiveError, IntegrityError, UnsafePathError
from storage_initializer_oci.media import Layer

log = logging.getLogger("storage_initializer.oci")

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
MODELS = "models"
_CHUNK = 1024 * 1024

#: Opens a whole blob for streaming.
BlobOpener = Callable[[Layer], AbstractContextManager[IO[bytes]]]


class _Digesting(io.RawIOBase):
    """Hashes and counts every byte read from a blob stream."""

    def __init__(self, stream: IO[bytes], algorithm: str | None) -> None:
        self.stream = stream
        self.hasher = hashlib.new(algorithm) if algorithm else None
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.stream.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        if self.hasher is not None:
            self.hasher.update(data)
        self.count += n
        return n

    def drain(self) -> None:
        buffer = bytearray(_CHUNK)
        while self.readinto(buffer):
            pass


def _normalise(name: str) -> str:
    """``./models/a/`` and ``/models/a`` are ``models/a``; ``..`` is kept, for the safety check to refuse."""
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/")


class Merger:
    """Writes the merged tree of layers, given top layer first, into ``out``."""

    def __init__(
        self, out: tarfile.TarFile, open_blob: BlobOpener, max_bytes: int, root: str, verify: bool = True
    ) -> None:
        self.out = out
        self.verify = verify
        self.root = root
        self.open_blob = open_blob
        self.max_bytes = max_bytes
        self.written = 0
        self.upper: dict[str, str] = {}  # path -> "dir" | "file" | "gone", from the layers above
        self.opaque: set[str] = set()
        self.emitted: set[str] = set()
        self.files = 0

    # -- visibility -----------------------------------------------------------------
    def _hidden(self, path: str) -> bool:
        if self.upper.get(path) in ("file", "gone"):
            return True
        parts = path.split("/")
        for i in range(1, len(parts)):
            ancestor = "/".join(parts[:i])
            if ancestor in self.opaque or self.upper.get(ancestor) in ("file", "gone"):
                return True
        return False

    @staticmethod
    def _target(path: str, image: bool) -> str | None:
        """Where ``path`` lands in DEST, or None when it is not model content."""
        if not image:
            return path or None
        if path.startswith(MODELS + "/"):
            return path[len(MODELS) + 1 :]
        return None

    # -- layers -----------------------------------------------------------------------
    def add(self, layer: Layer) -> None:
        """Stream one blob into the merge and verify its digest."""
        algorithm, _, expected = layer.digest.partition(":")
        with self.open_blob(layer) as stream:
            source = _Digesting(stream, algorithm if self.verify else None)
            reader = io.BufferedReader(source, _CHUNK)
            try:
                if layer.kind == "raw":
                    self._add_raw(layer, reader)
                else:
                    self._add_tar(layer, reader)
                failure: Exception | None = None
            except (tarfile.TarError, zlib.error, EOFError, ValueError) as exc:
                failure = exc
            except Exception as exc:  # zstandard.ZstdError has no common base we can import eagerly
                if type(exc).__name__ != "ZstdError":
                    raise
                failure = exc
            source.drain()
        actual = source.hasher.hexdigest() if source.hasher is not None else expected
        if source.count != layer.size or actual != expected:
            raise IntegrityError(
                f"blob {layer.digest} does not match its digest: received {source.count} bytes "
                f"hashing to {algorithm}:{actual[:16]}..., the manifest announced {layer.size}",
                hint="the registry's storage is corrupt or something altered the blob in transit",
            )
        if failure is not None:
            raise ArchiveError(f"layer {layer.digest} ({layer.media_type}) is not a valid tar: {failure}")

    def _add_raw(self, layer: Layer, reader: IO[bytes]) -> None:
        assert layer.path is not None
        path = _normalise(layer.path)
        if path in self.emitted:
            raise ArchiveError(f"two layers claim the file {path!r}")
        info = tarfile.TarInfo(path)
        info.size = layer.size
        info.mode = 0o644
        self._spend(layer.size)
        self.out.addfile(info, reader)
        self.emitted.add(path)
        self.upper.setdefault(path, "file")
        self.files += 1

    def _add_tar(self, layer: Layer, reader: IO[bytes]) -> None:
        stream: IO[bytes] = reader
        if layer.kind == "zstd":
            import zstandard

            stream = zstandard.ZstdDecompressor().stream_reader(reader, read_across_frames=True)
        mode = "r|gz" if layer.kind == "gzip" else "r|"
        this: dict[str, str] = {}
        opaque: set[str] = set()
        with tarfile.open(fileobj=stream, mode=mode) as archive:  # type: ignore[call-overload]
            for member in archive:
                path = _normalise(member.name)
                if not path:
                    continue
                parent, base = posixpath.split(path)
                if layer.image and base == OPAQUE:
                    opaque.add(parent)
                    continue
                if layer.image and base.startswith(WHITEOUT):
                    this[posixpath.join(parent, base[len(WHITEOUT) :])] = "gone"
                    continue
                if self._hidden(path) or path in this:
                    continue
                if path in self.upper:  # an upper directory: it already exists (or wins over a lower file)
                    continue
                this[path] = "dir" if member.isdir() else "file"
                target = self._target(path, layer.image)
                if target is not None:
                    self._emit(archive, member, target, layer)
        for path, kind in this.items():
            self.upper.setdefault(path, kind)
        self.opaque |= opaque

    def _emit(self, archive: tarfile.TarFile, member: tarfile.TarInfo, target: str, layer: Layer) -> None:
        info = member.replace(name=target, deep=False)
        if member.islnk():
            link = _normalise(member.linkname)
            linked = self._target(link, layer.image)
            if linked is None or linked not in self.emitted:
                raise ArchiveError(
                    f"layer {layer.digest}: hard link {member.name!r} -> {member.linkname!r} points outside the "
                    "model files or to another layer"
                )
            info = info.replace(linkname=linked, deep=False)
        elif member.issym() and layer.image and member.linkname.startswith(f"/{MODELS}/"):
            # An absolute link inside the image's /models/ stays inside DEST once made relative.
            relative = posixpath.relpath(member.linkname, posixpath.dirname(f"/{MODELS}/{target}"))
            info = info.replace(linkname=relative, deep=False)
        self._check(info, member, layer)
        if member.isreg():
            self._spend(member.size)
            self.out.addfile(info, archive.extractfile(member))
            self.files += 1
        else:
            self.out.addfile(info)
        self.emitted.add(target)

    def _check(self, info: tarfile.TarInfo, member: tarfile.TarInfo, layer: Layer) -> None:
        """Refuse here what the engine's extraction would refuse, so a hostile layer leaves nothing behind."""
        where = f"layer {layer.digest}: member {member.name!r}"
        try:
            safe_relpath(info.name)
        except UnsafePathError as exc:
            raise ArchiveError(f"{where} refused: {exc.message}") from None
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            raise ArchiveError(f"{where} is a device or FIFO; refused")
        try:
            tarfile.data_filter(info, self.root)
        except tarfile.FilterError as exc:
            raise ArchiveError(f"{where} refused: {exc}") from None

    def _spend(self, size: int) -> None:
        self.written += size
        if self.written > self.max_bytes:
            raise ArchiveError(
                f"layers expand beyond {self.max_bytes} bytes; refusing a possible bomb",
                hint="raise STORAGE_INITIALIZER_MAX_EXTRACT_RATIO if this image is legitimate",
            )


def merge(
    out: IO[bytes], layers: list[Layer], open_blob: BlobOpener, max_ratio: float, root: str, verify: bool = True
) -> int:
    """Write the merged tree of ``layers`` (bottom first, as in a manifest) to ``out`` as a tar stream.

    Returns the number of files written. ``root`` is the directory the links are
    checked against (they must stay below it). ``verify=False`` checks sizes
    only (the engine already verified each blob's digest while downloading it).
    """
    total = sum(layer.size for layer in layers)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        merger = Merger(tar, open_blob, int(max(total, 1) * max_ratio) + _CHUNK, root, verify)
        for number, layer in enumerate(reversed(layers), 1):
            log.info("layer %d/%d %s (%s, %d bytes)", number, len(layers), layer.digest, layer.media_type, layer.size)
            merger.add(layer)
    return merger.files
