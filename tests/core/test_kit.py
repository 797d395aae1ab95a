"""The provider kit: ``storage_initializer.config`` and ``storage_initializer.http``.

Unit tests of each rule, then the rules seen through the CLI where providers
used to disagree (each provider's own tests check that it follows them).
"""

from __future__ import annotations

import email.utils
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage_initializer import config, http
from storage_initializer.errors import (
    AccessDeniedError,
    ConfigError,
    NotFoundError,
    ObjectChangedError,
    StorageInitializerError,
    TransientError,
    UsageError,
)
from storage_initializer.provider import SocketStream
from storage_initializer.redact import redact
from storage_initializer.settings import settings_from_env
from storage_initializer.uri import ServerUri
from tests.cli import run_cli, tree
from tests.servers.forward_proxy import ForwardProxy
from tests.servers.http_server import HttpFileServer


# -- booleans --------------------------------------------------------------------------------
@pytest.mark.parametrize("word", ["1", "true", "TRUE", " Yes ", "on", "On"])
def test_true_words(word: str) -> None:
    assert config.env_bool({"X": word}, "X", False) is True


@pytest.mark.parametrize("word", ["0", "false", "False", " no", "OFF "])
def test_false_words(word: str) -> None:
    assert config.env_bool({"X": word}, "X", True) is False


@pytest.mark.parametrize("env", [{}, {"X": ""}, {"X": "   "}])
def test_unset_or_blank_is_the_default(env: dict[str, str]) -> None:
    assert config.env_bool(env, "X", True) is True and config.env_bool(env, "X", False) is False


def test_an_unknown_word_names_the_variable_and_the_words() -> None:
    with pytest.raises(ConfigError) as caught:
        config.env_bool({"S3_VERIFY_SSL": "ture"}, "S3_VERIFY_SSL", True)
    text = str(caught.value)
    assert "S3_VERIFY_SSL='ture'" in text and "true" in text and "off" in text


def test_true_false_only() -> None:
    assert config.parse_bool("True", "V", true_false_only=True) is True
    with pytest.raises(ConfigError, match="use true or false"):
        config.parse_bool("yes", "V", true_false_only=True)


# -- numbers -------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "Infinity"])
def test_numbers_refuse_nan_and_inf(raw: str) -> None:
    with pytest.raises(ConfigError, match="not a finite number"):
        config.env_number({"N": raw}, "N", 1.0, minimum=0)
    with pytest.raises(ConfigError, match="not a finite number"):
        config.env_seconds({"N": raw}, "N", 1.0)


def test_numbers_bounds_and_kinds() -> None:
    assert config.env_number({"N": " 2.5 "}, "N", 1.0, minimum=0) == 2.5
    assert config.env_number({}, "N", 1.0) == 1.0
    assert config.env_int({"N": "3"}, "N", 1, minimum=1) == 3
    with pytest.raises(ConfigError, match="not a whole number"):
        config.env_int({"N": "3.5"}, "N", 1)
    with pytest.raises(ConfigError, match="not a number"):
        config.env_int({"N": "many"}, "N", 1)
    with pytest.raises(ConfigError, match="must be at least 1"):
        config.env_int({"N": "0"}, "N", 1, minimum=1)
    with pytest.raises(ConfigError, match="must be at most 10"):
        config.env_number({"N": "11"}, "N", 1, maximum=10)
    with pytest.raises(ConfigError, match="must be positive"):
        config.env_seconds({"T": "0"}, "T", 1.0)
    with pytest.raises(ConfigError, match="must be positive"):
        config.env_seconds({"T": "-3"}, "T", 1.0)


# -- sizes and lists -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "size"),
    [
        ("8388608", 8388608),
        ("64M", 64 << 20),
        ("64MiB", 64 << 20),
        ("64mb", 64 << 20),
        ("1GB", 1 << 30),
        ("1.5k", 1536),
    ],
)
def test_sizes(raw: str, size: int) -> None:
    assert config.parse_size(raw, "S") == size
    assert config.env_size({"S": raw}, "S") == size


@pytest.mark.parametrize("raw", ["", "M", "64X", "-1", "nan"])
def test_bad_sizes(raw: str) -> None:
    with pytest.raises(ConfigError, match="is not a size"):
        config.parse_size(raw, "S")


