"""The engine's HTTP/1.1 data plane: one thread and one epoll for every connection.

Why: a pod's init container gets ``cpu: 1``, so the download is decided by
client CPU per byte and per request. A client library on worker threads
pays for it twice: per request (urllib3 and ``http.client`` spend hundreds
of microseconds building, sending and parsing) and per byte (16 threads
hand the GIL to each other between every ``recv`` and ``pwrite``). Here a
provider *describes* each ranged GET (:class:`~storage_initializer.provider.HttpRange`:
URL, signed headers, a check of the answer) and this loop moves the bytes:
non-blocking sockets (TLS through :mod:`ssl`), keep-alive pools per origin,
one ``recv_into`` into one loop-owned buffer, ``pwrite`` at the file offset,
the hash updated while the bytes are hot, no thread hand-off per chunk.

The engine's worker threads keep everything else (planning, retries,
verification, publishing): a worker hands a :class:`Fetch` to the loop and
sleeps until it is done, so the cursor semantics of a read are unchanged (a
failed fetch says how far it wrote, and the retry resumes from there).

Anything the loop does not speak (a redirect, a chunked or encoded body)
raises :class:`Unsupported`, and the worker reads that range through the
provider's ``open_range`` instead. Stalls: a connection that receives
nothing for ``stall_timeout`` seconds (``connect_timeout`` while
connecting) is closed and the fetch fails with a transient error.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from storage_initializer.engine.dest import describe_os_error
from storage_initializer.errors import CancelledError, StorageInitializerError, TransientError, classify
from storage_initializer.provider import HttpRange

log = logging.getLogger("storage_initializer")

#: The most of an error document read before the provider's check sees it.
_ERROR_BODY_LIMIT = 64 * 1024
#: The most a response head may take.
_HEAD_LIMIT = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: Reads per readiness event before the loop serves another connection.
_READS_PER_EVENT = 8
#: Bodies nobody hashes (a plain-HTTP part, a file without a store checksum) go from the socket
#: to the file through a pipe (``splice``): the kernel moves the pages, no copy through Python.
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_PIPE_SIZE = 1024 * 1024
_F_SETPIPE_SZ = 1031
#: A body socket wakes the loop only once this much has arrived (SO_RCVLOWAT; lowered for the
#: last bytes of a body): with a core to itself the loop would otherwise wake per segment and
#: spend a syscall or two on every few KiB.
_LOWAT = 256 * 1024
_SO_RCVLOWAT = getattr(socket, "SO_RCVLOWAT", 18)


class Unsupported(Exception):
    """The response needs what the loop does not do (redirect, chunked body): read it another way."""


class Headers(dict[str, str]):
    """Response headers with lower-case names; ``get`` is case-insensitive."""

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


class Fetch:
    """One ranged GET written to ``fd`` from ``offset`` (advanced as bytes land) up to ``end``."""

    __slots__ = (
        "conn",
        "done",
        "end",
        "error",
        "fd",
        "hasher",
        "offset",
        "on_bytes",
        "on_done",
        "request",
        "set_aside",
        "stop",
        "unhashed",
        "where",
    )

    def __init__(
        self,
        request: HttpRange,
        fd: int,
        offset: int,
        end: int | None,
        hasher: Any,
        on_bytes: Callable[[int], None],
        stop: Callable[[], bool],
        where: str,
    ) -> None:
        self.request = request
        self.where = where  # the destination, for write errors
        self.fd = fd
        self.offset = offset
        self.end = end
        self.hasher = hasher
        self.on_bytes = on_bytes
        self.stop = stop
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.conn: _Conn | None = None
        #: Called in the loop thread once the fetch is done (see :meth:`NetLoop.submit`).
        self.on_done: Callable[[Fetch], None] | None = None
        #: Asked once the answer's head is checked: True to land the body unhashed (spliced)
        #: and leave ``hasher`` in :attr:`unhashed`, for the caller to hash from the page cache.
        self.set_aside: Callable[[], bool] | None = None
        self.unhashed: Any = None


class _Origin:
    __slots__ = ("host", "key", "port", "tls")

    def __init__(self, scheme: str, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.key = (scheme, host, port, id(tls))


class _Conn:
    """One connection and the response being read on it."""

    __slots__ = (
        "body_left",
        "body_total",
        "deadline",
        "error_body",
        "fetch",
        "handshaking",
        "head",
        "headers",
        "keep_alive",
        "lowat",
        "origin",
        "out",
        "reused",
        "sock",
        "state",
        "status",
        "tried",
    )

    def __init__(self, origin: _Origin, sock: socket.socket) -> None:
        self.origin = origin
        self.sock = sock
        self.fetch: Fetch | None = None
        self.state = "connecting"
        self.handshaking = False
        self.out = b""
        self.head = bytearray()
        self.status = 0
        self.headers = Headers()
        self.body_left = 0
        self.body_total = 0
        self.keep_alive = True
        self.lowat = 1
        self.reused = False
        self.tried = 0
        self.deadline = 0.0
        self.error_body = bytearray()


class NetLoop:
    """The loop thread; :meth:`fetch` is called from worker threads."""

    def __init__(
        self,
        buffer_size: int,
        stall_timeout: float,
        connect_timeout: float,
        max_active: int = 16,
        splice: bool = True,
    ) -> None:
        self._buffer = memoryview(bytearray(max(buffer_size, _HEAD_LIMIT)))
        self._max_active = max(1, max_active)
        self._waiting: collections.deque[Fetch] = collections.deque()
        self._stall = stall_timeout
        self._connect = connect_timeout
        self._selector = selectors.DefaultSelector()
        self._incoming: collections.deque[Fetch] = collections.deque()
        self._idle: dict[tuple[Any, ...], list[_Conn]] = {}
        self._active: set[_Conn] = set()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._sleeping = False
        self._closed = False
        self._default_tls: ssl.SSLContext | None = None
        self._pipe: tuple[int, int, int] | None = None  # read end, write end, capacity
        self._splice = splice and hasattr(os, "splice")
        self._addresses: dict[tuple[Any, ...], list[Any]] = {}
        self._thread = threading.Thread(target=self._run, name="netloop", daemon=True)
        self._thread.start()

    # -- the worker side ----------------------------------------------------------------
    def fetch(self, fetch: Fetch) -> None:
        """Run ``fetch`` on the loop; return when done, raising what failed it."""
        self._incoming.append(fetch)
        self._wake()
        while not fetch.done.wait(0.5):
            if fetch.stop():
                self._incoming.append(fetch)  # the loop sees stop() and drops it
                self._wake()
        if fetch.error is not None:
            raise fetch.error

    def submit(self, fetch: Fetch) -> None:
        """Start ``fetch`` and return at once; its ``on_done`` runs in the loop thread when it ends.

        At most ``max_active`` fetches are in flight; the others wait their turn.
        """
        self._incoming.append(fetch)
        self._wake()

    def close(self) -> None:
        self._closed = True
        self._wake()
        self._thread.join(5)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    # -- the loop -----------------------------------------------------------------------
    def _run(self) -> None:
        select = self._selector.select
        next_sweep = time.monotonic() + 0.5
        while not self._closed:
            timeout = 0.5 if self._active else None
            for key, events in select(timeout):
                conn = key.data
                if conn is None:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    continue
                try:
                    self._service(conn, events)
                except BaseException as exc:
                    self._fail(conn, exc)
            while self._incoming:
                incoming = self._incoming.popleft()
                if incoming.conn is None and not incoming.done.is_set() and len(self._active) >= self._max_active:
                    self._waiting.append(incoming)
                else:
                    self._start(incoming)
            while self._waiting and len(self._active) < self._max_active:
                self._start(self._waiting.popleft())
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + 0.5
                self._sweep(now)
        for conn in list(self._active):
            self._fail(conn, CancelledError("stopped"))
        while self._waiting:
            fetch = self._waiting.popleft()
            fetch.error = CancelledError("stopped")
            self._finish(fetch)
        for conns in self._idle.values():
            for conn in conns:
                self._close(conn)
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self._pipe is not None:
            os.close(self._pipe[0])
            os.close(self._pipe[1])

    def _sweep(self, now: float) -> None:
        for waiting in [f for f in self._waiting if f.stop()]:
            self._waiting.remove(waiting)
            waiting.error = CancelledError("stopped")
            self._finish(waiting)
        for conn in list(self._active):
            fetch = conn.fetch
            if fetch is not None and fetch.stop():
                self._fail(conn, CancelledError("stopped"))
                continue
            if conn.lowat > 1 and now - (conn.deadline - self._stall) >= 0.5:
                # Fewer bytes than the wake-up mark arrived (a slow or pausing server): take them
                # now, so they count as progress and the stall clock sees them.
                try:
                    self._receive(conn)
                except BaseException as exc:
                    self._fail(conn, exc)
                if conn.fetch is None:
                    continue
            if now > conn.deadline:
                waited = self._connect if conn.state == "connecting" else self._stall
                what = "connecting" if conn.state == "connecting" else "no byte arrived"
                self._fail(conn, TransientError(f"{what} for {waited:g}s (stalled connection)"))

    def _start(self, fetch: Fetch) -> None:
        if fetch.done.is_set():
            return
        if fetch.conn is not None:  # a stop() poke for a fetch in flight
            if fetch.stop():
                self._fail(fetch.conn, CancelledError("stopped"))
            return
        if fetch.stop():
            fetch.error = CancelledError("stopped")
            self._finish(fetch)
            return
        try:
            origin = self._origin(fetch.request)
            conn = self._take_idle(origin)
            if conn is None:
                conn = self._open(origin)
            else:
                conn.reused = True
            conn.fetch = fetch
            fetch.conn = conn
            conn.out = self._request_bytes(fetch.request, origin)
            conn.head = bytearray()
            conn.error_body = bytearray()
            self._active.add(conn)
            conn.deadline = time.monotonic() + (self._connect if conn.state == "connecting" else self._stall)
            if conn.state == "idle":
                conn.state = "sending"
                self._send(conn)
        except BaseException as exc:
            fetch.error = classify(exc)
            self._finish(fetch)

    @staticmethod
    def _finish(fetch: Fetch) -> None:
        fetch.done.set()
        callback = fetch.on_done
        if callback is not None:
            try:
                callback(fetch)
            except BaseException:  # a callback must never stop the loop serving every other fetch
                log.exception("completing a download failed")

    def _origin(self, request: HttpRange) -> _Origin:
        parts = urlsplit(request.url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise StorageInitializerError(f"not an http(s) URL: {parts.scheme}://{parts.hostname}")
        tls = None
        if scheme == "https":
            tls = request.ssl_context or self._tls()
        return _Origin(scheme, parts.hostname, parts.port or (443 if tls else 80), tls)

    def _tls(self) -> ssl.SSLContext:
        if self._default_tls is None:
            self._default_tls = ssl.create_default_context()
        return self._default_tls

    @staticmethod
    def _request_bytes(request: HttpRange, origin: _Origin) -> bytes:
        parts = urlsplit(request.url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {target} HTTP/1.1"]
        names = set()
        for name, value in request.headers.items():
            names.add(name.lower())
            lines.append(f"{name}: {value}")
        if "host" not in names:
            default = 443 if origin.tls else 80
            host = origin.host if ":" not in origin.host else f"[{origin.host}]"
            lines.append(f"Host: {host}" if origin.port == default else f"Host: {host}:{origin.port}")
        if "accept-encoding" not in names:
            lines.append("Accept-Encoding: identity")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1")

    def _take_idle(self, origin: _Origin) -> _Conn | None:
        conns = self._idle.get(origin.key)
        return conns.pop() if conns else None

    def _open(self, origin: _Origin, tried: int = 0) -> _Conn:
        infos = self._addresses.get(origin.key)
        if infos is None:
            infos = socket.getaddrinfo(origin.host, origin.port, type=socket.SOCK_STREAM)
            self._addresses[origin.key] = infos
        family, kind, proto, _, address = infos[tried]
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(origin, sock)
        conn.tried = tried
        try:
            sock.connect(address)
        except BlockingIOError:
            pass
        except OSError:
            sock.close()
            if tried + 1 < len(infos):
                return self._open(origin, tried + 1)
            raise
        self._selector.register(sock, selectors.EVENT_WRITE, conn)
        return conn

    def _next_address(self, conn: _Conn) -> bool:
        """After a failed connect: try the origin's next address on the same fetch."""
        infos = self._addresses.get(conn.origin.key) or []
        if conn.tried + 1 >= len(infos):
            return False
        fetch = conn.fetch
        self._active.discard(conn)
        self._close(conn)
        fresh = self._open(conn.origin, conn.tried + 1)
        fresh.fetch = fetch
        fresh.out = conn.out
        fresh.deadline = time.monotonic() + self._connect
        if fetch is not None:
            fetch.conn = fresh
        self._active.add(fresh)
        return True

    def _service(self, conn: _Conn, events: int) -> None:
        if conn.fetch is None:  # an idle connection became readable: the server closed it
            self._drop_idle(conn)
            return
        if conn.state == "connecting":
            err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                if self._next_address(conn):
                    return
                raise OSError(err, os.strerror(err))
            if conn.origin.tls is not None:
                conn.sock = conn.origin.tls.wrap_socket(
                    conn.sock, server_hostname=conn.origin.host, do_handshake_on_connect=False
                )
                conn.handshaking = True
                self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
            conn.state = "sending"
        if conn.handshaking:
            self._handshake(conn)
            if conn.handshaking:
                return
        if conn.state == "sending":
            self._send(conn)
            return
        self._receive(conn)

    def _handshake(self, conn: _Conn) -> None:
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._selector.modify(sock, selectors.EVENT_READ, conn)
            return
        except ssl.SSLWantWriteError:
            self._selector.modify(sock, selectors.EVENT_WRITE, conn)
            return
        conn.handshaking = False
        conn.deadline = time.monotonic() + self._stall

    def _send(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, ssl.SSLWantWriteError):
            self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
            return
        except ssl.SSLWantReadError:
            self._selector.modify(conn.sock, selectors.EVENT_READ, conn)
            return
        conn.out = conn.out[sent:]
        if conn.out:
            self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
            return
        conn.state = "head"
        conn.deadline = time.monotonic() + self._stall
        self._selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _receive(self, conn: _Conn) -> None:
        buf = self._buffer
        sock = conn.sock
        # A TLS socket may hold decrypted bytes that epoll cannot see: read it dry.
        reads = _READS_PER_EVENT if conn.origin.tls is None else 1 << 30
        for _ in range(reads):
            if conn.state == "body":
                fetch = conn.fetch
                assert fetch is not None
                if self._splice and fetch.hasher is None and conn.origin.tls is None:
                    # Not bounded by the buffer: the pipe takes up to its capacity per call.
                    moved = self._splice_body(conn, fetch, conn.body_left)
                    if moved < 0:
                        return
                    if moved > 0:
                        if conn.fetch is None:
                            return
                        continue
                    if not self._splice:  # not supported here after all: read as usual
                        continue
                    self._eof(conn)
                    return
                want = min(len(buf), conn.body_left)
            else:
                want = len(buf)
            try:
                n = sock.recv_into(buf[:want] if want < len(buf) else buf)
            except (BlockingIOError, ssl.SSLWantReadError):
                return
            except ssl.SSLWantWriteError:
                return
            if n == 0:
                self._eof(conn)
                return
            conn.deadline = time.monotonic() + self._stall
            if conn.state == "body":
                self._body(conn, buf[:n])
            elif conn.state == "head":
                self._head(conn, buf[:n])
            else:  # "error": the error document
                self._error_body(conn, buf[:n])
            if conn.fetch is None:  # finished
                return

    def _splice_body(self, conn: _Conn, fetch: Fetch, want: int) -> int:
        """Move up to ``want`` body bytes from the socket to the file; -1: nothing to read now, 0: EOF."""
        if self._pipe is None:
            r, w = os.pipe()
            try:
                import fcntl

                capacity = fcntl.fcntl(w, _F_SETPIPE_SZ, _PIPE_SIZE)
            except OSError:
                capacity = 64 * 1024
            self._pipe = (r, w, capacity)
        r, w, capacity = self._pipe
        try:
            n = os.splice(conn.sock.fileno(), w, min(want, capacity), flags=_SPLICE_FLAGS)
        except BlockingIOError:
            return -1
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                self._splice = False  # this kernel or socket cannot: recv_into from now on
                return 0
            raise
        if n == 0:
            return 0
        moved = 0
        try:
            while moved < n:
                moved += os.splice(r, fetch.fd, n - moved, offset_dst=fetch.offset + moved)
        except OSError as exc:
            # Keep the pipe empty for the next body, then fail (or write those bytes the usual way).
            rest = os.read(r, n - moved)
            if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise describe_os_error(exc, fetch.where) from None
            self._splice = False
            os.pwrite(fetch.fd, rest, fetch.offset + moved)
        conn.deadline = time.monotonic() + self._stall
        self._landed(conn, fetch, n)
        return n

    def _head(self, conn: _Conn, data: memoryview) -> None:
        head = conn.head
        before = len(head)
        head += data
        end = head.find(b"\r\n\r\n", max(0, before - 3))
        if end < 0:
            if len(head) > _HEAD_LIMIT:
                raise TransientError("the response head is larger than 64 KiB")
            return
        raw = bytes(head[:end]).decode("latin-1")
        rest_start = end + 4 - before  # where the body starts within ``data``
        lines = raw.split("\r\n")
        status_line = lines[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/1."):
            raise TransientError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
        status = int(status_line[1])
        if 100 <= status < 200:  # an interim answer (never sent to a bodiless GET)
            raise Unsupported(f"HTTP {status} interim response")
        headers = Headers()
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                dict.__setitem__(headers, name.strip().lower(), value.strip())
        conn.status = status
        conn.headers = headers
        conn.keep_alive = status_line[0] == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        fetch = conn.fetch
        assert fetch is not None
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length_text = headers.get("content-length")
        length = int(length_text) if length_text and length_text.isdigit() else None
        if status in _REDIRECTS:
            raise Unsupported(f"HTTP {status} redirect")
        if not 200 <= status < 300:
            conn.body_left = min(length, _ERROR_BODY_LIMIT) if length is not None and not chunked else 0
            conn.keep_alive = conn.keep_alive and length is not None and length <= _ERROR_BODY_LIMIT
            conn.state = "error"
            if rest_start < len(data):
                self._error_body(conn, data[rest_start:])
            elif conn.body_left == 0:
                self._finish_error(conn)
            return
        encoding = headers.get("content-encoding", "identity").lower()
        if chunked or length is None or encoding not in ("identity", ""):
            raise Unsupported("a chunked, encoded or unsized body")
        fetch.request.check(status, headers, b"")
        if fetch.hasher is not None and fetch.set_aside is not None and fetch.set_aside():
            fetch.unhashed, fetch.hasher = fetch.hasher, None
        if fetch.end is not None and length != fetch.end - fetch.offset:
            raise TransientError(f"asked for {fetch.end - fetch.offset} bytes, the answer has {length}")
        conn.body_left = conn.body_total = length
        conn.state = "body"
        if rest_start < len(data):
            self._body(conn, data[rest_start:])
        elif length == 0:
            self._complete(conn)
        if conn.fetch is not None:
            self._lowat(conn)

    @staticmethod
    def _lowat(conn: _Conn) -> None:
        """Wake for the body in large steps, never for more than what is left of it."""
        if conn.origin.tls is not None:
            return  # TLS records: plaintext and wire sizes differ
        wanted = max(1, min(_LOWAT, conn.body_left)) if conn.state == "body" else 1
        if wanted != conn.lowat:
            try:
                conn.sock.setsockopt(socket.SOL_SOCKET, _SO_RCVLOWAT, wanted)
                conn.lowat = wanted
            except OSError:
                pass

    def _body(self, conn: _Conn, data: memoryview) -> None:
        fetch = conn.fetch
        assert fetch is not None
        if len(data) > conn.body_left:
            data = data[: conn.body_left]
        n = len(data)
        written = 0
        offset = fetch.offset
        fd = fetch.fd
        try:
            while written < n:
                written += os.pwrite(fd, data[written:] if written else data, offset + written)
        except OSError as exc:
            raise describe_os_error(exc, fetch.where) from None
        if fetch.hasher is not None:
            fetch.hasher.update(data)
        self._landed(conn, fetch, n)

    def _landed(self, conn: _Conn, fetch: Fetch, n: int) -> None:
        """``n`` more body bytes are in the file: advance, then finish, stop or wake later."""
        fetch.offset += n
        conn.body_left -= n
        fetch.on_bytes(n)
        if conn.body_left == 0:
            self._complete(conn)
        elif fetch.stop():
            raise CancelledError("stopped")
        elif conn.body_left < conn.lowat:
            self._lowat(conn)

    def _error_body(self, conn: _Conn, data: memoryview) -> None:
        room = _ERROR_BODY_LIMIT - len(conn.error_body)
        conn.error_body += data[:room]
        conn.body_left -= min(len(data), conn.body_left)
        if conn.body_left <= 0:
            self._finish_error(conn)

    def _finish_error(self, conn: _Conn) -> None:
        fetch = conn.fetch
        assert fetch is not None
        status, headers, body = conn.status, conn.headers, bytes(conn.error_body)
        self._release(conn)
        try:
            fetch.request.check(status, headers, body)
            raise StorageInitializerError(f"HTTP {status}")  # the check should have raised
        except BaseException as exc:
            fetch.error = classify(exc)
        self._finish(fetch)

    def _complete(self, conn: _Conn) -> None:
        fetch = conn.fetch
        assert fetch is not None
        self._release(conn)
        self._finish(fetch)

    def _eof(self, conn: _Conn) -> None:
        fetch = conn.fetch
        assert fetch is not None
        if conn.reused and conn.state == "head" and not conn.head:
            # The server closed a kept-alive connection as we reused it: send again on a new one.
            self._active.discard(conn)
            self._close(conn)
            fetch.conn = None
            self._start(fetch)
            return
        if conn.state == "error":
            conn.keep_alive = False
            self._finish_error(conn)
            return
        if conn.state != "body":
            raise TransientError("the connection closed before the response was complete")
        got = conn.body_total - conn.body_left
        raise TransientError(f"the connection ended after {got} of {conn.body_total} bytes")

    def _release(self, conn: _Conn) -> None:
        """The response is read: keep the connection for the next request, or close it."""
        fetch = conn.fetch
        self._active.discard(conn)
        conn.fetch = None
        if fetch is not None:
            fetch.conn = None
        if not conn.keep_alive or self._closed:
            self._close(conn)
            return
        conn.state = "idle"
        conn.reused = False
        conn.head = bytearray()
        conn.error_body = bytearray()
        self._lowat(conn)  # back to 1: the next answer's head may be small
        self._selector.modify(conn.sock, selectors.EVENT_READ, conn)
        self._idle.setdefault(conn.origin.key, []).append(conn)

    def _drop_idle(self, conn: _Conn) -> None:
        conns = self._idle.get(conn.origin.key, [])
        if conn in conns:
            conns.remove(conn)
        self._close(conn)

    def _fail(self, conn: _Conn, exc: BaseException) -> None:
        fetch = conn.fetch
        self._active.discard(conn)
        conn.fetch = None
        self._close(conn)
        if fetch is None:
            return
        fetch.conn = None
        if isinstance(exc, ssl.SSLCertVerificationError):
            fetch.error = StorageInitializerError(
                f"TLS verification of {conn.origin.host} failed: {exc.verify_message}",
                hint="check the CA bundle settings of this store",
            )
        elif isinstance(exc, (OSError, ssl.SSLError)) and not isinstance(exc, StorageInitializerError):
            code = exc.errno
            reason = os.strerror(code) if code else type(exc).__name__
            if code == errno.ECONNREFUSED:
                reason = "connection refused"
            fetch.error = TransientError(f"{conn.origin.host}:{conn.origin.port}: {reason}")
        else:
            fetch.error = exc if isinstance(exc, Unsupported) else classify(exc)
        self._finish(fetch)

    def _close(self, conn: _Conn) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.close()


def response_headers(headers: Mapping[str, str]) -> Headers:
    """A case-insensitive copy of ``headers`` (for checks shared with other read paths)."""
    result = Headers()
    for name, value in headers.items():
        dict.__setitem__(result, name.lower(), value)
    return result
