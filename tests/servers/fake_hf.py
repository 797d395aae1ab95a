"""A faithful fake of the Hugging Face Hub HTTP API, for tests that must not reach the internet.

It answers what ``huggingface_hub`` (2.x) calls, the way huggingface.co answers it:

- ``GET /api/{models|datasets}/{repo}[/revision/{rev}]``: repo info (``sha`` = resolved commit).
- ``GET /api/{models|datasets}/{repo}/tree/{rev}[/{path}]?recursive=&expand=``: tree listing, paged
  with a GitHub-style ``Link: <...&cursor=...>; rel="next"`` header (1000 entries a page, 50 with
  ``expand``); LFS files carry ``lfs: {oid, size, pointerSize}`` and ``oid`` is the git blob id.
- ``POST /api/{models|datasets}/{repo}/paths-info/{rev}``: info on given paths (missing ones ignored).
- ``HEAD|GET /[datasets/]{repo}/resolve/{rev}/{path}``:
  - LFS file: ``302`` to a signed, content-addressed URL on a *separate origin* (the "CDN", a second
    port, as cdn-lfs.hf.co is another host) with ``X-Repo-Commit``, ``X-Linked-Etag`` (quoted sha256),
    ``X-Linked-Size`` and ``ETag`` (the pointer's git oid, *not* the content hash). The client must
    not follow it on HEAD, and drops ``Authorization`` on the cross-origin GET.
  - regular file of a public namespaced repo: ``307`` to ``/api/resolve-cache/...`` (same origin,
    commit-pinned), whose answer is the file with ``ETag`` (git oid) and ``X-Repo-Commit``.
  - private/gated/single-segment repos and empty files: served directly (``200``).
  - text files of 1 kB..10 MB asked without ``Range`` and with ``Accept-Encoding: gzip`` come back
    gzip-compressed and chunked (no ``Content-Length``), as CloudFront does on the real Hub.
- Errors with ``X-Error-Code`` / ``X-Error-Message``: ``RepoNotFound`` (401 anonymous, 404 with a
  token: private repos look missing), ``GatedRepo`` (401 anonymous, 403 without access),
  ``RevisionNotFound`` and ``EntryNotFound`` (404); an unknown token is a 401 "Invalid credentials
  in Authorization header" without error code. Renamed repos answer ``307`` to the new name.
- The CDN serves ``Accept-Ranges: bytes``; ``206`` + ``Content-Range`` for one range, ``416`` +
  ``Content-Range: bytes */size`` when unsatisfiable, the whole object for several ranges (S3),
  ``403 AccessDenied`` for a bad or expired signature.

Not modelled: Xet (no ``X-Xet-Hash``: clients use the LFS-compatible CDN route), uploads, spaces,
``If-None-Match`` / 304.

Test hooks: ``requests`` (every request, with its Range, Authorization, status and body bytes),
``bytes_served(file)`` / ``body_requests(file)``, ``add_fault("stall" | "cut" | "status" | "corrupt", path)``,
``expire_cdn_urls()`` (CDN answers 403 to URLs handed out before), ``cdn_url_ttl``,
``api_delay`` (a slow API), ``tree_page_size`` (force paging), ``gzip_text``, ``tree_of_a_file``.
"""

from __future__ import annotations

import base64
import fnmatch
import functools
import gzip
import hashlib
import hmac
import json
import os
import posixpath
import secrets
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
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

#: Files stored with Git LFS whatever their size (the Hub's default .gitattributes patterns).
LFS_PATTERNS: tuple[str, ...] = (
    "*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.onnx", "*.gguf", "*.msgpack",
    "*.parquet", "*.arrow", "*.npy", "*.npz", "*.pkl", "*.tar", "*.tar.gz", "*.tgz", "*.zip", "*.model",
)  # fmt: skip
#: Larger regular files must be LFS on the Hub (it rejects bigger non-LFS files).
LFS_THRESHOLD = 10 * 1024 * 1024
_TEXT_SUFFIXES = (".json", ".txt", ".md", ".py", ".yaml", ".yml", ".csv", ".tsv", ".jsonl", ".xml")
_GZIP_RANGE = (1000, 10_000_000)  # CloudFront compresses objects of 1,000..10,000,000 bytes
_REPO_TYPES = {"models": "model", "datasets": "dataset"}
_TREE_PAGE, _TREE_PAGE_EXPAND = 1000, 50
_CHUNK = 1 << 20

