"""The plugin API: what a storage provider implements and what it receives.

A provider is deliberately small (the rclone backend idea): it *lists* the
objects a URI names and *opens byte ranges* of them. Everything else
(concurrency, ranged parts, atomic files, resume, verification, retries,
progress, archives, path safety) belongs to the engine, so every provider gets
it for free and cannot get it wrong.

A provider is registered under the entry-point group
``storage_initializer.providers``; the entry point's name is the provider's
name and its value is the provider class. Keep SDK imports *inside* methods:
the class is imported to read :attr:`Provider.uri_formats`, and a tool that
serves ``s3://`` must not pay for (or break on) the Azure SDK.

This module, :mod:`storage_initializer.errors` and
:func:`storage_initializer.redact.register_secret` are the stable public API.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar, Protocol, TypeAlias, TypeVar

from storage_initializer.errors import StorageInitializerError

__all__ = [
    "ByteStream",
    "ChunkStream",
    "HttpRange",
    "Plugin",
    "Provider",
    "ProviderContext",
    "RangeStream",
    "RemoteObject",
    "Resolution",
    "Resolver",
    "SocketStream",
    "StagedObject",
    "StreamBase",
    "UriFormat",
]


class ByteStream(Protocol):
    """What the engine reads a range from: all it calls is here.

    ``readinto`` fills the engine's reused buffer and returns the byte count
    (0 at the end); ``read(n)`` returns up to ``n`` bytes (``b""`` at the
    end; ``-1``: the rest) and is used only by callers that want ``bytes``.
    A read must not block longer than the stall timeout. ``close`` releases
    the connection; the engine calls it once (through the context manager)
    whether or not the range was read to its end.
    """

    def readinto(self, buffer: memoryview, /) -> int: ...

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


_Stream = TypeVar("_Stream", bound="StreamBase")


class StreamBase(ABC):
    """A :class:`ByteStream` from ``readinto`` and ``close``: adds ``read`` and the context manager.

    A provider whose body is not already a file object (chunks from an SDK,
    a decoder, a socket) subclasses this and returns the stream itself from
    :meth:`Provider.open_range`.
    """

    @abstractmethod
    def readinto(self, buffer: memoryview, /) -> int:
        """Fill ``buffer`` with the next bytes; return how many (0 at the end)."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection (called once, read to the end or not)."""

    def read(self, size: int = -1, /) -> bytes:
        if size >= 0:
            buffer = bytearray(size)
            return bytes(buffer[: self.readinto(memoryview(buffer))])
        out = bytearray()
        buffer = bytearray(256 * 1024)
        while n := self.readinto(memoryview(buffer)):
            out += buffer[:n]
        return bytes(out)

    def __enter__(self: _Stream) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ChunkStream(StreamBase):
    """A :class:`ByteStream` over an SDK's streamed body given as an iterator of ``bytes`` chunks.

    ``readinto`` fills the buffer across chunk boundaries. ``on_error`` maps an
    exception raised by the iterator (a timeout, a reset) to the error to raise
    instead (typically a :class:`~storage_initializer.errors.TransientError`),
    or returns ``None`` to let it propagate. ``close`` releases the response.
    """

    def __init__(
        self,
        chunks: Iterable[bytes],
        close: Callable[[], None],
        on_error: Callable[[Exception], BaseException | None] = lambda exc: None,
    ) -> None:
        self._chunks = iter(chunks)
        self._close = close
        self._on_error = on_error
        self._pending = memoryview(b"")

    def _next(self) -> bool:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            return False
        except Exception as exc:
            error = self._on_error(exc)
            if error is None:
                raise
            raise error from None
        self._pending = memoryview(chunk)
        return True

    def readinto(self, buffer: memoryview, /) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view):
            if not self._pending and not self._next():
                break
            n = min(len(view) - filled, len(self._pending))
            view[filled : filled + n] = self._pending[:n]
            self._pending = self._pending[n:]
            filled += n
        return filled

    def close(self) -> None:
        self._close()


