"""``http://`` and ``https://``: one file per URL, ranged when the server allows.

* The file is named by the URL's last path segment (as KServe does); any
  Content-Type is accepted (an archive is recognised by its name).
* A probe ``GET`` with ``Range: bytes=0-0`` learns the size, whether ranges
  work, and the validator (``ETag`` or ``Last-Modified``); an empty file
  answers it with 416, and is probed again without ``Range``. It is a GET, not a
  HEAD, because presigned URLs are signed for GET only.
* Ranged reads carry ``If-Match`` (strong ETags) and every response's
  validator is compared with the probe's, so a file replaced mid-download is
  detected instead of spliced.
* Headers come from the ``<hostname>-headers`` variable (JSON object), as in
  KServe. They are credentials for that host: a redirect to another origin
  (scheme, host or port) drops them all, not only ``Authorization`` as
  ``requests`` does. Credentials in the URL (``https://user:password@host/...``)
  are sent as HTTP basic auth, under the same rule. Proxies (``HTTP(S)_PROXY``, ``NO_PROXY``) and CA bundles
  (``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE``, ``CURL_CA_BUNDLE``) are read
  from the provider's environment.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from http.client import HTTPException
from typing import Any
from urllib.parse import unquote, urlsplit

from storage_initializer import http as kit
from storage_initializer.config import env_bool
from storage_initializer.connect import retry_refused
from storage_initializer.errors import (
    ConfigError,
    ObjectChangedError,
    StorageInitializerError,
    UsageError,
    network_error,
)
from storage_initializer.httpbody import HttpBody
from storage_initializer.httppool import Pool
from storage_initializer.provider import ByteStream, HttpRange, Provider, ProviderContext, RemoteObject, UriFormat
from storage_initializer.redact import register_secret

log = logging.getLogger("storage_initializer.http")

_HEADERS_SUFFIX = "-headers"
_CA_HINT = (
    "the server's certificate is not signed by a CA this container trusts: set REQUESTS_CA_BUNDLE "
    "(or SSL_CERT_FILE) to the CA bundle that signed it, or check that the host name matches the certificate"
)
#: Answers the probe leaves to ``requests`` (which follows them, with the cross-origin rules).
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: Below this size a server without ranges costs nothing (the engine reads small files in one
#: stream anyway): say so only at DEBUG. The engine's automatic multipart threshold.
_NO_RANGES_NOTICE_SIZE = 32 * 1024 * 1024


def error_for_status(
    status: int, url: str, reason: str = "", headers: Mapping[str, str] | None = None
) -> StorageInitializerError:
    """The error a failed HTTP status stands for."""
    return kit.error_for_status(
        status,
        url,
        reason=reason,
        headers=headers,
        access_hint="check the credentials or the <hostname>-headers variable",
    )


_SESSION_CLASS: Any = None


def _session_class() -> Any:
    """``requests.Session`` that also strips the ``<hostname>-headers`` on a cross-origin redirect."""
    global _SESSION_CLASS
    if _SESSION_CLASS is None:
        import requests

        base: Any = requests.Session  # its stubs leave rebuild_auth / should_strip_auth untyped

        class Session(base):  # type: ignore[misc]
            #: Lower-case names of the headers configured for the requested URL's host (set per request).
            host_headers: frozenset[str] = frozenset()

            def rebuild_auth(self, prepared_request: Any, response: Any) -> None:
                super().rebuild_auth(prepared_request, response)
                if self.host_headers and self.should_strip_auth(response.request.url, prepared_request.url):
                    for name in [n for n in prepared_request.headers if n.lower() in self.host_headers]:
                        del prepared_request.headers[name]

        _SESSION_CLASS = Session
    return _SESSION_CLASS


def _host_port(url: str) -> tuple[str, int]:
    """The server of ``url``: its host name and port (the scheme's default when none is given)."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


class HttpProvider(Provider):
    """Plain HTTP(S) downloads of one file per URL."""

    uri_formats = (UriFormat(prefix="http://"), UriFormat(prefix="https://"))
    fallback = True
    requires = ("requests",)
    description = "one file per URL; parallel byte ranges when the server supports them"

    def __init__(self, context: ProviderContext) -> None:
        super().__init__(context)
        self._local = threading.local()
        self._verify: bool | str = self._ca_bundle()
        self._pools: dict[str, Pool] = {}
        self._pools_lock = threading.Lock()

    # -- configuration ---------------------------------------------------------
    def _ca_bundle(self) -> bool | str:
        if not env_bool(self.env, "STORAGE_INITIALIZER_HTTP_VERIFY_SSL", True):
            log.warning("TLS certificate verification is disabled for http(s) downloads")
            return False
        return kit.ca_bundle(self.env)

    def headers_for(self, url: str) -> dict[str, str]:
        """Extra request headers for ``url``'s host: the ``<hostname>-headers`` variable, and the
        URL's own credentials as basic auth (unless that variable sets ``Authorization``)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        raw = self.env.get(host + _HEADERS_SUFFIX)
        headers: dict[str, str] = {}
        if raw:
            try:
                loaded = json.loads(raw)
            except ValueError:
                raise ConfigError(f"{host}{_HEADERS_SUFFIX} is not valid JSON", hint='use {"Name": "value"}') from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"{host}{_HEADERS_SUFFIX} must be a JSON object of header names to values")
            headers = {str(k): str(v) for k, v in loaded.items()}
        if parts.username is not None and not any(k.lower() == "authorization" for k in headers):
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
            register_secret(parts.password or "")
        for value in headers.values():
            register_secret(value)
        return headers

    def session(self) -> Any:
        """One ``requests.Session`` per thread (proxies, CA and pool from the kit)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = kit.new_session(self.env, pool_size=4, verify=self._verify, base=_session_class())
            self._local.session = session
        return session

    def get(self, url: str, headers: Mapping[str, str]) -> Any:
        """A streamed GET with the provider's timeouts, headers and proxies."""
        import requests

        custom = self.headers_for(url)
        all_headers = {"Accept-Encoding": "identity", **custom, **headers}
        session = self.session()
        ours = {name.lower() for name in ("Accept-Encoding", *headers)}  # kept: the request needs them
        session.host_headers = frozenset(name.lower() for name in custom) - ours
        try:
            return retry_refused(
                lambda: session.get(
                    url,
                    headers=all_headers,
                    stream=True,
                    timeout=(self.context.connect_timeout, self.context.stall_timeout),
                ),
                url,
            )
        except requests.exceptions.InvalidURL as exc:
            raise UsageError(f"invalid URL {url}: {exc}") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            # DNS name not found, refused, TLS verification: permanent; timeouts: transient.
            host, port = _host_port(url)
            raise network_error(exc, f"{host}:{port}", ca_hint=_CA_HINT) from None

    def _pool(self, uri: str) -> Pool:
        """The keep-alive pool of ``uri``'s origin (for the probe)."""
        host, port = _host_port(uri)
        scheme = urlsplit(uri).scheme
        origin = f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"
        with self._pools_lock:
            pool = self._pools.get(origin)
            if pool is None:
                pool = Pool(
                    origin,
                    ssl_context=self._tls_context() if scheme == "https" else None,
                    connect_timeout=self.context.connect_timeout,
                    read_timeout=self.context.stall_timeout,
                    maxsize=2,
                )
                self._pools[origin] = pool
        return pool

    def _probe(self, uri: str, headers: Mapping[str, str]) -> tuple[int, Any, str]:
        """One GET of ``uri`` for its status, headers (case-insensitive) and reason (the body is not read).

        Through :meth:`_pool` when nothing needs ``requests`` (a proxy does; a redirect
        answer is asked again through it, which follows it with the cross-origin rules).
        """
        if not kit.proxies_for(uri, self.env):
            parts = urlsplit(uri)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            sent = {"Accept-Encoding": "identity", **self.headers_for(uri), **headers}
            pool = self._pool(uri)
            try:
                response = retry_refused(lambda: pool.request("GET", target, sent, stream=True), uri)
            except (OSError, HTTPException) as exc:  # refused, DNS, TLS, timeout, a malformed answer
                host, port = _host_port(uri)
                raise network_error(exc, f"{host}:{port}", ca_hint=_CA_HINT) from None
            try:
                if response.status not in _REDIRECTS:
                    return response.status, response.headers, response.reason
            finally:
                response.close()
        with self.get(uri, headers) as answer:
            return answer.status_code, answer.headers, answer.reason or ""

    # -- the provider contract -------------------------------------------------
    def validate(self, uri: str) -> None:
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"{uri} is not an http(s) URL", hint="expected http(s)://HOST[:PORT]/PATH/FILE")
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            raise UsageError(f"{uri} has an invalid port", hint="expected http(s)://HOST[:PORT]/PATH/FILE") from None
        if not self.file_name(uri):
            raise UsageError(f"no file name in {uri}", hint="the URL path must end with the file's name")

    @staticmethod
    def file_name(uri: str) -> str:
        return unquote(urlsplit(uri).path.rsplit("/", 1)[-1])

    def list(self, uri: str) -> Iterator[RemoteObject]:
        status, headers, reason = self._probe(uri, {"Range": kit.range_header(0, 1)})
        if status == 416:
            # No byte 0 to send: an empty file (nginx and S3 answer so, with "bytes */0").
            # Ask again without a range for its validators and length.
            status, headers, reason = self._probe(uri, {})
        if status not in (200, 206):
            raise error_for_status(status, uri, reason, headers)
        etag = headers.get("ETag")
        version = etag or headers.get("Last-Modified")
        if status == 206:
            size = kit.content_range_total(headers.get("Content-Range"))
            ranges = size is not None
        else:
            length = headers.get("Content-Length")
            size = int(length) if length and length.isdigit() else None
            ranges = False
        if not ranges:
            level = logging.INFO if size is None or size >= _NO_RANGES_NOTICE_SIZE else logging.DEBUG
            log.log(level, "%s does not serve byte ranges: one stream, restarted on failure", uri)
        yield RemoteObject(
            key=self.file_name(uri),
            size=size,
            version=version,
            supports_ranges=ranges,
            extra={"etag": etag, "last_modified": headers.get("Last-Modified")},
        )

    @staticmethod
    def _range_headers(obj: RemoteObject, start: int, end: int | None) -> tuple[dict[str, str], bool]:
        etag = obj.extra.get("etag") if isinstance(obj.extra, dict) else None
        return kit.read_headers(start, end, obj.size, etag=etag, ranges=obj.supports_ranges)

    def http_range(self, uri: str, obj: RemoteObject, start: int, end: int | None) -> HttpRange | None:
        if kit.proxies_for(uri, self.env):
            return None  # requests speaks to the proxy
        headers, ranged = self._range_headers(obj, start, end)
        all_headers = {**self.headers_for(uri), **headers}

        def check(status: int, answer: Mapping[str, str], body: bytes) -> None:
            self._check_answer(uri, obj, status, answer, "", start, ranged)

        return HttpRange(uri, all_headers, check, self._tls_context() if uri.startswith("https:") else None)

    def _tls_context(self) -> ssl.SSLContext:
        """The TLS settings of the provider's ``requests`` session, as an ``ssl`` context."""
        return kit.tls_context(self._verify, kit.certifi_bundle)

    def open_range(
        self, uri: str, obj: RemoteObject, start: int, end: int | None
    ) -> AbstractContextManager[ByteStream]:
        headers, ranged = self._range_headers(obj, start, end)
        response = self.get(uri, headers)
        try:
            self._check_answer(uri, obj, response.status_code, response.headers, response.reason or "", start, ranged)
        except BaseException:
            response.close()
            raise
        return HttpBody(response.raw, self.context.stall_timeout)

    def _check_answer(
        self,
        uri: str,
        obj: RemoteObject,
        status: int,
        headers: Mapping[str, str],
        reason: str,
        start: int,
        ranged: bool,
    ) -> None:
        """Is this answer the range and version asked for? Raise the matching error if not."""
        if status == 416:
            raise ObjectChangedError(f"{uri} is shorter than when listed (HTTP 416)")
        if status not in (200, 206):
            raise error_for_status(status, uri, reason, headers)
        if ranged:
            kit.check_partial(status, headers, start, uri)
        extra = obj.extra if isinstance(obj.extra, dict) else {}
        for header, listed in (("ETag", extra.get("etag")), ("Last-Modified", extra.get("last_modified"))):
            now = headers.get(header)
            if listed and now and now != listed:
                raise ObjectChangedError(
                    f"{uri} changed during the download ({header} was {listed}, now {now})",
                    hint="run again to download the new version",
                )
