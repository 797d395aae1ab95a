"""hdfs:// and webhdfs:// against the fake WebHDFS cluster: conformance, every option, failures."""

from __future__ import annotations

import base64
import importlib.util
import json
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from storage_initializer_hdfs import DEFAULT_SECRET_DIR, HdfsProvider, load_config

from storage_initializer.engine.transfer import PairResult
from storage_initializer.errors import (
    AccessDeniedError,
    ConfigError,
    NotFoundError,
    ObjectChangedError,
    ProviderUnavailableError,
    TransientError,
    UsageError,
)
from storage_initializer.provider import ProviderContext
from storage_initializer.registry import Registry
from storage_initializer.runner import download
from storage_initializer.settings import Settings
from storage_initializer.testing import ConformanceStore, ProviderConformance
from tests.cli import run_cli
from tests.servers.fake_webhdfs import FakeWebHDFS
from tests.servers.fault_proxy import ProxyFault

MakeFake = Callable[..., FakeWebHDFS]
MODEL = bytes(range(251)) * 400  # 100400 bytes
TREE = {
    "/models/iris/model.joblib": MODEL,
    "/models/iris/config.json": b'{"name": "iris"}',
    "/models/iris/sub/deep/weights.bin": b"w" * 3000,
    "/models/iris/empty.txt": b"",
}
EXPECTED = {key.removeprefix("/models/iris/"): data for key, data in TREE.items()}


def _seed(fake: FakeWebHDFS, prefix: str = "") -> None:
    for path, data in TREE.items():
        fake.put(prefix + path, data)


def _secrets(directory: Path, **values: str | bytes) -> dict[str, str]:
    """Write KServe's HDFS secret (one file per key) and return the env pointing at it."""
    directory.mkdir(parents=True, exist_ok=True)
    for key, value in values.items():
        (directory / key).write_bytes(value.encode() if isinstance(value, str) else value)
    return {"HDFS_SECRET_DIR": str(directory)}


def _fetch(uri: str, dest: Path, env: Mapping[str, str], **settings: object) -> PairResult:
    options: dict[str, object] = {"concurrency": 4, "stall_timeout": 5, "retries": 2, "retry_backoff": 0.01}
    options.update(settings)
    config = Settings(env=dict(env), heartbeat_seconds=60, **options)  # type: ignore[arg-type]
    (result,) = download([(uri, str(dest))], settings=config, registry=Registry.from_classes({"hdfs": HdfsProvider}))
    return result


def _ok(uri: str, dest: Path, env: Mapping[str, str], **settings: object) -> dict[str, bytes]:
    result = _fetch(uri, dest, env, **settings)
    if result.error is not None:
        raise result.error
    return _files(dest)


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".storage-initializer" not in p.parts
    }


# -- the shared conformance suite ---------------------------------------------------------------


class HdfsStore(ConformanceStore):
    provider_class = HdfsProvider
    supports_markers = False  # HDFS has real directories, no marker objects

    def __init__(self, fake: FakeWebHDFS, secret_dir: Path) -> None:
        super().__init__()
        self.fake = fake
        self._env = _secrets(secret_dir, HDFS_NAMENODE=fake.url)

    def env(self) -> Mapping[str, str]:
        return self._env

    def uri_for(self, key: str) -> str:
        return f"hdfs:///{self.root_name}/{key}" if key else f"hdfs:///{self.root_name}"

    def put(self, key: str, data: bytes) -> None:
        self.fake.put(f"/{self.root_name}/{key}", data)

    def replace(self, key: str, data: bytes) -> None:
        self.fake.replace(f"/{self.root_name}/{key}", data)

    # No malformed_uri: with HDFS_NAMENODE set, KServe reads all after the scheme as a path.

    def fail_once(self, key: str) -> bool:
        self.fake.cut(f"/{self.root_name}/{key}", after=1000)
        return True

    def stall_once(self, key: str, seconds: float) -> bool:
        self.fake.stall(f"/{self.root_name}/{key}", after=1000, seconds=seconds)
        return True


