"""A real threaded HTTP/1.1 file server for tests, with Range and fault modes.

Serves an in-memory tree of files (``server.files[path] = bytes``) over
keep-alive HTTP/1.1 on 127.0.0.1 with the semantics of a static file server:
``GET``/``HEAD``, single byte ranges (206 + ``Content-Range``, 416 when
unsatisfiable), strong ``ETag`` and ``Last-Modified``, ``If-Match`` (412) and
``If-Range``. Per-path options add redirects, required headers (auth), no
range support, and faults: cut the connection after N bytes, stall, answer
5xx/429 a few times, or replace the content after N bytes were served.
Counters record requests and body bytes sent, so tests can prove that a
resumed download fetched only what was missing.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import pytest

from tests.servers.base import (
    UNSATISFIABLE,
    FakeHandler,
    FakeServer,
    RequestLog,
    content_range,
    parse_range,
    tls_context,
)
from tests.servers.base import Fault as BodyFault


@dataclass
class Fault:
    """Misbehaviour of one path. Counters decrement as faults fire."""

    status_codes: list[int] = field(default_factory=list)  # answered in order, then normal...
    status_skip: int = 0  # ...once this many requests were served normally (1: spare the size probe)
    cut_after: int | None = None  # close the connection after this many body bytes...
    cut_times: int = 0  # ...this many times
    stall_after: int | None = None  # stop sending after this many body bytes...
    stall_seconds: float = 0.0  # ...for this long
    stall_times: int = 0
    replace_after: int | None = None  # serve this many bytes, then swap the content
    replacement: bytes | None = None
    hold_from: int | None = None  # responses starting at or after this offset...
    hold_seconds: float = 0.0  # ...wait this long before the body (a stuck download)
    ignore_range_times: int = 0  # answer this many ranges not starting at 0 with the whole file (200)


@dataclass
class FileOptions:
    ranges: bool = True
    etag: bool = True
    content_type: str = "application/octet-stream"
    require_headers: dict[str, str] = field(default_factory=dict)
    redirect_to: str | None = None  # path on this server (or absolute URL)
    chunked: bool = False


class _Handler(FakeHandler):
    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _send_simple(self, status: int, text: str = "", headers: dict[str, str] | None = None) -> None:
        self.send(status, {**(headers or {}), "Content-Type": "text/plain"}, text.encode())

    def _serve(self, body: bool) -> None:
        srv: HttpFileServer = self.owner
        path = self.path.split("?", 1)[0]
        self.record()
        with srv.lock:
            options = srv.options.get(path, FileOptions())
            fault = srv.faults.get(path)
            data = srv.files.get(path)
            status_fault = None
            if fault and fault.status_codes:
                if fault.status_skip > 0:
                    fault.status_skip -= 1
                else:
                    status_fault = fault.status_codes.pop(0)
            wanted = self.headers.get("Range") or ""
            ignore_range = bool(fault and fault.ignore_range_times > 0 and wanted and not wanted.startswith("bytes=0-"))
            if fault and ignore_range:
                fault.ignore_range_times -= 1
        for name, value in options.require_headers.items():
            if self.headers.get(name) != value:
                self._send_simple(401 if name.lower() == "authorization" else 403, "unauthorized")
                return
        if options.redirect_to is not None:
            target = options.redirect_to
            if target.startswith("/"):
                target = f"{srv.url}{target}"
            self._send_simple(302, "", {"Location": target})
            return
        if status_fault is not None:
            self._send_simple(status_fault, "injected fault", {"Retry-After": "0"})
            return
        if data is None:
            self._send_simple(404, "not found")
            return
        etag = '"' + hashlib.md5(data).hexdigest() + '"'
        last_modified = formatdate(srv.mtimes.get(path, 1_700_000_000), usegmt=True)
        if_match = self.headers.get("If-Match")
        if if_match and options.etag and if_match != "*" and if_match != etag:
            self._send_simple(412, "precondition failed")
            return
        start, end = 0, len(data)
        status = 200
        range_header = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if range_header and options.ranges and not ignore_range and (if_range is None or if_range == etag):
            parsed = parse_range(range_header, len(data), malformed="unsatisfiable")
            if parsed == UNSATISFIABLE or parsed is None:
                self._send_simple(416, "", {"Content-Range": f"bytes */{len(data)}"})
                return
            start, end = parsed
            status = 206
        headers = {"Content-Type": options.content_type}
        if options.ranges:
            headers["Accept-Ranges"] = "bytes"
        if options.etag:
            headers["ETag"] = etag
        headers["Last-Modified"] = last_modified
        if status == 206:
            headers["Content-Range"] = content_range(start, end, len(data))
        if options.chunked:
            headers["Transfer-Encoding"] = "chunked"
        else:
            headers["Content-Length"] = str(end - start)
        self.send(status, headers)
        if not body:
            return
        if fault is not None and fault.hold_from is not None and start >= fault.hold_from:
            time.sleep(fault.hold_seconds)
        self._send_body(path, memoryview(data)[start:end], fault, options.chunked)

    def _send_body(self, path: str, view: memoryview, fault: Fault | None, chunked: bool) -> None:
        srv: HttpFileServer = self.owner
        faults: list[BodyFault] = []
        if fault is not None and fault.cut_after is not None:
            faults.append(BodyFault("cut", after_bytes=fault.cut_after))
        if fault is not None and fault.stall_after is not None:
            faults.append(BodyFault("stall", after_bytes=fault.stall_after, seconds=fault.stall_seconds, resume=True))

        def claim(body_fault: BodyFault) -> bool:
            """Use up one of the path's cuts or stalls (they count down as they fire)."""
            assert fault is not None
            with srv.lock:
                if body_fault.kind == "cut" and fault.cut_times > 0:
                    fault.cut_times -= 1
                    return True
                if body_fault.kind == "stall" and fault.stall_times > 0:
                    fault.stall_times -= 1
                    return True
            return False

        def counted(n: int) -> None:
            with srv.lock:
                srv.bytes_sent += n
                if fault is None or fault.replace_after is None or fault.replacement is None:
                    return
                if srv.bytes_sent >= fault.replace_after:
                    srv.files[path] = fault.replacement
                    srv.mtimes[path] = srv.mtimes.get(path, 1_700_000_000) + 60
                    fault.replacement = None

        chunk = 64 * 1024 if fault is not None else 1024 * 1024
        self.stream(view, faults, claim=claim, chunked=chunked, chunk=chunk, counted=counted, wake=_NEVER)


