"""ftp:// for storage-initializer: a third-party provider written against the public plugin API only.

``ftp://[USER[:PASSWORD]@]HOST[:PORT]/PATH`` names a file or a directory (downloaded
recursively). Credentials come from the URI, else ``FTP_USERNAME`` / ``FTP_PASSWORD``,
else ``anonymous``. The path is taken from the server's root (``/PATH``), which is the
login directory on chrooted servers.

The server must speak RFC 3659 (``MLST``/``MLSD`` for exact sizes and times, ``REST``
for ranges), as vsftpd, ProFTPD, Pure-FTPd, pyftpdlib and IIS do. Each object's
version is its ``modify`` time and size: FTP has no ETag, so a file replaced within
the same second by one of the same size cannot be told apart.

Only the standard library's :mod:`ftplib` is used; an ftplib connection is not
thread-safe and carries one transfer at a time, so each ranged read opens its own.
"""

from __future__ import annotations

import ftplib
import posixpath
import socket
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from storage_initializer.errors import (
    AccessDeniedError,
    NotFoundError,
    ObjectChangedError,
    StorageInitializerError,
    TransientError,
    UsageError,
)
from storage_initializer.provider import ByteStream, Provider, ProviderContext, RemoteObject, StreamBase, UriFormat
from storage_initializer.redact import register_secret

__all__ = ["FtpLocation", "FtpProvider", "FtpSettings"]

USAGE = "use ftp://[user[:password]@]host[:port]/path"


@dataclass(frozen=True)
class FtpLocation:
    host: str
    port: int
    path: str  # absolute, no trailing '/' (the root is '/')
    user: str | None
    password: str | None

    @classmethod
    def parse(cls, uri: str) -> FtpLocation:
        parts = urlsplit(uri)
        if parts.scheme != "ftp":
            raise UsageError(f"{uri} is not an ftp:// URI", hint=USAGE)
        try:
            port = parts.port or 21
        except ValueError:
            raise UsageError(f"{uri} has an invalid port", hint=USAGE) from None
        if not parts.hostname:
            raise UsageError(f"{uri} names no host", hint=USAGE)
        if "\r" in uri or "\n" in uri:
            raise UsageError("an ftp:// URI cannot contain line breaks", hint=USAGE)
        if parts.query or parts.fragment:
            raise UsageError(f"{uri}: ftp:// URIs take no query or fragment", hint=USAGE)
        path = posixpath.normpath("/" + unquote(parts.path).strip("/"))
        if path.startswith("//"):
            path = path[1:]
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        return cls(parts.hostname, port, path, user, password)


@dataclass(frozen=True)
class FtpSettings:
    """What the environment configures (the URI's own credentials win)."""

    username: str = "anonymous"
    password: str = "anonymous@"
    passive: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FtpSettings:
        passive = env.get("FTP_PASSIVE", "true").strip().lower()
        if passive not in ("true", "false", "1", "0", "yes", "no"):
            raise UsageError(f"FTP_PASSIVE={passive!r} is not a boolean", hint="use true or false")
        password = env.get("FTP_PASSWORD") or cls.password
        register_secret(env.get("FTP_PASSWORD"))
        return cls(env.get("FTP_USERNAME") or cls.username, password, passive in ("true", "1", "yes"))


def _facts(line: str) -> dict[str, str]:
    """``type=file;size=5;modify=20240101000000; name`` -> facts (lower-case names)."""
    text = line.strip().partition(" ")[0]
    return {k.lower(): v for k, _, v in (f.partition("=") for f in text.split(";") if f)}


def _version(facts: Mapping[str, str]) -> str | None:
    return f"{facts['modify']}:{facts.get('size', '')}" if "modify" in facts else None


class _RangeStream(StreamBase):
    """The data connection of one RETR, cut off after ``limit`` bytes."""

    def __init__(self, conn: socket.socket, limit: int | None) -> None:
        self._conn = conn
        self._remaining = limit

    def close(self) -> None:
        self._conn.close()

    def readinto(self, buffer: memoryview) -> int:
        view = memoryview(buffer).cast("B")
        if self._remaining is not None:
            if self._remaining <= 0:
                return 0
            view = view[: self._remaining]
        try:
            n = self._conn.recv_into(view)
        except OSError as exc:
            raise TransientError(f"FTP data connection failed: {exc}") from exc
        if self._remaining is not None:
            self._remaining -= n
        return n


