"""Run ``SRC_URI DEST_PATH`` pairs: the Python API behind the command.

>>> from storage_initializer import download
>>> results = download([("https://example.com/model.onnx", "/mnt/models")])  # doctest: +SKIP

Pairs run concurrently and share one engine (one concurrency limit). Each
pair's outcome is reported in its :class:`PairResult`; this module never
exits the process or prints errors (the CLI does).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence

from storage_initializer import archive
from storage_initializer.atomic_dir import AtomicDir
from storage_initializer.engine.assembly import Assembly
from storage_initializer.engine.dest import DestDir, prepare_dest
from storage_initializer.engine.progress import Progress, Reporter, human_bytes, human_rate, plural
from storage_initializer.engine.state import DestState
from storage_initializer.engine.transfer import Engine, PairResult, PairTransfer
from storage_initializer.errors import NotFoundError, StorageInitializerError, UsageError, classify
from storage_initializer.integrity.pair import IntegrityRun, PairIntegrity
from storage_initializer.provider import Plugin, Provider, ProviderContext
from storage_initializer.redact import redact, register_env_secrets
from storage_initializer.registry import ProviderEntry, Registry, resolve_chain
from storage_initializer.settings import Settings, settings_from_env

log = logging.getLogger("storage_initializer")


class _States:
    """One :class:`DestState` per DEST, shared by the pairs writing there."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, tuple[DestState, int, bool]] = {}

    def acquire(self, root: str) -> DestState:
        with self._lock:
            if root in self._states:
                state, users, ok = self._states[root]
                self._states[root] = (state, users + 1, ok)
                return state
            state = DestState(root)
            state.open()
            self._states[root] = (state, 1, True)
            return state

    def release(self, root: str, success: bool) -> None:
        with self._lock:
            state, users, ok = self._states[root]
            ok = ok and success
            if users > 1:
                self._states[root] = (state, users - 1, ok)
                return
            del self._states[root]
            # Under the lock: a pair starting now for the same DEST opens a new state (its
            # directory) only once this one's directory is gone, not before its removal.
            state.close(ok)