class TestHdfsConformance(ProviderConformance):
    @pytest.fixture
    def store(self, fake_webhdfs: FakeWebHDFS, tmp_path: Path) -> ConformanceStore:
        return HdfsStore(fake_webhdfs, tmp_path / "secret")


# -- end to end through the command -------------------------------------------------------------


def test_cli_downloads_the_whole_tree_with_ranged_reads(fake_webhdfs: FakeWebHDFS, tmp_path: Path) -> None:
    _seed(fake_webhdfs)
    env = _secrets(tmp_path / "secret", HDFS_NAMENODE=fake_webhdfs.url + "\n")  # a trailing newline is fine
    env.update(STORAGE_INITIALIZER_PART_SIZE="32K", STORAGE_INITIALIZER_MULTIPART_THRESHOLD="64K")
    done = run_cli(["hdfs:///models/iris", str(tmp_path / "out")], env)
    assert done.returncode == 0, done.stderr
    assert _files(tmp_path / "out") == EXPECTED  # nested directories and the empty file included
    ranges = sorted((int(r.query["offset"]), int(r.query["length"])) for r in fake_webhdfs.opens(TREE_MODEL))
    assert ranges == [(0, 32768), (32768, 32768), (65536, 32768), (98304, 2096)]
    assert "hdfs configuration from" in done.stderr


TREE_MODEL = "/models/iris/model.joblib"


@pytest.mark.parametrize(
    ("uri", "required_headers", "cause"),
    [
        ("hdfs:///models/nope", {}, "does not exist"),
        ("hdfs:///models/iris", {"Authorization": "Negotiate x"}, "requires authentication"),
    ],
)
def test_cli_failure_is_one_clear_line(
    fake_webhdfs: FakeWebHDFS, tmp_path: Path, uri: str, required_headers: dict[str, str], cause: str
) -> None:
    _seed(fake_webhdfs)
    fake_webhdfs.required_headers = required_headers  # a 401 HTML page the hdfs package logs as ERROR
    env = _secrets(tmp_path / "secret", HDFS_NAMENODE=fake_webhdfs.url)
    done = run_cli([uri, str(tmp_path / "out")], env)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, done.stderr
    assert uri in errors[0] and cause in errors[0]
    assert "<html>" not in done.stderr


def test_kserve_uri_forms_name_the_same_path(fake_webhdfs: FakeWebHDFS, tmp_path: Path) -> None:
    _seed(fake_webhdfs)
    env = _secrets(tmp_path / "secret", HDFS_NAMENODE=fake_webhdfs.url)
    for index, uri in enumerate(["hdfs:///models/iris", "hdfs://models/iris", "webhdfs://models/iris/"]):
        assert _ok(uri, tmp_path / f"out{index}", env) == EXPECTED, uri
    assert _ok("hdfs://models/iris/model.joblib", tmp_path / "single", env) == {"model.joblib": MODEL}
    fake_webhdfs.put("/versions/v1/old.bin", b"old")
    fake_webhdfs.put("/versions/v2/new.bin", b"new")  # later modificationTime
    assert _ok("hdfs:///versions/#LATEST", tmp_path / "latest", env) == {"new.bin": b"new"}  # hdfs client marker


def test_namenode_in_the_uri_when_none_is_configured(fake_webhdfs: FakeWebHDFS, tmp_path: Path) -> None:
    _seed(fake_webhdfs)
    env = {"HDFS_SECRET_DIR": str(tmp_path / "no-such-secret")}
    netloc = fake_webhdfs.url.removeprefix("http://")
    assert _ok(f"webhdfs://{netloc}/models/iris", tmp_path / "a", env) == EXPECTED
    single = _ok(f"hdfs://{netloc}/models/iris/config.json", tmp_path / "b", env)
    assert single == {"config.json": TREE["/models/iris/config.json"]}
    missing = _fetch("hdfs:///models/iris", tmp_path / "c", env).error
    assert isinstance(missing, ConfigError) and "HDFS_NAMENODE is not configured" in str(missing)
    done = run_cli(["hdfs:///models/iris", str(tmp_path / "d")], env)
    assert done.returncode == 2 and "HDFS_NAMENODE" in done.stderr


