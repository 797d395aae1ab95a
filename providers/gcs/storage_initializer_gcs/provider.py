"""The provider: listing through the JSON API, ranged media reads, typed errors."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

from storage_initializer import http as kit
from storage_initializer.errors import (
    AccessDeniedError,
    ConfigError,
    NotFoundError,
    ObjectChangedError,
    StorageInitializerError,
    TransientError,
    UsageError,
    network_error,
)
from storage_initializer.httpbody import HttpBody
from storage_initializer.provider import (
    ByteStream,
    ChunkStream,
    HttpRange,
    Provider,
    ProviderContext,
    RemoteObject,
    UriFormat,
)

from .credentials import Credentials, _auth_text, find_credentials
from .settings import settings_from_env
from .uri import GRAMMAR, PREFIX, parse_uri

log = logging.getLogger("storage_initializer.gcs")

_LIST_FIELDS = "items(name,size,generation,crc32c,md5Hash,contentEncoding),nextPageToken"


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
    return message.strip()[:300] or type(exc).__name__


def _error_text(body: bytes) -> str:
    """The message of a JSON API error document (``{"error": {"message": ...}}``), else its text."""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace").strip()[:300]
    return str(message)


class _Answer:
    """What google-api-core and the kit read of a response the event loop got: its headers."""

    request = None

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.headers = headers


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
        self._token_lock = threading.Lock()
        self._token_request: Any = None

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
                retry_refused=True,
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
            raise network_error(exc, "the token service", hint="check GCE_METADATA_HOST and the network") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise network_error(
                exc,
                f"the GCS endpoint {self.settings.endpoint}",
                hint="check STORAGE_EMULATOR_HOST / API_ENDPOINT_OVERRIDE, the proxy settings and the network",
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
        shown = uri
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

    def _media(
        self, uri: str, obj: RemoteObject, start: int, end: int | None
    ) -> tuple[_Ref, str, dict[str, str], bool]:
        """A media read's object, URL (generation pinned), headers and whether it is ranged."""
        ref = obj.extra if isinstance(obj.extra, _Ref) else None
        if ref is None:
            location = parse_uri(uri)
            ref = _Ref(location.bucket, location.path)
        url = self._media_url(ref) + "?alt=media" + (f"&generation={obj.version}" if obj.version else "")
        headers = {"Accept-Encoding": "gzip" if ref.gzip else "identity"}
        ranged = obj.supports_ranges and (start > 0 or (end is not None and end != obj.size))
        if ranged:
            headers["Range"] = kit.range_header(start, end)
        return ref, url, headers, ranged

    def http_range(self, uri: str, obj: RemoteObject, start: int, end: int | None) -> HttpRange | None:
        ref, url, headers, ranged = self._media(uri, obj, start, end)
        if ref.gzip or kit.proxies_for(url, self.env):
            return None  # decompressed, or through a proxy: the session reads it
        with self._calls(uri):
            headers.update(self._auth_headers(url))

        def check(status: int, answer: Mapping[str, str], body: bytes) -> None:
            if status not in (200, 206, 404, 412, 416):
                from google.api_core.exceptions import from_http_status

                error = from_http_status(status, _error_text(body), response=_Answer(answer))  # type: ignore[no-untyped-call]
                raise self._api_error(error, uri)
            self._check_served(uri, obj, status, answer, start, ranged)

        return HttpRange(url, headers, check, kit.tls_context_for(url, self.env))

    def _auth_headers(self, url: str) -> dict[str, str]:
        """The ``Authorization`` header of a request (the token refreshed when near its expiry)."""
        creds = self.credentials()
        if creds.anonymous:
            return {}
        headers: dict[str, str] = {}
        with self._token_lock:
            if self._token_request is None:
                from google.auth.transport.requests import Request

                self._token_request = Request(kit.new_session(self.env, pool_size=1, verify=kit.ca_bundle(self.env)))
            creds.credentials.before_request(self._token_request, "GET", url, headers)
        return headers

    def open_range(
        self, uri: str, obj: RemoteObject, start: int, end: int | None
    ) -> AbstractContextManager[ByteStream]:
        ref, url, headers, ranged = self._media(uri, obj, start, end)
        shown = uri
        with self._calls(shown):
            response = self.session().get(url, headers=headers, stream=True, timeout=self._timeout)
        try:
            self._check_media(shown, obj, response, start, ranged)
        except BaseException:
            response.close()
            raise
        if ref.gzip:
            return _gzip_body(response)
        return HttpBody(response.raw, self.context.stall_timeout)

    def _check_media(self, shown: str, obj: RemoteObject, response: Any, start: int, ranged: bool) -> None:
        status = response.status_code
        if status not in (200, 206, 404, 412, 416):
            from google.api_core.exceptions import from_http_response

            error = from_http_response(response)  # type: ignore[no-untyped-call]
            raise self._api_error(error, shown)
        self._check_served(shown, obj, status, response.headers, start, ranged)

    def _check_served(
        self, shown: str, obj: RemoteObject, status: int, headers: Mapping[str, str], start: int, ranged: bool
    ) -> None:
        """Is a media answer the generation and range asked for? (any status but another error's)"""
        if status in (404, 412, 416):
            raise ObjectChangedError(
                f"{shown}: {obj.key} changed or was deleted during the download "
                f"(generation {obj.version} is gone: HTTP {status})",
                hint="run again to download the current version",
            )
        served = headers.get("X-Goog-Generation")
        if obj.version and served and served != obj.version:
            raise ObjectChangedError(
                f"{shown}: {obj.key} changed during the download (generation {obj.version}, now {served})",
                hint="run again to download the current version",
            )
        if ranged:
            kit.check_partial(status, headers, start, shown)

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            with contextlib.suppress(Exception):
                session.close()
