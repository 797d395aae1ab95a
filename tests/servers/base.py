"""What every fake HTTP server in tests shares, so each fake holds only its store's protocol.

* :class:`FakeServer`: a threaded HTTP/1.1 server on 127.0.0.1 (a free port), optionally
  TLS (the handshake runs in the connection's own thread, so a client that never finishes
  one cannot block the others), that tracks its connections and drops them on :meth:`stop`
  so no handler outlives the test. Clients that hang up are not tracebacks on stderr.
* :class:`FakeHandler`: the request handler base: quiet, ``TCP_NODELAY``, :meth:`send`
  (headers and a body, nothing for ``HEAD``), :meth:`stream` (a body under faults),
  :meth:`abort`, :meth:`read_body` (plain or chunked) and :meth:`record`.
* :class:`RequestLog` of :class:`Request` s (method, path, query, headers, status, body
  bytes, time and what the fake knows: ``r.filename``, ``r.server``...), which tests read.
* :func:`parse_range` for ``Range: bytes=...`` (206 / 416) and :func:`content_range`.
* Fault injection: a :class:`Fault` ("status": answer a status, with ``Retry-After``;
  "stall": stop sending after N body bytes; "cut": drop the connection after N bytes;
  "corrupt": zeros in place of the content; "replace": swap the stored content mid-body;
  "error": a fake-specific error answer) armed in :class:`Faults`, which hands out the
  fault a request meets; :meth:`FakeHandler.stream` applies body faults.
* :class:`FakeService`: a fake of one or more listeners sharing the log, the faults and
  the stop event, started and stopped together.
"""

from __future__ import annotations

import contextlib
import fnmatch
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = [
    "UNSATISFIABLE",
    "FakeHandler",
    "FakeServer",
    "FakeService",
    "Fault",
    "Faults",
    "Request",
    "RequestLog",
    "content_range",
    "parse_range",
    "tls_context",
]

CHUNK = 64 * 1024

# -- ranges ------------------------------------------------------------------------------------
#: What :func:`parse_range` returns for a range the server must answer with 416.
UNSATISFIABLE: Literal["unsatisfiable"] = "unsatisfiable"


def parse_range(
    header: str | None, size: int, *, malformed: Literal["ignore", "unsatisfiable"] = "ignore"
) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """The one byte range ``header`` asks of ``size`` bytes, as ``(start, end)`` with ``end`` exclusive.

    ``None``: serve the whole object (no header, or one the server ignores: another unit,
    several ranges, bad syntax, as S3 and CloudFront do); :data:`UNSATISFIABLE`: answer 416
    (``start`` past the end, an empty suffix). With ``malformed="unsatisfiable"`` a header
    the server does not understand is a 416 too (a strict static file server).
    """
    if not header:
        return None
    bad: tuple[int, int] | Literal["unsatisfiable"] | None = UNSATISFIABLE if malformed == "unsatisfiable" else None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return bad
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return bad
    try:
        if first == "":
            n = int(last)
            return UNSATISFIABLE if n <= 0 or size == 0 else (max(0, size - n), size)
        start, end = int(first), (int(last) + 1 if last else size)
    except ValueError:
        return bad
    if last and end <= start:
        return bad
    return UNSATISFIABLE if start >= size else (start, min(end, size))


def content_range(start: int, end: int, size: int) -> str:
    """``Content-Range`` of bytes ``[start, end)`` of ``size``."""
    return f"bytes {start}-{end - 1}/{size}"


# -- request records ---------------------------------------------------------------------------
@dataclass
class Request:
    """One request as a fake received it, for tests to assert on.

    ``path`` is decoded and without the query; ``query`` maps each parameter to its first
    value (``raw_query`` is the query as sent); ``headers`` are as sent (:meth:`header`
    looks one up in any case). ``status`` and ``body_bytes`` (body bytes actually sent) are
    filled in when the answer went out. ``tags`` holds what the fake knows about the
    request (which of its servers, which file...), also readable as attributes.
    """

    method: str
    path: str
    raw_query: str
    headers: dict[str, str]
    status: int = 0
    body_bytes: int = 0
    time: float = field(default_factory=time.monotonic)
    tags: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        tags = self.__dict__.get("tags", {})
        if name in tags:
            return tags[name]
        raise AttributeError(name)

    @property
    def query(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for key, value in parse_qsl(self.raw_query, keep_blank_values=True):
            found.setdefault(key, value)
        return found

    def param(self, name: str) -> str | None:
        return self.query.get(name)

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)

    @property
    def range(self) -> str | None:
        return self.header("Range")

    @property
    def authorization(self) -> str | None:
        return self.header("Authorization")

    @property
    def cookie(self) -> str | None:
        return self.header("Cookie")


