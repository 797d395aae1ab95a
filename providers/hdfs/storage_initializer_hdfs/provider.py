"""The provider: namenodes from the URI or the settings, listing, ranged reads, typed errors."""

from __future__ import annotations

import contextlib
import functools
import logging
import posixpath
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from storage_initializer import http as kit
from storage_initializer.errors import (
    AccessDeniedError,
    ConfigError,
    NotFoundError,
    ObjectChangedError,
    ProviderUnavailableError,
    StorageInitializerError,
    TransientError,
    UsageError,
    network_error,
)
from storage_initializer.provider import ByteStream, Provider, ProviderContext, RemoteObject, UriFormat
from storage_initializer.redact import register_secret

from .client import _literal, _quiet_hdfs_logging, _RangeStream, _remote_exception, _Resolved, _scrub, _version
from .config import DEFAULT_HTTP_PORT, HdfsConfig, load_config

log = logging.getLogger("storage_initializer.hdfs")
_TLS_HINT = (
    "set TLS_CA to the CA that signed the namenode's and datanodes' certificates (or TLS_SKIP_VERIFY), "
    "and TLS_CERT/TLS_KEY if a client certificate is required"
)

_PREFIXES = ("hdfs://", "webhdfs://")
_ACCESS_EXCEPTIONS = frozenset({"AccessControlException", "AuthorizationException", "SecurityException"})
_TRANSIENT_EXCEPTIONS = frozenset({"StandbyException", "RetriableException", "SafeModeException"})
_FORM = "hdfs:///PATH or webhdfs:///PATH with HDFS_NAMENODE configured, or webhdfs://NAMENODE[:PORT]/PATH"


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
            raise UsageError(f"{uri} is not an hdfs:// or webhdfs:// URI", hint=f"expected {_FORM}")
        rest = uri[len(prefix) :]
        config = self.config
        if config.namenodes:  # KServe: everything after the scheme is the path
            if rest.startswith("/") or not config.root:
                return config.namenodes, "/" + rest.lstrip("/")
            return config.namenodes, rest
        netloc, _, path = rest.partition("/")
        if not netloc:
            raise ConfigError(
                f"no namenode for {uri}: HDFS_NAMENODE is not configured in {config.source}",
                hint=f"mount the HDFS secret (or set STORAGE_CONFIG), or name the namenode: {_FORM}",
            )
        parts = urlsplit(f"//{netloc}")
        try:
            port = parts.port
        except ValueError:
            raise UsageError(f"{uri} has an invalid namenode port", hint=f"expected {_FORM}") from None
        if parts.username is not None or not parts.hostname:
            raise UsageError(f"{uri} names no usable namenode", hint=f"expected {_FORM}")
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
        session = kit.new_session(env, pool_size=size, verify=verify, retry_refused=True)
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
        except requests.exceptions.RequestException as exc:
            error = network_error(exc, f"the cluster for {uri}", ca_hint=_TLS_HINT, hint="check HDFS_NAMENODE")
            if error.retryable and isinstance(exc, requests.exceptions.SSLError):
                # Sending the request: the handshake itself failed (a client certificate missing
                # or refused), which no retry heals.
                error = StorageInitializerError(f"TLS with the cluster failed for {uri}: {exc}", hint=_TLS_HINT)
            raise error from None
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
        shown = uri
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
        shown = uri
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
            raise NotFoundError(f"{uri} does not exist (HDFS path {full})", hint="check the path and HDFS_ROOTPATH")
        if status.get("type") == "FILE":
            yield RemoteObject(posixpath.basename(full), int(status["length"]), _version(status), extra=full)
            return
        if status.get("type") != "DIRECTORY":
            raise UsageError(f"{uri} is a {status.get('type')}, not a file or directory")
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
                raise TransientError(f"{uri}: the datanode announced {announced} bytes for {expected}")
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
            raise ObjectChangedError(f"{uri}: {obj.key} was deleted during the download")
        if _version(status) != obj.version:
            raise ObjectChangedError(
                f"{uri}: {obj.key} changed during the download "
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