class SocketStream(StreamBase):
    """A :class:`ByteStream` over a connected socket: the data connection of a raw protocol (an FTP ``RETR``).

    Reads until the peer closes or ``limit`` bytes came (``None``: no limit); a failed read is a
    :class:`~storage_initializer.errors.TransientError` naming ``what``. Set the socket's timeout
    to the stall timeout. ``close`` closes the socket.
    """

    def __init__(self, sock: socket.socket, limit: int | None = None, what: str = "data connection") -> None:
        self._sock = sock
        self._remaining = limit
        self._what = what

    def readinto(self, buffer: memoryview, /) -> int:
        from storage_initializer.errors import TransientError

        view = memoryview(buffer).cast("B")
        if self._remaining is not None:
            if self._remaining <= 0:
                return 0
            view = view[: self._remaining]
        try:
            n = self._sock.recv_into(view)
        except OSError as exc:
            raise TransientError(f"{self._what} failed: {exc}") from exc
        if self._remaining is not None:
            self._remaining -= n
        return n

    def close(self) -> None:
        self._sock.close()


#: What :meth:`Provider.open_range`'s context manager yields: a :class:`ByteStream`,
#: or any binary file object (``IO[bytes]``), which plugins written before
#: :class:`ByteStream` existed return; the engine uses ``readinto`` when present.
RangeStream: TypeAlias = ByteStream | IO[bytes]


@dataclass(frozen=True)
class UriFormat:
    """One entry of a ClusterStorageContainer's ``supportedUriFormats``.

    Exactly one of ``prefix`` (matched with ``str.startswith``) or ``regex``
    (matched with ``re.search``, as KServe's Go ``regexp.MatchString`` does).
    """

    prefix: str | None = None
    regex: str | None = None

    def __post_init__(self) -> None:
        if (self.prefix is None) == (self.regex is None):
            raise ValueError("UriFormat needs exactly one of prefix= or regex=")
        if self.regex is not None:
            re.compile(self.regex)

    def matches(self, uri: str) -> bool:
        if self.prefix is not None:
            return uri.startswith(self.prefix)
        assert self.regex is not None
        return re.search(self.regex, uri) is not None

    def as_crd(self) -> dict[str, str]:
        """The form used in a ClusterStorageContainer manifest."""
        if self.prefix is not None:
            return {"prefix": self.prefix}
        assert self.regex is not None
        return {"regex": self.regex}

    def __str__(self) -> str:
        return f"prefix {self.prefix}" if self.prefix is not None else f"regex {self.regex}"


@dataclass(frozen=True)
class RemoteObject:
    """One file to download, as a provider lists it.

    ``key`` is the '/'-separated path relative to the URI root: for a URI that
    names a single object it is the object's base name; for a directory it is
    the path below it. A key ending in '/' (or the empty key of the listed
    directory's own marker) is a directory marker: no file is created.
    ``size`` is the byte count when known. ``version`` (ETag, generation,
    commit, mtime...) identifies the content: the engine hands the object back
    to :meth:`Provider.open_range`, which must refuse to serve a different
    version (raise :class:`~storage_initializer.errors.ObjectChangedError`).
    ``checksums`` maps an algorithm (``md5``, ``sha256``, ``sha1``, ``crc32c``)
    to the lowercase hex digest of the whole object; :meth:`Provider.open_range`
    may delete an entry of a ``dict`` it listed when a response shows the
    digest does not apply (an S3 ETag of an SSE-KMS object is no MD5), and the
    engine then does not check it; a provider that :attr:`~Provider.answers_checksums`
    may add an entry the answer announced. Adding never changes the object's
    identity: a resume or an earlier download matches on the digests both announce. ``supports_ranges`` is
    ``False`` when the store can only stream the object from its first byte
    (an HTTP server without Range support): the engine then reads it in one
    stream and restarts it from zero after a failure. ``extra`` is private to
    the provider (a download URL, a full path...) and ignored by the engine.

    ``intermediate`` marks an object that is not a file of the model but an
    input from which the files are made (an image layer, a bundle): the
    engine downloads it like any other (ranged, verified, resumable, retried)
    into a staging area inside DEST's state directory, under its key, never
    into DEST; allow/ignore patterns do not apply to it. Once every
    intermediate object of the listing is complete, the engine calls
    :meth:`Provider.assemble`, extracts the tree it writes (patterns apply to
    those paths, with the archive rules), and removes the staged objects.
    """

    key: str
    size: int | None
    version: str | None = None
    checksums: Mapping[str, str] = field(default_factory=dict, hash=False)
    supports_ranges: bool = True
    extra: Any = field(default=None, compare=False, hash=False)
    intermediate: bool = False

    @property
    def is_dir_marker(self) -> bool:
        """A ``dir/`` marker object (or the marker of the listed directory itself, key ``""``)."""
        return self.key == "" or self.key.endswith("/")


