"""The HTTP rules every HTTP-based provider shares (and any plugin may use).

One place decides:

* which statuses are transient (:data:`TRANSIENT_STATUSES`): 408, 425, 429
  and every 5xx except 501 (Not Implemented) and 505 (HTTP Version Not
  Supported), which a server does not stop answering by being asked again;
* how long a ``Retry-After`` answer asks to wait (:func:`retry_after`, seconds
  or an HTTP date, capped at :data:`RETRY_AFTER_CAP`);
* the ``Range`` (and ``If-Match``) headers of a read and the check of a ``206`` answer's ``Content-Range``;
* where credentials may follow a redirect (:func:`same_origin`);
* the error a status stands for (:func:`error_for_status`);
* proxies and CA bundle, read from the provider's environment and never from
  ``os.environ``: a store's own CA setting wins, then ``REQUESTS_CA_BUNDLE``,
  ``SSL_CERT_FILE``, ``CURL_CA_BUNDLE``; the lower-case ``http_proxy`` /
  ``no_proxy`` spelling wins over the upper-case one (as curl, requests and
  urllib do); ``NO_PROXY`` matches names, ``.domain`` suffixes, ``*``, IP
  addresses and CIDR networks.

No HTTP library is imported with this module: :func:`new_session` imports
``requests`` when it is called.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from storage_initializer.errors import (
    AccessDeniedError,
    NotFoundError,
    ObjectChangedError,
    StorageInitializerError,
    TransientError,
    network_error,
)
from storage_initializer.redact import register_secret

if TYPE_CHECKING:
    import ssl

__all__ = [
    "CA_VARIABLES",
    "RETRY_AFTER_CAP",
    "TRANSIENT_STATUSES",
    "bypasses_proxy",
    "ca_bundle",
    "certifi_bundle",
    "check_partial",
    "content_range_total",
    "error_for_status",
    "is_transient_status",
    "new_session",
    "no_proxy",
    "proxies",
    "proxies_for",
    "range_header",
    "read_headers",
    "request_error",
    "retry_after",
    "same_origin",
    "sleep",
    "tls_context",
    "tls_context_for",
    "transient_error",
]

#: Statuses worth asking again for (see the module docstring for 501 and 505).
TRANSIENT_STATUSES = frozenset({408, 425, 429, *(s for s in range(500, 600) if s not in (501, 505))})
#: The longest ``Retry-After`` honoured, in seconds: a pod should not idle for an hour on a header.
RETRY_AFTER_CAP = 60.0
#: Where a CA bundle may be named, in order, after the store's own setting.
CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE")


def is_transient_status(status: int) -> bool:
    """Whether the same request may succeed later."""
    return status in TRANSIENT_STATUSES


# -- Retry-After ----------------------------------------------------------------------------
def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    return None if value is None else str(value)


def retry_after(headers: Mapping[str, str] | None, *, now: float | None = None) -> float | None:
    """The wait a ``Retry-After`` header asks for, in seconds (0 to :data:`RETRY_AFTER_CAP`).

    Both forms are understood: delta-seconds (``120``) and an HTTP date
    (``Wed, 21 Oct 2026 07:28:00 GMT``, compared with ``now``, a Unix time). ``None``
    when there is no header or it cannot be read.
    """
    raw = _header(headers, "Retry-After")
    if raw is None or not raw.strip():
        return None
    raw = raw.strip()
    seconds: float
    if raw.isdigit():
        seconds = float(raw)
    else:
        try:
            import email.utils  # rarely needed: an HTTP-date Retry-After

            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000" or no zone: HTTP dates are GMT
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


def transient_error(
    message: str, headers: Mapping[str, str] | None = None, *, hint: str | None = None
) -> TransientError:
    """A :class:`TransientError` carrying the answer's ``Retry-After``, if any."""
    return TransientError(message, hint=hint, retry_after=retry_after(headers))


def request_error(
    exc: BaseException, where: str, *, tls_hint: str, reach_hint: str | None = None
) -> StorageInitializerError | None:
    """:func:`storage_initializer.errors.network_error` for a ``requests`` failure; ``None`` for any other exception.

    A thin alias kept for plugins written against it: the one mapping of
    connection failures is ``network_error`` (DNS name not found, connection
    refused, TLS verification with ``tls_hint``, timeouts; a malformed URL is a
    usage error). ``where`` names the server (redacted), ``reach_hint`` what to
    check for this store.
    """
    import requests

    if not isinstance(exc, requests.exceptions.RequestException):
        return None
    return network_error(exc, where, ca_hint=tls_hint, hint=reach_hint)


