"""Proof that the fake Hub answers as huggingface.co: driven by the real huggingface_hub client."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import httpx2
import pytest
from huggingface_hub import (
    HfApi,
    constants,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder

from tests import cli
from tests.servers.fake_hf import FakeHFHub, git_blob_oid

BIG = os.urandom(3 * 1024 * 1024 + 17)  # LFS by extension
CONFIG = b'{"model_type": "bert", "hidden_size": 8}\n' * 100  # 4.2 kB of text: gzip on plain GETs
FILES = {
    "config.json": CONFIG,
    "model.safetensors": BIG,
    "tokenizer/vocab.txt": b"a\nb\nc\n",
    "tokenizer/deep/merges.txt": b"#version\n",
    "empty.txt": b"",
}


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file below root (the library's own dot-folders excluded)."""
    return cli.tree(root, hidden=False)


def test_snapshot_download_model_lfs_and_nested(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    hub = fake_hf_hub
    sha = hub.add_repo("acme/bert", FILES)
    out = snapshot_download("acme/bert", local_dir=tmp_path / "out", endpoint=hub.url, cache_dir=tmp_path / "c")
    assert tree(Path(out)) == FILES
    # The LFS body came from the CDN origin, without the token; text went through resolve-cache.
    lfs = hub.body_requests("model.safetensors")
    assert [r.server for r in lfs] == ["cdn"] and lfs[0].authorization is None
    assert hub.bytes_served("model.safetensors") == len(BIG)
    assert 0 < hub.bytes_served("config.json") < len(CONFIG)  # gzip-compressed on the wire
    paths = [r.path for r in hub.requests if r.server == "hub"]
    assert f"/api/resolve-cache/models/acme/bert/{sha}/config.json" in paths
    assert f"/api/models/acme/bert/tree/{sha}" in paths  # listed at the resolved commit


def test_metadata_headers_as_the_hub(fake_hf_hub: FakeHFHub) -> None:
    hub = fake_hf_hub
    sha = hub.add_repo("acme/meta", FILES)
    lfs = get_hf_file_metadata(hf_hub_url("acme/meta", "model.safetensors", endpoint=hub.url))
    assert (lfs.commit_hash, lfs.etag, lfs.size) == (sha, hashlib.sha256(BIG).hexdigest(), len(BIG))
    assert lfs.location.startswith(hub.cdn_url + "/repos/")
    head = httpx2.head(hf_hub_url("acme/meta", "model.safetensors", endpoint=hub.url))
    assert head.status_code == 302
    assert head.headers["ETag"] == f'"{hub.blob("acme/meta", "model.safetensors").oid}"'  # pointer's oid
    assert head.headers["X-Linked-Etag"] == f'"{hashlib.sha256(BIG).hexdigest()}"'
    text = get_hf_file_metadata(hf_hub_url("acme/meta", "config.json", endpoint=hub.url))
    assert (text.commit_hash, text.etag, text.size) == (sha, git_blob_oid(CONFIG), len(CONFIG))
    assert "/api/resolve-cache/models/acme/meta/" in text.location


def test_lfs_ranges_on_cdn(fake_hf_hub: FakeHFHub) -> None:
    hub = fake_hf_hub
    hub.add_repo("acme/ranges", {"w.bin": BIG})
    url = get_hf_file_metadata(hf_hub_url("acme/ranges", "w.bin", endpoint=hub.url)).location
    part = httpx2.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == BIG[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(BIG)}"
    assert part.headers["Accept-Ranges"] == "bytes"
    assert httpx2.get(url, headers={"Range": "bytes=-5"}).content == BIG[-5:]
    beyond = httpx2.get(url, headers={"Range": f"bytes={len(BIG)}-"})
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{len(BIG)}"
    assert httpx2.get(url, headers={"Range": "bytes=0-1,5-6"}).status_code == 200  # S3: no multi-range
    assert httpx2.get(url.replace("Signature=", "Signature=0")).status_code == 403


def test_cut_body_is_resumed_with_range(
    fake_hf_hub: FakeHFHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = fake_hf_hub
    hub.add_repo("acme/cut", {"w.bin": BIG})
    hub.add_fault("cut", "w.bin", after_bytes=1_000_000, where="cdn")
    # The library resumes from its last whole chunk (10 MiB by default): use small chunks.
    chunk = 256 * 1024
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", chunk)
    path = hf_hub_download("acme/cut", "w.bin", endpoint=hub.url, cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == BIG
    resumed_at = 1_000_000 // chunk * chunk
    gets = hub.body_requests("w.bin")
    assert [(r.range, r.status) for r in gets] == [(None, 200), (f"bytes={resumed_at}-", 206)]
    assert hub.bytes_served("w.bin") == 1_000_000 + len(BIG) - resumed_at


def test_stall_and_expired_url(fake_hf_hub: FakeHFHub) -> None:
    hub = fake_hf_hub
    hub.add_repo("acme/stall", {"w.bin": BIG})
    url = get_hf_file_metadata(hf_hub_url("acme/stall", "w.bin", endpoint=hub.url)).location
    hub.add_fault("stall", "w.bin", after_bytes=100, seconds=5)
    with pytest.raises(httpx2.ReadTimeout), httpx2.stream("GET", url, timeout=0.3) as r:
        r.read()
    hub.cdn_url_ttl = -1
    expired = get_hf_file_metadata(hf_hub_url("acme/stall", "w.bin", endpoint=hub.url)).location
    denied = httpx2.get(expired)
    assert denied.status_code == 403 and b"AccessDenied" in denied.content


def test_revisions_branch_tag_commit(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    hub = fake_hf_hub
    v1 = hub.add_repo("acme/rev", {"a.txt": b"one", "old.txt": b"gone later"}, tags=["v1.0"])
    v2 = hub.add_repo("acme/rev", {"a.txt": b"two", "new.txt": b"new"})
    dev = hub.add_repo("acme/rev", {"a.txt": b"dev"}, branch="dev")
    cases = {
        "main": {"a.txt": b"two", "new.txt": b"new"},
        "v1.0": {"a.txt": b"one", "old.txt": b"gone later"},
        v1: {"a.txt": b"one", "old.txt": b"gone later"},
        "dev": {"a.txt": b"dev"},
    }
    for i, (revision, expected) in enumerate(cases.items()):
        out = snapshot_download(
            "acme/rev",
            revision=revision,
            local_dir=tmp_path / str(i),
            endpoint=hub.url,
            cache_dir=tmp_path / "c",
        )
        assert tree(Path(out)) == expected, revision
    assert HfApi(endpoint=hub.url).model_info("acme/rev", revision="dev").sha == dev
    assert HfApi(endpoint=hub.url).model_info("acme/rev").sha == v2
    with pytest.raises(RevisionNotFoundError):
        snapshot_download("acme/rev", revision="nope", endpoint=hub.url, cache_dir=tmp_path / "c")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("acme/rev", "a.txt", revision="f" * 40, endpoint=hub.url, cache_dir=tmp_path / "c")


def test_datasets_single_segment_and_renamed(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    hub = fake_hf_hub
    hub.add_repo("acme/squad", {"data/train.parquet": b"PAR1" * 10, "README.md": b"# d"}, repo_type="dataset")
    out = snapshot_download(
        "acme/squad",
        repo_type="dataset",
        local_dir=tmp_path / "d",
        endpoint=hub.url,
        cache_dir=tmp_path / "c",
    )
    assert tree(Path(out)) == {"data/train.parquet": b"PAR1" * 10, "README.md": b"# d"}
    with pytest.raises(RepositoryNotFoundError):  # a dataset is not a model
        hf_hub_download("acme/squad", "README.md", endpoint=hub.url, cache_dir=tmp_path / "c")
    hub.add_repo("gpt2", {"config.json": CONFIG, "model.safetensors": b"w" * 10})
    out = snapshot_download("gpt2", local_dir=tmp_path / "g", endpoint=hub.url, cache_dir=tmp_path / "c")
    assert tree(Path(out)) == {"config.json": CONFIG, "model.safetensors": b"w" * 10}
    assert not any("resolve-cache" in r.path for r in hub.requests if "gpt2" in r.path)  # served directly
    hub.add_repo("openai/bert", {"config.json": b"{}"})
    hub.add_repo_redirect("bert", "openai/bert")
    assert HfApi(endpoint=hub.url).model_info("bert").id == "openai/bert"
    path = hf_hub_download("bert", "config.json", endpoint=hub.url, cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == b"{}"


def test_private_and_gated(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    hub = fake_hf_hub
    hub.add_repo("acme/secret", {"config.json": b"{}", "w.bin": b"x" * 100}, private=True)
    hub.add_repo("acme/gated", {"config.json": b"{}"}, gated="manual")
    kw: dict[str, Any] = {"endpoint": hub.url, "cache_dir": tmp_path / "c"}
    with pytest.raises(RepositoryNotFoundError) as anon:
        snapshot_download("acme/secret", token=False, **kw)
    assert anon.value.response.status_code == 401
    assert anon.value.response.headers["X-Error-Code"] == "RepoNotFound"
    with pytest.raises(RepositoryNotFoundError) as other:
        hf_hub_download("acme/secret", "config.json", token=hub.other_token, **kw)
    assert other.value.response.status_code == 404
    out = snapshot_download("acme/secret", token=hub.token, local_dir=tmp_path / "s", **kw)
    assert tree(Path(out)) == {"config.json": b"{}", "w.bin": b"x" * 100}
    assert all(r.authorization is None for r in hub.requests if r.server == "cdn")
    with pytest.raises(HfHubHTTPError) as bad:  # an unknown token is not "repo not found"
        HfApi(endpoint=hub.url).model_info("acme/secret", token="hf_wrong")
    assert bad.value.response.status_code == 401 and not isinstance(bad.value, RepositoryNotFoundError)

    assert HfApi(endpoint=hub.url).model_info("acme/gated", token=False).gated == "manual"
    with pytest.raises(GatedRepoError) as gated_anon:
        hf_hub_download("acme/gated", "config.json", token=False, **kw)
    assert gated_anon.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as gated_user:
        hf_hub_download("acme/gated", "config.json", token=hub.other_token, **kw)
    assert gated_user.value.response.status_code == 403
    assert hf_hub_download("acme/gated", "config.json", token=hub.token, **kw)


def test_missing_repo_and_entry(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    hub = fake_hf_hub
    hub.add_repo("acme/there", {"a.txt": b"a"})
    kw: dict[str, Any] = {"endpoint": hub.url, "cache_dir": tmp_path / "c"}
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("acme/nowhere", token=False, **kw)
    with pytest.raises(RepositoryNotFoundError) as with_token:
        HfApi(endpoint=hub.url).model_info("acme/nowhere", token=hub.token)
    assert with_token.value.response.status_code == 404
    with pytest.raises(RemoteEntryNotFoundError) as entry:
        hf_hub_download("acme/there", "missing.txt", **kw)
    assert entry.value.response.headers["X-Repo-Commit"]
    with pytest.raises(RemoteEntryNotFoundError):
        list(HfApi(endpoint=hub.url).list_repo_tree("acme/there", path_in_repo="no/dir"))


def test_tree_pagination_and_paths_info(tmp_path: Path, fake_hf_hub: FakeHFHub) -> None:
    hub = fake_hf_hub
    hub.tree_page_size = 2
    hub.add_repo("acme/many", {f"d{i}/f{j}.txt": b"x" * j for i in range(3) for j in range(3)})
    api = HfApi(endpoint=hub.url)
    entries = list(api.list_repo_tree("acme/many", recursive=True))
    assert sorted(e.path for e in entries if isinstance(e, RepoFile)) == sorted(
        f"d{i}/f{j}.txt" for i in range(3) for j in range(3)
    )
    assert sorted(e.path for e in entries if isinstance(e, RepoFolder)) == ["d0", "d1", "d2"]
    pages = [r for r in hub.requests if "/tree/" in r.path]
    assert len(pages) == 6 and all("cursor=" in r.raw_query for r in pages[1:])
    top = list(api.list_repo_tree("acme/many", path_in_repo="d1"))
    assert [e.path for e in top] == ["d1/f0.txt", "d1/f1.txt", "d1/f2.txt"]
    info = api.get_paths_info("acme/many", ["d0/f2.txt", "d9"])
    assert [(i.path, i.size) for i in info if isinstance(i, RepoFile)] == [("d0/f2.txt", 2)]
    assert len(info) == 1
    hub.add_repo("acme/lfs", {"w.bin": b"w" * 50})
    (entry,) = api.list_repo_tree("acme/lfs", expand=True)
    assert isinstance(entry, RepoFile) and entry.lfs is not None
    assert entry.lfs.sha256 == hashlib.sha256(b"w" * 50).hexdigest() and entry.lfs.size == 50
    assert entry.last_commit is not None
