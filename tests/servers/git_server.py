"""A real smart-HTTP git server on 127.0.0.1: Debian's ``git http-backend`` behind a CGI server.

:class:`GitServer` runs ``git http-backend`` (the CGI program git itself ships
for serving repositories over HTTP) once per request, as Apache or nginx +
fcgiwrap would: ``GIT_PROJECT_ROOT``, ``GIT_HTTP_EXPORT_ALL``, ``PATH_INFO``,
``QUERY_STRING``, ``CONTENT_TYPE``, ``REMOTE_USER``, ``GIT_PROTOCOL`` (from the
``Git-Protocol`` header, so protocol v2 works) and ``HTTP_CONTENT_ENCODING``
(gzip request bodies). Chunked request bodies are decoded. With ``users``
set, every request needs HTTP Basic credentials of one of them (401 with
``WWW-Authenticate`` otherwise), as a private repository on a forge; without,
access is anonymous (and pushes are enabled by configuration).

The Git LFS endpoints are served on the same origin by
:class:`tests.servers.fake_lfs.LfsStore`. :meth:`GitServer.commit` builds
repositories with the real ``git`` and ``git-lfs`` clients, pushing over HTTP,
so every fixture repository went through this server like a user's push.
Counters record the bytes of each ``git-upload-pack`` response (what a fetch
downloaded).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.servers.base import FakeHandler, FakeServer, RequestLog
from tests.servers.fake_lfs import LfsStore

GIT = shutil.which("git") or "git"


def git_env(home: Path) -> dict[str, str]:
    """An environment for the git client that reads no user or system configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "HTTP", "http", "HTTPS", "https"))}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_TERMINAL_PROMPT="0",
        GIT_AUTHOR_NAME="Test",
        GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="Test",
        GIT_COMMITTER_EMAIL="test@example.com",
        NO_PROXY="*",
    )
    return env


class _Handler(FakeHandler):
    disable_nagle_algorithm = False

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_GET

    def _user(self) -> str | None:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        return user if self.owner.users.get(user) == password else None

    def _handle(self) -> None:
        owner: GitServer = self.owner
        path, _, query = self.path.partition("?")
        body = self.read_body()
        self.record()
        with owner.lock:
            owner.protocols.append(self.headers.get("Git-Protocol"))
        if path.startswith("/moved/"):  # a renamed repository, as forges answer for the old name
            self.send(301, {"Location": self.path.removeprefix("/moved")})
            return
        lfs_object = owner.lfs.handles(path) and not owner.lfs.is_batch(path)
        user = self._user()
        if owner.users and user is None and not lfs_object:
            challenge = {"WWW-Authenticate": 'Basic realm="git"', "LFS-Authenticate": 'Basic realm="git"'}
            self.send(401, {**challenge, "Content-Type": "text/plain"}, b"authentication required")
            return
        if owner.lfs.handles(path):
            owner.lfs.handle(self, path, body, owner.url)
            return
        self._cgi(path, query, body, user)

    def _cgi(self, path: str, query: str, body: bytes, user: str | None) -> None:
        owner: GitServer = self.owner
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(owner.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(owner.root),
            # Anonymous test servers accept pushes too (http-backend enables them only for REMOTE_USER).
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.receivepack",
            "GIT_CONFIG_VALUE_0": "true",
        }
        if user:
            env["REMOTE_USER"] = user
        if self.headers.get("Git-Protocol") and owner.protocol_v2:
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        proc = subprocess.run([GIT, "http-backend"], input=body, env=env, capture_output=True, check=False)
        head, _, payload = proc.stdout.partition(b"\r\n\r\n")
        if not _ and b"\n\n" in proc.stdout:
            head, _, payload = proc.stdout.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        if proc.returncode != 0 and not head:
            status, headers, payload = 500, [("Content-Type", "text/plain")], proc.stderr
        if path.endswith("/git-upload-pack"):
            with owner.lock:
                owner.upload_pack_bytes.append(len(payload))
        self.send(status, dict(headers), payload)


