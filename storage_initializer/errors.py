"""The error hierarchy shared by the core and every provider.

Every error says whether repeating the same operation may succeed
(``retryable``) and which exit status the command ends with. Providers raise
these (or let the engine classify plain ``OSError``s as transient); the engine
retries only what is retryable and reports the rest at once.

Messages never carry secrets: an error redacts its message and hint when it
is made (and when they are set), with
:func:`storage_initializer.redact.redact`, so a provider puts the URI in a
message as it is, and an error raised through the Python API is as safe as
the command's output. ``str(error)`` redacts again, for a secret registered
after the error was made.
"""

from __future__ import annotations

import errno
import re
import socket
import ssl
from collections.abc import Iterator
from typing import ClassVar
from urllib.parse import urlsplit

from storage_initializer.redact import redact

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 143  # 128 + SIGTERM, what Kubernetes expects after a TERM


class StorageInitializerError(Exception):
    """Base class of every error this tool reports on purpose.

    ``hint`` says what the user should check or do; it is printed after the
    cause. ``retryable`` overrides the class default for one instance.
    ``message`` and ``hint`` are redacted when set: secrets never enter an error.
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
        super().__init__()
        self.message = message
        self.hint = hint
        self.retryable = self.retryable_default if retryable is None else retryable

    @property
    def message(self) -> str:
        """What failed (redacted)."""
        return getattr(self, "_message", "")

    @message.setter
    def message(self, value: str) -> None:
        self._message = redact(str(value))
        self.args = (self._message,)

    @property
    def hint(self) -> str | None:
        """What to check or do (redacted), or ``None``."""
        return getattr(self, "_hint", None)

    @hint.setter
    def hint(self, value: str | None) -> None:
        self._hint = None if value is None else redact(str(value))

    def __str__(self) -> str:
        text = f"{self.message} ({self.hint})" if self.hint else self.message
        return redact(text)  # again: a secret may have been registered since


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
        # httpx, azure-core and google-auth: their transport failures
        "ConnectError",
        "NetworkError",
        "TransportError",
        "ServiceRequestError",
        "ServiceResponseError",
    }
)
#: Exceptions (by class name) that say the URL itself is malformed: a usage error, not a network one.
_INVALID_URL_NAMES = frozenset(
    {"InvalidURL", "InvalidSchema", "MissingSchema", "LocationParseError", "UnsupportedProtocol", "LocationValueError"}
)


def classify(exc: BaseException) -> StorageInitializerError:
    """Map any exception raised while talking to a store onto the hierarchy.

    Our own errors pass through. An ``OSError`` naming a file is a local
    filesystem failure (sockets carry no file name): permanent, and said so.
    Network-level failures (other ``OSError``s and the usual HTTP-library
    exceptions, recognised by class name) go through :func:`network_error`,
    which tells a DNS failure, a refused connection, a TLS failure and a
    timeout apart. Anything else is a permanent error, described with its
    type so a provider bug is visible rather than retried forever.
    """
    if isinstance(exc, StorageInitializerError):
        return exc
    if isinstance(exc, OSError) and exc.filename is not None and not isinstance(exc, (TimeoutError, ConnectionError)):
        return StorageInitializerError(f"local file error on {exc.filename}: {exc.strerror or exc}")
    if isinstance(exc, OSError) and exc.errno in _LOCAL_ERRNOS:  # a full or read-only disk, never a socket
        return StorageInitializerError(f"local file error: {exc.strerror or exc}", hint="check the volume DEST is on")
    if is_network_failure(exc):
        return network_error(exc)
    return StorageInitializerError(f"unexpected {type(exc).__name__}: {exc}")


_LOCAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def is_network_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure to talk to a server (what :func:`network_error` maps).

    Socket-level ``OSError``s, and the usual HTTP-library exceptions recognised by
    class name (requests, urllib3, botocore, httpx, azure-core, google-auth), so
    the core imports none of these libraries.
    """
    if isinstance(exc, OSError) and exc.filename is not None and not isinstance(exc, (TimeoutError, ConnectionError)):
        return False
    if isinstance(exc, OSError) and exc.errno in _LOCAL_ERRNOS:
        return False
    names = {cls.__name__ for cls in type(exc).__mro__}
    return isinstance(exc, (OSError, EOFError, TimeoutError)) or bool(names & _TRANSIENT_EXCEPTION_NAMES)


