"""Talking to the git server: credentials, ref resolution and a shallow fetch of one commit (dulwich).

Why dulwich rather than the ``git`` binary: the image has no git, and
Debian's ``git`` would add about 65 MB installed (git, Perl modules, git-man,
libcurl) against about 9 MB for dulwich. dulwich speaks the smart HTTP
protocol v0 and v2 including shallow fetches (``depth``); KServe's own
initializer uses it too.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from storage_initializer.connect import retry_refused
from storage_initializer.errors import (
    AccessDeniedError,
    NotFoundError,
    StorageInitializerError,
    TransientError,
    is_network_failure,
    network_error,
)
from storage_initializer.http import proxies_for
from storage_initializer.provider import ProviderContext
from storage_initializer.redact import register_secret
from storage_initializer_git.uri import GitUri

log = logging.getLogger("storage_initializer.git")

#: Username sent with a token when none is given (accepted by GitHub, GitLab, Gitea, Azure DevOps, Hugging Face).
TOKEN_USERNAME = "oauth2"
TMPDIR_HINT = (
    "the pack of ordinary (non-LFS) files is kept under TMPDIR during the download: "
    "set TMPDIR to a writable directory with room for it (an emptyDir volume)"
)
_LOCAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
CREDENTIAL_HINT = "set GIT_USERNAME and GIT_PASSWORD (or GIT_TOKEN) to credentials that can read the repository"


@dataclass(frozen=True)
class Credentials:
    """HTTP Basic credentials for the repository's origin (never sent elsewhere)."""

    username: str | None
    password: str | None

    @property
    def present(self) -> bool:
        return self.username is not None


def credentials(uri: GitUri, env: Mapping[str, str]) -> Credentials:
    """The URL's user, else ``GIT_USERNAME``; the URL's password, else ``GIT_PASSWORD``, else ``GIT_TOKEN``."""
    username = uri.username or env.get("GIT_USERNAME", "").strip() or None
    password = uri.password or env.get("GIT_PASSWORD") or env.get("GIT_TOKEN") or None
    register_secret(password)
    if password and not username:
        username = TOKEN_USERNAME
    return Credentials(username, password)


@dataclass(frozen=True)
class Target:
    """The commit to download and the ref it came from (sent to the LFS server)."""

    commit: str
    refname: str | None


def _pool_manager(url: str, env: Mapping[str, str], context: ProviderContext) -> Any:
    """urllib3 pool with the engine's timeouts, the proxy and CA settings of ``env`` (not ``os.environ``)."""
    import urllib3

    timeout = urllib3.Timeout(connect=context.connect_timeout, read=context.stall_timeout)
    # No retries here (the engine retries transient errors), but redirects are followed (renamed repositories).
    retries = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5)
    kwargs: dict[str, Any] = {"timeout": timeout, "retries": retries, "headers": {"User-Agent": "storage-initializer"}}
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO"):
        if env.get(name):
            kwargs["ca_certs"] = env[name]
            break
    if env.get("GIT_SSL_NO_VERIFY", "").strip().lower() in ("1", "true", "yes"):
        kwargs["cert_reqs"] = "CERT_NONE"
        log.warning("GIT_SSL_NO_VERIFY is set: TLS certificates of the git server are not verified")
    proxies = proxies_for(url, env)  # the kit's rule: lower-case first, NO_PROXY, the password masked
    proxy = proxies.get(urlsplit(url).scheme) or proxies.get("all")
    return urllib3.ProxyManager(proxy, **kwargs) if proxy else urllib3.PoolManager(**kwargs)


