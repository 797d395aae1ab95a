"""Intermediate objects: staged in DEST's state directory, then assembled into the model's files.

A provider lists an object with ``intermediate=True`` when it is an input to
the model rather than one of its files (an OCI image layer). The pair's
transfer sets them aside (:attr:`PairTransfer.intermediate`); once the
listing is done, :class:`Assembly` downloads them with a transfer of their
own whose DEST is ``DEST/.storage-initializer/staged/<source id>/``, so they
get every guarantee a file gets (ranged parallel reads, verification while
streaming, resume after a kill from that directory's own resume state,
retries, the node cache) without ever being visible as model content. The
run's allow/ignore patterns do not apply to them.

Then :meth:`Provider.assemble` runs on a thread of its own, writing the tree
as a tar into a pipe, and the engine extracts that stream as it arrives with
the same code and rules as a downloaded archive
(:func:`storage_initializer.archive.extract_stream`), keeping only the paths
the allow/ignore patterns match. No assembled tar ever lies on disk: DEST
needs room for the staged objects and the files, not a third copy. The
staged objects are then removed and the group is recorded as extracted in
DEST's state: a rerun that lists the same objects with the same patterns
downloads nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from typing import IO

from storage_initializer import archive
from storage_initializer.engine.dest import DestDir
from storage_initializer.engine.paths import STATE_DIR_NAME, PathFilter
from storage_initializer.engine.state import DestState
from storage_initializer.engine.transfer import PairTransfer
from storage_initializer.provider import Provider, RemoteObject, StagedObject

log = logging.getLogger("storage_initializer")

#: Below DEST's state directory: one directory per source holding its staged objects.
STAGED_DIR_NAME = "staged"
_BUFFER = 1024 * 1024


class Assembly:
    """Stages the intermediate objects of one pair's listing and assembles them into its DEST."""

    def __init__(self, transfer: PairTransfer) -> None:
        self.transfer = transfer
        self.objects = transfer.intermediate
        ident = hashlib.sha256(transfer.source.encode("utf-8", "surrogateescape")).hexdigest()[:20]
        self.root = os.path.join(transfer.state.dir, STAGED_DIR_NAME, ident)
        #: The key under which DEST's state records this source's assembled tree (no model path has it).
        self.marker = f"{STATE_DIR_NAME}/{STAGED_DIR_NAME}/{ident}"

    def group(self) -> RemoteObject:
        """One identity for the whole group and the patterns: what a rerun compares to skip it."""
        patterns = self.transfer.filter
        objects = [[key, obj.size, obj.version, sorted(obj.checksums.items())] for key, obj in self.objects.items()]
        described = {"objects": objects, "allow": patterns.allow, "ignore": patterns.ignore}
        digest = hashlib.sha256(json.dumps(described, separators=(",", ":")).encode()).hexdigest()
        size = sum(obj.size or 0 for obj in self.objects.values())
        return RemoteObject(self.marker, size, version=f"assembled:{digest}")

    def run(self, dest: DestDir, max_ratio: float) -> int | None:
        """Download and assemble the intermediate objects; return the file count (None: none, or already done)."""
        transfer = self.transfer
        if not self.objects:
            return None
        if transfer.state.was_extracted(self.marker, transfer.source, self.group()):
            log.info("%s: already assembled from these %d intermediate objects", transfer.shown, len(self.objects))
            for obj in self.objects.values():
                transfer.progress.file_skipped(obj.size or 0)
            return None
        self._download()
        count = self._assemble(dest, max_ratio)
        transfer.state.record_complete(self.marker, "", transfer.source, self.group(), extracted=True)
        # The inputs are no longer needed: free their room now, not when the state directory goes.
        shutil.rmtree(self.root, ignore_errors=True)
        log.info("assembled %d files", count)
        return count

    def _download(self) -> None:
        """A transfer into the staging directory, with its own resume state there and no patterns."""
        transfer = self.transfer
        os.makedirs(self.root, exist_ok=True)
        state = DestState(self.root)
        state.open()
        staged = PairTransfer(transfer.engine, transfer.provider, transfer.uri, DestDir(self.root), state, PathFilter())
        objects = [dataclasses.replace(obj, intermediate=False) for obj in self.objects.values()]
        ok = False
        try:
            staged.run(lambda: objects)
            ok = True
        finally:
            if staged.cache is not None:
                staged.cache.close()
            state.close(ok)
            transfer.result.bytes += staged.result.bytes
            transfer.result.skipped += staged.result.skipped
            if not ok and not any(files for _, _, files in os.walk(self.root)):
                # Nothing to resume from: leave no empty staging directory to keep DEST's state alive.
                shutil.rmtree(self.root, ignore_errors=True)
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.dirname(self.root))

    def _assemble(self, dest: DestDir, max_ratio: float) -> int:
        transfer = self.transfer
        staging = DestDir(self.root)
        staged = [StagedObject(obj, staging.path_of(key)) for key, obj in self.objects.items()]
        log.info("assembling the model from %d intermediate objects", len(staged))
        size = sum(obj.size or 0 for obj in self.objects.values())
        keep = transfer.filter.keep if transfer.filter else None
        return _Pipe(transfer.provider, transfer.uri, staged).extract(
            lambda stream, produced: archive.extract_stream(stream, dest, size, max_ratio, keep, produced)
        )


class _Pipe:
    """Runs :meth:`Provider.assemble` into a pipe on a thread; the caller extracts the other end.

    Which failure is reported: the writer's when it failed first (the extraction then
    only sees a cut stream), the extraction's otherwise (the writer then only sees the
    pipe closed).
    """

    def __init__(self, provider: Provider, uri: str, staged: list[StagedObject]) -> None:
        self.provider = provider
        self.uri = uri
        self.staged = staged
        self.errors: list[BaseException] = []

    def _produce(self, write_fd: int) -> None:
        out = open(write_fd, "wb", buffering=_BUFFER)  # noqa: SIM115 - closed below, after the error is known
        try:
            self.provider.assemble(self.uri, self.staged, out)
            out.flush()
        except BaseException as exc:
            self.errors.append(exc)  # before the close: the reader's EOF comes after this
        finally:
            with contextlib.suppress(OSError):
                out.close()

    def extract(self, consume: Callable[[IO[bytes], Callable[[], None]], int]) -> int:
        read_fd, write_fd = os.pipe()
        thread = threading.Thread(target=self._produce, args=(write_fd,), name="assemble", daemon=True)
        stream = open(read_fd, "rb", buffering=_BUFFER)  # noqa: SIM115 - closed in finally
        try:
            thread.start()
        except BaseException:
            os.close(write_fd)
            stream.close()
            raise

        def produced() -> None:
            """The tar is read: let the writer finish (reading what it adds after), then raise its error."""
            while stream.read(_BUFFER):
                pass
            thread.join()
            if self.errors:
                raise self.errors[0]

        try:
            return consume(stream, produced)
        except BaseException:
            first = list(self.errors)
            stream.close()  # a writer still going stops at its next write (a broken pipe)
            thread.join()
            if first:
                raise first[0] from None
            raise
        finally:
            stream.close()
