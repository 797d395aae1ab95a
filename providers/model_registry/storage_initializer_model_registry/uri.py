"""The ``model-registry://`` grammar (every form upstream's initializer accepts)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

from storage_initializer.errors import UsageError

log = logging.getLogger("storage_initializer.model_registry")

PREFIX = "model-registry://"
FORM_HINT = "expected model-registry://[HOST[:PORT]/]MODEL[/VERSION][?namespace=NS]"

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_RE = re.compile(rf"^(?:\[[0-9A-Fa-f:.]+\]|{_LABEL}(?:\.{_LABEL})*)(?::[0-9]{{1,5}})?$")
_NAMESPACE_RE = re.compile(r"^[a-zA-Z0-9_-]+$")  # upstream's check
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


# -- the URI grammar -------------------------------------------------------------


@dataclass(frozen=True)
class RegistryUri:
    """A ``model-registry://`` URI split into its path segments and namespace (no network).

    ``segments`` has one to three entries, percent-decoded; the third keeps any
    further ``/`` (upstream splits into at most three parts).
    """

    segments: tuple[str, ...]
    namespace: str | None = None
    ignored_params: tuple[str, ...] = ()


def parse_uri(uri: str) -> RegistryUri:
    """Parse the grammar; raise :class:`UsageError` naming the expected form."""
    if not uri.startswith(PREFIX):
        raise UsageError(f"{uri} is not a model-registry:// URI", hint=FORM_HINT)
    rest, has_query, query = uri[len(PREFIX) :].partition("?")
    namespace: str | None = None
    ignored: tuple[str, ...] = ()
    if has_query:
        params = parse_qs(query, keep_blank_values=True)
        values = params.pop("namespace", [])
        if len(values) > 1:
            raise UsageError(f"{uri} gives namespace more than once", hint=FORM_HINT)
        if values and values[0]:
            namespace = values[0]
            if not _NAMESPACE_RE.match(namespace):
                raise UsageError(
                    f"{uri}: namespace {namespace!r} is not a Kubernetes namespace name",
                    hint="use letters, digits, '-' or '_'",
                )
        ignored = tuple(sorted(params))
    if rest.endswith("/"):
        rest = rest[:-1]
    raw = rest.split("/", 2)
    if not rest or any(not part for part in raw[:2]) or (len(raw) == 3 and not raw[2].strip("/")):
        raise UsageError(f"{uri} has an empty model, version or host", hint=FORM_HINT)
    if len(raw) >= 2 and ":" in raw[0]:  # HOST:PORT/... : a port must be a port
        host, _, port = raw[0].rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"{uri} has an invalid registry port {port!r}", hint=FORM_HINT)
    return RegistryUri(tuple(unquote(part) for part in raw), namespace, ignored)
