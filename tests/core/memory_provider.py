"""An in-memory object store provider, for driving the engine with keys and
checksums a real store would rarely produce (hostile keys, wrong digests).

It implements the real provider contract (it is not a mock of anything): the
engine under test is the production engine. Objects live in a class-level
dict, so it works in-process through the Python API only.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import IO, ClassVar

from storage_initializer.errors import (
    AccessDeniedError,
    NotFoundError,
    ObjectChangedError,
    TransientError,
    UsageError,
)
from storage_initializer.provider import Provider, RemoteObject, UriFormat
from storage_initializer.registry import Registry


class MemoryProvider(Provider):
    uri_formats = (UriFormat(prefix="mem://"),)
    objects: ClassVar[dict[str, bytes]] = {}
    checksums: ClassVar[dict[str, Mapping[str, str]]] = {}
    versions: ClassVar[dict[str, str]] = {}
    reads: ClassVar[list[tuple[str, int, int | None]]] = []
    #: Keys whose next read fails with a TransientError (then the fault is gone).
    flaky: ClassVar[set[str]] = set()
    #: Keys this store refuses (AccessDeniedError).
    denied: ClassVar[set[str]] = set()

    @classmethod
    def reset(cls) -> None:
        cls.objects.clear()
        cls.checksums.clear()
        cls.versions.clear()
        cls.reads.clear()
        cls.flaky.clear()
        cls.denied.clear()

    def validate(self, uri: str) -> None:
        if not uri[len("mem://") :].strip("/"):
            raise UsageError(f"{uri} names no object", hint="use mem://KEY")

    def list(self, uri: str) -> Iterator[RemoteObject]:
        path = uri[len("mem://") :].rstrip("/")
        if path in self.denied:
            raise AccessDeniedError(f"{uri}: access denied")
        if path in self.objects:
            yield self._object(path, path.rsplit("/", 1)[-1])
            return
        prefix = path + "/" if path else ""
        found = False
        for key in sorted(self.objects):
            if key.startswith(prefix):
                found = True
                yield self._object(key, key[len(prefix) :])
        if not found:
            raise NotFoundError(f"{uri} not found")

    def _object(self, full: str, key: str) -> RemoteObject:
        return RemoteObject(
            key, len(self.objects[full]), self.versions.get(full, "v1"), self.checksums.get(full, {}), extra=full
        )

    def open_range(self, uri: str, obj: RemoteObject, start: int, end: int | None) -> AbstractContextManager[IO[bytes]]:
        full: str = obj.extra
        assert end is None or end > start, f"the engine asked for an empty range of {full}"
        if self.versions.get(full, "v1") != obj.version:
            raise ObjectChangedError(f"{full} changed")
        self.reads.append((full, start, end))
        if full in self.flaky:
            self.flaky.discard(full)
            raise TransientError(f"{full}: connection reset")
        return io.BytesIO(self.objects[full][start:end])


def memory_registry() -> Registry:
    return Registry.from_classes({"mem": MemoryProvider})