def test_settings_and_kit_share_the_size_grammar() -> None:
    env = {"STORAGE_INITIALIZER_PART_SIZE": "16MiB", "STORAGE_INITIALIZER_BUFFER_SIZE": "2M"}
    settings = settings_from_env(env)
    assert (settings.part_size, settings.buffer_size) == (16 << 20, 2 << 20)


@pytest.mark.parametrize(
    ("raw", "items"),
    [
        ('["*.bin", "config.json"]', ("*.bin", "config.json")),
        ("*.bin, config.json,", ("*.bin", "config.json")),
        ('"*.bin"', ("*.bin",)),
        ("", ()),
    ],
)
def test_lists(raw: str, items: tuple[str, ...]) -> None:
    assert config.env_list({"L": raw}, "L") == items


# -- statuses and errors ---------------------------------------------------------------------------
def test_transient_statuses() -> None:
    for status in (408, 425, 429, 500, 502, 503, 504, 507, 520):
        assert http.is_transient_status(status), status
    for status in (400, 401, 403, 404, 412, 416, 501, 505):
        assert not http.is_transient_status(status), status


def test_error_for_status() -> None:
    assert isinstance(http.error_for_status(404, "u"), NotFoundError)
    assert isinstance(http.error_for_status(410, "u"), NotFoundError)
    assert isinstance(http.error_for_status(401, "u"), AccessDeniedError)
    assert isinstance(http.error_for_status(403, "u", access_hint="check X"), AccessDeniedError)
    assert isinstance(http.error_for_status(412, "u"), ObjectChangedError)
    busy = http.error_for_status(429, "u", headers={"Retry-After": "7"})
    assert isinstance(busy, TransientError) and busy.retryable and busy.retry_after == 7.0
    assert http.error_for_status(503, "u").retry_after is None  # type: ignore[attr-defined]
    plain = http.error_for_status(501, "u", reason="Not Implemented")
    assert type(plain) is StorageInitializerError and not plain.retryable and "HTTP 501 Not Implemented" in str(plain)


def test_transient_error_keeps_its_behaviour() -> None:
    error = TransientError("busy", hint="wait")
    assert error.retryable and error.retry_after is None and str(error) == "busy (wait)"
    assert TransientError("busy", retry_after=1.5).retry_after == 1.5


# -- Retry-After -------------------------------------------------------------------------------------
def test_retry_after_seconds_and_dates() -> None:
    now = time.time()
    assert http.retry_after({"Retry-After": "2"}) == 2.0
    assert http.retry_after({"retry-after": " 0 "}) == 0.0
    assert http.retry_after({"Retry-After": "3600"}) == http.RETRY_AFTER_CAP
    date = email.utils.formatdate(now + 5, usegmt=True)
    assert http.retry_after({"Retry-After": date}, now=now) == pytest.approx(5, abs=1)
    past = email.utils.formatdate(now - 50, usegmt=True)
    assert http.retry_after({"Retry-After": past}, now=now) == 0.0
    for value in ("", "soon", "-5", "1.5e3"):
        assert http.retry_after({"Retry-After": value}) is None, value
    assert http.retry_after({}) is None and http.retry_after(None) is None


# -- ranges -----------------------------------------------------------------------------------------
def test_range_header_and_partial_check() -> None:
    assert http.range_header(0, 1) == "bytes=0-0"
    assert http.range_header(10, None) == "bytes=10-"
    assert http.range_header(10, 20) == "bytes=10-19"
    assert http.content_range_total("bytes 0-0/12345") == 12345
    assert http.content_range_total("bytes */*") is None and http.content_range_total(None) is None
    http.check_partial(206, {"Content-Range": "bytes 10-19/100"}, 10, "u", size=100)
    with pytest.raises(TransientError, match="ignored a Range request"):
        http.check_partial(200, {}, 10, "u")
    with pytest.raises(TransientError, match="answered range"):
        http.check_partial(206, {"Content-Range": "bytes 0-19/100"}, 10, "u")
    with pytest.raises(ObjectChangedError, match="now 90 bytes, listed 100"):
        http.check_partial(206, {"Content-Range": "bytes 10-19/90"}, 10, "u", size=100)