class RequestLog:
    """The requests a fake received, in order; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[Request] = []

    def add(self, record: Request) -> Request:
        with self._lock:
            self._records.append(record)
        return record

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def __iter__(self) -> Iterator[Request]:
        return iter(self.all())

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def __getitem__(self, index: int) -> Request:
        with self._lock:
            return self._records[index]

    def all(self) -> list[Request]:
        with self._lock:
            return list(self._records)

    def where(self, **tags: Any) -> list[Request]:
        """The records whose tags (or attributes) equal these."""
        return [r for r in self.all() if all(getattr(r, k, None) == v for k, v in tags.items())]


# -- faults ------------------------------------------------------------------------------------
FaultKind = Literal["status", "stall", "cut", "corrupt", "replace", "error"]


@dataclass
class Fault:
    """A misbehaviour for the next ``times`` matching requests (``-1``: every one).

    ``path``: an ``fnmatch`` pattern (``None``: any path); ``where``: tags a request must
    have (the fake says which, e.g. ``{"server": "cdn"}``; a value ``"any"`` matches all).
    Body faults fire once ``after_bytes`` of a body went out: "stall" holds the connection
    silent for ``seconds`` (then goes on when ``resume``, else closes), "cut" drops it,
    "replace" calls the fake's replace hook with ``data``; "corrupt" sends zeros in place
    of the whole body. "status" answers ``status`` (with ``retry_after``) instead of the
    object; "error" answers a fake-specific error. ``error`` (and ``data``) hold what the
    fake answers with, in its own terms (a RemoteException, a body and headers). A fault is
    used up when it fires: a body too short to reach ``after_bytes`` leaves it armed.
    ``fired`` counts.
    """

    kind: FaultKind
    path: str | None = None
    after_bytes: int = 0
    seconds: float = 30.0
    status: int = 503
    retry_after: str | None = None
    times: int = 1
    resume: bool = False
    data: bytes = b""
    error: Any = None
    where: Mapping[str, Any] = field(default_factory=dict)
    fired: int = 0

    @property
    def hits(self) -> int:
        return self.fired

    def matches(self, path: str | None, kinds: Iterable[str] | None, tags: Mapping[str, Any]) -> bool:
        if self.times == 0 or (kinds is not None and self.kind not in kinds):
            return False
        if self.path is not None and (path is None or (path != self.path and not fnmatch.fnmatchcase(path, self.path))):
            return False
        return all(_tag_matches(value, tags.get(key)) for key, value in self.where.items())


def _tag_matches(wanted: Any, actual: Any) -> bool:
    """``"any"``, the value itself, or a tuple / set of accepted values."""
    if wanted == "any" or wanted == actual:
        return True
    return isinstance(wanted, (tuple, frozenset, set)) and actual in wanted


class Faults:
    """The faults armed on a fake; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def __iter__(self) -> Iterator[Fault]:
        with self._lock:
            return iter(list(self._faults))

    def pending(self, path: str | None, kinds: Iterable[str] | None = None, **tags: Any) -> list[Fault]:
        """The armed faults a request on ``path`` with ``tags`` meets, in the order they were armed."""
        with self._lock:
            return [f for f in self._faults if f.matches(path, kinds, tags)]

    def claim(self, fault: Fault) -> bool:
        """Use the fault up once; ``False`` when another request used its last time."""
        with self._lock:
            if fault.times == 0:
                return False
            if fault.times > 0:
                fault.times -= 1
            fault.fired += 1
            return True

    def take(self, path: str | None, kinds: Iterable[str], **tags: Any) -> Fault | None:
        """The first matching fault of ``kinds``, claimed (for faults that fire at once)."""
        for fault in self.pending(path, kinds, **tags):
            if self.claim(fault):
                return fault
        return None


# -- the server --------------------------------------------------------------------------------
def tls_context(ca: Any) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1 and localhost from a ``trustme.CA``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


class FakeServer(ThreadingHTTPServer):
    """A threaded HTTP server on 127.0.0.1 serving ``handler`` for ``owner`` (the fake).

    ``tls``: a server ``ssl.SSLContext`` (see :func:`tls_context`). ``stopping`` is set by
    :meth:`stop`: stalled responses wait on it. Started by the constructor unless
    ``start=False``.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        handler: type[BaseHTTPRequestHandler],
        owner: Any = None,
        *,
        tls: ssl.SSLContext | None = None,
        start: bool = True,
        log: RequestLog | None = None,
    ) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.owner = owner
        self.tls = tls
        self.log = log if log is not None else RequestLog()
        self.stopping = threading.Event()
        self.port = int(self.server_address[1])
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    def start(self) -> FakeServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake stalled answers and drop open connections."""
        self.stopping.set()
        if self._thread is not None:
            self.shutdown()
        with self._conn_lock:
            for conn in list(self._connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def finish_request(self, request: Any, client_address: Any) -> None:
        conn = request
        if self.tls is not None:
            request.settimeout(10)
            try:
                conn = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return  # e.g. a client that does not trust the CA: the handshake fails, the connection closes
            conn.settimeout(None)
        with self._conn_lock:
            self._connections.add(conn)
        try:
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            with self._conn_lock:
                self._connections.discard(conn)
            if conn is not request:
                with contextlib.suppress(OSError):
                    conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, ssl.SSLError)):  # hang-ups are normal
            super().handle_error(request, client_address)


