"""The standard-library connection pool: keep-alive, stale connections, proxies, TLS, errors."""

from __future__ import annotations

import base64
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import trustme

from storage_initializer.errors import UsageError, network_error
from storage_initializer.httppool import NameNotResolvedError, Pool
from tests.servers.forward_proxy import ForwardProxy
from tests.servers.http_server import HttpFileServer

BODY = bytes(range(256)) * 512  # 128 KiB


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        owner.connections.add(self.client_address)
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
        # A server that drops idle connections without saying so (no "Connection: close").
        self.close_connection = owner.close_after_each


class CountingServer:
    """Serves BODY at every path; records each client connection (address, port)."""

    def __init__(self) -> None:
        self.connections: set[tuple[str, int]] = set()
        self.close_after_each = False
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.owner = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def counting() -> Iterator[CountingServer]:
    server = CountingServer()
    try:
        yield server
    finally:
        server.stop()


def _pool(base_url: str, **kw: Any) -> Pool:
    return Pool(base_url, ssl_context=kw.pop("ssl_context", None), connect_timeout=2, read_timeout=5, maxsize=4, **kw)


def test_one_connection_carries_every_request_in_turn(counting: CountingServer) -> None:
    pool = _pool(counting.url)
    for _ in range(5):
        response = pool.request("GET", "/model.bin", {"host": "x"})
        assert response.status == 200 and response.data == BODY
    assert len(counting.connections) == 1
    pool.close()


def test_a_connection_the_server_dropped_while_idle_is_replaced(counting: CountingServer) -> None:
    counting.close_after_each = True
    pool = _pool(counting.url)
    for _ in range(3):
        assert pool.request("GET", "/m", {}).data == BODY
    assert len(counting.connections) == 3


def test_a_body_left_unread_closes_its_connection_and_a_read_one_returns_it(counting: CountingServer) -> None:
    pool = _pool(counting.url)
    partial = pool.request("GET", "/m", {}, stream=True)
    assert partial.read(1000) == BODY[:1000]
    partial.release_conn()  # the rest of the body is unknown: not reusable
    whole = pool.request("GET", "/m", {}, stream=True)
    assert whole.read() == BODY
    whole.release_conn()
    assert pool.request("GET", "/m", {}).data == BODY
    assert len(counting.connections) == 2


def test_http_through_a_proxy_sends_absolute_urls_with_the_proxy_credentials(counting: CountingServer) -> None:
    proxy = ForwardProxy()
    try:
        host = proxy.url.removeprefix("http://")
        pool = _pool(counting.url, proxy=f"http://user:p%40ss@{host}")
        assert pool.request("GET", "/a/b?x=1", {}).data == BODY
        assert proxy.seen == [f"{counting.url}/a/b?x=1"]
        assert proxy.auth == ["Basic " + base64.b64encode(b"user:p@ss").decode()]
    finally:
        proxy.stop()


def test_https_through_a_proxy_is_tunnelled_and_verified() -> None:
    ca = trustme.CA()
    server = HttpFileServer(tls=ca)
    proxy = ForwardProxy()
    try:
        server.add("/weights.bin", BODY)
        context = ssl.create_default_context()
        ca.configure_trust(context)
        pool = _pool(server.url, ssl_context=context, proxy=proxy.url)
        response = pool.request("GET", "/weights.bin", {})
        assert (response.status, response.data) == (200, BODY)
        assert proxy.seen == [f"CONNECT 127.0.0.1:{server.port}"]  # the proxy saw no path, no header
        assert proxy.auth == [None]

        untrusting = _pool(server.url, ssl_context=ssl.create_default_context(), proxy=proxy.url)
        with pytest.raises(ssl.SSLCertVerificationError):
            untrusting.request("GET", "/weights.bin", {})
    finally:
        proxy.stop()
        server.stop()


def test_a_name_that_does_not_resolve_is_named() -> None:
    with pytest.raises(NameNotResolvedError) as caught:
        _pool("http://no-such-host.invalid:9000").request("GET", "/", {})
    error = network_error(caught.value, "http://no-such-host.invalid:9000")
    assert "DNS name no-such-host.invalid not found" in error.message and not error.retryable


def test_only_http_proxies_and_http_urls_are_accepted() -> None:
    with pytest.raises(UsageError, match=r"proxy https://proxy\.example is not supported"):
        _pool("http://127.0.0.1:1", proxy="https://proxy.example:443")
    with pytest.raises(UsageError, match="not an http"):
        _pool("ftp://127.0.0.1:1")
