"""The modelscope:// provider against the fake Hub (tests/servers/fake_modelscope.py), in process and by the CLI."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
import storage_initializer_modelscope
from storage_initializer_modelscope import ModelScopeProvider, MsUri, parse_uri

from storage_initializer.errors import (
    AccessDeniedError,
    ConfigError,
    NotFoundError,
    StorageInitializerError,
    TransientError,
    UsageError,
)
from storage_initializer.provider import RemoteObject
from storage_initializer.testing import ConformanceStore, ProviderConformance
from tests.cli import clean_env, download_one, error_line, make_provider, run_cli
from tests.providers.hub_faults import HubFaults
from tests.servers.fake_modelscope import FakeModelScopeHub

MiB = 1024 * 1024
FAST = {"STORAGE_INITIALIZER_RETRY_BACKOFF": "0.05", "STORAGE_INITIALIZER_PART_SIZE": "1M",
        "STORAGE_INITIALIZER_MULTIPART_THRESHOLD": "2M"}  # fmt: skip


def files_under(root: Path) -> dict[str, bytes]:
    """Regular files below root, the engine's state folder excluded; fails on any symlink."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        assert not path.is_symlink(), rel
        if path.is_file() and not rel.startswith(".storage-initializer"):
            found[rel] = path.read_bytes()
    return found


def env_for(hub: FakeModelScopeHub, **extra: str) -> dict[str, str]:
    return {"MODELSCOPE_ENDPOINT": hub.url, **extra}


fetch = functools.partial(download_one, "modelscope", ModelScopeProvider)
provider = functools.partial(make_provider, ModelScopeProvider)


# -- grammar ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("modelscope://Qwen/Qwen2.5-0.5B-Instruct", MsUri("Qwen", "Qwen2.5-0.5B-Instruct", "", "master")),
        ("modelscope://acme/bert:v1.0", MsUri("acme", "bert", "", "v1.0")),
        ("modelscope://acme/bert:" + "a" * 40, MsUri("acme", "bert", "", "a" * 40)),
        ("modelscope://acme/bert:feature/x", MsUri("acme", "bert", "", "feature/x")),
        ("modelscope://acme/bert/", MsUri("acme", "bert", "", "master")),
        ("modelscope://acme/bert/onnx/fp16/", MsUri("acme", "bert", "onnx/fp16", "master")),
        ("modelscope://acme/bert/onnx/model.onnx:v2", MsUri("acme", "bert", "onnx/model.onnx", "v2")),
    ],
)
def test_uri_grammar(uri: str, expected: MsUri) -> None:
    assert parse_uri(uri) == expected


@pytest.mark.parametrize(
    "uri",
    ["modelscope://", "modelscope://repo_only", "modelscope:///model_only", "modelscope://repo/:rev",
     "modelscope://acme/bert:", "modelscope://acme/b..ert", "modelscope://acme/bert//x", "modelscope://-a/b c"],
)  # fmt: skip
def test_malformed_uris_say_the_grammar(uri: str) -> None:
    with pytest.raises(UsageError, match=r"expected modelscope://OWNER/MODEL\[:REVISION\]"):
        provider({}).validate(uri)


def test_malformed_uri_through_the_cli_is_a_usage_error(tmp_path: Path) -> None:
    done = run_cli(["modelscope://repo_only", str(tmp_path / "out")])
    assert done.returncode == 2 and "expected modelscope://OWNER/MODEL[:REVISION]" in error_line(done.stderr)


# -- conformance ---------------------------------------------------------------------------
class ModelScopeStore(HubFaults, ConformanceStore):
    provider_class = ModelScopeProvider
    supports_markers = False  # a git tree has no directory objects
    # Every read is pinned to the commit listed for the file: a new commit can never reach it, so
    # there is no change to detect (test_reads_stay_on_the_listed_commit proves the old bytes come).
    supports_versions = False

    def __init__(self, hub: FakeModelScopeHub) -> None:
        super().__init__()
        self.hub = hub
        self.files: dict[str, bytes] = {}

    def env(self) -> Mapping[str, str]:
        return {"MODELSCOPE_ENDPOINT": self.hub.url, "MODELSCOPE_API_TOKEN": self.hub.token}

    def uri_for(self, key: str) -> str:
        return f"modelscope://acme/{self.root_name}" + (f"/{key}" if key else "")

    def put(self, key: str, data: bytes) -> None:
        if key.endswith("/"):
            return  # git has no empty folders
        self.files[key] = data
        self.hub.add_repo(f"acme/{self.root_name}", self.files, private=True)

    def malformed_uri(self) -> str:
        return "modelscope://"


