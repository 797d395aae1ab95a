"""The part of a provider both Azure services share: URI, access and client caching."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar

from storage_initializer import http as kit
from storage_initializer.errors import StorageInitializerError
from storage_initializer.provider import ChunkStream, Provider, ProviderContext, RemoteObject

from ._common import chunk_stream, client_options, log, map_error
from ._config import Access, AzureUri, Service, choose_access, other_account_note, parse_uri


class AzureProvider(Provider):
    """Base of the Blob and Files providers (not registered itself)."""

    service: ClassVar[Service]
    container_kind: ClassVar[str]
    #: Entries per listing request (the services' maximum).
    page_size: ClassVar[int] = 5000

    def __init__(self, context: ProviderContext) -> None:
        super().__init__(context)
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str], tuple[Access, Any]] = {}

    def validate(self, uri: str) -> None:
        parse_uri(uri, self.service)

    def target(self, uri: str) -> AzureUri:
        return parse_uri(uri, self.service)

    def access(self, target: AzureUri) -> Access:
        return choose_access(target, self.env)

    def service_client(self, target: AzureUri) -> tuple[Access, Any]:
        """One service client per account and container, shared by all threads."""
        cache_key = (target.account, target.container)
        with self._lock:
            cached = self._clients.get(cache_key)
            if cached is not None:
                return cached
            note = other_account_note(target, self.env)
            if note:
                log.warning("%s", note)
            access = self.access(target)
            log.info(
                "azure %s %s/%s via %s with %s",
                self.service,
                target.account,
                target.container,
                access.endpoint,
                access.source,
            )
            options = client_options(self.context, self.env, access)
            try:
                client = self.build_client(target, access, options)
            except Exception as exc:
                raise self.error(exc, target.shown, access) from None
            self._clients[cache_key] = (access, client)
            return access, client

    def build_client(self, target: AzureUri, access: Access, options: dict[str, Any]) -> Any:
        raise NotImplementedError

    def error(self, exc: BaseException, what: str, access: Access) -> StorageInitializerError:
        return map_error(exc, what, access, self.container_kind)

    def guarded(self, what: str, access: Access, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as exc:
            raise self.error(exc, what, access) from None

    @staticmethod
    def object_name(target: AzureUri, obj: RemoteObject) -> tuple[str, str]:
        """The listed object's name in its container and how messages name it."""
        name = obj.extra if isinstance(obj.extra, str) else obj.key
        return name, (f"{target.shown} ({name})" if name != target.path else target.shown)

    def ranged_body(
        self,
        what: str,
        access: Access,
        download: Callable[[], tuple[Any, Iterator[bytes]]],
        start: int,
        check: Callable[[Mapping[str, str]], None] = lambda headers: None,
    ) -> ChunkStream:
        """Send a generated ``download`` operation (see ``_common``) and hand its checked body to the engine."""
        response, body = self.guarded(what, access, download)
        http = response.http_response
        try:
            check(http.headers)
            kit.check_partial(http.status_code, http.headers, start, what)
        except BaseException:
            http.close()
            raise
        return chunk_stream(body, http.close, what)

    def iterate(self, items: Iterable[Any], what: str, access: Access) -> Iterator[Any]:
        """Iterate an SDK pager, mapping the errors its page requests raise."""
        iterator = iter(items)
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                return
            except Exception as exc:
                raise self.error(exc, what, access) from None
            yield item

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for _, client in clients:
            try:
                client.close()
            except Exception:  # closing must not hide the outcome
                log.debug("closing an Azure client failed", exc_info=True)
