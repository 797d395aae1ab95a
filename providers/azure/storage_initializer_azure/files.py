"""Azure Files: ``https://ACCOUNT.file.core.windows.net/SHARE[/PATH][?SAS]``.

* ``PATH`` names one file if it is a file, else a directory, downloaded
  whole at any depth with paths relative to it (KServe keeps the share-relative
  path and stops at depth 5). No ``PATH``: the whole share.
* The listing walks directories one level per request (the REST API has no
  recursive listing), 5000 entries per page, and streams into the engine.
  Directories are reported as markers, so a tree of empty directories is
  "only directory markers", not a silent success.
* Azure Files refuses conditional headers on reads (``If-Match`` is 400
  ``ConditionHeadersNotSupported``), so each ranged response's ``ETag`` is
  compared with the listed one instead, as the SDK's own downloader does.
* The listing carries no Content-MD5; a single-file URI gets it from the
  properties request it needs anyway, so only then is the MD5 verified.
* Credentials: the same options as Blob, except anonymous access, which Azure
  Files does not have. Azure AD tokens use ``x-ms-file-request-intent: backup``
  (the SDK's ``token_intent``), which needs a role with backup semantics such as
  "Storage File Data Privileged Reader".
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any

from storage_initializer import http as kit
from storage_initializer.errors import (
    AccessDeniedError,
    NotFoundError,
    ObjectChangedError,
    UnsafePathError,
)
from storage_initializer.provider import ByteStream, RemoteObject, UriFormat

from ._base import AzureProvider
from ._common import error_code, same_etag
from ._config import Access, AzureUri, uri_regexes

#: Answers to "read PATH as a file" that mean "it is not a file".
_NOT_A_FILE = {"ResourceNotFound", "ParentNotFound", "ResourceTypeMismatch"}


class AzureFileProvider(AzureProvider):
    """Azure Files shares over the FileREST API."""

    service = "file"
    container_kind = "share"
    uri_formats = tuple(UriFormat(regex=r) for r in uri_regexes("file"))
    requires = ("azure.storage.fileshare",)
    description = "Azure Files: https://ACCOUNT.file.core.windows.net/SHARE/PATH[?SAS]"

    def build_client(self, target: AzureUri, access: Access, options: dict[str, Any]) -> Any:
        from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
        from azure.storage.fileshare import ShareClient

        if access.anonymous:
            raise AccessDeniedError(f"{target.shown}: Azure Files has no anonymous access", hint=access.hint)
        intent: Any = None
        credential: Any
        if access.key:
            credential = AzureNamedKeyCredential(access.account, access.key)
        elif access.sas:
            credential = AzureSasCredential(access.sas)
        else:
            assert access.token is not None
            credential = access.token.build()
            intent = "backup"
        return ShareClient(access.endpoint, target.container, credential=credential, token_intent=intent, **options)

    # -- listing -------------------------------------------------------------
    def list(self, uri: str) -> Iterator[RemoteObject]:
        target = self.target(uri)
        access, share = self.service_client(target)
        path = target.path
        if path and not path.endswith("/"):
            single = self._single_file(target, access, share, path)
            if single is not None:
                yield single
                return
        base = path.strip("/")
        found = False
        stack = [""]
        while stack:
            relative = stack.pop()
            directory = share.get_directory_client("/".join(p for p in (base, relative) if p))
            what = target.shown if not relative else f"{target.shown} ({relative}/)"
            pages = directory.list_directories_and_files(include=["Etag"], results_per_page=self.page_size)
            subdirectories = []
            for item in self.iterate(pages, what, access):
                if item.name in ("", ".", "..") or any(c in item.name for c in "/\\\0"):
                    raise UnsafePathError(
                        f"{what}: the listing holds an entry named {item.name!r}, which Azure Files "
                        "does not allow; refusing to follow it"
                    )
                found = True
                key = f"{relative}/{item.name}" if relative else item.name
                if item.is_directory:
                    subdirectories.append(key)
                    yield RemoteObject(key=key + "/", size=0)
                else:
                    full = f"{base}/{key}" if base else key
                    yield RemoteObject(key=key, size=item.size, version=item.etag, extra=full)
            stack.extend(reversed(subdirectories))
        if not found:
            raise NotFoundError(f"{target.shown} is an empty directory", hint="check the path in the URI")

    def _single_file(self, target: AzureUri, access: Access, share: Any, path: str) -> RemoteObject | None:
        """The file at ``path``, or None when ``path`` is not a file (a directory, or nothing)."""
        try:
            props = share.get_file_client(path).get_file_properties()
        except Exception as exc:
            if error_code(exc) in _NOT_A_FILE:
                return None
            raise self.error(exc, target.shown, access) from None
        md5 = props.content_settings.content_md5
        return RemoteObject(
            key=path.rsplit("/", 1)[-1],
            size=props.size,
            version=props.etag,
            checksums={"md5": bytes(md5).hex()} if md5 else {},
            extra=path,
        )

    # -- reading ---------------------------------------------------------------
    def open_range(
        self, uri: str, obj: RemoteObject, start: int, end: int | None
    ) -> AbstractContextManager[ByteStream]:
        target = self.target(uri)
        access, share = self.service_client(target)
        path, what = self.object_name(target, obj)
        file_client = share.get_file_client(path)
        byte_range = kit.range_header(start, end)

        def call() -> tuple[Any, Iterator[bytes]]:
            # The generated operation the SDK's downloader uses, streamed (see _common).
            return file_client._client.file.download(  # type: ignore[no-any-return]
                range=byte_range,
                allow_trailing_dot=file_client.allow_trailing_dot,
                file_request_intent=file_client.file_request_intent,
                decompress=False,
                cls=lambda response, body, _headers: (response, body),
            )

        def unchanged(headers: Mapping[str, str]) -> None:
            etag = headers.get("ETag")
            if not same_etag(obj.version, etag):
                raise ObjectChangedError(
                    f"{what} changed during the download (ETag {obj.version} when listed, now {etag})",
                    hint="run again to download the new version",
                )

        return self.ranged_body(what, access, call, start, unchanged)
