"""Azurite, Microsoft's real Azure Blob emulator, as a session-scoped test server.

The binary comes from ``$AZURITE_BIN`` or ``<repo>/.tools/azurite`` (installed
there with npm on first use: CI machines start clean and ``.tools/`` is
gitignored). Each session gets a free port and a fresh data directory; tests
isolate themselves by creating uniquely named containers.

Clients reach it with :attr:`Azurite.connection_string`, in the
``AZURE_STORAGE_CONNECTION_STRING`` form. Seed data is uploaded with the real
``azure-storage-blob`` SDK.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import pytest

from tests.servers.processes import free_port

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = REPO_ROOT / ".tools" / "azurite"
NPM_SPEC = "azurite@3"

#: Azurite's published development account and key (not a secret:
#: https://learn.microsoft.com/azure/storage/common/storage-use-azurite).
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

MiB = 1024 * 1024


def azurite_binary() -> Path:
    """Return the ``azurite-blob`` executable, installing it with npm if needed.

    An exclusive lock keeps parallel pytest workers from running npm at once.
    """
    env_bin = os.environ.get("AZURITE_BIN")
    if env_bin:
        return Path(env_bin)
    binary = TOOLS_DIR / "node_modules" / ".bin" / "azurite-blob"
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("Azurite is not installed and npm is missing: install Node.js or set AZURITE_BIN")
    TOOLS_DIR.mkdir(parents=True, exist_ok=True)
    with open(TOOLS_DIR.parent / "azurite.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():
            subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--prefix", str(TOOLS_DIR), NPM_SPEC],
                check=True,
                stdout=subprocess.DEVNULL,
                timeout=600,
            )
    return binary


class Azurite:
    """A running ``azurite-blob`` process on 127.0.0.1 with a fresh data directory.

    ``https=True`` serves TLS with a certificate from a throw-away CA
    (``ca_path``, made with trustme) and turns on Azurite's basic OAuth, which
    accepts Azure AD bearer tokens with a valid issuer, audience and lifetime
    (it does not check their signature): the way to run a token credential
    against a real Blob implementation without Azure AD.
    """

    account_name = ACCOUNT_NAME
    account_key = ACCOUNT_KEY

    def __init__(self, binary: Path | None = None, startup_timeout: float = 60.0, *, https: bool = False) -> None:
        self.port = 0
        self.data_dir = Path(tempfile.mkdtemp(prefix="azurite-"))
        self.scheme = "https" if https else "http"
        self.ca_path: str | None = None
        tls: list[str] = []
        if https:
            import trustme

            ca = trustme.CA()
            cert = ca.issue_cert("127.0.0.1", "localhost")
            tls_dir = self.data_dir.parent / f"{self.data_dir.name}-tls"
            tls_dir.mkdir()
            self.ca_path = str(tls_dir / "ca.pem")
            ca.cert_pem.write_to_path(self.ca_path)
            cert.cert_chain_pems[0].write_to_path(str(tls_dir / "cert.pem"))
            cert.private_key_pem.write_to_path(str(tls_dir / "key.pem"))
            tls = ["--cert", str(tls_dir / "cert.pem"), "--key", str(tls_dir / "key.pem"), "--oauth", "basic"]
        self._log = open(self.data_dir.parent / f"{self.data_dir.name}.log", "wb")  # noqa: SIM115
        self._process: subprocess.Popen[bytes] | None = None
        try:
            for _ in range(5):  # a port can be taken by another process between choosing and binding it
                self.port = free_port()
                self._process = subprocess.Popen(
                    [
                        str(binary or azurite_binary()),
                        *("--blobHost", "127.0.0.1", "--blobPort", str(self.port)),
                        *("--location", str(self.data_dir)),
                        *("--loose", "--skipApiVersionCheck", "--disableTelemetry", "--silent"),
                        *tls,
                    ],
                    stdout=self._log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
                if self._wait_ready(startup_timeout):
                    return
            raise RuntimeError(f"azurite exited: {self._log_tail()}")
        except BaseException:
            self.stop()
            raise

    # -- addresses ---------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The blob service endpoint, path-style: ``http://127.0.0.1:PORT/devstoreaccount1``."""
        return f"{self.scheme}://127.0.0.1:{self.port}/{ACCOUNT_NAME}"

    url = endpoint

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol={self.scheme};AccountName={ACCOUNT_NAME};"
            f"AccountKey={ACCOUNT_KEY};BlobEndpoint={self.endpoint};"
        )

    def env(self) -> dict[str, str]:
        """Environment that points an Azure SDK client (or our CLI) at this server."""
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}

    # -- lifecycle ---------------------------------------------------------

    def _wait_ready(self, timeout: float) -> bool:
        """True once Azurite serves on its port; False when it exited (its port was taken)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5) as raw:
                s = raw
                if self.ca_path:
                    s = ssl.create_default_context(cafile=self.ca_path).wrap_socket(raw, server_hostname="127.0.0.1")
                # Any answer of the blob service means it is serving requests; only it names an x-ms-
                # header (a process that took the port first would answer too).
                s.sendall(b"GET /devstoreaccount1?comp=list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                head = s.recv(4096)
                if head.startswith(b"HTTP/1.1") and b"\r\nx-ms-" in head.lower():
                    return True
            if time.monotonic() > deadline:
                raise RuntimeError(f"azurite not ready after {timeout}s: {self._log_tail()}")
            time.sleep(0.05)

    def _log_tail(self) -> str:
        self._log.flush()
        return Path(self._log.name).read_bytes()[-2000:].decode(errors="replace")

    def stop(self) -> None:
        """TERM the process group, KILL it if it lingers, remove the data directory."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        if not self._log.closed:
            self._log.close()
            Path(self._log.name).unlink(missing_ok=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.data_dir.parent / f"{self.data_dir.name}-tls", ignore_errors=True)

    def __enter__(self) -> Azurite:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- seeding (real SDK) --------------------------------------------------

    def service(self) -> BlobServiceClient:
        from azure.storage.blob import BlobServiceClient

        verify = {"connection_verify": self.ca_path} if self.ca_path else {}
        return BlobServiceClient.from_connection_string(self.connection_string, **verify)

    def create_container(self, name: str | None = None, public: bool = False) -> str:
        """Create a container (a unique name when none is given) and return its name.

        ``public=True`` grants anonymous read of blobs and listing.
        """
        name = name or f"c{uuid.uuid4().hex[:20]}"
        self.service().create_container(name, public_access="container" if public else None)
        return name

    def upload(self, container: str, name: str, data: bytes, *, content_md5: bool = True) -> str:
        """Upload one blob in a single request; return its ETag.

        With ``content_md5`` the blob carries Content-MD5, as the SDK and
        ``az storage blob upload`` set for single-shot uploads.
        """
        from azure.storage.blob import ContentSettings

        settings = ContentSettings(content_md5=bytearray(hashlib.md5(data).digest())) if content_md5 else None
        blob = self.service().get_blob_client(container, name)
        result = blob.upload_blob(data, overwrite=True, content_settings=settings)
        return str(result["etag"])

    def upload_tree(self, container: str, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            self.upload(container, name, data)

    def upload_repeated(self, container: str, name: str, chunk: bytes, count: int, *, content_md5: bool = True) -> str:
        """Create a ``len(chunk) * count`` byte blob cheaply; return its SHA-256 hex digest.

        The same buffer is staged as ``count`` blocks and committed as one
        block list, so a 300 MiB blob costs 300 MiB of local disk writes in
        Azurite but no 300 MiB buffer here. The blob gets Content-MD5 of the
        whole content when ``content_md5`` (as ``az storage blob upload`` does).
        """
        from azure.storage.blob import BlobBlock, ContentSettings

        blob = self.service().get_blob_client(container, name)
        block_ids = []
        md5, sha = hashlib.md5(), hashlib.sha256()
        for index in range(count):
            block_id = f"{index:08d}"
            blob.stage_block(block_id, chunk, length=len(chunk))
            block_ids.append(BlobBlock(block_id=block_id))
            md5.update(chunk)
            sha.update(chunk)
        settings = ContentSettings(content_md5=bytearray(md5.digest())) if content_md5 else None
        blob.commit_block_list(block_ids, content_settings=settings)
        return sha.hexdigest()


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """A session-wide Azurite blob service; call ``create_container()`` per test."""
    with Azurite() as server:
        yield server


@pytest.fixture(scope="session")
def azurite_https() -> Iterator[Azurite]:
    """Azurite over TLS (CA at ``.ca_path``) with basic OAuth, for token-credential tests."""
    with Azurite(https=True) as server:
        yield server
