"""Why a server cannot be reached, in the words a user can act on, and what is retried.

A DNS name that does not exist and an untrusted certificate cannot heal by retrying:
the command says which one it was and fails at once. A refused connection is tried
again for a few seconds only (a server restarting heals within them, a wrong port
never does; tests/reliability/test_faults.py::test_refused_connections_are_retried
covers the first case). A timeout is retried.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from storage_initializer.connect import retry_refused
from storage_initializer.errors import StorageInitializerError, TransientError, classify, network_error
from tests.cli import run_cli
from tests.servers.http_server import HttpFileServer
from tests.unreachable import refused_port


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line]


@pytest.fixture
def https_server() -> Iterator[HttpFileServer]:
    server = HttpFileServer(tls=trustme.CA())  # a CA nobody trusts: its root is self-signed
    try:
        yield server
    finally:
        server.stop()


def test_a_refused_connection_says_so_and_fails_within_seconds(tmp_path: Path) -> None:
    with refused_port() as port:
        url = f"http://127.0.0.1:{port}/model.bin"
        started = time.monotonic()
        result = run_cli(["-v", url, str(tmp_path / "out")])
    assert result.returncode == 1
    (error,) = _error_lines(result.stderr)
    assert f"failed to download {url} to {tmp_path / 'out'}: cannot reach 127.0.0.1:{port}: connection refused" in error
    assert "check the port and that the server is running" in error
    assert "retrying" not in result.stderr  # not the engine's budget of tens of seconds
    assert 2.0 < time.monotonic() - started < 10  # retry_refused's few seconds
    assert f"DEBUG connection to {url} refused; trying again in 0.2s" in result.stderr
    assert result.stderr.splitlines()[-1] == _error_lines(result.stderr)[-1]


def test_an_unknown_host_is_a_dns_error_not_retried(tmp_path: Path) -> None:
    url = "http://model-store.invalid/model.bin"  # RFC 2606: never resolves
    result = run_cli([url, str(tmp_path / "out")])
    assert result.returncode == 1
    (error,) = _error_lines(result.stderr)
    assert "cannot reach model-store.invalid:80: DNS name model-store.invalid not found" in error
    assert "usually a typo" in error
    assert "retrying" not in result.stderr


def test_an_untrusted_certificate_names_the_ca_problem(tmp_path: Path, https_server: HttpFileServer) -> None:
    url = https_server.add("/m.bin", b"secure")
    result = run_cli([url, str(tmp_path / "out")])
    assert result.returncode == 1
    (error,) = _error_lines(result.stderr)
    assert "TLS verification failed (unable to get local issuer certificate)" in error
    assert "REQUESTS_CA_BUNDLE" in error and "retrying" not in result.stderr


def test_wrapped_socket_errors_are_found_in_the_chain() -> None:
    """SDKs wrap the socket error (requests -> urllib3 -> socket; botocore keeps it in kwargs)."""

    class EndpointConnectionError(Exception):  # botocore's shape: the cause in kwargs["error"]
        def __init__(self, **kwargs: object) -> None:
            super().__init__("Could not connect to the endpoint URL")
            self.kwargs = kwargs

    class MaxRetryError(Exception):  # urllib3's shape: the cause in .reason
        def __init__(self, reason: BaseException) -> None:
            super().__init__("Max retries exceeded")
            self.reason = reason

    nxdomain = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    dns = network_error(EndpointConnectionError(error=nxdomain), "https://s3.example")
    assert not dns.retryable and "DNS name not found" in str(dns)
    again = network_error(MaxRetryError(socket.gaierror(socket.EAI_AGAIN, "Temporary failure")))
    assert isinstance(again, TransientError) and "DNS lookup failed" in str(again)
    refused = classify(MaxRetryError(ConnectionRefusedError(111, "Connection refused")))
    assert not refused.retryable and "connection refused" in str(refused)
    cert = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cert.verify_message = "certificate has expired"
    tls = network_error(MaxRetryError(cert), "https://x", ca_hint="set AWS_CA_BUNDLE")
    assert (
        type(tls) is StorageInitializerError and "(certificate has expired)" in str(tls) and "AWS_CA_BUNDLE" in str(tls)
    )
    cut = classify(MaxRetryError(ssl.SSLEOFError(8, "EOF occurred in violation of protocol")))
    assert cut.retryable  # a TLS connection cut mid-body heals like any other
    wrong = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    wrong.reason = "WRONG_VERSION_NUMBER"
    assert not classify(MaxRetryError(wrong)).retryable and "http:// against https://" in str(classify(wrong))
    timeout = classify(MaxRetryError(TimeoutError("timed out")))
    assert timeout.retryable and "timed out" in str(timeout)
    assert classify(ConnectionResetError()).retryable


def test_retry_refused_rides_out_a_restart_and_nothing_else() -> None:
    attempts: list[float] = []

    def restarting() -> str:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise ConnectionRefusedError(111, "Connection refused")
        return "answer"

    assert retry_refused(restarting, "server") == "answer" and len(attempts) == 3

    def broken() -> str:
        attempts.append(time.monotonic())
        raise ConnectionResetError(104, "Connection reset by peer")

    attempts.clear()
    with pytest.raises(ConnectionResetError):
        retry_refused(broken, "server")
    assert len(attempts) == 1  # other errors are the engine's to retry

    def down() -> str:
        raise ConnectionRefusedError(111, "Connection refused")

    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        retry_refused(down, "server", budget=0.5)
    assert time.monotonic() - started < 1.0


def test_tools_that_keep_only_text_are_read_by_their_words() -> None:
    """curl and the git command line report the cause as text only (no exception chain)."""
    dns = network_error(OSError("unable to access 'https://x.invalid/r.git/': Could not resolve host: x.invalid"))
    assert not dns.retryable and "DNS name x.invalid not found" in str(dns)
    refused = network_error(OSError("Failed to connect to 127.0.0.1 port 1 after 0 ms: Connection refused"), "git")
    assert not refused.retryable and str(refused).startswith("cannot reach git: connection refused")
    tls = network_error(OSError("SSL certificate problem: self-signed certificate in certificate chain"), ca_hint="X")
    assert not tls.retryable and "TLS verification failed (SSL certificate problem: self-signed" in str(tls)
    assert tls.hint == "X"
    reset = network_error(OSError("Recv failure: Connection reset by peer"), hint="check the proxy")
    assert reset.retryable and reset.hint == "check the proxy"


def test_a_full_disk_is_never_called_a_network_error() -> None:
    error = classify(OSError(28, "No space left on device"))
    assert "network" not in error.message and "No space left" in error.message and not error.retryable
