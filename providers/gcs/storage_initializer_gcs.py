"""``gs://``: Google Cloud Storage (and emulators) on ``google-cloud-storage`` and ``google-auth``.

Grammar (see README.md)::

    gs://BUCKET                the whole bucket
    gs://BUCKET/PATH           the object PATH if it exists, else everything under PATH/
    gs://BUCKET/PATH/          everything under PATH/ (a directory only)

* Listing: ``Bucket.get_blob(PATH)``; when there is no such object,
  ``Client.list_blobs(prefix=PATH/, page_size=1000)``, whose pages are fetched
  one at a time as the engine consumes them, so memory stays flat. A prefix is
  a directory: ``gs://b/model`` never pulls ``model-v2/`` or ``model.bin``.
  The library's own retries are off (``retry=None``): the engine retries.
* Reads: the JSON API's media download (``alt=media``) through the client's
  authorized session (google-auth adds and refreshes the token), with a
  ``Range`` header, pinned with ``generation=`` to the generation the listing
  saw (GCS answers 404 once that generation is replaced in an unversioned
  bucket) and checked against ``X-Goog-Generation``. The body is read with
  ``readinto`` straight from the socket into the engine's buffers: the
  library's ``download_*`` methods buffer whole ranges in memory or write to a
  file themselves, which the engine already does (atomic, resumable, verified).
* Objects stored with ``Content-Encoding: gzip`` are written decompressed, as
  KServe (``download_to_filename``) writes them: one stream, no ranges; their
  integrity rests on gzip's own CRC, since the listed size and checksums are
  those of the compressed bytes.
* Credentials, in google-auth's ``default()`` order but read from the
  provider's environment (``self.env``) and with a bounded metadata probe:
  ``STORAGE_EMULATOR_HOST`` -> anonymous, as google-cloud-storage does;
  ``GOOGLE_APPLICATION_CREDENTIALS`` and then gcloud's application-default file,
  each loaded by google-auth (service account, external account, impersonation,
  authorized user); the GCE/GKE metadata server (google-auth's
  ``compute_engine.Credentials``); else anonymous, which reads public buckets.
  ``google.auth.default()`` itself is not called: it reads only ``os.environ``
  (the engine may hand a provider another environment), fixes the probe's
  timeout at import time as a whole number of seconds and does not bound it by
  the connect timeout.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import re
import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

from storage_initializer import http as kit
from storage_initializer.config import env_bool, env_int, env_number, env_str
from storage_initializer.errors import (
    AccessDeniedError,
    ConfigError,
    NotFoundError,
    ObjectChangedError,
    StorageInitializerError,
    TransientError,
    UsageError,
)
from storage_initializer.httpbody import HttpBody
from storage_initializer.provider import ByteStream, ChunkStream, Provider, ProviderContext, RemoteObject, UriFormat
from storage_initializer.redact import redact, register_secret

log = logging.getLogger("storage_initializer.gcs")

PREFIX = "gs://"
GRAMMAR = "gs://BUCKET[/PATH]"
DEFAULT_ENDPOINT = "https://storage.googleapis.com"
READ_ONLY_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
DEFAULT_METADATA_IP = "169.254.169.254"
DMI_PRODUCT_NAME = "/sys/class/dmi/id/product_name"

# Bucket names: 3-63 characters (up to 222 with dots), lowercase letters,
# digits, '-', '_' and '.', starting and ending with a letter or digit.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_LIST_FIELDS = "items(name,size,generation,crc32c,md5Hash,contentEncoding),nextPageToken"
# Values inside a credentials file that are secrets.
_SECRET_KEYS = ("private_key", "private_key_id", "client_secret", "refresh_token", "access_token")


# -- the URI -----------------------------------------------------------------------
@dataclass(frozen=True)
class GcsUri:
    bucket: str
    path: str  # "" = the bucket root; a trailing "/" names a directory only

    def __str__(self) -> str:
        return f"{PREFIX}{self.bucket}/{self.path}" if self.path else f"{PREFIX}{self.bucket}"


def parse_uri(uri: str) -> GcsUri:
    """Split ``gs://BUCKET[/PATH]``; the path is taken literally (no %-decoding), as KServe does."""
    if not uri.startswith(PREFIX):
        raise UsageError(f"{redact(uri)} is not a gs:// URI", hint=f"expected {GRAMMAR}")
    bucket, _, path = uri[len(PREFIX) :].partition("/")
    if not bucket:
        raise UsageError(f"{redact(uri)} names no bucket", hint=f"expected {GRAMMAR}")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise UsageError(
            f"{redact(uri)}: {bucket!r} is not a valid bucket name",
            hint="bucket names use lowercase letters, digits, '-', '_' and '.' (3-63 characters)",
        )
    if path.startswith("/"):
        raise UsageError(f"{redact(uri)} has an empty path segment after the bucket", hint=f"expected {GRAMMAR}")
    return GcsUri(bucket, path)


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
    return redact(text)


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