# -- errors KServe gets wrong or unclear ----------------------------------------------------------


def test_missing_path_and_empty_directories_are_errors(fake_webhdfs: FakeWebHDFS, tmp_path: Path) -> None:
    fake_webhdfs.mkdir("/empty")
    fake_webhdfs.mkdir("/hollow/a/b")
    env = _secrets(tmp_path / "secret", HDFS_NAMENODE=fake_webhdfs.url)
    missing = _fetch("hdfs:///nope", tmp_path / "a", env).error
    assert isinstance(missing, NotFoundError) and "does not exist" in str(missing)
    for uri in ("hdfs:///empty", "hdfs:///hollow"):  # KServe reports success here
        error = _fetch(uri, tmp_path / "b", env).error
        assert isinstance(error, NotFoundError) and "holds no objects" in str(error), uri


def test_permission_denied_is_access_denied(fake_webhdfs: FakeWebHDFS, tmp_path: Path) -> None:
    fake_webhdfs.put("/private/m.bin", b"secret", owner="alice", permission=0o600)
    fake_webhdfs.chmod("/private", 0o700, owner="alice")
    env = _secrets(tmp_path / "secret", HDFS_NAMENODE=fake_webhdfs.url)
    error = _fetch("hdfs:///private", tmp_path / "out", env).error
    assert isinstance(error, AccessDeniedError)
    assert "Permission denied: user=dr.who, access=READ_EXECUTE" in str(error) and "USER_PROXY" in str(error)
    fake_webhdfs.anonymous_allowed = False  # simple auth refusing requests without user.name (HTML 403)
    error = _fetch("hdfs:///private", tmp_path / "out", env).error
    assert isinstance(error, AccessDeniedError) and "Anonymous requests are disallowed" in str(error)


def test_stored_patterns_apply_to_nested_paths(fake_webhdfs: FakeWebHDFS, tmp_path: Path) -> None:
    _seed(fake_webhdfs)
    env = _secrets(tmp_path / "secret", HDFS_NAMENODE=fake_webhdfs.url)
    env["STORAGE_ALLOW_PATTERNS"] = '["*.bin"]'  # KServe would match top-level names only
    settings = {"allow_patterns": ("*.bin",)}
    assert _ok("hdfs:///models/iris", tmp_path / "out", env, **settings) == {"sub/deep/weights.bin": b"w" * 3000}


# -- every configuration option takes effect ------------------------------------------------------


def test_user_proxy_is_sent_as_doas(fake_webhdfs: FakeWebHDFS, tmp_path: Path) -> None:
    fake_webhdfs.put("/private/m.bin", b"secret", owner="alice", permission=0o600)
    fake_webhdfs.chmod("/private", 0o700, owner="alice")
    env = _secrets(tmp_path / "secret", HDFS_NAMENODE=fake_webhdfs.url, USER_PROXY="alice")
    refused = _fetch("hdfs:///private", tmp_path / "a", env).error  # dr.who may not impersonate yet
    assert isinstance(refused, AccessDeniedError) and "not allowed to impersonate alice" in str(refused)
    fake_webhdfs.proxy_users = {"dr.who": ["alice"]}
    assert _ok("hdfs:///private", tmp_path / "b", env) == {"m.bin": b"secret"}
    opens = fake_webhdfs.opens("/private/m.bin")
    assert opens and all(r.query.get("doas") == "alice" for r in opens)
    assert "user.name" not in opens[0].query  # as KServe's hdfs.Client: no user.name


