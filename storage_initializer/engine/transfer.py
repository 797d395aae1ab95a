"""Download one listing into DEST: parallel, ranged, verified, atomic, resumable.

One :class:`Engine` per run owns the worker threads, one shared concurrency
limit and one fixed buffer per worker, so memory is flat whatever the number
and size of the files. A :class:`PairTransfer` feeds it the objects of one
``SRC_URI DEST`` pair as the provider lists them: transfers start before the
listing ends, and the number of queued tasks is bounded.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from storage_initializer.engine.dest import DestDir, describe_os_error, publish, temp_path_for
from storage_initializer.engine.hashing import (
    CRCS,
    Checksum,
    Digests,
    FileHashes,
    Hasher,
    awscrt_available,
    choose_checksum,
    hash_from_file,
)
from storage_initializer.engine.inorder import InOrderHasher
from storage_initializer.engine.netloop import Fetch, NetLoop, Unsupported
from storage_initializer.engine.parts import part_size_for, plan_parts
from storage_initializer.engine.partwise import PartwiseHasher
from storage_initializer.engine.paths import PathFilter, is_own_artifact, safe_relpath
from storage_initializer.engine.progress import Progress
from storage_initializer.engine.state import DestState, source_key
from storage_initializer.errors import (
    CancelledError,
    DestinationError,
    IntegrityError,
    NotFoundError,
    ObjectChangedError,
    StorageInitializerError,
    TransientError,
    classify,
)
from storage_initializer.provider import Provider, RemoteObject
from storage_initializer.redact import redact
from storage_initializer.settings import Settings

if TYPE_CHECKING:
    from storage_initializer.cache import NodeCache

log = logging.getLogger("storage_initializer")

#: A whole object at least this big whose bytes must be hashed by MD5 or SHA, from a plain-HTTP
#: origin with ``STORAGE_INITIALIZER_SPLICE`` on, lands through ``splice`` and is hashed from the
#: page cache on a worker (:meth:`PairTransfer._settle`), so the event loop goes on serving the
#: other sockets meanwhile (bench: s3 medium, 256 x 8 MiB verified by MD5, pinned: 7.00 -> 6.35 s).
#: A CRC is hashed on the loop from the bytes as they arrive: 8 MiB takes it under a
#: millisecond, and the read-back and the hand-off cost more than that (s3 medium by CRC64NVME,
#: pinned, 4 rounds: 3.44 s and 2.22 s of client CPU on the loop, 4.30 s and 3.49 s offloaded).
#: Smaller objects stay on the loop: a hand-off costs more than their hash.
OFFLOAD_HASH_MIN = 1024 * 1024
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)


class Engine:
    """Worker threads, buffers and the cancellation flag shared by every pair."""

    def __init__(self, settings: Settings, progress: Progress) -> None:
        self.settings = settings
        self.progress = progress
        self.cancelled = threading.Event()
        self._pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="transfer")
        # Bounds queued tasks so a 100k-object listing does not sit in memory.
        self._slots = threading.BoundedSemaphore(settings.concurrency * 4)
        self._local = threading.local()
        self._netloop: NetLoop | None = None
        self._netloop_lock = threading.Lock()
        #: The node cache shared by the initializers of this node (STORAGE_INITIALIZER_CACHE_DIR).
        self.cache: NodeCache | None = None
        if settings.cache_dir:
            from storage_initializer.cache import NodeCache  # imported only where a node cache is set up

            self.cache = NodeCache(
                settings.cache_dir, settings.cache_max_size, settings.cache_verify, settings.cache_link != "copy"
            )

    def netloop(self) -> NetLoop:
        """The HTTP data plane, started on first use."""
        if self._netloop is None:
            with self._netloop_lock:
                if self._netloop is None:
                    self._netloop = NetLoop(
                        self.settings.buffer_size,
                        self.settings.stall_timeout,
                        self.settings.connect_timeout,
                        # Whole objects on the loop cost a socket each, no thread and no buffer: keep
                        # as many in flight as may be queued, to hide the store's per-request latency
                        # (measured, 4000 x 64 KiB on SeaweedFS: 16 in flight 4.1 s, 64 in flight 3.5 s).
                        max_active=self.settings.concurrency * 4,
                        splice=self.settings.splice,
                    )
        return self._netloop

    def buffer(self) -> memoryview:
        buf: memoryview | None = getattr(self._local, "buffer", None)
        if buf is None:
            buf = memoryview(bytearray(self.settings.buffer_size))
            self._local.buffer = buf
        return buf

    def acquire_slot(self, stop: threading.Event) -> bool:
        """Wait for room in the queue (bounded: a 100k-object listing does not sit in memory)."""
        while not self._slots.acquire(timeout=0.2):
            if stop.is_set() or self.cancelled.is_set():
                return False
        return True

    def release_slot(self) -> None:
        self._slots.release()

    def run_now(self, task: Callable[[], None]) -> None:
        """Run ``task`` on a worker without waiting for a slot (for work that already holds one)."""
        self._pool.submit(task)

    def submit(self, task: Callable[[], None], stop: threading.Event) -> bool:
        """Queue ``task``; block while the queue is full. False if stopped first."""
        while not self._slots.acquire(timeout=0.2):
            if stop.is_set() or self.cancelled.is_set():
                return False

        def run() -> None:
            try:
                task()
            finally:
                self._slots.release()

        self._pool.submit(run)
        return True

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
        if self._netloop is not None:
            self._netloop.close()


@dataclass
class PairResult:
    uri: str
    dest: str
    files: int = 0
    bytes: int = 0
    skipped: int = 0
    seconds: float = 0.0
    error: StorageInitializerError | None = None
    published: list[str] = field(default_factory=list)


class _PlanFailed(Exception):
    """Carries an error raised while planning one listed object out of the listing loop."""

    def __init__(self, error: StorageInitializerError) -> None:
        super().__init__(str(error))
        self.error = error


class _Cursor:
    """How far a stream has been written (survives the exception that ends it)."""

    __slots__ = ("offset",)

    def __init__(self, offset: int) -> None:
        self.offset = offset


def _progress(job: _FileJob) -> dict[int, int]:
    """How far each part in progress has written, for the parts' record (parts not yet begun: none)."""
    return {i: cursor.offset for i, cursor in list(job.cursors.items()) if cursor.offset > job.parts[i][0]}


