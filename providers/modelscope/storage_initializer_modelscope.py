"""``modelscope://``: ModelScope Hub model repositories, over the Hub's REST API.

Grammar (see README.md)::

    modelscope://OWNER/MODEL[:REVISION]          KServe's form (default revision: master)
    modelscope://OWNER/MODEL/PATH[:REVISION]     a folder (or one file) inside the repository

The endpoints and shapes are those the ``modelscope`` / ``modelscope_hub`` SDK
uses (``snapshot_download`` -> ``DownloadManager.download_repo``):

* ``GET /api/v1/models/{owner}/{name}/repo/files?Revision=&Recursive=True[&Root=]``
  lists the tree: ``Data.Files[]`` with ``Path``, ``Type`` (``blob``/``tree``),
  ``Size``, ``Sha256``, ``IsLFS`` and ``Revision`` (the commit that last changed
  the file). One answer holds at most 3000 entries and says nothing when it was
  cut; a listing that long is walked again folder by folder, as the SDK does.
* ``GET /api/v1/models/{owner}/{name}/repo?Revision=&FilePath=`` serves a file:
  a regular git file directly (the Hub ignores ``Range`` there), an LFS file by
  a redirect to object storage that serves byte ranges. The redirect is
  followed without the token, which goes to the Hub's own origin only.
* ``GET /api/v1/models/{owner}/{name}`` tells a missing repository from a missing
  revision or path when a listing answers 404.

Every read is pinned: a file is fetched at the commit that last changed it
(its listed ``Revision``), so a branch that moves mid-download cannot mix two
versions, and its ``Sha256`` is verified by the engine. Configuration uses the
SDK's variables: ``MODELSCOPE_API_TOKEN``, ``MODELSCOPE_ENDPOINT`` (or the older
``MODELSCOPE_DOMAIN``), ``MODELSCOPE_PREFER_AI_SITE`` and the timeouts.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus, urljoin, urlsplit

from storage_initializer import __version__
from storage_initializer import http as kit
from storage_initializer.config import env_bool, env_seconds
from storage_initializer.connect import retry_refused
from storage_initializer.errors import (
    AccessDeniedError,
    ConfigError,
    NotFoundError,
    ObjectChangedError,
    StorageInitializerError,
    TransientError,
    UsageError,
    network_error,
)
from storage_initializer.httpbody import HttpBody
from storage_initializer.provider import ByteStream, Provider, ProviderContext, RemoteObject, StreamBase, UriFormat
from storage_initializer.redact import register_secret

log = logging.getLogger("storage_initializer.modelscope")

PREFIX = "modelscope://"
DEFAULT_ENDPOINT = "https://modelscope.cn"  # modelscope_hub.constants.DEFAULT_ENDPOINT
INTL_ENDPOINT = "https://www.modelscope.ai"  # modelscope_hub.constants.DEFAULT_INTL_ENDPOINT
DEFAULT_REVISION = "master"  # what the SDK downloads when no revision is given
GRAMMAR = "modelscope://OWNER/MODEL[:REVISION] or modelscope://OWNER/MODEL/PATH[:REVISION]"
TOKEN_VARIABLE = "MODELSCOPE_API_TOKEN"
#: The Hub's silent cap on one ``repo/files`` answer (modelscope_hub REPO_FILES_TRUNCATION_LIMIT).
LISTING_LIMIT = 3000
_NAME = re.compile(r"^[A-Za-z0-9_][\w.-]*$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_MAX_REDIRECTS = 5


# -- the URI -----------------------------------------------------------------------
@dataclass(frozen=True)
class MsUri:
    owner: str
    name: str
    path: str  # a folder or file inside the repository; "" = the whole repository
    revision: str  # branch, tag or commit

    @property
    def repo_id(self) -> str:
        return f"{self.owner}/{self.name}"


def parse_uri(uri: str) -> MsUri:
    """Split a ``modelscope://`` URI; raise :class:`UsageError` naming the expected form."""

    def bad(why: str) -> UsageError:
        return UsageError(f"{uri}: {why}", hint=f"expected {GRAMMAR}")

    if not uri.startswith(PREFIX):
        raise bad("not a modelscope:// URI")
    rest, revision = uri[len(PREFIX) :], DEFAULT_REVISION
    if ":" in rest:  # git refs cannot hold ':', so the last one starts the revision
        rest, _, revision = rest.rpartition(":")
        revision = revision.strip("/")
        if not revision:
            raise bad("empty revision after ':'")
    segments = rest.rstrip("/").split("/")
    if len(segments) < 2 or not segments[0] or not segments[1]:
        raise bad("the repository needs an owner and a model name")
    for name in segments[:2]:
        if not _NAME.match(name) or ".." in name or len(name) > 128:
            raise bad(f"invalid name {name!r}")
    path_parts = segments[2:]
    if any(part in ("", ".", "..") for part in path_parts):
        raise bad("the path inside the repository has an empty, '.' or '..' segment")
    return MsUri(segments[0], segments[1], "/".join(path_parts), revision)


