"""What the Blob and Files providers share: HTTP transport, error mapping, body streams.

Ranged reads do not go through the SDK's public ``download_blob`` /
``download_file`` (``StorageStreamDownloader``), read in its source
(azure-storage-blob 12.31, azure-storage-file-share 12.27, ``_download.py``):
``process_content`` joins every chunk's whole response into one ``bytes``
(``b"".join(list(data))``: the first request up to ``max_single_get_size``,
32 MiB by default, then ``max_chunk_get_size``, 4 MiB), so a worker holds up
to 32 MiB instead of the engine's one reused buffer (8 workers: 256 MiB in an
init container limited to 1 GiB); and a short body is retried inside the SDK
with ``time.sleep(1)`` (SIGTERM cannot end it, and the retry nests in the
engine's). Shrinking the sizes trades that for one request per few MiB. So
they call the SDK's generated ``download`` operation (``client._client``,
the same operation the downloader sends, so signing, SAS, API version, the
``If-Match`` version pin and error parsing stay the SDK's) and hand its
chunk iterator to the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from storage_initializer import http as kit
from storage_initializer.errors import (
    AccessDeniedError,
    ConfigError,
    NotFoundError,
    ObjectChangedError,
    StorageInitializerError,
    TransientError,
    UsageError,
    classify,
    network_error,
)
from storage_initializer.provider import ChunkStream, ProviderContext

from ._config import Access

log = logging.getLogger("storage_initializer.azure")

#: One HTTP read hands at most this much to the engine (urllib3 reads that much per chunk).
BLOCK_SIZE = 1024 * 1024

_NOT_FOUND_CONTAINER = {"ContainerNotFound", "ShareNotFound"}
_TRANSIENT_CODES = {"ServerBusy", "OperationTimedOut", "InternalError", "ServiceUnavailable"}


def same_etag(a: str | None, b: str | None) -> bool:
    """ETags compared as Azure means them (listings may omit the quotes headers carry)."""
    if a is None or b is None:
        return True
    return a.strip().removeprefix("W/").strip('"') == b.strip().removeprefix("W/").strip('"')


def quoted(etag: str) -> str:
    etag = etag.strip()
    return etag if etag.startswith('"') or etag.startswith("W/") else f'"{etag}"'


def make_transport(context: ProviderContext, env: Mapping[str, str]) -> Any:
    """A ``RequestsTransport`` with the engine's timeouts, a pool per worker, no hidden retries.

    Proxies and the CA bundle come from the provider's environment (not
    ``os.environ``), like the http provider.
    """
    from azure.core.pipeline.transport import RequestsTransport

    session = kit.new_session(env, pool_size=context.concurrency + 2, retry_refused=True)
    verify = session.verify
    return RequestsTransport(
        session=session,
        session_owner=True,
        connection_timeout=context.connect_timeout,
        read_timeout=context.stall_timeout,
        connection_verify=verify,
        connection_data_block_size=BLOCK_SIZE,
    )


def client_options(context: ProviderContext, env: Mapping[str, str], access: Access) -> dict[str, Any]:
    """Keyword arguments every SDK client gets: our transport, no SDK retries."""
    return {
        "transport": make_transport(context, env),
        "retry_total": 0,
        "retry_connect": 0,
        "retry_read": 0,
        "retry_status": 0,
        "user_agent": "storage-initializer",
    }


def error_code(exc: BaseException) -> str | None:
    code = getattr(exc, "error_code", None)
    if code:
        return str(getattr(code, "value", code))
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    value = headers.get("x-ms-error-code")
    return str(value) if value else None


def map_error(exc: BaseException, what: str, access: Access, container_kind: str) -> StorageInitializerError:
    """Turn an SDK/transport exception into the project's error, saying what to check.

    ``what`` names the URI or object (the error redacts it).
    """
    from azure.core.exceptions import (
        AzureError,
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
        ServiceResponseError,
    )

    if isinstance(exc, StorageInitializerError):
        return exc
    message = str(exc).split("\n", 1)[0]
    response = getattr(exc, "response", None)
    status = getattr(exc, "status_code", None) or getattr(response, "status_code", None)
    if isinstance(exc, HttpResponseError) and status:
        headers = getattr(response, "headers", None)
        return status_error(int(status), error_code(exc), what, access, container_kind, headers)
    if isinstance(exc, ClientAuthenticationError):  # azure-identity: no token
        return AccessDeniedError(
            f"{what}: could not get an Azure AD token ({message})",
            hint="check AZURE_CLIENT_ID / AZURE_TENANT_ID and the secret, certificate, federated token "
            "file or managed identity they refer to",
        )
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return network_error(
            exc,
            access.endpoint,
            ca_hint="set REQUESTS_CA_BUNDLE (or SSL_CERT_FILE) to the CA that signed the endpoint's certificate",
            hint="check the storage account name in the URI (or the endpoint of "
            "AZURE_STORAGE_CONNECTION_STRING), proxies and network policies",
        )
    if isinstance(exc, ValueError) and "HTTPS" in str(exc):
        return ConfigError(f"{what}: {message}", hint="Azure AD credentials need an https:// endpoint")
    if isinstance(exc, AzureError):
        return StorageInitializerError(f"{what}: {type(exc).__name__}: {message}")
    return classify(exc)


def status_error(
    status: int,
    code: str | None,
    what: str,
    access: Access,
    container_kind: str,
    headers: Mapping[str, str] | None = None,
) -> StorageInitializerError:
    shown = f"{status} {code}" if code else str(status)
    if status == 404:
        if code in _NOT_FOUND_CONTAINER:
            return NotFoundError(
                f"{what}: the {container_kind} does not exist in storage account {access.account!r} ({shown})",
                hint=f"check the {container_kind} name in the URI",
            )
        hint = "check the path in the URI"
        if access.anonymous:
            hint += "; a private container answers anonymous requests with 404: " + access.hint
        return NotFoundError(f"{what}: not found ({shown})", hint=hint)
    if status in (401, 403) or code == "PublicAccessNotPermitted":
        if code == "AuthorizationPermissionMismatch":
            return AccessDeniedError(
                f"{what}: the credentials lack a permission ({shown})",
                hint=f"the {access.source} needs read and list permission",
            )
        if access.anonymous or code in ("NoAuthenticationInformation", "PublicAccessNotPermitted"):
            return AccessDeniedError(f"{what}: anonymous access refused ({shown})", hint=access.hint)
        if code == "AuthenticationFailed":
            return AccessDeniedError(f"{what}: the storage account refused the credentials ({shown})", hint=access.hint)
        return AccessDeniedError(
            f"{what}: access denied ({shown})",
            hint=f"{access.hint}; also check the storage account's network rules (firewall, private "
            "endpoints) and the identity's role assignment",
        )
    if status in (412, 416) or code == "ConditionNotMet":
        return ObjectChangedError(f"{what} changed during the download ({shown})", hint="run again")
    if kit.is_transient_status(status) or code in _TRANSIENT_CODES:
        return kit.transient_error(f"{what}: the storage service answered {shown}", headers)
    if code == "BlobArchived":
        return StorageInitializerError(
            f"{what}: the blob is in the Archive tier ({shown})", hint="rehydrate it to the Hot or Cool tier first"
        )
    if status == 400 and code and ("InvalidResourceName" in code or "InvalidUri" in code):
        return UsageError(f"{what}: the service rejected the name ({shown})", hint="check the URI")
    return StorageInitializerError(f"{what}: the storage service answered {shown}")


def chunk_stream(chunks: Iterator[bytes], close: Callable[[], None], what: str) -> ChunkStream:
    """A streamed body; errors while reading (timeouts, resets, short bodies) become retryable."""

    def on_error(exc: Exception) -> BaseException:
        return TransientError(f"{what}: reading failed ({type(exc).__name__}: {exc!s})")

    return ChunkStream(chunks, close, on_error)
