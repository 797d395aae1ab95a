"""The hf:// provider against the fake Hub (tests/servers/fake_hf.py), in process and through the CLI."""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from storage_initializer_hf import HfProvider, HfUri, parse_uri

from storage_initializer.errors import (
    AccessDeniedError,
    ConfigError,
    NotFoundError,
    StorageInitializerError,
    TransientError,
    UsageError,
)
from storage_initializer.provider import HttpRange, RemoteObject
from storage_initializer.testing import ConformanceStore, ProviderConformance
from tests.cli import download_one, error_line, make_provider, run_cli
from tests.providers.hub_faults import HubFaults
from tests.servers.fake_hf import FakeHFHub

MiB = 1024 * 1024
CONFIG = b'{"architectures": ["Bert"], "hidden_size": 768}\n' * 100  # 4.8 kB: the Hub would gzip it


def files_under(root: Path) -> dict[str, bytes]:
    """Regular files below root, the engine's state folder excluded; fails on any symlink."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        assert not path.is_symlink(), rel
        if path.is_file() and not rel.startswith(".storage-initializer"):
            found[rel] = path.read_bytes()
    return found


def env_for(hub: FakeHFHub, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), **extra}


fetch = functools.partial(download_one, "hf", HfProvider)
provider = functools.partial(make_provider, HfProvider)


# -- grammar ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("hf://acme/bert", HfUri("model", "acme/bert", "", "main")),
        ("hf://acme/bert:v1.0", HfUri("model", "acme/bert", "", "v1.0")),
        ("hf://acme/bert:" + "a" * 40, HfUri("model", "acme/bert", "", "a" * 40)),
        ("hf://acme/bert:refs/pr/1", HfUri("model", "acme/bert", "", "refs/pr/1")),
        ("hf://gpt2", HfUri("model", "gpt2", "", "main")),
        ("hf://gpt2:dev", HfUri("model", "gpt2", "", "dev")),
        ("hf://acme/bert/onnx/fp16/", HfUri("model", "acme/bert", "onnx/fp16", "main")),
        ("hf://acme/bert/onnx/model.onnx:v2", HfUri("model", "acme/bert", "onnx/model.onnx", "v2")),
        ("hf://datasets/acme/squad", HfUri("dataset", "acme/squad", "", "main")),
        ("hf://datasets/squad:v1", HfUri("dataset", "squad", "", "v1")),
        ("hf://datasets/acme/squad/data/train:main", HfUri("dataset", "acme/squad", "data/train", "main")),
    ],
)
def test_uri_grammar(uri: str, expected: HfUri) -> None:
    assert parse_uri(uri) == expected


@pytest.mark.parametrize(
    "uri", ["hf://", "hf://acme/bert:", "hf://datasets", "hf://-acme/bert", "hf://acme/b..ert", "hf://acme/bert//x"]
)
def test_malformed_uris_say_the_grammar(uri: str) -> None:
    with pytest.raises(UsageError, match=r"expected hf://"):
        provider({}).validate(uri)


# -- conformance ---------------------------------------------------------------------------
class HfStore(HubFaults, ConformanceStore):
    provider_class = HfProvider
    supports_markers = False  # a git tree has no directory objects
    # Every read is pinned to the commit listed: a new commit can never reach it, so there is no
    # change to detect (test_reads_stay_on_the_listed_commit proves the old bytes keep coming).
    supports_versions = False

    def __init__(self, hub: FakeHFHub) -> None:
        super().__init__()
        self.hub = hub
        self.files: dict[str, bytes] = {}

    def env(self) -> Mapping[str, str]:
        return {"HF_ENDPOINT": self.hub.url, "HF_TOKEN": self.hub.token}

    def uri_for(self, key: str) -> str:
        return f"hf://acme/{self.root_name}" + (f"/{key}" if key else "")

    def put(self, key: str, data: bytes) -> None:
        self.files[key] = data
        self.hub.add_repo(f"acme/{self.root_name}", self.files, private=True)

    def malformed_uri(self) -> str:
        return "hf://"

    # No denied_env: the Hub answers a private repository a foreign token cannot see as missing (404).


class TestHfConformance(ProviderConformance):
    @pytest.fixture
    def store(self, fake_hf_hub: FakeHFHub) -> ConformanceStore:
        return HfStore(fake_hf_hub)


# -- end to end through the CLI ---------------------------------------------------------------
def test_revisions_branch_tag_commit_cli(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    hub = fake_hf_hub
    v1 = hub.add_repo("acme/rev", {"config.json": b"1", "old.txt": b"old"}, tags=["v1.0"])
    hub.add_repo("acme/rev", {"config.json": b"2", "sub/new.txt": b"new"})
    hub.add_repo("acme/rev", {"config.json": b"dev"}, branch="dev")
    pairs = {
        "main": "hf://acme/rev",
        "tag": "hf://acme/rev:v1.0",
        "commit": f"hf://acme/rev:{v1}",
        "dev": "hf://acme/rev:dev",
    }
    args = [a for name, uri in pairs.items() for a in (uri, str(tmp_path / name))]
    done = run_cli(args, env_for(hub, tmp_path))
    assert done.returncode == 0, done.stderr
    assert files_under(tmp_path / "main") == {"config.json": b"2", "sub/new.txt": b"new"}
    assert files_under(tmp_path / "tag") == {"config.json": b"1", "old.txt": b"old"}
    assert files_under(tmp_path / "commit") == {"config.json": b"1", "old.txt": b"old"}
    assert files_under(tmp_path / "dev") == {"config.json": b"dev"}
    assert f"is commit {v1}" in done.stderr


def test_nested_subfolder_file_dataset_and_single_segment_cli(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    hub = fake_hf_hub
    repo = {
        "config.json": CONFIG,
        "model.safetensors": os.urandom(300_000),
        "tokenizer/vocab.txt": b"[PAD]\n[CLS]\n",
        "tokenizer/deep/merges.txt": b"#v\n",
        "tokenizer.json": b"{}",  # a sibling file sharing the folder's prefix
        "empty.txt": b"",
    }
    hub.add_repo("acme/nested", repo)
    hub.add_repo("acme/squad", {"data/train.parquet": b"PAR1" * 5, "README.md": b"# squad"}, repo_type="dataset")
    hub.add_repo("gpt2", {"config.json": b"{}", "64/model.bin": b"w" * 64})
    hub.add_repo("openai-community/bert", {"config.json": b"{renamed}"})
    hub.add_repo_redirect("bert", "openai-community/bert")
    pairs = [
        ("hf://acme/nested", "all"),
        ("hf://acme/nested/tokenizer", "sub"),
        ("hf://acme/nested/tokenizer/deep/merges.txt", "one"),
        ("hf://datasets/acme/squad", "ds"),
        ("hf://gpt2", "gpt2"),
        ("hf://bert", "bert"),
    ]
    done = run_cli([a for uri, d in pairs for a in (uri, str(tmp_path / d))], env_for(hub, tmp_path))
    assert done.returncode == 0, done.stderr
    assert files_under(tmp_path / "all") == repo
    assert files_under(tmp_path / "sub") == {"vocab.txt": b"[PAD]\n[CLS]\n", "deep/merges.txt": b"#v\n"}
    assert files_under(tmp_path / "one") == {"merges.txt": b"#v\n"}
    assert files_under(tmp_path / "ds") == {"data/train.parquet": b"PAR1" * 5, "README.md": b"# squad"}
    assert files_under(tmp_path / "gpt2") == {"config.json": b"{}", "64/model.bin": b"w" * 64}
    assert files_under(tmp_path / "bert") == {"config.json": b"{renamed}"}
    assert not (tmp_path / "all" / ".cache").exists()  # no huggingface_hub cache folder
    assert hub.bytes_served("config.json", "acme/nested") == len(CONFIG)  # asked without gzip


@pytest.mark.parametrize("answer", ["not-found", "empty", "entry"])
def test_a_path_naming_a_file_whatever_the_tree_api_answers(
    fake_hf_hub: FakeHFHub, tmp_path: Path, answer: str
) -> None:
    hub = fake_hf_hub
    hub.add_repo("acme/one-file", {"sub/model.bin": b"w" * 100, "sub/other.txt": b"o", "config.json": CONFIG})
    hub.tree_of_a_file = answer
    try:
        done = run_cli(["hf://acme/one-file/sub/model.bin", str(tmp_path / "out")], env_for(hub, tmp_path))
    finally:
        hub.tree_of_a_file = "not-found"
    assert done.returncode == 0, done.stderr
    assert files_under(tmp_path / "out") == {"model.bin": b"w" * 100}


@pytest.mark.parametrize(("where", "name"), [("cdn", "model.safetensors"), ("hub", "config.json")])
def test_retry_after_is_honoured(fake_hf_hub: FakeHFHub, tmp_path: Path, where: str, name: str) -> None:
    """429 + Retry-After: 2 on a read (an LFS file from the CDN, a small one from the Hub): not asked again sooner."""
    hub = fake_hf_hub
    hub.add_repo("acme/ra", {"model.safetensors": b"s" * 300_000, "config.json": b"{}"})
    hub.add_fault("status", name, status=429, where=where, retry_after="2")  # type: ignore[arg-type]
    env = env_for(hub, tmp_path, STORAGE_INITIALIZER_RETRY_BACKOFF="0.05")
    done = run_cli(["hf://acme/ra", str(tmp_path / "out")], env)
    assert done.returncode == 0, done.stderr
    assert files_under(tmp_path / "out") == {"model.safetensors": b"s" * 300_000, "config.json": b"{}"}
    reads = [r for r in hub.requests if r.filename == name and r.method == "GET"]
    refused = next(i for i, r in enumerate(reads) if r.status == 429)
    assert reads[refused + 1].time - reads[refused].time >= 1.95


def test_50_mib_lfs_file_parallel_ranges_verified_and_resumed(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    hub = fake_hf_hub
    big = os.urandom(50 * MiB)
    hub.add_repo("acme/big", {"model.safetensors": big, "config.json": b"{}"})
    hub.add_fault("cut", "model.safetensors", after_bytes=3 * MiB, where="cdn")
    hub.add_fault("status", "model.safetensors", status=503, where="cdn")
    env = env_for(hub, tmp_path, STORAGE_INITIALIZER_PART_SIZE="8M", STORAGE_INITIALIZER_RETRY_BACKOFF="0.05")
    done = run_cli(["hf://acme/big", str(tmp_path / "out")], env)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out" / "model.safetensors"
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(big).hexdigest()
    reads = hub.body_requests("model.safetensors")
    assert all(r.server == "cdn" and r.range and r.authorization is None for r in reads)
    assert len({r.range for r in reads}) >= 7  # 8 MiB parts, in parallel
    served = hub.bytes_served("model.safetensors")
    assert len(big) <= served <= len(big) + 3 * MiB  # only the cut part was read again
    heads = [r for r in hub.requests if r.method == "HEAD" and r.filename is None and "model.safetensors" in r.path]
    assert len(heads) == 1  # one metadata call, the CDN URL reused by every part

    hub.reset_stats()
    again = run_cli(["hf://acme/big", str(tmp_path / "out")], env)
    assert again.returncode == 0, again.stderr
    assert hub.bytes_served("model.safetensors") == 0  # complete and verified: skipped


def test_corrupt_lfs_bytes_are_caught_by_sha256(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    hub = fake_hf_hub
    hub.add_repo("acme/corrupt", {"w.bin": b"good" * 1000})
    env = env_for(hub, tmp_path)
    prov = provider(env)
    (obj,) = prov.list("hf://acme/corrupt")
    assert obj.checksums == {"sha256": hashlib.sha256(b"good" * 1000).hexdigest()}
    hub.add_fault("corrupt", "w.bin", times=-1)  # the CDN serves other bytes of the same size
    with pytest.raises(StorageInitializerError, match="sha256"):
        fetch("hf://acme/corrupt", tmp_path / "out", env, retries=0)
    assert not (tmp_path / "out" / "w.bin").exists()


def test_corrupt_regular_file_is_caught_by_its_git_blob_id(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    hub = fake_hf_hub
    hub.add_repo("acme/corrupt-text", {"config.json": b'{"hidden_size": 768}'})
    env = env_for(hub, tmp_path)
    hub.add_fault("corrupt", "config.json", times=-1, where="any")  # other bytes, same size
    with pytest.raises(StorageInitializerError, match="git-sha1"):
        fetch("hf://acme/corrupt-text", tmp_path / "out", env, retries=0)
    assert not (tmp_path / "out" / "config.json").exists()
    hub.clear_faults()
    fetch("hf://acme/corrupt-text", tmp_path / "out", env, retries=0)
    assert (tmp_path / "out" / "config.json").read_bytes() == b'{"hidden_size": 768}'


def test_stall_is_retried_then_fails_with_a_message(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    hub = fake_hf_hub
    hub.add_repo("acme/stall", {"w.bin": b"s" * 200_000})
    env = env_for(hub, tmp_path, STORAGE_INITIALIZER_STALL_TIMEOUT="0.5", STORAGE_INITIALIZER_RETRY_BACKOFF="0.05")
    hub.add_fault("stall", "w.bin", after_bytes=1000, seconds=20)
    done = run_cli(["hf://acme/stall", str(tmp_path / "ok")], env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ok" / "w.bin").read_bytes() == b"s" * 200_000
    assert "retrying" in done.stderr

    hub.add_fault("stall", "w.bin", after_bytes=1000, seconds=20, times=-1)
    started = time.monotonic()
    failed = run_cli(["hf://acme/stall", str(tmp_path / "ko")], {**env, "STORAGE_INITIALIZER_RETRIES": "2"})
    assert failed.returncode != 0
    assert time.monotonic() - started < 15
    line = error_line(failed.stderr)
    assert (
        "hf://acme/stall" in line
        and "no byte arrived for 0.5s (stalled connection)" in line
        and "gave up after 2 retries" in line
    )


def test_private_repo_with_and_without_token_cli(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    hub = fake_hf_hub
    hub.add_repo("acme/secret", {"config.json": b"{}", "w.bin": b"x" * 5000}, private=True)
    anonymous = run_cli(["hf://acme/secret", str(tmp_path / "anon")], env_for(hub, tmp_path))
    assert anonymous.returncode == 1
    line = error_line(anonymous.stderr)
    assert "hf://acme/secret" in line and "not found or not readable" in line and "HF_TOKEN" in line
    done = run_cli(
        ["hf://acme/secret", str(tmp_path / "ok")],
        env_for(hub, tmp_path, HF_TOKEN=hub.token, STORAGE_INITIALIZER_LOG_LEVEL="DEBUG"),
    )
    assert done.returncode == 0, done.stderr
    assert files_under(tmp_path / "ok") == {"config.json": b"{}", "w.bin": b"x" * 5000}
    assert hub.token not in done.stderr + done.stdout
    assert all(r.authorization is None for r in hub.requests if r.server == "cdn")
    assert any(r.authorization == f"Bearer {hub.token}" for r in hub.requests if r.server == "hub")


def test_gated_repo(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    hub = fake_hf_hub
    hub.add_repo("acme/llama", {"config.json": b"{}", "w.safetensors": b"w" * 100}, gated="manual")
    with pytest.raises(AccessDeniedError, match="gated") as anonymous:
        fetch("hf://acme/llama", tmp_path / "a", env_for(hub, tmp_path))
    assert "set HF_TOKEN" in str(anonymous.value)
    with pytest.raises(AccessDeniedError, match="not been granted access"):
        fetch("hf://acme/llama", tmp_path / "b", env_for(hub, tmp_path, HF_TOKEN=hub.other_token))
    fetch("hf://acme/llama", tmp_path / "c", env_for(hub, tmp_path, HF_TOKEN=hub.token))
    assert files_under(tmp_path / "c") == {"config.json": b"{}", "w.safetensors": b"w" * 100}


def test_missing_repo_revision_and_file(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    hub = fake_hf_hub
    hub.add_repo("acme/here", {"config.json": b"{}", "sub/a.txt": b"a"})
    env = env_for(hub, tmp_path)
    cases = {
        "hf://acme/nowhere": "repository acme/nowhere not found",
        "hf://datasets/acme/here": "repository datasets/acme/here not found",
        "hf://acme/here:nope": "revision 'nope' not found",
        "hf://acme/here/missing.bin": "missing.bin not found",
        "hf://acme/here/sub/missing": "sub/missing not found",
    }
    for uri, message in cases.items():
        with pytest.raises(NotFoundError, match=message):
            fetch(uri, tmp_path / "out", env)
    done = run_cli(["hf://acme/here:nope", str(tmp_path / "cli")], env)
    assert done.returncode == 1 and "revision 'nope' not found" in error_line(done.stderr)


def test_allow_and_ignore_patterns(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    hub = fake_hf_hub
    hub.add_repo(
        "acme/patterns",
        {"config.json": b"{}", "model.safetensors": b"s", "pytorch_model.bin": b"b", "onnx/model.onnx": b"o"},
    )
    env = env_for(
        hub,
        tmp_path,
        STORAGE_ALLOW_PATTERNS='["*.json", "*.safetensors", "onnx/*"]',
        STORAGE_IGNORE_PATTERNS="onnx/*",
    )
    done = run_cli(["hf://acme/patterns", str(tmp_path / "out")], env)
    assert done.returncode == 0, done.stderr
    assert files_under(tmp_path / "out") == {"config.json": b"{}", "model.safetensors": b"s"}
    assert hub.body_requests("pytorch_model.bin") == []


# -- behaviour of the reads ------------------------------------------------------------------
def test_reads_stay_on_the_listed_commit(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    hub = fake_hf_hub
    hub.add_repo("acme/moving", {"w.bin": b"A" * 50_000, "config.json": b"old", "same.txt": b"same"})
    prov = provider(env_for(hub, tmp_path))
    objects = {o.key: o for o in prov.list("hf://acme/moving")}
    hub.add_repo("acme/moving", {"w.bin": b"B" * 50_000, "config.json": b"new", "same.txt": b"same"})
    for key, expected in (("w.bin", b"A" * 100), ("config.json", b"old")):
        with prov.open_range("hf://acme/moving", objects[key], 0, len(expected)) as stream:
            assert stream.read() == expected
    # A rerun after the branch moved fetches only what changed.
    fetch("hf://acme/moving", tmp_path / "out", env_for(hub, tmp_path))
    hub.reset_stats()
    hub.add_repo("acme/moving", {"w.bin": b"C" * 50_000, "config.json": b"new", "same.txt": b"same"})
    fetch("hf://acme/moving", tmp_path / "out", env_for(hub, tmp_path))
    assert files_under(tmp_path / "out") == {"w.bin": b"C" * 50_000, "config.json": b"new", "same.txt": b"same"}
    assert [r.filename for r in hub.requests if r.filename and r.body_bytes] == ["w.bin"]


def test_expired_cdn_url_is_resolved_again(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    hub = fake_hf_hub
    hub.add_repo("acme/expiry", {"w.bin": b"0123456789" * 1000})
    prov = provider(env_for(hub, tmp_path))
    (obj,) = prov.list("hf://acme/expiry")
    with prov.open_range("hf://acme/expiry", obj, 0, 10) as stream:
        assert stream.read() == b"0123456789"
    hub.expire_cdn_urls()
    with prov.open_range("hf://acme/expiry", obj, 5, 15) as stream:
        assert stream.read() == b"5678901234"
    assert [r.status for r in hub.requests if r.server == "cdn"] == [206, 403, 206]


class _ExpiringHf(HfProvider):
    """Lets the signed CDN URLs expire once, as the second part of the file is about to be read."""

    hub: FakeHFHub
    expired = False

    def http_range(self, uri: str, obj: RemoteObject, start: int, end: int | None) -> HttpRange | None:
        if start > 0 and not type(self).expired:
            type(self).expired = True
            self.hub.expire_cdn_urls()
        return super().http_range(uri, obj, start, end)


def test_an_expired_cdn_url_mid_download_is_resolved_again_by_the_event_loop(
    fake_hf_hub: FakeHFHub, tmp_path: Path
) -> None:
    data = os.urandom(3 * MiB)
    fake_hf_hub.add_repo("acme/expiring", {"model.safetensors": data})
    _ExpiringHf.hub = fake_hf_hub
    _ExpiringHf.expired = False
    fetch_with = functools.partial(download_one, "hf", _ExpiringHf)
    fetch_with(
        "hf://acme/expiring",
        tmp_path / "out",
        env_for(fake_hf_hub, tmp_path),
        part_size=1 * MiB,
        multipart_threshold=1 * MiB,
        file_concurrency=1,
    )
    assert files_under(tmp_path / "out") == {"model.safetensors": data}
    cdn = [r.status for r in fake_hf_hub.requests if r.server == "cdn"]
    assert cdn.count(403) == 1 and cdn.count(206) == 3, cdn  # the refused part, asked again on a new URL
    assert all(r.authorization is None for r in fake_hf_hub.requests if r.server == "cdn")


def test_token_sources(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    hub = fake_hf_hub
    hub.add_repo("acme/tok", {"a.txt": b"a"}, private=True)
    home = tmp_path / "hf-home"
    home.mkdir()

    def listed(env: Mapping[str, str]) -> list[str]:
        return [o.key for o in provider(env).list("hf://acme/tok")]

    assert listed(env_for(hub, tmp_path, HUGGING_FACE_HUB_TOKEN=hub.token)) == ["a.txt"]
    (home / "token").write_text(hub.token + "\n")
    assert listed(env_for(hub, tmp_path)) == ["a.txt"]  # $HF_HOME/token, as `hf auth login` writes it
    (home / "token").unlink()
    (tmp_path / "elsewhere").write_text(hub.token)
    assert listed(env_for(hub, tmp_path, HF_TOKEN_PATH=str(tmp_path / "elsewhere"))) == ["a.txt"]
    with pytest.raises(AccessDeniedError, match="Invalid credentials") as refused:
        listed(env_for(hub, tmp_path, HF_TOKEN="hf_not_a_valid_token"))
    assert "check HF_TOKEN" in str(refused.value)
    with pytest.raises(NotFoundError):
        listed(env_for(hub, tmp_path))


def test_offline_and_endpoint_settings(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    hub = fake_hf_hub
    hub.add_repo("acme/cfg", {"a.txt": b"a"})
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):
        list(provider(env_for(hub, tmp_path, HF_HUB_OFFLINE="1")).list("hf://acme/cfg"))
    with pytest.raises(ConfigError, match="HF_ENDPOINT"):
        provider({"HF_ENDPOINT": "ftp://example"})
    with pytest.raises(ConfigError, match="HF_HUB_DOWNLOAD_TIMEOUT"):
        provider({"HF_HUB_DOWNLOAD_TIMEOUT": "soon"})
    other = FakeHFHub().start()  # HF_ENDPOINT picks the Hub: the same repo name elsewhere is other bytes
    try:
        other.add_repo("acme/cfg", {"b.txt": b"b"})
        assert [o.key for o in provider({"HF_ENDPOINT": other.url}).list("hf://acme/cfg")] == ["b.txt"]
    finally:
        other.stop()


def test_hf_timeouts_bound_api_calls_and_reads(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    hub = fake_hf_hub
    hub.add_repo("acme/slow", {"w.bin": b"w" * 10_000})
    prov = provider(env_for(hub, tmp_path, HF_HUB_DOWNLOAD_TIMEOUT="0.3"), stall_timeout=60.0)
    (obj,) = prov.list("hf://acme/slow")
    hub.add_fault("stall", "w.bin", after_bytes=100, seconds=20)
    started = time.monotonic()
    with pytest.raises(TransientError, match="no data"), prov.open_range("hf://acme/slow", obj, 0, None) as stream:
        stream.read()
    assert time.monotonic() - started < 5

    hub.api_delay = 20
    started = time.monotonic()
    with pytest.raises(TransientError):
        list(provider(env_for(hub, tmp_path, HF_HUB_ETAG_TIMEOUT="0.3"), stall_timeout=60.0).list("hf://acme/slow"))
    assert time.monotonic() - started < 5


def test_objects_carry_git_oid_and_lfs_sha256(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    hub = fake_hf_hub
    sha = hub.add_repo("acme/meta", {"config.json": b"{}", "w.safetensors": b"w" * 10})
    objects: dict[str, RemoteObject] = {o.key: o for o in provider(env_for(hub, tmp_path)).list("hf://acme/meta")}
    assert objects["config.json"].version == hub.blob("acme/meta", "config.json").oid
    assert objects["config.json"].checksums == {"git-sha1": hub.blob("acme/meta", "config.json").oid}
    assert objects["w.safetensors"].checksums == {"sha256": hashlib.sha256(b"w" * 10).hexdigest()}
    assert objects["w.safetensors"].extra.commit == sha


def test_listing_follows_tree_pages(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    hub = fake_hf_hub
    hub.tree_page_size = 2
    files = {f"shard-{i}/part.txt": str(i).encode() for i in range(5)}
    hub.add_repo("acme/paged", files)
    fetch("hf://acme/paged", tmp_path / "out", env_for(hub, tmp_path))
    assert files_under(tmp_path / "out") == files
    pages = [r for r in hub.requests if "/tree/" in r.path]
    assert len(pages) == 5 and all("cursor=" in r.raw_query for r in pages[1:])  # 10 entries, 2 a page
