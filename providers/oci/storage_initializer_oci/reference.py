"""Parse ``oci://HOST[:PORT]/REPOSITORY[:TAG][@ALGO:DIGEST]`` (and ``oci+fetch://``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from storage_initializer.errors import UsageError

SCHEMES = ("oci://", "oci+fetch://")
FORM = "oci://HOST[:PORT]/REPOSITORY[:TAG][@sha256:DIGEST]"
DOCKER_HUB = "registry-1.docker.io"

# The distribution spec's grammar (spec.md, "Pulling manifests").
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
_DIGEST_RE = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")


@dataclass(frozen=True)
class Reference:
    """A parsed image reference: where the registry is and which manifest to read."""

    registry: str  # host[:port], as it appears in docker config files
    repository: str
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str:
        """What to put after ``/manifests/``: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def is_registry_host(segment: str) -> bool:
    """Docker's rule: the first segment names a registry if it has a dot or a colon, or is localhost."""
    return "." in segment or ":" in segment or segment == "localhost"


def parse(uri: str) -> Reference:
    """Parse an ``oci://`` URI; a malformed one is a :class:`UsageError` showing the expected form."""
    scheme = next((s for s in SCHEMES if uri.startswith(s)), None)
    if scheme is None:
        raise UsageError(f"{uri} is not an oci:// URI", hint=f"expected {FORM}")
    rest = uri[len(scheme) :].rstrip("/")

    def bad(why: str) -> UsageError:
        return UsageError(f"{uri}: {why}", hint=f"expected {FORM}")

    digest = None
    if "@" in rest:
        rest, digest = rest.rsplit("@", 1)
        if not _DIGEST_RE.match(digest):
            raise bad(f"invalid digest {digest!r} (sha256:<64 hex> or sha512:<128 hex>)")
    head, _, path = rest.partition("/")
    if not head:
        raise bad("no registry or repository")
    if is_registry_host(head):
        if not path:
            raise bad("no repository after the registry host")
        registry = head
    else:
        registry, path = DOCKER_HUB, rest
        if "/" not in path:
            path = f"library/{path}"
    tag = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = path.rsplit(":", 1)
        if not _TAG_RE.match(tag):
            raise bad(f"invalid tag {tag!r}")
    if not _REPOSITORY_RE.match(path):
        raise bad(f"invalid repository name {path!r} (lowercase letters, digits and . _ - separators)")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, path, tag, digest)
