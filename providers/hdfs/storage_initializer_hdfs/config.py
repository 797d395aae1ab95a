"""KServe's HDFS settings: the secret directory's files or a storage spec, validated."""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from storage_initializer.config import parse_bool, parse_number
from storage_initializer.errors import ConfigError
from storage_initializer.redact import register_secret
from storage_initializer.storage_spec import spec_of_type

DEFAULT_SECRET_DIR = "/var/secrets/kserve-hdfscreds"
DEFAULT_HTTP_PORT = 9870  # dfs.namenode.http-address
CONFIG_KEYS = (
    "HDFS_NAMENODE", "HDFS_ROOTPATH", "USER_PROXY", "TLS_CERT", "TLS_KEY", "TLS_CA", "TLS_SKIP_VERIFY",
    "HEADERS", "N_THREADS", "KERBEROS_KEYTAB", "KERBEROS_PRINCIPAL",
)  # fmt: skip
#: Keys whose value is a file: its path in the secret directory, base64 content in a storage spec.
FILE_KEYS = frozenset({"KERBEROS_KEYTAB", "TLS_CERT", "TLS_KEY", "TLS_CA"})


@dataclass(frozen=True)
class HdfsConfig:
    """KServe's HDFS settings, parsed and checked (see the module docstring)."""

    namenodes: tuple[str, ...] = ()
    root: str | None = None
    user_proxy: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    tls_skip_verify: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    n_threads: int | None = None
    kerberos_principal: str | None = None
    kerberos_keytab: str | None = None
    source: str = "no configuration"

    def describe(self) -> str:
        """A one-line summary for the log: header names only, never their values."""
        tls = "no verification" if self.tls_skip_verify else (f"CA {self.tls_ca}" if self.tls_ca else "default CAs")
        parts = [
            f"namenode {';'.join(self.namenodes) or '(from the URI)'}",
            f"root {self.root or '/'}",
            f"proxy user {self.user_proxy or '-'}",
            f"TLS {tls}" + (", client certificate" if self.tls_cert else ""),
            f"headers {sorted(self.headers) or '-'}",
            f"N_THREADS {self.n_threads or '-'}",
            f"Kerberos {self.kerberos_principal or 'off'}",
        ]
        return f"hdfs configuration from {self.source}: " + ", ".join(parts)


def load_config(env: Mapping[str, str], scratch: Callable[[], str]) -> HdfsConfig:
    """Read the configuration as KServe does: a ``hdfs``/``webhdfs`` storage spec replaces the directory.

    ``scratch`` returns a private directory where a storage spec's base64 file secrets are written.
    """
    spec = spec_of_type(env, "hdfs", "webhdfs")
    if spec:
        return parse_config(_values_from_spec(spec, scratch), "STORAGE_CONFIG")
    directory = env.get("HDFS_SECRET_DIR") or DEFAULT_SECRET_DIR
    return parse_config(_values_from_dir(directory), directory)


def _values_from_dir(directory: str) -> dict[str, str]:
    values: dict[str, str] = {}
    if not os.path.isdir(directory):
        return values
    for key in CONFIG_KEYS:
        path = os.path.join(directory, key)
        if not os.path.isfile(path):
            continue
        if key in FILE_KEYS:
            values[key] = path
            continue
        try:
            with open(path, encoding="utf-8") as handle:
                values[key] = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
    return values


def _values_from_spec(spec: Mapping[str, Any], scratch: Callable[[], str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for key in CONFIG_KEYS:
        value = spec.get(key)
        if value is None or value == "":
            continue
        if key not in FILE_KEYS:
            values[key] = str(value)
            continue
        try:
            content = base64.b64decode(str(value))
        except (binascii.Error, ValueError):
            raise ConfigError(
                f"{key} in STORAGE_CONFIG is not base64", hint="file secrets are base64-encoded"
            ) from None
        path = os.path.join(scratch(), key)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        values[key] = path
    return values


def parse_config(values: Mapping[str, str], source: str) -> HdfsConfig:
    """Check every value, naming the key and where it came from on error."""

    def get(key: str) -> str | None:
        value = values.get(key)
        return value.strip() if value is not None and value.strip() else None

    namenodes = tuple(
        _namenode_url(item.strip(), source) for item in (get("HDFS_NAMENODE") or "").split(";") if item.strip()
    )
    # KServe compares with "true": "yes" there means false, so only true/false are accepted.
    skip = parse_bool(get("TLS_SKIP_VERIFY") or "false", f"TLS_SKIP_VERIFY in {source}", true_false_only=True)
    headers: dict[str, str] = {}
    if get("HEADERS"):
        try:
            parsed = json.loads(values["HEADERS"])
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise ConfigError(f"HEADERS in {source} is not a JSON object", hint='use {"Header-Name": "value"}')
        headers = {str(k): str(v) for k, v in parsed.items()}
        for value in headers.values():
            register_secret(value)
    raw_threads = get("N_THREADS")
    n_threads = None
    if raw_threads is not None:
        n_threads = int(parse_number(raw_threads, f"N_THREADS in {source}", minimum=1, integer=True))
    if get("TLS_KEY") and not get("TLS_CERT"):
        raise ConfigError(f"TLS_KEY in {source} has no TLS_CERT", hint="a client key needs its certificate")
    return HdfsConfig(
        namenodes=namenodes,
        root=get("HDFS_ROOTPATH"),
        user_proxy=get("USER_PROXY"),
        tls_cert=get("TLS_CERT"),
        tls_key=get("TLS_KEY"),
        tls_ca=get("TLS_CA"),
        tls_skip_verify=skip,
        headers=headers,
        n_threads=n_threads,
        kerberos_principal=get("KERBEROS_PRINCIPAL"),
        kerberos_keytab=get("KERBEROS_KEYTAB"),
        source=source,
    )


def _namenode_url(value: str, source: str) -> str:
    url = value if "://" in value else f"http://{value}"
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"HDFS_NAMENODE in {source} is not a WebHDFS address: {value!r}",
            hint="use http(s)://HOST:PORT (the namenode's HTTP port, 9870 by default); ';' separates an HA pair",
        )
    return url.rstrip("/")
