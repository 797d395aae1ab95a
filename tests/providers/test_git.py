"""Git repositories over HTTP: a real ``git http-backend`` server and an LFS server on 127.0.0.1.

Repositories are built with the real ``git`` and ``git-lfs`` clients and pushed over HTTP
(tests/servers/git_server.py); downloads go through the real command.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path

import pytest
from storage_initializer_git import GitProvider, GitUri, parse_uri

from storage_initializer.errors import UsageError
from storage_initializer.provider import ProviderContext
from storage_initializer.registry import Registry
from storage_initializer.testing import ConformanceStore, ProviderConformance
from tests.cli import error_line, run_cli, tree
from tests.servers.git_server import GitServer, git_env

PASSWORD = "s3cret-git-pw"
AUTH = {"GIT_USERNAME": "alice", "GIT_PASSWORD": PASSWORD}


def everything_under(root: Path) -> set[str]:
    """Every path below root (files, directories, hidden ones), the engine's state dir excluded."""
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if not p.relative_to(root).as_posix().startswith(".storage-initializer")
    }


def git_temp_dirs(tmp: Path) -> list[str]:
    return [name for name in os.listdir(tmp) if name.startswith("storage-initializer-git-")]


@pytest.fixture
def tmpdir_env(tmp_path: Path) -> dict[str, str]:
    """A TMPDIR of the test's own, to check the fetched pack is removed."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    return {"TMPDIR": str(tmp)}


# -- grammar and routing ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("https://example.com/org/model.git", GitUri("https://example.com/org/model.git", None)),
        ("https://example.com/org/model.git/", GitUri("https://example.com/org/model.git", None)),
        ("https://example.com:8443/a/b/c.git@v1.0", GitUri("https://example.com:8443/a/b/c.git", "v1.0")),
        ("https://bob@example.com/m.git@feature/x", GitUri("https://example.com/m.git", "feature/x", "bob")),
        ("https://bob:pw@example.com/m.git@" + "a" * 40, GitUri("https://example.com/m.git", "a" * 40, "bob", "pw")),
        ("http://127.0.0.1:8080/m.git@refs/tags/v1", GitUri("http://127.0.0.1:8080/m.git", "refs/tags/v1")),
    ],
)
def test_uri_grammar(uri: str, expected: GitUri) -> None:
    assert parse_uri(uri) == expected


@pytest.mark.parametrize(
    "uri",
    ["https://example.com/model", "https://example.com/m.git@", "https://example.com/m.git@a..b", "ftp://h/m.git"],
)
def test_malformed_uris_say_the_grammar(uri: str) -> None:
    with pytest.raises(UsageError, match=r"expected https://\[USER@\]HOST"):
        GitProvider(ProviderContext(env={})).validate(uri)


@pytest.mark.parametrize(
    ("uri", "provider"),
    [
        ("https://github.com/org/model.git", "git"),
        ("https://gitlab.example.com/group/sub/model.git@v1.0", "git"),
        ("https://user@example.com/model.git/", "git"),
        # KServe's regex (https://.+\.git, searched) would send these file URLs to a git clone:
        ("https://raw.githubusercontent.com/org/repo/main/model.onnx", "http"),
        ("https://user.github.io/models/model.joblib", "http"),
        ("https://example.com/repo.git/raw/model.bin", "http"),
    ],
)
def test_git_urls_win_over_the_generic_http_provider(uri: str, provider: str) -> None:
    assert Registry.from_entry_points().find(uri).name == provider


# -- downloads through the command ------------------------------------------------------------
def test_default_branch_branch_tag_and_commit(
    git_server: GitServer, tmp_path: Path, tmpdir_env: dict[str, str]
) -> None:
    first = git_server.commit("org/model", {"config.json": b"{}", "weights/a.bin": b"v1"})
    second = git_server.commit("org/model", {"weights/a.bin": b"v2", "weights/deep/er/b.txt": b"b"}, tag="v2.0")
    dev = git_server.commit("org/model", {"weights/a.bin": b"dev"}, branch="dev")
    url = git_server.repo_url("org/model")
    expected_v2 = {"config.json": b"{}", "weights/a.bin": b"v2", "weights/deep/er/b.txt": b"b"}
    cases = {
        "": expected_v2,
        "@main": expected_v2,
        "@v2.0": expected_v2,  # an annotated tag, peeled to its commit
        "@refs/tags/v2.0": expected_v2,
        "@dev": {"config.json": b"{}", "weights/a.bin": b"dev", "weights/deep/er/b.txt": b"b"},
        f"@{first}": {"config.json": b"{}", "weights/a.bin": b"v1"},  # not a branch tip
        f"@{second[:10]}": expected_v2,  # a short sha of a branch tip
    }
    assert dev != second
    for suffix, expected in cases.items():
        dest = tmp_path / f"out{suffix.replace('/', '_')}"
        result = run_cli([url + suffix, str(dest)], env=tmpdir_env)
        assert result.returncode == 0, (suffix, result.stderr)
        assert tree(dest) == expected, suffix
        # Exactly the repository's files: no .git, no pack, no temp dir; the pack is gone from TMPDIR.
        dirs = {key.rsplit("/", n)[0] for key in expected for n in (1, 2, 3) if key.count("/") >= n}
        assert everything_under(dest) == set(expected) | dirs, suffix
        assert git_temp_dirs(Path(tmpdir_env["TMPDIR"])) == []


def test_a_redirect_to_the_new_name_is_followed(git_server: GitServer, tmp_path: Path) -> None:
    weights = os.urandom(10_000)
    git_server.commit("org/model", {"a.txt": b"a", "w.bin": weights}, lfs=("*.bin",))
    result = run_cli([git_server.repo_url("moved/org/model"), str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == {
        ".gitattributes": b"*.bin filter=lfs diff=lfs merge=lfs -text\n",
        "a.txt": b"a",
        "w.bin": weights,
    }


def test_only_the_one_commit_is_fetched(git_server: GitServer, tmp_path: Path) -> None:
    big = os.urandom(2 * 1024 * 1024)  # incompressible, in the history only
    git_server.commit("org/history", {"old.bin": big, "keep.txt": b"k"})
    git_server.commit("org/history", {"old.bin": None, "new.txt": b"n"})
    before = sum(git_server.upload_pack_bytes)
    result = run_cli([git_server.repo_url("org/history"), str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == {"keep.txt": b"k", "new.txt": b"n"}
    assert sum(git_server.upload_pack_bytes) - before < 100_000  # the 2 MiB blob of the first commit never came


def test_protocol_v2_and_a_v0_only_server(tmp_path: Path) -> None:
    for v2 in (True, False):
        with GitServer(tmp_path / f"v2-{v2}", protocol_v2=v2) as server:
            old = server.commit("org/m", {"a.txt": b"old", "big.bin": os.urandom(500_000)})
            server.commit("org/m", {"a.txt": b"new", "big.bin": None})
            for suffix, expected in (("", {"a.txt": b"new"}), (f"@{old}", None)):
                dest = tmp_path / f"out-{v2}-{bool(suffix)}"
                before = sum(server.upload_pack_bytes)
                result = run_cli([server.repo_url("org/m") + suffix, str(dest)])
                assert result.returncode == 0, result.stderr
                if expected is not None:
                    assert tree(dest) == expected
                    assert sum(server.upload_pack_bytes) - before < 50_000  # one commit, not the history
                else:
                    assert tree(dest)["a.txt"] == b"old" and len(tree(dest)["big.bin"]) == 500_000
            assert ("version=2" in server.protocols) is True  # dulwich asks for v2 either way


def test_lfs_files_are_resolved_and_verified(git_server: GitServer, tmp_path: Path) -> None:
    weights = os.urandom(3 * 1024 * 1024 + 17)
    git_server.commit(
        "org/llm",
        {"model.safetensors": weights, "tokenizer.json": b'{"v": 1}', "empty.bin": b""},
        lfs=("*.safetensors",),
    )
    oid = hashlib.sha256(weights).hexdigest()
    assert git_server.lfs.objects[oid] == weights  # the real git-lfs client uploaded it through the fake
    env = {"STORAGE_INITIALIZER_MULTIPART_THRESHOLD": "1MiB", "STORAGE_INITIALIZER_PART_SIZE": "1MiB"}
    result = run_cli([git_server.repo_url("org/llm"), str(tmp_path / "out")], env=env)
    assert result.returncode == 0, result.stderr
    got = tree(tmp_path / "out")
    assert got["model.safetensors"] == weights
    assert got["tokenizer.json"] == b'{"v": 1}' and got["empty.bin"] == b""
    ranges = [r for o, r in git_server.lfs.downloads if o == oid]
    assert len(ranges) >= 3 and all(r and r.startswith("bytes=") for r in ranges)  # parallel ranged parts
    (batch,) = [b for b in git_server.lfs.batch_requests if b["operation"] == "download"]
    assert batch["transfers"] == ["basic"] and batch["ref"] == {"name": "refs/heads/main"}


def test_the_lfs_fake_serves_the_real_git_lfs_client(git_server: GitServer, tmp_path: Path) -> None:
    weights = os.urandom(200_000)
    git_server.commit("org/faithful", {"w.bin": weights, "README.md": b"hi"}, lfs=("*.bin",))
    clone = tmp_path / "clone"
    proc = subprocess.run(
        ["git", "clone", "--quiet", git_server.repo_url("org/faithful"), str(clone)],
        env=git_env(git_server.home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (clone / "w.bin").read_bytes() == weights  # smudged by git-lfs through the batch API


def test_a_tampered_lfs_object_fails_and_publishes_nothing(git_server: GitServer, tmp_path: Path) -> None:
    weights = os.urandom(300_000)
    git_server.commit("org/tampered", {"w.bin": weights, "ok.txt": b"ok"}, lfs=("*.bin",))
    oid = hashlib.sha256(weights).hexdigest()
    git_server.lfs.objects[oid] = os.urandom(len(weights))  # same size, other bytes
    dest = tmp_path / "out"
    result = run_cli([git_server.repo_url("org/tampered"), str(dest)], env={"STORAGE_INITIALIZER_RETRIES": "0"})
    assert result.returncode == 1, result.stderr
    line = error_line(result.stderr)
    assert "w.bin" in line and "sha256" in line, line
    assert "w.bin" not in tree(dest)


def test_a_missing_lfs_object_is_a_clear_error_unless_ignored(git_server: GitServer, tmp_path: Path) -> None:
    lost, kept = os.urandom(1000), os.urandom(2000)
    git_server.commit("org/lost", {"lost.bin": lost, "kept.bin": kept, "a.txt": b"a"}, lfs=("*.bin",))
    del git_server.lfs.objects[hashlib.sha256(lost).hexdigest()]
    url = git_server.repo_url("org/lost")
    result = run_cli([url, str(tmp_path / "out")])
    assert result.returncode == 1
    line = error_line(result.stderr)
    assert "lost.bin" in line and "Object does not exist, code 404" in line, line
    assert "lost.bin" not in tree(tmp_path / "out")
    # Actions are asked for when a file is read: a file the patterns leave out costs nothing.
    ignored = run_cli([url, str(tmp_path / "ignored")], env={"STORAGE_IGNORE_PATTERNS": "lost.bin"})
    assert ignored.returncode == 0, ignored.stderr
    assert tree(tmp_path / "ignored") == {
        ".gitattributes": b"*.bin filter=lfs diff=lfs merge=lfs -text\n",
        "kept.bin": kept,
        "a.txt": b"a",
    }


def test_symlinks_and_submodules_are_skipped_with_a_warning(git_server: GitServer, tmp_path: Path) -> None:
    git_server.commit(
        "org/links",
        {"real.txt": b"r"},
        symlinks={"link.txt": "real.txt", "escape": "../../etc/passwd"},
        submodules={"vendor/lib": "1" * 40},
    )
    result = run_cli([git_server.repo_url("org/links"), str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr
    assert everything_under(tmp_path / "out") == {"real.txt"}
    assert "skipping symlink link.txt" in result.stderr and "skipping submodule vendor/lib" in result.stderr


def test_a_crafted_tree_cannot_write_a_git_directory(git_server: GitServer, tmp_path: Path) -> None:
    """A hostile server's tree (made with git mktree; git itself refuses to check these out)."""
    git_server.commit("org/hostile", {"seed.txt": b"s"})
    work = git_server.work_tree("org/hostile")

    def mktree(entries: str) -> str:
        proc = subprocess.run(
            ["git", "mktree"],
            cwd=work,
            input=entries,
            capture_output=True,
            text=True,
            check=True,
            env=git_env(git_server.home),
        )
        return proc.stdout.strip()

    blob = git_server.git(work, "hash-object", "-w", "seed.txt")
    inner = mktree(f"100644 blob {blob}\tconfig\n")
    root = mktree(f"040000 tree {inner}\t.git\n040000 tree {inner}\tsub\n100644 blob {blob}\tok.txt\n")
    commit = git_server.git(work, "commit-tree", root, "-m", "hostile")
    git_server.git(work, "push", "--quiet", "origin", f"{commit}:refs/heads/hostile")
    result = run_cli([git_server.repo_url("org/hostile") + "@hostile", str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr
    assert everything_under(tmp_path / "out") == {"ok.txt", "sub", "sub/config"}
    assert "skipping .git/config" in result.stderr


def test_resume_skips_files_already_complete(git_server: GitServer, tmp_path: Path) -> None:
    git_server.commit("org/resume", {"a.txt": b"a", "w.bin": os.urandom(50_000)}, lfs=("*.bin",))
    url, dest = git_server.repo_url("org/resume"), tmp_path / "out"
    assert run_cli([url, str(dest)]).returncode == 0
    downloads = len(git_server.lfs.downloads)
    again = run_cli([url, str(dest)])
    assert again.returncode == 0, again.stderr
    assert "3 already complete" in again.stderr  # .gitattributes, a.txt, w.bin
    assert len(git_server.lfs.downloads) == downloads


def test_repository_credentials_never_go_to_another_lfs_host(private_git_server: GitServer, tmp_path: Path) -> None:
    """The batch answer sends downloads to another origin: only the action's own header goes there."""
    weights = os.urandom(200_000)
    private_git_server.commit("team/split", {"w.bin": weights}, lfs=("*.bin",))
    with GitServer(tmp_path / "cdn") as cdn:
        cdn.lfs = private_git_server.lfs  # the same objects and action token, on another port
        private_git_server.lfs.href_base = cdn.url
        private_git_server.lfs.expired_times = 1  # the first href answers 401: renewed by a new batch
        result = run_cli([private_git_server.repo_url("team/split"), str(tmp_path / "out")], env=AUTH)
        assert result.returncode == 0, result.stderr
        assert tree(tmp_path / "out")["w.bin"] == weights
        sent = [r.authorization for r in cdn.requests if r.path.startswith("/lfs/objects/")]
        assert len(sent) == 2 and all(auth == f"RemoteAuth {cdn.lfs.token}" for auth in sent), sent
    downloads = [b for b in private_git_server.lfs.batch_requests if b["operation"] == "download"]
    assert len(downloads) == 2  # the listing's, and one renewal after the 401


def test_ordinary_files_held_in_memory_are_bounded(git_server: GitServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Concurrent reads of non-LFS files wait while the in-memory budget is used up."""
    import storage_initializer_git.provider as module

    monkeypatch.setattr(module, "BLOB_MEMORY_BUDGET", 150_000)
    git_server.commit("org/mem", {"a.bin": os.urandom(100_000), "b.bin": os.urandom(100_000)})
    uri = git_server.repo_url("org/mem")
    provider = GitProvider(ProviderContext(env={}, stall_timeout=10))
    try:
        a, b = sorted(provider.list(uri), key=lambda o: o.key)
        first = provider.open_range(uri, a, 0, None)
        opened = threading.Event()

        def second() -> None:
            with provider.open_range(uri, b, 0, None) as stream:
                opened.set()
                assert len(stream.read()) == 100_000

        thread = threading.Thread(target=second)
        thread.start()
        assert not opened.wait(0.5)  # a.bin holds 100 kB of the 150 kB budget
        with first as stream:
            assert len(stream.read()) == 100_000
        thread.join(10)
        assert opened.is_set()
    finally:
        provider.close()


# -- errors ---------------------------------------------------------------------------------
def test_unknown_ref_repo_and_commit_are_clear_errors(git_server: GitServer, tmp_path: Path) -> None:
    git_server.commit("org/model", {"a.txt": b"a"})
    url = git_server.repo_url("org/model")
    cases = {
        url + "@nope": "no branch or tag named 'nope' (branches: main)",
        git_server.repo_url("org/missing"): "repository not found (HTTP 404)",
        url + "@" + "0123abcd" * 5: "not found",
        url + "@abcdef1": "no branch or tag points at a commit starting abcdef1",
    }
    for uri, message in cases.items():
        result = run_cli([uri, str(tmp_path / "out")])
        assert result.returncode == 1, result.stderr
        assert message in error_line(result.stderr), (uri, result.stderr)
        assert tree(tmp_path / "out") == {}


def test_credentials_are_required_used_and_never_shown(
    private_git_server: GitServer, tmp_path: Path, tmpdir_env: dict[str, str]
) -> None:
    weights = os.urandom(100_000)
    private_git_server.commit("team/private", {"w.bin": weights, "a.txt": b"a"}, lfs=("*.bin",))
    url = private_git_server.repo_url("team/private")

    ok = run_cli(["-v", url, str(tmp_path / "ok")], env={**AUTH, **tmpdir_env})
    assert ok.returncode == 0, ok.stderr
    assert tree(tmp_path / "ok") == {
        ".gitattributes": tree(tmp_path / "ok")[".gitattributes"],
        "w.bin": weights,
        "a.txt": b"a",
    }
    assert PASSWORD not in ok.stdout + ok.stderr

    # KServe's form: the user in the URL, the password from GIT_PASSWORD; or a token.
    user_url = private_git_server.repo_url("team/private", "alice")
    for env in ({"GIT_PASSWORD": PASSWORD}, {"GIT_TOKEN": PASSWORD}):
        result = run_cli(["-v", user_url, str(tmp_path / "user")], env=env)
        assert result.returncode == 0, result.stderr
        assert PASSWORD not in result.stdout + result.stderr

    # A password in the URL works too, and is masked.
    in_url = run_cli(["-v", private_git_server.repo_url("team/private", "alice", PASSWORD), str(tmp_path / "url")])
    assert in_url.returncode == 0, in_url.stderr
    assert PASSWORD not in in_url.stdout + in_url.stderr

    unwritable = run_cli([url, str(tmp_path / "nowhere")], env={**AUTH, "TMPDIR": str(tmp_path / "no-such-dir")})
    assert unwritable.returncode == 1
    assert "cannot create a temporary directory" in error_line(unwritable.stderr)
    assert "set TMPDIR" in error_line(unwritable.stderr)

    missing = run_cli([url, str(tmp_path / "missing")])
    assert missing.returncode == 1
    assert "requires credentials (HTTP 401)" in error_line(missing.stderr)
    assert "GIT_USERNAME and GIT_PASSWORD" in error_line(missing.stderr)

    wrong = run_cli(["-v", url, str(tmp_path / "wrong")], env={"GIT_USERNAME": "alice", "GIT_PASSWORD": "not-it-123"})
    assert wrong.returncode == 1
    assert "refused the credentials of 'alice'" in error_line(wrong.stderr)
    assert "not-it-123" not in wrong.stdout + wrong.stderr
    assert git_temp_dirs(Path(tmpdir_env["TMPDIR"])) == []


# -- conformance --------------------------------------------------------------------------------
class GitStore(ConformanceStore):
    """A URI names a repository; each key is a repository holding one file of the key's base name."""

    provider_class = GitProvider
    supports_directories = False  # the grammar names a whole repository, not a path inside it
    supports_markers = False
    # Reads are served from the one commit fetched at listing: a later push can never reach them.
    supports_versions = False

    def __init__(self, server: GitServer) -> None:
        super().__init__()
        self.server = server

    def env(self) -> Mapping[str, str]:
        return {}

    def _repo(self, key: str) -> str:
        # A repository's own name stays plain; the file inside keeps the key's unusual base name.
        plain = key.isascii() and not any(c in key for c in "% ")
        return f"{self.root_name}/{key if plain else hashlib.sha1(key.encode()).hexdigest()[:12]}"

    def uri_for(self, key: str) -> str:
        return self.server.repo_url(self._repo(key))

    def put(self, key: str, data: bytes) -> None:
        self.server.commit(self._repo(key), {key.rsplit("/", 1)[-1]: data}, replace=True)


class TestGitConformance(ProviderConformance):
    @pytest.fixture
    def store(self, git_server: GitServer) -> ConformanceStore:
        return GitStore(git_server)