FaultKind = Literal["stall", "cut", "status", "corrupt"]
#: The request records and faults are the shared ones of :mod:`tests.servers.base`.
RequestRecord = Request

# huggingface_hub reads its settings once, at import; with telemetry on it fetches
# {HF_ENDPOINT}/api/agent-harnesses to build its User-Agent. No test may call huggingface.co.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob, as the Hub reports it in ``oid`` and ``ETag``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class Blob:
    data: bytes
    lfs: bool

    @property
    def size(self) -> int:
        return len(self.data)

    @functools.cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @functools.cached_property
    def pointer(self) -> bytes:
        return lfs_pointer(self.sha256, self.size)

    @functools.cached_property
    def oid(self) -> str:
        """Git oid: of the pointer file for LFS files, of the content otherwise."""
        return git_blob_oid(self.pointer if self.lfs else self.data)


@dataclass
class Commit:
    sha: str
    files: dict[str, Blob]
    title: str
    date: str


@dataclass
class Repo:
    repo_type: str  # "model" | "dataset"
    repo_id: str
    private: bool
    gated: str | bool  # False, "auto" or "manual"
    created: str
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        sha = self.branches.get(revision) or self.tags.get(revision)
        if sha is None and revision in self.commits:
            sha = revision
        return self.commits.get(sha) if sha else None


class _HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None, headers: Mapping[str, str] = {}):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, dict(headers)


def _now_iso(offset_s: int = 0) -> str:
    t = datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=offset_s)
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