class TestModelScopeConformance(ProviderConformance):
    @pytest.fixture
    def store(self, fake_modelscope_hub: FakeModelScopeHub) -> ConformanceStore:
        return ModelScopeStore(fake_modelscope_hub)


# -- end to end through the CLI ---------------------------------------------------------------
def test_whole_repo_revisions_and_paths_cli(fake_modelscope_hub: FakeModelScopeHub, tmp_path: Path) -> None:
    hub = fake_modelscope_hub
    weights = os.urandom(3 * MiB + 5)
    v1 = hub.add_repo("acme/rev", {"config.json": b"1", "old.txt": b"old"}, tags=["v1.0"])
    repo = {"config.json": b"2", "model.safetensors": weights, "tokenizer/vocab.txt": b"[PAD]\n",
            "tokenizer/deep/merges.txt": b"#v\n", "tokenizer.json": b"{}", "empty.txt": b""}  # fmt: skip
    hub.add_repo("acme/rev", repo)
    hub.add_repo("acme/rev", {"config.json": b"dev"}, branch="dev")
    pairs = {
        "master": "modelscope://acme/rev",
        "tag": "modelscope://acme/rev:v1.0",
        "commit": f"modelscope://acme/rev:{v1}",
        "dev": "modelscope://acme/rev:dev",
        "sub": "modelscope://acme/rev/tokenizer",
        "one": "modelscope://acme/rev/tokenizer/deep/merges.txt",
    }
    args = [a for name, uri in pairs.items() for a in (uri, str(tmp_path / name))]
    done = run_cli(args, env_for(hub, **FAST))
    assert done.returncode == 0, done.stderr
    assert files_under(tmp_path / "master") == repo
    assert files_under(tmp_path / "tag") == {"config.json": b"1", "old.txt": b"old"}
    assert files_under(tmp_path / "commit") == {"config.json": b"1", "old.txt": b"old"}
    assert files_under(tmp_path / "dev") == {"config.json": b"dev"}
    assert files_under(tmp_path / "sub") == {"vocab.txt": b"[PAD]\n", "deep/merges.txt": b"#v\n"}  # not tokenizer.json
    assert files_under(tmp_path / "one") == {"merges.txt": b"#v\n"}
    reads = hub.body_requests("model.safetensors")
    assert len({r.range for r in reads if r.server == "storage"}) == 4  # parallel 1 MiB parts from storage
    assert all(r.authorization is None and r.cookie is None for r in hub.requests if r.server == "storage")


def test_allow_and_ignore_patterns(fake_modelscope_hub: FakeModelScopeHub, tmp_path: Path) -> None:
    hub = fake_modelscope_hub
    hub.add_repo(
        "acme/patterns",
        {"config.json": b"{}", "model.safetensors": b"s", "pytorch_model.bin": b"b", "onnx/model.onnx": b"o"},
    )
    env = env_for(hub, STORAGE_ALLOW_PATTERNS='["*.json", "*.safetensors", "onnx/*"]', STORAGE_IGNORE_PATTERNS="onnx/*")
    done = run_cli(["modelscope://acme/patterns", str(tmp_path / "out")], env)
    assert done.returncode == 0, done.stderr
    assert files_under(tmp_path / "out") == {"config.json": b"{}", "model.safetensors": b"s"}
    assert hub.body_requests("pytorch_model.bin") == []


def test_sha256_is_listed_and_a_corrupted_file_fails(fake_modelscope_hub: FakeModelScopeHub, tmp_path: Path) -> None:
    hub = fake_modelscope_hub
    hub.add_repo("acme/corrupt", {"w.bin": b"good" * 1000, "config.json": b'{"hidden_size": 768}'})
    objects = {o.key: o for o in provider(env_for(hub)).list("modelscope://acme/corrupt")}
    assert objects["w.bin"].checksums == {"sha256": hashlib.sha256(b"good" * 1000).hexdigest()}
    assert objects["config.json"].checksums == {"sha256": hashlib.sha256(b'{"hidden_size": 768}').hexdigest()}
    for name, where in (("w.bin", "storage"), ("config.json", "hub")):
        hub.add_fault("corrupt", name, times=-1, where=where)  # other bytes, same size
        with pytest.raises(StorageInitializerError, match="sha256"):
            fetch(f"modelscope://acme/corrupt/{name}", tmp_path / "out", env_for(hub), retries=0)
        assert not (tmp_path / "out" / name).exists()
    done = run_cli(["modelscope://acme/corrupt", str(tmp_path / "cli")], env_for(hub, STORAGE_INITIALIZER_RETRIES="0"))
    assert done.returncode == 1 and "sha256" in error_line(done.stderr)
    hub.clear_faults()
    fetch("modelscope://acme/corrupt", tmp_path / "out", env_for(hub))
    assert files_under(tmp_path / "out") == {"w.bin": b"good" * 1000, "config.json": b'{"hidden_size": 768}'}


