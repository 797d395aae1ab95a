"""A real FTP server (pyftpdlib) on 127.0.0.1 for the plugin's tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import ThreadedFTPServer


@dataclass
class Server:
    root: Path
    url: str  # ftp://127.0.0.1:PORT (anonymous, read-only)
    user: str = "reader"
    password: str = "example-password"


@pytest.fixture(scope="session")
def ftp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("ftp-root")
    authorizer = DummyAuthorizer()
    authorizer.add_anonymous(str(root))
    authorizer.add_user(Server.user, Server.password, str(root), perm="elr")
    handler = type("Handler", (FTPHandler,), {"authorizer": authorizer, "auth_failed_timeout": 0.05})
    server = ThreadedFTPServer(("127.0.0.1", 0), handler)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            server.serve_forever(timeout=0.05, blocking=False, handle_exit=False)
        server.close_all()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    host, port = server.address
    try:
        yield Server(root, f"ftp://{host}:{port}")
    finally:
        stop.set()
        thread.join(10)