# -- status to error --------------------------------------------------------------------------
def error_for_status(
    status: int,
    what: str,
    *,
    reason: str = "",
    headers: Mapping[str, str] | None = None,
    not_found_hint: str | None = "check the URL",
    access_hint: str | None = "check the credentials",
) -> StorageInitializerError:
    """The error an unsuccessful status stands for; ``what`` names the URL or object (redacted).

    404 and 410 are :class:`NotFoundError`, 401 and 403 :class:`AccessDeniedError`,
    412 :class:`ObjectChangedError`, a transient status a :class:`TransientError`
    with its ``Retry-After``, anything else a permanent error.
    """
    text = f"HTTP {status} {reason}".rstrip()
    if status in (404, 410):
        return NotFoundError(f"{what} not found ({text})", hint=not_found_hint)
    if status in (401, 403):
        return AccessDeniedError(f"{what} refused access ({text})", hint=access_hint)
    if status == 412:
        return ObjectChangedError(f"{what} changed during the download (HTTP 412)", hint="run again")
    if is_transient_status(status):
        return transient_error(f"{what} answered {text}", headers)
    return StorageInitializerError(f"{what} answered {text}")


# -- ranges -----------------------------------------------------------------------------------
def range_header(start: int, end: int | None) -> str:
    """``Range`` for bytes ``start`` up to ``end`` (exclusive; ``None``: to the end)."""
    return f"bytes={start}-" + ("" if end is None else str(end - 1))


def read_headers(
    start: int, end: int | None, size: int | None, *, etag: str | None = None, ranges: bool = True
) -> tuple[dict[str, str], bool]:
    """The headers of a GET of bytes ``[start, end)`` of a ``size``-byte object, and whether it is ranged.

    ``Range`` only when the read is not the whole object (and the server does ``ranges``);
    ``If-Match`` with ``etag`` unless it is weak (``W/``), which ``If-Match`` never matches.
    """
    ranged = ranges and (start > 0 or (end is not None and end != size))
    headers = {"Range": range_header(start, end)} if ranged else {}
    if etag and not etag.startswith("W/"):
        headers["If-Match"] = etag
    return headers, ranged


def content_range_total(value: str | None) -> int | None:
    """The total size in ``Content-Range: bytes 0-0/12345`` (``None`` for ``*`` or no header)."""
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def check_partial(
    status: int, headers: Mapping[str, str] | None, start: int, what: str, *, size: int | None = None
) -> None:
    """Check that a ranged request was answered with the bytes asked for.

    Anything but ``206`` with a ``Content-Range`` starting at ``start`` is a
    :class:`TransientError` (behind a load balancer another backend may honour
    the range). A total other than the listed ``size`` means the object
    changed: :class:`ObjectChangedError`.
    """
    content_range = _header(headers, "Content-Range") or ""
    if status != 206:
        raise TransientError(f"{what} ignored a Range request (HTTP {status} for bytes from {start})")
    if not content_range.startswith(f"bytes {start}-"):
        raise TransientError(f"{what} answered range {content_range!r} for a request at {start}")
    total = content_range_total(content_range)
    if size is not None and total is not None and total != size:
        raise ObjectChangedError(f"{what}: now {total} bytes, listed {size}", hint="run again")


# -- origins --------------------------------------------------------------------------------
def same_origin(a: str, b: str) -> bool:
    """Whether two URLs have the same scheme, host and port: credentials meant for one may go to the other.

    A provider that follows redirects (a Hub to its CDN, an LFS server to its object store)
    sends its token only while this holds for the URL it started from.
    """
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


# -- proxies and CA ----------------------------------------------------------------------------
def _variable(env: Mapping[str, str], name: str) -> str | None:
    """``name`` (lower-case) or its upper-case spelling; the lower-case one wins."""
    for candidate in (name.lower(), name.upper()):
        value = env.get(candidate)
        if value is not None and value.strip():
            return value.strip()
    return None


def proxies(env: Mapping[str, str]) -> dict[str, str]:
    """``{"http": ..., "https": ..., "all": ...}`` from ``http(s)_proxy`` / ``all_proxy``."""
    found: dict[str, str] = {}
    for scheme in ("http", "https", "all"):
        value = _variable(env, f"{scheme}_proxy")
        if value:
            found[scheme] = value
            with contextlib.suppress(ValueError):
                register_secret(urlsplit(value).password)
    return found


def no_proxy(env: Mapping[str, str]) -> str | None:
    """``no_proxy``, else ``NO_PROXY``."""
    return _variable(env, "no_proxy")


