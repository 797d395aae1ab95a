"""The ``model-registry://`` resolver against the fake Model Registry (spec-validated in its own test).

Resolution is exercised through the provider API (``resolve``) for every
grammar form and selection rule, and end to end through the CLI with the
artifact on the HTTP and S3 test servers. Tests that could make the provider
probe a host that is not loopback (``model-registry://iris/v1`` probes
``iris``) route HTTP through the fake registry as a proxy, which answers
``502`` for hosts it does not serve, so no DNS query leaves the machine.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from storage_initializer_model_registry import (
    ModelRegistryProvider,
    RegistryUri,
    parse_uri,
    settings_from_env,
)

from storage_initializer.errors import (
    AccessDeniedError,
    ConfigError,
    NotFoundError,
    StorageInitializerError,
    TransientError,
    UsageError,
)
from storage_initializer.provider import ProviderContext, Resolution
from tests.cli import clean_env, run_cli
from tests.servers.fake_model_registry import FakeModelRegistry
from tests.servers.http_server import HttpFileServer

NS_HOST = "model-registry-service.team-a.svc.cluster.local:8080"
T0 = 1_750_000_000_000
FAST = {"STORAGE_INITIALIZER_RETRY_BACKOFF": "0.01", "STORAGE_INITIALIZER_RETRIES": "2"}


def env_for(fake: FakeModelRegistry, **extra: str) -> dict[str, str]:
    """Provider environment: the fake as base URL and as HTTP proxy (so probes stay local)."""
    return {**fake.env(), "HTTP_PROXY": fake.url, **FAST, **extra}


def resolve(uri: str, env: Mapping[str, str]) -> str | Resolution:
    provider = ModelRegistryProvider(ProviderContext(env=dict(env), stall_timeout=10, connect_timeout=5))
    try:
        provider.validate(uri)
        result = provider.resolve(uri)
        assert result is not None
        return result
    finally:
        provider.close()


def uri_of(result: str | Resolution) -> str:
    return result.uri if isinstance(result, Resolution) else result


@pytest.fixture
def registry(fake_model_registry: FakeModelRegistry) -> FakeModelRegistry:
    """iris: v1 LIVE, v2 LIVE (newest LIVE), v3 ARCHIVED (newest); each with one model artifact."""
    fake_model_registry.add_model(
        "iris",
        versions=[
            {"name": "v1", "create_time": T0 + 1, "artifacts": [{"uri": "s3://models/iris/v1"}]},
            {"name": "v2", "create_time": T0 + 2, "artifacts": [{"uri": "s3://models/iris/v2"}]},
            {
                "name": "v3",
                "state": "ARCHIVED",
                "create_time": T0 + 3,
                "artifacts": [{"uri": "s3://models/iris/v3"}],
            },
        ],
    )
    return fake_model_registry


# -- grammar -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("model-registry://iris", RegistryUri(("iris",))),
        ("model-registry://iris/", RegistryUri(("iris",))),
        ("model-registry://iris/v1", RegistryUri(("iris", "v1"))),
        ("model-registry://host:8080/iris", RegistryUri(("host:8080", "iris"))),
        ("model-registry://host:8080/iris/v1", RegistryUri(("host:8080", "iris", "v1"))),
        ("model-registry://host/iris/2024/01", RegistryUri(("host", "iris", "2024/01"))),
        ("model-registry://iris?namespace=team-a", RegistryUri(("iris",), "team-a")),
        ("model-registry://iris/v1?namespace=team_a", RegistryUri(("iris", "v1"), "team_a")),
        ("model-registry://h:1/iris/v1?namespace=ns", RegistryUri(("h:1", "iris", "v1"), "ns")),
        ("model-registry://my%20model/v%2F1", RegistryUri(("my model", "v/1"))),
        ("model-registry://iris?namespace=", RegistryUri(("iris",))),
        ("model-registry://iris?foo=1", RegistryUri(("iris",), None, ("foo",))),
    ],
)
def test_grammar(uri: str, expected: RegistryUri) -> None:
    assert parse_uri(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "model-registry://",
        "model-registry:///v1",
        "model-registry://iris//v1",
        "model-registry://host/iris//",
        "model-registry://iris?namespace=a.b",
        "model-registry://iris?namespace=a&namespace=b",
        "s3://bucket/iris",
    ],
)
def test_malformed_uris_are_usage_errors(uri: str) -> None:
    provider = ModelRegistryProvider(ProviderContext(env={}))
    with pytest.raises(UsageError) as info:
        provider.validate(uri)
    assert "model-registry://" in str(info.value)


# -- every grammar form against the registry ----------------------------------------


def test_model_only_takes_newest_live_version(registry: FakeModelRegistry) -> None:
    assert resolve("model-registry://iris", env_for(registry)) == "s3://models/iris/v2"


def test_model_and_version(registry: FakeModelRegistry) -> None:
    assert resolve("model-registry://iris/v1", env_for(registry)) == "s3://models/iris/v1"
    probe = [r for r in registry.requests if r.host == "iris"]
    assert len(probe) == 1 and probe[0].status == 502  # 'iris' was probed as a host, via the proxy
    assert probe[0].authorization is None
    version_lookup = registry.requests_to("/model_version")[-1]
    assert (version_lookup.param("name"), version_lookup.param("parentResourceId")) == ("v1", "1")


def test_first_segment_that_cannot_be_a_host_is_not_probed(fake_model_registry: FakeModelRegistry) -> None:
    fake_model_registry.add_model("my_model", versions=[{"name": "v1", "artifacts": [{"uri": "s3://b/m"}]}])
    assert resolve("model-registry://my_model/v1", env_for(fake_model_registry)) == "s3://b/m"
    assert {r.host for r in fake_model_registry.requests} == {fake_model_registry.host}


def test_explicit_archived_version_is_used(registry: FakeModelRegistry) -> None:
    assert resolve("model-registry://iris/v3", env_for(registry)) == "s3://models/iris/v3"


@pytest.mark.parametrize("version", [None, "v1"])
def test_host_forms(registry: FakeModelRegistry, version: str | None) -> None:
    # The base URL points nowhere: only the host in the URI can answer.
    env = env_for(registry, MODEL_REGISTRY_BASE_URL="localhost:9")
    suffix = f"/{version}" if version else ""
    result = resolve(f"model-registry://{registry.host}/iris{suffix}", env)
    assert result == f"s3://models/iris/{version or 'v2'}"
    assert all(r.host == registry.host for r in registry.requests)


def test_two_segments_equal_to_base_host_skip_the_probe(registry: FakeModelRegistry) -> None:
    assert resolve(f"model-registry://{registry.host}/iris", env_for(registry)) == "s3://models/iris/v2"
    assert registry.requests[0].path.endswith("/registered_model")


def test_two_segments_probe_a_token_protected_registry(fake_model_registry: FakeModelRegistry) -> None:
    """A 401 from the probed host counts as "is a registry"; the token goes only to later calls."""
    fake = fake_model_registry
    fake.add_model("iris", versions=[{"name": "v1", "artifacts": [{"uri": "https://x.test/iris.bin"}]}])
    fake.require_token = "tok-123456"
    env = env_for(fake, MODEL_REGISTRY_BASE_URL="localhost:9")
    assert resolve(f"model-registry://{fake.host}/iris", env) == "https://x.test/iris.bin"
    probe, *rest = fake.requests
    assert (probe.path.endswith("/registered_models"), probe.status, probe.authorization) == (True, 401, None)
    assert rest and all(r.authorization == "Bearer tok-123456" and r.status == 200 for r in rest)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("model-registry://iris?namespace=team-a", "s3://models/iris/v2"),
        ("model-registry://iris/v1?namespace=team-a", "s3://models/iris/v1"),
        ("model-registry://elsewhere:1234/iris/v3?namespace=team-a", "s3://models/iris/v3"),
        (f"model-registry://{NS_HOST}/iris?namespace=team-a", "s3://models/iris/v2"),
    ],
)
def test_namespace_selects_service_dot_namespace_dot_domain(
    registry: FakeModelRegistry, uri: str, expected: str
) -> None:
    registry.served_hosts.add(NS_HOST)
    assert resolve(uri, env_for(registry, MODEL_REGISTRY_BASE_URL="localhost:8080")) == expected
    assert {r.host for r in registry.requests} == {NS_HOST}  # no probe, no other host


def test_service_name_cluster_domain_and_port_variables(registry: FakeModelRegistry) -> None:
    host = "mr.team-b.cluster.example:9443"
    registry.served_hosts.add(host)
    env = env_for(
        registry,
        MODEL_REGISTRY_BASE_URL="anything:9443",
        MODEL_REGISTRY_SERVICE_NAME="mr",
        MODEL_REGISTRY_CLUSTER_DOMAIN="cluster.example",
    )
    assert resolve("model-registry://iris?namespace=team-b", env) == "s3://models/iris/v2"
    assert {r.host for r in registry.requests} == {host}


def test_namespace_port_defaults_to_8080(registry: FakeModelRegistry) -> None:
    registry.served_hosts.add("model-registry-service.team-a.svc.cluster.local:8080")
    assert resolve("model-registry://iris?namespace=team-a", env_for(registry, MODEL_REGISTRY_BASE_URL="mr")) == (
        "s3://models/iris/v2"
    )


# -- latest / archived / paging rules ------------------------------------------------


def test_latest_live_by_creation_time_across_pages(fake_model_registry: FakeModelRegistry) -> None:
    fake = fake_model_registry
    fake.add_model("m")
    # Ids grow 2..8; creation times do not follow ids; the newest two are ARCHIVED.
    plan = [("a", 5, "LIVE"), ("b", 9, "LIVE"), ("c", 7, "LIVE"), ("d", 1, "LIVE"), ("e", 11, "ARCHIVED")]
    plan += [("f", 12, "ARCHIVED"), ("g", 8, "LIVE")]
    for name, when, state in plan:
        fake.add_version("m", name, state=state, create_time=T0 + when, artifacts=[{"uri": f"s3://b/m/{name}"}])
    assert resolve("model-registry://m", env_for(fake)) == "s3://b/m/b"
    pages = fake.requests_to("/registered_models/1/versions")
    assert len(pages) == 4  # 7 versions, 2 per page
    assert [p.param("nextPageToken") is None for p in pages] == [True, False, False, False]
    assert all((p.param("orderBy"), p.param("sortOrder")) == (None, "DESC") for p in pages)


def test_creation_time_ties_go_to_the_higher_id(fake_model_registry: FakeModelRegistry) -> None:
    fake = fake_model_registry
    fake.add_model("m")
    for name in ("x", "y"):
        fake.add_version("m", name, create_time=T0, artifacts=[{"uri": f"s3://b/{name}"}])
    assert resolve("model-registry://m", env_for(fake)) == "s3://b/y"


def test_newest_model_artifact_wins_over_newer_doc_and_deleted_ones(fake_model_registry: FakeModelRegistry) -> None:
    fake = fake_model_registry
    fake.add_model(
        "llm",
        versions=[
            {
                "name": "1",
                "artifacts": [
                    {"uri": "s3://b/old", "create_time": T0 + 1, "state": "LIVE"},
                    {"uri": "s3://b/current", "create_time": T0 + 5, "state": "LIVE"},
                    {"uri": "s3://b/later", "create_time": T0 + 3},
                    {"uri": "s3://b/deleted", "create_time": T0 + 8, "state": "DELETED"},
                    {"uri": "s3://b/abandoned", "create_time": T0 + 7, "state": "ABANDONED"},
                    {"artifactType": "doc-artifact", "uri": "https://docs/readme", "create_time": T0 + 9},
                ],
            }
        ],
    )
    assert resolve("model-registry://llm", env_for(fake)) == "s3://b/current"
    pages = fake.requests_to("/model_versions/2/artifacts")
    assert pages[0].param("artifactType") == "model-artifact" and len(pages) == 3  # 5 model artifacts


def test_server_that_ignores_artifact_type_filter(fake_model_registry: FakeModelRegistry) -> None:
    """Older registries list every artifact type: doc artifacts are still skipped client-side."""
    fake = fake_model_registry
    fake.add_model(
        "llm",
        versions=[
            {
                "name": "1",
                "artifacts": [
                    {"uri": "s3://b/model", "create_time": T0 + 1},
                    {"artifactType": "doc-artifact", "uri": "https://docs/readme", "create_time": T0 + 9},
                ],
            }
        ],
    )
    fake.add_fault(
        200,
        path_contains="/artifacts",
        body=json.dumps(
            {
                "items": [
                    {"id": "2", "artifactType": "doc-artifact", "uri": "https://docs/readme"},
                    {"id": "1", "artifactType": "model-artifact", "uri": "s3://b/model"},
                ],
                "nextPageToken": "",
                "pageSize": 0,
                "size": 2,
            }
        ),
    )
    assert resolve("model-registry://llm/1", env_for(fake)) == "s3://b/model"


# -- not found, with names -------------------------------------------------------------


def test_missing_model_names_it(registry: FakeModelRegistry) -> None:
    with pytest.raises(NotFoundError) as info:
        resolve("model-registry://tulip", env_for(registry))
    assert "registered model 'tulip' not found" in str(info.value)
    assert registry.host in str(info.value)


def test_missing_model_in_ambiguous_form_says_how_it_was_read(registry: FakeModelRegistry) -> None:
    with pytest.raises(NotFoundError) as info:
        resolve("model-registry://tulip/v1", env_for(registry))
    message = str(info.value)
    assert "registered model 'tulip' not found" in message and "MODEL/VERSION" in message


def test_missing_version_names_model_version_and_lists_versions(registry: FakeModelRegistry) -> None:
    with pytest.raises(NotFoundError) as info:
        resolve(f"model-registry://{registry.host}/iris/v9", env_for(registry))
    message = str(info.value)
    assert "version 'v9' of registered model 'iris' not found" in message
    assert "v1 (LIVE), v2 (LIVE), v3 (ARCHIVED)" in message


def test_only_archived_versions(fake_model_registry: FakeModelRegistry) -> None:
    fake_model_registry.add_model(
        "old", versions=[{"name": "1", "state": "ARCHIVED"}, {"name": "2", "state": "ARCHIVED"}]
    )
    with pytest.raises(NotFoundError) as info:
        resolve("model-registry://old", env_for(fake_model_registry))
    assert "registered model 'old' has no LIVE version (2 ARCHIVED)" in str(info.value)
    assert "model-registry://old/VERSION" in str(info.value)


def test_no_versions_and_no_model_artifact(fake_model_registry: FakeModelRegistry) -> None:
    fake = fake_model_registry
    fake.add_model("empty")
    fake.add_model(
        "docs-only", versions=[{"name": "1", "artifacts": [{"artifactType": "doc-artifact", "uri": "x://"}]}]
    )
    with pytest.raises(NotFoundError, match="registered model 'empty' has no versions"):
        resolve("model-registry://empty", env_for(fake))
    with pytest.raises(NotFoundError, match="version '1' of registered model 'docs-only' has no model artifact"):
        resolve("model-registry://docs-only", env_for(fake))


@pytest.mark.parametrize(("uri", "message"), [("", "has no uri"), ("bucket/path", "uri without a scheme")])
def test_unusable_artifact_uri(fake_model_registry: FakeModelRegistry, uri: str, message: str) -> None:
    fake_model_registry.add_model("m", versions=[{"name": "1", "artifacts": [{"uri": uri}]}])
    with pytest.raises(StorageInitializerError, match=message):
        resolve("model-registry://m", env_for(fake_model_registry))


# -- transport: auth, TLS, retries, proxies ----------------------------------------------


def test_bearer_token_from_env_and_from_file(registry: FakeModelRegistry, tmp_path: Path) -> None:
    registry.require_token = "s3cr3t-token"
    env = env_for(registry)
    del env["MODEL_REGISTRY_TOKEN"]
    with pytest.raises(AccessDeniedError) as info:
        resolve("model-registry://iris", env)
    assert "HTTP 401" in str(info.value) and "MODEL_REGISTRY_TOKEN" in str(info.value)
    with pytest.raises(AccessDeniedError, match="was not accepted"):
        resolve("model-registry://iris", {**env, "MODEL_REGISTRY_TOKEN": "wrong-token"})
    token_file = tmp_path / "token"
    token_file.write_text("s3cr3t-token\n")
    assert resolve("model-registry://iris", {**env, "MODEL_REGISTRY_TOKEN_FILE": str(token_file)})
    assert registry.requests[-1].authorization == "Bearer s3cr3t-token"
    with pytest.raises(ConfigError, match="MODEL_REGISTRY_TOKEN_FILE"):
        resolve("model-registry://iris", {**env, "MODEL_REGISTRY_TOKEN_FILE": str(tmp_path / "missing")})


def test_an_artifact_naming_another_registry_never_gets_the_token(registry: FakeModelRegistry, tmp_path: Path) -> None:
    """Whoever can write a registry entry chooses its uri: a ``model-registry://`` uri naming
    another host would carry MODEL_REGISTRY_TOKEN there. Such a chain is refused while a token
    is configured (upstream never follows one); without a token it is followed."""
    with FakeModelRegistry() as other:
        other.add_model("stolen", versions=[{"name": "v1", "artifacts": [{"uri": "s3://b/other"}]}])
        registry.add_model(
            "chained", versions=[{"name": "v1", "artifacts": [{"uri": f"model-registry://{other.host}/stolen/v1"}]}]
        )
        registry.require_token = "s3cr3t-token"
        env = {**env_for(registry), "MODEL_REGISTRY_TOKEN": "s3cr3t-token", "NO_PROXY": "127.0.0.1"}
        result = run_cli(["model-registry://chained/v1", str(tmp_path / "out")], env)
        assert result.returncode == 1, result.stderr
        assert not any(r.authorization for r in other.requests)
        assert "another model registry" in result.stderr and other.host in result.stderr
        assert "s3cr3t-token" not in result.stderr
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

        registry.require_token = None
        env.pop("MODEL_REGISTRY_TOKEN")
        assert uri_of(resolve(f"model-registry://{registry.host}/chained/v1", env)) == (
            f"model-registry://{other.host}/stolen/v1"
        )


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_ca_bundle_and_verify_switch(fake_model_registry_tls: FakeModelRegistry) -> None:
    fake = fake_model_registry_tls
    fake.add_model("iris", versions=[{"name": "v1", "artifacts": [{"uri": "s3://b/iris"}]}])
    env = {**fake.env(), **FAST}
    assert resolve("model-registry://iris", env) == "s3://b/iris"
    without_ca = {k: v for k, v in env.items() if k != "MODEL_REGISTRY_CA_BUNDLE"}
    with pytest.raises(StorageInitializerError, match="TLS verification failed"):
        resolve("model-registry://iris", without_ca)
    assert resolve("model-registry://iris", {**without_ca, "REQUESTS_CA_BUNDLE": str(fake.ca_file)})
    assert resolve("model-registry://iris", {**without_ca, "MODEL_REGISTRY_VERIFY_SSL": "false"})


def test_kserve_ca_bundle_configmap_mount(fake_model_registry_tls: FakeModelRegistry, tmp_path: Path) -> None:
    """KServe's cluster CA bundle (CA_BUNDLE_CONFIGMAP_NAME, mounted as cabundle.crt) is trusted."""
    fake = fake_model_registry_tls
    fake.add_model("iris", versions=[{"name": "v1", "artifacts": [{"uri": "s3://b/iris"}]}])
    (tmp_path / "cabundle.crt").write_bytes(Path(str(fake.ca_file)).read_bytes())
    env = {k: v for k, v in {**fake.env(), **FAST}.items() if k != "MODEL_REGISTRY_CA_BUNDLE"}
    kserve = {"CA_BUNDLE_CONFIGMAP_NAME": "odh-trusted-ca-bundle", "CA_BUNDLE_VOLUME_MOUNT_POINT": str(tmp_path)}
    assert resolve("model-registry://iris", {**env, **kserve}) == "s3://b/iris"


