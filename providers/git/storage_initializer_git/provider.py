"""The provider: list the files of one commit, serve them from the fetched pack or the LFS server.

``list`` resolves the ref, fetches that one commit (depth 1) into a bare
repository in a private temporary directory under ``TMPDIR`` (never in
DEST), walks its tree and yields every file: ordinary files with their git
blob id (verified by the engine as ``git-sha1``), LFS files with the size and
sha256 of the real content. ``open_range`` serves ordinary files from the
local object store and LFS files by ranged GETs. ``close`` deletes the
temporary repository.
"""

from __future__ import annotations

import io
import logging
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from storage_initializer.errors import NotFoundError, StorageInitializerError
from storage_initializer.provider import ByteStream, Provider, ProviderContext, RemoteObject, UriFormat
from storage_initializer_git.lfs import LfsClient, Pointer, lfs_verify, parse_pointer
from storage_initializer_git.remote import TMPDIR_HINT, Remote, Target, credentials
from storage_initializer_git.uri import URI_REGEX, GitUri, parse_uri

log = logging.getLogger("storage_initializer.git")

#: Bytes of ordinary (non-LFS) files held in memory at once; large model files belong in LFS.
BLOB_MEMORY_BUDGET = 256 * 1024 * 1024


@dataclass(frozen=True)
class _Blob:
    """An ordinary file: its blob in the fetched repository (RemoteObject.extra)."""

    snapshot: _Snapshot
    sha: bytes


@dataclass(frozen=True)
class _Lfs:
    """An LFS file: its pointer and where to download it (RemoteObject.extra)."""

    client: LfsClient
    pointer: Pointer
    path: str


class _MemoryBudget:
    """Bounds the bytes of ordinary files held in memory at once by concurrent reads.

    dulwich inflates a blob whole; without a bound, 16 workers each holding a
    large non-LFS file could exceed the init container's memory limit. A blob
    larger than the budget is still served, alone.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    def acquire(self, size: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.used == 0 or self.used + size <= self.limit)
            self.used += size

    def release(self, size: int) -> None:
        with self._cond:
            self.used -= size
            self._cond.notify_all()


class _BlobStream(io.BytesIO):
    """A blob's bytes, returning its share of the memory budget when closed."""

    def __init__(self, data: bytes | memoryview, budget: _MemoryBudget, reserved: int) -> None:
        super().__init__(data)
        self._budget: _MemoryBudget | None = budget
        self._reserved = reserved

    def close(self) -> None:
        budget, self._budget = self._budget, None
        if budget is not None:
            budget.release(self._reserved)
        super().close()


class _Snapshot:
    """The fetched commit: a bare repository in a temporary directory, read under a lock."""

    def __init__(self, repo: Any, workdir: str) -> None:
        self.repo = repo
        self.workdir = workdir
        self.lock = threading.Lock()
        self.budget = _MemoryBudget(BLOB_MEMORY_BUDGET)

    def raw(self, sha: bytes) -> bytes:
        with self.lock:
            _type, data = self.repo.object_store.get_raw(sha)
        return bytes(data)

    def files(self, tree: bytes, prefix: str = "") -> Iterator[tuple[str, int, bytes]]:
        """(path, mode, sha) of every entry below ``tree``, depth first, sorted as git sorts."""
        with self.lock:
            entries = list(self.repo.object_store[tree].iteritems())
        for entry in entries:
            path = prefix + entry.path.decode("utf-8", "surrogateescape")
            if stat.S_ISDIR(entry.mode):
                yield from self.files(entry.sha, path + "/")
            else:
                yield path, entry.mode, entry.sha

    def close(self) -> None:
        self.repo.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


