"""A fake ModelScope Hub, for tests that must not reach the internet.

It answers what the ``modelscope`` SDK (which delegates to ``modelscope_hub``) calls when it
downloads a model repository, with the shapes its source reads (``_legacy_api.LegacyClient``,
``_download.DownloadManager``):

- ``GET /api/v1/models/{owner}/{name}/repo/files?Revision=&Recursive=&Root=``: the file tree at a
  revision (branch, tag or commit id), ``{"Code": 200, "Data": {"Files": [...]}, "Message",
  "RequestId", "Success": true}``. Entries: ``Name``, ``Path``, ``Type`` (``blob`` or ``tree``),
  ``Size``, ``Sha256``, ``IsLFS``, ``Revision`` (the commit that last changed the file),
  ``Mode``, ``CommitMessage``, ``CommittedDate``, ``CommitterName``. ``Root`` scopes the listing
  to a folder (404 when it is none). One answer is cut at ``files_limit`` entries (3000 on the
  real Hub), silently, as the real Hub does.
- ``GET /api/v1/models/{owner}/{name}``: repository info; ``.../revisions``: ``RevisionMap`` with
  ``Branches`` and ``Tags`` (``Revision``, ``CreatedAt``, ``CommitId``).
- ``GET /api/v1/models/{owner}/{name}/repo?Revision=&FilePath=``: a regular file is served
  directly, whole, ignoring ``Range`` (as the SDK notes: "files served without a redirect ignore
  Range entirely"); an LFS file answers ``302`` to a signed URL on a *separate origin* (object
  storage, a second port) that serves ``206`` + ``Content-Range`` for one range, ``416`` when
  unsatisfiable, ``403`` for a bad or expired signature.
- Auth: ``Authorization: Bearer TOKEN`` or the ``m_session_id=TOKEN`` cookie (the SDK sends
  both). A private repository answers ``403`` without a token or with a token that has no access
  (the SDK's old error text for 403: "may not exist or may be private"), an unknown token ``401``.
  Unknown repositories, revisions and files answer ``404``. Error bodies are
  ``{"Code": <int>, "Message": ..., "RequestId": ..., "Success": false}``.

Not modelled: datasets (``repo/tree`` paging), the OpenAPI surface (only used to probe which
public site holds a repository when no endpoint is configured), uploads, intra-cloud routing.

Test hooks: ``requests`` (every request: server, path, query, Range, Authorization, Cookie,
status, body bytes), ``bytes_served(path)``, ``body_requests(path)``, ``add_fault("stall" |
"cut" | "status" | "corrupt", path)``, ``expire_storage_urls()``, ``files_limit``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

from tests.servers.base import (
    UNSATISFIABLE,
    FakeHandler,
    FakeService,
    Fault,
    Request,
    content_range,
    parse_range,
)
from tests.servers.fake_hf import Blob  # a file as a Hub stores it: git blob or LFS object

#: Suffixes stored with LFS (modelscope_hub.constants.MODEL_LFS_SUFFIX, abridged).
LFS_SUFFIXES = (".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".onnx", ".h5", ".msgpack", ".npy", ".npz",
                ".pkl", ".tar", ".tgz", ".zip", ".gguf", ".model", ".parquet", ".arrow")  # fmt: skip
#: Larger files are LFS whatever their name (UPLOAD_LFS_ENFORCE_THRESHOLD).
LFS_THRESHOLD = 1024 * 1024

FaultKind = Literal["stall", "cut", "status", "corrupt"]


@dataclass
class Commit:
    sha: str
    files: dict[str, Blob]
    parent: Commit | None
    message: str
    date: int


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        sha = self.branches.get(revision) or self.tags.get(revision)
        if sha is None and len(revision) >= 7:
            matches = [c for c in self.commits if c.startswith(revision)]
            sha = matches[0] if len(matches) == 1 else None
        return self.commits.get(sha) if sha else None


def last_change(commit: Commit, path: str) -> Commit:
    """The oldest ancestor from which ``path`` has had its current content (git log -1 -- path)."""
    blob = commit.files[path]
    while commit.parent is not None and commit.parent.files.get(path) == blob:
        commit = commit.parent
    return commit


class _HubError(Exception):
    def __init__(self, status: int, message: str, code: int) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class FakeModelScopeHub(FakeService):
    """The fake Hub (API + file endpoint) on one port, its object storage on another."""

    def __init__(self) -> None:
        super().__init__()
        self.token = "ms-" + str(uuid.uuid4())  # can read every repository
        self.other_token = "ms-" + str(uuid.uuid4())  # a valid user without access to private repos
        self.files_limit = 3000
        self.url_ttl = 3600.0
        self._secret = secrets.token_bytes(16)
        self._lock = threading.Lock()
        self._repos: dict[str, Repo] = {}
        self._storage: dict[str, tuple[Blob, str]] = {}  # sha256 -> (blob, path)
        self._counter = 0
        self._hub = self._listen(_HubHandler)
        self._store = self._listen(_StorageHandler)

    # ---------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        return self._hub.url

    @property
    def storage_url(self) -> str:
        return self._store.url

    # ---------------------------------------------------------------- seeding
    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        *,
        private: bool = False,
        branch: str = "master",
        tags: Sequence[str] = (),
        lfs: Sequence[str] | None = None,
        message: str = "upload",
    ) -> str:
        """Commit ``files`` as the whole tree of ``branch`` (creating the repo); returns the commit id."""

        def is_lfs(path: str, data: bytes) -> bool:
            if lfs is not None:
                return any(fnmatch.fnmatch(path, p) for p in lfs)
            return path.endswith(LFS_SUFFIXES) or len(data) >= LFS_THRESHOLD

        with self._lock:
            repo = self._repos.setdefault(repo_id, Repo(repo_id, private))
            repo.private = private
            parent = repo.commits.get(repo.branches.get(branch, ""))
            blobs = {}
            for path, data in files.items():
                path = path.strip("/")
                old = parent.files.get(path) if parent else None
                blob = Blob(bytes(data), is_lfs(path, data))
                blobs[path] = old if old == blob else blob
            self._counter += 1
            sha = hashlib.sha1(f"{repo_id}/{branch}/{self._counter}/{sorted(blobs)}".encode()).hexdigest()
            commit = Commit(sha, blobs, parent, message, 1_700_000_000 + self._counter * 60)
            repo.commits[sha] = commit
            repo.branches[branch] = sha
            for tag in tags:
                repo.tags[tag] = sha
            for path, blob in blobs.items():
                if blob.lfs:
                    self._storage[blob.sha256] = (blob, path)
            return sha

    def add_fault(
        self, kind: FaultKind, path: str = "*", *, where: Literal["hub", "storage", "any"] = "any", **kwargs: Any
    ) -> Fault:
        """Misbehave on the next ``times`` file bodies matching ``path`` (see :class:`Fault`).

        ``where``: "hub" (regular files), "storage" (LFS objects) or "any".
        """
        return self._faults.add(Fault(kind, path, where={"server": where}, **kwargs))

    def expire_storage_urls(self) -> None:
        """Invalidate every storage URL handed out so far (signed URLs expire)."""
        with self._lock:
            self._secret = secrets.token_bytes(16)

    def blob(self, repo_id: str, path: str, revision: str = "master") -> Blob:
        commit = self._repos[repo_id].resolve(revision)
        assert commit is not None
        return commit.files[path]

    # ---------------------------------------------------------------- inspection
    def body_requests(self, filename: str) -> list[Request]:
        return [r for r in self.requests if r.filename == filename]

    def bytes_served(self, filename: str) -> int:
        return sum(r.body_bytes for r in self.body_requests(filename))

    # ---------------------------------------------------------------- internals
    def _sign(self, sha256: str, expires: int) -> str:
        return hmac.new(self._secret, f"{sha256}:{expires}".encode(), hashlib.sha256).hexdigest()

    def _storage_location(self, blob: Blob) -> str:
        expires = int(time.time() + self.url_ttl)
        return f"{self.storage_url}/lfs/{blob.sha256}?Expires={expires}&Signature={self._sign(blob.sha256, expires)}"

    def _user(self, headers: Any) -> str | None:
        """'owner' for the token, 'user' for the other token, None anonymous; 401 for an unknown token."""
        tokens = []
        auth = headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            tokens.append(auth[7:].strip())
        for part in headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == "m_session_id" and value:
                tokens.append(value)
        if not tokens:
            return None
        if self.token in tokens:
            return "owner"
        if self.other_token in tokens:
            return "user"
        raise _HubError(401, "Invalid token, please login again", 10010101004)

    def _repo(self, repo_id: str, who: str | None) -> Repo:
        with self._lock:
            repo = self._repos.get(repo_id)
        if repo is None:
            raise _HubError(404, f"Model {repo_id} does not exist", 10010205001)
        if repo.private and who != "owner":
            raise _HubError(403, f"Permission denied for model {repo_id}", 10010205004)
        return repo

    @staticmethod
    def _commit(repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _HubError(404, f"Revision {revision} does not exist", 10010205006)
        return commit


class _Handler(FakeHandler):
    server_kind: Literal["hub", "storage"] = "hub"

    @property
    def hub(self) -> FakeModelScopeHub:
        return self.owner  # type: ignore[no-any-return]

    def _reply(self, status: int, headers: Mapping[str, str], body: bytes, filename: str | None = None) -> None:
        # Recorded first: a client that got the answer finds it in ``requests``.
        planned = 0 if self.command == "HEAD" else len(body)
        record = self.record(status, planned, server=self.server_kind, filename=filename)
        record.body_bytes = self.send(status, headers, body)

    def _json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self._reply(status, {"Content-Type": "application/json", "X-Request-Id": uuid.uuid4().hex}, body)

    def _error(self, err: _HubError) -> None:
        request_id = uuid.uuid4().hex
        self._json(err.status, {"Code": err.code, "Message": err.message, "RequestId": request_id, "Success": False})

    def _serve(self, blob: Blob, headers: dict[str, str], filename: str, ranges: bool) -> None:
        """Send the blob (or one range of it), applying the configured faults."""
        size = len(blob.data)
        faults = self.hub._faults.pending(filename, None, server=self.server_kind)[:1]
        if faults and faults[0].kind == "status" and self.hub._faults.claim(faults[0]):
            self._reply(faults[0].status, {"Content-Type": "text/plain", "Retry-After": "0"}, b"busy", filename)
            return
        wanted = parse_range(self.headers.get("Range"), size) if ranges else None
        if wanted == UNSATISFIABLE:
            self._reply(416, {"Content-Range": f"bytes */{size}"}, b"", filename)
            return
        start, end = wanted if wanted else (0, size)
        headers = {**headers, "Content-Length": str(end - start)}
        if ranges:
            headers["Accept-Ranges"] = "bytes"
        if wanted:
            headers["Content-Range"] = content_range(start, end, size)
        status = 206 if wanted else 200
        planned = 0 if self.command == "HEAD" else end - start
        record = self.record(status, planned, server=self.server_kind, filename=filename)
        self.send(status, headers)
        if self.command != "HEAD":
            body = memoryview(blob.data)[start:end]
            record.body_bytes = self.stream(body, faults, claim=self.hub._faults.claim, wake=self.hub._stopping)


class _HubHandler(_Handler):
    server_kind = "hub"

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        segments = [unquote(s) for s in parts.path.split("/")]
        try:
            who = self.hub._user(self.headers)
            # /api/v1/models/{owner}/{name}[/repo[/files]|/revisions]
            if segments[1:4] != ["api", "v1", "models"] or len(segments) < 6:
                raise _HubError(404, "Not Found", 404)
            repo = self.hub._repo(f"{segments[4]}/{segments[5]}", who)
            rest = segments[6:]
            if rest == []:
                self._repo_info(repo)
            elif rest == ["revisions"]:
                self._revisions(repo)
            elif rest == ["repo", "files"]:
                self._files(repo, query)
            elif rest == ["repo"]:
                self._file(repo, query)
            else:
                raise _HubError(404, "Not Found", 404)
        except _HubError as err:
            self._error(err)

    do_HEAD = do_GET

    def _ok(self, data: Any) -> None:
        self._json(200, {"Code": 200, "Data": data, "Message": "success", "RequestId": uuid.uuid4().hex,
                         "Success": True})  # fmt: skip

    def _repo_info(self, repo: Repo) -> None:
        owner, name = repo.repo_id.split("/")
        self._ok({"Name": name, "Path": owner, "ChineseName": name, "Visibility": 1 if repo.private else 5,
                  "Revision": "master"})  # fmt: skip

    def _revisions(self, repo: Repo) -> None:
        def detail(names: Mapping[str, str]) -> list[dict[str, Any]]:
            return [{"Revision": n, "CommitId": sha, "CreatedAt": repo.commits[sha].date} for n, sha in names.items()]

        self._ok({"RevisionMap": {"Branches": detail(repo.branches), "Tags": detail(repo.tags)}})

    def _files(self, repo: Repo, query: Mapping[str, str]) -> None:
        commit = self.hub._commit(repo, query.get("Revision") or "master")
        recursive = query.get("Recursive", "false").lower() == "true"
        root = query.get("Root", "").strip("/")
        dirs = {"/".join(p.split("/")[:i]) for p in commit.files for i in range(1, p.count("/") + 1)}
        if root and root not in dirs:
            raise _HubError(404, f"Path {root} does not exist", 10010205007)
        prefix = f"{root}/" if root else ""

        def visible(path: str) -> bool:
            return path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])

        entries: list[dict[str, Any]] = []
        for d in sorted(d for d in dirs if visible(d)):
            entries.append({"Name": d.rsplit("/", 1)[-1], "Path": d, "Type": "tree", "Size": 0, "Sha256": "",
                            "IsLFS": False, "Mode": "40000", "Revision": commit.sha})  # fmt: skip
        for path in sorted(p for p in commit.files if visible(p)):
            blob, changed = commit.files[path], last_change(commit, path)
            entries.append(
                {
                    "CommitMessage": changed.message,
                    "CommittedDate": changed.date,
                    "CommitterName": "acme",
                    "InCheck": False,
                    "IsLFS": blob.lfs,
                    "Mode": "33188",
                    "Name": path.rsplit("/", 1)[-1],
                    "Path": path,
                    "Revision": changed.sha,
                    "Sha256": blob.sha256,
                    "Size": len(blob.data),
                    "Type": "blob",
                }
            )
        self._ok({"Files": entries[: self.hub.files_limit], "LatestCommitter": {"Id": commit.sha}})

    def _file(self, repo: Repo, query: Mapping[str, str]) -> None:
        commit = self.hub._commit(repo, query.get("Revision") or "master")
        filename = query.get("FilePath", "").strip("/")
        blob = commit.files.get(filename)
        if blob is None:
            raise _HubError(404, f"File {filename} does not exist", 10010205008)
        if blob.lfs:
            location = self.hub._storage_location(blob)
            self._reply(302, {"Location": location, "Content-Type": "text/plain"}, b"")
            return
        name = filename.rsplit("/", 1)[-1]
        headers = {"Content-Type": "application/octet-stream",
                   "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}"}  # fmt: skip
        self._serve(blob, headers, filename, ranges=False)


class _StorageHandler(_Handler):
    """Object storage: signed, content-addressed URLs /lfs/{sha256}?Expires=&Signature=."""

    server_kind = "storage"

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        sha256 = parts.path.rsplit("/", 1)[-1]
        try:
            expires = int(query.get("Expires", "0"))
        except ValueError:
            expires = 0
        with self.hub._lock:
            entry = self.hub._storage.get(sha256)
        valid = hmac.compare_digest(query.get("Signature", ""), self.hub._sign(sha256, expires))
        if entry is None or not valid or expires < time.time():
            body = b"<?xml version='1.0'?><Error><Code>AccessDenied</Code><Message>denied</Message></Error>"
            self._reply(403, {"Content-Type": "application/xml"}, body)
            return
        blob, filename = entry
        headers = {"Content-Type": "application/octet-stream", "ETag": f'"{hashlib.md5(blob.data).hexdigest()}"'}
        self._serve(blob, headers, filename, ranges=True)


@pytest.fixture
def fake_modelscope_hub(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeModelScopeHub]:
    """A running fake Hub; the SDK's settings point at it and keep their files under tmp_path."""
    with FakeModelScopeHub() as hub:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", hub.url)
        monkeypatch.setenv("MODELSCOPE_HOME", str(tmp_path / "ms-home"))
        monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms-cache"))
        monkeypatch.setenv("MODELSCOPE_DOWNLOAD_INTRA_CLOUD", "false")
        for name in ("MODELSCOPE_API_TOKEN", "MODELSCOPE_DOMAIN"):
            monkeypatch.delenv(name, raising=False)
        _forget_sdk_config()  # the SDK reads its settings once per process, into a singleton
        try:
            yield hub
        finally:
            _forget_sdk_config()


def _forget_sdk_config() -> None:
    config = sys.modules.get("modelscope_hub.config")
    if config is not None:
        config.set_default_config(None)
