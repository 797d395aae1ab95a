"""S3 settings: every variable KServe's initializer reads, parsed once into a typed object.

KServe copies the ``type: s3`` storage spec (``STORAGE_CONFIG`` merged with
``STORAGE_OVERRIDE_CONFIG``) into ``os.environ`` before reading its variables,
so a spec value beats the variable it maps to. :func:`s3_settings` does the
same on a private copy of the environment: nothing is written back.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from storage_initializer import http as kit
from storage_initializer.config import env_bool, env_int, env_seconds, env_str
from storage_initializer.errors import ConfigError
from storage_initializer.redact import register_secret
from storage_initializer.storage_spec import spec_of_type

#: Where KServe's webhook mounts the global CA bundle ConfigMap (``DefaultCaBundleVolumeMountPath``).
DEFAULT_CA_BUNDLE_MOUNT = "/etc/ssl/custom-certs"
#: The file name KServe reads inside that mount.
CA_BUNDLE_FILE = "cabundle.crt"

# storage-spec key -> the variable KServe sets from it (kserve_storage._update_with_storage_spec).
_SPEC_TO_ENV = (
    ("endpoint_url", "AWS_ENDPOINT_URL"),
    ("access_key_id", "AWS_ACCESS_KEY_ID"),
    ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
    ("region", "AWS_DEFAULT_REGION"),
    ("ca_bundle", "AWS_CA_BUNDLE"),
    ("verify_ssl", "S3_VERIFY_SSL"),
    ("anonymous", "awsAnonymousCredential"),
)


@dataclass(frozen=True)
class S3Settings:
    """What the provider needs to know, independent of where it came from.

    ``verify`` is ``False`` (no TLS verification), ``True`` (the default trust
    store) or the path of a CA bundle that *replaces* it (as boto3 does).
    ``addressing_style`` is botocore's: ``auto`` (path-style for a custom
    endpoint, virtual-hosted on AWS) or ``virtual``.
    """

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    profile: str | None = None
    config_file: str | None = None
    credentials_file: str | None = None
    web_identity_token_file: str | None = None
    role_arn: str | None = None
    role_session_name: str | None = None
    sts_endpoint_url: str | None = None
    anonymous: bool = False
    addressing_style: str = "auto"
    accelerate: bool = False
    verify: bool | str = True
    connect_timeout: float | None = None
    read_timeout: float | None = None
    max_attempts: int = 3
    proxies: Mapping[str, str] = field(default_factory=dict)
    default_bucket: str | None = None


def effective_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the ``type: s3`` storage spec laid over it, as KServe does."""
    merged = dict(env)
    spec = spec_of_type(env, "s3")
    for key, name in _SPEC_TO_ENV:
        value = spec.get(key)
        if value is None:
            continue
        merged[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    bucket = spec.get("bucket")
    if isinstance(bucket, str) and bucket:
        merged["_STORAGE_SPEC_BUCKET"] = bucket
    return merged


def _optional_seconds(env: Mapping[str, str], name: str) -> float | None:
    """Seconds, or ``None`` (the engine's own timeout) when unset."""
    return env_seconds(env, name, 0.0) or None


def _endpoint(env: Mapping[str, str]) -> str | None:
    """``AWS_ENDPOINT_URL`` (KServe passes it to boto3 explicitly), else botocore's
    ``AWS_ENDPOINT_URL_S3``, else the legacy ``S3_ENDPOINT`` (+ ``S3_USE_HTTPS``)."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        value = env_str(env, name)
        if value:
            return _check_url(value, name)
    legacy = env_str(env, "S3_ENDPOINT")
    if not legacy:
        return None
    if "://" in legacy:
        return _check_url(legacy, "S3_ENDPOINT")
    # KServe's webhook: "https://" + S3_ENDPOINT unless S3_USE_HTTPS is "0".
    scheme = "https" if env_bool(env, "S3_USE_HTTPS", True) else "http"
    return _check_url(f"{scheme}://{legacy}", "S3_ENDPOINT")


def _check_url(url: str, name: str) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ConfigError(f"{name}={url!r} is not a valid URL", hint="use http(s)://HOST[:PORT]") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}={url!r} is not an http(s) URL", hint="use http(s)://HOST[:PORT]")
    register_secret(parts.password)
    return url.rstrip("/")


def _verify(env: Mapping[str, str]) -> bool | str:
    """KServe's ``_get_s3_client_kwargs``: S3_VERIFY_SSL=0/false turns verification off;
    otherwise ``AWS_CA_BUNDLE``, else ``$CA_BUNDLE_VOLUME_MOUNT_POINT/cabundle.crt`` when
    ``CA_BUNDLE_CONFIGMAP_NAME`` is set; a named bundle that does not exist is an error.
    Without either, the shared rule of every provider: ``REQUESTS_CA_BUNDLE``,
    ``SSL_CERT_FILE``, ``CURL_CA_BUNDLE``, else botocore's default bundle."""
    if not env_bool(env, "S3_VERIFY_SSL", True):
        return False
    bundle = env_str(env, "AWS_CA_BUNDLE")
    source = "AWS_CA_BUNDLE"
    if not bundle and env_str(env, "CA_BUNDLE_CONFIGMAP_NAME"):
        mount = env_str(env, "CA_BUNDLE_VOLUME_MOUNT_POINT") or DEFAULT_CA_BUNDLE_MOUNT
        bundle = os.path.join(mount, CA_BUNDLE_FILE)
        source = "CA_BUNDLE_CONFIGMAP_NAME (CA_BUNDLE_VOLUME_MOUNT_POINT)"
    if not bundle:
        return kit.ca_bundle(env)
    if not os.path.isfile(bundle):
        raise ConfigError(
            f"CA bundle {bundle} named by {source} does not exist",
            hint="mount the CA bundle there, fix the path, or unset the variable",
        )
    return bundle


def _proxies(env: Mapping[str, str]) -> dict[str, str]:
    """The proxy variables from ``env`` (boto3 reads them from ``os.environ``), ``NO_PROXY`` as ``"no"``."""
    proxies = kit.proxies(env)
    no_proxy = kit.no_proxy(env)
    if no_proxy:
        proxies["no"] = no_proxy
    return proxies


def proxy_for(proxies: Mapping[str, str], url: str) -> str | None:
    """The proxy ``url`` goes through, honouring ``NO_PROXY`` (the kit's one rule)."""
    from urllib.parse import urlsplit

    proxy = proxies.get(urlsplit(url).scheme) or proxies.get("all")
    if not proxy or kit.bypasses_proxy(url, {"no_proxy": proxies.get("no", "")}):
        return None
    return proxy


def s3_settings(env: Mapping[str, str]) -> S3Settings:
    """Read every S3 option from ``env`` (plus the storage spec). Raises :class:`ConfigError`."""
    env = effective_env(env)

    def get(name: str) -> str | None:
        return env_str(env, name)

    secret = get("AWS_SECRET_ACCESS_KEY")
    token = get("AWS_SESSION_TOKEN") or get("AWS_SECURITY_TOKEN")
    register_secret(secret)
    register_secret(token)
    endpoint = _endpoint(env)
    region = get("AWS_DEFAULT_REGION") or get("AWS_REGION")
    virtual = env_bool(env, "S3_USER_VIRTUAL_BUCKET", False)
    # KServe: the legacy global endpoint with another region only works virtual-hosted.
    if endpoint == "https://s3.amazonaws.com" and region not in (None, "us-east-1"):
        virtual = True
    return S3Settings(
        endpoint_url=endpoint,
        region=region,
        access_key_id=get("AWS_ACCESS_KEY_ID"),
        secret_access_key=secret,
        session_token=token,
        profile=get("AWS_PROFILE") or get("AWS_DEFAULT_PROFILE"),
        config_file=get("AWS_CONFIG_FILE"),
        credentials_file=get("AWS_SHARED_CREDENTIALS_FILE"),
        web_identity_token_file=get("AWS_WEB_IDENTITY_TOKEN_FILE"),
        role_arn=get("AWS_ROLE_ARN"),
        role_session_name=get("AWS_ROLE_SESSION_NAME"),
        sts_endpoint_url=get("AWS_ENDPOINT_URL_STS"),
        anonymous=env_bool(env, "awsAnonymousCredential", False),
        addressing_style="virtual" if virtual else "auto",
        accelerate=env_bool(env, "S3_USE_ACCELERATE", False),
        verify=_verify(env),
        connect_timeout=_optional_seconds(env, "S3_CONNECT_TIMEOUT"),
        read_timeout=_optional_seconds(env, "S3_READ_TIMEOUT"),
        max_attempts=env_int(env, "S3_MAX_ATTEMPTS", 3, minimum=1),
        proxies=_proxies(env),
        default_bucket=get("_STORAGE_SPEC_BUCKET"),
    )


def describe(settings: S3Settings) -> dict[str, Any]:
    """The non-secret settings, for a debug log line."""
    return {
        "endpoint": settings.endpoint_url or "(AWS)",
        "region": settings.region,
        "credentials": credential_source(settings),
        "addressing": settings.addressing_style,
        "accelerate": settings.accelerate,
        "verify": settings.verify,
        "proxies": sorted(k for k in settings.proxies if k != "no"),
    }


def credential_source(settings: S3Settings) -> str:
    """Which credentials the provider will use (named, never shown)."""
    if settings.anonymous:
        return "anonymous (unsigned requests)"
    if settings.access_key_id and settings.secret_access_key:
        return "static keys (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
    if settings.web_identity_token_file and settings.role_arn:
        return "web identity (AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN)"
    if settings.profile:
        return f"profile {settings.profile}"
    return "botocore default chain"