@dataclass(frozen=True)
class StagedObject:
    """An intermediate object (see :class:`RemoteObject`) the engine downloaded and verified.

    ``path`` is where its bytes are, on DEST's filesystem; it is read-only input to
    :meth:`Provider.assemble` and removed by the engine afterwards.
    """

    obj: RemoteObject
    path: str


@dataclass(frozen=True)
class HttpRange:
    """A bodiless ``GET`` that reads a byte range, described for the engine to send.

    ``url`` is absolute (``http://`` or ``https://``, path and query already
    encoded); ``headers`` carry everything the store needs (signature,
    ``Range``, ``If-Match``...; ``Host`` and ``Accept-Encoding: identity`` are
    added when missing). ``check(status, headers, body)`` is called with the
    response's status and headers (``headers.get`` is case-insensitive): for a
    2xx answer (``body`` empty) it raises when the answer is not the range and
    version asked for; for any other status it raises the matching typed error
    (``body``: the first 64 KiB of the error document). ``ssl_context`` is the
    TLS context for ``https://`` (``None``: the system's default CAs).
    """

    url: str
    headers: Mapping[str, str]
    check: Callable[[int, Mapping[str, str], bytes], None]
    ssl_context: Any = None


@dataclass(frozen=True)
class Resolution:
    """What a resolver provider maps a URI to.

    ``env`` is laid over the environment of the provider that serves ``uri``
    (for example credentials named by a model registry's storage key).
    """

    uri: str
    env: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class ProviderContext:
    """What the engine gives a provider when it creates one.

    ``env`` is the environment to read configuration from (never write to
    ``os.environ``). ``stall_timeout`` bounds how long one read may wait for a
    byte and ``connect_timeout`` how long a connection may take: a provider
    must pass both to its client so that no read can hang. ``concurrency`` is
    the number of worker threads that may call :meth:`Provider.open_range` at
    once (size connection pools to it). ``cancelled`` is set when the run is
    stopped (SIGTERM): a provider waiting between its own retries waits on it
    (see :func:`storage_initializer.http.sleep`).
    """

    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    stall_timeout: float = 30.0
    connect_timeout: float = 15.0
    concurrency: int = 8
    cancelled: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)


class Plugin(ABC):  # noqa: B024 - abstract: subclass Provider or Resolver
    """What every entry point of the group shares: URI formats, settings, lifetime.

    Subclass :class:`Provider` (lists and reads objects) or :class:`Resolver`
    (maps a URI to another one, such as ``model-registry://``), never this.
    """

    #: The URI formats this plugin serves, in the CRD's shape.
    uri_formats: ClassVar[Sequence[UriFormat]] = ()
    #: A fallback (generic ``https://``) loses to any other matching plugin.
    fallback: ClassVar[bool] = False
    #: Modules the plugin imports lazily; ``--list-providers`` checks them.
    requires: ClassVar[Sequence[str]] = ()
    #: One line for ``--list-providers``.
    description: ClassVar[str] = ""

    def __init__(self, context: ProviderContext) -> None:
        self.context = context

    @property
    def env(self) -> Mapping[str, str]:
        return self.context.env

    def validate(self, uri: str) -> None:  # noqa: B027 - optional hook
        """Check the URI's form before any network use.

        Raise :class:`~storage_initializer.errors.UsageError` saying which form
        is expected. The default accepts everything.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients and connection pools."""


class Resolver(Plugin):
    """A plugin that only maps its URI to another one (``model-registry://`` -> ``s3://...``).

    The registry hands the result to whichever plugin serves it; a resolver
    never lists or reads. :meth:`validate` and :meth:`resolve` run once, on
    the main thread.
    """

    @abstractmethod
    def resolve(self, uri: str) -> str | Resolution:
        """The URI to download instead of ``uri``, with an optional environment overlay."""


