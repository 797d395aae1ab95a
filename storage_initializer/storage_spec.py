"""KServe's storage-spec JSON: ``STORAGE_CONFIG`` merged with ``STORAGE_OVERRIDE_CONFIG``.

KServe's webhook puts one key of the storage-config secret into
``STORAGE_CONFIG`` (a JSON object with a ``type`` such as ``s3``, ``hdfs``,
``webhdfs``, ``gs``, ``azure``, ``https``) and per-model overrides into
``STORAGE_OVERRIDE_CONFIG``. Providers read the merged object from here
instead of copying values into ``os.environ`` as KServe does; every string
value is registered as a possible secret.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from storage_initializer.errors import ConfigError
from storage_initializer.redact import register_secret

_NOT_SECRET = frozenset(
    {
        "type",
        "bucket",
        "region",
        "endpoint_url",
        "verify_ssl",
        "anonymous",
        "HDFS_NAMENODE",
        "HDFS_ROOTPATH",
        "USER_PROXY",
        "N_THREADS",
        "TLS_SKIP_VERIFY",
        "KERBEROS_PRINCIPAL",
    }
)


def _parse(env: Mapping[str, str], name: str) -> dict[str, Any]:
    raw = env.get(name, "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name} is not valid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a JSON object")
    return value


def load_storage_spec(env: Mapping[str, str]) -> dict[str, Any]:
    """The merged storage spec (empty when neither variable is set)."""
    spec = _parse(env, "STORAGE_CONFIG")
    spec.update(_parse(env, "STORAGE_OVERRIDE_CONFIG"))
    for key, value in spec.items():
        if isinstance(value, str) and key not in _NOT_SECRET:
            register_secret(value)
    return spec


def spec_of_type(env: Mapping[str, str], *types: str) -> dict[str, Any]:
    """The storage spec if its ``type`` is one of ``types``, else ``{}``."""
    spec = load_storage_spec(env)
    return spec if str(spec.get("type", "")).lower() in types else {}