def _hash_later(digests: Digests) -> bool:
    """Whether a whole object's body lands unhashed, to be hashed on a worker (``OFFLOAD_HASH_MIN``)."""
    return digests.idle or not digests.cheap


class _FileJob:
    """One file being downloaded: its temp file, parts and verification."""

    def __init__(self, relpath: str, final: str, obj: RemoteObject) -> None:
        self.relpath = relpath
        self.final = final
        self.temp = temp_path_for(final)
        self.obj = obj
        self.parts: list[tuple[int, int]] = []
        self.part_size = 0
        self.done: set[int] = set()
        self.todo: list[int] = []  # parts no stream has taken yet (popped from the end)
        self.cursors: dict[int, _Cursor] = {}  # parts in progress: how far each has written
        self.resume_at: dict[int, int] = {}  # parts an earlier run left in progress: where to go on
        self.fd = -1
        self.hasher: InOrderHasher | PartwiseHasher | None = None
        self.resumed_at = 0  # bytes of a one-stream read already on disk when it (re)started
        self.lock = threading.Lock()
        self.finished = False
        self.streamed = False  # read as one stream whose temporary file a rerun continues


#: How the record describes the bytes of a resumed file that were hashed from disk, once.
RESUMED = "on disk from an interrupted download, read back once"

#: A file read as one stream is resumable from the bytes on disk from this size on (smaller
#: ones cost less to fetch again than to record).
STREAM_RESUME_MIN = 1024 * 1024


