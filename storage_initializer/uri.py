"""URIs of servers reached by host and port: ``scheme://[user[:password]@]host[:port]/path``.

The form FTP, SFTP, SMB or WebDAV plugins take. :class:`ServerUri` parses and checks one
(scheme, host, port, no line breaks, no query or fragment), percent-decodes the user,
password and path, normalizes the path (absolute, no ``..``, no trailing ``/``) and
registers the password as a secret. A plugin subclasses it to set its scheme, default
port and usage hint.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import ClassVar, TypeVar
from urllib.parse import unquote, urlsplit

from storage_initializer.errors import UsageError
from storage_initializer.redact import redact, register_secret

__all__ = ["ServerUri"]

_Uri = TypeVar("_Uri", bound="ServerUri")


@dataclass(frozen=True)
class ServerUri:
    """One parsed URI; subclasses set :attr:`scheme`, :attr:`default_port` and :attr:`usage`."""

    #: The URI scheme, without ``://`` (``"ftp"``).
    scheme: ClassVar[str] = ""
    #: The port when the URI names none.
    default_port: ClassVar[int] = 0
    #: The hint of every usage error (the form expected).
    usage: ClassVar[str] = ""

    host: str
    port: int
    path: str  # absolute, no trailing '/' (the root is '/')
    user: str | None
    password: str | None

    @classmethod
    def parse(cls: type[_Uri], uri: str) -> _Uri:
        """The parts of ``uri``; a :class:`UsageError` saying what is wrong and :attr:`usage`."""
        parts, shown = urlsplit(uri), redact(uri)
        if parts.scheme != cls.scheme:
            raise UsageError(f"{shown} does not start with {cls.scheme}://", hint=cls.usage)
        try:
            port = parts.port or cls.default_port
        except ValueError:
            raise UsageError(f"{shown} has an invalid port", hint=cls.usage) from None
        if not parts.hostname:
            raise UsageError(f"{shown} names no host", hint=cls.usage)
        if "\r" in uri or "\n" in uri:
            raise UsageError(f"{cls.scheme}:// URIs cannot contain line breaks", hint=cls.usage)
        if parts.query or parts.fragment:
            raise UsageError(f"{shown}: {cls.scheme}:// URIs take no query or fragment", hint=cls.usage)
        path = posixpath.normpath("/" + unquote(parts.path).strip("/"))
        if path.startswith("//"):
            path = path[1:]
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        register_secret(password)
        return cls(parts.hostname, port, path, user, password)
