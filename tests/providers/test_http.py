"""http(s):// specifics: TLS and CA bundles, proxies, headers, names, redirects."""

from __future__ import annotations

import base64
import email.utils
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.cli import clean_env, run_cli, tree
from tests.servers.fault_proxy import ProxyFault
from tests.servers.forward_proxy import ForwardProxy
from tests.servers.http_server import HttpFileServer


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def https_server(ca: trustme.CA) -> Iterator[HttpFileServer]:
    server = HttpFileServer(tls=ca)
    try:
        yield server
    finally:
        server.stop()


def test_tls_is_verified_by_default(tmp_path: Path, https_server: HttpFileServer) -> None:
    url = https_server.add("/m.bin", b"secure")
    result = run_cli([url, str(tmp_path / "out")])
    assert result.returncode == 1
    assert "TLS verification failed" in result.stderr and "REQUESTS_CA_BUNDLE" in result.stderr
    assert tree(tmp_path / "out") == {}


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"])
def test_a_custom_ca_bundle_works(tmp_path: Path, https_server: HttpFileServer, ca: trustme.CA, variable: str) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    data = os.urandom(3 * 1024 * 1024)
    url = https_server.add("/m.bin", data)
    result = run_cli(
        [url, str(tmp_path / "out")],
        {variable: str(bundle), "STORAGE_INITIALIZER_PART_SIZE": "1M", "STORAGE_INITIALIZER_MULTIPART_THRESHOLD": "1M"},
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out/m.bin").read_bytes() == data


def test_disabling_verification_logs_a_warning(tmp_path: Path, https_server: HttpFileServer) -> None:
    url = https_server.add("/m.bin", b"insecure")
    result = run_cli([url, str(tmp_path / "out")], {"STORAGE_INITIALIZER_HTTP_VERIFY_SSL": "false"})
    assert result.returncode == 0, result.stderr
    assert "TLS certificate verification is disabled" in result.stderr


def test_proxy_variables_are_honoured(tmp_path: Path, http_server: HttpFileServer, forward_proxy: ForwardProxy) -> None:
    url = http_server.add("/via/proxy.bin", b"proxied")
    result = run_cli([url, str(tmp_path / "a")], {"HTTP_PROXY": forward_proxy.url})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a/proxy.bin").read_bytes() == b"proxied"
    assert forward_proxy.seen and all(path == url for path in forward_proxy.seen)
    forward_proxy.seen.clear()
    bypass = run_cli([url, str(tmp_path / "b")], {"http_proxy": forward_proxy.url, "NO_PROXY": "127.0.0.1"})
    assert bypass.returncode == 0, bypass.stderr
    assert forward_proxy.seen == []


def test_headers_from_the_host_variable_are_sent(tmp_path: Path, http_server: HttpFileServer) -> None:
    url = http_server.add("/auth/m.bin", b"private", require_headers={"X-Api-Key": "k-123456"})
    denied = run_cli([url, str(tmp_path / "a")])
    assert denied.returncode == 1 and "HTTP 403" in denied.stderr
    allowed = run_cli([url, str(tmp_path / "b")], {"127.0.0.1-headers": '{"X-Api-Key": "k-123456"}'})
    assert allowed.returncode == 0, allowed.stderr
    bad = run_cli([url, str(tmp_path / "c")], {"127.0.0.1-headers": "not json"})
    assert bad.returncode == 2 and "127.0.0.1-headers is not valid JSON" in bad.stderr


def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_logged(
    tmp_path: Path, http_server: HttpFileServer
) -> None:
    data = os.urandom(3 * 1024 * 1024)
    basic = "Basic " + base64.b64encode(b"alice:s3cr3t-pw").decode()
    url = http_server.add("/private/m.bin", data, require_headers={"Authorization": basic})
    denied = run_cli([url, str(tmp_path / "a")])
    assert denied.returncode == 1 and "HTTP 401" in denied.stderr
    with_creds = url.replace("http://", "http://alice:s3cr3t-pw@")
    parts = {"STORAGE_INITIALIZER_PART_SIZE": "1M", "STORAGE_INITIALIZER_MULTIPART_THRESHOLD": "1M"}
    result = run_cli(["-v", with_creds, str(tmp_path / "b")], parts)
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "b") == {"m.bin": data}
    assert len(http_server.requests) > 3  # the probe and the ranged parts, each authorised
    assert "s3cr3t-pw" not in result.stderr and basic.split()[1] not in result.stderr


