"""Proof that the fake ModelScope Hub answers as the SDK expects: driven by the real ``modelscope`` SDK.

``modelscope.snapshot_download`` (what ModelScope users call) and
``modelscope_hub.compat.snapshot_download`` (what KServe's initializer calls) both run against
the fake; the bytes they write must be the repository's.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import requests

from tests import cli
from tests.servers.fake_modelscope import FakeModelScopeHub

BIG = os.urandom(2 * 1024 * 1024 + 17)  # LFS: served from object storage
FILES = {
    "config.json": b'{"model_type": "bert", "hidden_size": 8}\n' * 50,
    "model.safetensors": BIG,
    "tokenizer/vocab.txt": b"a\nb\nc\n",
    "tokenizer/deep/merges.txt": b"#version\n",
    "empty.txt": b"",
}


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file below root (the library's own dot-folders excluded)."""
    return cli.tree(root, hidden=False)


def test_snapshot_download_whole_repo(fake_modelscope_hub: FakeModelScopeHub, tmp_path: Path) -> None:
    from modelscope import snapshot_download

    hub = fake_modelscope_hub
    hub.add_repo("acme/bert", FILES)
    out = snapshot_download("acme/bert", local_dir=str(tmp_path / "out"))
    assert tree(Path(out)) == FILES
    lfs = hub.body_requests("model.safetensors")
    assert [(r.server, r.status) for r in lfs] == [("storage", 200)]
    assert hub.bytes_served("model.safetensors") == len(BIG)
    listing = [r for r in hub.requests if r.path == "/api/v1/models/acme/bert/repo/files"]
    assert len(listing) == 1 and "Revision=master" in listing[0].raw_query  # the SDK's default revision


def test_kserve_entry_point_with_token_private_repo(fake_modelscope_hub: FakeModelScopeHub, tmp_path: Path) -> None:
    """What KServe runs: modelscope_hub.compat.snapshot_download(repo_id, revision, local_dir, token)."""
    from modelscope_hub.compat import snapshot_download

    hub = fake_modelscope_hub
    hub.add_repo("acme/secret", FILES, private=True)
    with pytest.raises(requests.HTTPError, match="403"):
        snapshot_download(repo_id="acme/secret", revision=None, local_dir=str(tmp_path / "anon"))
    out = snapshot_download(repo_id="acme/secret", revision=None, local_dir=str(tmp_path / "ok"), token=hub.token)
    assert tree(Path(out)) == FILES
    hub_reads = [r for r in hub.requests if r.server == "hub" and r.status == 200]
    assert hub_reads and all(r.authorization == f"Bearer {hub.token}" for r in hub_reads)
    storage = [r for r in hub.requests if r.server == "storage"]
    # requests drops Authorization on the cross-origin redirect (cookies are per host, not per port:
    # both fake origins are 127.0.0.1, so the SDK's m_session_id cookie does follow here).
    assert storage and all(r.authorization is None for r in storage)


def test_revisions_branch_tag_commit(fake_modelscope_hub: FakeModelScopeHub, tmp_path: Path) -> None:
    from modelscope import snapshot_download
    from modelscope_hub.compat import LegacyHubApi

    hub = fake_modelscope_hub
    v1 = hub.add_repo("acme/rev", {"a.txt": b"one", "old.txt": b"gone later"}, tags=["v1.0"])
    hub.add_repo("acme/rev", {"a.txt": b"two", "new.txt": b"new"})
    hub.add_repo("acme/rev", {"a.txt": b"dev"}, branch="dev")
    cases = {
        "master": {"a.txt": b"two", "new.txt": b"new"},
        "v1.0": {"a.txt": b"one", "old.txt": b"gone later"},
        v1: {"a.txt": b"one", "old.txt": b"gone later"},
        "dev": {"a.txt": b"dev"},
    }
    for i, (revision, expected) in enumerate(cases.items()):
        out = snapshot_download("acme/rev", revision=revision, local_dir=str(tmp_path / str(i)))
        assert tree(Path(out)) == expected, revision
    branches, tags = LegacyHubApi().get_model_branches_and_tags("acme/rev")
    assert sorted(branches) == ["dev", "master"] and tags == ["v1.0"]
    with pytest.raises(requests.HTTPError, match="404"):
        snapshot_download("acme/rev", revision="nope", local_dir=str(tmp_path / "nope"))
    with pytest.raises(requests.HTTPError, match="404"):
        snapshot_download("acme/missing", local_dir=str(tmp_path / "missing"))