def test_hdfs_rootpath_absolute_and_relative(fake_webhdfs: FakeWebHDFS, tmp_path: Path) -> None:
    _seed(fake_webhdfs)
    _seed(fake_webhdfs, prefix="/user/dr.who")
    fake_webhdfs.put("/user/alice/models/iris/alice.bin", b"alice's")
    fake_webhdfs.proxy_users = {"dr.who": ["alice"]}
    absolute = _secrets(tmp_path / "abs", HDFS_NAMENODE=fake_webhdfs.url, HDFS_ROOTPATH="/models")
    assert _ok("hdfs://iris", tmp_path / "a", absolute) == EXPECTED
    assert _ok("hdfs:///models/iris/config.json", tmp_path / "b", absolute) == {"config.json": b'{"name": "iris"}'}
    relative = _secrets(tmp_path / "rel", HDFS_NAMENODE=fake_webhdfs.url, HDFS_ROOTPATH="models")
    assert _ok("webhdfs://iris", tmp_path / "c", relative) == EXPECTED  # below /user/dr.who (GETHOMEDIRECTORY)
    (tmp_path / "rel" / "USER_PROXY").write_text("alice")
    assert _ok("webhdfs://iris", tmp_path / "d", relative) == {"alice.bin": b"alice's"}


def test_headers_reach_the_namenode_and_stay_secret(fake_webhdfs: FakeWebHDFS, tmp_path: Path) -> None:
    _seed(fake_webhdfs)
    token = "Bearer hdfs-gateway-t0ken-42"
    fake_webhdfs.required_headers = {"Authorization": token}
    env = _secrets(tmp_path / "secret", HDFS_NAMENODE=fake_webhdfs.url)
    refused = _fetch("hdfs:///models/iris", tmp_path / "a", env).error
    assert isinstance(refused, AccessDeniedError) and "HEADERS" in str(refused)
    (tmp_path / "secret" / "HEADERS").write_text(json.dumps({"Authorization": token, "X-Trace": "t-1"}))
    env["STORAGE_INITIALIZER_LOG_LEVEL"] = "DEBUG"
    fake_webhdfs.reset_counters()
    done = run_cli(["hdfs:///models/iris", str(tmp_path / "b")], env)
    assert done.returncode == 0, done.stderr
    assert _files(tmp_path / "b") == EXPECTED
    assert "t0ken" not in done.stderr and "Authorization" in done.stderr  # names logged, never values
    namenode_calls = [r for r in fake_webhdfs.requests if r.node == "namenode"]
    assert namenode_calls and all(r.headers.get("X-Trace") == "t-1" for r in namenode_calls)
    (tmp_path / "secret" / "HEADERS").write_text("not json")
    assert isinstance(_fetch("hdfs:///models/iris", tmp_path / "c", env).error, ConfigError)


def test_tls_ca_beats_requests_ca_bundle_and_skip_verify(make_fake_webhdfs: MakeFake, tmp_path: Path) -> None:
    fake = make_fake_webhdfs(tls=True)
    _seed(fake)
    assert fake.ca_path is not None
    env = _secrets(tmp_path / "secret", HDFS_NAMENODE=fake.url)
    untrusted = _fetch("hdfs:///models/iris", tmp_path / "a", env).error
    assert untrusted is not None and "TLS" in str(untrusted) and "TLS_CA" in str(untrusted)
    (tmp_path / "secret" / "TLS_CA").write_bytes(fake.ca_path.read_bytes())
    # requests would let REQUESTS_CA_BUNDLE override the session's CA: TLS_CA must still win.
    env["REQUESTS_CA_BUNDLE"] = "/etc/ssl/certs/ca-certificates.crt"
    assert _ok("hdfs:///models/iris", tmp_path / "b", env) == EXPECTED
    skip = _secrets(tmp_path / "skip", HDFS_NAMENODE=fake.url, TLS_SKIP_VERIFY="True")
    assert _ok("hdfs:///models/iris", tmp_path / "c", skip) == EXPECTED
    (tmp_path / "skip" / "TLS_SKIP_VERIFY").write_text("yes")  # KServe reads that as false: refuse it
    assert isinstance(_fetch("hdfs:///models/iris", tmp_path / "d", skip).error, ConfigError)