def _partial_done(dest: Path) -> int:
    for path in (dest / ".storage-initializer/partial").glob("*.json"):
        with contextlib.suppress(ValueError):
            return len(json.loads(path.read_text())["done"])
    return 0


def test_killed_download_resumes_from_the_parts_it_had(fake_modelscope_hub: FakeModelScopeHub, tmp_path: Path) -> None:
    hub = fake_modelscope_hub
    data = os.urandom(12 * MiB)
    hub.add_repo("acme/big", {"model.safetensors": data, "config.json": b"{}"})
    hub.add_fault("stall", "model.safetensors", seconds=60, where="storage")  # one part hangs
    dest = tmp_path / "out"
    env = clean_env(env_for(hub, **FAST, STORAGE_INITIALIZER_CONCURRENCY="3"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "storage_initializer", "modelscope://acme/big", str(dest)], env=env,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while _partial_done(dest) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    done_parts = _partial_done(dest)
    assert done_parts >= 5, "the download never got going"
    assert not (dest / "model.safetensors").exists()
    hub.clear_faults()
    hub.reset_stats()
    again = run_cli(["modelscope://acme/big", str(dest)], env_for(hub, **FAST))
    assert again.returncode == 0, again.stderr
    assert (dest / "model.safetensors").read_bytes() == data
    assert f"resuming model.safetensors: {done_parts} of 12 parts already downloaded" in again.stderr
    assert hub.bytes_served("model.safetensors") <= len(data) - done_parts * MiB


def test_private_repo_with_and_without_token_cli(fake_modelscope_hub: FakeModelScopeHub, tmp_path: Path) -> None:
    hub = fake_modelscope_hub
    hub.add_repo("acme/secret", {"config.json": b"{}", "w.bin": b"x" * 5000}, private=True)
    anonymous = run_cli(["modelscope://acme/secret", str(tmp_path / "anon")], env_for(hub))
    assert anonymous.returncode == 1
    line = error_line(anonymous.stderr)
    assert "modelscope://acme/secret" in line and "refused access" in line and "set MODELSCOPE_API_TOKEN" in line
    other = run_cli(
        ["modelscope://acme/secret", str(tmp_path / "other")], env_for(hub, MODELSCOPE_API_TOKEN=hub.other_token)
    )
    assert other.returncode == 1 and "check MODELSCOPE_API_TOKEN" in error_line(other.stderr)
    assert hub.other_token not in other.stderr
    bad = run_cli(
        ["modelscope://acme/secret", str(tmp_path / "bad")], env_for(hub, MODELSCOPE_API_TOKEN="ms-not-a-token")
    )
    assert bad.returncode == 1 and "HTTP 401" in error_line(bad.stderr)
    done = run_cli(
        ["modelscope://acme/secret", str(tmp_path / "ok")],
        env_for(hub, MODELSCOPE_API_TOKEN=hub.token, STORAGE_INITIALIZER_LOG_LEVEL="DEBUG"),
    )
    assert done.returncode == 0, done.stderr
    assert files_under(tmp_path / "ok") == {"config.json": b"{}", "w.bin": b"x" * 5000}
    assert hub.token not in done.stderr + done.stdout
    assert all(r.authorization is None and r.cookie is None for r in hub.requests if r.server == "storage")
    assert any(r.authorization == f"Bearer {hub.token}" for r in hub.requests if r.server == "hub")


def test_missing_repo_revision_and_path(fake_modelscope_hub: FakeModelScopeHub, tmp_path: Path) -> None:
    hub = fake_modelscope_hub
    hub.add_repo("acme/here", {"config.json": b"{}", "sub/a.txt": b"a"})
    env = env_for(hub)
    cases = {
        "modelscope://acme/nowhere": "repository acme/nowhere not found",
        "modelscope://acme/here:nope": "revision 'nope' not found in acme/here",
        "modelscope://acme/here/missing.bin": "missing.bin not found in acme/here at master",
        "modelscope://acme/here/sub/missing": "sub/missing not found in acme/here",
        "modelscope://acme/here/sub:nope": "revision 'nope' not found",
    }
    for uri, message in cases.items():
        with pytest.raises(NotFoundError, match=message):
            fetch(uri, tmp_path / "out", env)
    done = run_cli(["modelscope://acme/here:nope", str(tmp_path / "cli")], env)
    assert done.returncode == 1 and "revision 'nope' not found" in error_line(done.stderr)


def test_endpoint_variables_and_settings(fake_modelscope_hub: FakeModelScopeHub, tmp_path: Path) -> None:
    hub = fake_modelscope_hub
    hub.add_repo("acme/cfg", {"a.txt": b"a"})
    # MODELSCOPE_DOMAIN, the SDK's older variable (a host, or a URL), when MODELSCOPE_ENDPOINT is unset.
    fetch("modelscope://acme/cfg", tmp_path / "domain", {"MODELSCOPE_DOMAIN": hub.url})
    assert files_under(tmp_path / "domain") == {"a.txt": b"a"}
    other = FakeModelScopeHub().start()  # MODELSCOPE_ENDPOINT wins: the same name elsewhere is other bytes
    try:
        other.add_repo("acme/cfg", {"b.txt": b"b"})
        listed = provider({"MODELSCOPE_ENDPOINT": other.url, "MODELSCOPE_DOMAIN": hub.url}).list(
            "modelscope://acme/cfg"
        )
        assert [o.key for o in listed] == ["b.txt"]
    finally:
        other.stop()
    assert provider({"MODELSCOPE_DOMAIN": "hub.example.com"}).settings.endpoints == ("https://hub.example.com",)
    assert provider({"MODELSCOPE_PREFER_AI_SITE": "true"}).settings.endpoints[0] == "https://www.modelscope.ai"
    with pytest.raises(ConfigError, match="MODELSCOPE_DOWNLOAD_TIMEOUT"):
        provider({"MODELSCOPE_DOWNLOAD_TIMEOUT": "soon"})
    with pytest.raises(ConfigError, match="MODELSCOPE_ENDPOINT"):
        provider({"MODELSCOPE_ENDPOINT": "https://"})


def test_reads_stay_on_the_listed_commit(fake_modelscope_hub: FakeModelScopeHub, tmp_path: Path) -> None:
    hub = fake_modelscope_hub
    hub.add_repo("acme/moving", {"w.bin": b"A" * 50_000, "config.json": b"old", "same.txt": b"same"})
    prov = provider(env_for(hub))
    objects = {o.key: o for o in prov.list("modelscope://acme/moving")}
    hub.add_repo("acme/moving", {"w.bin": b"B" * 50_000, "config.json": b"new", "same.txt": b"same"})
    for key, expected in (("w.bin", b"A" * 100), ("config.json", b"old")):
        with prov.open_range("modelscope://acme/moving", objects[key], 0, len(expected)) as stream:
            assert stream.read(len(expected)) == expected
    # A rerun after the branch moved fetches only what changed (a file's version is its commit).
    fetch("modelscope://acme/moving", tmp_path / "out", env_for(hub))
    hub.reset_stats()
    hub.add_repo("acme/moving", {"w.bin": b"C" * 50_000, "config.json": b"new", "same.txt": b"same"})
    fetch("modelscope://acme/moving", tmp_path / "out", env_for(hub))
    assert files_under(tmp_path / "out") == {"w.bin": b"C" * 50_000, "config.json": b"new", "same.txt": b"same"}
    assert [r.filename for r in hub.requests if r.filename and r.body_bytes] == ["w.bin"]


def test_whole_file_answer_to_a_range_is_cut_to_the_range(fake_modelscope_hub: FakeModelScopeHub) -> None:
    hub = fake_modelscope_hub
    hub.add_repo("acme/text", {"notes.txt": b"0123456789"})
    prov = provider(env_for(hub))
    (obj,) = prov.list("modelscope://acme/text")
    assert obj.supports_ranges is False  # a regular git file: the Hub serves it whole
    ranged = RemoteObject(obj.key, obj.size, obj.version, obj.checksums, True, obj.extra)  # as if IsLFS were unknown
    with prov.open_range("modelscope://acme/text", ranged, 3, 7) as stream:
        assert stream.read(4) == b"3456"


def test_expired_storage_url_is_asked_again(fake_modelscope_hub: FakeModelScopeHub) -> None:
    hub = fake_modelscope_hub
    hub.add_repo("acme/expiry", {"w.bin": b"0123456789" * 1000})
    prov = provider(env_for(hub))
    (obj,) = prov.list("modelscope://acme/expiry")
    with prov.open_range("modelscope://acme/expiry", obj, 0, 10) as stream:
        assert stream.read(10) == b"0123456789"
    hub.expire_storage_urls()
    with prov.open_range("modelscope://acme/expiry", obj, 5, 15) as stream:
        assert stream.read(10) == b"5678901234"
    assert [r.status for r in hub.requests if r.server == "storage"] == [206, 403, 206]


def test_stall_is_a_transient_error_within_the_download_timeout(fake_modelscope_hub: FakeModelScopeHub) -> None:
    hub = fake_modelscope_hub
    hub.add_repo("acme/slow", {"w.bin": b"w" * 100_000})
    prov = provider(env_for(hub, MODELSCOPE_DOWNLOAD_TIMEOUT="0.3"), stall_timeout=60.0)
    (obj,) = prov.list("modelscope://acme/slow")
    hub.add_fault("stall", "w.bin", after_bytes=100, seconds=20)
    started = time.monotonic()
    with pytest.raises((TransientError, TimeoutError, OSError)):  # noqa: SIM117
        with prov.open_range("modelscope://acme/slow", obj, 0, None) as stream:
            while stream.read(65536):
                pass
    assert time.monotonic() - started < 5


def test_listing_cut_at_the_hub_cap_is_walked_by_folder(
    fake_modelscope_hub: FakeModelScopeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = fake_modelscope_hub
    hub.files_limit = 6  # 3000 on the real Hub
    monkeypatch.setattr(storage_initializer_modelscope, "LISTING_LIMIT", 6)
    files = {f"shard-{i}/part-{j}.txt": f"{i}{j}".encode() for i in range(3) for j in range(3)}
    files["README.md"] = b"# many"
    hub.add_repo("acme/many", files)
    fetch("modelscope://acme/many", tmp_path / "out", env_for(hub))
    assert files_under(tmp_path / "out") == files
    assert any("Root=shard-1" in r.raw_query for r in hub.requests)


def test_access_errors_are_typed(fake_modelscope_hub: FakeModelScopeHub) -> None:
    hub = fake_modelscope_hub
    hub.add_repo("acme/typed", {"a.txt": b"a"}, private=True)
    with pytest.raises(AccessDeniedError, match="MODELSCOPE_API_TOKEN"):
        list(provider(env_for(hub)).list("modelscope://acme/typed"))
    assert [o.key for o in provider(env_for(hub, MODELSCOPE_API_TOKEN=hub.token)).list("modelscope://acme/typed")] == [
        "a.txt"
    ]


def test_without_an_endpoint_the_site_holding_the_repo_is_used(fake_modelscope_hub: FakeModelScopeHub) -> None:
    """As the SDK: modelscope.cn first, then www.modelscope.ai (here two fakes in their places)."""
    hub = fake_modelscope_hub
    hub.add_repo("acme/intl", {"a.txt": b"from the second site"})
    first = FakeModelScopeHub().start()
    try:
        prov = provider({})
        assert not prov.settings.configured
        prov.settings = dataclasses.replace(prov.settings, endpoints=(first.url, hub.url))
        (obj,) = prov.list("modelscope://acme/intl")
        with prov.open_range("modelscope://acme/intl", obj, 0, None) as stream:
            assert stream.read() == b"from the second site"
        with pytest.raises(NotFoundError, match=f"not found on {first.url} or {hub.url}"):
            list(prov.list("modelscope://acme/nowhere"))
    finally:
        first.stop()


def test_busy_and_cut_reads_are_retried(fake_modelscope_hub: FakeModelScopeHub, tmp_path: Path) -> None:
    hub = fake_modelscope_hub
    weights = os.urandom(3 * MiB)
    hub.add_repo("acme/flaky", {"w.safetensors": weights, "config.json": b"{}"})
    hub.add_fault("status", "w.safetensors", status=503, where="storage")
    hub.add_fault("cut", "w.safetensors", after_bytes=300_000, where="storage")
    hub.add_fault("status", "config.json", status=429, where="hub")
    done = run_cli(["modelscope://acme/flaky", str(tmp_path / "out")], env_for(hub, **FAST))
    assert done.returncode == 0, done.stderr
    assert files_under(tmp_path / "out") == {"w.safetensors": weights, "config.json": b"{}"}
    assert "retrying" in done.stderr
