"""A real OCI registry on loopback: Debian's ``docker-registry`` (CNCF Distribution 2.8).

Three flavours, one process each, all with filesystem storage in a temporary
directory: anonymous, ``htpasswd`` basic auth (bcrypt), and token auth, where
a small token server here issues the RS256 JWTs the registry trusts (its
certificate is the registry's ``rootcertbundle``; the JWT ``kid`` is the
libtrust key id Distribution derives from that certificate's public key).

:class:`Pusher` writes content with the registry's own HTTP API (blob upload
``POST`` + ``PUT``, manifest ``PUT``), answering the same auth challenges a
client meets. :meth:`Registry.blob_file` is where a blob lives on disk, for
tests that damage one.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.servers.base import FakeHandler, FakeServer
from tests.servers.processes import free_port

USER, PASSWORD = "modeler", "s3cret-Passw0rd"
IDENTITY_TOKEN = "refresh-token-of-modeler"  # what `docker login` stores as identitytoken for OAuth2 registries
SERVICE, ISSUER = "test-registry", "test-token-issuer"


def _binary() -> str:
    found = shutil.which("docker-registry") or shutil.which("registry")
    if found is None:
        pytest.fail("docker-registry is not installed (scripts/install-dev.sh installs the Debian package as root)")
    return found


class TokenServer:
    """Issues registry JWTs: basic credentials get the actions they ask for, anonymous gets none."""

    def __init__(self, directory: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token-signer")])
        now = datetime.now(timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path = directory / "token-signer.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
        self.kid = ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(FakeHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                server.requests.append({"query": query, "authorization": self.headers.get("Authorization")})
                granted = server.grant(self.headers.get("Authorization"), query.get("scope", []))
                if granted is None:
                    body, status = b'{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}', 401
                else:
                    token = server.token(granted)
                    body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
                    status = 200
                self.send(status, {"Content-Type": "application/json"}, body)

            def do_POST(self) -> None:
                # OAuth2 (distribution docs/spec/auth/oauth.md): grant_type=refresh_token.
                form = parse_qs(self.read_body().decode())
                server.requests.append({"query": form, "authorization": self.headers.get("Authorization")})
                refresh = form.get("refresh_token", [""])[0]
                if form.get("grant_type") != ["refresh_token"] or refresh != IDENTITY_TOKEN:
                    body, status = b'{"error":"invalid_grant"}', 400
                else:
                    access = server.grant(
                        f"Basic {base64.b64encode(f'{USER}:{PASSWORD}'.encode()).decode()}", form.get("scope", [])
                    )
                    body = json.dumps({"access_token": server.token(access or []), "expires_in": 300}).encode()
                    status = 200
                self.send(status, {"Content-Type": "application/json"}, body)

        self.httpd = FakeServer(Handler, self)
        self.realm = f"{self.httpd.url}/token"

    def grant(self, authorization: str | None, scopes: list[str]) -> list[dict[str, Any]] | None:
        if authorization is None:
            return []
        if not authorization.startswith("Basic "):
            return None
        if base64.b64decode(authorization[6:]).decode() != f"{USER}:{PASSWORD}":
            return None
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        return access

    def token(self, access: list[dict[str, Any]]) -> str:
        import jwt

        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": USER,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})

    def stop(self) -> None:
        self.httpd.stop()


class Registry:
    """One ``docker-registry`` process; ``auth`` is ``none``, ``htpasswd`` or ``token``."""

    def __init__(self, directory: Path, auth: str = "none") -> None:
        self.directory = directory
        self.auth = auth
        self.storage = directory / "storage"
        self.storage.mkdir(parents=True)
        self.token_server: TokenServer | None = None
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)}, "delete": {"enabled": True}},
            "http": {"secret": secrets.token_hex(16)},
        }
        if auth == "htpasswd":
            import bcrypt

            hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=5)).decode().replace("$2b$", "$2y$", 1)
            (directory / "htpasswd").write_text(f"{USER}:{hashed}\n")
            config["auth"] = {"htpasswd": {"realm": "test-realm", "path": str(directory / "htpasswd")}}
        elif auth == "token":
            self.token_server = TokenServer(directory)
            config["auth"] = {
                "token": {
                    "realm": self.token_server.realm,
                    "service": SERVICE,
                    "issuer": ISSUER,
                    "rootcertbundle": str(self.token_server.cert_path),
                }
            }
        self.log = open(directory / "registry.log", "wb")  # noqa: SIM115 - closed in stop()
        for _ in range(5):  # a port can be taken by another process between choosing and binding it
            self.port = free_port()
            self.host = f"127.0.0.1:{self.port}"
            config["http"]["addr"] = self.host
            (directory / "config.yml").write_text(json.dumps(config))  # JSON is YAML: no YAML writer needed
            self.process = subprocess.Popen(
                [_binary(), "serve", str(directory / "config.yml")], stdout=self.log, stderr=subprocess.STDOUT
            )
            if self._wait():
                return
        raise RuntimeError(f"docker-registry exited: {(directory / 'registry.log').read_text()[-2000:]}")

    def _wait(self) -> bool:
        """True once this registry answers on its port; False when it exited (its port was taken)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                connection.request("GET", "/v2/")
                # A process that took the port first answers too: only a registry names its API.
                if connection.getresponse().getheader("Docker-Distribution-Api-Version"):
                    return True
            except (OSError, http.client.HTTPException):
                pass
            finally:
                connection.close()
            time.sleep(0.05)
        raise RuntimeError("docker-registry did not start listening")

    def uri(self, repository: str, ref: str = "") -> str:
        return f"oci://{self.host}/{repository}{ref}"

    def blob_file(self, digest: str) -> Path:
        algorithm, hexdigest = digest.split(":")
        return self.storage / "docker/registry/v2/blobs" / algorithm / hexdigest[:2] / hexdigest / "data"

    def pusher(self) -> Pusher:
        return Pusher(f"http://{self.host}", None if self.auth == "none" else (USER, PASSWORD))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        if self.token_server is not None:
            self.token_server.stop()