# -- reading -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Ref:
    bucket: str
    name: str
    gzip: bool = False


def _b64_to_hex(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return None


def _call_text(exc: Any) -> str:
    """GCS's own error message, without the ``GET <url>: `` that google-api-core puts first."""
    message = str(getattr(exc, "message", "") or "")
    request = getattr(getattr(exc, "response", None), "request", None)
    if request is not None:
        message = message.removeprefix(f"{request.method} {request.url}: ")
    return redact(message.strip()[:300] or type(exc).__name__)


_GZIP_CHUNK = 256 * 1024


def _gzip_body(response: Any) -> ChunkStream:
    """A gzip-encoded media response, decompressed as it is read (written as KServe does).

    urllib3 1.x may hand back more decoded bytes than asked for (2.x does not): the
    stream keeps what the buffer cannot take for the next read.
    """
    raw = response.raw
    return ChunkStream(iter(lambda: bytes(raw.read(_GZIP_CHUNK, decode_content=True)), b""), response.close)


class GcsProvider(Provider):
    """Google Cloud Storage buckets, objects and prefixes."""

    uri_formats = (UriFormat(prefix=PREFIX),)
    requires = ("google.cloud.storage",)
    description = "Google Cloud Storage (google-cloud-storage; ADC, service accounts, Workload Identity, emulators)"
    #: Objects per listing page (the JSON API's maximum).
    page_size: ClassVar[int] = 1000

    def __init__(self, context: ProviderContext) -> None:
        super().__init__(context)
        self.settings = settings_from_env(self.env)
        self._credentials: Credentials | None = None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._sessions: list[Any] = []

    # -- plumbing --------------------------------------------------------------
    @property
    def _timeout(self) -> tuple[float, float]:
        return (self.context.connect_timeout, self.context.stall_timeout)

    def credentials(self) -> Credentials:
        with self._lock:
            if self._credentials is None:
                self._credentials = find_credentials(self.settings, self.context.connect_timeout)
                log.info("gs: endpoint %s, credentials: %s", self.settings.endpoint, self._credentials.source)
            return self._credentials

    def session(self) -> Any:
        """This thread's ``AuthorizedSession`` (google-auth adds and refreshes the token)."""
        session = getattr(self._local, "session", None)
        if session is None:
            from google.auth.transport.requests import AuthorizedSession

            creds = self.credentials()
            # A 401 makes google-auth refresh and retry; anonymous credentials cannot refresh.
            refresh_on = () if creds.anonymous else (401,)
            session = kit.new_session(
                self.env,
                pool_size=2,
                base=AuthorizedSession,
                args=(creds.credentials,),
                kwargs={"refresh_status_codes": refresh_on},
            )
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def client(self) -> Any:
        """This thread's ``google.cloud.storage.Client``, on :meth:`session`, for metadata and listings."""
        client = getattr(self._local, "client", None)
        if client is None:
            from google.cloud import storage  # type: ignore[import-untyped]

            try:
                client = storage.Client(
                    project=None,  # reads need none; never inferred from os.environ or the network
                    credentials=self.credentials().credentials,
                    _http=self.session(),
                    client_options={"api_endpoint": self.settings.endpoint},  # wins over os.environ
                )
            except ValueError as exc:  # e.g. credentials of another universe domain
                raise ConfigError(f"gs: cannot use these credentials with {self.settings.endpoint}: {exc}") from None
            # No background bucket GETs for OpenTelemetry attributes (google-cloud-storage >= 3.17):
            # they need storage.buckets.get, retry for minutes and serve no download.
            client._bucket_metadata_cache = None
            self._local.client = client
        return client

    @contextlib.contextmanager
    def _calls(self, what: str, not_found: StorageInitializerError | None = None) -> Iterator[None]:
        """Map google-api-core, google-auth and network errors onto the project's errors."""
        import requests
        from google.api_core import exceptions as api
        from google.auth import exceptions as auth

        try:
            yield
        except api.NotFound as exc:
            if not_found is not None:
                raise not_found from None
            raise NotFoundError(f"{what}: not found (HTTP 404: {_call_text(exc)})") from None
        except api.GoogleAPICallError as exc:
            raise self._api_error(exc, what) from None
        except api.RetryError as exc:
            raise TransientError(f"{what}: GCS did not answer in time ({exc.cause or exc})") from None
        except auth.RefreshError as exc:
            creds = self.credentials()
            error = AccessDeniedError(
                f"could not get an access token with {creds.source}: {_auth_text(exc)}",
                hint="the key may be revoked, malformed or for another project; check GOOGLE_APPLICATION_CREDENTIALS",
            )
            error.retryable = bool(getattr(exc, "retryable", False))
            raise error from None
        except auth.TransportError as exc:
            raise TransientError(f"could not reach the token service: {_auth_text(exc)}") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientError(
                f"cannot reach the GCS endpoint {self.settings.endpoint} ({type(exc).__name__})",
                hint="check the network, proxy settings and STORAGE_EMULATOR_HOST / API_ENDPOINT_OVERRIDE",
            ) from None

    def _api_error(self, exc: Any, what: str) -> StorageInitializerError:
        from google.api_core import exceptions as api

        status = int(exc.code or 0)
        text = _call_text(exc)
        if isinstance(exc, (api.Unauthorized, api.Forbidden)):
            creds = self.credentials()
            if creds.anonymous:
                hint = (
                    "no credentials were used (anonymous access reads public buckets only): set "
                    "GOOGLE_APPLICATION_CREDENTIALS or use Workload Identity"
                )
            elif status == 401:
                hint = f"the credentials from {creds.source} were rejected; check the key is valid"
            else:
                hint = f"grant roles/storage.objectViewer on the bucket to the identity of {creds.source}"
            return AccessDeniedError(f"{what}: access denied (HTTP {status}: {text})", hint=hint)
        if kit.is_transient_status(status):
            headers = getattr(getattr(exc, "response", None), "headers", None)
            return kit.transient_error(f"{what}: GCS answered HTTP {status}: {text}", headers)
        if status == 400 and "requester pays" in text.lower():
            # The URI is fine (not a usage error): the bucket bills its readers.
            bucket = what.removeprefix(PREFIX).split("/", 1)[0]
            return AccessDeniedError(
                f"{what}: bucket {bucket} is a Requester Pays bucket (HTTP 400: {text})",
                hint="reads must name a project to bill (userProject), which this provider does not send "
                "(nor does KServe's); copy the model to a bucket without Requester Pays",
            )
        if isinstance(exc, api.BadRequest):
            return UsageError(f"{what}: GCS rejected the request (HTTP 400: {text})", hint=f"expected {GRAMMAR}")
        return StorageInitializerError(f"{what}: GCS answered HTTP {status}: {text}")

    def _media_url(self, ref: _Ref) -> str:
        """The JSON API's documented media download URL (not the listing's ``mediaLink``,
        which names the service's canonical host rather than the configured endpoint)."""
        return (
            f"{self.settings.endpoint}/download/storage/v1/b/{quote(ref.bucket, safe='')}/o/{quote(ref.name, safe='')}"
        )

    # -- the provider contract -------------------------------------------------
    def validate(self, uri: str) -> None:
        parse_uri(uri)

    def list(self, uri: str) -> Iterator[RemoteObject]:
        location = parse_uri(uri)
        shown = redact(uri)
        if location.path and not location.path.endswith("/"):
            with self._calls(shown):
                # None for no such object (or no bucket: the listing tells).
                blob = self.client().bucket(location.bucket).get_blob(location.path, timeout=self._timeout, retry=None)
            if blob is not None:
                yield self._remote(location.bucket, blob, location.path.rsplit("/", 1)[-1])
                return
            prefix = location.path + "/"
        else:
            prefix = location.path
        found = False
        missing = NotFoundError(
            f"bucket {location.bucket} does not exist ({shown})",
            hint="check the bucket name; with an emulator, check STORAGE_EMULATOR_HOST",
        )
        with self._calls(shown, not_found=missing):
            blobs = self.client().list_blobs(
                location.bucket,
                prefix=prefix or None,
                page_size=self.page_size,
                fields=_LIST_FIELDS,
                timeout=self._timeout,
                retry=None,
            )
            for blob in blobs:
                if blob.name.startswith(prefix):
                    found = True
                    yield self._remote(location.bucket, blob, blob.name[len(prefix) :])
        if not found:
            if not location.path:
                raise NotFoundError(f"bucket {location.bucket} is empty ({shown})", hint="check the bucket name")
            where = f"nothing under {prefix}"
            if not location.path.endswith("/"):
                where = f"no object {location.path} and {where}"
            raise NotFoundError(f"{shown}: {where} in bucket {location.bucket}", hint="check the path in the URI")

    @staticmethod
    def _remote(bucket: str, blob: Any, key: str) -> RemoteObject:
        name = str(blob.name)
        generation = str(blob.generation) if blob.generation else None
        if str(blob.content_encoding or "").lower() == "gzip":
            # Written decompressed: the listed size and hashes are the compressed bytes'.
            return RemoteObject(key, None, generation, supports_ranges=False, extra=_Ref(bucket, name, gzip=True))
        checksums = {}
        crc32c, md5 = _b64_to_hex(blob.crc32c), _b64_to_hex(blob.md5_hash)
        if crc32c and len(crc32c) == 8:
            checksums["crc32c"] = crc32c
        if md5 and len(md5) == 32:
            checksums["md5"] = md5
        return RemoteObject(key, blob.size, generation, checksums, extra=_Ref(bucket, name))

    def open_range(
        self, uri: str, obj: RemoteObject, start: int, end: int | None
    ) -> AbstractContextManager[ByteStream]:
        ref = obj.extra if isinstance(obj.extra, _Ref) else None
        if ref is None:
            location = parse_uri(uri)
            ref = _Ref(location.bucket, location.path)
        params = {"alt": "media"}
        if obj.version:
            params["generation"] = obj.version
        headers = {"Accept-Encoding": "gzip" if ref.gzip else "identity"}
        ranged = obj.supports_ranges and (start > 0 or (end is not None and end != obj.size))
        if ranged:
            headers["Range"] = kit.range_header(start, end)
        shown = redact(uri)
        with self._calls(shown):
            response = self.session().get(
                self._media_url(ref), params=params, headers=headers, stream=True, timeout=self._timeout
            )
        try:
            self._check_media(shown, obj, response, start, ranged)
        except BaseException:
            response.close()
            raise
        if ref.gzip:
            return _gzip_body(response)
        return HttpBody(response.raw, self.context.stall_timeout)

    def _check_media(self, shown: str, obj: RemoteObject, response: Any, start: int, ranged: bool) -> None:
        from google.api_core.exceptions import from_http_response

        status = response.status_code
        if status in (404, 412, 416):
            raise ObjectChangedError(
                f"{shown}: {obj.key} changed or was deleted during the download "
                f"(generation {obj.version} is gone: HTTP {status})",
                hint="run again to download the current version",
            )
        if status not in (200, 206):
            error = from_http_response(response)  # type: ignore[no-untyped-call]
            raise self._api_error(error, shown)
        served = response.headers.get("X-Goog-Generation")
        if obj.version and served and served != obj.version:
            raise ObjectChangedError(
                f"{shown}: {obj.key} changed during the download (generation {obj.version}, now {served})",
                hint="run again to download the current version",
            )
        if ranged:
            kit.check_partial(status, response.headers, start, shown)

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            with contextlib.suppress(Exception):
                session.close()
