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
  ``requests`` does. Proxies (``HTTP(S)_PROXY``, ``NO_PROXY``) and CA bundles
  (``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE``, ``CURL_CA_BUNDLE``) are read
  from the provider's environment.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import IO, Any
from urllib.parse import unquote, urlsplit

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
from storage_initializer.provider import Provider, ProviderContext, RemoteObject, UriFormat
from storage_initializer.redact import redact, register_secret

log = logging.getLogger("storage_initializer.http")

_HEADERS_SUFFIX = "-headers"
_CA_HINT = (
    "the server's certificate is not signed by a CA this container trusts: set REQUESTS_CA_BUNDLE "
    "(or SSL_CERT_FILE) to the CA bundle that signed it, or check that the host name matches the certificate"
)
#: Below this size a server without ranges costs nothing (the engine reads small files in one
#: stream anyway): say so only at DEBUG. The engine's automatic multipart threshold.
_NO_RANGES_NOTICE_SIZE = 32 * 1024 * 1024


def error_for_status(status: int, url: str, reason: str = "") -> StorageInitializerError:
    """The error a failed HTTP status stands for (shared with providers built on HTTP)."""
    shown = redact(url)
    if status == 404 or status == 410:
        return NotFoundError(f"{shown} not found (HTTP {status})", hint="check the URL")
    if status in (401, 403):
        return AccessDeniedError(
            f"{shown} refused access (HTTP {status} {reason})".rstrip(),
            hint="check the credentials or the <hostname>-headers variable",
        )
    if status == 412:
        return ObjectChangedError(f"{shown} changed during the download (HTTP 412)")
    if status == 429 or status >= 500 or status == 408:
        return TransientError(f"{shown} answered HTTP {status} {reason}".rstrip())
    return StorageInitializerError(f"{shown} answered HTTP {status} {reason}".rstrip())


def _parse_total(content_range: str | None) -> int | None:
    # "bytes 0-0/12345" -> 12345 ("*" when unknown)
    if not content_range or "/" not in content_range:
        return None
    total = content_range.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


_SESSION_CLASS: Any = None


