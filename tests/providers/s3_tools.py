"""Small network helpers for the s3 provider's configuration tests (not S3 servers).

* :class:`RecordingProxy`: a threaded HTTP proxy in front of a real S3 server.
  As a forward proxy (``HTTP_PROXY``) it shows the Host a request was meant
  for (virtual-hosted vs path-style); as a reverse proxy (``AWS_ENDPOINT_URL``)
  it records every request and can answer the next ones with an injected
  error; with an ``ssl.SSLContext`` it is a TLS front for CA-bundle tests.
  Requests are forwarded byte-for-byte (Host included), so SigV4 signatures
  stay valid.
* :class:`StallingServer`: accepts connections and never answers (read timeouts).
* :func:`unanswered_port`: a port whose accept queue is full, so a connect hangs
  (connect timeouts).
* :class:`FakeSts`: answers ``AssumeRoleWithWebIdentity`` with given keys, the
  only way to run IRSA end to end here (moto's unsigned STS calls fail when its
  authentication is on).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from tests.servers.base import FakeHandler, FakeServer, Fault, Faults

_HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "proxy-authorization", "te", "upgrade"}


@dataclass
class Recorded:
    method: str
    target: str  # the request-target as received (absolute-form through a forward proxy)
    host: str
    headers: dict[str, str]  # names in lower case


class RecordingProxy:
    """An HTTP(S) proxy to ``upstream`` (``http://127.0.0.1:PORT``) that records requests."""

    def __init__(self, upstream: str, *, tls: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.requests: list[Recorded] = []
        self._faults = Faults()
        self._lock = threading.Lock()
        proxy = self

        class Handler(FakeHandler):
            disable_nagle_algorithm = False

            def _handle(self) -> None:
                body = self.read_body() or None
                headers = {k.lower(): v for k, v in self.headers.items()}
                with proxy._lock:
                    proxy.requests.append(Recorded(self.command, self.path, self.headers.get("Host", ""), headers))
                fault = proxy._faults.take(None, ("status",))
                if fault is not None:
                    self.send(fault.status, fault.error, fault.data)
                    return
                target = self.path
                if "://" in target:  # absolute-form (forward proxy): send origin-form upstream
                    split = urlsplit(target)
                    target = split.path + (f"?{split.query}" if split.query else "")
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    upstream.putrequest(self.command, target, skip_host=True, skip_accept_encoding=True)
                    for name, value in self.headers.items():
                        if name.lower() not in _HOP_BY_HOP:
                            upstream.putheader(name, value)
                    upstream.endheaders(body)
                    response = upstream.getresponse()
                    self.send_response_only(response.status, response.reason)
                    for name, value in response.getheaders():
                        if name.lower() not in _HOP_BY_HOP and name.lower() != "transfer-encoding":
                            self.send_header(name, value)
                    data = response.read()
                    if response.getheader("Content-Length") is None and self.command != "HEAD":
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    upstream.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

        self._server = FakeServer(Handler, self, tls=tls)
        self.port = self._server.port
        self.url = self._server.url

    def fail_next(self, count: int, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        """Answer the next ``count`` requests with ``status`` and ``body`` instead of forwarding them."""
        self._faults.add(Fault("status", status=status, times=count, data=body, error=dict(headers or {})))

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> RecordingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class StallingServer:
    """Accepts connections and reads requests, but never answers."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(16)
        self.port = int(self._socket.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self._socket.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._socket.accept()
            except (TimeoutError, OSError):
                continue
            self._held.append(conn)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self._held:
            conn.close()
        self._socket.close()

    def __enter__(self) -> StallingServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A listening port whose accept queue is full: new connections hang in SYN_SENT."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = int(server.getsockname()[1])
    filler = socket.create_connection(("127.0.0.1", port))  # takes the only queue slot
    try:
        yield port
    finally:
        filler.close()
        server.close()


class FakeSts:
    """Answers STS ``AssumeRoleWithWebIdentity`` (form-encoded POST) with fixed credentials."""

    def __init__(self, access_key: str, secret_key: str, session_token: str = "") -> None:
        self.calls: list[dict[str, str]] = []
        sts = self

        class Handler(FakeHandler):
            def do_POST(self) -> None:
                form = {k: v[0] for k, v in parse_qs(self.read_body().decode()).items()}
                sts.calls.append(form)
                body = (
                    '<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
                    "<AssumeRoleWithWebIdentityResult><Credentials>"
                    f"<AccessKeyId>{access_key}</AccessKeyId><SecretAccessKey>{secret_key}</SecretAccessKey>"
                    f"<SessionToken>{session_token}</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration>"
                    "</Credentials><SubjectFromWebIdentityToken>system:serviceaccount:models:sa"
                    "</SubjectFromWebIdentityToken></AssumeRoleWithWebIdentityResult>"
                    "<ResponseMetadata><RequestId>fake</RequestId></ResponseMetadata>"
                    "</AssumeRoleWithWebIdentityResponse>"
                ).encode()
                self.send(200, {"Content-Type": "text/xml"}, body)

        self._server = FakeServer(Handler, self)
        self.url = self._server.url

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> FakeSts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
