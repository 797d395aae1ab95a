"""Every configuration variable of the s3:// provider, each shown to take effect.

KServe's variables (``kserve_storage.Storage.get_S3_config`` /
``_get_s3_client_kwargs`` / ``_update_with_storage_spec`` and the webhook's
``pkg/credentials/s3``) keep their meaning; each test drives a real server
(SeaweedFS or moto), a recording proxy, a TLS front or a port that never
answers, and checks what actually happened on the wire. Only
``S3_USE_ACCELERATE`` cannot be exercised here (it needs AWS): its test checks
the endpoint botocore resolves.
"""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trustme
from storage_initializer_s3 import S3Provider, s3_settings

from storage_initializer.errors import (
    AccessDeniedError,
    ConfigError,
    StorageInitializerError,
    TransientError,
)
from storage_initializer.provider import ProviderContext
from storage_initializer.redact import redact
from tests.cli import clean_env, run_cli, tree
from tests.providers.s3_tools import FakeSts, RecordingProxy, StallingServer, unanswered_port
from tests.providers.test_s3 import fetch, files_under, shared_bucket, unique
from tests.servers.fault_proxy import FaultProxy, ProxyFault
from tests.servers.s3 import S3Server, SeaweedFS

NO_AWS_FILES = {"AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


def provider(env: Mapping[str, str], **context: Any) -> S3Provider:
    options = {"stall_timeout": 30.0, "connect_timeout": 5.0, "concurrency": 4, **context}
    return S3Provider(ProviderContext(env={**NO_AWS_FILES, **env}, **options))


def keys_of(env: Mapping[str, str], uri: str) -> list[str]:
    p = provider(env)
    try:
        return sorted(o.key for o in p.list(uri))
    finally:
        p.close()


@pytest.fixture
def model(seaweedfs: SeaweedFS) -> str:
    """``s3://bucket/<unique>/model`` holding two small files on SeaweedFS."""
    bucket, root = shared_bucket(seaweedfs), unique()
    seaweedfs.put_many(bucket, {f"{root}/model/a.txt": b"a", f"{root}/model/sub/b.txt": b"b"})
    return f"s3://{bucket}/{root}/model"


def without_endpoint(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != "AWS_ENDPOINT_URL"}


# -- parsing (what each variable means) ----------------------------------------------------------


def test_defaults_match_kserve() -> None:
    settings = s3_settings({})
    assert settings.endpoint_url is None and settings.region is None
    assert settings.verify is True and settings.addressing_style == "auto" and not settings.accelerate
    assert not settings.anonymous and settings.max_attempts == 3
    # S3_CONNECT_TIMEOUT / S3_READ_TIMEOUT unset: the engine's timeouts apply.
    p = provider({}, connect_timeout=7.0, stall_timeout=42.0)
    assert (p.connect_timeout, p.read_timeout) == (7.0, 42.0)


@pytest.mark.parametrize(
    ("env", "endpoint"),
    [
        ({"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "http://b:2", "S3_ENDPOINT": "c:3"}, "http://a:1"),
        ({"AWS_ENDPOINT_URL_S3": "http://b:2/", "S3_ENDPOINT": "c:3"}, "http://b:2"),
        ({"S3_ENDPOINT": "minio.svc:9000"}, "https://minio.svc:9000"),
        ({"S3_ENDPOINT": "minio.svc:9000", "S3_USE_HTTPS": "0"}, "http://minio.svc:9000"),
        ({"S3_ENDPOINT": "minio.svc:9000", "S3_USE_HTTPS": "1"}, "https://minio.svc:9000"),
        ({"S3_ENDPOINT": "http://minio.svc:9000"}, "http://minio.svc:9000"),
    ],
)
def test_endpoint_precedence(env: dict[str, str], endpoint: str) -> None:
    assert s3_settings(env).endpoint_url == endpoint


def test_storage_spec_beats_variables_and_override_beats_spec() -> None:
    spec = {
        "type": "s3",
        "endpoint_url": "http://spec:9000",
        "access_key_id": "SPECKEY",
        "secret_access_key": "spec-secret-value",
        "region": "eu-west-1",
        "verify_ssl": False,
        "anonymous": "false",
        "bucket": "spec-bucket",
    }
    env = {
        "AWS_ENDPOINT_URL": "http://env:9000",
        "AWS_ACCESS_KEY_ID": "ENVKEY",
        "STORAGE_CONFIG": json.dumps(spec),
        "STORAGE_OVERRIDE_CONFIG": json.dumps({"region": "ap-south-1"}),
    }
    settings = s3_settings(env)
    assert (settings.endpoint_url, settings.access_key_id, settings.region) == (
        "http://spec:9000",
        "SPECKEY",
        "ap-south-1",
    )
    assert settings.verify is False and not settings.anonymous and settings.default_bucket == "spec-bucket"
    assert redact("key spec-secret-value") == "key ***"
    # A spec of another type is not ours.
    assert s3_settings({"STORAGE_CONFIG": json.dumps({**spec, "type": "gs"})}).endpoint_url is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("S3_VERIFY_SSL", "maybe"),
        ("awsAnonymousCredential", "yes please"),
        ("S3_USER_VIRTUAL_BUCKET", "2"),
        ("S3_READ_TIMEOUT", "soon"),
        ("S3_CONNECT_TIMEOUT", "-1"),
        ("S3_MAX_ATTEMPTS", "0"),
        ("AWS_ENDPOINT_URL", "ftp://host"),
        ("AWS_CA_BUNDLE", "/no/such/ca.pem"),
    ],
)
def test_invalid_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name if name != "AWS_CA_BUNDLE" else "/no/such/ca.pem"):
        s3_settings({name: value})


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("True", True), ("TRUE", True), ("false", False), ("False", False), ("0", False), ("", None)],
)
def test_boolean_spellings_kserve_accepts(value: str, expected: bool | None) -> None:
    """Every spelling KServe gives a meaning keeps it: ``"true" == value.lower()`` for the flags,
    ``value.lower() in ["0", "false"]`` turns S3_VERIFY_SSL off, empty is unset (the default)."""
    aws = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "example-secret"}
    anonymous = s3_settings({"awsAnonymousCredential": value}).anonymous
    assert anonymous is bool(expected)
    spec = s3_settings({"STORAGE_CONFIG": json.dumps({"type": "s3", "anonymous": value})})
    assert spec.anonymous is bool(expected)
    virtual = s3_settings({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "S3_USER_VIRTUAL_BUCKET": value})
    assert virtual.addressing_style == ("virtual" if expected else "auto")
    accelerated = provider({**aws, "AWS_DEFAULT_REGION": "eu-west-1", "S3_USE_ACCELERATE": value})
    assert accelerated.client().meta.config.s3.get("use_accelerate_endpoint", False) is bool(expected)
    verify = expected is not False  # S3_VERIFY_SSL: only 0/false (any case) turn it off
    assert s3_settings({"S3_VERIFY_SSL": value}).verify is verify
    assert s3_settings({"STORAGE_CONFIG": json.dumps({"type": "s3", "verify_ssl": value})}).verify is verify