def test_listing_shape_and_per_file_commit(fake_modelscope_hub: FakeModelScopeHub) -> None:
    from modelscope_hub import HubApi

    hub = fake_modelscope_hub
    first = hub.add_repo("acme/shape", {"keep.txt": b"same", "w.bin": b"w1"})
    second = hub.add_repo("acme/shape", {"keep.txt": b"same", "w.bin": b"w2"})
    files = {f.path: f for f in HubApi().list_repo_files("acme/shape", "model")}
    assert files["w.bin"].sha256 == hashlib.sha256(b"w2").hexdigest() and files["w.bin"].size == 2
    # The raw entries, as the SDK's LegacyClient returns them (the 1.x SDK's cache keyed files on
    # "Revision", "the commit id" of the file's last change).
    raw = HubApi().legacy.list_repo_files("acme/shape", "model", revision="master")
    legacy = {f["Path"]: f for f in raw}
    assert legacy["keep.txt"]["Revision"] == first
    assert legacy["w.bin"]["Revision"] == second and legacy["w.bin"]["IsLFS"] is True


def test_allow_and_ignore_patterns(fake_modelscope_hub: FakeModelScopeHub, tmp_path: Path) -> None:
    from modelscope import snapshot_download

    hub = fake_modelscope_hub
    hub.add_repo("acme/pat", FILES)
    out = snapshot_download(
        "acme/pat", local_dir=str(tmp_path / "out"), allow_patterns=["*.json", "tokenizer/*"],
        ignore_patterns=["tokenizer/deep/*"],
    )  # fmt: skip
    assert tree(Path(out)) == {"config.json": FILES["config.json"], "tokenizer/vocab.txt": b"a\nb\nc\n"}
    assert hub.body_requests("model.safetensors") == []


def test_sdk_checks_sha256_and_resumes_with_range(fake_modelscope_hub: FakeModelScopeHub, tmp_path: Path) -> None:
    from modelscope import snapshot_download
    from modelscope_hub.errors import FileDownloadError, FileIntegrityError

    hub = fake_modelscope_hub
    hub.add_repo("acme/faults", {"w.safetensors": BIG})
    hub.add_fault("cut", "w.safetensors", after_bytes=500_000, where="storage")
    out = snapshot_download("acme/faults", local_dir=str(tmp_path / "cut"))
    assert tree(Path(out)) == {"w.safetensors": BIG}
    reads = hub.body_requests("w.safetensors")
    assert [(r.range, r.status) for r in reads] == [(None, 200), ("bytes=500000-", 206)]

    hub.add_fault("corrupt", "w.safetensors", times=-1)
    with pytest.raises(FileDownloadError) as failed:  # the SDK checks the listed Sha256
        snapshot_download("acme/faults", local_dir=str(tmp_path / "corrupt"))
    assert isinstance(failed.value.failed_files["w.safetensors"], FileIntegrityError)
    assert not (tmp_path / "corrupt" / "w.safetensors").exists()


def test_ranges_storage_honours_them_the_hub_does_not(fake_modelscope_hub: FakeModelScopeHub) -> None:
    hub = fake_modelscope_hub
    hub.add_repo("acme/ranges", {"w.bin": BIG, "config.json": b"0123456789"})
    base = f"{hub.url}/api/v1/models/acme/ranges/repo?Revision=master&FilePath="
    redirect = requests.get(base + "w.bin", allow_redirects=False)
    assert redirect.status_code == 302 and redirect.headers["Location"].startswith(hub.storage_url)
    part = requests.get(redirect.headers["Location"], headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == BIG[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(BIG)}"
    beyond = requests.get(redirect.headers["Location"], headers={"Range": f"bytes={len(BIG)}-"})
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{len(BIG)}"
    whole = requests.get(base + "config.json", headers={"Range": "bytes=2-3"})
    assert whole.status_code == 200 and whole.content == b"0123456789"  # a regular file: Range ignored
    hub.expire_storage_urls()
    assert requests.get(redirect.headers["Location"]).status_code == 403


def test_sdk_parallel_ranged_download(
    fake_modelscope_hub: FakeModelScopeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK's own ranged path (for big files) accepts the storage's 206 answers part by part."""
    import modelscope_hub._download as sdk_download
    from modelscope import snapshot_download

    hub = fake_modelscope_hub
    hub.add_repo("acme/parallel", {"w.safetensors": BIG})
    # Read at import from MODELSCOPE_DOWNLOAD_PARALLEL_THRESHOLD_MB / _WORKERS / MODELSCOPE_DOWNLOAD_PART_SIZE_MB.
    monkeypatch.setattr(sdk_download, "DOWNLOAD_PARALLEL_THRESHOLD", 1)
    monkeypatch.setattr(sdk_download, "DOWNLOAD_PARALLELS", 4)
    monkeypatch.setattr(sdk_download, "DOWNLOAD_PART_SIZE", 512 * 1024)
    out = snapshot_download("acme/parallel", local_dir=str(tmp_path / "out"))
    assert tree(Path(out)) == {"w.safetensors": BIG}
    parts = [r for r in hub.body_requests("w.safetensors") if r.server == "storage"]
    assert len(parts) == 5 and all(r.status == 206 and r.range for r in parts)