# -- settings ----------------------------------------------------------------------
@dataclass(frozen=True)
class MsSettings:
    endpoints: tuple[str, ...]  # one when configured; else the two public sites, in probing order
    configured: bool
    token: str | None
    api_timeout: float  # one API answer (MODELSCOPE_API_TIMEOUT)
    read_timeout: float  # no byte for this long = a stall (MODELSCOPE_DOWNLOAD_TIMEOUT)
    connect_timeout: float  # MODELSCOPE_API_CONNECT_TIMEOUT


def _endpoint(env: Mapping[str, str]) -> str | None:
    """MODELSCOPE_ENDPOINT, else the deprecated MODELSCOPE_DOMAIN (a host name), as the SDK reads them."""
    for name in ("MODELSCOPE_ENDPOINT", "MODELSCOPE_DOMAIN"):
        value = env.get(name, "").strip()
        if not value:
            continue
        if not value.lower().startswith(("http://", "https://")):
            value = "https://" + value
        parts = urlsplit(value)
        if not parts.hostname:
            raise ConfigError(f"{name}={value!r} is not a host name or an http(s) URL")
        return value.rstrip("/")
    return None


def load_settings(env: Mapping[str, str], context: ProviderContext) -> MsSettings:
    configured = _endpoint(env)
    if configured is not None:
        endpoints: tuple[str, ...] = (configured,)
    elif env_bool(env, "MODELSCOPE_PREFER_AI_SITE", False):
        endpoints = (INTL_ENDPOINT, DEFAULT_ENDPOINT)
    else:
        endpoints = (DEFAULT_ENDPOINT, INTL_ENDPOINT)
    token = env.get(TOKEN_VARIABLE, "").strip() or None
    register_secret(token)
    return MsSettings(
        endpoints=endpoints,
        configured=configured is not None,
        token=token,
        api_timeout=env_seconds(env, "MODELSCOPE_API_TIMEOUT", context.stall_timeout),
        read_timeout=env_seconds(env, "MODELSCOPE_DOWNLOAD_TIMEOUT", context.stall_timeout),
        connect_timeout=env_seconds(env, "MODELSCOPE_API_CONNECT_TIMEOUT", context.connect_timeout),
    )


# -- answers -----------------------------------------------------------------------
def _server_message(response: Any) -> str:
    """The ``Message`` of a Hub error body (``{"Code", "Message", "RequestId", "Success"}``)."""
    try:
        body = response.json()
    except ValueError:
        return (response.text or "").strip().splitlines()[0][:200] if response.text else ""
    if isinstance(body, dict):
        for key in ("Message", "message", "msg", "error"):
            value = body.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()[:200]
    return ""


@dataclass(frozen=True)
class _FileRef:
    """Where a listed file lives (RemoteObject.extra)."""

    endpoint: str
    repo_id: str
    path: str
    revision: str  # the commit that last changed the file, else the revision asked for


