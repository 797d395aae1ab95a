"""The error hierarchy shared by the core and every provider.

Every error says whether repeating the same operation may succeed
(``retryable``) and which exit status the command ends with. Providers raise
these (or let the engine classify plain ``OSError``s as transient); the engine
retries only what is retryable and reports the rest at once.

Messages must never contain secrets: pass URIs through
:func:`storage_initializer.redact.redact` before putting them in a message
(the logging and termination-log paths redact again, as a second line of
defence).
"""

from __future__ import annotations

from typing import ClassVar

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 143  # 128 + SIGTERM, what Kubernetes expects after a TERM


class StorageInitializerError(Exception):
    """Base class of every error this tool reports on purpose.

    ``hint`` says what the user should check or do; it is printed after the
    cause. ``retryable`` overrides the class default for one instance.
    """

    retryable_default: ClassVar[bool] = False
    exit_code: ClassVar[int] = EXIT_FAILURE

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.retryable = self.retryable_default if retryable is None else retryable

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class UsageError(StorageInitializerError):
    """The command line or a URI is malformed: fixing the input is the only cure."""

    exit_code = EXIT_USAGE


class ConfigError(StorageInitializerError):
    """An environment variable or configuration file has an invalid value."""

    exit_code = EXIT_USAGE


class ProviderError(StorageInitializerError):
    """No provider, or no single provider, can serve a URI."""

    exit_code = EXIT_USAGE


class ProviderUnavailableError(StorageInitializerError):
    """A provider is installed but cannot load (usually a missing dependency)."""


class NotFoundError(StorageInitializerError):
    """The bucket, container, repository, object or path does not exist."""


class AccessDeniedError(StorageInitializerError):
    """The credentials were refused or lack permission."""


class TransientError(StorageInitializerError):
    """A failure that may pass: connection reset, timeout, stall, 5xx, 429, short body.

    ``retry_after`` is how long the server asked to wait before asking again
    (an HTTP ``Retry-After``, in seconds): the engine waits at least that long.
    """

    retryable_default = True

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, hint=hint, retryable=retryable)
        self.retry_after = retry_after


class ObjectChangedError(StorageInitializerError):
    """The object changed between listing and reading (its version no longer matches).

    Parts already written belong to the old version, so the file restarts from
    scratch rather than being spliced from two versions.
    """


class IntegrityError(StorageInitializerError):
    """Downloaded bytes do not match the size or checksum the store announced."""


class UnsafePathError(StorageInitializerError):
    """A key or archive member would be written outside DEST or through a symlink."""


class ArchiveError(StorageInitializerError):
    """An archive is malformed, hostile, or expands beyond the configured cap."""


class DestinationError(StorageInitializerError):
    """DEST cannot be written: not a directory, not writable, or the disk is full."""


class CancelledError(StorageInitializerError):
    """The run was stopped (SIGTERM/SIGINT); the work done so far is kept for a resume."""

    exit_code = EXIT_INTERRUPTED


_TRANSIENT_EXCEPTION_NAMES = frozenset(
    {
        # http.client / urllib3 / requests / botocore names, matched by class name
        # so the core does not import any of these libraries.
        "IncompleteRead",
        "RemoteDisconnected",
        "ProtocolError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "NewConnectionError",
        "MaxRetryError",
        "ChunkedEncodingError",
        "ContentDecodingError",
        "ConnectionError",
        "Timeout",
        "ReadTimeout",
        "ConnectTimeout",
        "ResponseStreamingError",
        "EndpointConnectionError",
        "IncompleteReadError",
    }
)


def classify(exc: BaseException) -> StorageInitializerError:
    """Map any exception raised while talking to a store onto the hierarchy.

    Our own errors pass through. An ``OSError`` naming a file is a local
    filesystem failure (sockets carry no file name): permanent, and said so.
    Network-level failures (other ``OSError``s and the usual HTTP-library
    exceptions, recognised by class name) are transient. Anything else is a
    permanent error, described with its type so a provider bug is visible
    rather than retried forever.
    """
    if isinstance(exc, StorageInitializerError):
        return exc
    if isinstance(exc, OSError) and exc.filename is not None and not isinstance(exc, (TimeoutError, ConnectionError)):
        return StorageInitializerError(f"local file error on {exc.filename}: {exc.strerror or exc}")
    names = {cls.__name__ for cls in type(exc).__mro__}
    if isinstance(exc, (OSError, EOFError, TimeoutError)) or names & _TRANSIENT_EXCEPTION_NAMES:
        return TransientError(f"{_network_cause(exc, names)} ({type(exc).__name__}: {exc})")
    return StorageInitializerError(f"unexpected {type(exc).__name__}: {exc}")


def _network_cause(exc: BaseException, names: set[str]) -> str:
    """A plain-words cause for a network exception."""
    text = str(exc).lower()
    if isinstance(exc, TimeoutError) or "timeout" in " ".join(names).lower() or "timed out" in text:
        return "timed out waiting for the server (no data within the stall or connect timeout)"
    if isinstance(exc, ConnectionRefusedError) or "refused" in text:
        return "connection refused"
    if isinstance(exc, ConnectionResetError) or "reset" in text:
        return "connection reset by the server"
    if names & {"IncompleteRead", "ProtocolError", "ChunkedEncodingError", "RemoteDisconnected"}:
        return "connection broken before the answer was complete"
    return "network error"