def test_transient_errors_are_retried_then_reported(registry: FakeModelRegistry) -> None:
    registry.add_fault(503, path_contains="/registered_model", times=2)
    assert resolve("model-registry://iris", env_for(registry)) == "s3://models/iris/v2"
    registry.add_fault(503, path_contains="/registered_model", times=1)
    with pytest.raises(TransientError, match="HTTP 503"):
        resolve("model-registry://iris", env_for(registry, STORAGE_INITIALIZER_RETRIES="0"))


def test_retry_after_is_honoured_through_the_cli(
    fake_model_registry: FakeModelRegistry, http_server: HttpFileServer, tmp_path: Path
) -> None:
    """503 + Retry-After: 2 from the registry: asked again 2 s later, then the artifact is downloaded."""
    url = http_server.add("/ra/model.bin", b"weights")
    fake_model_registry.add_model("ra", versions=[{"name": "v1", "artifacts": [{"uri": url}]}])
    fake_model_registry.add_fault(503, path_contains="/registered_model", headers={"Retry-After": "2"})
    env = {**fake_model_registry.env(), **FAST, "NO_PROXY": "127.0.0.1"}
    result = run_cli(["model-registry://ra/v1", str(tmp_path / "out")], env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "model.bin").read_bytes() == b"weights"
    assert "retrying in 2.0s" in result.stderr
    times = [r.time for r in fake_model_registry.requests if "/registered_model" in r.path]
    assert times[1] - times[0] >= 1.95