class GitProvider(Provider):
    """Git repositories over HTTP(S): one commit, shallow-fetched; LFS files through the batch API."""

    uri_formats = (UriFormat(regex=URI_REGEX),)
    requires = ("dulwich", "requests")
    description = "git repositories over HTTPS (one commit, depth 1); Git LFS files with sha256"

    def __init__(self, context: ProviderContext) -> None:
        super().__init__(context)
        self._snapshots: list[_Snapshot] = []
        self._clients: list[LfsClient] = []

    def validate(self, uri: str) -> None:
        parse_uri(uri)

    def list(self, uri: str) -> Iterator[RemoteObject]:
        git = parse_uri(uri)
        creds = credentials(git, self.env)
        remote = Remote(git, creds, self.env, self.context)
        target = remote.resolve()
        log.info("%s: %s is commit %s", uri, git.ref or "the default branch", target.commit)
        self._source_details = {"ref": git.ref or "(default branch)", "commit": target.commit}
        snapshot = self._fetch(remote, target)
        commit = snapshot.repo.object_store[target.commit.encode()]
        if commit.type_name != b"commit":
            raise StorageInitializerError(
                f"{git.repo_url}: {target.commit} is a {commit.type_name.decode()}, not a commit"
            )
        ordinary: list[RemoteObject] = []
        pointers: list[tuple[str, Pointer]] = []
        for path, mode, sha in snapshot.files(commit.tree):
            if any(part.lower() == ".git" for part in path.split("/")):
                log.warning("%s: skipping %s (git itself refuses paths inside .git)", uri, path)
                continue
            if stat.S_ISLNK(mode):
                log.warning("%s: skipping symlink %s (links are not created in DEST)", uri, path)
                continue
            if mode == 0o160000:
                log.warning(
                    "%s: skipping submodule %s (commit %s; submodules are not fetched)", uri, path, sha.decode()
                )
                continue
            data = snapshot.raw(sha)
            pointer = parse_pointer(data)
            if pointer is not None:
                pointers.append((path, pointer))
            else:
                blob = sha.decode()
                ordinary.append(
                    RemoteObject(
                        key=path,
                        size=len(data),
                        version=blob,
                        checksums={"git-sha1": blob},
                        supports_ranges=False,  # one pass over the blob, not one decompression per part
                        extra=_Blob(snapshot, sha),
                    )
                )
        if not ordinary and not pointers:
            raise NotFoundError(f"{uri}: no files in commit {target.commit}")
        yield from ordinary
        if pointers:
            yield from self._lfs_objects(git, creds, target, pointers)

    def _fetch(self, remote: Remote, target: Target) -> _Snapshot:
        where = self.env.get("TMPDIR") or None
        try:
            workdir = tempfile.mkdtemp(prefix="storage-initializer-git-", dir=where)
        except OSError as exc:
            raise StorageInitializerError(
                f"cannot create a temporary directory in {where or tempfile.gettempdir()}: {exc.strerror or exc}",
                hint=TMPDIR_HINT,
            ) from None
        try:
            repo = remote.fetch(target, workdir)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        snapshot = _Snapshot(repo, workdir)
        self._snapshots.append(snapshot)
        return snapshot

    def _lfs_objects(
        self, git: GitUri, creds: Any, target: Target, pointers: Sequence[tuple[str, Pointer]]
    ) -> Iterator[RemoteObject]:
        client = LfsClient(git.repo_url, creds, lfs_verify(self.env), self.context)
        self._clients.append(client)
        log.info("%s: %d Git LFS files", git.repo_url, len(pointers))
        client.register((p for _, p in pointers), target.refname)
        for path, pointer in pointers:
            yield RemoteObject(
                key=path,
                size=pointer.size,
                version=pointer.oid,
                checksums={"sha256": pointer.oid},
                extra=_Lfs(client, pointer, path),
            )

    def open_range(
        self, uri: str, obj: RemoteObject, start: int, end: int | None
    ) -> AbstractContextManager[ByteStream]:
        ref = obj.extra
        if isinstance(ref, _Lfs):
            return ref.client.open(ref.pointer, ref.path, start, end)
        assert isinstance(ref, _Blob), "open_range needs an object listed by this provider"
        size = obj.size or 0
        budget = ref.snapshot.budget
        budget.acquire(size)
        try:
            data = ref.snapshot.raw(ref.sha)
            return _BlobStream(memoryview(data)[start:end], budget, size)
        except BaseException:
            budget.release(size)
            raise

    def close(self) -> None:
        for client in self._clients:
            client.close()
        for snapshot in self._snapshots:
            snapshot.close()
        self._clients.clear()
        self._snapshots.clear()