def _session_class() -> Any:
    """``requests.Session`` that also strips the ``<hostname>-headers`` on a cross-origin redirect."""
    global _SESSION_CLASS
    if _SESSION_CLASS is None:
        import requests

        class Session(requests.Session):
            #: Lower-case names of the headers configured for the requested URL's host (set per request).
            host_headers: frozenset[str] = frozenset()

            def rebuild_auth(self, prepared_request: Any, response: Any) -> None:
                super().rebuild_auth(prepared_request, response)
                if self.host_headers and self.should_strip_auth(response.request.url, prepared_request.url):
                    for name in [n for n in prepared_request.headers if n.lower() in self.host_headers]:
                        del prepared_request.headers[name]

        _SESSION_CLASS = Session
    return _SESSION_CLASS


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

    # -- configuration ---------------------------------------------------------
    def _ca_bundle(self) -> bool | str:
        setting = self.env.get("STORAGE_INITIALIZER_HTTP_VERIFY_SSL", "true").strip().lower()
        if setting in ("0", "false", "no", "off"):
            log.warning("TLS certificate verification is disabled for http(s) downloads")
            return False
        for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
            if self.env.get(name):
                return self.env[name]
        return True

    def headers_for(self, url: str) -> dict[str, str]:
        """Extra request headers from the ``<hostname>-headers`` variable."""
        host = urlsplit(url).hostname or ""
        raw = self.env.get(host + _HEADERS_SUFFIX)
        if not raw:
            return {}
        try:
            headers = json.loads(raw)
        except ValueError:
            raise ConfigError(f"{host}{_HEADERS_SUFFIX} is not valid JSON", hint='use {"Name": "value"}') from None
        if not isinstance(headers, dict):
            raise ConfigError(f"{host}{_HEADERS_SUFFIX} must be a JSON object of header names to values")
        for value in headers.values():
            register_secret(str(value))
        return {str(k): str(v) for k, v in headers.items()}

    def _proxies(self) -> dict[str, str]:
        proxies = {}
        for scheme in ("http", "https", "all"):
            value = self.env.get(f"{scheme}_proxy") or self.env.get(f"{scheme.upper()}_PROXY")
            if value:
                proxies[scheme] = value
                register_secret(urlsplit(value).password)
        return proxies

    def session(self) -> Any:
        """One ``requests.Session`` per thread, with a pool for the worker count."""
        session = getattr(self._local, "session", None)
        if session is None:
            from requests.adapters import HTTPAdapter

            session = _session_class()()
            session.trust_env = False  # configuration comes from self.env, not os.environ
            session.verify = self._verify
            session.proxies = self._proxies()
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=4, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
        return session

    def _no_proxy(self, url: str) -> bool:
        from requests.utils import should_bypass_proxies

        no_proxy = self.env.get("no_proxy") or self.env.get("NO_PROXY")
        return bool(no_proxy) and bool(should_bypass_proxies(url, no_proxy=no_proxy))

    def get(self, url: str, headers: Mapping[str, str]) -> Any:
        """A streamed GET with the provider's timeouts, headers and proxies."""
        import requests

        custom = self.headers_for(url)
        all_headers = {"Accept-Encoding": "identity", **custom, **headers}
        session = self.session()
        ours = {name.lower() for name in ("Accept-Encoding", *headers)}  # kept: the request needs them
        session.host_headers = frozenset(name.lower() for name in custom) - ours
        kwargs: dict[str, Any] = {}
        if self._no_proxy(url):
            kwargs["proxies"] = {"http": "", "https": "", "all": ""}
        try:
            return retry_refused(
                lambda: session.get(
                    url,
                    headers=all_headers,
                    stream=True,
                    timeout=(self.context.connect_timeout, self.context.stall_timeout),
                    **kwargs,
                ),
                redact(url),
            )
        except requests.exceptions.InvalidURL as exc:
            raise UsageError(f"invalid URL {redact(url)}: {exc}") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            # DNS name not found, refused, TLS verification: permanent; timeouts: transient.
            server = urlsplit(url)
            where = f"{server.hostname}:{server.port or (443 if server.scheme == 'https' else 80)}"
            raise network_error(exc, where, ca_hint=_CA_HINT) from None

    # -- the provider contract -------------------------------------------------
    def validate(self, uri: str) -> None:
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"{redact(uri)} is not an http(s) URL", hint="expected http(s)://HOST[:PORT]/PATH/FILE")
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            raise UsageError(
                f"{redact(uri)} has an invalid port", hint="expected http(s)://HOST[:PORT]/PATH/FILE"
            ) from None
        if not self.file_name(uri):
            raise UsageError(f"no file name in {redact(uri)}", hint="the URL path must end with the file's name")

    @staticmethod
    def file_name(uri: str) -> str:
        return unquote(urlsplit(uri).path.rsplit("/", 1)[-1])

    def list(self, uri: str) -> Iterator[RemoteObject]:
        response = self.get(uri, {"Range": "bytes=0-0"})
        if response.status_code == 416:
            # No byte 0 to send: an empty file (nginx and S3 answer so, with "bytes */0").
            # Ask again without a range for its validators and length.
            response.close()
            response = self.get(uri, {})
        with response:
            if response.status_code not in (200, 206):
                raise error_for_status(response.status_code, uri, response.reason or "")
            headers = response.headers
            etag = headers.get("ETag")
            version = etag or headers.get("Last-Modified")
            if response.status_code == 206:
                size = _parse_total(headers.get("Content-Range"))
                ranges = size is not None
            else:
                length = headers.get("Content-Length")
                size = int(length) if length and length.isdigit() else None
                ranges = False
        if not ranges:
            level = logging.INFO if size is None or size >= _NO_RANGES_NOTICE_SIZE else logging.DEBUG
            log.log(level, "%s does not serve byte ranges: one stream, restarted on failure", redact(uri))
        yield RemoteObject(
            key=self.file_name(uri),
            size=size,
            version=version,
            supports_ranges=ranges,
            extra={"etag": etag, "last_modified": headers.get("Last-Modified")},
        )

    def open_range(self, uri: str, obj: RemoteObject, start: int, end: int | None) -> AbstractContextManager[IO[bytes]]:
        headers: dict[str, str] = {}
        ranged = obj.supports_ranges and (start > 0 or (end is not None and end != obj.size))
        if ranged:
            headers["Range"] = f"bytes={start}-" + ("" if end is None else str(end - 1))
        etag = obj.extra.get("etag") if isinstance(obj.extra, dict) else None
        if etag and not etag.startswith("W/"):
            headers["If-Match"] = etag
        response = self.get(uri, headers)
        try:
            self._check(uri, obj, response, start, ranged)
        except BaseException:
            response.close()
            raise
        return HttpBody(response.raw, self.context.stall_timeout)  # type: ignore[return-value]

    def _check(self, uri: str, obj: RemoteObject, response: Any, start: int, ranged: bool) -> None:
        status = response.status_code
        if status == 416:
            raise ObjectChangedError(f"{redact(uri)} is shorter than when listed (HTTP 416)")
        if status not in (200, 206):
            raise error_for_status(status, uri, response.reason or "")
        if ranged and status != 206:
            # Transient: behind a load balancer another backend may honour it.
            raise TransientError(f"{redact(uri)} ignored a Range request it had accepted before (HTTP {status})")
        if ranged:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {start}-"):
                raise TransientError(f"{redact(uri)} answered range {content_range!r} for a request at {start}")
        extra = obj.extra if isinstance(obj.extra, dict) else {}
        for header, listed in (("ETag", extra.get("etag")), ("Last-Modified", extra.get("last_modified"))):
            if listed and response.headers.get(header) and response.headers[header] != listed:
                now = response.headers[header]
                raise ObjectChangedError(
                    f"{redact(uri)} changed during the download ({header} was {listed}, now {now})",
                    hint="run again to download the new version",
                )