def test_sigterm_ends_a_retry_wait(fake_model_registry: FakeModelRegistry, tmp_path: Path) -> None:
    """A registry answering 503 + Retry-After: 60: SIGTERM ends the wait at once (exit 143)."""
    fake_model_registry.add_model("busy", versions=[{"name": "v1", "artifacts": [{"uri": "s3://b/m"}]}])
    fake_model_registry.add_fault(503, path_contains="/registered_model", times=99, headers={"Retry-After": "60"})
    env = clean_env({**fake_model_registry.env(), "NO_PROXY": "127.0.0.1"})
    process = subprocess.Popen(
        [sys.executable, "-m", "storage_initializer", "model-registry://busy/v1", str(tmp_path / "out")],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        if "retrying in" in line:
            break
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 143
    assert time.monotonic() - started < 3  # not the 60 s wait, nor the 5 s hard-exit grace


def test_base_url_forms_and_non_registry_host(registry: FakeModelRegistry) -> None:
    env = env_for(registry)
    full = {**env, "MODEL_REGISTRY_BASE_URL": registry.url}
    assert resolve("model-registry://iris", full) == "s3://models/iris/v2"
    prefixed = {**env, "MODEL_REGISTRY_BASE_URL": registry.url + "/gateway"}
    with pytest.raises(StorageInitializerError, match="not a registry answer"):
        resolve("model-registry://iris", prefixed)
    assert registry.requests[-1].path == "/gateway/api/model_registry/v1alpha3/registered_model"
    with pytest.raises(ConfigError, match="MODEL_REGISTRY_SCHEME"):
        resolve("model-registry://iris", {**env, "MODEL_REGISTRY_SCHEME": "ftp"})


@pytest.mark.usefixtures("short_refused_retry")
def test_no_proxy_bypasses_the_proxy(registry: FakeModelRegistry) -> None:
    env = {**registry.env(), **FAST, "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1"}
    assert resolve("model-registry://iris", env) == "s3://models/iris/v2"
    with pytest.raises(StorageInitializerError, match="connection refused") as refused:
        resolve("model-registry://iris", {**env, "NO_PROXY": "", "STORAGE_INITIALIZER_RETRIES": "0"})
    assert not refused.value.retryable


def test_settings_defaults() -> None:
    settings = settings_from_env({})
    assert (settings.base_url, settings.namespace_host("x")) == (
        "http://localhost:8080",
        "model-registry-service.x.svc.cluster.local:8080",
    )
    assert settings.token is None and settings.verify is True


# -- storage key / storage path -------------------------------------------------------------


@pytest.fixture
def storage_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "storage-config"
    directory.mkdir()
    (directory / "minio").write_text(json.dumps({"type": "s3", "bucket": "models", "access_key_id": "AKIAEXAMPLE"}))
    (directory / "default").write_text(json.dumps({"type": "s3", "bucket": "fallback"}))
    (directory / "lake").write_text(json.dumps({"type": "hdfs", "HDFS_NAMENODE": "nn:8020"}))
    (directory / "gcs").write_text(json.dumps({"type": "gs", "bucket": "b"}))
    return directory


@pytest.mark.parametrize(
    ("artifact", "expected"),
    [
        ({"storageKey": "minio", "storagePath": "iris/v1", "uri": "s3://other/x"}, "s3://models/iris/v1"),
        ({"storagePath": "/iris/v1"}, "s3://fallback/iris/v1"),
        ({"storageKey": "lake", "storagePath": "/user/me/iris"}, "hdfs:///user/me/iris"),
        ({"storageKey": "absent", "storagePath": "iris", "uri": "s3://bucket/iris"}, "s3://bucket/iris"),
        ({"storageKey": "minio", "uri": "s3://bucket/iris"}, "s3://bucket/iris"),
    ],
)
def test_storage_key_and_path(
    fake_model_registry: FakeModelRegistry, storage_dir: Path, artifact: dict[str, str], expected: str
) -> None:
    fake_model_registry.add_model("iris", versions=[{"name": "v1", "artifacts": [artifact]}])
    env = env_for(fake_model_registry, MODEL_REGISTRY_STORAGE_CONFIG_DIR=str(storage_dir))
    result = resolve("model-registry://iris", env)
    assert uri_of(result) == expected
    if expected != artifact.get("uri"):
        assert isinstance(result, Resolution)
        key = artifact.get("storageKey", "default")
        assert result.env == {"STORAGE_CONFIG": (storage_dir / key).read_text()}


def test_storage_key_errors_and_overrides(fake_model_registry: FakeModelRegistry, storage_dir: Path) -> None:
    fake = fake_model_registry
    fake.add_model("nouri", versions=[{"name": "1", "artifacts": [{"storageKey": "absent", "storagePath": "p"}]}])
    fake.add_model("gcs", versions=[{"name": "1", "artifacts": [{"storageKey": "gcs", "storagePath": "p"}]}])
    fake.add_model("minio", versions=[{"name": "1", "artifacts": [{"storageKey": "minio", "storagePath": "p"}]}])
    env = env_for(fake, MODEL_REGISTRY_STORAGE_CONFIG_DIR=str(storage_dir))
    with pytest.raises(ConfigError, match="storage key 'absent'"):
        resolve("model-registry://nouri", env)
    with pytest.raises(ConfigError, match="supports s3, hdfs, webhdfs"):
        resolve("model-registry://gcs", env)
    override = {**env, "STORAGE_OVERRIDE_CONFIG": json.dumps({"bucket": "override"})}
    assert uri_of(resolve("model-registry://minio", override)) == "s3://override/p"
    # Without the mounted secret, STORAGE_CONFIG itself is the key's entry (as KServe injects it).
    from_env = {**env_for(fake), "STORAGE_CONFIG": json.dumps({"type": "s3", "bucket": "envb"})}
    assert uri_of(resolve("model-registry://nouri", from_env)) == "s3://envb/p"


def test_s3_uri_with_endpoint_and_region_query(fake_model_registry: FakeModelRegistry) -> None:
    """The registry's Python client writes s3://b/p?endpoint=E&defaultRegion=R (utils.s3_uri_from)."""
    uri = "s3://models/iris?endpoint=http://minio.team-a:9000&defaultRegion=eu-west-1"
    fake_model_registry.add_model("iris", versions=[{"name": "v1", "artifacts": [{"uri": uri}]}])
    result = resolve("model-registry://iris", env_for(fake_model_registry))
    assert result == Resolution(
        "s3://models/iris", {"AWS_ENDPOINT_URL": "http://minio.team-a:9000", "AWS_DEFAULT_REGION": "eu-west-1"}
    )
    kept = resolve("model-registry://iris", env_for(fake_model_registry, AWS_ENDPOINT_URL="http://own:9000"))
    assert kept == Resolution("s3://models/iris", {"AWS_DEFAULT_REGION": "eu-west-1"})


def test_resolved_uri_is_logged_redacted(
    fake_model_registry: FakeModelRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    fake_model_registry.add_model(
        "iris", versions=[{"name": "v1", "artifacts": [{"uri": "https://h.test/iris.bin?sig=SUPERSECRETSIG"}]}]
    )
    with caplog.at_level(logging.INFO, logger="storage_initializer.model_registry"):
        resolve("model-registry://iris", env_for(fake_model_registry))
    text = caplog.text
    assert "https://h.test/iris.bin?sig=***" in text and "SUPERSECRETSIG" not in text


# -- end to end through the CLI ----------------------------------------------------------------


def _cli_env(fake: FakeModelRegistry, **extra: str) -> dict[str, str]:
    return {**fake.env(), **FAST, "HTTP_PROXY": fake.url, "NO_PROXY": "127.0.0.1", **extra}


def test_cli_downloads_artifact_from_http_server(
    fake_model_registry: FakeModelRegistry, http_server: HttpFileServer, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    url = http_server.add("/models/iris-v2.bin", data)
    fake = fake_model_registry
    fake.require_token = "registry-token-987"
    fake.add_model(
        "iris",
        versions=[
            {"name": "v1", "artifacts": [{"uri": http_server.add("/models/iris-v1.bin", b"old")}]},
            {"name": "v2", "artifacts": [{"uri": url + "?token=HTTPSECRET42"}]},
            {"name": "v3", "state": "ARCHIVED", "artifacts": [{"uri": url + "-archived"}]},
        ],
    )
    http_server.add("/models/iris-v2.bin?token=HTTPSECRET42", data)
    dest = tmp_path / "out"
    result = run_cli(["model-registry://iris", str(dest)], _cli_env(fake))
    assert result.returncode == 0, result.stderr
    assert (dest / "iris-v2.bin").read_bytes() == data
    assert "registry-token-987" not in result.stderr and "HTTPSECRET42" not in result.stderr
    assert "iris-v2.bin?token=***" in result.stderr

    # The explicit, ambiguous MODEL/VERSION form, and an archive that is unpacked.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("model/weights.bin")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    fake.add_version("iris", "v4", artifacts=[{"uri": http_server.add("/models/iris-v4.tgz", buf.getvalue())}])
    dest2 = tmp_path / "out2"
    result = run_cli(["model-registry://iris/v4", str(dest2)], _cli_env(fake))
    assert result.returncode == 0, result.stderr
    assert (dest2 / "model" / "weights.bin").read_bytes() == b"hello"


def test_cli_failure_is_one_error_line_naming_model_and_version(
    fake_model_registry: FakeModelRegistry, tmp_path: Path
) -> None:
    fake_model_registry.require_token = "registry-token-987"
    fake_model_registry.add_model("iris", versions=[{"name": "v1"}])
    result = run_cli(
        [f"model-registry://{fake_model_registry.host}/iris/v7", str(tmp_path / "d")], _cli_env(fake_model_registry)
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, result.stderr
    assert "version 'v7' of registered model 'iris' not found" in errors[0]
    assert "model-registry://" in errors[0]
    assert "registry-token-987" not in result.stderr


def test_cli_downloads_artifact_from_s3(
    fake_model_registry: FakeModelRegistry, seaweedfs: object, tmp_path: Path
) -> None:
    from tests.servers.s3 import S3Server

    assert isinstance(seaweedfs, S3Server)
    bucket = seaweedfs.new_bucket("mr")
    seaweedfs.put(bucket, "iris/v1/model.bin", b"weights-v1")
    seaweedfs.put(bucket, "iris/v1/config.json", b"{}")
    seaweedfs.put(bucket, "iris/v1-extra/other.bin", b"must not be pulled")
    fake = fake_model_registry
    fake.add_model("iris", versions=[{"name": "v1", "artifacts": [{"uri": f"s3://{bucket}/iris/v1"}]}])
    dest = tmp_path / "s3"
    result = run_cli(["model-registry://iris", str(dest)], {**_cli_env(fake), **seaweedfs.env()})
    assert result.returncode == 0, result.stderr
    # Only the version's directory: not the sibling prefix iris/v1-extra/ (the engine's state is hidden).
    assert sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) == ["config.json", "model.bin"]
    assert (dest / "model.bin").read_bytes() == b"weights-v1"

    # storageKey/storagePath, credentials only in the mounted storage-config secret.
    config_dir = tmp_path / "storage-config"
    config_dir.mkdir()
    (config_dir / "minio").write_text(
        json.dumps(
            {
                "type": "s3",
                "bucket": bucket,
                "endpoint_url": seaweedfs.endpoint_url,
                "access_key_id": seaweedfs.access_key,
                "secret_access_key": seaweedfs.secret_key,
                "region": seaweedfs.region,
            }
        )
    )
    fake.add_model("spec", versions=[{"name": "1", "artifacts": [{"storageKey": "minio", "storagePath": "iris/v1"}]}])
    dest2 = tmp_path / "spec"
    env = {**_cli_env(fake), "MODEL_REGISTRY_STORAGE_CONFIG_DIR": str(config_dir)}
    result = run_cli(["model-registry://spec", str(dest2)], env)
    assert result.returncode == 0, result.stderr
    assert (dest2 / "model.bin").read_bytes() == b"weights-v1"
    assert seaweedfs.secret_key not in result.stderr
