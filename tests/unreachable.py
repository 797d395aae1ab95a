"""Shared helpers for "the server cannot be reached" tests: a port nothing listens on, a host
name that never resolves, a TLS server nobody trusts, and the checks of the error a user reads.

Every provider's test of connection errors uses these (``tests/providers/test_unreachable.py``
runs the real command of each provider against all three), so the rule they check is the one
rule of ``storage_initializer.errors.network_error``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trustme

from storage_initializer import connect
from tests.servers.http_server import HttpFileServer

#: RFC 2606: a name under .invalid never resolves (NXDOMAIN), on any resolver.
INVALID_HOST = "model-store.invalid"
#: Words every refused-connection error carries.
REFUSED = "connection refused"
DNS_NOT_FOUND = f"DNS name {INVALID_HOST} not found"
TLS_FAILED = "TLS verification failed"


@contextmanager
def refused_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections while the block runs: a socket holds it
    bound without listening, so no other server can take it meanwhile (a port that was only
    picked, then let go, could be taken and answered by another process's server)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])


def error_lines(stderr: str) -> list[str]:
    """The ``ERROR`` lines of the command's stderr."""
    return [line for line in stderr.splitlines() if " ERROR " in line]


@contextmanager
def untrusted_https() -> Iterator[str]:
    """``host:port`` of an HTTPS server whose certificate is signed by a CA nobody trusts."""
    server = HttpFileServer(tls=trustme.CA())
    try:
        server.add("/probe", b"")
        yield f"127.0.0.1:{server.port}"
    finally:
        server.stop()


@pytest.fixture
def short_refused_retry(monkeypatch: pytest.MonkeyPatch) -> float:
    """In-process tests: refused connections are retried for 0.3 s instead of seconds."""
    monkeypatch.setattr(connect, "REFUSED_RETRY_SECONDS", 0.3)
    return 0.3
