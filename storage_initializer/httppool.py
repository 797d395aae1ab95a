"""Pooled HTTP/1.1 connections on the standard library's ``http.client``, for small requests.

For providers that sign their own requests (listings, HEADs, the odd streamed
GET when the engine's event loop cannot take a request). ``urllib3`` did this
job before; importing it costs ~45 ms of CPU here (its ``http2`` module
imports ``importlib.metadata``), a third of a whole one-file download, for
nothing this module does not do: keep-alive connections per origin, separate
connect and read timeouts, ``http://`` proxies (absolute URLs for ``http``
targets, a ``CONNECT`` tunnel for ``https`` ones, credentials from the proxy
URL). Measured with ``bench/`` (``s3 tiny``, client CPU, median of 15):
152 ms with urllib3, 85 ms with this pool and the lazy imports of the same
change.

A response is a small wrapper over ``http.client.HTTPResponse`` with the
attributes :class:`storage_initializer.httpbody.HttpBody` reads (``_fp``,
``headers``, ``release_conn``, ``close``). Connection-level failures are the
standard library's own (``OSError`` subclasses, ``ssl.SSLError``,
``http.client.HTTPException``): :func:`storage_initializer.errors.network_error`
types them.
"""

from __future__ import annotations

import base64
import http.client
import select
import socket
import ssl
import threading
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from storage_initializer.errors import UsageError

#: A reused connection the server had already closed fails at once, before any answer:
#: such a request (GET, HEAD) is sent again once, on a new connection.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})


class NameNotResolvedError(OSError):
    """A host name did not resolve; names the host (the resolver's own error does not)."""


class PoolResponse:
    """A response: ``status``, ``headers`` (case-insensitive), ``data`` or a streamed body."""

    __slots__ = ("_conn", "_data", "_fp", "_pool", "headers", "reason", "status")

    def __init__(self, pool: Pool, conn: http.client.HTTPConnection, fp: http.client.HTTPResponse) -> None:
        self._pool = pool
        self._conn: http.client.HTTPConnection | None = conn
        self._fp = fp
        self._data: bytes | None = None
        self.status = fp.status
        self.reason = fp.reason
        self.headers = fp.headers

    @property
    def data(self) -> bytes:
        """The whole body (read once, then the connection goes back to the pool)."""
        if self._data is None:
            self._data = self._fp.read()
            self.release_conn()
        return self._data

    def read(self, amt: int | None = None, decode_content: bool = False) -> bytes:
        """Up to ``amt`` bytes of the body as sent (nothing is decoded)."""
        return self._fp.read(amt)

    def release_conn(self) -> None:
        """Give the connection back: to the pool if the body was read to its end, else closed."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._fp.isclosed() or self._fp.length == 0:
            self._fp.close()
            self._pool._put(conn)
        else:
            conn.close()  # unread bytes: it cannot carry another request

    def close(self) -> None:
        """Drop the connection (the body need not have been read)."""
        self._fp.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class Pool:
    """Keep-alive connections to one origin (``scheme://host[:port]``); thread-safe."""

    def __init__(
        self,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext | None,
        connect_timeout: float,
        read_timeout: float,
        maxsize: int,
        proxy: str | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"not an http(s) URL: {base_url}")
        self.base_url = f"{parts.scheme}://{parts.netloc}"
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self._context = ssl_context if self._tls else None
        if self._tls and self._context is None:
            self._context = ssl.create_default_context()
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._maxsize = max(1, maxsize)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._proxy: tuple[str, int, dict[str, str]] | None = None
        if proxy:
            self._proxy = _parse_proxy(proxy)

    @property
    def absolute_urls(self) -> bool:
        """Whether requests name absolute URLs (a plain ``http`` target behind a proxy)."""
        return self._proxy is not None and not self._tls

    def request(self, method: str, path: str, headers: Mapping[str, str], *, stream: bool = False) -> PoolResponse:
        """Send one request; read the whole body unless ``stream`` (then read it, and
        ``release_conn()`` or ``close()``)."""
        target = self.base_url + path if self.absolute_urls else path
        sent = dict(headers)
        if self.absolute_urls and self._proxy is not None:
            sent.update(self._proxy[2])
        for attempt in (1, 2):
            conn, reused = self._get()
            try:
                conn.request(method, target, headers=sent)
                fp = conn.getresponse()
            except _STALE:
                conn.close()
                if reused and attempt == 1 and method in _IDEMPOTENT:
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            response = PoolResponse(self, conn, fp)
            if not stream:
                response.data  # noqa: B018 - reads the body and releases the connection
            return response
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the idle connections (the pool can still be used)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _get(self) -> tuple[http.client.HTTPConnection, bool]:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect(), False
            sock = conn.sock
            if sock is not None and not _readable(sock):
                return conn, True
            conn.close()  # closed by the server while idle (or it sent something unasked)

    def _put(self, conn: http.client.HTTPConnection) -> None:
        if conn.sock is None:
            return  # the server said Connection: close
        with self._lock:
            if len(self._idle) < self._maxsize:
                self._idle.append(conn)
                return
        conn.close()

    def _connect(self) -> http.client.HTTPConnection:
        proxy = self._proxy
        host, port = (proxy[0], proxy[1]) if proxy is not None else (self._host, self._port)
        conn: http.client.HTTPConnection
        if self._tls:
            conn = http.client.HTTPSConnection(host, port, timeout=self._connect_timeout, context=self._context)
            if proxy is not None:  # TLS to the origin through a CONNECT tunnel
                conn.set_tunnel(self._host, self._port, headers=proxy[2])
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self._connect_timeout)
        try:
            conn.connect()
        except socket.gaierror as exc:
            conn.close()
            raise NameNotResolvedError(f"Failed to resolve '{host}' ({exc.strerror})") from exc
        except BaseException:
            conn.close()
            raise
        assert conn.sock is not None
        conn.sock.settimeout(self._read_timeout)
        return conn


def _readable(sock: socket.socket) -> bool:
    """Whether an idle socket has something to read: EOF (closed by the peer) or stray bytes."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _parse_proxy(proxy: str) -> tuple[str, int, dict[str, str]]:
    """``http://[user:password@]host[:port]`` as (host, port, headers for the proxy)."""
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if parts.scheme != "http" or not parts.hostname:
        raise UsageError(
            f"proxy {parts.scheme}://{parts.hostname or ''} is not supported here",
            hint="set an http:// proxy (HTTPS_PROXY=http://host:port tunnels TLS through it)",
        )
    headers = {}
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return parts.hostname, parts.port or 80, headers