#: What to check when a server's certificate is not trusted (providers add their own variable).
CA_HINT = (
    "the server's certificate is not signed by a CA this container trusts: give the CA bundle that "
    "signed it (REQUESTS_CA_BUNDLE or SSL_CERT_FILE; the provider's README names its own CA setting), "
    "or check that the host name matches the certificate"
)
DNS_HINT = "the host name does not exist: usually a typo in the URI or endpoint variable, or a missing namespace"
REFUSED_HINT = "nothing listens at that host and port: check the port and that the server is running"

_TLS_SETUP_REASONS = frozenset(
    {
        "WRONG_VERSION_NUMBER",  # https:// to a plain-HTTP port
        "UNSUPPORTED_PROTOCOL",
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "SSLV3_ALERT_HANDSHAKE_FAILURE",
        "NO_PROTOCOLS_AVAILABLE",
        "TLSV1_ALERT_INTERNAL_ERROR",
    }
)
_RESOLVE_RE = re.compile(r"Failed to resolve '([^']+)'")
_HOST_TEXT_RE = re.compile(r"(?i)could not resolve host:? '?([A-Za-z0-9.-]+)")
_NOT_FOUND_EAI = frozenset(
    code for code in (getattr(socket, n, None) for n in ("EAI_NONAME", "EAI_NODATA", "EAI_ADDRFAMILY")) if code
)


def network_error(
    exc: BaseException,
    target: str | None = None,
    *,
    ca_hint: str | None = None,
    hint: str | None = None,
) -> StorageInitializerError:
    """The typed error for a failure to talk to a server, saying which failure it was.

    The one mapping of connection failures: every provider passes its SDK's or
    transport's exception here (``storage_initializer.http.request_error`` is a
    thin alias for ``requests``). SDKs wrap the socket's own error several
    layers deep (requests -> urllib3 -> socket, botocore, azure-core, httpx):
    the chain of causes, contexts, ``reason``/``error``/``inner_exception``
    attributes and exception arguments is searched for the innermost telling
    one; a library that kept only text (``Could not resolve host``,
    ``Connection refused``, ``SSL certificate problem``) is read by its words.

    - DNS name not found (NXDOMAIN): permanent, a retry gives the same answer.
      In a pod that is almost always a typo or a missing namespace, and a name
      that appears a moment later is covered by the kubelet restarting the init
      container. A temporary resolver failure (``EAI_AGAIN``) is retried;
    - connection refused: permanent, nothing listens there (providers retry
      it for a few seconds first, :func:`storage_initializer.connect.retry_refused`,
      for a server that is restarting; the kubelet restarts a failed init
      container, which covers one still starting, and the rerun resumes);
    - TLS certificate verification: permanent, with ``ca_hint`` (or
      :data:`CA_HINT`) naming the CA settings to check;
    - a malformed URL: a :class:`UsageError`;
    - timeout, reset, broken connection: transient (retried).

    ``target`` (a URL or endpoint, redacted by the error) starts the message: ``cannot
    reach TARGET: connection refused``. ``hint`` (what to check for this store,
    e.g. its endpoint variable) is added to the hint.
    """
    chain = list(_causes(exc))
    prefix = f"cannot reach {target}: " if target else ""
    outer = f"{type(exc).__name__}: {_short(exc)}"
    text = " ".join(str(c) for c in chain).lower()

    def hinted(what: str | None) -> str | None:
        return f"{what}; {hint}" if what and hint else what or hint

    cert: BaseException | None = next((c for c in chain if isinstance(c, ssl.SSLCertVerificationError)), None)
    cert = cert or next((c for c in reversed(chain) if "CERTIFICATE_VERIFY_FAILED" in str(c)), None)
    if cert is not None:
        detail = getattr(cert, "verify_message", None) or _short(cert)
        return StorageInitializerError(f"{prefix}TLS verification failed ({detail})", hint=ca_hint or CA_HINT)
    if "ssl certificate problem" in text or "certificate verify failed" in text:  # curl's and git's words
        detail = next(_short(c) for c in chain if "certificate" in str(c).lower())
        return StorageInitializerError(f"{prefix}TLS verification failed ({detail})", hint=ca_hint or CA_HINT)
    for cause in chain:
        if isinstance(cause, socket.gaierror):
            host = _resolved_host(chain)
            name = f" {host}" if host else ""
            if cause.errno in _NOT_FOUND_EAI:
                return StorageInitializerError(
                    f"{prefix}DNS name{name} not found ({cause.strerror})", hint=hinted(DNS_HINT)
                )
            return TransientError(
                f"{prefix}DNS lookup{' of' + name if host else ''} failed ({cause.strerror})", hint=hint
            )
    if is_connection_refused(exc):
        return StorageInitializerError(f"{prefix}connection refused", hint=hinted(REFUSED_HINT))
    names = {cls.__name__ for cause in chain for cls in type(cause).__mro__}
    if names & _INVALID_URL_NAMES:
        return UsageError(f"{prefix}invalid URL ({outer})", hint=hint)
    for cause in chain:
        # Only a handshake that can never succeed is permanent: a TLS record cut mid-body
        # (SSLEOFError, bad record MAC) is a broken connection like any other.
        if isinstance(cause, ssl.SSLError) and getattr(cause, "reason", None) in _TLS_SETUP_REASONS:
            return StorageInitializerError(
                f"{prefix}TLS handshake failed ({_short(cause)})",
                hint="check http:// against https:// and the port; a proxy may intercept TLS",
            )
    # Libraries that kept only the message (a git or curl subprocess, some SDK wrappers).
    if "could not resolve host" in text or "name or service not known" in text:
        host = next((m.group(1) for c in chain if (m := _HOST_TEXT_RE.search(str(c)))), None)
        return StorageInitializerError(f"{prefix}DNS name{' ' + host if host else ''} not found", hint=hinted(DNS_HINT))
    if "refused" in text:
        return StorageInitializerError(f"{prefix}connection refused ({outer})", hint=hinted(REFUSED_HINT))
    return TransientError(f"{prefix}{_network_cause(names, text)} ({outer})", hint=hint)


