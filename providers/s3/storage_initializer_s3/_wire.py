"""The three S3 requests the provider sends, without botocore's per-request cost.

ListObjectsV2, HeadObject and ranged GetObject are bodiless requests with
small, stable answers. botocore spends 1-3 ms of CPU on each (event hooks,
generic request objects, signing, a model-driven XML parser that turns every
``LastModified`` into a ``datetime`` through dateutil: ~120 us per listed
key). Here each is a SigV4-signed request (:mod:`._sigv4`) on a connection pool
(:mod:`storage_initializer.httppool`, ``http.client``) sized to the engine's
workers, parsed with ``ElementTree`` (~20 us per listed key) or read with
``readinto`` straight from ``http.client``.

botocore still decides *where* a bucket lives: :class:`S3Wire` asks a
``locate`` callback (botocore's request for an object of the bucket, built and
signed but not sent) for the URL and signing region, which carry the scheme,
host, path-style or virtual-hosted prefix and accelerate endpoint exactly as
botocore would use them. When S3 answers that the bucket lives in another
region (``PermanentRedirect``, ``AuthorizationHeaderMalformed``, or the
``x-amz-bucket-region`` header on a 301/400), the bucket is located again for
that region and the request repeated, as botocore's region redirector does.

Listing and HEAD requests are retried here on transient failures
(``S3_MAX_ATTEMPTS`` attempts in all, as botocore's standard retry mode
counts them), waiting at least a ``Retry-After`` and ending the wait on
SIGTERM. They stay here, under the engine's own listing retries, because a
failed page retried alone keeps the pages already listed, where the engine
would list again from the start. Object GETs are not retried here: the
engine retries those, resuming where a part stopped.
"""

from __future__ import annotations

import http.client
import logging
import random
import ssl
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import quote, unquote_plus, urlsplit

from storage_initializer import http as kit
from storage_initializer.connect import retry_refused
from storage_initializer.errors import StorageInitializerError, TransientError, network_error
from storage_initializer.httppool import Pool

from ._config import S3Settings, proxy_for
from ._errors import ENDPOINT_HINT, error_for, parse_error_body
from ._sigv4 import SigV4Signer, canonical_query

log = logging.getLogger("storage_initializer.s3")
_CA_HINT = (
    "set AWS_CA_BUNDLE (or CA_BUNDLE_CONFIGMAP_NAME) to the CA that signed the endpoint's "
    "certificate, or S3_VERIFY_SSL=0 to skip verification"
)

#: Keys per ListObjectsV2 page (the S3 maximum).
PAGE_SIZE = 1000
#: The most an error body is read (S3 error documents are a few hundred bytes).
_ERROR_BODY_LIMIT = 64 * 1024
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_REDIRECT_CODES = frozenset({"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"})


class Frozen(NamedTuple):
    """Credentials at one instant (botocore's ``ReadOnlyCredentials`` has the same fields)."""

    access_key: str
    secret_key: str
    token: str | None


class Listed(NamedTuple):
    """One ``<Contents>`` entry of a listing page."""

    key: str
    size: int | None
    etag: str | None


class Page(NamedTuple):
    entries: list[Listed]
    truncated: bool
    next_token: str | None


@dataclass(frozen=True)
class Target:
    """Where a bucket's requests go: URL, Host header, key prefix and signing region."""

    base_url: str  # scheme://netloc
    netloc: str  # the Host header
    prefix: str  # the path before the key: "/bucket/" (path-style) or "/" (virtual-hosted)
    signer: SigV4Signer
    pool: Pool  # keep-alive connections to base_url (through the proxy, if any)
    proxy: str | None

    @property
    def region(self) -> str:
        return self.signer.region


class Response(NamedTuple):
    status: int
    headers: Mapping[str, str]
    body: bytes


