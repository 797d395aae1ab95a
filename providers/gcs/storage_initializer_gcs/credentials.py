"""The credential chain of ``google.auth.default()`` (see :func:`find_credentials` for why it is not that call)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any

from storage_initializer.errors import ConfigError
from storage_initializer.redact import register_secret

from .settings import GcsSettings

log = logging.getLogger("storage_initializer.gcs")

READ_ONLY_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
DMI_PRODUCT_NAME = "/sys/class/dmi/id/product_name"
# Values inside a credentials file that are secrets.
_SECRET_KEYS = ("private_key", "private_key_id", "client_secret", "refresh_token", "access_token")


# -- credentials -----------------------------------------------------------------------
@dataclass(frozen=True)
class Credentials:
    """The google-auth credentials in use and where they came from (for messages)."""

    credentials: Any
    source: str
    anonymous: bool = False


def _anonymous(source: str) -> Credentials:
    from google.auth.credentials import AnonymousCredentials

    return Credentials(AnonymousCredentials(), source, anonymous=True)  # type: ignore[no-untyped-call]


def credentials_from_file(path: str, variable: str) -> Credentials:
    """Load any google-auth JSON credentials file, registering its secrets first.

    The file is read here once (rather than by ``load_credentials_from_file``)
    so that its secrets are masked before google-auth can quote them in an error.
    """
    from google.auth import exceptions, load_credentials_from_dict

    try:
        with open(path, "rb") as handle:
            info = json.loads(handle.read())
    except OSError as exc:
        raise ConfigError(
            f"{variable}={path}: cannot read the credentials file ({exc.strerror})",
            hint="mount the key file and point the variable at it",
        ) from None
    except ValueError:
        raise ConfigError(f"{variable}={path} is not a JSON credentials file") from None
    if not isinstance(info, dict):
        raise ConfigError(f"{variable}={path} is not a JSON credentials file")
    for key in _SECRET_KEYS:
        if isinstance(info.get(key), str):
            register_secret(info[key])
    try:
        with warnings.catch_warnings():
            # The file is the operator's own configuration, as for google.auth.default().
            warnings.simplefilter("ignore", DeprecationWarning)
            credentials, _project = load_credentials_from_dict(  # type: ignore[no-untyped-call]
                info, scopes=[READ_ONLY_SCOPE]
            )
    except (exceptions.GoogleAuthError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"{variable}={path}: not usable Google credentials ({_auth_text(exc)})",
            hint="use a service-account key, an external-account or an authorized-user JSON file",
        ) from None
    who = info.get("client_email") or info.get("type", "credentials")
    return Credentials(credentials, f"{variable} ({path}, {who})")


def _auth_text(exc: BaseException) -> str:
    """google-auth errors carry (message, detail) tuples; say them as one sentence."""
    parts = [a for a in exc.args if isinstance(a, (str, BaseException))] or [type(exc).__name__]
    text = ": ".join(str(a) for a in parts[:2])
    if exc.__cause__ is not None and str(exc.__cause__) not in text:
        text = f"{text}: {exc.__cause__}"
    return text


def _on_gce(settings: GcsSettings, connect_timeout: float) -> bool:
    """google-auth's ``is_on_gce`` test, with this environment's address and a bounded probe.

    The BIOS saying Google settles it; else ``GET /`` with ``Metadata-Flavor:
    Google`` must be answered in kind, each attempt bounded by
    ``GCE_METADATA_TIMEOUT`` and the connect timeout, without sleeping between
    attempts and never through a proxy.
    """
    with contextlib.suppress(OSError), open(DMI_PRODUCT_NAME, encoding="utf-8") as handle:
        if handle.read().strip().startswith("Google"):
            return True
    import requests
    from google.auth import exceptions
    from google.auth.transport.requests import Request

    timeout = min(settings.metadata_timeout, connect_timeout)
    with requests.Session() as session:
        session.trust_env = False
        request = Request(session)
        for attempt in range(1, settings.metadata_attempts + 1):
            try:
                response = request(
                    url=f"http://{settings.metadata_host}/",
                    method="GET",
                    headers={"Metadata-Flavor": "Google"},
                    timeout=(timeout, timeout),
                )
                return bool(response.status == 200 and response.headers.get("Metadata-Flavor") == "Google")
            except exceptions.TransportError as exc:
                log.debug("metadata server probe %d/%d: %s", attempt, settings.metadata_attempts, exc)
    return False


def find_credentials(settings: GcsSettings, connect_timeout: float) -> Credentials:
    """The credential chain of google-auth's ``default()``, read from ``settings``.

    Not ``google.auth.default()`` itself: it reads ``os.environ``, while a
    provider reads its context's environment (a resolver such as a model
    registry overlays ``GOOGLE_APPLICATION_CREDENTIALS`` for one pair, and
    writing ``os.environ`` from one of several threads is no option); its
    metadata-server probe waits up to ``GCE_METADATA_TIMEOUT`` per try with
    sleeps between tries, and it quotes a bad key file in its errors before
    the secrets in it can be registered. The order and the variables are
    google-auth's, and an unreadable ``GOOGLE_APPLICATION_CREDENTIALS`` is an
    error, never a silent fall-through to anonymous access.
    """
    if settings.emulator:
        return _anonymous("none: STORAGE_EMULATOR_HOST is set (anonymous, as google-cloud-storage)")
    if settings.credentials_file:
        return credentials_from_file(settings.credentials_file, "GOOGLE_APPLICATION_CREDENTIALS")
    if settings.adc_file and os.path.isfile(settings.adc_file):
        return credentials_from_file(settings.adc_file, "gcloud application-default credentials")
    if settings.check_metadata and _on_gce(settings, connect_timeout):
        from google.auth import compute_engine

        # Scoped as google.auth.default(scopes=...) scopes them; tokens come from GCE_METADATA_HOST.
        metadata = compute_engine.Credentials(scopes=[READ_ONLY_SCOPE])  # type: ignore[no-untyped-call]
        return Credentials(metadata, "the metadata server (GCE / GKE Workload Identity)")
    return _anonymous("none found: anonymous access, public buckets only")