def test_same_origin_is_scheme_host_and_port() -> None:
    assert http.same_origin("https://hub.example/a?x=1", "https://HUB.example/b")
    assert not http.same_origin("https://hub.example/a", "http://hub.example/a")
    assert not http.same_origin("https://hub.example/a", "https://cdn.hub.example/a")
    assert not http.same_origin("http://127.0.0.1:8080/a", "http://127.0.0.1:8081/a")


# -- proxies and CA ---------------------------------------------------------------------------------
def test_proxy_variables_lower_case_wins() -> None:
    env = {"HTTP_PROXY": "http://upper:1", "http_proxy": "http://lower:1", "HTTPS_PROXY": "http://secure:1"}
    assert http.proxies(env) == {"http": "http://lower:1", "https": "http://secure:1"}
    assert http.no_proxy({"NO_PROXY": "upper", "no_proxy": "lower"}) == "lower"
    assert http.no_proxy({"NO_PROXY": "upper", "no_proxy": " "}) == "upper"


@pytest.mark.parametrize(
    ("url", "entries", "bypass"),
    [
        ("http://a.example.com/x", "example.com", True),
        ("http://a.example.com/x", ".example.com", True),
        ("http://example.com/x", ".example.com", True),
        ("http://badexample.com/x", "example.com", False),
        ("http://10.1.2.3:8080/x", "10.0.0.0/8", True),
        ("http://11.1.2.3/x", "10.0.0.0/8", False),
        ("http://127.0.0.1:9000/x", "127.0.0.1:9000", True),
        ("http://anything/x", "*", True),
        ("http://host/x", "", False),
    ],
)
def test_no_proxy_matching(url: str, entries: str, bypass: bool) -> None:
    assert http.bypasses_proxy(url, {"NO_PROXY": entries}) is bypass
    assert http.proxies_for(url, {"NO_PROXY": entries, "HTTP_PROXY": "http://p:1"}) == (
        {} if bypass else {"http": "http://p:1"}
    )


def test_ca_bundle_order() -> None:
    env = {"CURL_CA_BUNDLE": "/c", "SSL_CERT_FILE": "/s", "REQUESTS_CA_BUNDLE": "/r"}
    assert http.ca_bundle(env, "/store") == "/store"
    assert http.ca_bundle(env) == "/r"
    assert http.ca_bundle({"CURL_CA_BUNDLE": "/c", "SSL_CERT_FILE": "/s"}) == "/s"
    assert http.ca_bundle({}) is True


def test_the_kit_imports_no_http_library() -> None:
    code = (
        "import sys, storage_initializer.http, storage_initializer.config; "
        "print(sorted({'requests', 'urllib3', 'httpx'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_sleep_ends_on_the_stop_event() -> None:
    import threading

    from storage_initializer.errors import CancelledError

    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    with pytest.raises(CancelledError):
        http.sleep(30, stop)
    assert time.monotonic() - started < 5


# -- the rules through the CLI ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("variable", "value"),
    [("S3_CONNECT_TIMEOUT", "nan"), ("S3_MAX_ATTEMPTS", "inf"), ("S3_VERIFY_SSL", "maybe")],
)
def test_a_bad_s3_value_is_a_usage_error(tmp_path: Path, variable: str, value: str) -> None:
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "awsAnonymousCredential": "true", variable: value}
    result = run_cli(["s3://bucket/model", str(tmp_path / "out")], env)
    assert result.returncode == 2, result.stderr
    assert f"{variable}={value!r}" in result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "uri"),
    [
        ("GCE_METADATA_TIMEOUT", "nan", "gs://bucket/model"),
        ("HF_HUB_DOWNLOAD_TIMEOUT", "inf", "hf://owner/repo"),
        ("HF_HUB_OFFLINE", "perhaps", "hf://owner/repo"),
        ("MODEL_REGISTRY_VERIFY_SSL", "maybe", "model-registry://iris"),
        ("STORAGE_INITIALIZER_HTTP_VERIFY_SSL", "nope", "http://127.0.0.1:9/model.bin"),
    ],
)
def test_bad_provider_values_are_usage_errors(tmp_path: Path, variable: str, value: str, uri: str) -> None:
    result = run_cli([uri, str(tmp_path / "out")], {variable: value, "NO_GCE_CHECK": "true"})
    assert result.returncode == 2, result.stderr
    assert f"{variable}={value!r}" in result.stderr


