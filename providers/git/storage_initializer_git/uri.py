"""The URI grammar: ``http(s)://[USER[:PASSWORD]@]HOST[:PORT]/PATH.git[@REF][/]``.

KServe routes ``https://…`` URIs matching ``https://.+\\.git`` (searched
anywhere) to a git clone. That regex also catches plain file URLs such as
``https://raw.githubusercontent.com/…`` or ``https://user.github.io/model.bin``
(``.git`` inside a host name), which KServe then fails to clone. Our regex
(:data:`URI_REGEX`) claims exactly the URIs of this grammar: every repository
URI KServe clones, and no file URL, which stays with the generic http provider.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from storage_initializer.errors import UsageError
from storage_initializer.redact import register_secret

GRAMMAR = "https://[USER@]HOST[:PORT]/PATH.git[@REF] (REF: a branch, a tag or a commit sha)"
#: What the provider declares (Go-regexp compatible): a path ending in ``.git``, then ``@REF`` or ``/``.
URI_REGEX = r"^https?://[^/?#]+/[^?#]*\.git(@[^?#]*)?/?$"
_SPLIT = re.compile(r"^(?P<scheme>https?)://(?P<netloc>[^/?#]+)(?P<path>/[^?#]*?\.git)(?:@(?P<ref>[^?#]*))?/?$")
_BAD_REF = re.compile(r"(\.\.|@\{|[\x00-\x20\x7f~^:?*\[\\]|//|\.lock$|^[/.-]|/$|\.$|/\.)")
_HEX = re.compile(r"^[0-9a-f]{4,64}$")


@dataclass(frozen=True)
class GitUri:
    """A parsed repository URI. ``repo_url`` has no credentials; ``ref`` is None for the default branch."""

    repo_url: str
    ref: str | None
    username: str | None = None
    password: str | None = None

    @property
    def is_sha(self) -> bool:
        return self.ref is not None and bool(_HEX.match(self.ref.lower()))

    @property
    def display(self) -> str:
        return self.repo_url + (f"@{self.ref}" if self.ref else "")


def parse_uri(uri: str) -> GitUri:
    """Split a git URI; raise :class:`UsageError` naming the expected form."""

    def bad(why: str) -> UsageError:
        return UsageError(f"{uri}: {why}", hint=f"expected {GRAMMAR}")

    match = _SPLIT.match(uri)
    if match is None:
        raise bad("not a git repository URL (the path must end with .git, optionally followed by @REF)")
    parts = urlsplit(f"{match['scheme']}://{match['netloc']}/")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise bad("invalid port") from None
    if not host:
        raise bad("no host")
    path = match["path"]
    if path.strip("/") == ".git" or "/../" in path + "/" or "/./" in path + "/":
        raise bad("invalid repository path")
    ref = match["ref"]
    if ref is not None:
        ref = ref.rstrip("/")
        if not ref:
            raise bad("empty REF after '@'")
        if _BAD_REF.search(ref):
            raise bad(f"{ref!r} is not a valid branch, tag or commit name")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    register_secret(password)
    netloc = host if ":" not in host else f"[{host}]"
    if port is not None:
        netloc += f":{port}"
    return GitUri(f"{match['scheme']}://{netloc}{path}", ref, username, password)