def is_connection_refused(exc: BaseException) -> bool:
    """Whether ``exc`` is, or wraps, a refused TCP connection."""
    return any(
        isinstance(cause, ConnectionRefusedError) or getattr(cause, "errno", None) == errno.ECONNREFUSED
        for cause in _causes(exc)
    )


def _resolved_host(chain: list[BaseException]) -> str | None:
    """The host name a failed lookup was for: urllib3 says it, httpx keeps the request."""
    host = next((m.group(1) for c in chain if (m := _RESOLVE_RE.search(str(c)))), None)
    for cause in chain:
        if host:
            break
        try:
            url = getattr(getattr(cause, "request", None), "url", None)  # httpx raises when unset
        except Exception:
            continue
        host = getattr(url, "host", None) or (urlsplit(str(url)).hostname if url is not None else None)
    return str(host) if host else None


def _short(exc: BaseException) -> str:
    return str(exc).split("\n", 1)[0][:200]


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps, outermost first (each once, bounded)."""
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < 32:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        kwargs = getattr(current, "kwargs", None)  # botocore keeps the cause in kwargs["error"]
        wrapped = [
            current.__cause__,
            current.__context__,
            getattr(current, "reason", None),
            getattr(current, "inner_exception", None),
            getattr(current, "error", None),
            kwargs.get("error") if isinstance(kwargs, dict) else None,
            *current.args,
        ]
        todo.extend(w for w in wrapped if isinstance(w, BaseException))


def _network_cause(names: set[str], text: str) -> str:
    """A plain-words cause for a network exception."""
    if "TimeoutError" in names or "timeout" in " ".join(names).lower() or "timed out" in text:
        return "timed out waiting for the server (no data within the stall or connect timeout)"
    if "ConnectionResetError" in names or "reset" in text:
        return "connection reset by the server"
    if names & {"IncompleteRead", "ProtocolError", "ChunkedEncodingError", "RemoteDisconnected"}:
        return "connection broken before the answer was complete"
    return "network error"