def test_ssl_cert_file_is_honoured_through_the_cli(make_fake_webhdfs: MakeFake, tmp_path: Path) -> None:
    """Without TLS_CA, the shared CA rule applies: SSL_CERT_FILE names the CA (it used to be ignored)."""
    fake = make_fake_webhdfs(tls=True)
    _seed(fake)
    assert fake.ca_path is not None
    env = {**_secrets(tmp_path / "secret", HDFS_NAMENODE=fake.url), "SSL_CERT_FILE": str(fake.ca_path)}
    done = run_cli(["hdfs:///models/iris", str(tmp_path / "out")], env)
    assert done.returncode == 0, done.stderr
    assert _files(tmp_path / "out") == EXPECTED


def test_tls_client_certificate(make_fake_webhdfs: MakeFake, tmp_path: Path) -> None:
    fake = make_fake_webhdfs(tls=True, require_client_cert=True)
    fake.put("/m/model.bin", MODEL)
    assert fake.ca_path is not None
    cert, key = fake.client_cert_files()
    env = _secrets(tmp_path / "secret", HDFS_NAMENODE=fake.url, TLS_CA=fake.ca_path.read_bytes())
    refused = _fetch("hdfs:///m", tmp_path / "a", env).error
    assert refused is not None and "TLS_CERT" in str(refused)
    _secrets(tmp_path / "secret", TLS_CERT=cert.read_bytes(), TLS_KEY=key.read_bytes())
    assert _ok("hdfs:///m", tmp_path / "b", env) == {"model.bin": MODEL}
    (tmp_path / "secret" / "TLS_CERT").unlink()
    assert isinstance(_fetch("hdfs:///m", tmp_path / "c", env).error, ConfigError)  # a key alone


def test_n_threads_caps_concurrent_reads(fake_webhdfs: FakeWebHDFS, tmp_path: Path) -> None:
    for index in range(6):
        fake_webhdfs.put(f"/many/f{index}", b"%d" % index * 1000)
    fake_webhdfs.stall(None, after=0, seconds=0.15, times=-1)  # every read lingers: overlaps are visible
    env = _secrets(tmp_path / "secret", HDFS_NAMENODE=fake_webhdfs.url)
    assert len(_ok("hdfs:///many", tmp_path / "a", env, concurrency=6)) == 6
    assert fake_webhdfs.max_active_reads > 2
    fake_webhdfs.reset_counters()
    (tmp_path / "secret" / "N_THREADS").write_text("2")
    assert len(_ok("hdfs:///many", tmp_path / "b", env, concurrency=6)) == 6
    assert fake_webhdfs.max_active_reads == 2
    (tmp_path / "secret" / "N_THREADS").write_text("0")
    assert isinstance(_fetch("hdfs:///many", tmp_path / "c", env).error, ConfigError)


def test_ha_namenodes_fail_over_from_a_standby(make_fake_webhdfs: MakeFake, tmp_path: Path) -> None:
    standby, active = make_fake_webhdfs(standby=True), make_fake_webhdfs()
    _seed(active)
    env = _secrets(tmp_path / "secret", HDFS_NAMENODE=f"{standby.url};{active.url}")
    assert _ok("hdfs:///models/iris", tmp_path / "out", env) == EXPECTED
    assert standby.requests  # asked first, answered StandbyException
    everyone_standby = _secrets(tmp_path / "s2", HDFS_NAMENODE=standby.url)
    error = _fetch("hdfs:///models/iris", tmp_path / "b", everyone_standby).error
    assert isinstance(error, TransientError) and "StandbyException" in str(error)