class Runner:
    """Downloads pairs with one engine; see :func:`download`."""

    def __init__(self, settings: Settings, registry: Registry, integrity: IntegrityRun | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.integrity = integrity
        self.progress = Progress()
        self.engine = Engine(settings, self.progress)
        self._states = _States()
        self._stages: dict[str, str] = {}  # DEST -> where it is staged (STORAGE_INITIALIZER_PUBLISH=atomic-dir)

    def _make_provider(self, entry: ProviderEntry, overlay: Mapping[str, str]) -> Plugin:
        assert entry.cls is not None
        env = {**self.settings.env, **overlay} if overlay else self.settings.env
        register_env_secrets(overlay)
        context = ProviderContext(
            env=env,
            stall_timeout=self.settings.stall_timeout,
            connect_timeout=self.settings.connect_timeout,
            concurrency=self.settings.concurrency,
            cancelled=self.engine.cancelled,
        )
        return entry.cls(context)

    def run_pair(self, uri: str, dest: str) -> PairResult:
        started = time.monotonic()
        result = PairResult(uri=redact(uri), dest=dest)
        provider: Provider | None = None
        root: str | None = None
        transfer: PairTransfer | None = None
        # Pins, signatures, the record (storage_initializer.integrity); the CLI always gives one.
        checks = self.integrity.pair(uri, dest, self.fetch_small) if self.integrity else None
        try:
            # The URI first: a malformed one must not leave an empty DEST behind.
            provider, source, chain = resolve_chain(self.registry, uri, self._make_provider, self.settings.provider)
            log.info("source %s: provider %s", redact(source), type(provider).__name__)
            target = prepare_dest(self._stages.get(os.path.abspath(dest), dest))
            if checks is not None:
                checks.resolved(source, chain, type(provider).__name__)
                target = checks.target(target)  # a staging directory inside DEST when checks apply
            state = self._states.acquire(target)
            root = state.root
            destdir = DestDir(root)
            sha256_for = checks.wants_sha256 if checks is not None and checks.stage is not None else None
            transfer = PairTransfer(self.engine, provider, source, destdir, state, sha256_for=sha256_for)
            listed = provider  # narrowed, for the closures
            if checks is not None:
                transfer.run(lambda: checks.observe(listed.list(source)))
            else:
                transfer.run(lambda: listed.list(source))
            # Intermediate objects (image layers) become the files the checks below see.
            assembled = Assembly(transfer).run(destdir, self.settings.max_extract_ratio)
            if checks is not None:
                checks.listed_from(listed.source_details())
                checks.downloaded(transfer.hashes, listed.object_details)
            result = transfer.result
            result.uri = redact(uri)
            if checks is not None and checks.stage is not None:
                result.dest = checks.stage.dest_root  # not the stage: where the model will be
            if assembled is not None:
                result.files += assembled
                if checks is not None:
                    checks.extracted(assembled)
            self._maybe_extract(transfer, destdir, state, checks)
            if checks is not None:
                checks.verify()
        except BaseException as exc:
            result.error = classify(exc)
            if not isinstance(exc, StorageInitializerError):
                log.debug("unexpected error", exc_info=True)
        finally:
            if provider is not None:
                try:
                    provider.close()
                except Exception:  # closing must not hide the real outcome
                    log.debug("provider close failed", exc_info=True)
            if transfer is not None and transfer.cache is not None:
                transfer.cache.close()  # entries claimed but never filled are free again
            if root is not None:
                self._states.release(root, result.error is None)
            if checks is not None:
                result.error = checks.finish(result.error)
        result.seconds = time.monotonic() - started
        return result

    def fetch_small(self, uri: str, path: str, limit: int = 64 * 1024 * 1024) -> None:
        """Copy the one small object ``uri`` names (a signature) to ``path``, through its provider."""
        provider, source, _chain = resolve_chain(self.registry, uri, self._make_provider, None)
        try:
            objects = [o for o in provider.list(source) if not o.is_dir_marker]
            if len(objects) != 1:
                raise NotFoundError(f"{redact(uri)} names {len(objects)} objects, not one file")
            obj = objects[0]
            if obj.size is not None and obj.size > limit:
                raise UsageError(f"{redact(uri)} is {obj.size} bytes; a signature is small")
            with open(path, "wb") as out:
                if obj.size == 0:  # providers are never asked for an empty range
                    return
                with provider.open_range(source, obj, 0, obj.size) as stream:
                    out.write(stream.read(limit + 1)[:limit])
        finally:
            provider.close()

    def _maybe_extract(
        self, transfer: PairTransfer, dest: DestDir, state: DestState, checks: PairIntegrity | None = None
    ) -> None:
        if not self.settings.extract_archives or transfer.matched != 1 or transfer.first_match is None:
            return
        relpath, obj = transfer.first_match
        if not archive.is_archive(relpath):
            return
        if state.was_extracted(relpath, transfer.source, obj):
            log.info("archive %s was already extracted", relpath)
            return
        path = dest.path_of(relpath)
        log.info("extracting archive %s", relpath)
        count = archive.extract(path, dest, self.settings.max_extract_ratio)
        state.record_complete(relpath, path, transfer.source, obj, extracted=True)
        log.info("extracted %d files from %s", count, relpath)
        if checks is not None:
            checks.extracted(count)

    def run(self, pairs: Sequence[tuple[str, str]]) -> list[PairResult]:
        if self.settings.publish != "atomic-dir":
            return self._run(pairs)
        staged: dict[str, AtomicDir] = {}
        try:
            for _uri, dest in pairs:
                key = os.path.abspath(dest)
                if key not in staged:
                    staged[key] = AtomicDir(dest)
                    log.info("%s", staged[key].describe())
        except StorageInitializerError as exc:
            return [PairResult(uri=redact(uri), dest=dest, error=exc) for uri, dest in pairs]
        self._stages = {key: atomic.stage for key, atomic in staged.items()}
        results = self._run(pairs)
        for (_uri, dest), result in zip(pairs, results, strict=True):
            result.dest = dest  # where the model is published, not where it was staged
        for key, atomic in staged.items():
            mine = [r for (_u, d), r in zip(pairs, results, strict=True) if os.path.abspath(d) == key]
            if all(r.error is None for r in mine):
                try:
                    atomic.publish()
                except StorageInitializerError as exc:
                    for result in mine:
                        result.error = exc
        return results

    def _run(self, pairs: Sequence[tuple[str, str]]) -> list[PairResult]:
        with Reporter(self.progress, self.settings.heartbeat_seconds, self.settings.progress_bar):
            if len(pairs) == 1:
                results = [self.run_pair(*pairs[0])]
            else:
                results = [PairResult(uri=redact(u), dest=d) for u, d in pairs]

                def work(index: int) -> None:
                    results[index] = self.run_pair(*pairs[index])

                threads = [threading.Thread(target=work, args=(i,), name=f"pair-{i}") for i in range(len(pairs))]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    while thread.is_alive():
                        thread.join(0.2)
        self.engine.shutdown(wait=not self.engine.cancelled.is_set())
        return results

    def summary(self, results: Sequence[PairResult], seconds: float) -> str:
        files = sum(r.files for r in results)
        size = sum(r.bytes for r in results)
        skipped = sum(r.skipped for r in results)
        rate = human_rate(size / max(seconds, 1e-9))
        text = f"{plural(files, 'file')}, {size} bytes ({human_bytes(size)}) in {seconds:.2f}s, {rate}"
        if skipped:
            text += f"; {skipped} already complete"
        if self.progress.retries:
            text += f"; {self.progress.retries} retries"
        cache = self.engine.cache
        if cache is not None:
            stats = cache.stats
            text += (
                f"; node cache: {stats.hits} hits, {stats.misses} misses,"
                f" {stats.bytes_saved} bytes ({human_bytes(stats.bytes_saved)}) not downloaded"
            )
        return text


def download(
    pairs: Sequence[tuple[str, str]],
    settings: Settings | None = None,
    registry: Registry | None = None,
) -> list[PairResult]:
    """Download each ``(uri, dest)`` pair; return one result per pair.

    ``settings`` default to :func:`settings_from_env`; ``registry`` to the
    installed entry points. Errors are returned in ``PairResult.error``.
    """
    settings = settings or settings_from_env()
    register_env_secrets(settings.env or os.environ)
    runner = Runner(settings, registry or Registry.from_entry_points())
    return runner.run(pairs)
