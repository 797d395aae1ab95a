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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from storage_initializer.config import env_bool
from storage_initializer.errors import (
    AccessDeniedError,
    NotFoundError,
    ObjectChangedError,
    StorageInitializerError,
    TransientError,
    network_error,
)
from storage_initializer.provider import ByteStream, Provider, ProviderContext, RemoteObject, SocketStream, UriFormat
from storage_initializer.redact import register_secret
from storage_initializer.uri import ServerUri

__all__ = ["FtpLocation", "FtpProvider"]


class FtpLocation(ServerUri):
    scheme = "ftp"
    default_port = 21
    usage = "use ftp://[user[:password]@]host[:port]/path"


def _facts(line: str) -> dict[str, str]:
    """``type=file;size=5;modify=20240101000000; name`` -> facts (lower-case names)."""
    text = line.strip().partition(" ")[0]
    return {k.lower(): v for k, _, v in (f.partition("=") for f in text.split(";") if f)}


def _version(facts: Mapping[str, str]) -> str | None:
    return f"{facts['modify']}:{facts.get('size', '')}" if "modify" in facts else None


def _object(key: str, path: str, facts: Mapping[str, str]) -> RemoteObject:
    size = int(facts["size"]) if facts.get("size", "").isdigit() else None
    return RemoteObject(key, size, _version(facts), extra=path)


@contextmanager
def _errors(uri: str) -> Iterator[None]:
    """Map ftplib's replies and socket errors onto the error hierarchy."""
    try:
        yield
    except ftplib.error_perm as exc:
        code = str(exc)[:3]
        if code == "550":
            raise NotFoundError(f"{uri}: not found on the FTP server ({exc})", hint="check the path") from None
        if code in ("530", "532"):
            raise AccessDeniedError(
                f"{uri}: FTP login refused ({exc})", hint="check FTP_USERNAME and FTP_PASSWORD"
            ) from None
        raise StorageInitializerError(f"{uri}: FTP server refused: {exc}") from None
    except (ftplib.error_temp, ftplib.error_reply, ftplib.error_proto, EOFError) as exc:
        raise TransientError(f"{uri}: FTP failure: {type(exc).__name__}: {exc}") from exc
    except OSError as exc:  # refused, DNS name not found, timeout...: says which, retried only if it can heal
        raise network_error(exc, uri) from None


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


class FtpProvider(Provider):
    """Files and directory trees on an FTP server (RFC 959 + RFC 3659)."""

    uri_formats = (UriFormat(prefix="ftp://"),)
    description = "FTP servers with MLST/MLSD and REST (example third-party plugin, standard library only)"

    def __init__(self, context: ProviderContext) -> None:
        super().__init__(context)
        self.username = self.env.get("FTP_USERNAME") or "anonymous"
        self.password = self.env.get("FTP_PASSWORD") or "anonymous@"
        register_secret(self.env.get("FTP_PASSWORD"))
        self.passive = env_bool(self.env, "FTP_PASSIVE", True)

    def validate(self, uri: str) -> None:
        FtpLocation.parse(uri)

    @contextmanager
    def _session(self, uri: str) -> Iterator[tuple[ftplib.FTP, FtpLocation]]:
        """A logged-in control connection in binary mode, closed afterwards."""
        loc = FtpLocation.parse(uri)
        ftp = ftplib.FTP(encoding="utf-8")
        try:
            with _errors(uri):
                ftp.connect(loc.host, loc.port, timeout=self.context.connect_timeout)
                assert ftp.sock is not None
                ftp.sock.settimeout(self.context.stall_timeout)
                ftp.timeout = self.context.stall_timeout  # ftplib also connects data channels with it
                ftp.login(loc.user or self.username, loc.password or self.password)
                ftp.set_pasv(self.passive)
                ftp.voidcmd("TYPE I")
            yield ftp, loc
        finally:
            ftp.close()

    def list(self, uri: str) -> Iterator[RemoteObject]:
        with self._session(uri) as (ftp, loc), _errors(uri):
            facts = _mlst(ftp, loc.path)
            if facts is None:
                raise NotFoundError(f"{uri}: no such file or directory on the FTP server", hint="check the path")
            kind = facts.get("type", "").lower()
            if kind == "file":
                yield _object(posixpath.basename(loc.path), loc.path, facts)
                return
            if kind not in ("dir", "cdir"):
                raise NotFoundError(f"{uri} is neither a file nor a directory (type={kind})")
            pending = [""]  # an empty tree yields nothing: the engine reports that itself
            while pending:
                relative = pending.pop()
                directory = posixpath.join(loc.path, relative) if relative else loc.path
                for name, entry in sorted(ftp.mlsd(directory, ["type", "size", "modify"])):
                    kind = entry.get("type", "").lower()
                    key = f"{relative}/{name}" if relative else name
                    if kind == "dir":
                        pending.append(key)
                    elif kind == "file":  # cdir/pdir (. and ..) and symlinks are skipped
                        yield _object(key, posixpath.join(loc.path, key), entry)

    @contextmanager
    def open_range(self, uri: str, obj: RemoteObject, start: int, end: int | None) -> Iterator[ByteStream]:
        path = obj.extra if isinstance(obj.extra, str) else FtpLocation.parse(uri).path
        with self._session(uri) as (ftp, _):
            with _errors(uri):
                facts = _mlst(ftp, path)
                if facts is None:
                    raise NotFoundError(f"{uri}: {path} disappeared from the FTP server")
                if obj.version is not None and _version(facts) != obj.version:
                    raise ObjectChangedError(f"{uri}: {path} changed on the FTP server since it was listed")
                conn = ftp.transfercmd(f"RETR {path}", rest=start or None)
            conn.settimeout(self.context.stall_timeout)
            with SocketStream(conn, None if end is None else end - start, "FTP data connection") as stream:
                yield stream
            # Closing the session drops the control connection, also mid-transfer (no ABOR dance).