#: Stalls here last their whole time (the server stopping does not cut them short).
_NEVER = threading.Event()


class HttpFileServer:
    """The server: put files in ``files``, options in ``options``, faults in ``faults``."""

    def __init__(self, tls: Any = None) -> None:
        """``tls``: a ``trustme.CA`` to serve HTTPS with a certificate for 127.0.0.1."""
        self.files: dict[str, bytes] = {}
        self.options: dict[str, FileOptions] = {}
        self.faults: dict[str, Fault] = {}
        self.mtimes: dict[str, int] = {}
        self.requests = RequestLog()  # every request: method, path (and raw_query), headers
        self.bytes_sent = 0
        self.lock = threading.Lock()
        self._server = FakeServer(_Handler, self, tls=None if tls is None else tls_context(tls), log=self.requests)
        self.port = self._server.port
        self.url = self._server.url

    def add(self, path: str, data: bytes, **options: Any) -> str:
        """Serve ``data`` at ``path``; return its URL."""
        self.files[path] = data
        if options:
            self.options[path] = FileOptions(**options)
        return self.url + path

    def reset_counters(self) -> None:
        self.requests.clear()
        with self.lock:
            self.bytes_sent = 0

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture
def http_server() -> Iterator[HttpFileServer]:
    server = HttpFileServer()
    try:
        yield server
    finally:
        server.stop()
