"""HTTP to one registry: the distribution API with its auth dance.

Every request goes through :meth:`RegistryClient.get`, which answers a ``401``
challenge once (basic, or a bearer token from the realm) and then repeats
the request. ``requests`` follows redirects (blob GETs are redirected to
object storage) and drops ``Authorization`` when the host changes, so the
registry's credentials never reach the storage service.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Mapping
from typing import Any

from storage_initializer import http as kit
from storage_initializer.connect import retry_refused
from storage_initializer.errors import (
    AccessDeniedError,
    NotFoundError,
    StorageInitializerError,
    TransientError,
    network_error,
)
from storage_initializer_oci.auth import (
    ConfigLookup,
    TokenCache,
    basic_header,
    parse_challenge,
    refused,
)

log = logging.getLogger("storage_initializer.oci")

_FALSE = ("0", "false", "no", "off", "")


def insecure(env: Mapping[str, str]) -> bool:
    """``KSERVE_OCI_INSECURE_REGISTRY=true``: plain HTTP and unverified TLS, as in KServe."""
    return env.get("KSERVE_OCI_INSECURE_REGISTRY", "").strip().lower() not in _FALSE


def ca_bundle(env: Mapping[str, str]) -> bool | str:
    """TLS verification: off when insecure, else the usual CA variables, else the system store."""
    if insecure(env):
        return False
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
        if env.get(name):
            return env[name]
    return True


class RegistryClient:
    """Authenticated GETs against ``/v2/`` of one registry, one session per thread."""

    def __init__(
        self,
        registry: str,
        repository: str,
        env: Mapping[str, str],
        config: ConfigLookup,
        timeouts: tuple[float, float],
        pool: int,
    ) -> None:
        self.registry = registry
        self.repository = repository
        self.env = env
        self.config = config
        self.timeouts = timeouts
        self.pool = pool
        self.base = ("http://" if insecure(env) else "https://") + registry
        self.verify = ca_bundle(env)
        self.scope = f"repository:{repository}:pull"
        self._tokens = TokenCache()
        self._basic = False  # the registry asked for basic auth
        self._challenged = False  # the registry asked for credentials at all
        self._local = threading.local()

    # -- sessions ----------------------------------------------------------------
    def session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            import requests
            from requests.adapters import HTTPAdapter

            session = requests.Session()
            session.trust_env = False  # configuration comes from the provider's env
            session.verify = self.verify
            session.proxies = self._proxies()
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(4, self.pool), max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
        return session

    def _proxies(self) -> dict[str, str]:
        proxies = {}
        for scheme in ("http", "https", "all"):
            value = self.env.get(f"{scheme}_proxy") or self.env.get(f"{scheme.upper()}_PROXY")
            if value:
                proxies[scheme] = value
        return proxies

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()

    # -- requests ----------------------------------------------------------------
    def _send(self, method: str, url: str, headers: Mapping[str, str], **kwargs: Any) -> Any:
        import requests

        def send() -> Any:
            return self.session().request(
                method, url, headers=dict(headers), stream=True, timeout=self.timeouts, **kwargs
            )

        try:
            return retry_refused(send, url)
        except requests.exceptions.RequestException as exc:
            raise network_error(
                exc,
                f"registry {self.registry}",
                ca_hint="set SSL_CERT_FILE (or REQUESTS_CA_BUNDLE) to the registry's CA, "
                "or KSERVE_OCI_INSECURE_REGISTRY=true",
                hint="check the registry host and port in the URI",
            ) from None

    # -- requests the engine's event loop sends -----------------------------------
    def loop_headers(self) -> dict[str, str] | None:
        """The credentials a request sent by the engine's event loop carries, or ``None`` when
        it cannot be sent there: a proxy, or a registry that wants credentials not at hand (a
        token that expired): :meth:`get` answers the challenge instead."""
        if self._proxies():
            return None
        authorization = self._authorization()
        if authorization is None:
            return None if self._challenged else {}
        return {"Authorization": authorization}

    def refused_on_loop(self) -> None:
        """A loop request met ``401``: forget the token, so the next read negotiates a new one."""
        self._tokens.drop(self.scope)

    def tls_context(self) -> ssl.SSLContext:
        return kit.tls_context(self.verify, kit.certifi_bundle)

    def _authorization(self) -> str | None:
        token = self._tokens.get(self.scope)
        if token is not None:
            return f"Bearer {token}"
        if self._basic and self.config.credentials is not None:
            return basic_header(self.config.credentials)
        return None

    def get(self, path: str, headers: Mapping[str, str], what: str) -> Any:
        """GET ``/v2/<repository>/<path>``; a final 401/403 is an :class:`AccessDeniedError`."""
        url = f"{self.base}/v2/{self.repository}/{path}"
        for attempt in range(2):
            sent = dict(headers)
            authorization = self._authorization()
            if authorization:
                sent["Authorization"] = authorization
            response = self._send("GET", url, sent)
            if response.status_code != 401:
                break
            challenge = response.headers.get("WWW-Authenticate", "")
            self._challenged = True
            response.close()
            if attempt == 1 or not self._answer(challenge, what):
                raise refused(self.registry, what, self.config, 401)
        if response.status_code == 403:
            response.close()
            raise refused(self.registry, what, self.config, 403)
        return response

    def _answer(self, challenge: str, what: str) -> bool:
        """Prepare credentials for a 401 challenge; False when there is nothing to try."""
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if self.config.credentials is None or self._basic:
                return False
            self._basic = True
            return True
        if scheme == "bearer" and params.get("realm"):
            self._tokens.drop(self.scope)
            self._fetch_token(params, what)
            return True
        return False

    def _fetch_token(self, params: Mapping[str, str], what: str) -> None:
        scope = params.get("scope") or self.scope
        query = {"scope": scope}
        if params.get("service"):
            query["service"] = params["service"]
        creds = self.config.credentials
        realm = params["realm"]
        if creds is not None and creds.identity_token:
            form = {**query, "grant_type": "refresh_token", "refresh_token": creds.identity_token}
            form["client_id"] = "storage-initializer"
            response = self._send("POST", realm, {}, data=form)
        else:
            headers = {"Authorization": basic_header(creds)} if creds is not None and creds.username else {}
            response = self._send("GET", realm, headers, params=query)
        with response:
            if response.status_code in (401, 403):
                raise refused(self.registry, f"{what} (token service {realm})", self.config, response.status_code)
            if response.status_code >= 500 or response.status_code == 429:
                raise TransientError(f"token service {realm} answered HTTP {response.status_code}")
            if response.status_code != 200:
                raise AccessDeniedError(
                    f"{what}: token service {realm} answered HTTP {response.status_code}",
                    hint=self.config.describe(self.registry),
                )
            try:
                body = response.json()
            except ValueError:
                raise AccessDeniedError(f"token service {realm} answered no JSON") from None
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str) or not token:
            raise AccessDeniedError(f"token service {realm} answered no token")
        expires = body.get("expires_in")
        self._tokens.put(self.scope, token, float(expires) if isinstance(expires, (int, float)) else 60.0)
        log.debug("got a registry token for %s", scope)


def status_error(status: int, what: str, hint: str, reason: str = "") -> StorageInitializerError:
    """The error for an unexpected status of a manifest or blob request."""
    if status == 404:
        return NotFoundError(f"{what} not found (HTTP 404)", hint=hint)
    if status == 429 or status >= 500 or status == 408:
        return TransientError(f"{what}: the registry answered HTTP {status} {reason}".rstrip())
    return StorageInitializerError(f"{what}: the registry answered HTTP {status} {reason}".rstrip())