def bypasses_proxy(url: str, env: Mapping[str, str]) -> bool:
    """Whether ``NO_PROXY`` exempts ``url``'s host from the proxy."""
    entries = no_proxy(env)
    host = (urlsplit(url).hostname or "").lower()
    if not entries or not host:
        return False
    for entry in (e.strip().lower() for e in entries.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        name = entry.rsplit(":", 1)[0] if entry.count(":") == 1 else entry  # drop a :port
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(name.strip("[]"), strict=False):
                return True
            continue
        except ValueError:
            pass
        name = name.lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


def proxies_for(url: str, env: Mapping[str, str]) -> dict[str, str]:
    """The proxies a request to ``url`` goes through (none when ``NO_PROXY`` exempts it)."""
    return {} if bypasses_proxy(url, env) else proxies(env)


def ca_bundle(env: Mapping[str, str], store_ca: str | None = None) -> bool | str:
    """The ``verify`` value: the store's own CA file, else the first of :data:`CA_VARIABLES`, else ``True``."""
    if store_ca:
        return store_ca
    for name in CA_VARIABLES:
        value = env.get(name)
        if value and value.strip():
            return value.strip()
    return True


@functools.lru_cache(maxsize=16)
def tls_context(verify: bool | str, default_cafile: Callable[[], str | None] | None = None) -> ssl.SSLContext:
    """The ``ssl`` context that verifies as a ``requests``-style ``verify`` says (for the engine's
    event loop and :class:`~storage_initializer.httppool.Pool`, which take contexts).

    ``False``: no verification; a path: that CA file, or directory of hashed certificates;
    ``True``: ``default_cafile()`` when given and it names a file (certifi's bundle, as
    ``requests`` and botocore default to), else the system's CAs. One context per setting
    for the whole process (loading a CA bundle takes milliseconds; a context is shared
    safely), so a provider need not keep its own.
    """
    import os.path
    import ssl

    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if isinstance(verify, str):
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    cafile = default_cafile() if default_cafile is not None else None
    return ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()


def tls_context_for(url: str, env: Mapping[str, str]) -> ssl.SSLContext | None:
    """The context an ``HttpRange`` of ``url`` takes: the CA of :func:`ca_bundle` (else
    certifi's) for ``https://``, ``None`` for plain ``http://``."""
    return tls_context(ca_bundle(env), certifi_bundle) if url.startswith("https:") else None


def certifi_bundle() -> str | None:
    """certifi's CA bundle (what ``requests`` verifies with by default), if installed."""
    try:
        import certifi
    except ImportError:
        return None
    return str(certifi.where())


# -- sessions ----------------------------------------------------------------------------------
_CLASSES: dict[type, type] = {}
_CLASSES_LOCK = threading.Lock()


def _env_session_class(base: type) -> type:
    """``base`` (a ``requests.Session``) taking proxies per URL from its ``env``, never ``os.environ``."""
    with _CLASSES_LOCK:
        cls = _CLASSES.get(base)
        if cls is None:

            def merge_environment_settings(
                self: Any, url: str | bytes | None, proxies: Any, stream: Any, verify: Any, cert: Any
            ) -> dict[str, Any]:
                # requests' own version lets REQUESTS_CA_BUNDLE in os.environ override ``verify``
                # and reads proxies from os.environ: neither is this provider's configuration.
                target = url.decode() if isinstance(url, bytes) else url or ""
                return {
                    "proxies": {**proxies_for(target, self.provider_env), **(proxies or {})},
                    "stream": self.stream if stream is None else stream,
                    "verify": self.verify if verify is None else verify,
                    "cert": self.cert if cert is None else cert,
                }

            cls = type(base.__name__, (base,), {"merge_environment_settings": merge_environment_settings})
            _CLASSES[base] = cls
        return cls


def new_session(
    env: Mapping[str, str],
    *,
    pool_size: int,
    verify: bool | str | None = None,
    base: type | None = None,
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    retry_refused: bool = False,
) -> Any:
    """A ``requests.Session`` (or ``base(*args, **kwargs)``, a subclass) configured from ``env``.

    Proxies per URL with ``NO_PROXY`` (:func:`proxies_for`), ``verify`` from
    :func:`ca_bundle` unless given, a connection pool of ``pool_size`` per
    host, and no hidden retries (the engine retries). ``retry_refused``: a
    refused connection is tried again for a few seconds
    (:func:`storage_initializer.connect.retry_refused`, a server restarting),
    for an SDK that sends its requests itself; leave it off for a probe.
    """
    import requests
    from requests.adapters import HTTPAdapter

    cls = _env_session_class(base or requests.Session)
    session = cls(*args, **(kwargs or {}))
    session.provider_env = env
    session.trust_env = False
    session.verify = ca_bundle(env) if verify is None else verify
    adapter_class = _refused_retrying_adapter() if retry_refused else HTTPAdapter
    adapter = adapter_class(pool_connections=4, pool_maxsize=max(1, pool_size), max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


_ADAPTER: list[type] = []


def _refused_retrying_adapter() -> type:
    """An ``HTTPAdapter`` whose ``send`` rides out a few seconds of refused connections."""
    with _CLASSES_LOCK:
        if not _ADAPTER:
            from requests.adapters import HTTPAdapter

            from storage_initializer.connect import retry_refused

            def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
                return retry_refused(lambda: HTTPAdapter.send(self, request, *args, **kwargs), str(request.url))

            _ADAPTER.append(type("RefusedRetryingAdapter", (HTTPAdapter,), {"send": send}))
        return _ADAPTER[0]


# -- waiting ----------------------------------------------------------------------------------
def sleep(seconds: float, cancel: threading.Event | None = None) -> None:
    """Wait ``seconds``; return early (raising :class:`CancelledError`) when ``cancel`` is set."""
    from storage_initializer.errors import CancelledError

    if cancel is None:
        time.sleep(seconds)
        return
    if cancel.wait(seconds):
        raise CancelledError("stopped by a signal")