def test_legacy_global_endpoint_with_a_region_goes_virtual() -> None:
    """KServe: https://s3.amazonaws.com with a region other than us-east-1 is virtual-hosted."""
    assert s3_settings({"AWS_ENDPOINT_URL": "https://s3.amazonaws.com"}).addressing_style == "auto"
    env = {"AWS_ENDPOINT_URL": "https://s3.amazonaws.com", "AWS_DEFAULT_REGION": "eu-west-1"}
    assert s3_settings(env).addressing_style == "virtual"


# -- endpoints and credentials -------------------------------------------------------------------


def test_endpoint_variables_take_effect(seaweedfs: SeaweedFS, model: str) -> None:
    host_port = seaweedfs.endpoint_url.removeprefix("http://")
    base = without_endpoint(seaweedfs.env())
    assert keys_of(seaweedfs.legacy_env(), model) == ["a.txt", "sub/b.txt"]  # S3_ENDPOINT + S3_USE_HTTPS=0
    assert keys_of({**base, "AWS_ENDPOINT_URL_S3": seaweedfs.endpoint_url}, model) == ["a.txt", "sub/b.txt"]
    quick = {"S3_MAX_ATTEMPTS": "1"}
    with pytest.raises(StorageInitializerError, match="TLS"):  # S3_USE_HTTPS unset: https to a plain-HTTP port
        keys_of({**base, **quick, "S3_ENDPOINT": host_port}, model)
    with unanswered_port() as port, pytest.raises(TransientError):  # AWS_ENDPOINT_URL wins over S3_ENDPOINT
        unanswered = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "S3_CONNECT_TIMEOUT": "0.2"}
        keys_of({**seaweedfs.legacy_env(), **quick, **unanswered}, model)