class GitServer:
    """``git http-backend`` over HTTP on 127.0.0.1, with an LFS server on the same origin."""

    def __init__(self, base: Path, users: Mapping[str, str] | None = None, protocol_v2: bool = True) -> None:
        self.base = base
        self.root = base / "repos"
        self.root.mkdir(parents=True)
        self.home = base / "home"
        self.home.mkdir()
        self.git(self.home, "lfs", "install", "--skip-repo")  # the lfs filters for every clone of this HOME
        self.users = dict(users or {})
        self.protocol_v2 = protocol_v2  # False: ignore Git-Protocol, as a server that speaks only v0
        self.lfs = LfsStore()
        self.lock = threading.Lock()
        self.requests = RequestLog()  # every request: method, path, headers (r.authorization)
        self.protocols: list[str | None] = []  # the Git-Protocol header of each request
        self.upload_pack_bytes: list[int] = []
        self._httpd = FakeServer(_Handler, self, start=False, log=self.requests)

    def __enter__(self) -> GitServer:
        self._httpd.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def repo_url(self, name: str, user: str | None = None, password: str | None = None) -> str:
        auth = ""
        if user is not None:
            auth = quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "") + "@"
        return f"http://{auth}127.0.0.1:{self._httpd.server_address[1]}/{name}.git"

    # -- building repositories with the real git client --------------------------------
    def git(self, cwd: Path, *args: str, check: bool = True) -> str:
        proc = subprocess.run(
            [GIT, *args], cwd=cwd, env=git_env(self.home), capture_output=True, text=True, check=False, timeout=60
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout.strip()

    def work_tree(self, name: str) -> Path:
        """The client-side clone that :meth:`commit` works in (created on first use)."""
        work = self.base / "work" / name
        if not work.exists():
            work.mkdir(parents=True)
            self.git(self.root, "init", "--quiet", "--bare", "-b", "main", f"{name}.git")
            self.git(work, "init", "--quiet", "-b", "main")
            self.git(work, "lfs", "install", "--local")
            self.git(work, "config", "lfs.locksverify", "false")
            user = next(iter(self.users.items()), None)
            self.git(work, "remote", "add", "origin", self.repo_url(name, *(user or ())))
        return work

    def commit(
        self,
        name: str,
        files: Mapping[str, bytes | None],
        *,
        branch: str = "main",
        lfs: tuple[str, ...] = (),
        tag: str | None = None,
        symlinks: Mapping[str, str] | None = None,
        submodules: Mapping[str, str] | None = None,
        replace: bool = False,
    ) -> str:
        """Commit ``files`` (``None`` deletes) on ``branch`` and push it over HTTP; the commit sha.

        ``lfs`` are git-lfs track patterns (``*.bin``): matching files are stored
        by the real git-lfs client and uploaded to :attr:`lfs` by its pre-push
        hook. ``replace`` removes every file not in ``files`` first.
        """
        work = self.work_tree(name)
        if self.git(work, "rev-parse", "--verify", "--quiet", "HEAD", check=False):
            exists = self.git(work, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
            self.git(work, "checkout", "--quiet", *(() if exists else ("-b",)), branch)
        elif branch != "main":
            self.git(work, "checkout", "--quiet", "-b", branch)
        if replace:
            self.git(work, "rm", "-r", "--quiet", "--ignore-unmatch", ".")
        for pattern in lfs:
            self.git(work, "lfs", "track", pattern)
        for rel, data in files.items():
            path = work / rel
            if data is None:
                self.git(work, "rm", "--quiet", rel)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        for rel, target in (symlinks or {}).items():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, work / rel)
        self.git(work, "add", "-A")
        for rel, sha in (submodules or {}).items():
            self.git(work, "update-index", "--add", "--cacheinfo", f"160000,{sha},{rel}")
        self.git(work, "commit", "--quiet", "--allow-empty", "-m", f"update {branch}")
        if tag:
            self.git(work, "tag", "-a", "-m", f"tag {tag}", tag)
        self.git(work, "push", "--quiet", "origin", branch, *((f"refs/tags/{tag}",) if tag else ()))
        return self.git(work, "rev-parse", "HEAD")


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitServer]:
    """An anonymous git server (no credentials needed)."""
    with GitServer(tmp_path / "git-server") as server:
        yield server


@pytest.fixture
def private_git_server(tmp_path: Path) -> Iterator[GitServer]:
    """A git server where every request needs user ``alice`` / password ``s3cret-git-pw``."""
    with GitServer(tmp_path / "private-git-server", users={"alice": "s3cret-git-pw"}) as server:
        yield server
