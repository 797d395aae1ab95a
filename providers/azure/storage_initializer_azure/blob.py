"""Azure Blob Storage: ``https://ACCOUNT.blob.core.windows.net/CONTAINER[/PATH][?SAS]``.

* ``PATH`` names one blob if a blob of that exact name exists, else the
  directory ``PATH/`` (every blob below it, keys relative to it). A sibling
  such as ``PATH-v2/`` or ``PATH.bin`` is never included (KServe lists with the
  bare string prefix and pulls them). No ``PATH``: the whole container.
* Zero-byte blobs are files; ``dir/`` blobs and ADLS Gen2 folder blobs
  (metadata ``hdi_isfolder=true``) are directory markers.
* Listing streams page by page (5000 blobs each) into the engine.
* Each range carries ``If-Match: <listed ETag>`` (412 -> the blob changed);
  ``Content-MD5``, when the blob has one, is verified for the whole file.
* Reads are described to the engine's event loop (:meth:`AzureBlobProvider.http_range`),
  signed with the account key (Shared Key), a SAS or an Azure AD token as the SDK would;
  through a proxy they go through the SDK's pipeline instead.
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any

from storage_initializer import http as kit
from storage_initializer.errors import NotFoundError
from storage_initializer.provider import ByteStream, HttpRange, ProviderContext, RemoteObject, UriFormat

from . import _shared_key
from ._base import AzureProvider
from ._common import error_code, quoted, status_error
from ._config import Access, AzureUri, uri_regexes

_FOLDER_KEY = "hdi_isfolder"
#: The scope of an Azure AD token for Azure Storage (the SDK's default audience).
_STORAGE_SCOPE = "https://storage.azure.com/.default"
#: A token is renewed when it has less than this many seconds left.
_TOKEN_MARGIN = 300


def _is_folder(metadata: Any) -> bool:
    return bool(metadata) and str(metadata.get(_FOLDER_KEY, "")).lower() == "true"


def _md5_hex(content_settings: Any) -> dict[str, str]:
    md5 = getattr(content_settings, "content_md5", None)
    return {"md5": bytes(md5).hex()} if md5 else {}


class AzureBlobProvider(AzureProvider):
    """Azure Blob Storage containers (Azurite too, through a connection string)."""

    service = "blob"
    container_kind = "container"
    uri_formats = tuple(UriFormat(regex=r) for r in uri_regexes("blob"))
    requires = ("azure.storage.blob",)
    description = "Azure Blob Storage: https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH[?SAS]"

    def __init__(self, context: ProviderContext) -> None:
        super().__init__(context)
        self._token_lock = threading.Lock()
        self._token: tuple[str, float] | None = None  # (token, expires_on)

    def build_client(self, target: AzureUri, access: Access, options: dict[str, Any]) -> Any:
        from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
        from azure.storage.blob import ContainerClient

        credential: Any = None
        if access.key:
            credential = AzureNamedKeyCredential(access.account, access.key)
        elif access.sas:
            credential = AzureSasCredential(access.sas)
        elif access.token:
            credential = access.token.build()
        return ContainerClient(access.endpoint, target.container, credential=credential, **options)

    # -- listing -------------------------------------------------------------
    def list(self, uri: str) -> Iterator[RemoteObject]:
        target = self.target(uri)
        access, container = self.service_client(target)
        path = target.path
        prefix = path
        if path and not path.endswith("/"):
            single = self._single_blob(target, access, container, path)
            if single is not None:
                yield single
                return
            prefix = path + "/"
        found = False
        pages = container.list_blobs(
            name_starts_with=prefix or None, include=["metadata"], results_per_page=self.page_size
        )
        for blob in self.iterate(pages, target.shown, access):
            key = blob.name[len(prefix) :]
            folder = key.endswith("/") or _is_folder(blob.metadata)
            if not key or key == "/":
                continue  # the marker of the directory itself
            found = True
            if folder:
                yield RemoteObject(key=key.rstrip("/") + "/", size=0)
                continue
            yield RemoteObject(
                key=key,
                size=blob.size,
                version=blob.etag,
                checksums=_md5_hex(blob.content_settings),
                extra=blob.name,
            )
        if not found:
            where = f"under {prefix!r}" if prefix else "at all"
            exact = f"no blob named {path!r} and " if path and not path.endswith("/") else ""
            raise NotFoundError(
                f"{target.shown}: {exact}no blobs {where} in container {target.container!r}",
                hint="check the path in the URI; blob names are case-sensitive",
            )

    def _single_blob(self, target: AzureUri, access: Access, container: Any, path: str) -> RemoteObject | None:
        """The blob named exactly ``path``, or None when there is none (or it is a folder)."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            props = container.get_blob_client(path).get_blob_properties()
        except ResourceNotFoundError as exc:
            if error_code(exc) == "ContainerNotFound":
                raise self.error(exc, target.shown, access) from None
            return None  # BlobNotFound, or a private container seen anonymously: the listing says which
        except Exception as exc:
            raise self.error(exc, target.shown, access) from None
        if _is_folder(props.metadata):
            return None
        return RemoteObject(
            key=path.rsplit("/", 1)[-1],
            size=props.size,
            version=props.etag,
            checksums=_md5_hex(props.content_settings),
            extra=path,
        )

    # -- reading ---------------------------------------------------------------
    def open_range(
        self, uri: str, obj: RemoteObject, start: int, end: int | None
    ) -> AbstractContextManager[ByteStream]:
        target = self.target(uri)
        access, container = self.service_client(target)
        name, what = self.object_name(target, obj)
        blob = container.get_blob_client(name)
        headers = {"If-Match": quoted(obj.version)} if obj.version else {}
        byte_range = kit.range_header(start, end)

        def call() -> tuple[Any, Iterator[bytes]]:
            # The generated operation the SDK's downloader uses, streamed (see _common).
            return blob._client.blob.download(  # type: ignore[no-any-return]
                range=byte_range,
                headers=headers,
                decompress=False,
                cls=lambda response, body, _headers: (response, body),
            )

        return self.ranged_body(what, access, call, start)

    def http_range(self, uri: str, obj: RemoteObject, start: int, end: int | None) -> HttpRange | None:
        target = self.target(uri)
        access, container = self.service_client(target)
        if kit.proxies_for(access.endpoint, self.env):
            return None  # the SDK's transport speaks to the proxy
        name, what = self.object_name(target, obj)
        url = str(container.get_blob_client(name).url)
        headers = {"x-ms-version": str(container.api_version), "x-ms-date": email.utils.formatdate(usegmt=True)}
        ranged = start > 0 or (end is not None and end != obj.size)
        if ranged:
            headers["x-ms-range"] = kit.range_header(start, end)
        if obj.version:
            headers["If-Match"] = quoted(obj.version)
        if access.sas:
            url += ("&" if "?" in url else "?") + access.sas.lstrip("?")
        elif access.key:
            headers["Authorization"] = _shared_key.authorization(access.account, access.key, "GET", url, headers)
        elif access.token is not None:
            headers["Authorization"] = "Bearer " + self.guarded(what, access, lambda: self._bearer(container))

        def check(status: int, answer: Mapping[str, str], body: bytes) -> None:
            if status not in (200, 206):
                code = answer.get("x-ms-error-code")
                raise status_error(status, code, what, access, self.container_kind, answer)
            if ranged:
                kit.check_partial(status, answer, start, what)

        return HttpRange(url, headers, check, kit.tls_context_for(url, self.env))

    def _bearer(self, container: Any) -> str:
        """An Azure AD token for storage from the client's credential, renewed near its expiry."""
        with self._token_lock:
            if self._token is None or self._token[1] - time.time() < _TOKEN_MARGIN:
                token = container.credential.get_token(_STORAGE_SCOPE)
                self._token = (str(token.token), float(token.expires_on))
            return self._token[0]