class FakeHFHub(FakeService):
    """The fake Hub (API + resolve) on one port and its CDN on another. Thread-safe.

    ``hub.url`` is the ``endpoint`` / ``HF_ENDPOINT``; ``hub.token`` is accepted and has access to
    every repo; ``hub.other_token`` is a valid user with no access to private or gated repos.
    """

    def __init__(self, tree_page_size: int | None = None, cdn_url_ttl: float = 3600.0) -> None:
        super().__init__()
        self.tree_page_size = tree_page_size
        self.cdn_url_ttl = cdn_url_ttl
        self.gzip_text = True
        self.api_delay = 0.0  # seconds every /api/ answer waits (a slow or stuck Hub API)
        #: How ``tree/{rev}/{path}`` answers when ``path`` is a file: 404 ``EntryNotFound``
        #: (default), an empty list, or a list holding that file's entry. (Clients must cope
        #: with each: the public docs do not say which the Hub gives.)
        self.tree_of_a_file: str = "not-found"
        self.token = "hf_owner" + secrets.token_hex(12)
        self.other_token = "hf_user" + secrets.token_hex(12)
        self._secret = secrets.token_bytes(16)
        self._lock = threading.Lock()
        self._repos: dict[tuple[str, str], Repo] = {}
        self._redirects: dict[tuple[str, str], str] = {}
        self._cdn_index: dict[str, tuple[Blob, str, str]] = {}  # sha256 -> (blob, repo id, path)
        self._commit_counter = 0
        self._hub = self._listen(_HubHandler)
        self._cdn = self._listen(_CdnHandler)

    # ---------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        return self._hub.url

    endpoint = url

    @property
    def cdn_url(self) -> str:
        return self._cdn.url

    # ---------------------------------------------------------------- seeding
    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        *,
        repo_type: str = "model",
        private: bool = False,
        gated: bool | str = False,
        branch: str = "main",
        tags: Sequence[str] = (),
        lfs: Sequence[str] | None = None,
        message: str = "Upload files",
    ) -> str:
        """Commit ``files`` as the whole tree of ``branch`` (creating the repo); returns the commit sha.

        Files matching :data:`LFS_PATTERNS` (or ``lfs`` when given) or of at least
        :data:`LFS_THRESHOLD` bytes are stored with LFS. Calling again on an existing repo adds a
        commit (``private`` / ``gated`` are then updated too); ``tags`` point at the new commit.
        """
        if repo_type not in ("model", "dataset"):
            raise ValueError(f"unsupported repo type {repo_type!r}")
        patterns = LFS_PATTERNS if lfs is None else tuple(lfs)
        blobs = {
            path.strip("/"): Blob(
                bytes(data), any(fnmatch.fnmatch(path, p) for p in patterns) or len(data) >= LFS_THRESHOLD
            )
            for path, data in files.items()
        }
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                repo = Repo(repo_type, repo_id, private, False, _now_iso(self._commit_counter))
                self._repos[(repo_type, repo_id)] = repo
            repo.private = private
            repo.gated = "auto" if gated is True else gated
            self._commit_counter += 1
            digest = hashlib.sha1(f"{repo_type}/{repo_id}/{branch}/{self._commit_counter}".encode())
            for path in sorted(blobs):
                digest.update(f"{path}\0{blobs[path].oid}\n".encode())
            commit = Commit(digest.hexdigest(), blobs, message, _now_iso(self._commit_counter * 60))
            repo.commits[commit.sha] = commit
            repo.branches[branch] = commit.sha
            for tag in tags:
                repo.tags[tag] = commit.sha
            return commit.sha

    def add_repo_redirect(self, old_id: str, new_id: str, *, repo_type: str = "model") -> None:
        """Answer requests for ``old_id`` with a 307 to ``new_id`` (a renamed repo, e.g. ``gpt2``)."""
        with self._lock:
            self._redirects[(repo_type, old_id)] = new_id

    def add_fault(
        self,
        kind: FaultKind,
        path: str = "*",
        *,
        where: Literal["cdn", "hub", "any"] = "any",
        methods: tuple[str, ...] = ("GET",),
        **kwargs: Any,
    ) -> Fault:
        """Misbehave on the next ``times`` body requests of repo files matching ``path`` (see :class:`Fault`).

        ``where``: the "cdn", the "hub" or "any"; ``methods``: the HTTP methods it applies to.
        """
        return self._faults.add(Fault(kind, path, where={"server": where, "method": methods}, **kwargs))

    def expire_cdn_urls(self) -> None:
        """Invalidate every CDN URL handed out so far (as signed URLs expire after an hour)."""
        with self._lock:
            self._secret = secrets.token_bytes(16)

    def blob(self, repo_id: str, path: str, *, revision: str = "main", repo_type: str = "model") -> Blob:
        commit = self._repos[(repo_type, repo_id)].resolve(revision)
        assert commit is not None
        return commit.files[path]

    # ---------------------------------------------------------------- inspection
    def bytes_served(self, filename: str, repo_id: str | None = None) -> int:
        """Body bytes sent for a repo file, from the Hub and the CDN together."""
        return sum(
            r.body_bytes for r in self.requests if r.filename == filename and (repo_id is None or r.repo_id == repo_id)
        )

    def body_requests(self, filename: str, repo_id: str | None = None) -> list[Request]:
        """The GET requests that served (part of) a repo file's content."""
        return [
            r
            for r in self.requests
            if r.method == "GET"
            and r.filename == filename
            and (repo_id is None or r.repo_id == repo_id)
            and (r.server == "cdn" or r.status in (200, 206))
        ]

    # ---------------------------------------------------------------- internals
    def _auth(self, header: str | None) -> Literal["anonymous", "owner", "user"]:
        if not header:
            return "anonymous"
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and hmac.compare_digest(value, self.token):
            return "owner"
        if scheme.lower() == "bearer" and hmac.compare_digest(value, self.other_token):
            return "user"
        raise _HubError(401, "Invalid credentials in Authorization header", None)

    def _repo(self, repo_type: str, repo_id: str, who: str) -> Repo:
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and who != "owner"):
            if who == "anonymous":
                raise _HubError(401, "Invalid username or password.", "RepoNotFound")
            raise _HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _check_gate(self, repo: Repo, who: str) -> None:
        if not repo.gated or who == "owner":
            return
        kind = "model" if repo.repo_type == "model" else "dataset"
        prefix = "" if repo.repo_type == "model" else "datasets/"
        if who == "anonymous":
            raise _HubError(
                401,
                f"Access to {kind} {repo.repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in.",
                "GatedRepo",
            )
        raise _HubError(
            403,
            f"Access to {kind} {repo.repo_id} is restricted and you are not in the authorized list. "
            f"Visit https://huggingface.co/{prefix}{repo.repo_id} to ask for access.",
            "GatedRepo",
        )

    @staticmethod
    def _commit(repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _sign(self, path: str, disposition: str, expires: int) -> str:
        return hmac.new(self._secret, f"{path}|{disposition}|{expires}".encode(), "sha256").hexdigest()

    def _cdn_location(self, repo: Repo, filename: str, blob: Blob) -> str:
        repo_hash = hashlib.sha256(f"{repo.repo_type}s/{repo.repo_id}".encode()).hexdigest()
        path = f"/repos/{repo_hash[:2]}/{repo_hash[2:4]}/{repo_hash}/{blob.sha256}"
        name = posixpath.basename(filename)
        disposition = f"inline; filename*=UTF-8''{quote(name)}; filename=\"{_ascii(name)}\";"
        expires = int(time.time() + self.cdn_url_ttl)
        with self._lock:
            self._cdn_index[blob.sha256] = (blob, repo.repo_id, filename)
        query = (
            f"response-content-disposition={quote(disposition, safe='')}&Expires={expires}"
            f"&Signature={self._sign(path, disposition, expires)}&Key-Pair-Id=KFAKEHUBPAIR"
        )
        return f"{self.cdn_url}{path}?{query}"


def _ascii(name: str) -> str:
    """The plain ``filename=`` of a Content-Disposition: an ASCII fallback (RFC 6266), the
    UTF-8 name travels in ``filename*``; HTTP headers carry no raw non-Latin-1 text."""
    return name.encode("ascii", "replace").decode().replace("?", "_").replace('"', "_")


class _Handler(FakeHandler):
    timeout = 60
    server_kind: Literal["hub", "cdn"] = "hub"

    @property
    def hub(self) -> FakeHFHub:
        return self.owner  # type: ignore[no-any-return]

    def _reply(
        self,
        status: int,
        headers: Mapping[str, str],
        body: bytes | memoryview = b"",
        *,
        filename: str | None = None,
        repo_id: str | None = None,
        faults: Sequence[Fault] = (),
    ) -> None:
        """Send a response (headers only for HEAD); faults cut, stall or corrupt its body.

        Recorded first (a client that got the answer finds it in ``requests``), with the body
        bytes actually sent once they went out.
        """
        planned = 0 if self.command == "HEAD" else len(body)
        record = self.record(status, planned, server=self.server_kind, repo_id=repo_id, filename=filename)
        sent = 0
        try:
            chunked = headers.get("Transfer-Encoding") == "chunked"
            self.send(status, headers if chunked else {**headers, "Content-Length": str(len(body))})
            if self.command != "HEAD":
                wake = self.hub._stopping
                sent = self.stream(body, faults, claim=self.hub._faults.claim, wake=wake, chunked=chunked, chunk=_CHUNK)
        finally:
            record.body_bytes = sent

    def _serve_bytes(
        self,
        blob: Blob,
        headers: dict[str, str],
        *,
        repo_id: str,
        filename: str,
        allow_gzip: bool,
    ) -> None:
        """Answer with a file's bytes: Range, 416, gzip and faults, shared by Hub and CDN."""
        size = blob.size
        headers["Accept-Ranges"] = "bytes"
        rng = parse_range(self.headers.get("Range"), size)
        faults = [] if rng == UNSATISFIABLE else self._faults(filename)
        fault = faults[0] if faults else None
        if fault is not None and fault.kind == "status":
            headers = {"Content-Type": "text/plain"}
            if fault.retry_after is not None:
                headers["Retry-After"] = fault.retry_after
            self._reply(fault.status, headers, b"", filename=filename, repo_id=repo_id)
            return
        if rng == UNSATISFIABLE:
            headers["Content-Range"] = f"bytes */{size}"
            headers["Content-Type"] = "application/xml"
            body = (
                b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InvalidRange</Code>'
                b"<Message>The requested range is not satisfiable</Message></Error>"
            )
            self._reply(416, headers, body, filename=filename, repo_id=repo_id)
            return
        if rng is not None:
            start, end = rng
            headers["Content-Range"] = content_range(start, end, size)
            part = memoryview(blob.data)[start:end]
            self._reply(206, headers, part, filename=filename, repo_id=repo_id, faults=faults)
            return
        accepts_gzip = "gzip" in self.headers.get("Accept-Encoding", "").lower()
        if (
            allow_gzip
            and self.hub.gzip_text
            and accepts_gzip
            and filename.endswith(_TEXT_SUFFIXES)
            and _GZIP_RANGE[0] <= size <= _GZIP_RANGE[1]
        ):
            headers["Content-Encoding"] = "gzip"
            headers["Vary"] = "Accept-Encoding"
            headers["ETag"] = "W/" + headers["ETag"]
            if self.command == "GET":
                headers["Transfer-Encoding"] = "chunked"
            compressed = gzip.compress(blob.data, mtime=0)
            self._reply(200, headers, compressed, filename=filename, repo_id=repo_id, faults=faults)
            return
        self._reply(200, headers, blob.data, filename=filename, repo_id=repo_id, faults=faults)

    def _faults(self, filename: str) -> list[Fault]:
        """The first armed fault this body meets (a status fault is used up at once)."""
        pending = self.hub._faults.pending(filename, None, server=self.server_kind, method=self.command)
        if pending and pending[0].kind == "status" and not self.hub._faults.claim(pending[0]):
            return []
        return pending[:1]

    def do_GET(self) -> None:
        raise NotImplementedError

    def do_HEAD(self) -> None:
        self.do_GET()


class _HubHandler(_Handler):
    server_kind = "hub"

    def _request_id(self) -> str:
        return f"Root=1-{secrets.token_hex(4)}-{secrets.token_hex(12)}"

    def _json(self, status: int, payload: Any, extra: Mapping[str, str] = {}) -> None:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json; charset=utf-8", "X-Request-Id": self._request_id()}
        self._reply(status, {**headers, **extra}, body)

    def _error(self, err: _HubError) -> None:
        # A header carries Latin-1 only: a non-Latin-1 path in the message is sent UTF-8 encoded.
        message = err.message.encode().decode("latin-1")
        headers = {"X-Error-Message": message, **err.headers}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._json(err.status, {"error": err.message}, headers)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode()) if length else {}
        self._dispatch(form)

    def do_GET(self) -> None:
        self._dispatch(None)

    def _dispatch(self, form: dict[str, list[str]] | None) -> None:
        parts = urlsplit(self.path)
        segments = [unquote(s) for s in parts.path.split("/")[1:]]
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        try:
            if segments[:2] == ["api", "resolve-cache"]:
                self._resolve_cache(segments[2:])
                return
            who = self.hub._auth(self.headers.get("Authorization"))
            if segments and segments[0] == "api" and self.hub.api_delay:
                self.hub._stopping.wait(self.hub.api_delay)
            if segments and segments[0] == "api" and len(segments) > 2 and segments[1] in _REPO_TYPES:
                self._api(_REPO_TYPES[segments[1]], segments[2:], query, form, who)
            elif "resolve" in segments:
                repo_type = "model"
                if segments[0] == "datasets":
                    repo_type, segments = "dataset", segments[1:]
                at = segments.index("resolve")
                if at not in (1, 2) or len(segments) < at + 3:
                    raise _HubError(404, "Sorry, we can't find the page you are looking for.", None)
                repo_id = "/".join(segments[:at])
                self._resolve(repo_type, repo_id, segments[at + 1], "/".join(segments[at + 2 :]), who)
            else:
                raise _HubError(404, "Sorry, we can't find the page you are looking for.", None)
        except _HubError as err:
            self._error(err)

    def _redirect_if_renamed(self, repo_type: str, repo_id: str) -> bool:
        """A renamed repo answers 307 to its new name (same origin, so clients follow it)."""
        with self.hub._lock:
            new_id = self.hub._redirects.get((repo_type, repo_id))
        if new_id is None:
            return False
        parts = urlsplit(self.path)
        location = parts.path.replace(f"/{quote(repo_id)}/", f"/{quote(new_id)}/", 1)
        if parts.path.endswith(f"/{quote(repo_id)}"):
            location = parts.path[: -len(quote(repo_id))] + quote(new_id)
        location += f"?{parts.query}" if parts.query else ""
        self._reply(307, {"Location": location, "Content-Type": "text/plain; charset=utf-8"}, b"")
        return True

    # /api/{type}s/...
    def _api(
        self,
        repo_type: str,
        rest: list[str],
        query: dict[str, str],
        form: dict[str, list[str]] | None,
        who: str,
    ) -> None:
        known = {"revision", "tree", "paths-info"}
        repo_id, tail = "/".join(rest[:2]), rest[2:]
        with self.hub._lock:
            two_known = (repo_type, repo_id) in self.hub._repos or (repo_type, repo_id) in self.hub._redirects
        if len(rest) == 1 or (not two_known and rest[1] in known):
            repo_id, tail = rest[0], rest[1:]
        if self._redirect_if_renamed(repo_type, repo_id):
            return
        repo = self.hub._repo(repo_type, repo_id, who)
        if form is not None:
            if len(tail) == 2 and tail[0] == "paths-info":
                self._paths_info(repo, tail[1], form)
                return
            raise _HubError(404, "Sorry, we can't find the page you are looking for.", None)
        if not tail:
            self._info(repo, repo.branches.get("main") or next(iter(repo.branches.values())), query)
        elif tail[0] == "revision" and len(tail) == 2:
            self._info(repo, tail[1], query)
        elif tail[0] == "tree" and len(tail) >= 2:
            self._tree(repo, tail[1], "/".join(tail[2:]), query)
        else:
            raise _HubError(404, "Sorry, we can't find the page you are looking for.", None)

    def _info(self, repo: Repo, revision: str, query: dict[str, str]) -> None:
        commit = self.hub._commit(repo, revision)
        with_blobs = query.get("blobs", "").lower() == "true"
        siblings = []
        for path in sorted(commit.files):
            entry: dict[str, Any] = {"rfilename": path}
            blob = commit.files[path]
            if with_blobs:
                entry.update(size=blob.size, blobId=blob.oid)
                if blob.lfs:
                    entry["lfs"] = {
                        "sha256": blob.sha256,
                        "size": blob.size,
                        "pointerSize": len(blob.pointer),
                    }
            siblings.append(entry)
        author = repo.repo_id.split("/")[0] if "/" in repo.repo_id else None
        payload: dict[str, Any] = {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": author,
            "sha": commit.sha,
            "lastModified": commit.date,
            "private": repo.private,
            "gated": repo.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "createdAt": repo.created,
            "usedStorage": sum(b.size for b in commit.files.values()),
        }
        if repo.repo_type == "model":
            payload["modelId"] = repo.repo_id
            payload["spaces"] = []
        else:
            payload["description"] = ""
        self._json(200, payload)

    @staticmethod
    def _entries(commit: Commit, base: str, recursive: bool, expand: bool) -> list[dict[str, Any]]:
        """Tree entries below ``base`` ('' = root), directories first at each level."""
        dirs: set[str] = set()
        for path in commit.files:
            parts = path.split("/")
            dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if base and base not in dirs:
            raise _HubError(404, f'{base} does not exist on "{{rev}}"', "EntryNotFound")

        def children(folder: str) -> Iterator[dict[str, Any]]:
            prefix = f"{folder}/" if folder else ""
            sub = sorted(d for d in dirs if d.startswith(prefix) and "/" not in d[len(prefix) :])
            files = sorted(p for p in commit.files if p.startswith(prefix) and "/" not in p[len(prefix) :])
            for d in sub:
                below = sorted(p for p in commit.files if p.startswith(d + "/"))
                oid = hashlib.sha1("".join(f"{p}{commit.files[p].oid}" for p in below).encode()).hexdigest()
                yield _with_expand({"type": "directory", "oid": oid, "size": 0, "path": d}, commit, expand)
                if recursive:
                    yield from children(d)
            for p in files:
                blob = commit.files[p]
                entry: dict[str, Any] = {"type": "file", "oid": blob.oid, "size": blob.size, "path": p}
                if blob.lfs:
                    entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": len(blob.pointer)}
                yield _with_expand(entry, commit, expand)

        return list(children(base))

    def _tree(self, repo: Repo, revision: str, base: str, query: dict[str, str]) -> None:
        commit = self.hub._commit(repo, revision)
        recursive = query.get("recursive", "").lower() in ("true", "1")
        expand = query.get("expand", "").lower() in ("true", "1")
        try:
            base = base.strip("/")
            if base in commit.files and self.hub.tree_of_a_file != "not-found":
                whole = self._entries(commit, "", True, expand)
                entries = [e for e in whole if e["path"] == base and self.hub.tree_of_a_file == "entry"]
            else:
                entries = self._entries(commit, base, recursive, expand)
        except _HubError as err:
            err.message = err.message.replace("{rev}", revision)
            raise
        page = self.hub.tree_page_size or (_TREE_PAGE_EXPAND if expand else _TREE_PAGE)
        cursor = query.get("cursor")
        start = int(base64.urlsafe_b64decode(cursor.encode()).decode().split(":")[1]) if cursor else 0
        extra: dict[str, str] = {}
        if start + page < len(entries):
            token = base64.urlsafe_b64encode(f"{commit.sha}:{start + page}".encode()).decode()
            parts = urlsplit(self.path)
            kept = "&".join(p for p in parts.query.split("&") if p and not p.startswith("cursor="))
            host = self.headers.get("Host") or f"127.0.0.1:{self.server.server_address[1]}"
            sep = "&" if kept else ""
            extra["Link"] = f'<http://{host}{parts.path}?{kept}{sep}cursor={token}>; rel="next"'
        self._json(200, entries[start : start + page], extra)

    def _paths_info(self, repo: Repo, revision: str, form: dict[str, list[str]]) -> None:
        commit = self.hub._commit(repo, revision)
        expand = form.get("expand", ["false"])[-1].lower() == "true"
        wanted = [p.strip("/") for p in form.get("paths", [])]
        root = self._entries(commit, "", True, expand)
        by_path = {e["path"]: e for e in root}
        self._json(200, [by_path[p] for p in wanted if p in by_path])

    # /{repo}/resolve/{rev}/{path}
    def _resolve(self, repo_type: str, repo_id: str, revision: str, filename: str, who: str) -> None:
        if self._redirect_if_renamed(repo_type, repo_id):
            return
        repo = self.hub._repo(repo_type, repo_id, who)
        self.hub._check_gate(repo, who)
        commit = self.hub._commit(repo, revision)
        blob = commit.files.get(filename)
        base = {"X-Repo-Commit": commit.sha, "X-Request-Id": self._request_id()}
        if blob is None:
            raise _HubError(404, "Entry not found", "EntryNotFound", base)
        headers = {**base, "ETag": f'"{blob.oid}"', "Vary": "Origin, Accept"}
        if blob.lfs:
            location = self.hub._cdn_location(repo, filename, blob)
            body = f"Found. Redirecting to {location}".encode()
            headers.update(
                {
                    "Location": location,
                    "Content-Type": "text/plain; charset=utf-8",
                    "Accept-Ranges": "bytes",
                    "X-Linked-Size": str(blob.size),
                    "X-Linked-Etag": f'"{blob.sha256}"',
                }
            )
            self._reply(302, headers, body, repo_id=repo.repo_id)
            return
        if not repo.private and not repo.gated and "/" in repo.repo_id and blob.size > 0:
            prefix = "models" if repo_type == "model" else "datasets"
            origin = f"/{'' if repo_type == 'model' else 'datasets/'}{repo.repo_id}/resolve/{revision}/{filename}"
            location = (
                f"/api/resolve-cache/{prefix}/{repo.repo_id}/{commit.sha}/{quote(filename)}"
                f"?{quote(origin, safe='')}=&etag=%22{blob.oid}%22"
            )
            headers.update({"Location": location, "Content-Type": "text/plain; charset=utf-8"})
            self._reply(307, headers, f"Temporary Redirect. Redirecting to {location}".encode())
            return
        self._serve_file(blob, headers, repo.repo_id, filename)

    def _serve_file(self, blob: Blob, headers: dict[str, str], repo_id: str, filename: str) -> None:
        name = posixpath.basename(filename)
        text = filename.endswith(_TEXT_SUFFIXES)
        headers["Content-Type"] = "text/plain; charset=utf-8" if text else "application/octet-stream"
        headers["Content-Disposition"] = f"inline; filename*=UTF-8''{quote(name)}; filename=\"{_ascii(name)}\";"
        self._serve_bytes(blob, headers, repo_id=repo_id, filename=filename, allow_gzip=True)

    def _resolve_cache(self, rest: list[str]) -> None:
        """/api/resolve-cache/{models|datasets}/{repo}/{commit}/{path}: commit-pinned, public only."""
        if len(rest) < 4 or rest[0] not in _REPO_TYPES:
            raise _HubError(404, "Sorry, we can't find the page you are looking for.", None)
        repo_type = _REPO_TYPES[rest[0]]
        sha_at = next((i for i in (2, 3) if i < len(rest) and len(rest[i]) == 40), None)
        repo = None
        if sha_at is not None:
            with self.hub._lock:
                repo = self.hub._repos.get((repo_type, "/".join(rest[1:sha_at])))
        if repo is None or repo.private or repo.gated or sha_at is None:
            raise _HubError(404, "Repository not found", "RepoNotFound")
        commit = repo.commits.get(rest[sha_at])
        filename = "/".join(rest[sha_at + 1 :])
        blob = commit.files.get(filename) if commit else None
        if commit is None or blob is None or blob.lfs:
            raise _HubError(404, "Entry not found", "EntryNotFound")
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{blob.oid}"', "X-Request-Id": self._request_id()}
        headers["Cache-Control"] = "public, max-age=31536000, immutable"
        self._serve_file(blob, headers, repo.repo_id, filename)