def test_storage_config_json(seaweedfs: SeaweedFS, model: str, tmp_path: Path) -> None:
    spec = {
        "type": "s3",
        "endpoint_url": seaweedfs.endpoint_url,
        "access_key_id": seaweedfs.access_key,
        "secret_access_key": "not-the-secret-1234",
        "region": "us-east-1",
    }
    env = {"STORAGE_CONFIG": json.dumps(spec)}
    result = run_cli([model, str(tmp_path / "bad")], env)
    assert result.returncode == 1 and "not-the-secret-1234" not in result.stderr
    env["STORAGE_OVERRIDE_CONFIG"] = json.dumps({"secret_access_key": seaweedfs.secret_key})
    result = run_cli([model, str(tmp_path / "good")], env)
    assert result.returncode == 0, result.stderr
    assert files_under(tmp_path / "good") == {"a.txt": b"a", "sub/b.txt": b"b"}
    assert seaweedfs.secret_key not in result.stderr
    # The spec's "bucket" names the bucket of an s3:/// URI.
    bucket, path = model.removeprefix("s3://").split("/", 1)
    env["STORAGE_OVERRIDE_CONFIG"] = json.dumps({"secret_access_key": seaweedfs.secret_key, "bucket": bucket})
    assert keys_of(env, f"s3:///{path}") == ["a.txt", "sub/b.txt"]


def test_region_signs_the_requests(seaweedfs: SeaweedFS, model: str) -> None:
    spec = {"STORAGE_CONFIG": json.dumps({"type": "s3", "region": "eu-central-1"})}
    for extra in ({"AWS_DEFAULT_REGION": "eu-central-1"}, {"AWS_REGION": "eu-central-1"}, spec):
        with RecordingProxy(seaweedfs.endpoint_url) as proxy:
            env = {**seaweedfs.env(), "AWS_ENDPOINT_URL": proxy.url, "AWS_DEFAULT_REGION": ""}
            assert keys_of({**env, **extra}, model) == ["a.txt", "sub/b.txt"]
        assert all("/eu-central-1/s3/aws4_request" in r.headers["authorization"] for r in proxy.requests)


