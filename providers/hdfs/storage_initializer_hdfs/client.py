"""Pieces around the ``hdfs`` client: literal paths, datanode bodies, quiet logs, scrubbed tokens."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

from storage_initializer.redact import RedactFilter

log = logging.getLogger("storage_initializer.hdfs")

_HTML_TITLE = re.compile(r"<title>\s*(?:Error\s+\d+\s+)?(.*?)\s*</title>", re.IGNORECASE | re.DOTALL)
_DELEGATION = re.compile(r"(?i)([?&]delegation=)[^&\s'\"]+")


def _scrub(text: str) -> str:
    """Mask WebHDFS delegation tokens (datanode redirect URLs carry them) in a message."""
    return _DELEGATION.sub(r"\1***", text)


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
            logger.addFilter(RedactFilter())  # not a storage_initializer logger: masked here


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
