"""S3 settings: every variable KServe's initializer reads, parsed once into a typed object.

KServe copies the ``type: s3`` storage spec (``STORAGE_CONFIG`` merged with
``STORAGE_OVERRIDE_CONFIG``) into ``os.environ`` before reading its variables,
so a spec value beats the variable it maps to. :func:`s3_settings` does the
same on a private copy of the environment: nothing is written back.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


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


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    """A boolean variable; empty counts as unset (KServe: ``if os.getenv(...)``), so an empty
    ``S3_VERIFY_SSL`` keeps verification on."""
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean", hint="use true or false")


def _seconds(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be a positive number of seconds")
    return value


def _attempts(env: Mapping[str, str]) -> int:
    raw = env.get("S3_MAX_ATTEMPTS", "").strip()
    if not raw:
        return 3
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"S3_MAX_ATTEMPTS={raw!r} is not a whole number") from None
    if value < 1:
        raise ConfigError(f"S3_MAX_ATTEMPTS={raw!r} must be at least 1")
    return value


def _endpoint(env: Mapping[str, str]) -> str | None:
    """``AWS_ENDPOINT_URL`` (KServe passes it to boto3 explicitly), else botocore's
    ``AWS_ENDPOINT_URL_S3``, else the legacy ``S3_ENDPOINT`` (+ ``S3_USE_HTTPS``)."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        value = env.get(name, "").strip()
        if value:
            return _check_url(value, name)
    legacy = env.get("S3_ENDPOINT", "").strip()
    if not legacy:
        return None
    if "://" in legacy:
        return _check_url(legacy, "S3_ENDPOINT")
    # KServe's webhook: "https://" + S3_ENDPOINT unless S3_USE_HTTPS is "0".
    scheme = "http" if env.get("S3_USE_HTTPS", "").strip().lower() in ("0", "false") else "https"
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
    ``CA_BUNDLE_CONFIGMAP_NAME`` is set; a named bundle that does not exist is an error."""
    if not _flag(env, "S3_VERIFY_SSL", default=True):
        return False
    bundle = env.get("AWS_CA_BUNDLE", "").strip()
    source = "AWS_CA_BUNDLE"
    if not bundle and env.get("CA_BUNDLE_CONFIGMAP_NAME", "").strip():
        mount = env.get("CA_BUNDLE_VOLUME_MOUNT_POINT", "").strip() or DEFAULT_CA_BUNDLE_MOUNT
        bundle = os.path.join(mount, CA_BUNDLE_FILE)
        source = "CA_BUNDLE_CONFIGMAP_NAME (CA_BUNDLE_VOLUME_MOUNT_POINT)"
    if not bundle:
        return True
    if not os.path.isfile(bundle):
        raise ConfigError(
            f"CA bundle {bundle} named by {source} does not exist",
            hint="mount the CA bundle there, fix the path, or unset the variable",
        )
    return bundle


def _proxies(env: Mapping[str, str]) -> dict[str, str]:
    """``HTTP(S)_PROXY`` / ``NO_PROXY`` from ``env`` (boto3 reads them from ``os.environ``)."""
    proxies: dict[str, str] = {}
    for scheme in ("http", "https"):
        value = env.get(f"{scheme}_proxy") or env.get(f"{scheme.upper()}_PROXY")
        if value:
            proxies[scheme] = value
            try:
                from urllib.parse import urlsplit

                register_secret(urlsplit(value).password)
            except ValueError:
                pass
    no_proxy = env.get("no_proxy") or env.get("NO_PROXY")
    if no_proxy:
        proxies["no"] = no_proxy
    return proxies


def proxy_for(proxies: Mapping[str, str], url: str) -> str | None:
    """The proxy ``url`` goes through, honouring ``NO_PROXY``."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    proxy = proxies.get(parts.scheme)
    if not proxy:
        return None
    host = parts.netloc.rsplit("@", 1)[-1]
    bypass = getattr(urllib.request, "proxy_bypass_environment")  # noqa: B009 - not in typeshed
    if "no" in proxies and bypass(host, dict(proxies)):
        return None
    return proxy


def s3_settings(env: Mapping[str, str]) -> S3Settings:
    """Read every S3 option from ``env`` (plus the storage spec). Raises :class:`ConfigError`."""
    env = effective_env(env)

    def get(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None

    secret = get("AWS_SECRET_ACCESS_KEY")
    token = get("AWS_SESSION_TOKEN") or get("AWS_SECURITY_TOKEN")
    register_secret(secret)
    register_secret(token)
    endpoint = _endpoint(env)
    region = get("AWS_DEFAULT_REGION") or get("AWS_REGION")
    virtual = _flag(env, "S3_USER_VIRTUAL_BUCKET")
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
        anonymous=_flag(env, "awsAnonymousCredential"),
        addressing_style="virtual" if virtual else "auto",
        accelerate=_flag(env, "S3_USE_ACCELERATE"),
        verify=_verify(env),
        connect_timeout=_seconds(env, "S3_CONNECT_TIMEOUT"),
        read_timeout=_seconds(env, "S3_READ_TIMEOUT"),
        max_attempts=_attempts(env),
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
