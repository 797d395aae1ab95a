"""A fault-injecting TCP proxy on loopback, in front of a real server.

Each accepted connection may be given one fault, taken from a queue of
:class:`ProxyFault` s (or from a standing ``default`` fault):

* ``reset``: forward ``after_bytes`` of the answer, then reset (RST) both sides;
* ``stall``: forward ``after_bytes``, then send nothing for ``seconds``;
* ``status``: answer the first request with an HTTP ``status`` (and close),
  never reaching the server;
* ``slow``: forward the answer at ``rate`` bytes per second;
* ``flip``: invert byte ``after_bytes`` of the answer's *body* (counted from
  the end of the response head), a silent corruption that only a checksum sees;
* ``refuse``: see :meth:`FaultProxy.refuse` (the port stops listening until
  :meth:`FaultProxy.listen_again`) and :meth:`FaultProxy.refuse_for`.

Faults can be limited to connections whose first request line contains
``match`` (e.g. an object key), so a listing can pass while reads fail, and
spare those whose request head contains ``unless`` (e.g. an HTTP source's
``Range: bytes=0-0`` size probe), so the fault reaches a data read. The
proxy asks the server to close every connection after one answer, so each
request arrives on a connection of its own and meets the fault check.
Optionally terminates TLS with a ``trustme`` CA, to put a self-signed HTTPS
front on a plain-HTTP server. Counts connections and bytes relayed (a reset takes back
those the client never received).
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import socket
import ssl
import struct
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass
class ProxyFault:
    kind: str  # reset | stall | status | slow | flip
    times: int = 1  # how many connections get it (-1: every one)
    after_bytes: int = 0
    seconds: float = 0.0
    status: int = 503
    rate: int = 1_000_000
    match: str | None = None
    unless: str | None = None  # spare requests whose head contains this (case-insensitive)
    retry_after: str = "0"  # the Retry-After header of a ``status`` answer ("" for none)


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", tls: Any = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.faults: list[ProxyFault] = []
        self.lock = threading.Lock()
        self.connections = 0
        self.bytes_down = 0  # server -> client, as relayed
        self.injected: list[str] = []
        self.requests: list[tuple[float, str]] = []  # (monotonic time, first request line) per connection
        self.heads: list[str] = []  # the whole request head per connection (e.g. to read its Range)
        self.injected_at: list[tuple[float, str]] = []  # (monotonic time, first request line) per fault
        self.injected_heads: list[str] = []  # the request head of each fault's connection
        self._tls: ssl.SSLContext | None = None
        if tls is not None:
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.issue_cert("127.0.0.1", "localhost").configure_cert(self._tls)
        self._listener = self._listen(0)
        self._held: socket.socket | None = None  # the port, bound but not listening, while refusing
        self.port = self._listener.getsockname()[1]
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self._stopped = threading.Event()
        self._accepting = threading.Thread(target=self._accept_loop, daemon=True)
        self._accepting.start()

    # -- control -----------------------------------------------------------------
    def add(self, fault: ProxyFault) -> None:
        with self.lock:
            self.faults.append(fault)

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()

    def reset_counters(self) -> None:
        with self.lock:
            self.connections = 0
            self.bytes_down = 0
            self.injected.clear()

    def refuse(self) -> None:
        """Stop listening: connections are refused until :meth:`listen_again`. The port stays
        bound meanwhile (by a socket that does not listen), so no other process can take it."""
        with self.lock:
            listener, self._listener = self._listener, None  # type: ignore[assignment]
        if listener is None:
            return
        listener.close()
        # The accept loop's pending accept keeps the closed socket listening for up to its 0.2 s
        # timeout: the port is free to bind once that returned.
        deadline = time.monotonic() + 5
        while True:
            try:
                held = self._bind(self.port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        with self.lock:
            self._held = held

    def listen_again(self) -> None:
        """Accept connections again after :meth:`refuse`."""
        with self.lock:
            held, self._held = self._held, None
            if held is None or self._stopped.is_set():
                return
            held.listen(128)
            self._listener = held

    def refuse_for(self, seconds: float) -> None:
        """Stop listening (connections are refused) for ``seconds``, then listen again."""
        self.refuse()

        def reopen() -> None:
            time.sleep(seconds)
            self.listen_again()

        threading.Thread(target=reopen, daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
        with self.lock:
            listener, held = self._listener, self._held
        for sock in (listener, held):
            if sock is not None:
                sock.close()

    # -- plumbing -------------------------------------------------------------------
    @staticmethod
    def _bind(port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.settimeout(0.2)
        return sock

    @classmethod
    def _listen(cls, port: int) -> socket.socket:
        sock = cls._bind(port)
        sock.listen(128)
        return sock

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            with self.lock:
                listener = self._listener
            if listener is None:
                time.sleep(0.05)
                continue
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _take_fault(self, head: str) -> ProxyFault | None:
        """The fault this connection may suffer. ``status`` and ``slow`` apply at
        once; ``reset`` and ``stall`` are only claimed (counted) when they fire,
        so a connection whose answer is too short to reach ``after_bytes`` does
        not use one up."""
        first_line = head.split("\r\n", 1)[0]
        with self.lock:
            self.connections += 1
            self.requests.append((time.monotonic(), first_line))
            self.heads.append(head)
            for fault in self.faults:
                if fault.times == 0 or (fault.match and fault.match not in first_line):
                    continue
                if fault.unless and fault.unless.lower() in head.lower():
                    continue
                if fault.kind in ("status", "slow"):
                    self._claim_locked(fault, first_line, head)
                return fault
        return None

    def retry_gap(self, match: str) -> float:
        """Seconds between the first fault injected on a request containing ``match``
        and the next request containing it (how long the client waited to retry)."""
        with self.lock:
            injected = next(t for t, line in self.injected_at if match in line)
        return self.retried_at(match) - injected

    def retried_at(self, match: str) -> float:
        """When (``time.monotonic()``) the request after that first fault on ``match`` arrived."""
        with self.lock:
            injected = next(t for t, line in self.injected_at if match in line)
            return min(t for t, line in self.requests if t > injected and match in line)

    def range_resent_at(self, match: str) -> float:
        """When (``time.monotonic()``) the range of the first fault on ``match`` was asked for
        again: the next request for ``match`` whose ``Range`` ends where the faulted one's did (a
        retry continues from where the bytes stopped). Other ranges of the same object, asked
        for meanwhile by parallel streams, do not count. After a fault on a read of the whole
        object (no ``Range``), the next request for ``match`` counts."""

        def range_end(head: str) -> str | None:
            found = re.search(r"(?im)^range:\s*bytes=\d*-(\d*)", head)
            return found.group(1) if found else None

        with self.lock:
            i = next(i for i, (_, line) in enumerate(self.injected_at) if match in line)
            injected, end = self.injected_at[i][0], range_end(self.injected_heads[i])
            return min(
                t
                for (t, line), head in zip(self.requests, self.heads, strict=True)
                if t > injected and match in line and (end is None or range_end(head) == end)
            )

    def _claim_locked(self, fault: ProxyFault, what: str, head: str) -> bool:
        if fault.times == 0:
            return False
        if fault.times > 0:
            fault.times -= 1
        self.injected.append(f"{fault.kind}: {what}")
        self.injected_at.append((time.monotonic(), what))
        self.injected_heads.append(head)
        return True

    def _claim(self, fault: ProxyFault, head: str) -> bool:
        first_line = head.split("\r\n", 1)[0]
        with self.lock:
            return self._claim_locked(fault, f"after {fault.after_bytes} bytes of {first_line}", head)

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(None)
        client.setblocking(True)
        try:
            if self._tls is not None:
                client = self._tls.wrap_socket(client, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = client.recv(65536)
                if not chunk:
                    client.close()
                    return
                head += chunk
            fault = self._take_fault(head.decode("latin-1"))
            if fault is not None and fault.kind == "status":
                body = b"injected by the fault proxy"
                retry_after = f"Retry-After: {fault.retry_after}\r\n" if fault.retry_after else ""
                client.sendall(
                    f"HTTP/1.1 {fault.status} Injected\r\nContent-Length: {len(body)}\r\n"
                    f"{retry_after}Connection: close\r\nContent-Type: text/plain\r\n\r\n".encode()
                    + body
                )
                client.close()
                return
            upstream = socket.create_connection(self.upstream)
            upstream.sendall(_one_request_per_connection(head))
        except OSError:
            with contextlib.suppress(OSError):
                client.close()
            return
        threading.Thread(target=self._pump_up, args=(client, upstream), daemon=True).start()
        self._pump_down(upstream, client, fault, head.decode("latin-1"))

    def _pump_up(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            while chunk := client.recv(65536):
                upstream.sendall(chunk)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)

    def _pump_down(
        self, upstream: socket.socket, client: socket.socket, fault: ProxyFault | None, request_head: str
    ) -> None:
        sent = 0
        stalled = False
        head = bytearray()  # the response head, while a ``flip`` looks for the body's start
        body_at: int | None = None  # the answer's offset of its first body byte
        try:
            while True:
                chunk = upstream.recv(65536)
                if not chunk:
                    break
                if fault is not None and fault.kind == "flip":
                    if body_at is None and len(head) < 65536:
                        head += chunk
                        end = head.find(b"\r\n\r\n")
                        body_at = None if end < 0 else end + 4
                    at = None if body_at is None else body_at + fault.after_bytes - sent
                    if at is not None and 0 <= at < len(chunk) and self._claim(fault, request_head):
                        chunk = chunk[:at] + bytes([chunk[at] ^ 0xFF]) + chunk[at + 1 :]
                if fault is not None and fault.kind in ("reset", "stall") and not stalled:
                    room = fault.after_bytes - sent
                    if room < len(chunk) and self._claim(fault, request_head):
                        if room > 0:
                            client.sendall(chunk[:room])
                            self._count(room)
                            sent += room
                        if fault.kind == "reset":
                            self._uncount_unacked(client)
                            self._reset(client)
                            upstream.close()
                            return
                        stalled = True
                        time.sleep(fault.seconds)
                if fault is not None and fault.kind == "slow":
                    for start in range(0, len(chunk), max(fault.rate // 20, 1)):
                        piece = chunk[start : start + max(fault.rate // 20, 1)]
                        client.sendall(piece)
                        self._count(len(piece))
                        time.sleep(len(piece) / fault.rate)
                    sent += len(chunk)
                    continue
                client.sendall(chunk)
                self._count(len(chunk))
                sent += len(chunk)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                # shutdown first: close() alone sends no FIN while _pump_up still blocks in recv on
                # the socket, and the client would reuse a connection nobody answers any more.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()

    def _count(self, n: int) -> None:
        with self.lock:
            self.bytes_down += n

    def _uncount_unacked(self, sock: socket.socket) -> None:
        """Take back from ``bytes_down`` what the client's kernel has not acknowledged: a reset
        drops it unsent. (What it did acknowledge the client can still read before the reset.)
        Under load the client may lag behind by megabytes of socket buffers, all counted as
        relayed by ``sendall`` and lost with the reset."""
        if isinstance(sock, ssl.SSLSocket):
            return  # its queue holds TLS records, not the plain bytes counted
        try:
            unacked = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except OSError:
            return
        with self.lock:
            self.bytes_down -= unacked

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        # Linger 0 makes close() send an RST; shutting down the read side first
        # wakes the thread blocked in recv() on this socket, which would
        # otherwise keep it open (and the RST unsent).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)
        with contextlib.suppress(OSError):
            sock.close()


def _one_request_per_connection(head: bytes) -> bytes:
    """Ask the server to close after this answer, so clients cannot reuse the
    connection and every request passes the fault check at connection start."""
    first, _, rest = head.partition(b"\r\n")
    lines = [line for line in rest.split(b"\r\n") if not line.lower().startswith(b"connection:")]
    return b"\r\n".join([first, b"Connection: close", *lines])


@pytest.fixture
def fault_proxy_factory() -> Iterator[Any]:
    """``factory(upstream_port, tls=None) -> FaultProxy``; every proxy is stopped after the test."""
    proxies: list[FaultProxy] = []

    def factory(upstream_port: int, tls: Any = None) -> FaultProxy:
        proxy = FaultProxy(upstream_port, tls=tls)
        proxies.append(proxy)
        return proxy

    yield factory
    for proxy in proxies:
        proxy.stop()
