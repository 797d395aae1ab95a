"""``hdfs://`` and ``webhdfs://``: HDFS through its WebHDFS REST API, configured the way KServe does it.

URI grammar (KServe's): everything after the scheme is an HDFS *path*; the namenode comes from the
configuration. ``hdfs:///models/iris`` and ``hdfs://models/iris`` both name ``/models/iris``; with
``HDFS_ROOTPATH`` set, ``hdfs://iris`` is ``iris`` below that root (a relative root is below the
user's home directory) while ``hdfs:///abs`` stays absolute. Beyond KServe: when no namenode is
configured, the URI's authority is the namenode's WebHDFS address, ``webhdfs://HOST[:PORT]/path``
(plain HTTP, port 9870 by default; the same for ``hdfs://``, whose port must then be the HTTP one).

Configuration, one value per file in ``$HDFS_SECRET_DIR`` (default ``/var/secrets/kserve-hdfscreds``)
or, replacing that directory as in KServe, a storage-spec JSON (``STORAGE_CONFIG`` /
``STORAGE_OVERRIDE_CONFIG``) of ``type`` ``hdfs`` or ``webhdfs`` whose file secrets are base64:
``HDFS_NAMENODE`` (``http(s)://host:port``, several separated by ``;`` for an HA pair),
``HDFS_ROOTPATH``, ``USER_PROXY`` (sent as ``doas``), ``TLS_CERT`` + ``TLS_KEY`` (client
certificate), ``TLS_CA``, ``TLS_SKIP_VERIFY``, ``HEADERS`` (a JSON object of extra request headers),
``N_THREADS`` (the most byte ranges read from the cluster at once), ``KERBEROS_PRINCIPAL`` +
``KERBEROS_KEYTAB`` (the ``kerberos`` extra).

Transfer: the whole tree below a directory (KServe downloads only its top-level entries), each file
read by the engine as parallel ``OPEN`` ranges (``offset``/``length``, redirected to a datanode).
Every range is checked against the file's ``fileId``/``modificationTime``/``length`` afterwards, so
a file replaced mid-download is reported, never spliced. An empty directory or a missing path is an
error (KServe reports success on an empty directory). The configuration is logged without secrets.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import json
import logging
import os
import posixpath
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from storage_initializer import http as kit
from storage_initializer.config import parse_bool, parse_number
from storage_initializer.errors import (
    AccessDeniedError,
    ConfigError,
    NotFoundError,
    ObjectChangedError,
    ProviderUnavailableError,
    StorageInitializerError,
    TransientError,
    UsageError,
)
from storage_initializer.provider import ByteStream, Provider, ProviderContext, RemoteObject, UriFormat
from storage_initializer.redact import redact, register_secret
from storage_initializer.storage_spec import spec_of_type

log = logging.getLogger("storage_initializer.hdfs")

DEFAULT_SECRET_DIR = "/var/secrets/kserve-hdfscreds"
DEFAULT_HTTP_PORT = 9870  # dfs.namenode.http-address
CONFIG_KEYS = (
    "HDFS_NAMENODE", "HDFS_ROOTPATH", "USER_PROXY", "TLS_CERT", "TLS_KEY", "TLS_CA", "TLS_SKIP_VERIFY",
    "HEADERS", "N_THREADS", "KERBEROS_KEYTAB", "KERBEROS_PRINCIPAL",
)  # fmt: skip
#: Keys whose value is a file: its path in the secret directory, base64 content in a storage spec.
FILE_KEYS = frozenset({"KERBEROS_KEYTAB", "TLS_CERT", "TLS_KEY", "TLS_CA"})
_PREFIXES = ("hdfs://", "webhdfs://")
_ACCESS_EXCEPTIONS = frozenset({"AccessControlException", "AuthorizationException", "SecurityException"})
_TRANSIENT_EXCEPTIONS = frozenset({"StandbyException", "RetriableException", "SafeModeException"})
_HTML_TITLE = re.compile(r"<title>\s*(?:Error\s+\d+\s+)?(.*?)\s*</title>", re.IGNORECASE | re.DOTALL)
_DELEGATION = re.compile(r"(?i)([?&]delegation=)[^&\s'\"]+")
_FORM = "hdfs:///PATH or webhdfs:///PATH with HDFS_NAMENODE configured, or webhdfs://NAMENODE[:PORT]/PATH"


@dataclass(frozen=True)
class HdfsConfig:
    """KServe's HDFS settings, parsed and checked (see the module docstring)."""

    namenodes: tuple[str, ...] = ()
    root: str | None = None
    user_proxy: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    tls_skip_verify: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    n_threads: int | None = None
    kerberos_principal: str | None = None
    kerberos_keytab: str | None = None
    source: str = "no configuration"

    def describe(self) -> str:
        """A one-line summary for the log: header names only, never their values."""
        tls = "no verification" if self.tls_skip_verify else (f"CA {self.tls_ca}" if self.tls_ca else "default CAs")
        parts = [
            f"namenode {';'.join(self.namenodes) or '(from the URI)'}",
            f"root {self.root or '/'}",
            f"proxy user {self.user_proxy or '-'}",
            f"TLS {tls}" + (", client certificate" if self.tls_cert else ""),
            f"headers {sorted(self.headers) or '-'}",
            f"N_THREADS {self.n_threads or '-'}",
            f"Kerberos {self.kerberos_principal or 'off'}",
        ]
        return f"hdfs configuration from {self.source}: " + ", ".join(parts)