class FtpProvider(Provider):
    """Files and directory trees on an FTP server (RFC 959 + RFC 3659)."""

    uri_formats = (UriFormat(prefix="ftp://"),)
    description = "FTP servers with MLST/MLSD and REST (example third-party plugin, standard library only)"

    def __init__(self, context: ProviderContext) -> None:
        super().__init__(context)
        self.settings = FtpSettings.from_env(self.env)

    def validate(self, uri: str) -> None:
        FtpLocation.parse(uri)

    # -- connections ----------------------------------------------------------------------
    @contextmanager
    def _session(self, uri: str) -> Iterator[tuple[ftplib.FTP, FtpLocation]]:
        """A logged-in control connection in binary mode, closed afterwards."""
        loc = FtpLocation.parse(uri)
        register_secret(loc.password)
        ftp = ftplib.FTP(encoding="utf-8")
        try:
            with self._errors(uri):
                ftp.connect(loc.host, loc.port, timeout=self.context.connect_timeout)
                assert ftp.sock is not None
                ftp.sock.settimeout(self.context.stall_timeout)
                ftp.timeout = self.context.stall_timeout  # ftplib also connects data channels with it
                ftp.login(loc.user or self.settings.username, loc.password or self.settings.password)
                ftp.set_pasv(self.settings.passive)
                ftp.voidcmd("TYPE I")
            yield ftp, loc
        finally:
            ftp.close()

    @staticmethod
    @contextmanager
    def _errors(uri: str) -> Iterator[None]:
        """Map ftplib's replies and socket errors onto the error hierarchy."""
        shown = uri
        try:
            yield
        except ftplib.error_perm as exc:
            code = str(exc)[:3]
            if code == "550":
                raise NotFoundError(f"{shown}: not found on the FTP server ({exc})", hint="check the path") from None
            if code in ("530", "532"):
                raise AccessDeniedError(
                    f"{shown}: FTP login refused ({exc})", hint="check FTP_USERNAME and FTP_PASSWORD"
                ) from None
            raise StorageInitializerError(f"{shown}: FTP server refused: {exc}") from None
        except (ftplib.error_temp, ftplib.error_reply, ftplib.error_proto, EOFError, OSError) as exc:
            raise TransientError(f"{shown}: FTP failure: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _mlst(ftp: ftplib.FTP, path: str) -> dict[str, str] | None:
        """The facts of one path, or None when it does not exist (550)."""
        try:
            reply = ftp.sendcmd(f"MLST {path}")
        except ftplib.error_perm as exc:
            if str(exc).startswith("550"):
                return None
            raise
        lines = reply.splitlines()
        if len(lines) < 3:
            raise ftplib.error_proto(f"unexpected MLST reply: {reply!r}")
        return _facts(lines[1])

    # -- the provider API ---------------------------------------------------------------------
    def list(self, uri: str) -> Iterator[RemoteObject]:
        with self._session(uri) as (ftp, loc), self._errors(uri):
            facts = self._mlst(ftp, loc.path)
            if facts is None:
                raise NotFoundError(f"{uri}: no such file or directory on the FTP server", hint="check the path")
            kind = facts.get("type", "").lower()
            if kind == "file":
                yield self._object(posixpath.basename(loc.path), loc.path, facts)
                return
            if kind not in ("dir", "cdir"):
                raise NotFoundError(f"{uri} is neither a file nor a directory (type={kind})")
            found = False
            pending = [""]
            while pending:
                relative = pending.pop()
                directory = posixpath.join(loc.path, relative) if relative else loc.path
                for name, entry in sorted(ftp.mlsd(directory, ["type", "size", "modify"])):
                    kind = entry.get("type", "").lower()
                    key = f"{relative}/{name}" if relative else name
                    if kind == "dir":
                        pending.append(key)
                    elif kind == "file":  # cdir/pdir (. and ..) and symlinks are skipped
                        found = True
                        yield self._object(key, posixpath.join(loc.path, key), entry)
            if not found:
                raise NotFoundError(f"{uri}: the directory holds no files", hint="check the path")

    @staticmethod
    def _object(key: str, path: str, facts: Mapping[str, str]) -> RemoteObject:
        size = int(facts["size"]) if facts.get("size", "").isdigit() else None
        return RemoteObject(key, size, _version(facts), extra=path)

    def open_range(
        self, uri: str, obj: RemoteObject, start: int, end: int | None
    ) -> AbstractContextManager[ByteStream]:
        return self._open(uri, obj, start, end)

    @contextmanager
    def _open(self, uri: str, obj: RemoteObject, start: int, end: int | None) -> Iterator[ByteStream]:
        path = obj.extra if isinstance(obj.extra, str) else FtpLocation.parse(uri).path
        with self._session(uri) as (ftp, _):
            with self._errors(uri):
                facts = self._mlst(ftp, path)
                if facts is None:
                    raise NotFoundError(f"{uri}: {path} disappeared from the FTP server")
                if obj.version is not None and _version(facts) != obj.version:
                    raise ObjectChangedError(f"{uri}: {path} changed on the FTP server since it was listed")
                conn = ftp.transfercmd(f"RETR {path}", rest=start or None)
            with conn:
                conn.settimeout(self.context.stall_timeout)
                yield _RangeStream(conn, None if end is None else end - start)
            # Closing the session drops the control connection, also mid-transfer (no ABOR dance).
