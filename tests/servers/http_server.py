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
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _send_simple(self, status: int, text: str = "", headers: dict[str, str] | None = None) -> None:
        data = text.encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _serve(self, body: bool) -> None:
        srv = self.server.owner
        path = self.path.split("?", 1)[0]
        with srv.lock:
            srv.requests.append((self.command, self.path, dict(self.headers)))
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
            parsed = _parse_range(range_header, len(data))
            if parsed is None:
                self._send_simple(416, "", {"Content-Range": f"bytes */{len(data)}"})
                return
            start, end = parsed
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", options.content_type)
        if options.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if options.etag:
            self.send_header("ETag", etag)
        self.send_header("Last-Modified", last_modified)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        if options.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if not body:
            return
        if fault is not None and fault.hold_from is not None and start >= fault.hold_from:
            time.sleep(fault.hold_seconds)
        self._send_body(path, data, start, end, fault, options.chunked)

    def _send_body(self, path: str, data: bytes, start: int, end: int, fault: Fault | None, chunked: bool) -> None:
        srv = self.server.owner
        sent = 0
        view = memoryview(data)[start:end]
        step = 64 * 1024 if fault is not None else 1024 * 1024
        while sent < len(view):
            piece = view[sent : sent + step]
            if fault is not None:
                with srv.lock:
                    if fault.cut_after is not None and fault.cut_times > 0 and sent + len(piece) > fault.cut_after:
                        fault.cut_times -= 1
                        piece = piece[: max(fault.cut_after - sent, 0)]
                        if piece:  # an empty chunk would be a valid end of body
                            self._write(piece, chunked)
                        srv.bytes_sent += len(piece)
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    stall = (
                        fault.stall_after is not None
                        and fault.stall_times > 0
                        and sent + len(piece) > fault.stall_after
                    )
                    if stall:
                        fault.stall_times -= 1
                    replace = fault.replace_after is not None and srv.bytes_sent >= fault.replace_after
                    if replace and fault.replacement is not None:
                        srv.files[path] = fault.replacement
                        srv.mtimes[path] = srv.mtimes.get(path, 1_700_000_000) + 60
                        fault.replacement = None
                if stall:
                    time.sleep(fault.stall_seconds)
            try:
                self._write(piece, chunked)
            except (BrokenPipeError, ConnectionResetError):
                return
            with srv.lock:
                srv.bytes_sent += len(piece)
            sent += len(piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _write(self, piece: memoryview, chunked: bool) -> None:
        if chunked:
            self.wfile.write(f"{len(piece):x}\r\n".encode() + bytes(piece) + b"\r\n")
        else:
            self.wfile.write(piece)


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    if not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].partition("-")
    if first == "":
        length = int(last)
        return (max(size - length, 0), size) if length > 0 and size > 0 else None
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    if start >= size or start >= end:
        return None
    return start, end


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: HttpFileServer


class HttpFileServer:
    """The server: put files in ``files``, options in ``options``, faults in ``faults``."""

    def __init__(self, tls: Any = None) -> None:
        """``tls``: a ``trustme.CA`` to serve HTTPS with a certificate for 127.0.0.1."""
        self.files: dict[str, bytes] = {}
        self.options: dict[str, FileOptions] = {}
        self.faults: dict[str, Fault] = {}
        self.mtimes: dict[str, int] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.bytes_sent = 0
        self.lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        if tls is not None:
            import ssl

            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.issue_cert("127.0.0.1", "localhost").configure_cert(context)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.url = f"https://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def add(self, path: str, data: bytes, **options: Any) -> str:
        """Serve ``data`` at ``path``; return its URL."""
        self.files[path] = data
        if options:
            self.options[path] = FileOptions(**options)
        return self.url + path

    def reset_counters(self) -> None:
        with self.lock:
            self.requests.clear()
            self.bytes_sent = 0

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def http_server() -> Iterator[HttpFileServer]:
    server = HttpFileServer()
    try:
        yield server
    finally:
        server.stop()
