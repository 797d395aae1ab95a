"""Git LFS: pointer files, the batch API (``download``, ``basic`` transfer) and ranged reads.

A pointer (``version https://git-lfs.github.com/spec/v1``, ``oid sha256:…``,
``size …``) stands in the tree for the real file. When an object is first
read, one batch request for it and up to 99 more
(``POST <repo>.git/info/lfs/objects/batch``) returns, per object, a
``download`` action: an ``href`` and the headers to send with it. Reads are
ranged ``GET``s on the href. The repository's credentials go to the batch
endpoint (the repository's own origin) and to an href only on that same
origin when the action brings no ``Authorization`` of its own: never to
another host.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from storage_initializer.connect import retry_refused
from storage_initializer.errors import (
    AccessDeniedError,
    NotFoundError,
    ObjectChangedError,
    StorageInitializerError,
    TransientError,
    network_error,
)
from storage_initializer.http import new_session, same_origin
from storage_initializer.httpbody import HttpBody
from storage_initializer.provider import ProviderContext
from storage_initializer.redact import register_secret
from storage_initializer_git.remote import CREDENTIAL_HINT, Credentials

MEDIA_TYPE = "application/vnd.git-lfs+json"
POINTER_MAX = 1024  # git-lfs never writes larger pointers and never reads larger files as one
_VERSIONS = (b"version https://git-lfs.github.com/spec/v1\n", b"version https://hawser.github.com/spec/v1\n")
_OID = re.compile(r"^sha256:([0-9a-f]{64})$")
BATCH_SIZE = 100


@dataclass(frozen=True)
class Pointer:
    oid: str  # sha256 hex
    size: int


def parse_pointer(data: bytes) -> Pointer | None:
    """The LFS pointer ``data`` is, or None for an ordinary file."""
    if len(data) >= POINTER_MAX or not data.startswith(_VERSIONS):
        return None
    fields: dict[str, str] = {}
    try:
        for line in data.decode("ascii").splitlines()[1:]:
            key, _, value = line.partition(" ")
            fields[key] = value
    except UnicodeDecodeError:
        return None
    oid = _OID.match(fields.get("oid", ""))
    size = fields.get("size", "")
    if oid is None or not size.isdigit():
        return None
    return Pointer(oid[1], int(size))


@dataclass
class Action:
    """Where an LFS object's bytes are (a batch response's ``download`` action)."""

    href: str
    headers: dict[str, str] = field(default_factory=dict)


class LfsClient:
    """The LFS server of one repository, over ``requests`` (one session per thread)."""

    def __init__(self, repo_url: str, creds: Credentials, verify: bool | str, context: ProviderContext) -> None:
        self.repo_url = repo_url
        self.batch_url = repo_url + "/info/lfs/objects/batch"
        self.creds = creds
        self.verify = verify
        self.context = context
        self._local = threading.local()
        self._lock = threading.Lock()
        self.actions: dict[str, Action] = {}
        self.errors: dict[str, StorageInitializerError] = {}
        self.refname: str | None = None
        self._pending: list[Pointer] = []
        self._cursor = 0

    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            session = new_session(self.context.env, pool_size=4, verify=self.verify)
            self._local.session = session
        return session

    def _auth(self) -> Any:
        if not self.creds.present:
            return None
        return (self.creds.username or "", self.creds.password or "")

    def _same_origin(self, url: str) -> bool:
        return same_origin(url, self.repo_url)

    def _request(self, method: str, url: str, **kwargs: Any) -> Any:
        import requests

        timeout = (self.context.connect_timeout, self.context.stall_timeout)
        try:
            return retry_refused(lambda: self._session().request(method, url, timeout=timeout, **kwargs), url)
        except requests.exceptions.RequestException as exc:
            server = urlsplit(url)
            raise network_error(
                exc,
                f"the LFS server {server.scheme}://{server.netloc}",
                ca_hint="set GIT_SSL_CAINFO (or SSL_CERT_FILE) to the CA bundle that signed the LFS server's "
                "certificate, or GIT_SSL_NO_VERIFY=true",
            ) from None

    # -- the batch API --------------------------------------------------------------------
    def register(self, pointers: Iterable[Pointer], refname: str | None) -> None:
        """The objects the listing found; their download actions are asked for when first read.

        Lazily, so that files the engine skips (allow/ignore patterns, already
        complete) cost nothing and an error about one of them never fails the others.
        """
        self.refname = refname
        self._pending = list({p.oid: p for p in pointers}.values())
        self._cursor = 0

    def _action(self, pointer: Pointer, path: str) -> Action:
        """The object's download action: one batch request for it and up to 99 not yet asked for."""
        with self._lock:
            if pointer.oid not in self.actions and pointer.oid not in self.errors:
                group = [pointer]
                while len(group) < BATCH_SIZE and self._cursor < len(self._pending):
                    other = self._pending[self._cursor]
                    self._cursor += 1
                    if other.oid != pointer.oid and other.oid not in self.actions and other.oid not in self.errors:
                        group.append(other)
                self._ask(group)
            return self._known(pointer, path)

    def _ask(self, group: list[Pointer]) -> None:
        actions, errors = self._batch(group, self.refname)
        self.actions.update(actions)
        self.errors.update(errors)
        for oid in actions:
            self.errors.pop(oid, None)

    def _known(self, pointer: Pointer, path: str) -> Action:
        error = self.errors.get(pointer.oid)
        if error is not None:
            raise type(error)(f"{path}: {error.message}", hint=error.hint)
        return self.actions[pointer.oid]

    def _batch(
        self, pointers: list[Pointer], refname: str | None
    ) -> tuple[dict[str, Action], dict[str, StorageInitializerError]]:
        """One batch request: the download action, or the error, of each object."""
        body: dict[str, Any] = {
            "operation": "download",
            "transfers": ["basic"],
            "objects": [{"oid": p.oid, "size": p.size} for p in pointers],
            "hash_algo": "sha256",
        }
        if refname and refname.startswith("refs/"):
            body["ref"] = {"name": refname}
        headers = {"Accept": MEDIA_TYPE, "Content-Type": MEDIA_TYPE}
        url = self.batch_url
        for _ in range(5):  # a renamed repository redirects: POST again there (credentials: same origin only)
            auth = self._auth() if self._same_origin(url) else None
            response = self._request("POST", url, json=body, headers=headers, auth=auth, allow_redirects=False)
            location = response.headers.get("Location")
            if response.status_code not in (301, 302, 303, 307, 308) or not location:
                break
            response.close()
            url = urljoin(url, location)
        with response:
            status = response.status_code
            where = f"the LFS server of {self.repo_url}"
            if status == 401 or status == 403:
                if self.creds.present:
                    raise AccessDeniedError(
                        f"{where} refused the credentials (HTTP {status})",
                        hint="check GIT_USERNAME and GIT_PASSWORD (or GIT_TOKEN)",
                    )
                raise AccessDeniedError(f"{where} requires credentials (HTTP {status})", hint=CREDENTIAL_HINT)
            if status == 404:
                raise NotFoundError(f"{where} was not found (HTTP 404 from {self.batch_url})")
            if status in (408, 429) or status >= 500:
                raise TransientError(f"{where} answered HTTP {status}")
            if status != 200:
                raise StorageInitializerError(f"{where} answered HTTP {status}: {_message(response)}")
            try:
                answer = response.json()
                objects = answer["objects"]
            except (ValueError, KeyError, TypeError):
                raise StorageInitializerError(f"{where} sent a malformed batch response") from None
        transfer = answer.get("transfer", "basic")
        if transfer != "basic":
            raise StorageInitializerError(f"{where} chose the {transfer!r} transfer; only 'basic' is supported")
        actions: dict[str, Action] = {}
        errors: dict[str, StorageInitializerError] = {}
        for entry in objects:
            oid = str(entry.get("oid", ""))
            error = entry.get("error")
            download = (entry.get("actions") or {}).get("download")
            if error:
                code = error.get("code")
                text = f"LFS object {oid} ({error.get('message', 'error')}, code {code}) on {where}"
                if code in (404, 410):
                    hint = "the object was never pushed to the LFS server, or was removed"
                    errors[oid] = NotFoundError(text, hint=hint)
                else:
                    errors[oid] = StorageInitializerError(text)
            elif not download or not download.get("href"):
                errors[oid] = StorageInitializerError(f"{where} gave no download action for LFS object {oid}")
            else:
                action_headers = {str(k): str(v) for k, v in (download.get("header") or {}).items()}
                for value in action_headers.values():
                    register_secret(value.split(" ", 1)[-1] if " " in value else value)
                actions[oid] = Action(str(download["href"]), action_headers)
        for pointer in pointers:
            if pointer.oid not in actions and pointer.oid not in errors:
                errors[pointer.oid] = StorageInitializerError(f"{where} did not answer for LFS object {pointer.oid}")
        return actions, errors

    # -- reads ----------------------------------------------------------------------------
    def open(self, pointer: Pointer, path: str, start: int, end: int | None) -> HttpBody:
        """Bytes ``[start, end)`` of the object; an href refused with 401/403 (expired) is renewed once."""
        action = self._action(pointer, path)
        try:
            return self._open(action, pointer, path, start, end)
        except AccessDeniedError:
            with self._lock:
                if self.actions.get(pointer.oid) is action:  # no other thread renewed it meanwhile
                    self._ask([pointer])
                action = self._known(pointer, path)
            return self._open(action, pointer, path, start, end)

    def _open(self, action: Action, pointer: Pointer, path: str, start: int, end: int | None) -> HttpBody:
        headers = {"Accept-Encoding": "identity", **action.headers}
        ranged = start > 0 or (end is not None and end != pointer.size)
        if ranged:
            headers["Range"] = f"bytes={start}-" + ("" if end is None else str(end - 1))
        has_auth = any(name.lower() == "authorization" for name in action.headers)
        auth = self._auth() if self._same_origin(action.href) and not has_auth else None
        response = self._request("GET", action.href, headers=headers, auth=auth, stream=True)
        try:
            self._check(response, pointer, path, start, ranged)
        except BaseException:
            response.close()
            raise
        return HttpBody(response.raw, self.context.stall_timeout)

    @staticmethod
    def _check(response: Any, pointer: Pointer, path: str, start: int, ranged: bool) -> None:
        status = response.status_code
        what = f"LFS object of {path}"
        if status == 416:
            raise ObjectChangedError(f"{what} is shorter than its pointer says (HTTP 416)")
        if status in (401, 403):
            raise AccessDeniedError(f"{what}: the download URL refused access (HTTP {status})", hint="run again")
        if status in (404, 410):
            raise NotFoundError(f"{what}: not found on the LFS server (HTTP {status})")
        if status in (408, 429) or status >= 500:
            raise TransientError(f"{what}: HTTP {status}")
        if status not in (200, 206):
            raise StorageInitializerError(f"{what}: HTTP {status}")
        if ranged and status != 206:
            raise TransientError(f"{what}: the server ignored the Range header (HTTP {status})")
        if status == 206:
            content_range = response.headers.get("Content-Range", "")
            total = content_range.rsplit("/", 1)[-1]
            if not content_range.startswith(f"bytes {start}-"):
                raise TransientError(f"{what}: asked for bytes from {start}, got {content_range!r}")
            if total.isdigit() and int(total) != pointer.size:
                raise ObjectChangedError(f"{what}: {total} bytes on the server, {pointer.size} in the pointer")

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()


def _message(response: Any) -> str:
    try:
        return str(response.json().get("message", ""))[:200]
    except ValueError:
        return str(response.text)[:200]


def lfs_verify(env: Mapping[str, str]) -> bool | str:
    """TLS verification for LFS downloads: the CA bundle of ``env`` (as for the git server), or on."""
    if env.get("GIT_SSL_NO_VERIFY", "").strip().lower() in ("1", "true", "yes"):
        return False
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO"):
        if env.get(name):
            return env[name]
    return True
