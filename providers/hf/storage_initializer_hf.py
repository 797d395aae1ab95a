"""``hf://``: Hugging Face Hub repositories (models and datasets), on ``huggingface_hub``.

Grammar (see README.md)::

    hf://[datasets/]OWNER/REPO[/PATH][:REVISION]
    hf://[datasets/]REPO[:REVISION]              (single-segment repo, e.g. hf://gpt2)

* The revision (branch, tag or commit; default ``main``) is resolved once to a
  commit; the listing and every read are pinned to that commit, so a branch
  that moves mid-download cannot mix two versions.
* Files are listed with ``huggingface_hub`` (repo info + tree API, paged) with
  sizes and, for LFS files, the sha256 the engine verifies.
* Reads are ranged GETs with timeouts: LFS files on the signed, content-
  addressed CDN URL the Hub redirects to (resolved once per file, again when
  it expires), other files on ``/resolve/<commit>/``. The token is never sent
  to the CDN.
* Configuration comes from the provider's environment: ``HF_TOKEN`` (or
  ``HUGGING_FACE_HUB_TOKEN``, or the token file), ``HF_ENDPOINT``,
  ``HF_HUB_OFFLINE``, ``HF_HUB_ETAG_TIMEOUT``, ``HF_HUB_DOWNLOAD_TIMEOUT``.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

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
    is_network_failure,
    network_error,
)
from storage_initializer.provider import (
    ByteStream,
    ChunkStream,
    HttpRange,
    Provider,
    ProviderContext,
    RemoteObject,
    UriFormat,
)
from storage_initializer.redact import register_secret

log = logging.getLogger("storage_initializer.hf")

PREFIX = "hf://"
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_REVISION = "main"
GRAMMAR = "hf://[datasets/]OWNER/REPO[/PATH][:REVISION] or hf://[datasets/]REPO[:REVISION]"
_NAME = re.compile(r"^[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9_])?$")


# -- the URI -----------------------------------------------------------------------
@dataclass(frozen=True)
class HfUri:
    repo_type: str  # "model" or "dataset"
    repo_id: str  # "owner/name" or a single-segment "name"
    path: str  # a folder or file inside the repo; "" = the whole repo
    revision: str  # branch, tag or commit

    @property
    def display_repo(self) -> str:
        return ("datasets/" if self.repo_type == "dataset" else "") + self.repo_id


def parse_uri(uri: str) -> HfUri:
    """Split an ``hf://`` URI; raise :class:`UsageError` naming the expected form."""

    def bad(why: str) -> UsageError:
        return UsageError(f"{uri}: {why}", hint=f"expected {GRAMMAR}")

    if not uri.startswith(PREFIX):
        raise bad("not an hf:// URI")
    rest = uri[len(PREFIX) :]
    revision = DEFAULT_REVISION
    if ":" in rest:  # git refs cannot hold ':', so the last one starts the revision
        rest, _, revision = rest.rpartition(":")
        if not revision.strip("/"):
            raise bad("empty revision after ':'")
        revision = revision.strip("/")
    segments = rest.rstrip("/").split("/")
    repo_type = "model"
    if segments[0] == "datasets":
        repo_type, segments = "dataset", segments[1:]
    if not segments or not segments[0]:
        raise bad("no repository")
    count = 1 if len(segments) == 1 else 2
    for name in segments[:count]:
        if not _NAME.match(name) or "--" in name or ".." in name or len(name) > 96:
            raise bad(f"invalid repository name {name!r}")
    path_parts = segments[count:]
    if any(part in ("", ".", "..") for part in path_parts):
        raise bad("the path inside the repository has an empty, '.' or '..' segment")
    return HfUri(repo_type, "/".join(segments[:count]), "/".join(path_parts), revision)


# -- settings ----------------------------------------------------------------------
@dataclass(frozen=True)
class HfSettings:
    endpoint: str
    token: str | None
    offline: bool
    api_timeout: float  # repo info, tree pages, metadata (HF_HUB_ETAG_TIMEOUT)
    read_timeout: float  # no byte for this long = a stall (HF_HUB_DOWNLOAD_TIMEOUT)
    connect_timeout: float