class _Skip(StreamBase):
    """A whole-file body served to a ranged request: drop the bytes before ``start``."""

    def __init__(self, body: HttpBody, skip: int) -> None:
        self._body, self._skip = body, skip

    def readinto(self, buffer: memoryview) -> int:
        view = memoryview(buffer).cast("B")
        while self._skip:
            n = self._body.readinto(view[: min(len(view), self._skip)])
            if not n:
                return 0
            self._skip -= n
        return self._body.readinto(view)

    def close(self) -> None:
        self._body.close()


# -- the provider --------------------------------------------------------------------
class ModelScopeProvider(Provider):
    """ModelScope Hub model repositories; every file pinned to its commit and sha256-verified."""

    uri_formats = (UriFormat(prefix=PREFIX),)
    requires = ("requests",)
    description = "ModelScope Hub model repos, each file pinned to its commit; sha256 verified"

    def __init__(self, context: ProviderContext) -> None:
        super().__init__(context)
        self.settings = load_settings(self.env, context)
        self._local = threading.local()
        self._sessions: list[Any] = []
        self._lock = threading.Lock()
        self._locations: dict[_FileRef, str] = {}  # file -> its storage URL (LFS), shared by its parts

    # -- HTTP ----------------------------------------------------------------------
    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            session = kit.new_session(self.env, pool_size=4)  # proxies, NO_PROXY and CAs from self.env
            session.headers["User-Agent"] = f"storage-initializer/{__version__}"
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def _get(self, url: str, *, auth: bool, read_timeout: float, headers: Mapping[str, str] = {}) -> Any:
        """One streamed GET, redirects not followed; ``auth`` sends the token (to the Hub only)."""
        import requests

        sent = {"Accept-Encoding": "identity", **headers}
        if auth and self.settings.token:
            # The SDK sends both: newer endpoints read the header, older ones the cookie.
            sent["Authorization"] = f"Bearer {self.settings.token}"
            sent["Cookie"] = f"m_session_id={self.settings.token}"

        def send() -> Any:
            return self._session().get(
                url,
                headers=sent,
                stream=True,
                allow_redirects=False,
                timeout=(self.settings.connect_timeout, read_timeout),
            )

        try:
            return retry_refused(send, url)
        except requests.exceptions.RequestException as exc:
            server = urlsplit(url)
            raise network_error(
                exc,
                f"{server.scheme}://{server.netloc}",
                ca_hint="set REQUESTS_CA_BUNDLE (or SSL_CERT_FILE) to the CA that signed the server's certificate",
                hint="check MODELSCOPE_ENDPOINT" if self.settings.configured else None,
            ) from None

    def _api(self, url: str, params: Mapping[str, str]) -> tuple[int, Any]:
        """GET an ``/api/v1`` JSON answer: (status, parsed body or the response on an error)."""
        query = "&".join(f"{name}={quote_plus(value)}" for name, value in params.items())
        response = self._get(
            f"{url}?{query}" if query else url,
            auth=True,
            read_timeout=self.settings.api_timeout,
            headers={"Accept-Encoding": "gzip"},  # a listing is JSON: compressed is fine (files are not)
        )
        with response:
            try:
                content = response.content
            except Exception as exc:
                raise TransientError(f"{url}: the answer broke off ({type(exc).__name__})") from None
            if response.status_code != 200:
                return response.status_code, response
            try:
                return 200, json.loads(content)
            except ValueError:
                raise TransientError(f"{url}: the Hub answered something that is not JSON") from None

    def _error(self, uri: str, ms: MsUri, status: int, response: Any, what: str) -> StorageInitializerError:
        detail = f"HTTP {status}" + (f": {msg}" if (msg := _server_message(response)) else "")
        shown = uri
        if status in (401, 403):
            hint = (
                f"check {TOKEN_VARIABLE}: the Hub refused it for {ms.repo_id}"
                if self.settings.token
                else f"set {TOKEN_VARIABLE} to a token that can read {ms.repo_id} (private repository?)"
            )
            return AccessDeniedError(f"{shown}: ModelScope refused access to {what} ({detail})", hint=hint)
        if status == 404:
            hint = (
                f"check the repository name and that {TOKEN_VARIABLE} can read it"
                if self.settings.token
                else f"check the repository name; a private repository needs {TOKEN_VARIABLE}"
            )
            return NotFoundError(f"{shown}: {what} not found ({detail})", hint=hint)
        if status in (408, 429) or status >= 500:
            return TransientError(f"{shown}: the Hub answered {detail}")
        return StorageInitializerError(f"{shown}: the Hub answered {detail} for {what}")

    # -- listing -------------------------------------------------------------------
    def _repo_url(self, endpoint: str, ms: MsUri) -> str:
        return f"{endpoint}/api/v1/models/{quote(ms.owner, safe='')}/{quote(ms.name, safe='')}"

    def _repo_exists(self, uri: str, endpoint: str, ms: MsUri) -> bool:
        status, answer = self._api(self._repo_url(endpoint, ms), {})
        if status == 404:
            return False
        if status != 200:
            raise self._error(uri, ms, status, answer, f"repository {ms.repo_id}")
        return True

    def _choose_endpoint(self, uri: str, ms: MsUri) -> str:
        """The configured Hub, else the public site that holds the repository (as the SDK probes)."""
        if self.settings.configured:
            return self.settings.endpoints[0]
        for endpoint in self.settings.endpoints:
            if self._repo_exists(uri, endpoint, ms):
                return endpoint
        sites = " or ".join(self.settings.endpoints)
        raise NotFoundError(
            f"{uri}: repository {ms.repo_id} not found on {sites}",
            hint=f"check the name; a private repository needs {TOKEN_VARIABLE}; "
            "a private Hub needs MODELSCOPE_ENDPOINT",
        )

    def _page(self, uri: str, endpoint: str, ms: MsUri, root: str, recursive: bool) -> list[dict[str, Any]] | None:
        """One ``repo/files`` answer; ``None`` when the Hub answers 404 (repository, revision or root missing)."""
        params = {"Revision": ms.revision, "Recursive": str(recursive)}
        if root:
            params["Root"] = root
        status, answer = self._api(self._repo_url(endpoint, ms) + "/repo/files", params)
        if status == 404:
            return None
        if status != 200:
            raise self._error(uri, ms, status, answer, f"the files of {ms.repo_id}")
        if isinstance(answer, dict) and answer.get("Success") is False:
            raise StorageInitializerError(f"{uri}: the Hub refused the listing: {answer.get('Message')}")
        data = answer.get("Data", answer) if isinstance(answer, dict) else answer
        files = (data.get("Files") or data.get("files") or []) if isinstance(data, dict) else data
        if not isinstance(files, list):
            raise TransientError(f"{uri}: the Hub's file listing has an unexpected shape")
        return [f for f in files if isinstance(f, dict)]

    def _tree(self, uri: str, endpoint: str, ms: MsUri, root: str) -> list[dict[str, Any]] | None:
        """Every entry below ``root``; a listing cut at the Hub's cap is walked again folder by folder."""
        entries = self._page(uri, endpoint, ms, root, recursive=True)
        if entries is None or len(entries) < LISTING_LIMIT:
            return entries
        log.info("%s: %s lists %d entries, the Hub's cap: listing folder by folder", uri, root or "/", len(entries))
        shallow = self._page(uri, endpoint, ms, root, recursive=False) or []
        if len(shallow) >= LISTING_LIMIT:
            raise StorageInitializerError(
                f"{uri}: the folder {root or '/'} holds {LISTING_LIMIT} or more entries, more than the Hub can list",
                hint="download its sub-folders one by one (modelscope://OWNER/MODEL/PATH)",
            )
        found: dict[str, dict[str, Any]] = {}
        for entry in shallow:
            path = str(entry.get("Path") or "")
            if entry.get("Type") == "tree":
                for below in self._tree(uri, endpoint, ms, path) or []:
                    found.setdefault(str(below.get("Path") or ""), below)
            else:
                found.setdefault(path, entry)
        return list(found.values())

    def validate(self, uri: str) -> None:
        parse_uri(uri)

    def list(self, uri: str) -> Iterator[RemoteObject]:
        ms = parse_uri(uri)
        endpoint = self._choose_endpoint(uri, ms)
        entries = self._tree(uri, endpoint, ms, ms.path)
        prefix = f"{ms.path}/" if ms.path else ""
        objects = []
        for entry in entries or []:
            path = str(entry.get("Path") or entry.get("Name") or "")
            if not path or entry.get("Type", "blob") == "tree":
                continue
            if ms.path and path == ms.path:
                key = path.rsplit("/", 1)[-1]  # the path named a file
            elif path.startswith(prefix):
                key = path[len(prefix) :]
            else:
                continue  # a sibling such as model-v2/ that a prefix-matching Root let through
            objects.append(self._object(endpoint, ms, entry, path, key))
        if not objects and ms.path:
            objects = [*self._single_file(uri, endpoint, ms)]
        if not objects:
            raise self._nothing(uri, endpoint, ms, listed=entries is not None)
        log.info("%s: %d files in %s at %s on %s", uri, len(objects), ms.repo_id, ms.revision, endpoint)
        yield from objects

    def _single_file(self, uri: str, endpoint: str, ms: MsUri) -> tuple[RemoteObject, ...]:
        """The path is no folder: a file of that name in its parent folder?"""
        parent, _, name = ms.path.rpartition("/")
        for entry in self._page(uri, endpoint, ms, parent, recursive=False) or []:
            if entry.get("Path") == ms.path and entry.get("Type", "blob") != "tree":
                return (self._object(endpoint, ms, entry, ms.path, name),)
        return ()

    def _nothing(self, uri: str, endpoint: str, ms: MsUri, listed: bool) -> StorageInitializerError:
        """Why nothing was found: the repository, the revision, or the path is missing."""
        shown = uri
        if not self._repo_exists(uri, endpoint, ms):
            hint = (
                f"check the name and that {TOKEN_VARIABLE} can read it"
                if self.settings.token
                else f"check the name; a private repository needs {TOKEN_VARIABLE}"
            )
            return NotFoundError(f"{shown}: repository {ms.repo_id} not found or not readable", hint=hint)
        if ms.path and self._page(uri, endpoint, ms, "", recursive=False) is not None:
            return NotFoundError(f"{shown}: {ms.path} not found in {ms.repo_id} at {ms.revision}")
        if not listed or ms.path:
            return NotFoundError(
                f"{shown}: revision {ms.revision!r} not found in {ms.repo_id}",
                hint="use a branch, a tag or a commit id (the default is master)",
            )
        return NotFoundError(f"{shown}: no files in {ms.repo_id} at {ms.revision}")

    def _object(self, endpoint: str, ms: MsUri, entry: Mapping[str, Any], path: str, key: str) -> RemoteObject:
        commit = entry.get("Revision")
        commit = commit if isinstance(commit, str) and commit.strip() else None
        sha256 = entry.get("Sha256")
        sha256 = sha256.lower() if isinstance(sha256, str) and _SHA256.match(sha256) else None
        lfs = entry.get("IsLFS")
        lfs = lfs if isinstance(lfs, bool) else None
        size = entry.get("Size")
        return RemoteObject(
            key=key,
            size=int(size) if isinstance(size, (int, str)) and str(size).isdigit() else None,
            # The commit that last changed the file identifies its content; without one, its sha256.
            version=commit or sha256 or ms.revision,
            checksums={"sha256": sha256} if sha256 else {},
            # Regular git files come straight from the Hub, which ignores Range for them.
            supports_ranges=lfs is not False,
            extra=_FileRef(endpoint, ms.repo_id, path, commit or ms.revision),
        )

    # -- reads -----------------------------------------------------------------------
    def _file_url(self, ref: _FileRef) -> str:
        owner, _, name = ref.repo_id.partition("/")
        return (
            f"{ref.endpoint}/api/v1/models/{quote(owner, safe='')}/{quote(name, safe='')}/repo"
            f"?Revision={quote_plus(ref.revision)}&FilePath={quote_plus(ref.path)}"
        )

    def open_range(
        self, uri: str, obj: RemoteObject, start: int, end: int | None
    ) -> AbstractContextManager[ByteStream]:
        ref = obj.extra
        assert isinstance(ref, _FileRef), "open_range needs an object listed by this provider"
        wanted = kit.read_headers(start, end, obj.size)[0].get("Range")
        for attempt in (1, 2):
            with self._lock:
                url = self._locations.get(ref) if attempt == 1 else None
            url = url or self._file_url(ref)
            response = self._follow(url, ref, wanted)
            status, final = response.status_code, response.url
            if status in (200, 206):
                try:
                    return self._body(uri, ref, obj, response, start)
                except BaseException:
                    response.close()
                    raise
            message = _server_message(response)
            response.close()
            on_hub = kit.same_origin(final, ref.endpoint)
            if attempt == 1 and not on_hub and status in (401, 403):
                log.info("%s: storage URL refused (HTTP %d), asking the Hub again", ref.path, status)
                continue  # signed URLs expire: ask the Hub for a fresh one once
            if status == 416:
                raise ObjectChangedError(f"{ref.path} is shorter than listed (HTTP 416 for {wanted or 'the file'})")
            owner, _, name = ref.repo_id.partition("/")
            ms = MsUri(owner, name, ref.path, ref.revision)
            if status == 404:
                raise ObjectChangedError(
                    f"{uri}: {ref.path} at {ref.revision} is gone from {ref.repo_id} (HTTP 404: {message})",
                    hint="the repository changed since it was listed; run again",
                )
            raise self._error(uri, ms, status, response, ref.path)
        raise AssertionError("unreachable")

    def _follow(self, url: str, ref: _FileRef, wanted: str | None) -> Any:
        """GET ``url`` with the range, following redirects; the token only ever goes to the Hub."""
        for _ in range(_MAX_REDIRECTS + 1):
            on_hub = kit.same_origin(url, ref.endpoint)
            headers = {"Range": wanted} if wanted else {}
            response = self._get(url, auth=on_hub, read_timeout=self.settings.read_timeout, headers=headers)
            if response.status_code not in (301, 302, 303, 307, 308) or "Location" not in response.headers:
                return response
            location = urljoin(url, response.headers["Location"])
            response.close()
            if not kit.same_origin(location, ref.endpoint):
                with self._lock:
                    self._locations[ref] = location  # the storage URL, reused by the other parts
            url = location
        raise TransientError(f"{ref.path}: more than {_MAX_REDIRECTS} redirects")

    def _body(self, uri: str, ref: _FileRef, obj: RemoteObject, response: Any, start: int) -> HttpBody | _Skip:
        headers = response.headers
        if headers.get("Content-Encoding", "identity").strip().lower() not in ("identity", ""):
            raise TransientError(f"{ref.path}: the server compressed the file")
        body = HttpBody(response.raw, self.settings.read_timeout)
        if response.status_code == 206:
            content_range = headers.get("Content-Range", "")
            total = content_range.rsplit("/", 1)[-1]
            if not content_range.startswith(f"bytes {start}-"):
                raise TransientError(f"{ref.path}: asked for bytes from {start}, got {content_range!r}")
            if obj.size is not None and total.isdigit() and int(total) != obj.size:
                raise ObjectChangedError(f"{ref.path}: now {total} bytes, listed {obj.size}")
            return body
        length = headers.get("Content-Length", "")
        if obj.size is not None and length.isdigit() and int(length) != obj.size:
            raise ObjectChangedError(f"{ref.path}: now {length} bytes, listed {obj.size}")
        if start:
            log.debug("%s: the server sent the whole file for a range from %d", ref.path, start)
            return _Skip(body, start)
        return body

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
            self._locations.clear()
        for session in sessions:
            session.close()