def load_config(env: Mapping[str, str], scratch: Callable[[], str]) -> HdfsConfig:
    """Read the configuration as KServe does: a ``hdfs``/``webhdfs`` storage spec replaces the directory.

    ``scratch`` returns a private directory where a storage spec's base64 file secrets are written.
    """
    spec = spec_of_type(env, "hdfs", "webhdfs")
    if spec:
        return parse_config(_values_from_spec(spec, scratch), "STORAGE_CONFIG")
    directory = env.get("HDFS_SECRET_DIR") or DEFAULT_SECRET_DIR
    return parse_config(_values_from_dir(directory), directory)


def _values_from_dir(directory: str) -> dict[str, str]:
    values: dict[str, str] = {}
    if not os.path.isdir(directory):
        return values
    for key in CONFIG_KEYS:
        path = os.path.join(directory, key)
        if not os.path.isfile(path):
            continue
        if key in FILE_KEYS:
            values[key] = path
            continue
        try:
            with open(path, encoding="utf-8") as handle:
                values[key] = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
    return values


def _values_from_spec(spec: Mapping[str, Any], scratch: Callable[[], str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for key in CONFIG_KEYS:
        value = spec.get(key)
        if value is None or value == "":
            continue
        if key not in FILE_KEYS:
            values[key] = str(value)
            continue
        try:
            content = base64.b64decode(str(value))
        except (binascii.Error, ValueError):
            raise ConfigError(
                f"{key} in STORAGE_CONFIG is not base64", hint="file secrets are base64-encoded"
            ) from None
        path = os.path.join(scratch(), key)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        values[key] = path
    return values


def parse_config(values: Mapping[str, str], source: str) -> HdfsConfig:
    """Check every value, naming the key and where it came from on error."""

    def get(key: str) -> str | None:
        value = values.get(key)
        return value.strip() if value is not None and value.strip() else None

    namenodes = tuple(
        _namenode_url(item.strip(), source) for item in (get("HDFS_NAMENODE") or "").split(";") if item.strip()
    )
    # KServe compares with "true": "yes" there means false, so only true/false are accepted.
    skip = parse_bool(get("TLS_SKIP_VERIFY") or "false", f"TLS_SKIP_VERIFY in {source}", true_false_only=True)
    headers: dict[str, str] = {}
    if get("HEADERS"):
        try:
            parsed = json.loads(values["HEADERS"])
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise ConfigError(f"HEADERS in {source} is not a JSON object", hint='use {"Header-Name": "value"}')
        headers = {str(k): str(v) for k, v in parsed.items()}
        for value in headers.values():
            register_secret(value)
    raw_threads = get("N_THREADS")
    n_threads = None
    if raw_threads is not None:
        n_threads = int(parse_number(raw_threads, f"N_THREADS in {source}", minimum=1, integer=True))
    if get("TLS_KEY") and not get("TLS_CERT"):
        raise ConfigError(f"TLS_KEY in {source} has no TLS_CERT", hint="a client key needs its certificate")
    return HdfsConfig(
        namenodes=namenodes,
        root=get("HDFS_ROOTPATH"),
        user_proxy=get("USER_PROXY"),
        tls_cert=get("TLS_CERT"),
        tls_key=get("TLS_KEY"),
        tls_ca=get("TLS_CA"),
        tls_skip_verify=skip,
        headers=headers,
        n_threads=n_threads,
        kerberos_principal=get("KERBEROS_PRINCIPAL"),
        kerberos_keytab=get("KERBEROS_KEYTAB"),
        source=source,
    )


def _namenode_url(value: str, source: str) -> str:
    url = value if "://" in value else f"http://{value}"
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"HDFS_NAMENODE in {source} is not a WebHDFS address: {value!r}",
            hint="use http(s)://HOST:PORT (the namenode's HTTP port, 9870 by default); ';' separates an HA pair",
        )
    return url.rstrip("/")


def _scrub(text: str) -> str:
    """Mask WebHDFS delegation tokens (datanode redirect URLs carry them), then the usual secrets."""
    return redact(_DELEGATION.sub(r"\1***", text))


class _Resolved(str):
    """An absolute HDFS path already resolved: sent as is, never expanded again by ``Client.resolve``.

    ``hdfs.Client.resolve`` (run on every request's path) expands ``#LATEST`` markers: right for the
    URI the user wrote, wrong for a listed file that is literally named ``#LATEST``.
    """


def _literal(base: type[Any]) -> type[Any]:
    """``base`` (``hdfs.Client`` or its Kerberos subclass) sending :class:`_Resolved` paths unchanged."""

    class Literal(base):  # type: ignore[misc]
        def resolve(self, hdfs_path: str) -> str:
            return str(hdfs_path) if isinstance(hdfs_path, _Resolved) else str(super().resolve(hdfs_path))

    Literal.__name__ = Literal.__qualname__ = f"Literal{base.__name__}"
    return Literal


def _version(status: Mapping[str, Any]) -> str:
    """What changes whenever a file's content may have: HDFS gives every (re)created file a new fileId."""
    return f"{status.get('fileId')}:{status.get('modificationTime')}:{status.get('length')}"


def _remote_exception(response: Any) -> tuple[str | None, str]:
    """(exception name, message) from a WebHDFS error: RemoteException JSON, else a Jetty HTML page."""
    try:
        payload = response.json()["RemoteException"]
        return str(payload.get("exception") or "") or None, str(payload.get("message") or "")
    except (ValueError, KeyError, TypeError):
        pass
    text = response.text if isinstance(getattr(response, "text", None), str) else ""
    match = _HTML_TITLE.search(text)
    return None, (match.group(1) if match else text.strip()[:200]) or (response.reason or "")


class _Quiet(logging.Filter):
    """Demote the ``hdfs`` package's records to DEBUG (shown only when this tool logs at DEBUG).

    It logs refusals, even a whole HTML 401 page, at ERROR, while this provider reports every
    failure once, classified and redacted.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg, record.args = _scrub(record.getMessage()), None
        return log.isEnabledFor(logging.DEBUG)


def _quiet_hdfs_logging() -> None:
    for name in ("hdfs.client", "hdfs.util", "hdfs.ext.kerberos"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Quiet) for f in logger.filters):
            logger.addFilter(_Quiet())


class _RangeStream:
    """A datanode response body; ``readinto`` goes straight to the socket (no intermediate copy).

    On a clean exit it runs ``finish`` (the version check after the bytes were read); the
    connection slot is released whatever happens.
    """

    def __init__(self, response: Any, finish: Callable[[], None], release: Callable[[], None]) -> None:
        self._response = response
        self._raw = response.raw
        fp = getattr(self._raw, "_fp", None)
        encoded = response.headers.get("Content-Encoding", "identity") not in ("", "identity")
        self._fast = fp if fp is not None and hasattr(fp, "readinto") and not encoded else None
        self._finish, self._release = finish, release

    def readinto(self, buffer: memoryview) -> int:
        source = self._fast if self._fast is not None else self._raw
        return int(source.readinto(buffer) or 0)

    def read(self, n: int = -1) -> bytes:
        return bytes(self._raw.read(None if n is None or n < 0 else n))

    def close(self) -> None:
        release, self._release = self._release, lambda: None
        try:
            self._response.close()
        finally:
            release()

    def __enter__(self) -> _RangeStream:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close()
        if exc_type is None:
            self._finish()


class HdfsProvider(Provider):
    """HDFS over WebHDFS (the ``hdfs`` package), with KServe's ``HDFS_SECRET_DIR`` configuration."""

    uri_formats = (UriFormat(prefix="hdfs://"), UriFormat(prefix="webhdfs://"))
    requires = ("hdfs", "requests")
    description = "HDFS over WebHDFS (KServe's HDFS_SECRET_DIR / STORAGE_CONFIG); parallel ranged reads"

    def __init__(self, context: ProviderContext) -> None:
        super().__init__(context)
        self._lock = threading.Lock()
        self._scratch: str | None = None
        self._config: HdfsConfig | None = None
        self._clients: dict[tuple[str, ...], Any] = {}
        self._slots: threading.BoundedSemaphore | None = None

    # -- configuration -----------------------------------------------------------
    @property
    def config(self) -> HdfsConfig:
        with self._lock:
            if self._config is None:
                self._config = load_config(self.env, self._scratch_dir)
                if self._config.n_threads:
                    self._slots = threading.BoundedSemaphore(self._config.n_threads)
            return self._config

    def _scratch_dir(self) -> str:
        if self._scratch is None:
            self._scratch = tempfile.mkdtemp(prefix="storage-initializer-hdfs-")
        return self._scratch

    def locate(self, uri: str) -> tuple[tuple[str, ...], str]:
        """(namenode URLs, HDFS path) for a URI; the path is relative when it is below HDFS_ROOTPATH."""
        prefix = next((p for p in _PREFIXES if uri.startswith(p)), None)
        if prefix is None:
            raise UsageError(f"{redact(uri)} is not an hdfs:// or webhdfs:// URI", hint=f"expected {_FORM}")
        rest = uri[len(prefix) :]
        config = self.config
        if config.namenodes:  # KServe: everything after the scheme is the path
            if rest.startswith("/") or not config.root:
                return config.namenodes, "/" + rest.lstrip("/")
            return config.namenodes, rest
        netloc, _, path = rest.partition("/")
        if not netloc:
            raise ConfigError(
                f"no namenode for {redact(uri)}: HDFS_NAMENODE is not configured in {config.source}",
                hint=f"mount the HDFS secret (or set STORAGE_CONFIG), or name the namenode: {_FORM}",
            )
        parts = urlsplit(f"//{netloc}")
        try:
            port = parts.port
        except ValueError:
            raise UsageError(f"{redact(uri)} has an invalid namenode port", hint=f"expected {_FORM}") from None
        if parts.username is not None or not parts.hostname:
            raise UsageError(f"{redact(uri)} names no usable namenode", hint=f"expected {_FORM}")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return (f"http://{host}:{port or DEFAULT_HTTP_PORT}",), "/" + path

    def validate(self, uri: str) -> None:
        self.locate(uri)

    # -- the client ----------------------------------------------------------------
    def client(self, namenodes: tuple[str, ...]) -> Any:
        """One ``hdfs`` client per namenode set, sharing a pooled, configured session."""
        config = self.config
        with self._lock:
            client = self._clients.get(namenodes)
            if client is None:
                log.info(config.describe())
                client = self._new_client(namenodes, config)
                self._clients[namenodes] = client
            return client

    def _new_client(self, namenodes: tuple[str, ...], config: HdfsConfig) -> Any:
        import hdfs  # type: ignore[import-untyped]

        _quiet_hdfs_logging()
        session = self._session(config)
        url = ";".join(namenodes)
        timeout = (self.context.connect_timeout, self.context.stall_timeout)
        if not config.kerberos_principal:
            if config.kerberos_keytab:
                log.warning("KERBEROS_KEYTAB is set without KERBEROS_PRINCIPAL: Kerberos stays off (as in KServe)")
            return _literal(hdfs.Client)(
                url, root=config.root, proxy=config.user_proxy, timeout=timeout, session=session
            )
        try:
            from hdfs.ext.kerberos import KerberosClient  # type: ignore[import-untyped]
            from krbcontext.context import krbContext  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ProviderUnavailableError(
                f"KERBEROS_PRINCIPAL is set but Kerberos support is not installed ({exc})",
                hint="pip install 'storage-initializer-hdfs[kerberos]' (and the system's krb5 libraries)",
            ) from None
        try:  # a keytab login into the default credential cache, as KServe does
            krbContext(
                using_keytab=True, principal=config.kerberos_principal, keytab_file=config.kerberos_keytab
            ).init_with_keytab()
        except Exception as exc:
            raise AccessDeniedError(
                f"Kerberos login as {config.kerberos_principal} failed: {type(exc).__name__}: {exc}",
                hint="check KERBEROS_PRINCIPAL, KERBEROS_KEYTAB and the krb5 configuration",
            ) from None
        return _literal(KerberosClient)(
            url, root=config.root, proxy=config.user_proxy, timeout=timeout, session=session
        )

    def _session(self, config: HdfsConfig) -> Any:
        env = self.env
        if config.tls_skip_verify:
            import urllib3

            log.warning("TLS_SKIP_VERIFY is true: the namenode's and datanodes' certificates are not checked")
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # said once above, not per request
        # TLS_CA beats REQUESTS_CA_BUNDLE / SSL_CERT_FILE (the kit's session keeps its own verify:
        # a plain requests.Session lets REQUESTS_CA_BUNDLE override it); proxies from env per URL.
        verify = False if config.tls_skip_verify else kit.ca_bundle(env, config.tls_ca)
        size = max(4, self.context.concurrency) + 2  # workers, plus the listing beside them
        session = kit.new_session(env, pool_size=size, verify=verify)
        if config.tls_cert:
            session.cert = (config.tls_cert, config.tls_key) if config.tls_key else config.tls_cert
        # The engine reads raw bytes: a compressing gateway (Knox, nginx) must not gzip them.
        session.headers["Accept-Encoding"] = "identity"
        session.headers.update(config.headers)
        return session

    # -- requests and errors ---------------------------------------------------------
    def _call(self, uri: str, action: Callable[[], Any], on_refusal: Callable[[], None] | None = None) -> Any:
        """Run one client call, turning every failure into the error hierarchy.

        ``on_refusal`` runs before a 403/404 answer is reported (to tell a changed file apart).
        """
        import requests
        from hdfs.util import HdfsError  # type: ignore[import-untyped]

        try:
            response = action()
        except HdfsError as exc:
            raise self._from_hdfs_error(exc, uri) from None
        except requests.exceptions.SSLError as exc:
            raise StorageInitializerError(
                f"TLS with the cluster failed for {redact(uri)}: {_scrub(str(exc))}",
                hint="check TLS_CA (or TLS_SKIP_VERIFY), and TLS_CERT/TLS_KEY if a client certificate is required",
            ) from None
        except requests.exceptions.RequestException as exc:
            raise TransientError(f"cannot reach the cluster for {redact(uri)}: {_scrub(str(exc))}") from None
        if response is not None and hasattr(response, "status_code"):
            for url in (response.url, *(r.headers.get("Location", "") for r in response.history)):
                for key, value in parse_qsl(urlsplit(url).query):
                    if key == "delegation":
                        register_secret(value)
            if not response.ok:
                error = self._from_response(response, uri)
                response.close()
                if on_refusal is not None and not isinstance(error, AccessDeniedError):
                    on_refusal()
                raise error
        return response

    def _from_response(self, response: Any, uri: str) -> StorageInitializerError:
        status = response.status_code
        exception, message = _remote_exception(response)
        shown = redact(uri)
        detail = _scrub(f"HTTP {status}" + (f" {exception}" if exception else "") + (f": {message}" if message else ""))
        if status == 404 or exception == "FileNotFoundException":
            return NotFoundError(f"{shown} does not exist ({detail})", hint="check the path and HDFS_ROOTPATH")
        if status == 401:
            return AccessDeniedError(
                f"the cluster requires authentication for {shown} ({detail})",
                hint="a secured cluster needs KERBEROS_PRINCIPAL and KERBEROS_KEYTAB, a gateway its HEADERS",
            )
        if exception in _ACCESS_EXCEPTIONS or (status == 403 and exception is None):
            return AccessDeniedError(
                f"access to {shown} was refused ({detail})",
                hint="check the HDFS permissions, USER_PROXY and the cluster's hadoop.proxyuser rules",
            )
        if exception in _TRANSIENT_EXCEPTIONS or status == 403 or kit.is_transient_status(status):
            # WebHDFS answers every other IOException (missing blocks, busy datanodes) with 403.
            return kit.transient_error(f"{shown}: {detail}", response.headers)
        if exception == "IllegalArgumentException" and '"doas"' in message:
            return ConfigError(f"the cluster refused USER_PROXY for {shown} ({detail})", hint="check USER_PROXY")
        if exception == "InvalidPathException":
            return UsageError(f"{shown} is not a valid HDFS path ({detail})", hint=f"expected {_FORM}")
        return StorageInitializerError(f"{shown}: {detail}")

    def _from_hdfs_error(self, exc: Any, uri: str) -> StorageInitializerError:
        """The client's own errors: failover exhausted (StandbyException...) or a 401."""
        shown = redact(uri)
        message = _scrub(str(getattr(exc, "message", exc)))
        exception = getattr(exc, "exception", None)
        if message.startswith("Authentication failure"):
            return AccessDeniedError(
                f"the cluster requires authentication for {shown} (HTTP 401)",
                hint="a secured cluster needs KERBEROS_PRINCIPAL and KERBEROS_KEYTAB, a gateway its HEADERS",
            )
        if exception == "FileNotFoundException":
            return NotFoundError(f"{shown} does not exist ({message})", hint="check the path and HDFS_ROOTPATH")
        if exception in _ACCESS_EXCEPTIONS:
            return AccessDeniedError(f"access to {shown} was refused ({exception}: {message})")
        if exception in _TRANSIENT_EXCEPTIONS:
            return TransientError(f"{shown}: {exception}: {message}")
        return StorageInitializerError(f"{shown}: {exception or 'HdfsError'}: {message}")

    def _status(self, client: Any, path: str, uri: str) -> dict[str, Any] | None:
        """GETFILESTATUS, or None when the path does not exist."""
        try:
            response = self._call(uri, lambda: client._get_file_status(path, strict=False))
        except NotFoundError:
            return None
        status: dict[str, Any] = response.json()["FileStatus"]
        return status

    # -- the provider contract -------------------------------------------------------
    def list(self, uri: str) -> Iterator[RemoteObject]:
        namenodes, path = self.locate(uri)
        client = self.client(namenodes)
        full = _Resolved(self._call(uri, lambda: client.resolve(path)))
        status = self._status(client, full, uri)
        if status is None:
            raise NotFoundError(
                f"{redact(uri)} does not exist (HDFS path {full})", hint="check the path and HDFS_ROOTPATH"
            )
        if status.get("type") == "FILE":
            yield RemoteObject(posixpath.basename(full), int(status["length"]), _version(status), extra=full)
            return
        if status.get("type") != "DIRECTORY":
            raise UsageError(f"{redact(uri)} is a {status.get('type')}, not a file or directory")
        stack = [("", full)]
        while stack:
            prefix, directory = stack.pop()
            listing = self._call(uri, functools.partial(client._list_status, directory, strict=False))
            entries = sorted(listing.json()["FileStatuses"]["FileStatus"], key=lambda s: s["pathSuffix"])
            subdirs = []
            for entry in entries:
                name, kind = entry["pathSuffix"], entry.get("type")
                child = _Resolved(posixpath.join(directory, name))
                if kind == "FILE":
                    yield RemoteObject(prefix + name, int(entry["length"]), _version(entry), extra=child)
                elif kind == "DIRECTORY":
                    subdirs.append((f"{prefix}{name}/", child))
                else:
                    log.warning("skipping %s: a %s is neither a file nor a directory", child, kind)
            stack.extend(reversed(subdirs))

    def open_range(
        self, uri: str, obj: RemoteObject, start: int, end: int | None
    ) -> AbstractContextManager[ByteStream]:
        namenodes, _ = self.locate(uri)
        client = self.client(namenodes)
        path = _Resolved(obj.extra)
        params: dict[str, int] = {"offset": start}
        if end is not None:
            params["length"] = end - start
        slots = self._slots
        if slots is not None:
            slots.acquire()
        try:
            response = self._call(
                uri,
                lambda: client._open(path, strict=False, **params),
                on_refusal=lambda: self._check_unchanged(client, uri, obj),  # a shrunk or replaced file?
            )
            expected = (obj.size - start if end is None else end - start) if obj.size is not None else None
            announced = response.headers.get("Content-Length")
            if expected is not None and announced is not None and announced.isdigit() and int(announced) != expected:
                response.close()
                self._check_unchanged(client, uri, obj)
                raise TransientError(f"{redact(uri)}: the datanode announced {announced} bytes for {expected}")
        except BaseException:
            if slots is not None:
                slots.release()
            raise

        def release() -> None:
            if slots is not None:
                slots.release()

        return _RangeStream(response, lambda: self._check_unchanged(client, uri, obj), release)

    def _check_unchanged(self, client: Any, uri: str, obj: RemoteObject) -> None:
        status = self._status(client, _Resolved(obj.extra), uri)
        if status is None:
            raise ObjectChangedError(f"{redact(uri)}: {obj.key} was deleted during the download")
        if _version(status) != obj.version:
            raise ObjectChangedError(
                f"{redact(uri)}: {obj.key} changed during the download "
                f"(fileId:modificationTime:length was {obj.version}, now {_version(status)})",
                hint="run again to download the new version",
            )

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):
                client._session.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
