"""Registry credentials: the docker ``config.json`` lookup and the token flow.

Where credentials come from, first found wins:
``KSERVE_OCI_DOCKER_CONFIG`` (a file, or a directory holding ``config.json``;
KServe mounts the pull secret at ``/mnt/oci-fetch-auth/config.json``), then
``$DOCKER_CONFIG/config.json``, then ``$HOME/.docker/config.json``. An
``auths`` entry matches the registry by host (``host:port``, with or without
``https://`` and a path). Its ``auth`` (base64 ``user:password``),
``username``/``password`` or ``identitytoken`` are used.

The registry decides the scheme: a ``401`` with ``WWW-Authenticate: Basic``
gets HTTP basic; ``Bearer realm=...,service=...,scope=...`` gets a token from
the realm (basic credentials sent to it, or an OAuth2 refresh-token ``POST``
for an identity token), cached per scope until it expires.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from storage_initializer.errors import AccessDeniedError, ConfigError
from storage_initializer.redact import register_secret

_PARAM_RE = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]*))')


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = None
    identity_token: str | None = None
    source: str = ""  # the config file they came from


@dataclass(frozen=True)
class ConfigLookup:
    """The outcome of the docker config lookup, kept to explain a refusal."""

    path: str | None  # the config file read, if any
    credentials: Credentials | None

    def describe(self, registry: str) -> str:
        if self.path is None:
            return (
                "no docker config found (KSERVE_OCI_DOCKER_CONFIG, DOCKER_CONFIG/config.json, ~/.docker/config.json); "
                "the request was anonymous"
            )
        if self.credentials is None:
            return f"docker config {self.path} has no auths entry for {registry}; the request was anonymous"
        return f"check the credentials for {registry} in docker config {self.path}"


def _config_path(env: Mapping[str, str]) -> str | None:
    candidates = []
    if env.get("KSERVE_OCI_DOCKER_CONFIG"):
        explicit = env["KSERVE_OCI_DOCKER_CONFIG"]
        path = os.path.join(explicit, "config.json") if os.path.isdir(explicit) else explicit
        if not os.path.isfile(path):
            raise ConfigError(f"KSERVE_OCI_DOCKER_CONFIG names {path}, which is not a file")
        return path
    if env.get("DOCKER_CONFIG"):
        candidates.append(os.path.join(env["DOCKER_CONFIG"], "config.json"))
    if env.get("HOME"):
        candidates.append(os.path.join(env["HOME"], ".docker", "config.json"))
    return next((c for c in candidates if os.path.isfile(c)), None)


def _host_of(key: str) -> str:
    key = key.strip()
    for prefix in ("https://", "http://"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key.split("/", 1)[0].lower()


def _aliases(registry: str) -> set[str]:
    registry = registry.lower()
    if registry in ("registry-1.docker.io", "docker.io", "index.docker.io"):
        return {"registry-1.docker.io", "docker.io", "index.docker.io"}
    return {registry}


def lookup(env: Mapping[str, str], registry: str) -> ConfigLookup:
    """Find the credentials for ``registry``; register every secret found."""
    path = _config_path(env)
    if path is None:
        return ConfigLookup(None, None)
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read docker config {path}: {exc}") from None
    auths = config.get("auths") if isinstance(config, dict) else None
    if not isinstance(auths, dict):
        return ConfigLookup(path, None)
    wanted = _aliases(registry)
    entry = next((v for k, v in auths.items() if _host_of(k) in wanted and isinstance(v, dict)), None)
    if entry is None:
        return ConfigLookup(path, None)
    return ConfigLookup(path, _credentials(entry, path, registry))


def _credentials(entry: Mapping[str, Any], path: str, registry: str) -> Credentials | None:
    username, password = entry.get("username"), entry.get("password")
    if entry.get("auth"):
        register_secret(str(entry["auth"]))
        try:
            decoded = base64.b64decode(str(entry["auth"]), validate=False).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise ConfigError(f"docker config {path}: the auth of {registry} is not base64 user:password") from None
        if ":" not in decoded:
            raise ConfigError(f"docker config {path}: the auth of {registry} is not base64 user:password")
        username, password = decoded.split(":", 1)
    token = entry.get("identitytoken") or None
    for secret in (password, token):
        if secret:
            register_secret(str(secret))
    if not (username or token):
        return None
    return Credentials(
        username=str(username) if username else None,
        password=str(password) if password is not None else None,
        identity_token=str(token) if token else None,
        source=path,
    )


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="r",service="s"`` -> ("bearer", {"realm": "r", "service": "s"})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3) for m in _PARAM_RE.finditer(rest)
    }
    return scheme.lower(), params


class TokenCache:
    """Bearer tokens per scope, shared by the worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}

    def get(self, scope: str) -> str | None:
        with self._lock:
            found = self._tokens.get(scope)
        if found is None or found[1] < time.monotonic():
            return None
        return found[0]

    def put(self, scope: str, token: str, expires_in: float) -> None:
        register_secret(token)
        # Refresh a little early: a token expiring mid-request costs a round trip.
        with self._lock:
            self._tokens[scope] = (token, time.monotonic() + max(expires_in - 10, 5))

    def drop(self, scope: str) -> None:
        with self._lock:
            self._tokens.pop(scope, None)


def basic_header(credentials: Credentials) -> str:
    raw = f"{credentials.username or ''}:{credentials.password or ''}".encode()
    value = "Basic " + base64.b64encode(raw).decode("ascii")
    register_secret(value.split(" ", 1)[1])
    return value


def refused(registry: str, what: str, config: ConfigLookup, status: int) -> AccessDeniedError:
    return AccessDeniedError(f"{what}: access denied by {registry} (HTTP {status})", hint=config.describe(registry))