class Pusher:
    """Pushes blobs and manifests through the distribution API, as any client does."""

    def __init__(self, base: str, credentials: tuple[str, str] | None) -> None:
        import requests

        self.base = base
        self.credentials = credentials
        self.session = requests.Session()
        self.session.trust_env = False
        self._authorization: dict[str, str] = {}  # repository -> header

    def _request(self, method: str, url: str, repository: str, **kwargs: Any) -> Any:
        from requests.auth import _basic_auth_str

        headers = dict(kwargs.pop("headers", {}))
        for _ in range(2):
            if repository in self._authorization:
                headers["Authorization"] = self._authorization[repository]
            body = kwargs.get("data")
            if hasattr(body, "seek"):
                body.seek(0)
            response = self.session.request(method, url, headers=headers, **kwargs)
            if response.status_code != 401 or self.credentials is None:
                return response
            challenge = response.headers.get("WWW-Authenticate", "")
            if challenge.startswith("Basic"):
                self._authorization[repository] = _basic_auth_str(*self.credentials)
            else:
                params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
                answer = self.session.get(
                    params["realm"],
                    params={"service": params["service"], "scope": f"repository:{repository}:pull,push"},
                    auth=self.credentials,
                )
                answer.raise_for_status()
                self._authorization[repository] = f"Bearer {answer.json()['token']}"
        return response

    def push_blob(self, repository: str, data: bytes | IO[bytes], digest: str | None = None) -> dict[str, Any]:
        """Upload a blob (monolithic POST + PUT); return its descriptor (digest, size)."""
        if digest is None:
            assert isinstance(data, bytes)
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
        size = len(data) if isinstance(data, bytes) else os.fstat(data.fileno()).st_size
        started = self._request("POST", f"{self.base}/v2/{repository}/blobs/uploads/", repository)
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        if location.startswith("/"):
            location = self.base + location
        separator = "&" if "?" in location else "?"
        done = self._request(
            "PUT",
            f"{location}{separator}digest={digest}",
            repository,
            data=data,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
        assert done.status_code == 201, done.text
        return {"digest": digest, "size": size}

    def push_manifest(self, repository: str, reference: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """PUT a manifest under a tag (or its digest); return its descriptor."""
        body = json.dumps(manifest, separators=(",", ":")).encode()
        media_type = str(manifest["mediaType"])
        response = self._request(
            "PUT",
            f"{self.base}/v2/{repository}/manifests/{reference}",
            repository,
            data=body,
            headers={"Content-Type": media_type},
        )
        assert response.status_code == 201, response.text
        return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(body).hexdigest(), "size": len(body)}


def _start(tmp_path_factory: pytest.TempPathFactory, auth: str) -> Iterator[Registry]:
    registry = Registry(tmp_path_factory.mktemp(f"registry-{auth}"), auth)
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def oci_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An anonymous registry."""
    yield from _start(tmp_path_factory, "none")


@pytest.fixture(scope="session")
def oci_registry_basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry with htpasswd basic auth (USER / PASSWORD)."""
    yield from _start(tmp_path_factory, "htpasswd")


@pytest.fixture(scope="session")
def oci_registry_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry with token auth; its token server grants USER / PASSWORD what they ask."""
    yield from _start(tmp_path_factory, "token")