@pytest.mark.usefixtures("short_refused_retry")
def test_storage_config_replaces_the_secret_directory(
    make_fake_webhdfs: MakeFake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The provider's scratch directories go to a temporary directory of this test's own: the
    # machine's is shared with other runs, whose directories would come and go meanwhile.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    fake = make_fake_webhdfs(tls=True)
    _seed(fake)
    assert fake.ca_path is not None
    env = _secrets(tmp_path / "secret", HDFS_NAMENODE="http://127.0.0.1:1")  # ignored, as in KServe
    spec = {"type": "hdfs", "HDFS_NAMENODE": fake.url, "TLS_CA": base64.b64encode(fake.ca_path.read_bytes()).decode()}
    env["STORAGE_CONFIG"] = json.dumps(spec)
    env["STORAGE_OVERRIDE_CONFIG"] = json.dumps({"HDFS_ROOTPATH": "/models"})
    assert _ok("hdfs://iris", tmp_path / "out", env) == EXPECTED
    assert list(scratch.glob("storage-initializer-hdfs-*")) == []  # decoded CA removed
    env["STORAGE_CONFIG"] = json.dumps({**spec, "type": "webhdfs", "TLS_CA": "%%% not base64"})
    assert isinstance(_fetch("hdfs://iris", tmp_path / "b", env).error, ConfigError)
    env["STORAGE_CONFIG"] = json.dumps({"type": "s3", "bucket": "b"})  # another type: the directory counts
    assert "connection refused" in str(_fetch("hdfs://iris", tmp_path / "c", env).error)  # port 1 refuses


def test_default_secret_dir_and_spec_file_secrets(tmp_path: Path) -> None:
    """HDFS_SECRET_DIR unset or empty: KServe's mount; a spec's KERBEROS_KEYTAB / TLS_* are base64
    files written for the run, its plain values (even JSON booleans) read as the files would be."""
    assert DEFAULT_SECRET_DIR == "/var/secrets/kserve-hdfscreds"
    for env in ({}, {"HDFS_SECRET_DIR": ""}):
        assert load_config(env, lambda: str(tmp_path)).source == DEFAULT_SECRET_DIR
    keytab = bytes(range(256))
    spec = {
        "type": "webhdfs",
        "HDFS_NAMENODE": "https://nn.example:9871",
        "KERBEROS_PRINCIPAL": "kserve@EXAMPLE.COM",
        "KERBEROS_KEYTAB": base64.b64encode(keytab).decode(),
        "TLS_SKIP_VERIFY": True,
    }
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    config = load_config({"STORAGE_CONFIG": json.dumps(spec)}, lambda: str(scratch))
    assert config.kerberos_principal == "kserve@EXAMPLE.COM" and config.tls_skip_verify
    assert config.kerberos_keytab is not None and Path(config.kerberos_keytab).read_bytes() == keytab
    assert config.namenodes == ("https://nn.example:9871",)


@pytest.mark.usefixtures("short_refused_retry")
def test_proxy_variables_come_from_the_provider_env(fake_webhdfs: FakeWebHDFS, tmp_path: Path) -> None:
    _seed(fake_webhdfs)
    env = _secrets(tmp_path / "secret", HDFS_NAMENODE=fake_webhdfs.url)
    env["HTTP_PROXY"] = "http://127.0.0.1:1"  # a proxy that refuses every connection
    refused = _fetch("hdfs:///models/iris", tmp_path / "a", env, retries=0).error
    assert refused is not None and not refused.retryable and "connection refused" in str(refused)
    env["NO_PROXY"] = "localhost,127.0.0.0/8"
    assert _ok("hdfs:///models/iris", tmp_path / "b", env) == EXPECTED


@pytest.mark.skipif(importlib.util.find_spec("requests_kerberos") is not None, reason="the kerberos extra is installed")
def test_kerberos_without_the_extra_says_what_to_install(fake_webhdfs: FakeWebHDFS, tmp_path: Path) -> None:
    # Kerberos itself cannot run here (no KDC): only the configuration path is checked.
    env = _secrets(
        tmp_path / "secret",
        HDFS_NAMENODE=fake_webhdfs.url,
        KERBEROS_PRINCIPAL="model-reader@EXAMPLE.COM",
        KERBEROS_KEYTAB=b"\x05\x02",
    )
    error = _fetch("hdfs:///models/iris", tmp_path / "out", env).error
    assert isinstance(error, ProviderUnavailableError) and "storage-initializer-hdfs[kerberos]" in str(error)


# -- faults: the engine's retries and change detection, through this provider ---------------------


def test_cut_and_stalled_reads_are_retried(fake_webhdfs: FakeWebHDFS, tmp_path: Path) -> None:
    _seed(fake_webhdfs)
    env = _secrets(tmp_path / "secret", HDFS_NAMENODE=fake_webhdfs.url)
    fake_webhdfs.cut(TREE_MODEL, after=50_000)
    fake_webhdfs.stall("/models/iris/sub/deep/weights.bin", after=100, seconds=30)
    assert _ok("hdfs:///models/iris", tmp_path / "out", env, stall_timeout=0.5) == EXPECTED
    assert len(fake_webhdfs.opens(TREE_MODEL)) == 2
    assert len(fake_webhdfs.opens("/models/iris/sub/deep/weights.bin")) == 2


def test_transient_namenode_errors_are_retried(fake_webhdfs: FakeWebHDFS, tmp_path: Path) -> None:
    _seed(fake_webhdfs)
    env = _secrets(tmp_path / "secret", HDFS_NAMENODE=fake_webhdfs.url)
    fake_webhdfs.fail(403, "RetriableException", "Namenode is in startup mode", op="OPEN", times=2)
    fake_webhdfs.fail(503, "IOException", "busy", java_class="java.io.IOException", node="datanode")
    assert _ok("hdfs:///models/iris", tmp_path / "out", env) == EXPECTED


def test_retry_after_is_honoured(fake_webhdfs: FakeWebHDFS, fault_proxy_factory: Any, tmp_path: Path) -> None:
    """503 + Retry-After: 2 from the namenode on the listing and on an OPEN: not asked again sooner."""
    _seed(fake_webhdfs)
    proxy = fault_proxy_factory(int(fake_webhdfs.url.rsplit(":", 1)[1]))
    proxy.add(ProxyFault("status", status=503, retry_after="2", match="op=LISTSTATUS"))
    proxy.add(ProxyFault("status", status=503, retry_after="2", match="model.joblib?offset=0"))
    env = {
        **_secrets(tmp_path / "secret", HDFS_NAMENODE=proxy.url),
        "STORAGE_INITIALIZER_RETRY_BACKOFF": "0.05",
    }
    done = run_cli(["hdfs:///models/iris", str(tmp_path / "out")], env)
    assert done.returncode == 0, done.stderr
    assert _files(tmp_path / "out") == EXPECTED
    assert len(proxy.injected) == 2
    assert proxy.retry_gap("op=LISTSTATUS") >= 1.95 and proxy.retry_gap("model.joblib?offset=0") >= 1.95


def test_a_file_replaced_mid_download_is_detected(fake_webhdfs: FakeWebHDFS, tmp_path: Path) -> None:
    _seed(fake_webhdfs)
    env = _secrets(tmp_path / "secret", HDFS_NAMENODE=fake_webhdfs.url)
    fake_webhdfs.replace_during_read(TREE_MODEL, MODEL[::-1], after=10_000)  # same size, new content
    error = _fetch("hdfs:///models/iris", tmp_path / "out", env, part_size=32768, multipart_threshold=65536).error
    assert isinstance(error, ObjectChangedError) and "model.joblib changed during the download" in str(error)
    assert "model.joblib" not in _files(tmp_path / "out")  # nothing spliced under the final name
    assert _ok("hdfs:///models/iris", tmp_path / "out", env)["model.joblib"] == MODEL[::-1]  # a rerun heals


@pytest.mark.usefixtures("short_refused_retry")
def test_unreachable_namenode_is_refused_and_not_retried(tmp_path: Path) -> None:
    env = _secrets(tmp_path / "secret", HDFS_NAMENODE="http://127.0.0.1:1")
    error = _fetch("hdfs:///models/iris", tmp_path / "out", env, retries=1).error
    assert error is not None and not error.retryable
    assert "cannot reach the cluster for hdfs:///models/iris: connection refused" in str(error)
    assert "check HDFS_NAMENODE" in str(error)


def test_config_summary_is_logged_without_secrets(fake_webhdfs: FakeWebHDFS, tmp_path: Path) -> None:
    env = _secrets(
        tmp_path / "secret",
        HDFS_NAMENODE=fake_webhdfs.url,
        HEADERS='{"Authorization": "Bearer zzz-top-secret"}',
        USER_PROXY="alice",
        N_THREADS="3",
    )
    provider = HdfsProvider(ProviderContext(env=env))  # only the configuration: no network
    summary = provider.config.describe()
    assert "zzz-top-secret" not in summary
    assert "['Authorization']" in summary and "proxy user alice" in summary and "N_THREADS 3" in summary
    with pytest.raises(UsageError):
        provider.validate("hdfs:/models")  # not hdfs://
    unconfigured = HdfsProvider(ProviderContext(env={"HDFS_SECRET_DIR": str(tmp_path / "none")}))
    with pytest.raises(UsageError, match="invalid namenode port"):
        unconfigured.validate("webhdfs://namenode:http/models")
    with pytest.raises(UsageError, match="no usable namenode"):
        unconfigured.validate("webhdfs://user@namenode:9870/models")


def test_odd_file_names_and_a_file_named_latest_are_read_literally(fake_webhdfs: FakeWebHDFS, tmp_path: Path) -> None:
    # hdfs.Client.resolve expands '#LATEST' in every request's path: a listed file of that name
    # must still be read as itself, not as the newest entry of its directory.
    files = {
        "a b/c d.txt": b"space" * 3000,
        "plus+sign.json": b"plus",
        "pct%20lit.txt": b"pct",
        "hash#x.txt": b"hash",
        "q?x.txt": b"q",
        "\u00fcn\u00efcode/\u00df.bin": b"u" * 30,
        "semi;colon=eq&amp.txt": b"semi",
        "#LATEST": b"a file literally named #LATEST",
        "zz-newer.txt": b"newer",  # created last: what '#LATEST' would expand to
    }
    for key, data in files.items():
        fake_webhdfs.put("/m/odd/" + key, data)
    env = _secrets(tmp_path / "secret", HDFS_NAMENODE=fake_webhdfs.url)
    env.update(STORAGE_INITIALIZER_PART_SIZE="4K", STORAGE_INITIALIZER_MULTIPART_THRESHOLD="8K")
    done = run_cli(["hdfs:///m/odd", str(tmp_path / "out")], env)
    assert done.returncode == 0, done.stderr
    assert _files(tmp_path / "out") == files


def test_a_compressing_gateway_does_not_change_the_bytes(fake_webhdfs: FakeWebHDFS, tmp_path: Path) -> None:
    # A gateway that gzips answers for clients accepting it would hand the engine compressed
    # bytes (the reads bypass decoding): the provider asks for identity encoding.
    data = bytes(range(256)) * 400  # compressible, so a gzipped body differs in size
    fake_webhdfs.put("/m/gz/weights.bin", data)
    fake_webhdfs.put("/m/gz/small.txt", b"small " * 100)
    fake_webhdfs.gzip_reads = True
    try:
        env = _secrets(tmp_path / "secret", HDFS_NAMENODE=fake_webhdfs.url)
        env.update(STORAGE_INITIALIZER_PART_SIZE="16K", STORAGE_INITIALIZER_MULTIPART_THRESHOLD="32K")
        done = run_cli(["hdfs:///m/gz", str(tmp_path / "out")], env)
    finally:
        fake_webhdfs.gzip_reads = False
    assert done.returncode == 0, done.stderr
    assert _files(tmp_path / "out") == {"weights.bin": data, "small.txt": b"small " * 100}