class Remote:
    """One repository on a smart-HTTP git server."""

    def __init__(self, uri: GitUri, creds: Credentials, env: Mapping[str, str], context: ProviderContext) -> None:
        from dulwich.client import HttpGitClient

        self.uri = uri
        self.creds = creds
        base, _, self.path = uri.repo_url.rpartition("/")
        self.client = HttpGitClient(
            base + "/",
            pool_manager=_pool_manager(uri.repo_url, env, context),
            username=creds.username,
            password=creds.password,
        )

    # -- errors --------------------------------------------------------------------
    def error(self, exc: BaseException, doing: str) -> StorageInitializerError:
        """The typed error a dulwich / urllib3 exception stands for."""
        from dulwich.client import HTTPUnauthorized
        from dulwich.errors import GitProtocolError, HangupException, NotGitRepository

        repo = self.uri.repo_url
        if isinstance(exc, StorageInitializerError):
            return exc
        if isinstance(exc, HTTPUnauthorized):
            if self.creds.present:
                return AccessDeniedError(
                    f"{repo}: the server refused the credentials of {self.creds.username!r} (HTTP 401)",
                    hint="check GIT_USERNAME and GIT_PASSWORD (or GIT_TOKEN)",
                )
            return AccessDeniedError(f"{repo}: the server requires credentials (HTTP 401)", hint=CREDENTIAL_HINT)
        if isinstance(exc, NotGitRepository):
            hint = "check the URL" + ("" if self.creds.present else "; a private repository may need credentials")
            return NotFoundError(f"{repo}: repository not found (HTTP 404)", hint=hint)
        if isinstance(exc, OSError) and exc.errno in _LOCAL_ERRNOS:
            return StorageInitializerError(
                f"{repo}: cannot store the fetched commit in the temporary directory ({exc.strerror or exc})",
                hint=TMPDIR_HINT,
            )
        cause = exc.__cause__
        if is_network_failure(exc) or (cause is not None and is_network_failure(cause)):
            origin = urlsplit(repo)
            return network_error(
                exc,
                f"{origin.scheme}://{origin.hostname}" + (f":{origin.port}" if origin.port else ""),
                ca_hint="set GIT_SSL_CAINFO (or SSL_CERT_FILE) to the CA bundle that signed the git server's "
                "certificate, or GIT_SSL_NO_VERIFY=true",
                hint="check the host and port in the URI",
            )
        if isinstance(exc, HangupException):
            return TransientError(f"{repo}: the server hung up while {doing} ({exc})")
        if isinstance(exc, GitProtocolError):
            text = str(exc)
            status = text.rsplit("unexpected http resp ", 1)[-1].split()[0] if "unexpected http resp" in text else ""
            if status == "403":
                return AccessDeniedError(f"{repo}: access forbidden (HTTP 403)", hint=CREDENTIAL_HINT)
            if status.isdigit() and (int(status) >= 500 or status in ("408", "429")):
                return TransientError(f"{repo}: the server answered HTTP {status} while {doing}")
            if "not our ref" in text or "not valid" in text or "no such" in text.lower():
                return NotFoundError(
                    f"{repo}: commit {self.uri.ref} not found on the server ({text.strip()})",
                    hint="use a commit of a branch or tag of this repository",
                )
            return StorageInitializerError(f"{repo}: git protocol error while {doing}: {text.strip()}")
        return StorageInitializerError(f"{repo}: unexpected {type(exc).__name__} while {doing}: {exc}")

    def _call(self, doing: str, action: Any) -> Any:
        """Run a dulwich call, mapping its failures (the engine retries the transient ones)."""
        try:
            return retry_refused(action, self.uri.repo_url)  # a server restarting: a few seconds
        except Exception as exc:
            raise self.error(exc, doing) from None

    # -- refs ------------------------------------------------------------------------
    def resolve(self) -> Target:
        """The commit ``uri.ref`` names: a branch, a tag (peeled), a full ref, a commit sha; default: HEAD."""
        result = self._call("listing refs", lambda: self.client.get_refs(self.path))
        refs = {k.decode(): v.decode() for k, v in result.refs.items() if v}
        symrefs = {k.decode(): v.decode() for k, v in (result.symrefs or {}).items()}
        repo, ref = self.uri.repo_url, self.uri.ref

        def peeled(name: str) -> str | None:
            return refs.get(name + "^{}") or refs.get(name)

        if ref is None:
            head = refs.get("HEAD")
            if head is None:
                raise NotFoundError(f"{repo}: no default branch (HEAD) to download", hint="is the repository empty?")
            return Target(head, symrefs.get("HEAD", "HEAD"))
        names = [ref] if ref.startswith("refs/") or ref == "HEAD" else [f"refs/heads/{ref}", f"refs/tags/{ref}"]
        for name in names:
            sha = peeled(name)
            if sha is not None:
                return Target(sha, name)
        if self.uri.is_sha:
            wanted = ref.lower()
            if len(wanted) == 40:
                return Target(wanted, None)
            tips = {sha for name, sha in refs.items() if sha.startswith(wanted) and (name + "^{}") not in refs}
            if len(tips) == 1:
                return Target(tips.pop(), None)
            raise NotFoundError(
                f"{repo}: {'no' if not tips else 'more than one'} branch or tag points at a commit starting {ref}",
                hint="use the full 40-character commit sha",
            )
        branches = sorted(n.removeprefix("refs/heads/") for n in refs if n.startswith("refs/heads/"))
        raise NotFoundError(
            f"{repo}: no branch or tag named {ref!r}",
            hint="branches: " + (", ".join(branches[:10]) or "none") + ("…" if len(branches) > 10 else ""),
        )

    # -- the fetch --------------------------------------------------------------------
    def fetch(self, target: Target, workdir: str) -> Any:
        """Fetch exactly ``target.commit`` (depth 1) into a bare repository in ``workdir``; the dulwich Repo."""
        from dulwich.repo import Repo

        def wants(refs: Any, depth: int | None = None) -> Any:
            return [target.commit.encode()]  # exactly this commit, whatever the refs

        def attempt() -> Any:
            repo = Repo.init_bare(workdir) if not os.listdir(workdir) else Repo(workdir)
            try:
                self.client.fetch(
                    self.path,
                    repo,
                    determine_wants=wants,
                    depth=1,
                )
            except BaseException:
                repo.close()
                raise
            return repo

        try:
            repo = attempt()
        except Exception as exc:
            from dulwich.errors import HangupException

            if isinstance(exc, HangupException) and target.refname is None:
                # upload-pack ends the stream when a wanted object is not one it will serve.
                raise NotFoundError(
                    f"{self.uri.repo_url}: commit {target.commit} not found on the server",
                    hint="check the sha; it must be reachable from a branch or tag of this repository",
                ) from None
            raise self.error(exc, f"fetching commit {target.commit}") from None
        if target.commit.encode() not in repo.object_store:
            repo.close()
            raise NotFoundError(f"{self.uri.repo_url}: the server did not send commit {target.commit}")
        packs = os.path.join(workdir, "objects", "pack")
        size = sum(os.path.getsize(os.path.join(packs, n)) for n in os.listdir(packs) if n.endswith(".pack"))
        log.info("%s: fetched commit %s alone (depth 1): %d bytes of pack", self.uri.repo_url, target.commit, size)
        return repo