class PairTransfer:
    """Downloads the listing of one URI into one DEST directory."""

    def __init__(
        self,
        engine: Engine,
        provider: Provider,
        uri: str,
        dest: DestDir,
        state: DestState,
        patterns: PathFilter | None = None,
        sha256_for: Callable[[str], bool] | None = None,
    ) -> None:
        self.engine = engine
        #: Which files (relative paths) need their sha256 (a pin): computed in the same pass.
        self.sha256_for = sha256_for
        #: What was hashed, per relative path, for the files this run downloaded.
        self.hashes: dict[str, FileHashes] = {}
        self.settings = engine.settings
        self.progress = engine.progress
        self.provider = provider
        self.uri = uri
        self.shown = redact(uri)
        self.source = source_key(uri)
        self.dest = dest
        self.state = state
        # ``patterns``: other than the run's allow/ignore patterns (none, for staged intermediate objects).
        self.filter = (
            patterns
            if patterns is not None
            else PathFilter(self.settings.allow_patterns, self.settings.ignore_patterns)
        )
        self.layout = state.layout  # shared with other pairs writing to this DEST
        self.failed = threading.Event()
        self.error: StorageInitializerError | None = None
        self._outstanding = 0
        self._idle = threading.Condition()
        self._jobs: dict[str, _FileJob] = {}
        self._jobs_lock = threading.Lock()
        self.result = PairResult(uri=self.shown, dest=dest.root)
        self.matched = 0
        self.first_match: tuple[str, RemoteObject] | None = None
        #: The listing's intermediate objects by key, in listing order (engine/assembly.py stages them).
        self.intermediate: dict[str, RemoteObject] = {}
        self.markers = 0
        self.filtered = 0
        self._has_fast_path = type(provider).download_to is not Provider.download_to
        self._has_http_range = type(provider).http_range is not Provider.http_range
        # Not for a source already on the node: its files may be hard-linked into DEST (download_to),
        # and the cache must never make a user's own file read-only.
        self.cache = (
            engine.cache.session(self.source, self._stopped) if engine.cache and not self._has_fast_path else None
        )

    # -- planning ------------------------------------------------------------
    def run(self, list_objects: Callable[[], Iterable[RemoteObject]]) -> None:
        """Plan and download every listed object; raise the first failure.

        A listing that fails transiently is started again (after a backoff);
        objects already planned by the failed pass are skipped.
        """
        attempt = 0
        relisting = False
        try:
            while True:
                planned_before = self.matched
                try:
                    for obj in list_objects():
                        if self.failed.is_set() or self.engine.cancelled.is_set():
                            break
                        try:
                            self._plan(obj, relisting)
                        except BaseException as exc:
                            raise _PlanFailed(classify(exc)) from None
                    break
                except _PlanFailed as failed:
                    # A file's own failure, not the listing's: a relisting would
                    # skip the file as already planned and lose it.
                    raise failed.error from None
                except BaseException as exc:
                    error = classify(exc)
                    if not error.retryable or self.failed.is_set():
                        raise error from None
                    attempt = 0 if self.matched > planned_before else attempt + 1
                    self._backoff_or_raise(error, attempt, "the listing")
                    relisting = True
        except BaseException as exc:
            self._fail(classify(exc))
        finally:
            self._wait_idle()
        if self.engine.cancelled.is_set() and self.error is None:
            self._fail(CancelledError("stopped by a signal; the work done so far is kept for a rerun"))
        if self.error is not None:
            self._cleanup_after_failure()
            raise self.error
        if not self.matched and not self.intermediate:
            self._raise_nothing_matched()

    def _raise_nothing_matched(self) -> None:
        if self.filtered:
            raise NotFoundError(
                f"nothing in {self.shown} matches the allow/ignore patterns ({self.filtered} object(s) filtered out)",
                hint="check STORAGE_ALLOW_PATTERNS / STORAGE_IGNORE_PATTERNS",
            )
        what = "only directory markers" if self.markers else "no objects"
        raise NotFoundError(f"{self.shown} holds {what}", hint="check the path; an empty model is an error")

    def _plan(self, obj: RemoteObject, relisting: bool = False) -> None:
        if obj.is_dir_marker:
            self.markers += 1
            return
        if is_own_artifact(obj.key):
            log.debug("skipping %s: state or temporary file of an earlier run", obj.key)
            return
        if obj.intermediate:
            self.intermediate[safe_relpath(obj.key)] = obj  # a relisting replaces it
            return
        relpath = safe_relpath(obj.key)
        if not self.filter.keep(relpath):
            self.filtered += 1
            return
        if relisting and self.layout.claimed_by(relpath, self):
            return
        self.layout.add(relpath, self)
        self.matched += 1
        if self.first_match is None:
            self.first_match = (relpath, obj)
        final = self.dest.ensure_parent(relpath)
        present = self.dest.check_target(final)
        if self.state.was_extracted(relpath, self.source, obj) or (
            present and self.state.is_complete(relpath, final, self.source, obj)
        ):
            log.debug("already complete: %s", relpath)
            self.progress.file_skipped(obj.size or 0)
            self.result.skipped += 1
            return
        if self.cache is not None and self.cache.lookup(obj, final, self.settings.fsync):
            self.state.record_complete(relpath, final, self.source, obj)
            self.progress.file_skipped(obj.size or 0)
            return
        self.progress.add_planned(obj.size)
        job = _FileJob(relpath, final, obj)
        parts = plan_parts(obj, self.settings)
        if parts is not None and self._has_fast_path and self._try_fast_path(job):
            return
        if parts is None:
            if not self._start_on_loop(job):
                self._submit(lambda: self._download_whole(job))
            return
        self._open_parts(job, parts)
        job.todo = [i for i in range(len(parts)) if i not in job.done]
        job.todo.reverse()  # pop() from the end: parts in file order
        for _ in range(min(self.settings.file_concurrency, len(job.todo))):
            self._submit(functools.partial(self._download_parts, job))

    def _submit(self, task: Callable[[], None]) -> None:
        with self._idle:
            self._outstanding += 1

        def wrapped() -> None:
            try:
                if not self.failed.is_set():
                    task()
            except BaseException as exc:
                self._fail(classify(exc))
            finally:
                with self._idle:
                    self._outstanding -= 1
                    self._idle.notify_all()

        if not self.engine.submit(wrapped, self.failed):
            with self._idle:
                self._outstanding -= 1

    def _wait_idle(self) -> None:
        with self._idle:
            while self._outstanding:
                self._idle.wait(0.5)

    def _fail(self, error: StorageInitializerError) -> None:
        with self._idle:
            if self.error is None:
                self.error = error
            self.failed.set()

    # -- whole-object downloads ------------------------------------------------
    def _start_on_loop(self, job: _FileJob) -> bool:
        """Download a whole object on the event loop, with no worker thread at all.

        Its request is described here, its bytes land from the loop, and the loop
        verifies and publishes it (:meth:`_finish_on_loop`): no thread hand-off per file,
        which is most of the cost of a small object. Returns ``False`` when the provider
        cannot describe the request (the caller then uses a worker).
        """
        obj = job.obj
        if not self._has_http_range or not obj.size or self.failed.is_set():
            return False
        if not self.engine.acquire_slot(self.failed):
            return True  # stopping: nothing more starts
        started = False
        self._outstanding_add(1)
        try:
            start, hasher = self._open_stream(job, resume=True)
            request = self.provider.http_range(self.uri, obj, start, obj.size) if start < obj.size else None
            if request is None:  # no request to describe, or every byte already on disk: a worker's job
                if start:
                    self.progress.add_bytes(-start)
                self._close_fd(job)
                return False
            with self._jobs_lock:
                self._jobs[job.relpath] = job
            fetch = Fetch(
                request, job.fd, start, obj.size, hasher, self.progress.add_bytes, self._stopped, self.dest.root
            )
            # Only where the body can be spliced: a TLS body passes through our buffer anyway,
            # and hashing it there spares reading it back.
            spliceable = self.settings.splice and request.url.startswith("http://")
            if hasher is not None and obj.size - start >= OFFLOAD_HASH_MIN and spliceable:
                fetch.set_aside = functools.partial(_hash_later, hasher)
            fetch.on_done = functools.partial(self._finish_on_loop, job, start)
            started = True
            self.engine.netloop().submit(fetch)
            return True
        except BaseException as exc:
            self._fail(classify(exc))
            return True
        finally:
            if not started:  # the loop will not call _finish_on_loop: give the slot back here
                self._loop_job_done()

    def _finish_on_loop(self, job: _FileJob, start: int, fetch: Fetch) -> None:
        """In the loop thread: verify and publish (or have a worker hash the bytes first)."""
        if fetch.unhashed is not None and fetch.error is None and not fetch.unhashed.idle:
            self.engine.run_now(functools.partial(self._settle, job, fetch, fetch.unhashed, start))
            return  # the worker gives the slot back
        self._settle(job, fetch, None, start)

    def _settle(self, job: _FileJob, fetch: Fetch, to_hash: Digests | None, start: int) -> None:
        """Verify and publish a whole object the loop fetched, or hand a failure to a worker.

        ``to_hash``: the digests of an object that landed unhashed (``OFFLOAD_HASH_MIN``), fed
        here from the file, bytes ``start`` to the end (the prefix kept from an earlier run is in
        them already).
        """
        try:
            if fetch.error is not None:
                raise fetch.error
            self._verify_size(job, fetch.offset)
            if to_hash is None or to_hash.idle:  # idle: the answer announced nothing to verify
                hashed = fetch.hasher if fetch.unhashed is None else fetch.unhashed
                self._verified(job, cast("Digests | None", hashed), self._stream_how(job))
            else:
                self._hash_prefix(job.fd, fetch.offset, to_hash, start)
                self._verified(job, to_hash, self._stream_how(job) + ", from the page cache as it landed")
            self._close_fd(job)
            self._publish(job)
        except BaseException as exc:
            error = exc if isinstance(exc, Unsupported) else classify(exc)
            if isinstance(error, Unsupported) or (
                error.retryable and not isinstance(error, CancelledError) and not self._stopped()
            ):
                # The rare path: a worker retries with backoff (it may block), from the bytes on disk
                # unless they failed verification.
                self.progress.add_bytes(-fetch.offset)
                self._outstanding_add(1)
                self.engine.run_now(functools.partial(self._retry_whole, job, error))
            else:
                self._fail(error)
        finally:
            self._loop_job_done()

    def _retry_whole(self, job: _FileJob, error: BaseException) -> None:
        """On a worker: what the loop could not finish (a redirect; a failure, after a backoff)."""
        try:
            if not isinstance(error, Unsupported):
                assert isinstance(error, StorageInitializerError)
                self._backoff_or_raise(error, 1, job.relpath)
            if not self.failed.is_set():
                # The loop's failure was retry 1 of the budget.
                self._download_whole(job, resume=not isinstance(error, IntegrityError), first_attempt=1)
        except BaseException as exc:
            self._fail(classify(exc))
        finally:
            self._outstanding_add(-1)

    def _outstanding_add(self, n: int) -> None:
        with self._idle:
            self._outstanding += n
            self._idle.notify_all()

    def _loop_job_done(self) -> None:
        self.engine.release_slot()
        self._outstanding_add(-1)

    def _download_whole(self, job: _FileJob, resume: bool = True, first_attempt: int = 0) -> None:
        with self._jobs_lock:
            self._jobs[job.relpath] = job
        if self._has_fast_path and self._try_fast_path(job):
            return
        attempt = first_attempt
        while True:
            # After a failed verification the bytes kept from an earlier run are suspect too.
            size, digests = self._stream_whole(job, resume=resume and attempt == first_attempt, first_attempt=attempt)
            try:
                self._verify_size(job, size)
                self._verified(job, digests, self._stream_how(job))
                break
            except IntegrityError as error:
                self.progress.add_bytes(-size)
                attempt += 1
                self._backoff_or_raise(error, attempt, job.relpath)
        self._close_fd(job)
        self._publish(job)

    def _try_fast_path(self, job: _FileJob) -> bool:
        """Let the provider place the file itself (e.g. a hard link); verify it."""
        if not self.provider.download_to(self.uri, job.obj, job.temp):
            return False
        self._verify_size(job, os.stat(job.temp).st_size)
        digests = Digests.make(self._checksum(job), self._wants_sha256(job))
        if digests is not None:
            self._hash_file(job.temp, digests)
        self._verified(job, digests, "after the download (the provider placed the file)")
        self.progress.add_bytes(job.obj.size or 0)
        self._publish(job)
        return True

    def _stream_whole(self, job: _FileJob, resume: bool, first_attempt: int = 0) -> tuple[int, Digests | None]:
        """Read the object in one stream, retrying transient failures.

        A retry continues where the stream broke when the store serves
        ranges, and starts over otherwise; so does a later run, after a kill,
        for an object of a known version of at least ``STREAM_RESUME_MIN``
        bytes (its temporary file holds a prefix of it: the partial record
        says which object). Returns (bytes written, their digests).
        """
        obj = job.obj
        resumable = obj.size is not None and obj.supports_ranges
        start, hasher = self._open_stream(job, resume)
        cursor = _Cursor(start)
        attempt = first_attempt
        while True:
            before = cursor.offset
            try:
                self._read(obj, job.fd, cursor, obj.size, hasher)
                return cursor.offset, hasher
            except BaseException as exc:
                error = classify(exc)
                # Bytes count as progress only when a retry keeps them: a store
                # without ranges starts over, and must not retry forever.
                progressed = resumable and cursor.offset - before >= self.settings.buffer_size
                if not resumable and cursor.offset:
                    self.progress.add_bytes(-cursor.offset)
                    cursor.offset = 0
                    os.ftruncate(job.fd, 0)
                    job.resumed_at = 0
                    hasher = self._stream_digests(job)
                attempt = 0 if progressed else attempt + 1
                self._backoff_or_raise(error, attempt, job.relpath)

    def _open_stream(self, job: _FileJob, resume: bool) -> tuple[int, Digests | None]:
        """Open the temporary file of a one-stream read; return where to start and the hasher.

        The start is past the bytes an earlier, killed run left, when the partial
        record says they are a prefix of this very object (their hash is taken from disk).
        """
        obj = job.obj
        resumable = obj.size is not None and obj.supports_ranges
        self._close_fd(job)
        job.streamed = (
            resumable and (obj.size or 0) >= STREAM_RESUME_MIN and (obj.version is not None or bool(obj.checksums))
        )
        start = 0
        if job.streamed and resume and self.state.has_stream(job.relpath, self.source, obj):
            with contextlib.suppress(OSError):
                start = min(os.path.getsize(job.temp), obj.size or 0)
        job.fd = self._open_temp(job, truncate=start == 0)
        if job.streamed and start == 0:
            self.state.save_stream(job.relpath, self.source, obj)
        hasher = self._stream_digests(job)
        job.resumed_at = start
        if start:
            log.info("resuming %s from byte %d of %d", job.relpath, start, obj.size)
            if hasher is not None:
                self._hash_prefix(job.fd, start, hasher)
            self.progress.add_bytes(start)
        return start, hasher

    # -- multi-part downloads --------------------------------------------------
    def _open_parts(self, job: _FileJob, parts: list[tuple[int, int]]) -> None:
        assert job.obj.size is not None
        job.parts = parts
        job.part_size = part_size_for(job.obj.size, self.settings)
        done, progress = self.state.load_parts(job.relpath, self.source, job.obj, job.part_size)
        if (done or progress) and os.path.exists(job.temp) and os.path.getsize(job.temp) == job.obj.size:
            job.done = {i for i in done if 0 <= i < len(parts)}
            job.resume_at = {
                i: offset
                for i, offset in progress.items()
                if 0 <= i < len(parts) and i not in job.done and parts[i][0] < offset < parts[i][1]
            }
        job.fd = self._open_temp(job, truncate=not (job.done or job.resume_at))
        try:
            os.ftruncate(job.fd, job.obj.size)
        except OSError as exc:
            raise describe_os_error(exc, job.final) from None
        checksum, sha256 = self._checksum(job), self._wants_sha256(job)
        if checksum is not None and not sha256 and checksum.algorithm in CRCS and awscrt_available():
            job.hasher = PartwiseHasher(checksum, job.fd, parts, self.engine.buffer)
        elif (digests := Digests.make(checksum, sha256)) is not None:
            job.hasher = InOrderHasher(digests, job.fd, parts, self.engine.buffer)
        with self._jobs_lock:
            self._jobs[job.relpath] = job
        if job.done or job.resume_at:
            done_bytes = sum(parts[i][1] - parts[i][0] for i in job.done)
            partial_bytes = sum(offset - parts[i][0] for i, offset in job.resume_at.items())
            log.info(
                "resuming %s: %d of %d parts already downloaded%s",
                job.relpath,
                len(job.done),
                len(parts),
                f", and {partial_bytes} bytes of {len(job.resume_at)} more" if job.resume_at else "",
            )
            self.progress.add_bytes(done_bytes + partial_bytes)
            if job.hasher:
                job.hasher.resumed(sorted(job.done))
                for index, offset in sorted(job.resume_at.items()):
                    job.hasher.resumed_part(index, offset)
            if len(job.done) == len(parts):
                self._finish_parts(job)

    def _download_parts(self, job: _FileJob) -> None:
        """One of a file's streams: fetch its next parts until none is left.

        A file gets at most ``file_concurrency`` (default 4) streams, however many parts
        it has: more connections to one object mostly add CPU for the client
        and the server (as s5cmd's and rclone's defaults of 4-5 reflect),
        while the other workers serve other files.
        """
        while not self.failed.is_set():
            with job.lock:
                if not job.todo:
                    return
                index = job.todo.pop()
            self._download_part(job, index)

    def _download_part(self, job: _FileJob, index: int) -> None:
        start, end = job.parts[index]
        cursor = _Cursor(job.resume_at.pop(index, start))
        with job.lock:
            job.cursors[index] = cursor  # read when the parts are recorded, kept if this part fails
        attempt = 0
        while True:
            before = cursor.offset
            try:
                if isinstance(job.hasher, PartwiseHasher):  # hashed from the bytes as they arrive
                    self._read(job.obj, job.fd, cursor, end, job.hasher.feed(index), None)
                else:
                    landed = functools.partial(job.hasher.landed, index) if job.hasher else None
                    self._read(job.obj, job.fd, cursor, end, None, landed)
                break
            except BaseException as exc:
                attempt = 0 if cursor.offset - before >= self.settings.buffer_size else attempt + 1
                self._backoff_or_raise(classify(exc), attempt, f"{job.relpath} part {index + 1}/{len(job.parts)}")
        # Hash before counting the part as done: whoever completes the last
        # part then knows no other worker still uses the file descriptor.
        if job.hasher:
            job.hasher.part_done(index)
        with job.lock:
            job.cursors.pop(index, None)
            job.done.add(index)
            self.state.save_parts(job.relpath, self.source, job.obj, job.part_size, job.done, _progress(job))
            last = len(job.done) == len(job.parts) and not job.finished
            if last:
                job.finished = True
        if last:
            self._finish_parts(job)

    def _finish_parts(self, job: _FileJob) -> None:
        size = os.fstat(job.fd).st_size
        self._verify_size(job, size)
        if job.hasher is not None:
            how = (
                "while streaming, in order as the parts landed"
                if isinstance(job.hasher, InOrderHasher)
                else "while streaming, the parts one by one as they landed, their CRCs combined"
            )
            if job.hasher.from_disk:  # in order: a prefix of the file; part by part: from any parts
                where = "the first " if isinstance(job.hasher, InOrderHasher) else ""
                how += f" ({where}{job.hasher.from_disk} bytes, {RESUMED})"
            self._verified(job, job.hasher.finish(), how)
            log.debug(
                "hashed %s: %d of %d bytes read back from the page cache",
                job.relpath,
                job.hasher.read_back,
                size,
            )
        self._close_fd(job)
        self._publish(job)
        self.state.forget_parts(job.relpath)

    # -- shared steps ------------------------------------------------------------
    def _stopped(self) -> bool:
        return self.failed.is_set() or self.engine.cancelled.is_set()

    def _read(
        self,
        obj: RemoteObject,
        fd: int,
        cursor: _Cursor,
        end: int | None,
        hasher: Hasher | None,
        landed: Callable[[int, memoryview | None], None] | None = None,
    ) -> None:
        """Write bytes ``[cursor.offset, end)`` of ``obj`` to ``fd``, advancing ``cursor``.

        On the engine's event loop when the provider describes the request
        (:meth:`Provider.http_range`), else through the provider's stream.
        ``landed(offset, data)`` is told how far the file is written after each
        write (``data``: the bytes written, when at hand), for an in-order hasher.
        """
        if end is not None and cursor.offset >= end:
            return
        # The loop reads sized bodies only: an object of unknown size is likely chunked.
        request = None
        if self._has_http_range and end is not None:
            request = self.provider.http_range(self.uri, obj, cursor.offset, end)
        if request is not None:
            add_bytes = self.progress.add_bytes

            def on_bytes(n: int) -> None:  # the loop advanced fetch.offset before calling
                add_bytes(n)
                cursor.offset = fetch.offset  # the parts' record may be saved from another thread
                if landed is not None:
                    landed(fetch.offset, None)

            fetch = Fetch(request, fd, cursor.offset, end, hasher, on_bytes, self._stopped, self.dest.root)
            try:
                self.engine.netloop().fetch(fetch)
                return
            except Unsupported as why:
                log.debug("reading %s through the provider's client: %s", obj.key, why)
            finally:
                cursor.offset = fetch.offset
        with self.provider.open_range(self.uri, obj, cursor.offset, end) as stream:
            self._copy(stream, fd, cursor, end, hasher, landed)

    def _copy(
        self,
        stream: object,
        fd: int,
        cursor: _Cursor,
        end: int | None,
        hasher: Hasher | None,
        landed: Callable[[int, memoryview | None], None] | None = None,
    ) -> None:
        """Stream into ``fd`` from ``cursor.offset`` until ``end`` (or EOF).

        ``cursor`` advances with every chunk written, so after a failure the
        caller knows exactly where to resume.
        """
        buf = self.engine.buffer()
        readinto = getattr(stream, "readinto", None)
        read = getattr(stream, "read")  # noqa: B009 - any file-like object
        start = offset = cursor.offset
        while end is None or offset < end:
            want = len(buf) if end is None else min(len(buf), end - offset)
            view = buf[:want]
            if readinto is not None:
                n = readinto(view) or 0
            else:
                data = read(want)
                n = len(data)
                view[:n] = data
            if n <= 0:
                break
            chunk = view[:n]
            written = 0
            try:
                while written < n:
                    written += os.pwrite(fd, chunk[written:], offset + written)
            except OSError as exc:
                raise describe_os_error(exc, self.dest.root) from None
            if hasher is not None:
                hasher.update(chunk)
            offset += n
            cursor.offset = offset
            self.progress.add_bytes(n)
            if landed is not None:
                landed(offset, chunk)
            if self.failed.is_set() or self.engine.cancelled.is_set():
                raise CancelledError("stopped")
        if end is not None and offset < end:
            raise TransientError(f"the connection ended after {offset - start} of {end - start} bytes")

    def _backoff_or_raise(self, error: StorageInitializerError, attempt: int, what: str) -> None:
        if isinstance(error, CancelledError) or self.failed.is_set():
            raise error
        if not error.retryable or attempt > self.settings.retries:
            if error.retryable:
                error.message = f"{error.message} (gave up after {self.settings.retries} retries)"
            raise error
        delay = min(self.settings.retry_backoff * 2 ** (attempt - 1), 30.0) * random.uniform(0.5, 1.0)
        # The server's Retry-After (already capped at 60 s by storage_initializer.http) is a floor.
        delay = max(delay, min(getattr(error, "retry_after", None) or 0.0, 60.0))
        self.progress.add_retry()
        log.warning(
            "retrying %s of %s after: %s (retry %d/%d in %.1fs)",
            what,
            self.shown,
            redact(str(error)),
            max(attempt, 1),
            self.settings.retries,
            delay,
        )
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            if self.failed.is_set() or self.engine.cancelled.wait(min(0.2, delay)):
                raise CancelledError("stopped")

    def _verify_size(self, job: _FileJob, size: int) -> None:
        if job.obj.size is not None and size != job.obj.size:
            raise IntegrityError(
                f"{job.relpath}: received {size} bytes, the store announced {job.obj.size}",
                retryable=True,
            )

    def _wants_sha256(self, job: _FileJob) -> bool:
        return self.sha256_for is not None and self.sha256_for(job.relpath)

    def _checksum(self, job: _FileJob) -> Checksum | None:
        """The store's checksum to verify (its sha256 first when a pin needs one anyway)."""
        if not self.settings.verify_checksums:
            return None
        return choose_checksum(job.obj.checksums, job.obj.size, "sha256" if self._wants_sha256(job) else None)

    def _stream_digests(self, job: _FileJob) -> Digests | None:
        """The digests of a one-stream read, its store checksum chosen when the first byte is hashed.

        The store's answer to the read may announce a digest the listing did not (see
        :attr:`Provider.answers_checksums`), cheaper to compute or the only one there is.
        """
        sha256 = self._wants_sha256(job)
        if self.settings.verify_checksums and (job.obj.checksums or self.provider.answers_checksums):
            return Digests.deferred(functools.partial(self._checksum, job), sha256)
        return Digests.make(None, sha256)

    @staticmethod
    def _stream_how(job: _FileJob) -> str:
        if job.resumed_at:
            return f"while streaming (the first {job.resumed_at} bytes, {RESUMED})"
        return "while streaming"

    def _verified(self, job: _FileJob, digests: Digests | None, how: str) -> None:
        """Check the store's checksum; keep what was hashed (and how) for the record and the pins."""
        if digests is None:
            return
        checksum = digests.checksum
        verified: dict[str, str] = {}
        if checksum is not None and self._verify_digest(job, checksum, digests.hexdigest()):
            verified[checksum.algorithm] = checksum.expected
        self.hashes[job.relpath] = FileHashes(verified, digests.sha256(), how)

    def _verify_digest(self, job: _FileJob, expected: Checksum, actual: str) -> bool:
        """Raise when ``actual`` is not the announced digest; False when the store withdrew it."""
        algorithm, digest = expected.algorithm, expected.expected
        if (job.obj.checksums.get(algorithm) or "").lower() != digest:
            # The provider withdrew it while reading (see RemoteObject): e.g. an S3 ETag
            # that turned out to belong to an SSE-KMS object is no MD5.
            log.debug("not verifying %s of %s: the store withdrew it", algorithm, job.relpath)
            return False
        if actual.lower() != digest:
            raise IntegrityError(
                f"{job.relpath}: {algorithm} is {actual}, the store announced {digest}",
                hint="the data was corrupted in transit or the store's checksum is wrong",
                retryable=True,
            )
        log.debug("verified %s %s", algorithm, job.relpath)
        return True

    def _hash_prefix(self, fd: int, size: int, hasher: Hasher, offset: int = 0) -> None:
        """Feed bytes ``offset`` to ``size`` of ``fd`` (by default the first ``size`` bytes,
        kept from an earlier run) to ``hasher``."""
        hash_from_file(fd, offset, size, hasher, self.engine.buffer())

    def _hash_file(self, path: str, hasher: Hasher) -> None:
        buf = self.engine.buffer()
        with open(path, "rb", buffering=0) as handle:
            while n := handle.readinto(buf):
                hasher.update(buf[:n])

    def _open_temp(self, job: _FileJob, truncate: bool) -> int:
        flags = _OPEN_FLAGS | (os.O_TRUNC if truncate else 0)
        try:
            return os.open(job.temp, flags, 0o644)
        except OSError as exc:
            raise describe_os_error(exc, job.final) from None

    def _close_fd(self, job: _FileJob) -> None:
        if job.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(job.fd)
            job.fd = -1

    def _publish(self, job: _FileJob) -> None:
        # A directory that appeared at the final name meanwhile makes
        # os.replace fail (IsADirectoryError): no second lstat per file here.
        labelled = self.state.label(job.temp, self.source, job.obj)
        publish(job.temp, job.final, self.settings.fsync, maybe_linked=self._has_fast_path)
        self.state.record_complete(job.relpath, job.final, self.source, job.obj, labelled=labelled)
        if job.streamed:
            self.state.forget_parts(job.relpath)
        if self.cache is not None:
            self.cache.store(job.final)  # after the record: the cached file is read-only
        with self._jobs_lock:
            self._jobs.pop(job.relpath, None)
            self.result.files += 1
            self.result.bytes += job.obj.size or os.path.getsize(job.final)
        self.progress.file_done()
        log.debug("downloaded %s", job.relpath)

    def _cleanup_after_failure(self) -> None:
        """Close open files; keep resumable parts unless the error says not to."""
        error = self.error
        disk_problem = isinstance(error, DestinationError)
        changed = isinstance(error, (ObjectChangedError, IntegrityError))
        with self._jobs_lock:
            jobs = list(self._jobs.values())
            self._jobs.clear()
        for job in jobs:
            self._close_fd(job)
            progress = _progress(job)
            resumable = bool(job.done or progress)
            keep = (job.streamed or (bool(job.parts) and resumable)) and not (disk_problem or changed)
            if isinstance(error, CancelledError):
                keep = bool(job.parts) or job.streamed
            if not keep:
                with contextlib.suppress(OSError):
                    os.unlink(job.temp)
                self.state.forget_parts(job.relpath)
            elif job.parts and progress:  # how far the parts in progress got: a rerun goes on from there
                with contextlib.suppress(StorageInitializerError):
                    self.state.save_parts(job.relpath, self.source, job.obj, job.part_size, job.done, progress)
