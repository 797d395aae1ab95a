"""The registry's REST API (v1alpha3): typed errors, retries that SIGTERM ends, paging."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Mapping
from typing import Any

from storage_initializer import http as kit
from storage_initializer.connect import retry_refused
from storage_initializer.errors import AccessDeniedError, StorageInitializerError, network_error
from storage_initializer.provider import ProviderContext

from .settings import RegistrySettings

log = logging.getLogger("storage_initializer.model_registry")

API_PREFIX = "/api/model_registry/v1alpha3"
MAX_PAGES = 10_000


# -- the REST client ---------------------------------------------------------------


class _ApiNotFound(Exception):
    """A JSON ``404`` from the registry (the entity does not exist)."""


class _RegistryClient:
    """GETs against one registry with retries, paging and error mapping."""

    def __init__(self, base_url: str, settings: RegistrySettings, context: ProviderContext, session: Any) -> None:
        self.base_url = base_url
        self.settings = settings
        self.context = context
        self.session = session

    def _request(
        self,
        url: str,
        params: Mapping[str, str],
        *,
        token: str | None,
        timeout: tuple[float, float],
        retry: bool = True,
    ) -> Any:
        """One GET; a refused connection is tried again for a few seconds unless ``retry`` is off (a probe)."""
        import requests

        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            if not retry:
                return self.session.get(url, params=params, headers=headers, timeout=timeout)
            return retry_refused(lambda: self.session.get(url, params=params, headers=headers, timeout=timeout), url)
        except requests.exceptions.RequestException as exc:
            raise network_error(
                exc,
                f"the model registry at {self.base_url}",
                ca_hint="set MODEL_REGISTRY_CA_BUNDLE to the CA that signed its certificate",
                hint="check MODEL_REGISTRY_BASE_URL / MODEL_REGISTRY_SCHEME or the URI's host",
            ) from None

    def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET ``API_PREFIX + path`` and return its JSON; retry transient failures."""
        url = f"{self.base_url}{API_PREFIX}{path}"
        timeout = (self.context.connect_timeout, self.context.stall_timeout)
        attempt = 0
        while True:
            try:
                response = self._request(url, params or {}, token=self.settings.token, timeout=timeout)
                return self._decode(response, url)
            except StorageInitializerError as exc:
                if not exc.retryable or attempt >= self.settings.retries:
                    raise
                delay = self.settings.retry_backoff * (2**attempt) * random.uniform(0.5, 1.0)
                delay = max(delay, getattr(exc, "retry_after", None) or 0.0)
                log.warning("model registry: %s; retrying in %.1fs", exc, delay)
                kit.sleep(delay, self.context.cancelled)  # a SIGTERM ends the wait
                attempt += 1

    def _decode(self, response: Any, url: str) -> Any:
        status = int(response.status_code)
        content_type = response.headers.get("Content-Type", "")
        body: Any = None
        if "json" in content_type.lower():
            try:
                body = response.json()
            except ValueError:
                body = None
        message = body.get("message") if isinstance(body, dict) else None
        detail = f": {message}" if isinstance(message, str) and message else ""
        where = url
        if status == 200:
            if body is None:
                raise StorageInitializerError(
                    f"{where} did not answer JSON ({content_type or 'no content type'})",
                    hint="is this a Kubeflow Model Registry (REST API v1alpha3)?",
                )
            return body
        if status == 404 and isinstance(message, str):
            raise _ApiNotFound(message)
        if status in (401, 403):
            raise AccessDeniedError(
                f"the model registry refused {where} (HTTP {status}){detail}",
                hint="set MODEL_REGISTRY_TOKEN or MODEL_REGISTRY_TOKEN_FILE to a token the registry accepts"
                if not self.settings.token
                else "the token in MODEL_REGISTRY_TOKEN / MODEL_REGISTRY_TOKEN_FILE was not accepted",
            )
        if kit.is_transient_status(status):
            raise kit.transient_error(
                f"the model registry answered HTTP {status} for {where}{detail}", response.headers
            )
        if status == 404:
            raise StorageInitializerError(
                f"{where} does not exist (HTTP 404, not a registry answer)",
                hint="is MODEL_REGISTRY_BASE_URL (or the URI's host) a Kubeflow Model Registry?",
            )
        raise StorageInitializerError(f"the model registry answered HTTP {status} for {where}{detail}")

    def iter_list(self, path: str, params: Mapping[str, str]) -> Iterator[dict[str, Any]]:
        """Every item of a list endpoint, following ``nextPageToken`` page by page."""
        token = ""
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            query = dict(params)
            if token:
                query["nextPageToken"] = token
            body = self.get(path, query)
            items = body.get("items") if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise StorageInitializerError(f"{self.base_url}{API_PREFIX}{path} did not answer a list")
            yield from (item for item in items if isinstance(item, dict))
            token = str(body.get("nextPageToken") or "")
            if not token:
                return
            if token in seen:
                raise StorageInitializerError(f"the model registry repeated a nextPageToken listing {path}")
            seen.add(token)
        raise StorageInitializerError(f"the model registry listed more than {MAX_PAGES} pages for {path}")

    def probe(self) -> bool:
        """Does this host answer as a model registry? (No token is sent; no retries.)"""
        url = f"{self.base_url}{API_PREFIX}/registered_models"
        timeout = (min(self.context.connect_timeout, 5.0), min(self.context.stall_timeout, 10.0))
        try:
            response = self._request(url, {"pageSize": "1"}, token=None, timeout=timeout, retry=False)
        except StorageInitializerError:
            return False
        with response:
            if response.status_code in (401, 403):
                return True
            if response.status_code != 200:
                return False
            try:
                body = response.json()
            except ValueError:
                return False
        return isinstance(body, dict) and isinstance(body.get("items"), list)