def _token(env: Mapping[str, str]) -> str | None:
    """HF_TOKEN, then HUGGING_FACE_HUB_TOKEN, then the token file (as huggingface_hub)."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = env.get(name, "").strip()
        if value:
            return value
    path = env.get("HF_TOKEN_PATH")
    if not path:
        home = env.get("HF_HOME") or os.path.join(
            env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME") or "~", ".cache"), "huggingface"
        )
        path = os.path.join(os.path.expanduser(home), "token")
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def load_settings(env: Mapping[str, str], context: ProviderContext) -> HfSettings:
    endpoint = (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).strip().rstrip("/")
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"HF_ENDPOINT={endpoint!r} is not an http(s) URL")
    token = _token(env)
    register_secret(token)
    return HfSettings(
        endpoint=endpoint,
        token=token,
        offline=env_bool(env, "HF_HUB_OFFLINE", False),
        api_timeout=env_seconds(env, "HF_HUB_ETAG_TIMEOUT", context.stall_timeout),
        read_timeout=env_seconds(env, "HF_HUB_DOWNLOAD_TIMEOUT", context.stall_timeout),
        connect_timeout=context.connect_timeout,
    )


# -- errors ------------------------------------------------------------------------
def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def map_error(exc: BaseException, uri: str, hf: HfUri, settings: HfSettings) -> StorageInitializerError:
    """The error a huggingface_hub / httpx2 exception stands for, with what to do about it."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    shown, repo = uri, hf.display_repo
    page = f"{settings.endpoint}/{repo}"
    if isinstance(exc, StorageInitializerError):
        return exc
    if isinstance(exc, OfflineModeIsEnabled):
        return ConfigError(f"{shown}: huggingface_hub is in offline mode", hint="unset HF_HUB_OFFLINE")
    if isinstance(exc, GatedRepoError):
        hint = (
            f"the account of HF_TOKEN has not been granted access: request it on {page}"
            if settings.token
            else f"set HF_TOKEN to a token of an account that was granted access on {page}"
        )
        return AccessDeniedError(f"{shown}: {repo} is a gated repository (HTTP {_status(exc)})", hint=hint)
    if isinstance(exc, RepositoryNotFoundError):
        hint = (
            "check the repository name, datasets/ for a dataset, and that HF_TOKEN can read it"
            if settings.token
            else "check the repository name (datasets/ for a dataset); a private repository needs HF_TOKEN"
        )
        return NotFoundError(f"{shown}: repository {repo} not found or not readable (HTTP {_status(exc)})", hint=hint)
    if isinstance(exc, RevisionNotFoundError):
        return NotFoundError(
            f"{shown}: revision {hf.revision!r} not found in {repo}", hint="use a branch, a tag or a full commit sha"
        )
    if isinstance(exc, RemoteEntryNotFoundError):
        return NotFoundError(f"{shown}: {hf.path or 'the path'} not found in {repo} at {hf.revision}")
    if isinstance(exc, HfHubHTTPError):
        status = _status(exc)
        server = (getattr(exc, "server_message", None) or "").strip()
        detail = f"HTTP {status}" + (f": {server}" if server else "")
        if status in (401, 403):
            hint = "check HF_TOKEN" if settings.token else "set HF_TOKEN"
            return AccessDeniedError(f"{shown}: the Hub refused access ({detail})", hint=hint)
        if status is not None and kit.is_transient_status(status):
            headers = getattr(getattr(exc, "response", None), "headers", None)
            return kit.transient_error(f"{shown}: the Hub answered {detail}", headers)
        return StorageInitializerError(f"{shown}: the Hub answered {detail}")
    if is_network_failure(exc):
        return network_error(
            exc,
            settings.endpoint,
            ca_hint="set SSL_CERT_FILE to the CA bundle that signed the Hub's certificate",
            hint="check HF_ENDPOINT",
        )
    return StorageInitializerError(f"{shown}: unexpected {type(exc).__name__}: {exc}")


# -- reads -------------------------------------------------------------------------
@dataclass(frozen=True)
class _FileRef:
    """Where a listed file lives: repo, commit and path (RemoteObject.extra)."""

    repo_type: str
    repo_id: str
    commit: str
    path: str
    lfs_sha256: str | None


class _Answer:
    """The status and headers of an answer the event loop got, as :meth:`HfProvider._check_response` reads them."""

    def __init__(self, status_code: int, headers: Mapping[str, str]) -> None:
        self.status_code = status_code
        self.headers = headers


def _body(response: Any, what: str) -> ChunkStream:
    """An httpx2 streamed response body as a stream; stalls and resets become TransientError."""

    def on_error(exc: Exception) -> BaseException | None:
        names = {cls.__name__ for cls in type(exc).__mro__}
        if "TimeoutException" in names:
            return TransientError(f"{what}: no data received before the read timeout")
        if "TransportError" in names or "StreamError" in names:
            return TransientError(f"{what}: {type(exc).__name__}: {exc}")
        return None

    return ChunkStream(response.iter_raw(), response.close, on_error)


