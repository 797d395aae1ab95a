"""A minimal forwarding HTTP proxy (absolute-URI GET, and CONNECT tunnels), recording what it relays.

Enough to prove that ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``NO_PROXY`` are
honoured: requests sent through it appear in ``proxy.seen`` (``CONNECT
host:port`` for a tunnel), each with its ``Proxy-Authorization`` in
``proxy.auth``.
"""

from __future__ import annotations

import http.client
import select
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.servers.base import FakeHandler, FakeServer


class _Handler(FakeHandler):
    def do_GET(self) -> None:
        self.owner.seen.append(self.path)
        self.owner.auth.append(self.headers.get("Proxy-Authorization"))
        target = urlsplit(self.path)
        upstream = http.client.HTTPConnection(target.hostname or "", target.port or 80, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")}
        upstream.request("GET", target.path + (f"?{target.query}" if target.query else ""), headers=headers)
        response = upstream.getresponse()
        body = response.read()
        skip = ("transfer-encoding", "connection", "content-length")
        self.send(response.status, {k: v for k, v in response.getheaders() if k.lower() not in skip}, body)
        upstream.close()

    def do_CONNECT(self) -> None:
        self.owner.seen.append(f"CONNECT {self.path}")
        self.owner.auth.append(self.headers.get("Proxy-Authorization"))
        host, _, port = self.path.rpartition(":")
        try:
            upstream = socket.create_connection((host, int(port)), timeout=30)
        except OSError:
            self.send_error(502)
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        sockets = [self.connection, upstream]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 30)
                if not readable:
                    break
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (upstream if source is self.connection else self.connection).sendall(data)
        except OSError:
            pass
        finally:
            upstream.close()
            self.close_connection = True


class ForwardProxy:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.auth: list[str | None] = []
        self._server = FakeServer(_Handler, self)
        self.url = self._server.url

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture
def forward_proxy() -> Iterator[ForwardProxy]:
    proxy = ForwardProxy()
    try:
        yield proxy
    finally:
        proxy.stop()
