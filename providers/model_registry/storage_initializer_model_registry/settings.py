"""Where the registry is and how to reach it, from the environment (KServe's variables and ours)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from storage_initializer import http as kit
from storage_initializer.config import env_bool, env_int, env_number, env_str
from storage_initializer.errors import ConfigError
from storage_initializer.redact import register_secret

from .uri import _HOST_RE

log = logging.getLogger("storage_initializer.model_registry")

DEFAULT_BASE_URL = "localhost:8080"
DEFAULT_SCHEME = "http"
DEFAULT_SERVICE_NAME = "model-registry-service"
DEFAULT_CLUSTER_DOMAIN = "svc.cluster.local"
DEFAULT_NAMESPACE_PORT = "8080"
#: Where KServe's constants put the ``storage-config`` secret (one file per key).
DEFAULT_STORAGE_CONFIG_DIR = "/mnt/storage-secret"


# -- settings --------------------------------------------------------------------


@dataclass(frozen=True)
class RegistrySettings:
    """Every option of this provider, read from the environment in one place."""

    base_host: str = DEFAULT_BASE_URL
    base_path: str = ""
    scheme: str = DEFAULT_SCHEME
    service_name: str = DEFAULT_SERVICE_NAME
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    token: str | None = field(default=None, repr=False)
    verify: bool | str = True
    storage_config_dir: str = DEFAULT_STORAGE_CONFIG_DIR
    retries: int = 5
    retry_backoff: float = 0.5

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.base_host}{self.base_path}"

    def namespace_host(self, namespace: str) -> str:
        """``SERVICE.NS.DOMAIN:PORT``, the port taken from the base URL (8080 without one)."""
        port = _port_of(self.base_host) or DEFAULT_NAMESPACE_PORT
        return f"{self.service_name}.{namespace}.{self.cluster_domain}:{port}"


def _port_of(host: str) -> str | None:
    match = re.search(r":([0-9]+)$", host)
    return match.group(1) if match and not host.endswith("]") else None


def settings_from_env(env: Mapping[str, str]) -> RegistrySettings:
    """Read and validate ``MODEL_REGISTRY_*`` (and the shared proxy/CA/retry) variables."""
    raw_base = env_str(env, "MODEL_REGISTRY_BASE_URL") or DEFAULT_BASE_URL
    scheme_env = env_str(env, "MODEL_REGISTRY_SCHEME")
    if "://" in raw_base:
        parts = urlsplit(raw_base)
        scheme, host, path = parts.scheme.lower(), parts.netloc, parts.path.rstrip("/")
        if scheme_env and scheme_env.lower() != scheme:
            raise ConfigError(
                f"MODEL_REGISTRY_BASE_URL={raw_base!r} says {scheme} but MODEL_REGISTRY_SCHEME={scheme_env!r}",
                hint="drop one of them",
            )
    else:
        host, slash, path = raw_base.partition("/")
        path = f"/{path.rstrip('/')}" if slash and path.strip("/") else ""
        scheme = (scheme_env or DEFAULT_SCHEME).lower()
    if scheme not in ("http", "https"):
        raise ConfigError(f"MODEL_REGISTRY_SCHEME={scheme!r} is not supported", hint="use http or https")
    if not _HOST_RE.match(host):
        raise ConfigError(
            f"MODEL_REGISTRY_BASE_URL={raw_base!r} is not HOST[:PORT]", hint="e.g. model-registry-service:8080"
        )

    return RegistrySettings(
        base_host=host,
        base_path=path,
        scheme=scheme,
        service_name=env_str(env, "MODEL_REGISTRY_SERVICE_NAME") or DEFAULT_SERVICE_NAME,
        cluster_domain=env_str(env, "MODEL_REGISTRY_CLUSTER_DOMAIN") or DEFAULT_CLUSTER_DOMAIN,
        token=_read_token(env),
        verify=_verify_setting(env),
        storage_config_dir=env_str(env, "MODEL_REGISTRY_STORAGE_CONFIG_DIR") or DEFAULT_STORAGE_CONFIG_DIR,
        retries=env_int(env, "STORAGE_INITIALIZER_RETRIES", 5, minimum=0),
        retry_backoff=env_number(env, "STORAGE_INITIALIZER_RETRY_BACKOFF", 0.5, minimum=0),
    )


def _read_token(env: Mapping[str, str]) -> str | None:
    """``MODEL_REGISTRY_TOKEN``, else the content of ``MODEL_REGISTRY_TOKEN_FILE``."""
    token = env_str(env, "MODEL_REGISTRY_TOKEN")
    if token is None:
        path = env_str(env, "MODEL_REGISTRY_TOKEN_FILE")
        if path is None:
            return None
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"MODEL_REGISTRY_TOKEN_FILE={path!r} cannot be read: {exc.strerror}",
                hint="mount the token (e.g. the service-account token) at that path",
            ) from None
        if not token:
            raise ConfigError(f"MODEL_REGISTRY_TOKEN_FILE={path!r} is empty")
    register_secret(token)
    return token


def _verify_setting(env: Mapping[str, str]) -> bool | str:
    """TLS verification: off, a CA bundle file, or the system trust store."""
    if not env_bool(env, "MODEL_REGISTRY_VERIFY_SSL", True):
        log.warning("TLS certificate verification is disabled for the model registry")
        return False
    bundle = env_str(env, "MODEL_REGISTRY_CA_BUNDLE")
    if bundle is not None and not Path(bundle).is_file():
        raise ConfigError(f"MODEL_REGISTRY_CA_BUNDLE={bundle!r} is not a file")
    verify = kit.ca_bundle(env, bundle)
    if verify is not True:
        return verify
    # KServe's cluster-wide CA bundle, mounted into storage initializers.
    if env_str(env, "CA_BUNDLE_CONFIGMAP_NAME"):
        mounted = Path(env_str(env, "CA_BUNDLE_VOLUME_MOUNT_POINT") or "/etc/ssl/custom-certs") / "cabundle.crt"
        if mounted.is_file():
            return str(mounted)
    return True
