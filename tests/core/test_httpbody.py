"""HttpBody: body bytes that arrived with the headers are read first, however small the reads."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from storage_initializer.httpbody import HttpBody
from storage_initializer.httppool import Pool

BODY = b"0123456789" * 3


@pytest.fixture
def one_segment_server() -> Iterator[str]:
    """Answers every request with the head and the whole body in one send (one TCP segment)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(BODY)}\r\n\r\n".encode()
                conn.sendall(head + BODY)
                conn.recv(1)  # until the client closes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


@pytest.mark.parametrize("step", [1, 4, 7, 30, 64])
def test_reads_smaller_than_the_buffered_body_get_every_byte(one_segment_server: str, step: int) -> None:
    pool = Pool(one_segment_server, ssl_context=None, connect_timeout=2, read_timeout=2, maxsize=1)
    response = pool.request("GET", "/", {}, stream=True)
    got = b""
    with HttpBody(response, stall_timeout=2.0) as body:
        while chunk := body.read(step):
            got += chunk
    assert got == BODY