def _with_expand(entry: dict[str, Any], commit: Commit, expand: bool) -> dict[str, Any]:
    if expand:
        entry["lastCommit"] = {"id": commit.sha, "title": commit.title, "date": commit.date}
        if entry["type"] == "file":
            entry["securityFileStatus"] = {
                "status": "safe",
                "avScan": {"virusFound": False, "virusNames": None},
                "pickleImportScan": None,
            }
    return entry


class _CdnHandler(_Handler):
    """CloudFront-like signed, content-addressed URLs: /repos/aa/bb/{repo hash}/{sha256}?..."""

    server_kind = "cdn"

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        sha256 = parts.path.rsplit("/", 1)[-1]
        disposition = query.get("response-content-disposition", "")
        with self.hub._lock:
            entry = self.hub._cdn_index.get(sha256)
        try:
            expires = int(query.get("Expires", "0"))
        except ValueError:
            expires = 0
        if "Key-Pair-Id" not in query:
            self._denied("MissingKey", "Missing Key-Pair-Id query parameter or cookie value")
            return
        valid = hmac.compare_digest(query.get("Signature", ""), self.hub._sign(parts.path, disposition, expires))
        if not valid or expires < time.time() or entry is None:
            self._denied("AccessDenied", "Access denied")
            return
        blob, repo_id, filename = entry
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{hashlib.md5(blob.data).hexdigest()}"',
            "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT",
            "Content-Disposition": disposition,
            "Cache-Control": "public, max-age=604800, immutable, s-maxage=604800",
            "X-Cache": "Hit from cloudfront",
        }
        self._serve_bytes(blob, headers, repo_id=repo_id, filename=filename, allow_gzip=False)

    def _denied(self, code: str, message: str) -> None:
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
        ).encode()
        self._reply(403, {"Content-Type": "text/xml"}, body)


@pytest.fixture
def fake_hf_hub(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHFHub]:
    """A running fake Hub, stopped after the test.

    The environment points huggingface_hub at it: ``HF_ENDPOINT`` = ``hub.url``, ``HF_HOME`` in a
    temp dir, ``HF_HUB_OFFLINE=0``, telemetry off, no ``HF_TOKEN`` (pass ``hub.token`` when needed).
    """
    with FakeHFHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_DISABLE_XET"):
            monkeypatch.delenv(name, raising=False)
        constants = sys.modules.get("huggingface_hub.constants")
        if constants is not None:  # imported before this fixture: same settings, read at import time
            monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
            monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
        yield hub