class S3Wire:
    """Signed S3 requests on pooled connections; thread-safe."""

    def __init__(
        self,
        settings: S3Settings,
        *,
        credentials: Callable[[], Frozen | None],
        locate: Callable[[str, str | None], tuple[str, str]],
        concurrency: int,
        connect_timeout: float,
        read_timeout: float,
        endpoint: str,
        cancelled: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self._cancelled = cancelled
        self._credentials = credentials
        self._locate = locate
        self._concurrency = max(1, concurrency)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self.endpoint = endpoint
        self._lock = threading.Lock()
        self._targets: dict[str, Target] = {}
        self._shown_uris: dict[str, str] = {}
        self._pools: dict[tuple[str, str | None], Pool] = {}

    # -- where buckets live ------------------------------------------------------------
    def target(self, bucket: str) -> Target:
        target = self._targets.get(bucket)
        if target is None:
            with self._lock:
                target = self._targets.get(bucket)
                if target is None:
                    target = self._make_target(bucket, None)
                    self._targets[bucket] = target
        return target

    def relocate(self, bucket: str, region: str) -> Target:
        """Point ``bucket`` at ``region`` (after S3 said it lives there)."""
        with self._lock:
            target = self._make_target(bucket, region)
            self._targets[bucket] = target
        log.info("bucket %s is in region %s: requests now go to %s", bucket, region, target.base_url)
        return target

    def _make_target(self, bucket: str, region: str | None) -> Target:
        url, signing_region = self._locate(bucket, region)
        parts = urlsplit(url)
        if not parts.path.endswith("/k"):
            raise StorageInitializerError(f"unexpected object URL form for bucket {bucket!r}: {url}")
        base_url = f"{parts.scheme}://{parts.netloc}"
        proxy = proxy_for(self.settings.proxies, base_url)
        pool = self._pools.get((base_url, proxy))
        if pool is None:
            # Workers, plus the listing and its HEAD probes running beside them.
            pool = Pool(
                base_url,
                ssl_context=self.tls_context() if parts.scheme == "https" else None,
                connect_timeout=self._connect_timeout,
                read_timeout=self._read_timeout,
                maxsize=self._concurrency + 2,
                proxy=proxy,
            )
            self._pools[(base_url, proxy)] = pool
        return Target(base_url, parts.netloc, parts.path[:-1], SigV4Signer(signing_region), pool, proxy)

    def tls_context(self) -> ssl.SSLContext:
        """How HTTPS endpoints are verified: ``S3_VERIFY_SSL``/``AWS_CA_BUNDLE``, else botocore's CAs."""
        return kit.tls_context(self.settings.verify, default_ca)

    def close(self) -> None:
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
            self._targets.clear()
        for pool in pools:
            pool.close()

    # -- sending -----------------------------------------------------------------------
    def _headers(
        self, method: str, target: Target, path: str, query: str, amz: dict[str, str] | None
    ) -> dict[str, str]:
        frozen = self._credentials()
        if frozen is None:  # anonymous: unsigned requests
            headers = {"host": target.netloc}
            if amz:
                headers.update(amz)
            return headers
        return target.signer.sign(
            method,
            target.netloc,
            path,
            frozen.access_key,
            frozen.secret_key,
            frozen.token,
            query=query,
            amz_headers=amz,
        )

    def signed_headers(
        self, method: str, target: Target, path: str, query: str = "", amz: dict[str, str] | None = None
    ) -> dict[str, str]:
        """The headers of a bodiless request (``host``, ``amz``, the signature); ``query``: canonical form."""
        return self._headers(method, target, path, query, amz)

    def send(
        self,
        method: str,
        target: Target,
        path: str,
        *,
        query: str = "",
        amz: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        what: str,
    ) -> Any:
        """One request; connection-level failures are typed by :func:`network_error` (TLS: permanent)."""
        all_headers = self._headers(method, target, path, query, amz)
        if headers:
            all_headers.update(headers)
        url = path + ("?" + query if query else "")

        def send() -> Any:
            return target.pool.request(method, url, all_headers, stream=stream)

        try:
            return retry_refused(send, target.base_url)  # a server restarting: a few seconds
        except (http.client.HTTPException, OSError) as exc:
            # Says which: DNS name not found, refused and TLS verification are permanent, timeouts transient.
            error = network_error(exc, target.base_url, ca_hint=_CA_HINT, hint=ENDPOINT_HINT)
            if error.retryable and isinstance(exc, ssl.SSLError):
                raise self.tls_error(what, exc) from None  # any other TLS failure: permanent too
            error.message = f"{what}: {error.message}"
            raise error from None

    def tls_error(self, what: str, exc: BaseException) -> StorageInitializerError:
        return StorageInitializerError(f"{what}: TLS with {self.endpoint} failed: {exc}", hint=_CA_HINT)

    def error(
        self, response: Any, *, uri: str, bucket: str, key: str | None, streamed: bool = False
    ) -> StorageInitializerError:
        """The error a non-2xx answer stands for (reads at most a small error body)."""
        body = b""
        try:
            body = response.read(_ERROR_BODY_LIMIT, decode_content=False) if streamed else response.data
        except Exception:  # the status alone still makes a clear error
            body = b""
        code, message, region = parse_error_body(body or b"")
        if code == "TemporaryRedirect" or (response.status == 307 and not code):
            return TransientError(f"{uri}: S3 asked to retry at another endpoint (HTTP 307)")
        return error_for(
            response.status,
            code,
            message,
            uri=uri,
            bucket=bucket,
            key=key,
            endpoint=self.endpoint,
            region=region or response.headers.get("x-amz-bucket-region"),
            headers=response.headers,
        )

    def call(
        self,
        method: str,
        bucket: str,
        path_of: Callable[[Target], str],
        *,
        uri: str,
        key: str | None,
        query: str = "",
        amz: dict[str, str] | None = None,
    ) -> Response:
        """A small request (listing page, HEAD), retried on transient failures and
        re-sent once to the bucket's real region when S3 names another one."""
        attempts = self.settings.max_attempts
        relocated = False
        attempt = 0
        while True:
            attempt += 1
            target = self.target(bucket)
            try:
                response = self.send(method, target, path_of(target), query=query, amz=amz, what=uri)
                if 200 <= response.status < 300:
                    return Response(response.status, response.headers, response.data or b"")
                region = self._redirect_region(response, target)
                if region and not relocated:
                    relocated = True
                    attempt -= 1
                    self.relocate(bucket, region)
                    continue
                raise self.error(response, uri=uri, bucket=bucket, key=key)
            except StorageInitializerError as error:
                if not error.retryable or attempt >= attempts:
                    raise
                delay = min(0.25 * 2 ** (attempt - 1), 5.0) * random.uniform(0.5, 1.0)
                delay = max(delay, getattr(error, "retry_after", None) or 0.0)
                log.debug("retrying %s %s in %.2fs after: %s", method, uri, delay, error)
                kit.sleep(delay, self._cancelled)  # a SIGTERM ends the wait

    @staticmethod
    def _redirect_region(response: Any, target: Target) -> str | None:
        """The region S3 says the bucket is in, when that is why it refused the request."""
        if response.status not in (301, 400):
            return None
        code, _, body_region = parse_error_body(response.data or b"")
        if response.status == 400 and code and code not in _REDIRECT_CODES:
            return None
        region = response.headers.get("x-amz-bucket-region") or body_region
        return region if region and region != target.region else None

    # -- the requests ------------------------------------------------------------------
    def list_page(self, uri: str, bucket: str, prefix: str, token: str | None, start_after: str | None) -> Page:
        params = {"list-type": "2", "prefix": prefix, "max-keys": str(PAGE_SIZE), "encoding-type": "url"}
        if token:
            params["continuation-token"] = token
        elif start_after:
            params["start-after"] = start_after
        response = self.call(
            "GET", bucket, lambda t: t.prefix[:-1] or "/", uri=uri, key=None, query=canonical_query(params)
        )
        try:
            return parse_list_page(response.body)
        except ET.ParseError as exc:
            raise TransientError(f"{uri}: the listing of bucket {bucket!r} is not valid XML ({exc})") from None

    def head(self, uri: str, bucket: str, key: str) -> Mapping[str, str]:
        """The object's headers, with its additional checksums (``x-amz-checksum-mode``)."""
        encoded = quote(key, safe="/~")
        response = self.call(
            "HEAD",
            bucket,
            lambda t: t.prefix + encoded,
            uri=uri,
            key=key,
            amz={"x-amz-checksum-mode": "ENABLED"},
        )
        return response.headers

    def get(
        self,
        uri: str,
        bucket: str,
        key: str,
        headers: dict[str, str],
        query: str = "",
        amz: dict[str, str] | None = None,
    ) -> Any:
        """A streamed GET (the caller checks the status and reads the body); ``query``: canonical form."""
        target = self.target(bucket)
        path = target.prefix + quote(key, safe="/~")
        return self.send("GET", target, path, query=query, amz=amz, headers=headers, stream=True, what=self._shown(uri))

    def _shown(self, uri: str) -> str:
        """The URI as messages show it (errors and log records redact it where they are made)."""
        shown = self._shown_uris.get(uri)
        if shown is None:
            shown = self._shown_uris[uri] = uri
        return shown


def parse_list_page(body: bytes) -> Page:
    """A ListObjectsV2 answer; keys are URL-decoded when the answer says ``EncodingType=url``."""
    root = ET.fromstring(body)
    encoded = (root.findtext(_NS + "EncodingType") or "").lower() == "url"
    entries = []
    contents_tag = _NS + "Contents"
    key_tag, size_tag, etag_tag = _NS + "Key", _NS + "Size", _NS + "ETag"
    for element in root.iter(contents_tag):
        key = element.findtext(key_tag) or ""
        size = element.findtext(size_tag)
        entries.append(
            Listed(
                unquote_plus(key) if encoded else key,
                int(size) if size and size.isdigit() else None,
                element.findtext(etag_tag),
            )
        )
    truncated = (root.findtext(_NS + "IsTruncated") or "").strip().lower() == "true"
    return Page(entries, truncated, root.findtext(_NS + "NextContinuationToken"))


def default_ca() -> str | None:
    """The CA bundle botocore verifies with by default (certifi, else its own copy)."""
    try:
        from botocore.httpsession import get_cert_path  # type: ignore[import-untyped, unused-ignore]

        path = get_cert_path(True)
        return path if isinstance(path, str) else None
    except Exception:
        return None


__all__ = ["Frozen", "Listed", "Page", "S3Wire", "Target", "parse_list_page"]
