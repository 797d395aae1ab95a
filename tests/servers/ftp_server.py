"""A real FTP server for tests: pyftpdlib (RFC 959 + RFC 3659 MLST/MLSD/SIZE/REST) on 127.0.0.1.

Serves a temporary directory to a named read-only user (``FtpServer.user`` /
``FtpServer.password``) and to ``anonymous``, with one thread per connection (as
many parallel ranged reads as a client opens) and passive data connections on
127.0.0.1. ``put()`` writes files straight into the served directory and can
set their modification time: MLST/MLSD report it to the second (``modify=``,
UTC), so a test that replaces a file and expects a new version must move the
time on (``replace()`` does).

Fixture: ``ftp_server`` (session-scoped; isolate tests with ``new_dir()``).
Deviation from a production server, for speed only: a failed login is answered
after 0.05 s instead of pyftpdlib's 3 s penalty.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import pytest
from pyftpdlib.authorizers import DummyAuthorizer  # type: ignore[import-untyped]
from pyftpdlib.handlers import FTPHandler  # type: ignore[import-untyped]
from pyftpdlib.servers import ThreadedFTPServer  # type: ignore[import-untyped]


class _Server(ThreadedFTPServer):  # type: ignore[misc]
    """pyftpdlib keeps ``_lock``/``_exit`` on the class: give each server its own."""

    poll_timeout = 0.1  # worker threads notice the stop quickly

    def __init__(self, address: tuple[str, int], handler: type[FTPHandler]) -> None:
        self._lock = threading.Lock()
        self._exit = threading.Event()
        super().__init__(address, handler)


class FtpServer:
    """pyftpdlib serving ``root`` on 127.0.0.1:``port``; stop with :meth:`stop`."""

    def __init__(self) -> None:
        logging.getLogger("pyftpdlib").setLevel(logging.WARNING)  # no line per session and transfer
        self.root = Path(tempfile.mkdtemp(prefix="ftp-"))
        self.user = "model-reader"
        self.password = f"pw-{uuid.uuid4().hex[:12]}"
        authorizer = DummyAuthorizer()
        authorizer.add_user(self.user, self.password, str(self.root), perm="elr")  # read-only
        authorizer.add_anonymous(str(self.root))  # read-only too (pyftpdlib's default perm)
        handler = type(
            "Handler",
            (FTPHandler,),
            {"authorizer": authorizer, "auth_failed_timeout": 0.05, "banner": "storage-initializer test FTP"},
        )
        self._server = _Server(("127.0.0.1", 0), handler)
        self.host, self.port = self._server.address
        self.url = f"ftp://{self.host}:{self.port}"
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="ftp-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopping:
            self._server.serve_forever(timeout=0.05, blocking=False, handle_exit=False)
        self._server.close_all()

    def stop(self) -> None:
        self._stopping = True
        self._thread.join(10)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> FtpServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- content -----------------------------------------------------------------------------
    def new_dir(self, prefix: str = "t") -> str:
        """A fresh, empty directory below the root; returns its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        (self.root / name).mkdir()
        return name

    def put(self, path: str, data: bytes, mtime: float | None = None) -> Path:
        """Write ``data`` at ``path`` (relative to the root), optionally with a modification time."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        if mtime is not None:
            os.utime(target, (mtime, mtime))
        return target

    def replace(self, path: str, data: bytes) -> Path:
        """New content with a modification time at least 2 s later (MLST has 1 s resolution)."""
        target = self.root / path.lstrip("/")
        before = target.stat().st_mtime if target.exists() else time.time()
        return self.put(path, data, mtime=max(time.time(), before + 2))

    def uri(self, path: str, credentials: bool = False) -> str:
        """``ftp://[user:password@]127.0.0.1:PORT/path``."""
        auth = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}@" if credentials else ""
        return f"ftp://{auth}{self.host}:{self.port}/{path.lstrip('/')}"

    def env(self) -> dict[str, str]:
        """Credentials as the example FTP provider reads them."""
        return {"FTP_USERNAME": self.user, "FTP_PASSWORD": self.password}


@pytest.fixture(scope="session")
def ftp_server() -> Iterator[FtpServer]:
    server = FtpServer()
    try:
        yield server
    finally:
        server.stop()
