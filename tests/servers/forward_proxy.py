"""A minimal forwarding HTTP proxy (absolute-URI GET), recording what it relays.

Enough to prove that ``HTTP_PROXY`` / ``NO_PROXY`` are honoured: requests
sent through it appear in ``proxy.seen``.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.servers.base import FakeHandler, FakeServer


class _Handler(FakeHandler):
    def do_GET(self) -> None:
        self.owner.seen.append(self.path)
        target = urlsplit(self.path)
        upstream = http.client.HTTPConnection(target.hostname or "", target.port or 80, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")}
        upstream.request("GET", target.path + (f"?{target.query}" if target.query else ""), headers=headers)
        response = upstream.getresponse()
        body = response.read()
        skip = ("transfer-encoding", "connection", "content-length")
        self.send(response.status, {k: v for k, v in response.getheaders() if k.lower() not in skip}, body)
        upstream.close()


class ForwardProxy:
    def __init__(self) -> None:
        self.seen: list[str] = []
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