class Provider(Plugin):
    """Base class of every storage provider.

    Subclasses set :attr:`uri_formats` and implement :meth:`list` and
    :meth:`open_range`. A plugin that only maps URIs subclasses
    :class:`Resolver` instead. Methods are called from several threads at
    once, except :meth:`validate`, :meth:`resolve` and :meth:`list`.
    """

    #: The store's answer to a whole-object read may announce digests its listing did not
    #: (S3's ``x-amz-checksum-*`` with ``x-amz-checksum-mode: ENABLED``): the provider adds
    #: them to the object's ``checksums`` dict when it checks the answer, and the engine,
    #: choosing when the first byte is hashed, may verify the cheapest of them.
    answers_checksums: ClassVar[bool] = False

    def resolve(self, uri: str) -> str | Resolution | None:
        """Map ``uri`` to another URI to download instead, or return ``None`` (the default).

        Kept for providers that resolve only some of their URIs; a plugin
        that always resolves is a :class:`Resolver`.
        """
        return None

    @abstractmethod
    def list(self, uri: str) -> Iterable[RemoteObject]:
        """Yield the objects ``uri`` names, streaming pages as they arrive.

        A URI naming one object yields one entry whose key is its base name.
        A URI naming a directory yields every object below it (keys relative
        to it, never objects of a sibling prefix such as ``model-v2/``).
        Nothing found is :class:`~storage_initializer.errors.NotFoundError`.
        """

    @abstractmethod
    def open_range(
        self, uri: str, obj: RemoteObject, start: int, end: int | None
    ) -> AbstractContextManager[RangeStream]:
        """Open bytes ``[start, end)`` of ``obj`` (``end=None``: to the end).

        Return a context manager yielding a :class:`ByteStream` (a stream
        that is its own context manager, such as
        :class:`~storage_initializer.httpbody.HttpBody`, can be returned as
        is). It must serve ``obj.version`` or raise
        :class:`~storage_initializer.errors.ObjectChangedError`, and no read
        may block longer than ``context.stall_timeout``. The engine checks
        that exactly ``end - start`` bytes arrive. Never called for an empty
        range (``end <= start``): the engine writes empty objects itself.
        """

    def source_details(self) -> Mapping[str, str]:
        """What the last listed URI resolved to at the store, for the record (``--record``).

        For example ``{"revision": "main", "commit": "<sha>"}`` (Hugging Face, git) or
        ``{"manifest": "sha256:..."}`` (OCI). Known after :meth:`list`; the default is empty.
        """
        return getattr(self, "_source_details", {})

    def object_details(self, obj: RemoteObject) -> Mapping[str, str]:
        """What the record (``--record``) says about one listed object beyond its size, version and checksums.

        For example ``{"version_id": "..."}`` (S3 in a versioned bucket). Called after the
        object was read (a provider may learn it from a response); the default is empty.
        """
        return {}

    def http_range(self, uri: str, obj: RemoteObject, start: int, end: int | None) -> HttpRange | None:
        """Optionally describe the ``GET`` of bytes ``[start, end)`` for the engine to send itself.

        The engine then moves the bytes on its own event loop (one thread for
        every connection: much less CPU per request and per byte than a client
        library on worker threads) and falls back to :meth:`open_range` for an
        answer it does not handle (a redirect, a chunked or encoded body).
        Return ``None`` (the default) when the request cannot be described
        (an HTTP proxy, an SDK-only transport): :meth:`open_range` is used.
        Never called for an empty range.
        """
        return None

    def assemble(self, uri: str, staged: Sequence[StagedObject], out: IO[bytes]) -> None:
        """Make the model's files from the intermediate objects of the listing of ``uri``.

        Called once, on a thread of its own, after every object listed with
        ``intermediate=True`` is downloaded and verified; ``staged`` holds them
        in listing order. Write the resulting tree to ``out`` as an
        uncompressed tar stream (``tarfile.open(fileobj=out, mode="w|")``; it
        is a pipe, do not seek or close it): the engine extracts it as it
        arrives, with its archive rules (nothing outside DEST, no devices,
        links kept inside, the bomb cap), keeps only the paths the allow/ignore
        patterns match, publishes them only once this method has returned, and
        then removes the staged objects. A rerun that lists the same
        intermediate objects (same keys, sizes, versions and checksums) with
        the same patterns finds them already assembled and downloads nothing.
        Raise the typed errors (``ArchiveError`` for bad content,
        ``NotFoundError`` when the objects make no file). Only a provider that
        lists intermediate objects needs this; the default refuses.
        """
        raise StorageInitializerError(
            f"{type(self).__name__} listed intermediate objects but has no assemble() step",
            hint="a provider bug: report it to the provider's authors",
        )

    def download_to(self, uri: str, obj: RemoteObject, path: str) -> bool:
        """Optionally place the whole object at ``path`` by a faster route.

        Return ``False`` (the default) to let the engine stream it. A provider
        that returns ``True`` has written the complete object to ``path`` (a
        temporary name the engine then verifies and renames). The local
        provider uses this to hard-link instead of copying.
        """
        return False