def test_lower_case_no_proxy_wins_through_the_cli(
    tmp_path: Path, http_server: HttpFileServer, forward_proxy: ForwardProxy
) -> None:
    url = http_server.add("/np/model.bin", b"direct")
    env = {"HTTP_PROXY": forward_proxy.url, "no_proxy": "127.0.0.1", "NO_PROXY": "elsewhere.example"}
    result = run_cli([url, str(tmp_path / "a")], env)
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "a") == {"model.bin": b"direct"} and forward_proxy.seen == []


# -- request_error: an alias of network_error, the one mapping of connection failures --------------
def test_request_error_maps_refused_connections_tls_and_bad_urls() -> None:
    import requests

    from storage_initializer.errors import StorageInitializerError, UsageError, network_error

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        requests.get(f"http://127.0.0.1:{port}/m.bin", timeout=5)
    except requests.exceptions.RequestException as exc:
        refused = http.request_error(exc, "the store", tls_hint="-", reach_hint="check the host")
        assert refused is not None and str(refused) == str(network_error(exc, "the store", hint="check the host"))
    assert not refused.retryable  # nothing listens: a retry a moment later cannot heal it
    assert "cannot reach the store: connection refused" in str(refused) and refused.hint is not None
    assert refused.hint.endswith("; check the host")
    try:
        requests.get("http://model-store.invalid/m.bin", timeout=5)
    except requests.exceptions.RequestException as exc:
        dns = http.request_error(exc, "the store", tls_hint="-")
    assert dns is not None and not dns.retryable and "DNS name model-store.invalid not found" in str(dns)
    cert = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    tls = http.request_error(requests.exceptions.SSLError(cert), "x", tls_hint="set CA")
    assert isinstance(tls, StorageInitializerError) and not tls.retryable and tls.hint == "set CA"
    assert "TLS verification failed" in str(tls)
    assert isinstance(http.request_error(requests.exceptions.InvalidURL("bad"), "x", tls_hint="-"), UsageError)
    assert http.request_error(ValueError("not a request failure"), "x", tls_hint="-") is None


# -- server URIs and socket streams ------------------------------------------------------------
class _DemoUri(ServerUri):
    scheme = "demo"
    default_port = 2121
    usage = "use demo://host/path"


def test_server_uri_parts_are_decoded_and_the_password_is_masked() -> None:
    loc = _DemoUri.parse("demo://us%40er:pa%2Fss-word@Files.example.com/a%20b/../c/")
    assert (loc.host, loc.port, loc.path, loc.user, loc.password) == (
        "files.example.com", 2121, "/c", "us@er", "pa/ss-word",
    )  # fmt: skip
    assert _DemoUri.parse("demo://h:7").port == 7 and _DemoUri.parse("demo://h").path == "/"
    assert "pa/ss-word" not in redact("failed with pa/ss-word")


@pytest.mark.parametrize("bad", ["demo:///x", "demo://h:99999/x", "demo://h/x?y=1", "ftp://h/x", "demo://h/a\r\nb"])
def test_server_uri_refuses_malformed_uris_with_the_usage(bad: str) -> None:
    with pytest.raises(UsageError) as caught:
        _DemoUri.parse(bad)
    assert caught.value.hint == "use demo://host/path"


def test_socket_stream_stops_at_its_limit_and_types_failures() -> None:
    left, right = socket.socketpair()
    right.sendall(b"0123456789")
    with SocketStream(left, limit=4) as stream:
        assert stream.read() == b"0123"
    left, right = socket.socketpair()
    left.settimeout(0.05)
    with SocketStream(left, what="demo data connection") as stream, pytest.raises(TransientError, match="demo data"):
        stream.read(1)
    right.close()


def test_read_headers_range_only_a_part_and_match_a_strong_etag() -> None:
    assert http.read_headers(0, 100, 100) == ({}, False)
    assert http.read_headers(0, None, 100, etag='"e"') == ({"If-Match": '"e"'}, False)
    assert http.read_headers(10, None, 100) == ({"Range": "bytes=10-"}, True)
    assert http.read_headers(0, 50, None, etag='W/"e"') == ({"Range": "bytes=0-49"}, True)
    assert http.read_headers(10, 20, 100, ranges=False) == ({}, False)