def test_profile_and_credentials_file(seaweedfs: SeaweedFS, model: str, tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[models]\naws_access_key_id = {seaweedfs.access_key}\naws_secret_access_key = {seaweedfs.secret_key}\n"
    )
    env = {
        "AWS_ENDPOINT_URL": seaweedfs.endpoint_url,
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    assert keys_of({**env, "AWS_PROFILE": "models"}, model) == ["a.txt", "sub/b.txt"]
    with pytest.raises(ConfigError, match="AWS_PROFILE"):
        keys_of({**env, "AWS_PROFILE": "absent"}, model)


def test_session_token_is_signed_and_sent(seaweedfs: SeaweedFS, model: str) -> None:
    """SeaweedFS has no STS here: it refuses the (unknown) token, which shows it was used."""
    token = "FwoGZXIvYXdzEXAMPLETOKEN" + uuid.uuid4().hex
    with RecordingProxy(seaweedfs.endpoint_url) as proxy:
        env = {**seaweedfs.env(), "AWS_ENDPOINT_URL": proxy.url, "AWS_SESSION_TOKEN": token}
        with pytest.raises(AccessDeniedError) as info:
            keys_of(env, model)
    (request,) = proxy.requests
    assert request.headers["x-amz-security-token"] == token
    assert "x-amz-security-token" in request.headers["authorization"]
    assert token not in str(info.value)


def test_sts_calls_never_go_to_the_s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """KServe's webhook puts the S3 endpoint in AWS_ENDPOINT_URL; botocore alone would send IRSA's
    STS calls there too. Only AWS_ENDPOINT_URL_STS moves them."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://minio.example:9000")  # botocore reads os.environ
    env = {"AWS_ENDPOINT_URL": "https://minio.example:9000", "AWS_DEFAULT_REGION": "eu-west-1"}
    sts = provider(env).session.create_client("sts", region_name="eu-west-1")
    assert sts.meta.endpoint_url == "https://sts.eu-west-1.amazonaws.com"


def test_irsa_web_identity(seaweedfs: SeaweedFS, model: str, tmp_path: Path) -> None:
    """AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE: the token goes to STS, STS's keys sign S3 requests."""
    token_file = tmp_path / "token"
    token_file.write_text("eyJhbGciOiJSUzI1NiJ9.service-account-token.signature\n")
    with FakeSts(seaweedfs.access_key, seaweedfs.secret_key) as sts:
        env = {
            "AWS_ENDPOINT_URL": seaweedfs.endpoint_url,
            "AWS_ENDPOINT_URL_STS": sts.url,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/model-reader",
            "AWS_ROLE_SESSION_NAME": "isvc-sklearn",
            "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file),
        }
        p = provider(env)
        assert [o.key for o in p.list(model)] == ["a.txt", "sub/b.txt"]
        assert type(p.credentials).__name__ == "DeferredRefreshableCredentials"
        p.close()
    (call,) = sts.calls
    assert call["Action"] == "AssumeRoleWithWebIdentity"
    assert call["WebIdentityToken"] == token_file.read_text().strip()
    assert (call["RoleArn"], call["RoleSessionName"]) == (env["AWS_ROLE_ARN"], "isvc-sklearn")
    assert "service-account-token" not in redact(f"token {token_file.read_text()}")


def test_anonymous_credentials(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    """awsAnonymousCredential=true sends unsigned requests: a public bucket downloads, a private one
    is refused (403), and no Authorization header is ever sent."""
    public = seaweedfs.new_bucket("public")
    seaweedfs.put(public, "model/w.bin", b"public weights")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": ["s3:GetObject", "s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{public}", f"arn:aws:s3:::{public}/*"],
            }
        ],
    }
    seaweedfs.client().put_bucket_policy(Bucket=public, Policy=json.dumps(policy))
    with RecordingProxy(seaweedfs.endpoint_url) as proxy:
        for anonymous in ({"awsAnonymousCredential": "true"}, {"STORAGE_CONFIG": '{"type":"s3","anonymous":true}'}):
            env = {"AWS_ENDPOINT_URL": proxy.url, **anonymous}
            dest = tmp_path / f"out{len(proxy.requests)}"
            result = fetch({**NO_AWS_FILES, **env}, f"s3://{public}/model", dest)
            assert result.error is None, result.error
            assert files_under(dest) == {"w.bin": b"public weights"}
            with pytest.raises(AccessDeniedError, match="denied access"):
                keys_of(env, f"s3://{shared_bucket(seaweedfs)}/x")
    assert proxy.requests and not any("authorization" in r.headers for r in proxy.requests)


# -- addressing ---------------------------------------------------------------------------------


def test_virtual_hosted_addressing_through_a_proxy(moto_s3: S3Server, tmp_path: Path) -> None:
    """S3_USER_VIRTUAL_BUCKET=true puts the bucket in the Host; default (custom endpoint): the path.
    Requests reach moto (which serves both styles) through HTTP_PROXY, which also shows the
    proxy variables take effect."""
    bucket = shared_bucket(moto_s3)
    root = unique()
    moto_s3.put(bucket, f"{root}/m/w.bin", b"weights")
    port = urlsplit(moto_s3.endpoint_url).port
    endpoint = f"http://s3proxied:{port}"  # resolvable only by the proxy; no dot, so moto reads the
    for virtual, host in (("true", f"{bucket}.s3proxied:{port}"), ("false", f"s3proxied:{port}")):  # path then
        with RecordingProxy(moto_s3.endpoint_url) as proxy:
            env = {
                **moto_s3.env(),
                "AWS_ENDPOINT_URL": endpoint,
                "HTTP_PROXY": proxy.url,
                "S3_USER_VIRTUAL_BUCKET": virtual,
            }
            dest = tmp_path / virtual
            result = fetch(env, f"s3://{bucket}/{root}/m", dest)
            assert result.error is None, result.error
            assert files_under(dest) == {"w.bin": b"weights"}
        assert proxy.requests and {r.host for r in proxy.requests} == {host}
        paths = {urlsplit(r.target).path for r in proxy.requests}
        assert all(p.startswith("/" if virtual == "true" else f"/{bucket}") for p in paths)
        assert (f"/{bucket}/{root}/m/w.bin" in paths) is (virtual == "false")
    # NO_PROXY: the proxy is bypassed, and s3proxied cannot be resolved (a name not found: permanent).
    with RecordingProxy(moto_s3.endpoint_url) as proxy:
        env = {**moto_s3.env(), "AWS_ENDPOINT_URL": endpoint, "HTTP_PROXY": proxy.url, "NO_PROXY": "s3proxied"}
        with pytest.raises(StorageInitializerError, match="DNS name s3proxied not found"):
            keys_of({**env, "S3_MAX_ATTEMPTS": "1"}, f"s3://{bucket}/{root}/m")
    assert not proxy.requests


def test_accelerate_endpoint_is_configured() -> None:
    """S3_USE_ACCELERATE needs AWS: check the endpoint botocore resolves for the reads (no request)."""
    env = {
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "example-secret",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    accelerated = provider({**env, "S3_USE_ACCELERATE": "true"})
    plain = provider(env)
    assert accelerated.wire.target("models").base_url == "https://models.s3-accelerate.amazonaws.com"
    assert plain.wire.target("models").base_url == "https://models.s3.eu-west-1.amazonaws.com"
    assert accelerated.client().meta.config.s3["use_accelerate_endpoint"] is True


# -- TLS -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_front(seaweedfs: SeaweedFS, ca: trustme.CA) -> Iterator[RecordingProxy]:
    """An HTTPS front (certificate from a private CA) on SeaweedFS."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    with RecordingProxy(seaweedfs.endpoint_url, tls=context) as proxy:
        yield proxy


def test_tls_verification_settings(
    seaweedfs: SeaweedFS, model: str, tls_front: RecordingProxy, ca: trustme.CA, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    mount = tmp_path / "custom-certs"
    mount.mkdir()
    ca.cert_pem.write_to_path(str(mount / "cabundle.crt"))
    env = {**seaweedfs.env(), "AWS_ENDPOINT_URL": tls_front.url}
    working = {
        "AWS_CA_BUNDLE": {"AWS_CA_BUNDLE": str(ca_file)},
        "CA_BUNDLE_CONFIGMAP_NAME": {
            "CA_BUNDLE_CONFIGMAP_NAME": "global-ca",
            "CA_BUNDLE_VOLUME_MOUNT_POINT": str(mount),
        },
        "storage spec ca_bundle": {"STORAGE_CONFIG": json.dumps({"type": "s3", "ca_bundle": str(ca_file)})},
        "S3_VERIFY_SSL=0": {"S3_VERIFY_SSL": "0"},
        "storage spec verify_ssl": {"STORAGE_CONFIG": json.dumps({"type": "s3", "verify_ssl": "0"})},
        "S3_VERIFY_SSL=false ignores a bad bundle": {"S3_VERIFY_SSL": "false", "AWS_CA_BUNDLE": "/no/such.pem"},
        "SSL_CERT_FILE (the shared CA rule)": {"SSL_CERT_FILE": str(ca_file)},
        "AWS_CA_BUNDLE beats REQUESTS_CA_BUNDLE": {"AWS_CA_BUNDLE": str(ca_file), "REQUESTS_CA_BUNDLE": "/no/such"},
    }
    for name, extra in working.items():
        dest = tmp_path / name.replace(" ", "_")
        result = fetch({**env, **extra}, model, dest)  # listing and ranged GETs over TLS
        assert result.error is None, (name, result.error)
        assert files_under(dest) == {"a.txt": b"a", "sub/b.txt": b"b"}, name
    # Turning verification off works, and says so.
    insecure = run_cli([model, str(tmp_path / "insecure")], {**env, "S3_VERIFY_SSL": "0"})
    assert insecure.returncode == 0, insecure.stderr
    assert "TLS certificate verification is off for S3" in insecure.stderr
    # No CA configured: the private CA is not trusted.
    result = run_cli([model, str(tmp_path / "untrusted")], {**env, "STORAGE_INITIALIZER_RETRIES": "0"})
    assert result.returncode == 1
    assert "TLS verification" in result.stderr and "AWS_CA_BUNDLE" in result.stderr
    # A bundle that is named but missing is a configuration error (exit 2), as in KServe.
    missing = {"CA_BUNDLE_CONFIGMAP_NAME": "global-ca", "CA_BUNDLE_VOLUME_MOUNT_POINT": str(tmp_path / "nowhere")}
    result = run_cli([model, str(tmp_path / "missing")], {**env, **missing})
    assert result.returncode == 2
    assert str(tmp_path / "nowhere" / "cabundle.crt") in result.stderr


def test_empty_verify_ssl_still_verifies(
    seaweedfs: SeaweedFS, model: str, tls_front: RecordingProxy, ca: trustme.CA, tmp_path: Path
) -> None:
    """KServe: ``if os.getenv("S3_VERIFY_SSL"):`` -- an empty value (an empty webhook annotation, or
    ``"verify_ssl": ""`` in the storage spec) means "verify", never "verification off"."""
    env = {**seaweedfs.env(), "AWS_ENDPOINT_URL": tls_front.url, "STORAGE_INITIALIZER_RETRIES": "0"}
    empty = {
        "S3_VERIFY_SSL": {"S3_VERIFY_SSL": ""},
        "storage spec": {"STORAGE_CONFIG": json.dumps({"type": "s3", "verify_ssl": ""})},
    }
    for name, extra in empty.items():
        result = run_cli([model, str(tmp_path / name.replace(" ", "_"))], {**env, **extra})
        assert result.returncode == 1, (name, result.stderr)
        assert "TLS verification" in result.stderr and "verification is off" not in result.stderr, name
        assert files_under(tmp_path / name.replace(" ", "_")) == {}, name
        assert s3_settings(extra).verify is True, name
    # Empty, it leaves the CA bundle in force: the private CA is trusted and the model lands.
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    result = run_cli([model, str(tmp_path / "bundle")], {**env, "S3_VERIFY_SSL": "", "AWS_CA_BUNDLE": str(ca_file)})
    assert result.returncode == 0, result.stderr
    assert files_under(tmp_path / "bundle") == {"a.txt": b"a", "sub/b.txt": b"b"}


# -- timeouts and retries ----------------------------------------------------------------------


def test_connect_timeout(seaweedfs: SeaweedFS, model: str) -> None:
    with unanswered_port() as port:
        env = {**seaweedfs.env(), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "S3_MAX_ATTEMPTS": "1"}
        started = time.monotonic()
        with pytest.raises(TransientError, match="timed out"):
            keys_of({**env, "S3_CONNECT_TIMEOUT": "0.3"}, model)
        assert time.monotonic() - started < 3  # the engine's connect timeout here is 5 s


def test_read_timeout_bounds_listing_and_reads(
    seaweedfs: SeaweedFS, model: str, fault_proxy_factory: Any, tmp_path: Path
) -> None:
    with StallingServer() as stalling:
        env = {**seaweedfs.env(), "AWS_ENDPOINT_URL": stalling.url, "S3_MAX_ATTEMPTS": "1", "S3_READ_TIMEOUT": "0.3"}
        started = time.monotonic()
        with pytest.raises(TransientError, match="timed out"):
            keys_of(env, model)
        assert time.monotonic() - started < 3  # the engine's stall timeout here is 30 s
    # A GET whose body stops after 1000 bytes: the read is bounded too.
    bucket, key = shared_bucket(seaweedfs), f"{unique()}/big.bin"
    seaweedfs.put(bucket, key, b"x" * 200_000)
    proxy: FaultProxy = fault_proxy_factory(urlsplit(seaweedfs.endpoint_url).port)
    proxy.add(ProxyFault("stall", after_bytes=1000, seconds=10, match=key.split("/")[0] + "/big.bin HTTP"))
    p = provider({**seaweedfs.env(), "AWS_ENDPOINT_URL": proxy.url, "S3_READ_TIMEOUT": "0.3"})
    (obj,) = p.list(f"s3://{bucket}/{key}")
    started = time.monotonic()
    with pytest.raises(OSError), p.open_range("s3://x", obj, 0, None) as stream:  # TimeoutError: retried by the engine
        while stream.read(65536):
            pass
    assert time.monotonic() - started < 3
    p.close()


def test_max_attempts_retries_listing_requests(seaweedfs: SeaweedFS, model: str) -> None:
    slow_down = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
    with RecordingProxy(seaweedfs.endpoint_url) as proxy:
        env = {**seaweedfs.env(), "AWS_ENDPOINT_URL": proxy.url}
        proxy.fail_next(2, 503, slow_down)
        assert keys_of({**env, "S3_MAX_ATTEMPTS": "3"}, model) == ["a.txt", "sub/b.txt"]
        assert sum("list-type=2" in r.target for r in proxy.requests) == 3
        proxy.requests.clear()
        proxy.fail_next(1, 503, slow_down)
        with pytest.raises(TransientError, match="SlowDown"):
            keys_of({**env, "S3_MAX_ATTEMPTS": "1"}, model)
        assert len(proxy.requests) == 1


def test_retry_after_is_honoured(seaweedfs: SeaweedFS, fault_proxy_factory: Any, tmp_path: Path) -> None:
    """503 + Retry-After: 2 on a listing page and on a read: neither is asked again sooner."""
    bucket, root = shared_bucket(seaweedfs), unique()
    seaweedfs.put_many(bucket, {f"{root}/m/a.bin": b"a" * 300_000})
    proxy: FaultProxy = fault_proxy_factory(urlsplit(seaweedfs.endpoint_url).port)
    proxy.add(ProxyFault("status", status=503, retry_after="2", match="list-type=2"))
    proxy.add(ProxyFault("status", status=503, retry_after="2", match=f"{root}/m/a.bin HTTP"))
    env = {**seaweedfs.env(), "AWS_ENDPOINT_URL": proxy.url, "STORAGE_INITIALIZER_RETRY_BACKOFF": "0.05"}
    result = run_cli([f"s3://{bucket}/{root}/m", str(tmp_path / "out")], env)
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == {"a.bin": b"a" * 300_000}
    assert len(proxy.injected) == 2
    assert proxy.retry_gap("list-type=2") >= 1.95 and proxy.retry_gap(f"{root}/m/a.bin HTTP") >= 1.95


def test_sigterm_ends_a_listing_retry_wait(seaweedfs: SeaweedFS, fault_proxy_factory: Any, tmp_path: Path) -> None:
    """A listing answered 503 + Retry-After: 60 waits in the provider; SIGTERM ends that wait at once."""
    bucket, root = shared_bucket(seaweedfs), unique()
    seaweedfs.put_many(bucket, {f"{root}/m/a.bin": b"a"})
    proxy: FaultProxy = fault_proxy_factory(urlsplit(seaweedfs.endpoint_url).port)
    proxy.add(ProxyFault("status", times=-1, status=503, retry_after="60", match="list-type=2"))
    env = clean_env({**seaweedfs.env(), "AWS_ENDPOINT_URL": proxy.url})
    command = [sys.executable, "-m", "storage_initializer", "-v", f"s3://{bucket}/{root}/m", str(tmp_path / "out")]
    log = tmp_path / "stderr"
    with log.open("w") as stderr:
        process = subprocess.Popen(command, env=env, stderr=stderr, text=True)
    # Signal once the provider says it waits (its debug line), not a fixed time after the 503
    # reached the proxy: a slow machine might not have read the answer yet.
    deadline = time.monotonic() + 30
    while "in 60.00s after" not in log.read_text():
        assert time.monotonic() < deadline and process.poll() is None, log.read_text()
        time.sleep(0.02)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    assert process.returncode == 143, log.read_text()
    assert time.monotonic() - started < 3  # not the 60 s wait, nor the 5 s hard-exit grace
    assert len(proxy.injected) == 1


def test_region_redirect_is_followed(seaweedfs: SeaweedFS, model: str) -> None:
    """AWS answers a request signed for the wrong region with 400 AuthorizationHeaderMalformed
    naming the bucket's region; the provider re-signs for it (as botocore's redirector does)."""
    malformed = (
        b"<Error><Code>AuthorizationHeaderMalformed</Code><Message>the region 'us-east-1' is wrong; "
        b"expecting 'eu-north-1'</Message><Region>eu-north-1</Region></Error>"
    )
    with RecordingProxy(seaweedfs.endpoint_url) as proxy:
        proxy.fail_next(1, 400, malformed, {"x-amz-bucket-region": "eu-north-1"})
        env = {**seaweedfs.env(), "AWS_ENDPOINT_URL": proxy.url}
        assert keys_of(env, model) == ["a.txt", "sub/b.txt"]
    first, second = proxy.requests[:2]
    assert "/us-east-1/s3/" in first.headers["authorization"]
    assert "/eu-north-1/s3/" in second.headers["authorization"]


def test_secrets_never_reach_the_log(seaweedfs: SeaweedFS, model: str, tmp_path: Path) -> None:
    env = {**seaweedfs.env(), "STORAGE_INITIALIZER_LOG_LEVEL": "DEBUG"}
    result = run_cli([model, str(tmp_path / "out")], env)
    assert result.returncode == 0, result.stderr
    assert seaweedfs.secret_key not in result.stderr
    assert "DEBUG" in result.stderr


class _BotocoreOnly(S3Provider):
    def endpoint_location(self, bucket: str, region: str | None) -> tuple[str, str] | None:
        return None


@pytest.mark.parametrize(
    "env",
    [
        {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"},
        {"AWS_ENDPOINT_URL": "https://minio.example.com:9443/", "AWS_DEFAULT_REGION": "eu-west-3"},
        {"AWS_ENDPOINT_URL": "http://gateway.local/s3", "AWS_DEFAULT_REGION": "ap-south-1"},
        {"S3_ENDPOINT": "objects.local:8080", "S3_USE_HTTPS": "0"},
        {
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
            "S3_USER_VIRTUAL_BUCKET": "false",
            "awsAnonymousCredential": "true",
        },
    ],
)
@pytest.mark.parametrize("bucket", ["models", "my.dotted.bucket", "bucket-123"])
@pytest.mark.parametrize("region", [None, "us-west-2"])
def test_direct_endpoint_location_agrees_with_botocore(env: dict[str, str], bucket: str, region: str | None) -> None:
    """Static keys + an explicit endpoint skip botocore (a third of a second at start-up);
    the URL and signing region must be exactly what botocore would use."""
    full = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret-example-123", **env}
    context = ProviderContext(env=full, stall_timeout=5, connect_timeout=2)
    direct = S3Provider(context).endpoint_location(bucket, region)
    assert direct is not None
    assert direct == _BotocoreOnly(context).locate(bucket, region)


def test_other_setups_still_ask_botocore() -> None:
    base = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret-example-123"}
    for env in (
        base,  # no endpoint: AWS's own endpoint resolution
        {**base, "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "S3_USER_VIRTUAL_BUCKET": "true"},
        {**base, "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "S3_USE_ACCELERATE": "true"},
        {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_PROFILE": "team"},  # a credential chain
    ):
        assert S3Provider(ProviderContext(env=env)).endpoint_location("models", None) is None