class FakeHandler(BaseHTTPRequestHandler):
    """Base request handler of the fakes (see the module docstring)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes
    server: FakeServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def owner(self) -> Any:
        return self.server.owner

    def send(
        self,
        status: int,
        headers: Mapping[str, str] = {},
        body: bytes = b"",
        *,
        reason: str | None = None,
    ) -> int:
        """Answer ``status`` with ``headers`` and ``body`` (not sent for ``HEAD``); the bytes sent.

        ``Content-Length`` is the body's unless ``headers`` set it (or ``Transfer-Encoding``).
        """
        self.send_response(status, reason)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Length" not in headers and "Transfer-Encoding" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD" or not body:
            return 0
        try:
            self.wfile.write(body)
        except OSError:
            self.close_connection = True
            return 0
        return len(body)

    def read_body(self) -> bytes:
        """The request body, ``Content-Length`` or chunked."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def abort(self) -> None:
        """Drop the connection (mid-body: the client sees a short body or a reset)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def record(self, status: int = 0, body_bytes: int = 0, **tags: Any) -> Request:
        """Log this request in the server's :class:`RequestLog`."""
        parts = urlsplit(self.path)
        return self.server.log.add(
            Request(
                self.command,
                unquote(parts.path),
                parts.query,
                dict(self.headers.items()),
                status,
                body_bytes,
                tags=tags,
            )
        )

    def stream(
        self,
        body: bytes | memoryview | Any,
        faults: Iterable[Fault] = (),
        *,
        claim: Callable[[Fault], bool] = lambda fault: True,
        replace: Callable[[Fault], None] | None = None,
        wake: threading.Event | None = None,
        chunked: bool = False,
        chunk: int = CHUNK,
        counted: Callable[[int], None] | None = None,
        begun: Callable[[], None] | None = None,
    ) -> int:
        """Send ``body`` (anything sliceable into bytes), applying body ``faults``; the bytes sent.

        ``claim`` uses a fault up as it fires (``Faults.claim``); ``replace`` swaps the stored
        content for a "replace" fault; a stall waits on ``wake`` (default: the server
        stopping) and drops the connection when it was set. ``counted`` is told of every
        piece sent; ``begun``, once, just before the first body byte is written (after a
        stall at byte 0): the client cannot have the whole body before that moment.
        """
        pending = sorted(faults, key=lambda f: f.after_bytes)
        if any(f.kind == "corrupt" and claim(f) for f in pending):
            body = bytes(len(body))
        pending = [f for f in pending if f.kind in ("stall", "cut", "replace")]
        wake = wake if wake is not None else self.server.stopping
        total, sent = len(body), 0
        while True:
            while pending and pending[0].after_bytes <= sent:
                fault = pending.pop(0)
                if not claim(fault):
                    continue
                if fault.kind == "cut":
                    self.abort()
                    return sent
                if fault.kind == "stall":
                    with contextlib.suppress(OSError):
                        self.wfile.flush()
                    if wake.wait(fault.seconds) or not fault.resume:
                        self.abort()
                        return sent
                elif replace is not None:
                    replace(fault)
            if sent >= total:
                break
            limit = min(total, sent + chunk)
            if pending:
                limit = min(limit, max(pending[0].after_bytes, sent + 1))
            piece = bytes(body[sent:limit])
            if begun is not None and sent == 0:
                begun()
            try:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            except OSError:
                self.close_connection = True
                return sent
            sent += len(piece)
            if counted is not None:
                counted(len(piece))
        if chunked:
            with contextlib.suppress(OSError):
                self.wfile.write(b"0\r\n\r\n")
        return sent


_Service = TypeVar("_Service", bound="FakeService")


class FakeService:
    """A fake made of one or more :class:`FakeServer` listeners (a Hub and its CDN, a namenode
    and a datanode) sharing one :class:`RequestLog`, one set of :class:`Faults` and one
    ``_stopping`` event (set by :meth:`stop`: stalled answers wake up). A subclass creates
    its listeners with :meth:`_listen` and is started by :meth:`start` or ``with``.
    """

    def __init__(self) -> None:
        self._log = RequestLog()
        self._faults = Faults()
        self._stopping = threading.Event()
        self._listeners: list[FakeServer] = []

    def _listen(self, handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None) -> FakeServer:
        server = FakeServer(handler, self, tls=tls, start=False, log=self._log)
        self._listeners.append(server)
        return server

    @property
    def requests(self) -> list[Request]:
        """Every request, all listeners, in order."""
        return self._log.all()

    def reset_stats(self) -> None:
        self._log.clear()

    def clear_faults(self) -> None:
        self._faults.clear()

    def start(self: _Service) -> _Service:
        for server in self._listeners:
            server.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases stalled responses
        for server in self._listeners:
            server.stop()

    def __enter__(self: _Service) -> _Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