class HfProvider(Provider):
    """Hugging Face Hub model and dataset repositories, pinned to a commit."""

    uri_formats = (UriFormat(prefix=PREFIX),)
    requires = ("huggingface_hub",)
    description = "Hugging Face Hub repos (models, datasets), pinned to a commit; LFS sha256 verified"

    def __init__(self, context: ProviderContext) -> None:
        super().__init__(context)
        self.settings = load_settings(self.env, context)
        self._locations: dict[tuple[str, str, str, str], str] = {}
        self._location_locks: dict[tuple[str, str, str, str], threading.Lock] = {}
        self._lock = threading.Lock()

    # -- helpers ---------------------------------------------------------------
    @property
    def _auth(self) -> str | bool:
        return self.settings.token or False  # False: never fall back on os.environ / the token file

    def _headers(self, token: bool, extra: Mapping[str, str] = {}) -> dict[str, str]:
        from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

        return build_hf_headers(
            token=self._auth if token else False,
            library_name="storage-initializer",
            library_version=__version__,
            headers=dict(extra),
        )

    def _timeout(self, read: float) -> Any:
        import httpx2

        return httpx2.Timeout(connect=self.settings.connect_timeout, read=read, write=read, pool=read)

    def _check_online(self, uri: str) -> None:
        if self.settings.offline:
            raise ConfigError(
                f"{uri}: HF_HUB_OFFLINE is set, nothing can be downloaded",
                hint="unset HF_HUB_OFFLINE (it forbids every request to the Hub)",
            )

    def _tree(self, hf: HfUri, repo_id: str, commit: str, path: str, recursive: bool) -> Iterator[Any]:
        """Tree entries (RepoFile / RepoFolder) below ``path``, page by page, with timeouts."""
        from huggingface_hub.hf_api import RepoFile, RepoFolder
        from huggingface_hub.utils import paginate  # type: ignore[attr-defined]

        url = f"{self.settings.endpoint}/api/{hf.repo_type}s/{repo_id}/tree/{quote(commit, safe='')}"
        if path:
            url += "/" + quote(path, safe="")
        params = {"recursive": recursive, "expand": False}
        timeout = self._timeout(self.settings.api_timeout)
        for entry in paginate(url, params=params, headers=self._headers(token=True), timeout=timeout):
            yield RepoFile(**entry) if entry["type"] == "file" else RepoFolder(**entry)  # type: ignore[no-untyped-call]

    # -- the provider contract ---------------------------------------------------
    def validate(self, uri: str) -> None:
        parse_uri(uri)

    def list(self, uri: str) -> Iterator[RemoteObject]:
        hf = parse_uri(uri)
        self._check_online(uri)
        try:
            yield from self._list(uri, hf)
        except Exception as exc:
            raise map_error(exc, uri, hf, self.settings) from None

    def _list(self, uri: str, hf: HfUri) -> Iterator[RemoteObject]:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RemoteEntryNotFoundError
        from huggingface_hub.hf_api import RepoFile

        api = HfApi(endpoint=self.settings.endpoint, token=self._auth, library_name="storage-initializer")
        timeout = self._timeout(self.settings.api_timeout)
        info = retry_refused(
            lambda: api.repo_info(hf.repo_id, repo_type=hf.repo_type, revision=hf.revision, timeout=timeout),
            self.settings.endpoint,
        )
        commit, repo_id = str(info.sha), str(info.id or hf.repo_id)
        self._source_details = {"repo": repo_id, "revision": hf.revision, "commit": commit}
        log.info("%s: %s at %s is commit %s", uri, hf.display_repo, hf.revision, commit)
        if repo_id != hf.repo_id:
            log.info("%s: %s was renamed %s", uri, hf.repo_id, repo_id)

        def entry(file: Any, key: str) -> RemoteObject:
            lfs = file.lfs.sha256 if file.lfs is not None else None
            return RemoteObject(
                key=key,
                size=int(file.size),
                version=str(file.blob_id),  # git oid: changes exactly when the content does
                # LFS files: the sha256 of the content. Other files: their git
                # blob id, which the engine verifies as "git-sha1".
                checksums={"sha256": lfs} if lfs else {"git-sha1": str(file.blob_id)},
                extra=_FileRef(hf.repo_type, repo_id, commit, file.path, lfs),
            )

        found = 0
        try:
            for file in self._tree(hf, repo_id, commit, hf.path, recursive=True):
                if isinstance(file, RepoFile):
                    if hf.path and file.path == hf.path:  # the path named a file
                        key = file.path.rsplit("/", 1)[-1]
                    else:
                        key = file.path[len(hf.path) + 1 :] if hf.path else file.path
                    obj = entry(file, key)
                    if not found and info.gated:
                        self._check_access(uri, hf, obj)
                    found += 1
                    yield obj
        except RemoteEntryNotFoundError:
            if not hf.path:
                raise
        if not found and hf.path:
            # Not a folder (the tree API answers a file path with 404 or an empty list):
            # a file of that name in its parent folder?
            obj = self._single_file(uri, hf, repo_id, commit, entry)
            if info.gated:
                self._check_access(uri, hf, obj)
            found += 1
            yield obj
        if not found:
            where = f"{hf.path} in " if hf.path else ""
            raise NotFoundError(f"{uri}: no files in {where}{hf.display_repo} at {hf.revision}")

    def _single_file(self, uri: str, hf: HfUri, repo_id: str, commit: str, entry: Any) -> RemoteObject:
        """The path is not a folder: look for a file of that name in its parent folder."""
        from huggingface_hub.hf_api import RepoFile

        parent, _, name = hf.path.rpartition("/")
        for file in self._tree(hf, repo_id, commit, parent, recursive=False):
            if isinstance(file, RepoFile) and file.path == hf.path:
                return entry(file, name)  # type: ignore[no-any-return]
        raise NotFoundError(f"{uri}: {hf.path} not found in {hf.display_repo} at {hf.revision}")

    def _check_access(self, uri: str, hf: HfUri, obj: RemoteObject) -> None:
        """A gated repo lists its files to anyone: fail now, clearly, if they cannot be read."""
        ref = obj.extra
        try:
            if ref.lfs_sha256 is not None:
                self._location(ref, refresh=False)  # the HEAD that finds the CDN URL, kept for the reads
            else:
                self._metadata(ref)
        except Exception as exc:
            raise map_error(exc, uri, hf, self.settings) from None

    def _resolve_url(self, ref: _FileRef) -> str:
        from huggingface_hub import hf_hub_url

        return str(
            hf_hub_url(
                ref.repo_id, ref.path, repo_type=ref.repo_type, revision=ref.commit, endpoint=self.settings.endpoint
            )
        )

    def _metadata(self, ref: _FileRef) -> Any:
        """HEAD /resolve/<commit>/<path>, not following the redirect to the CDN."""
        from huggingface_hub import get_hf_file_metadata

        return get_hf_file_metadata(
            self._resolve_url(ref),
            token=self._auth,
            timeout=self.settings.api_timeout,
            library_name="storage-initializer",
            library_version=__version__,
            endpoint=self.settings.endpoint,
        )

    def _location(self, ref: _FileRef, refresh: bool) -> str:
        """Where the bytes of ``ref`` are: the CDN URL of an LFS file (cached), or /resolve/<commit>/."""
        if ref.lfs_sha256 is None:
            return self._resolve_url(ref)
        key = (ref.repo_type, ref.repo_id, ref.commit, ref.path)
        with self._lock:
            lock = self._location_locks.setdefault(key, threading.Lock())
        with lock:
            cached = self._locations.get(key)
            if cached is not None and not refresh:
                return cached
            meta = self._metadata(ref)
            if meta.commit_hash not in (None, ref.commit) or meta.etag != ref.lfs_sha256:
                raise ObjectChangedError(
                    f"{ref.path}: the Hub now serves sha256 {meta.etag} at commit {meta.commit_hash}, "
                    f"listed {ref.lfs_sha256} at {ref.commit}"
                )
            self._locations[key] = str(meta.location)
            return str(meta.location)

    def open_range(
        self, uri: str, obj: RemoteObject, start: int, end: int | None
    ) -> AbstractContextManager[ByteStream]:
        ref = obj.extra
        assert isinstance(ref, _FileRef), "open_range needs an object listed by this provider"
        try:
            return self._open(ref, obj, start, end)
        except Exception as exc:
            raise self._read_error(exc, uri, ref) from None

    def _read_error(self, exc: Exception, uri: str, ref: _FileRef) -> StorageInitializerError:
        """What a failed read of a listed file stands for (a 404 now: the history was rewritten)."""
        hf = HfUri(ref.repo_type, ref.repo_id, ref.path, ref.commit)
        error = map_error(exc, uri, hf, self.settings)
        if isinstance(error, NotFoundError):  # listed a moment ago: the commit was rewritten
            return ObjectChangedError(
                f"{error.message}: it was listed at commit {ref.commit}",
                hint="the repository's history was rewritten; run again",
            )
        return error

    def http_range(self, uri: str, obj: RemoteObject, start: int, end: int | None) -> HttpRange | None:
        """The read as the engine's event loop sends it: on the CDN URL of an LFS file (no token),
        else on ``/resolve/<commit>/``. A refused signed URL is forgotten and the read retried."""
        ref = obj.extra
        if not isinstance(ref, _FileRef):
            return None
        try:
            url = self._location(ref, refresh=False)
        except Exception as exc:
            raise self._read_error(exc, uri, ref) from None
        if kit.proxies_for(url, self.env):
            return None  # the Hub's client speaks to the proxy
        on_hub = kit.same_origin(url, self.settings.endpoint)
        wanted = kit.range_header(start, end)
        headers = self._headers(token=on_hub, extra={"Range": wanted, "Accept-Encoding": "identity"})

        def check(status: int, answer: Mapping[str, str], body: bytes) -> None:
            if status in (200, 206):
                self._check_response(ref, obj, _Answer(status, answer), start)
                return
            if not on_hub and status in (401, 403):
                self._forget_location(ref)
                raise TransientError(
                    f"{ref.path}: the CDN refused its signed URL (HTTP {status}); asking for a new one"
                )
            if status == 416:
                raise ObjectChangedError(f"{ref.path} is shorter than listed (HTTP 416 for {wanted})")
            import httpx2
            from huggingface_hub import hf_raise_for_status

            response = httpx2.Response(status, headers=dict(answer), content=body, request=httpx2.Request("GET", url))
            try:
                hf_raise_for_status(response)
            except Exception as exc:
                raise self._read_error(exc, uri, ref) from None
            raise StorageInitializerError(f"{ref.path}: the Hub answered HTTP {status}")

        return HttpRange(url, headers, check, kit.tls_context_for(url, self.env))

    def _forget_location(self, ref: _FileRef) -> None:
        with self._lock:
            self._locations.pop((ref.repo_type, ref.repo_id, ref.commit, ref.path), None)

    def _open(self, ref: _FileRef, obj: RemoteObject, start: int, end: int | None) -> ChunkStream:
        from huggingface_hub import get_session, hf_raise_for_status

        wanted = kit.range_header(start, end)
        for attempt in (1, 2):
            url = self._location(ref, refresh=attempt == 2)
            on_hub = kit.same_origin(url, self.settings.endpoint)
            headers = self._headers(token=on_hub, extra={"Range": wanted, "Accept-Encoding": "identity"})
            client = get_session()
            request = client.build_request(
                "GET", url, headers=headers, timeout=self._timeout(self.settings.read_timeout)
            )
            send = functools.partial(client.send, request, stream=True, follow_redirects=True)
            response = retry_refused(send, url)
            if response.status_code in (200, 206):
                try:
                    self._check_response(ref, obj, response, start)
                except BaseException:
                    response.close()
                    raise
                return _body(response, f"{ref.path} bytes {start}-{'' if end is None else end - 1}")
            try:
                response.read()
            finally:
                response.close()
            if attempt == 1 and not on_hub and response.status_code in (401, 403):
                log.info("%s: CDN URL refused (HTTP %d), asking the Hub for a new one", ref.path, response.status_code)
                continue  # signed URLs expire: get a fresh one once
            if response.status_code == 416:
                raise ObjectChangedError(f"{ref.path} is shorter than listed (HTTP 416 for {wanted})")
            hf_raise_for_status(response)
        raise AssertionError("unreachable")

    @staticmethod
    def _check_response(ref: _FileRef, obj: RemoteObject, response: Any, start: int) -> None:
        headers = response.headers
        if headers.get("Content-Encoding", "identity") not in ("identity", ""):
            raise TransientError(f"{ref.path}: the server compressed a ranged response")
        if response.status_code == 200 and start:
            raise TransientError(f"{ref.path}: the server ignored the Range header")
        if response.status_code == 206:
            kit.check_partial(206, headers, start, ref.path, size=obj.size)
        etag = headers.get("ETag", "")
        if ref.lfs_sha256 is None and etag and etag.removeprefix("W/").strip('"') != obj.version:
            raise ObjectChangedError(f"{ref.path}: the Hub serves git object {etag}, listed {obj.version}")

    def close(self) -> None:
        with self._lock:
            self._locations.clear()