def test_a_plain_download_does_not_import_requests(tmp_path: Path, http_server: HttpFileServer) -> None:
    """``requests`` costs ~45 ms of a pod's start: the probe and the bytes go without it."""
    url = http_server.add("/fast/m.bin", b"tiny model")
    code = (
        "import sys\n"
        "from storage_initializer.cli import start\n"
        f"status = start([{url!r}, {str(tmp_path / 'out')!r}])\n"
        "print(status, sorted({'requests', 'urllib3'} & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=clean_env(None), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert tree(tmp_path / "out") == {"m.bin": b"tiny model"}
    assert done.stdout.strip() == "0 []"


def test_redirects_are_followed_and_names_come_from_the_url(tmp_path: Path, http_server: HttpFileServer) -> None:
    http_server.add("/cdn/blob-7f3a", b"redirected bytes")
    url = http_server.add("/models/my%20model.onnx", b"", redirect_to="/cdn/blob-7f3a")
    result = run_cli([url + "?download=1", str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == {"my model.onnx": b"redirected bytes"}


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("http://127.0.0.1:99999/m.bin", "invalid port"),
        ("http:///m.bin", "is not an http(s) URL"),
        ("http://127.0.0.1:8080/", "no file name"),
    ],
)
def test_malformed_urls_are_usage_errors(tmp_path: Path, uri: str, message: str) -> None:
    result = run_cli([uri, str(tmp_path / "out")])
    assert result.returncode == 2
    assert message in result.stderr


def test_unreachable_server_fails_with_the_cause(tmp_path: Path) -> None:
    result = run_cli(
        ["http://127.0.0.1:9/m.bin", str(tmp_path / "out")],
        {"STORAGE_INITIALIZER_RETRIES": "1", "STORAGE_INITIALIZER_RETRY_BACKOFF": "0.05"},
    )
    assert result.returncode == 1
    assert "cannot reach 127.0.0.1:9: connection refused" in result.stderr
    assert "retrying" not in result.stderr  # nothing listens there: a retry cannot help


def test_an_empty_file_is_downloaded(tmp_path: Path, http_server: HttpFileServer) -> None:
    """A static server answers the size probe (``Range: bytes=0-0``) of an empty file with
    416 ``bytes */0``, as nginx and S3 do: the file is empty, not an error."""
    url = http_server.add("/empty.txt", b"")
    result = run_cli([url, str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == {"empty.txt": b""}


@pytest.mark.parametrize("other_host", ["localhost", "127.0.0.1"])
def test_headers_stay_with_their_host_across_redirects(
    tmp_path: Path, http_server: HttpFileServer, other_host: str
) -> None:
    """``<hostname>-headers`` are credentials for that host: a redirect to another origin (a
    CDN, a presigned store URL) must not carry them, whatever their names."""
    cdn = HttpFileServer()
    try:
        data = os.urandom(3 * 1024 * 1024)
        target = cdn.url.replace("127.0.0.1", other_host) + "/blob-7f3a"
        cdn.add("/blob-7f3a", data)
        url = http_server.add("/m.bin", b"", redirect_to=target, require_headers={"X-Api-Key": "k-123456"})
        headers = '{"X-Api-Key": "k-123456", "Authorization": "Bearer tok-abcdef", "Cookie": "session=s-98765"}'
        result = run_cli(
            [url, str(tmp_path / "out")],
            {
                "127.0.0.1-headers": headers,
                "STORAGE_INITIALIZER_PART_SIZE": "1M",
                "STORAGE_INITIALIZER_MULTIPART_THRESHOLD": "1M",
            },
        )
        assert result.returncode == 0, result.stderr
        assert tree(tmp_path / "out") == {"m.bin": data}
        assert len(cdn.requests) > 1  # the probe and the ranged parts
        for request in cdn.requests:
            names = {name.lower() for name in request.headers}
            assert not names & {"x-api-key", "authorization", "cookie"}, request.headers
        # The origin itself got them on every request.
        assert all(r.header("X-Api-Key") == "k-123456" for r in http_server.requests)
    finally:
        cdn.stop()


# -- Retry-After ---------------------------------------------------------------------------------
def _retry_after_env() -> dict[str, str]:
    # Without Retry-After the engine would retry within 0.05 s.
    return {"STORAGE_INITIALIZER_RETRY_BACKOFF": "0.05", "STORAGE_INITIALIZER_RETRIES": "3"}


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_is_honoured(
    tmp_path: Path, http_server: HttpFileServer, fault_proxy_factory: Any, status: int
) -> None:
    http_server.add("/ra/model.bin", b"m" * 300_000)
    proxy = fault_proxy_factory(http_server.port)
    # The data read (not the size probe) is answered "come back in 2 s".
    proxy.add(ProxyFault("status", status=status, retry_after="2", match="model.bin", unless="bytes=0-0"))
    result = run_cli([f"{proxy.url}/ra/model.bin", str(tmp_path / "out")], _retry_after_env())
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == {"model.bin": b"m" * 300_000}
    assert proxy.injected and "retrying" in result.stderr
    assert proxy.retry_gap("model.bin") >= 1.95


def test_retry_after_http_date_is_honoured(
    tmp_path: Path, http_server: HttpFileServer, fault_proxy_factory: Any
) -> None:
    http_server.add("/rd/model.bin", b"d" * 300_000)
    proxy = fault_proxy_factory(http_server.port)
    date = email.utils.formatdate(time.time() + 4, usegmt=True)  # whole seconds: at most 4 s from now
    not_before = time.monotonic() + (email.utils.parsedate_to_datetime(date).timestamp() - time.time())
    proxy.add(ProxyFault("status", status=503, retry_after=date, match="model.bin", unless="bytes=0-0"))
    result = run_cli([f"{proxy.url}/rd/model.bin", str(tmp_path / "out")], _retry_after_env())
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == {"model.bin": b"d" * 300_000}
    assert proxy.injected and proxy.retried_at("model.bin") >= not_before - 0.05


def test_retry_after_is_capped_by_the_retry_budget(
    tmp_path: Path, http_server: HttpFileServer, fault_proxy_factory: Any
) -> None:
    """An always-busy server with Retry-After: 1 fails after the configured retries, each waited for."""
    http_server.add("/rb/model.bin", b"b")
    proxy = fault_proxy_factory(http_server.port)
    proxy.add(ProxyFault("status", times=-1, status=429, retry_after="1", match="model.bin", unless="bytes=0-0"))
    env = {**_retry_after_env(), "STORAGE_INITIALIZER_RETRIES": "2"}
    started = time.monotonic()
    result = run_cli([f"{proxy.url}/rb/model.bin", str(tmp_path / "out")], env)
    assert result.returncode == 1 and "gave up after 2 retries" in result.stderr
    assert len(proxy.injected) == 3 and time.monotonic() - started >= 2


@pytest.mark.parametrize(("status", "retried"), [(501, False), (505, False), (502, True), (425, True)])
def test_one_transient_status_rule(
    tmp_path: Path, http_server: HttpFileServer, fault_proxy_factory: Any, status: int, retried: bool
) -> None:
    """501 and 505 are permanent (a server does not start implementing a method by being asked
    again); 425, 429, 408 and the other 5xx are retried. Every HTTP-based provider uses this rule."""
    http_server.add("/st/model.bin", b"s")
    proxy = fault_proxy_factory(http_server.port)
    proxy.add(ProxyFault("status", status=status, match="model.bin"))
    result = run_cli([f"{proxy.url}/st/model.bin", str(tmp_path / "out")], _retry_after_env())
    assert (result.returncode == 0) is retried, result.stderr
    assert ("retrying" in result.stderr) is retried
    if not retried:
        assert f"HTTP {status}" in result.stderr
