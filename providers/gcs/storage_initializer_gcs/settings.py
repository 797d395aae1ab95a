"""Endpoint, emulator and metadata-server settings, read from the provider's environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from storage_initializer.config import env_bool, env_int, env_number, env_str

DEFAULT_ENDPOINT = "https://storage.googleapis.com"
DEFAULT_METADATA_IP = "169.254.169.254"


# -- configuration -------------------------------------------------------------------
@dataclass(frozen=True)
class GcsSettings:
    """Everything the provider reads from its environment (see README.md)."""

    endpoint: str  # base URL, no trailing slash
    emulator: bool  # STORAGE_EMULATOR_HOST is set: anonymous, as google-cloud-storage
    credentials_file: str | None  # GOOGLE_APPLICATION_CREDENTIALS
    adc_file: str | None  # gcloud's application-default credentials file
    check_metadata: bool  # not NO_GCE_CHECK
    metadata_host: str
    metadata_timeout: float
    metadata_attempts: int


def _with_scheme(value: str) -> str:
    value = value.strip().rstrip("/")
    return value if "://" in value else f"http://{value}"


def settings_from_env(env: Mapping[str, str]) -> GcsSettings:
    """Read the provider's configuration; no network, no file access."""
    emulator_host = env_str(env, "STORAGE_EMULATOR_HOST")
    override = env_str(env, "API_ENDPOINT_OVERRIDE")
    if emulator_host:
        endpoint = _with_scheme(emulator_host)
    elif override:
        endpoint = _with_scheme(override)
    else:
        endpoint = DEFAULT_ENDPOINT
    # Where google.auth._cloud_sdk looks for gcloud's file, but from this environment.
    config_dir = env_str(env, "CLOUDSDK_CONFIG")
    if not config_dir and env.get("HOME"):
        config_dir = os.path.join(env["HOME"], ".config", "gcloud")
    return GcsSettings(
        endpoint=endpoint,
        emulator=bool(emulator_host),
        credentials_file=env_str(env, "GOOGLE_APPLICATION_CREDENTIALS"),
        adc_file=os.path.join(config_dir, "application_default_credentials.json") if config_dir else None,
        check_metadata=not env_bool(env, "NO_GCE_CHECK", False),
        metadata_host=env_str(env, "GCE_METADATA_IP") or env_str(env, "GCE_METADATA_HOST") or DEFAULT_METADATA_IP,
        metadata_timeout=env_number(env, "GCE_METADATA_TIMEOUT", 3.0, minimum=0.1),
        metadata_attempts=env_int(env, "GCE_METADATA_DETECT_RETRIES", 3, minimum=1),
    )
