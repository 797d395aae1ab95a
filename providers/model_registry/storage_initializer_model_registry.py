"""``model-registry://``: resolve a Kubeflow Model Registry entry to its model artifact's URI.

A resolver, not a downloader: it asks the registry (REST API v1alpha3) for the
registered model, the version and the version's model artifact, and hands the
artifact's URI (``s3://...``, ``gs://...``, ``hf://...``, ``https://...``)
back to the core, which downloads it with whichever installed provider serves
that URI, configured by that provider's usual environment.

Grammar (every form kubeflow/model-registry's Go initializer ``cmd/csi``
accepts)::

    model-registry://MODEL[/VERSION][?namespace=NS]
    model-registry://HOST[:PORT]/MODEL[/VERSION][?namespace=NS]

Three or more segments are always ``HOST/MODEL/VERSION`` (the version keeps any
further ``/``). Two segments ``A/B`` are ambiguous and resolved as upstream
does: ``A`` is a host when it equals ``MODEL_REGISTRY_BASE_URL`` or when a
``GET`` of its ``registered_models`` list answers as a registry (the probe
carries no token; ``401``/``403`` also count); otherwise the URI is
``MODEL/VERSION``. With ``?namespace=NS`` the registry is
``SERVICE.NS.DOMAIN:PORT`` and no probe is made. See README.md.

Beyond upstream: without a version the newest LIVE version is taken (ARCHIVED
ones are skipped); the newest *model* artifact is taken even when a doc
artifact is newer; every list follows ``nextPageToken``; bearer tokens, CA
bundles and TLS verification are configurable; an artifact's ``storageKey`` /
``storagePath`` are applied as KServe's storage spec would.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from storage_initializer import http as kit
from storage_initializer.config import env_bool, env_int, env_number, env_str
from storage_initializer.errors import (
    AccessDeniedError,
    ConfigError,
    NotFoundError,
    StorageInitializerError,
    TransientError,
    UsageError,
)
from storage_initializer.provider import ProviderContext, Resolution, Resolver, UriFormat
from storage_initializer.redact import redact, register_secret
from storage_initializer.storage_spec import load_storage_spec

log = logging.getLogger("storage_initializer.model_registry")

PREFIX = "model-registry://"
API_PREFIX = "/api/model_registry/v1alpha3"
FORM_HINT = "expected model-registry://[HOST[:PORT]/]MODEL[/VERSION][?namespace=NS]"

DEFAULT_BASE_URL = "localhost:8080"
DEFAULT_SCHEME = "http"
DEFAULT_SERVICE_NAME = "model-registry-service"
DEFAULT_CLUSTER_DOMAIN = "svc.cluster.local"
DEFAULT_NAMESPACE_PORT = "8080"
#: Where KServe's constants put the ``storage-config`` secret (one file per key).
DEFAULT_STORAGE_CONFIG_DIR = "/mnt/storage-secret"

#: Artifact states that say the bytes may be gone: such artifacts are never chosen.
GONE_ARTIFACT_STATES = frozenset({"MARKED_FOR_DELETION", "DELETED", "ABANDONED"})
#: KServe's storage-spec types and the ones whose URI starts with a bucket.
STORAGE_SPEC_TYPES = ("s3", "hdfs", "webhdfs")
STORAGE_BUCKET_TYPES = ("s3",)
MAX_PAGES = 10_000

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_RE = re.compile(rf"^(?:\[[0-9A-Fa-f:.]+\]|{_LABEL}(?:\.{_LABEL})*)(?::[0-9]{{1,5}})?$")
_NAMESPACE_RE = re.compile(r"^[a-zA-Z0-9_-]+$")  # upstream's check
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


# -- the URI grammar -------------------------------------------------------------


@dataclass(frozen=True)
class RegistryUri:
    """A ``model-registry://`` URI split into its path segments and namespace (no network).

    ``segments`` has one to three entries, percent-decoded; the third keeps any
    further ``/`` (upstream splits into at most three parts).
    """

    segments: tuple[str, ...]
    namespace: str | None = None
    ignored_params: tuple[str, ...] = ()


def parse_uri(uri: str) -> RegistryUri:
    """Parse the grammar; raise :class:`UsageError` naming the expected form."""
    if not uri.startswith(PREFIX):
        raise UsageError(f"{redact(uri)} is not a model-registry:// URI", hint=FORM_HINT)
    rest, has_query, query = uri[len(PREFIX) :].partition("?")
    namespace: str | None = None
    ignored: tuple[str, ...] = ()
    if has_query:
        params = parse_qs(query, keep_blank_values=True)
        values = params.pop("namespace", [])
        if len(values) > 1:
            raise UsageError(f"{redact(uri)} gives namespace more than once", hint=FORM_HINT)
        if values and values[0]:
            namespace = values[0]
            if not _NAMESPACE_RE.match(namespace):
                raise UsageError(
                    f"{redact(uri)}: namespace {namespace!r} is not a Kubernetes namespace name",
                    hint="use letters, digits, '-' or '_'",
                )
        ignored = tuple(sorted(params))
    if rest.endswith("/"):
        rest = rest[:-1]
    raw = rest.split("/", 2)
    if not rest or any(not part for part in raw[:2]) or (len(raw) == 3 and not raw[2].strip("/")):
        raise UsageError(f"{redact(uri)} has an empty model, version or host", hint=FORM_HINT)
    if len(raw) >= 2 and ":" in raw[0]:  # HOST:PORT/... : a port must be a port
        host, _, port = raw[0].rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"{redact(uri)} has an invalid registry port {port!r}", hint=FORM_HINT)
    return RegistryUri(tuple(unquote(part) for part in raw), namespace, ignored)


# -- settings --------------------------------------------------------------------


@dataclass(frozen=True)
class RegistrySettings:
    """Every option of this provider, read from the environment in one place."""

    base_host: str = DEFAULT_BASE_URL
    base_path: str = ""
    scheme: str = DEFAULT_SCHEME
    service_name: str = DEFAULT_SERVICE_NAME
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    token: str | None = field(default=None, repr=False)
    verify: bool | str = True
    storage_config_dir: str = DEFAULT_STORAGE_CONFIG_DIR
    retries: int = 5
    retry_backoff: float = 0.5

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.base_host}{self.base_path}"

    def namespace_host(self, namespace: str) -> str:
        """``SERVICE.NS.DOMAIN:PORT``, the port taken from the base URL (8080 without one)."""
        port = _port_of(self.base_host) or DEFAULT_NAMESPACE_PORT
        return f"{self.service_name}.{namespace}.{self.cluster_domain}:{port}"


def _port_of(host: str) -> str | None:
    match = re.search(r":([0-9]+)$", host)
    return match.group(1) if match and not host.endswith("]") else None


def settings_from_env(env: Mapping[str, str]) -> RegistrySettings:
    """Read and validate ``MODEL_REGISTRY_*`` (and the shared proxy/CA/retry) variables."""
    raw_base = env_str(env, "MODEL_REGISTRY_BASE_URL") or DEFAULT_BASE_URL
    scheme_env = env_str(env, "MODEL_REGISTRY_SCHEME")
    if "://" in raw_base:
        parts = urlsplit(raw_base)
        scheme, host, path = parts.scheme.lower(), parts.netloc, parts.path.rstrip("/")
        if scheme_env and scheme_env.lower() != scheme:
            raise ConfigError(
                f"MODEL_REGISTRY_BASE_URL={raw_base!r} says {scheme} but MODEL_REGISTRY_SCHEME={scheme_env!r}",
                hint="drop one of them",
            )
    else:
        host, slash, path = raw_base.partition("/")
        path = f"/{path.rstrip('/')}" if slash and path.strip("/") else ""
        scheme = (scheme_env or DEFAULT_SCHEME).lower()
    if scheme not in ("http", "https"):
        raise ConfigError(f"MODEL_REGISTRY_SCHEME={scheme!r} is not supported", hint="use http or https")
    if not _HOST_RE.match(host):
        raise ConfigError(
            f"MODEL_REGISTRY_BASE_URL={raw_base!r} is not HOST[:PORT]", hint="e.g. model-registry-service:8080"
        )

    return RegistrySettings(
        base_host=host,
        base_path=path,
        scheme=scheme,
        service_name=env_str(env, "MODEL_REGISTRY_SERVICE_NAME") or DEFAULT_SERVICE_NAME,
        cluster_domain=env_str(env, "MODEL_REGISTRY_CLUSTER_DOMAIN") or DEFAULT_CLUSTER_DOMAIN,
        token=_read_token(env),
        verify=_verify_setting(env),
        storage_config_dir=env_str(env, "MODEL_REGISTRY_STORAGE_CONFIG_DIR") or DEFAULT_STORAGE_CONFIG_DIR,
        retries=env_int(env, "STORAGE_INITIALIZER_RETRIES", 5, minimum=0),
        retry_backoff=env_number(env, "STORAGE_INITIALIZER_RETRY_BACKOFF", 0.5, minimum=0),
    )


def _read_token(env: Mapping[str, str]) -> str | None:
    """``MODEL_REGISTRY_TOKEN``, else the content of ``MODEL_REGISTRY_TOKEN_FILE``."""
    token = env_str(env, "MODEL_REGISTRY_TOKEN")
    if token is None:
        path = env_str(env, "MODEL_REGISTRY_TOKEN_FILE")
        if path is None:
            return None
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"MODEL_REGISTRY_TOKEN_FILE={path!r} cannot be read: {exc.strerror}",
                hint="mount the token (e.g. the service-account token) at that path",
            ) from None
        if not token:
            raise ConfigError(f"MODEL_REGISTRY_TOKEN_FILE={path!r} is empty")
    register_secret(token)
    return token


def _verify_setting(env: Mapping[str, str]) -> bool | str:
    """TLS verification: off, a CA bundle file, or the system trust store."""
    if not env_bool(env, "MODEL_REGISTRY_VERIFY_SSL", True):
        log.warning("TLS certificate verification is disabled for the model registry")
        return False
    bundle = env_str(env, "MODEL_REGISTRY_CA_BUNDLE")
    if bundle is not None and not Path(bundle).is_file():
        raise ConfigError(f"MODEL_REGISTRY_CA_BUNDLE={bundle!r} is not a file")
    verify = kit.ca_bundle(env, bundle)
    if verify is not True:
        return verify
    # KServe's cluster-wide CA bundle, mounted into storage initializers.
    if env_str(env, "CA_BUNDLE_CONFIGMAP_NAME"):
        mounted = Path(env_str(env, "CA_BUNDLE_VOLUME_MOUNT_POINT") or "/etc/ssl/custom-certs") / "cabundle.crt"
        if mounted.is_file():
            return str(mounted)
    return True


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

    def _request(self, url: str, params: Mapping[str, str], *, token: str | None, timeout: tuple[float, float]) -> Any:
        import requests

        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            return self.session.get(url, params=params, headers=headers, timeout=timeout)
        except requests.exceptions.SSLError as exc:
            raise StorageInitializerError(
                f"TLS verification failed for the model registry at {redact(self.base_url)}: {exc}",
                hint="set MODEL_REGISTRY_CA_BUNDLE to the CA that signed its certificate",
            ) from None
        except requests.exceptions.InvalidURL as exc:
            raise UsageError(f"invalid model registry URL {redact(url)}: {exc}") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise TransientError(
                f"cannot reach the model registry at {redact(self.base_url)}: {type(exc).__name__}",
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
        where = redact(url)
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
                raise StorageInitializerError(f"{redact(self.base_url)}{API_PREFIX}{path} did not answer a list")
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
            response = self._request(url, {"pageSize": "1"}, token=None, timeout=timeout)
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


# -- choosing the version and the artifact --------------------------------------------


def _newness(entity: Mapping[str, Any]) -> tuple[int, int]:
    """Sort key "newest": creation time, then id (both strings of digits on the wire)."""

    def as_int(value: Any) -> int:
        try:
            return int(str(value))
        except ValueError:
            return 0

    return as_int(entity.get("createTimeSinceEpoch", 0)), as_int(entity.get("id", 0))


@dataclass(frozen=True)
class _Target:
    base_url: str
    model: str
    version: str | None
    form: str
    ambiguous: bool = False


class ModelRegistryProvider(Resolver):
    """Resolves ``model-registry://`` URIs to the URI of the model artifact."""

    uri_formats = (UriFormat(prefix=PREFIX),)
    requires = ("requests",)
    description = "Kubeflow Model Registry: resolves to the model artifact's URI (s3, gs, hf, https, ...)"

    def __init__(self, context: ProviderContext) -> None:
        super().__init__(context)
        self._session: Any = None

    # -- plumbing --------------------------------------------------------------
    def _settings(self) -> RegistrySettings:
        return settings_from_env(self.env)

    def _http(self, settings: RegistrySettings) -> Any:
        if self._session is None:
            # Proxies (with NO_PROXY) and CA from self.env by the kit's one rule.
            self._session = kit.new_session(self.env, pool_size=2, verify=settings.verify)
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- the resolver contract -------------------------------------------------
    def validate(self, uri: str) -> None:
        parse_uri(uri)

    def resolve(self, uri: str) -> str | Resolution:
        parsed = parse_uri(uri)
        if parsed.ignored_params:
            log.warning("ignoring query parameters %s of %s", ", ".join(parsed.ignored_params), redact(uri))
        settings = self._settings()
        session = self._http(settings)
        target = self._locate(parsed, settings, session)
        client = _RegistryClient(target.base_url, settings, self.context, session)
        log.info(
            "model registry %s: registered model %r, version %s (read as %s)",
            redact(target.base_url),
            target.model,
            repr(target.version) if target.version is not None else "newest LIVE",
            target.form,
        )
        model = self._find_model(client, target)
        version = (
            self._find_version(client, target, model)
            if target.version is not None
            else self._latest_live_version(client, target, model)
        )
        artifact = self._model_artifact(client, target, model, version)
        resolution = self._artifact_target(artifact, target, version)
        log.info(
            "model registry: %s version %r (id %s) -> model artifact %s -> %s",
            target.model,
            version.get("name"),
            version.get("id"),
            artifact.get("id"),
            redact(resolution.uri),
        )
        return resolution if resolution.env else resolution.uri

    # -- where is the registry, what is the model -------------------------------
    def _locate(self, parsed: RegistryUri, settings: RegistrySettings, session: Any) -> _Target:
        segments = parsed.segments
        if parsed.namespace is not None:
            host = settings.namespace_host(parsed.namespace)
            base = f"{settings.scheme}://{host}"
            if len(segments) >= 3:
                log.info(
                    "namespace %s selects the registry; host %s in the URI is ignored", parsed.namespace, segments[0]
                )
                return _Target(base, segments[1], segments[2], "HOST/MODEL/VERSION")
            if len(segments) == 2 and segments[0] == host:
                return _Target(base, segments[1], None, "HOST/MODEL")
            if len(segments) == 2:
                return _Target(base, segments[0], segments[1], "MODEL/VERSION")
            return _Target(base, segments[0], None, "MODEL")
        if len(segments) >= 3:
            return _Target(f"{settings.scheme}://{segments[0]}", segments[1], segments[2], "HOST/MODEL/VERSION")
        if len(segments) == 1:
            return _Target(settings.base_url, segments[0], None, "MODEL")
        first, second = segments
        if first == settings.base_host:
            return _Target(settings.base_url, second, None, "HOST/MODEL")
        if _HOST_RE.match(first):
            candidate = f"{settings.scheme}://{first}"
            if _RegistryClient(candidate, settings, self.context, session).probe():
                log.info("%s answers as a model registry: reading the URI as HOST/MODEL", first)
                return _Target(candidate, second, None, "HOST/MODEL", ambiguous=True)
            log.info("%s does not answer as a model registry: reading the URI as MODEL/VERSION", first)
        return _Target(settings.base_url, first, second, "MODEL/VERSION", ambiguous=True)

    def _where(self, target: _Target) -> str:
        note = ""
        if target.ambiguous:
            note = f" (the URI was read as {target.form})"
        return f"in the model registry at {redact(target.base_url)}{note}"

    def _find_model(self, client: _RegistryClient, target: _Target) -> dict[str, Any]:
        try:
            model = client.get("/registered_model", {"name": target.model})
        except _ApiNotFound:
            hint = "check the model name (names are case-sensitive)"
            if target.ambiguous and target.form == "MODEL/VERSION":
                hint += f"; if {target.model} is the registry's host, it did not answer as a model registry"
            raise NotFoundError(
                f"registered model {target.model!r} not found {self._where(target)}", hint=hint
            ) from None
        if not isinstance(model, dict) or not model.get("id"):
            raise StorageInitializerError(f"the model registry answered no id for registered model {target.model!r}")
        if model.get("state") == "ARCHIVED":
            log.warning("registered model %r is ARCHIVED", target.model)
        return model

    def _find_version(self, client: _RegistryClient, target: _Target, model: Mapping[str, Any]) -> dict[str, Any]:
        assert target.version is not None
        try:
            version = client.get("/model_version", {"name": target.version, "parentResourceId": str(model["id"])})
        except _ApiNotFound:
            raise NotFoundError(
                f"version {target.version!r} of registered model {target.model!r} not found {self._where(target)}",
                hint=self._available_versions(client, model),
            ) from None
        if not isinstance(version, dict) or not version.get("id"):
            raise StorageInitializerError(f"the model registry answered no id for version {target.version!r}")
        parent = version.get("registeredModelId")
        if parent is not None and str(parent) != str(model["id"]):
            raise StorageInitializerError(
                f"the model registry answered a version of another model for {target.model!r}/{target.version!r}"
            )
        if version.get("state") == "ARCHIVED":
            log.warning("version %r of %r is ARCHIVED; using it because the URI names it", target.version, target.model)
        return version

    def _available_versions(self, client: _RegistryClient, model: Mapping[str, Any]) -> str:
        names: list[str] = []
        try:
            for version in client.iter_list(f"/registered_models/{model['id']}/versions", {}):
                names.append(f"{version.get('name')} ({version.get('state', 'LIVE')})")
                if len(names) > 20:
                    names[-1] = "..."
                    break
        except StorageInitializerError:
            return "check the version name"
        return f"versions: {', '.join(names)}" if names else "the model has no versions"

    def _latest_live_version(
        self, client: _RegistryClient, target: _Target, model: Mapping[str, Any]
    ) -> dict[str, Any]:
        best: dict[str, Any] | None = None
        total = archived = 0
        # Every page is read and the newest is computed here, so the server's order does not
        # matter; only sortOrder is sent, as upstream does (it notes orderBy is not supported).
        params = {"sortOrder": "DESC"}
        for version in client.iter_list(f"/registered_models/{model['id']}/versions", params):
            total += 1
            if version.get("state", "LIVE") != "LIVE":
                archived += 1
                continue
            if best is None or _newness(version) > _newness(best):
                best = version
        if best is None:
            what = f"has no versions {self._where(target)}"
            if total:
                what = f"has no LIVE version ({archived} ARCHIVED) {self._where(target)}"
            raise NotFoundError(
                f"registered model {target.model!r} {what}",
                hint=f"name a version: model-registry://{target.model}/VERSION" if total else None,
            )
        log.info(
            "newest LIVE version of %r is %r (id %s) among %d versions, %d ARCHIVED skipped",
            target.model,
            best.get("name"),
            best.get("id"),
            total,
            archived,
        )
        return best

    def _model_artifact(
        self, client: _RegistryClient, target: _Target, model: Mapping[str, Any], version: Mapping[str, Any]
    ) -> dict[str, Any]:
        best: dict[str, Any] | None = None
        others = gone = 0
        params = {"artifactType": "model-artifact", "orderBy": "CREATE_TIME", "sortOrder": "DESC"}
        for artifact in client.iter_list(f"/model_versions/{version['id']}/artifacts", params):
            if artifact.get("artifactType") != "model-artifact":
                others += 1  # a server that ignores artifactType
            elif artifact.get("state") in GONE_ARTIFACT_STATES:
                gone += 1
            elif best is None or _newness(artifact) > _newness(best):
                best = artifact
        if best is None:
            detail = f" ({gone} marked deleted or abandoned)" if gone else ""
            raise NotFoundError(
                f"version {version.get('name')!r} of registered model {target.model!r} has no model artifact"
                f"{detail} {self._where(target)}",
                hint="register a model artifact (artifactType model-artifact) with a uri for this version",
            )
        if others:
            log.info("skipped %d artifacts that are not model artifacts", others)
        return best

    # -- the artifact's location -------------------------------------------------
    def _artifact_target(self, artifact: Mapping[str, Any], target: _Target, version: Mapping[str, Any]) -> Resolution:
        uri = str(artifact.get("uri") or "").strip()
        from_spec = self._storage_spec(artifact, uri)
        if from_spec is not None:
            return from_spec
        what = f"model artifact {artifact.get('id')} of {target.model!r} version {version.get('name')!r}"
        if not uri:
            raise StorageInitializerError(
                f"{what} has no uri",
                hint="set the artifact's uri, or its storageKey/storagePath with a storage config (see README)",
            )
        if not _SCHEME_RE.match(uri):
            raise StorageInitializerError(
                f"{what} has a uri without a scheme: {redact(uri)}", hint="expected e.g. s3://bucket/path"
            )
        if uri.lower().startswith(PREFIX) and self._settings().token:
            # Whoever can write the registry chooses this uri: following it would send the
            # registry token to whatever host it names. (Upstream never follows such a chain.)
            raise StorageInitializerError(
                f"{what} points to another model registry entry, {redact(uri)}: not followed while "
                "MODEL_REGISTRY_TOKEN / MODEL_REGISTRY_TOKEN_FILE is set (the token would go to the "
                "registry that uri names)",
                hint="set the artifact's uri to the model's storage URI (s3://, gs://, hf://, https://...)",
            )
        return self._split_s3_query(uri)

    def _split_s3_query(self, uri: str) -> Resolution:
        """``s3://b/p?endpoint=E&defaultRegion=R`` (the registry client's ``s3_uri_from``) -> env."""
        base, has_query, query = uri.partition("?")
        if not uri.startswith("s3://") or not has_query:
            return Resolution(uri)
        params = parse_qs(query, keep_blank_values=True)
        names = {"endpoint": "AWS_ENDPOINT_URL", "defaultRegion": "AWS_DEFAULT_REGION"}
        if not params or not set(params) <= set(names):
            return Resolution(uri)
        env: dict[str, str] = {}
        for param, variable in names.items():
            value = (params.get(param) or [""])[0]
            if not value:
                continue
            if env_str(self.env, variable):
                log.info("keeping %s from the environment (the artifact's uri says %s)", variable, value)
            else:
                env[variable] = value
        return Resolution(base, env)

    def _storage_spec(self, artifact: Mapping[str, Any], uri: str) -> Resolution | None:
        """Apply ``storageKey`` / ``storagePath`` as KServe's storage spec would, when configured.

        The key names an entry of the ``storage-config`` secret (``default``
        when only a path is given); its JSON comes from the mounted secret
        (``$MODEL_REGISTRY_STORAGE_CONFIG_DIR/KEY``) or ``STORAGE_CONFIG``.
        ``STORAGE_OVERRIDE_CONFIG`` is merged over it; the URI is
        ``s3://BUCKET/PATH`` (``hdfs://PATH``, ``webhdfs://PATH``) and the
        entry is passed on as ``STORAGE_CONFIG``.
        """
        path = str(artifact.get("storagePath") or "").strip()
        key = str(artifact.get("storageKey") or "").strip()
        if not path:
            if key:
                log.info("model artifact has storageKey %r but no storagePath: using its uri", key)
            return None
        key = key or "default"
        found = self._storage_config(key)
        if found is None:
            where = f"{self._storage_config_dir()}/{key} or STORAGE_CONFIG"
            if uri:
                log.warning("no storage config for storage key %r (looked at %s): using the artifact's uri", key, where)
                return None
            raise ConfigError(
                f"model artifact {artifact.get('id')} has storage key {key!r} and path {path!r} but no uri, "
                f"and no storage config was found at {where}",
                hint="mount the storage-config secret at MODEL_REGISTRY_STORAGE_CONFIG_DIR or set STORAGE_CONFIG",
            )
        raw, source = found
        merged = load_storage_spec(
            {"STORAGE_CONFIG": raw, "STORAGE_OVERRIDE_CONFIG": self.env.get("STORAGE_OVERRIDE_CONFIG", "")}
        )
        storage_type = str(merged.get("type", "")).lower()
        if storage_type not in STORAGE_SPEC_TYPES:
            raise ConfigError(
                f"storage key {key!r} ({source}) has type {storage_type or 'none'!r}",
                hint=f"KServe's storage spec supports {', '.join(STORAGE_SPEC_TYPES)}",
            )
        if storage_type in STORAGE_BUCKET_TYPES:
            bucket = str(merged.get("bucket") or "").strip()
            if not bucket:
                raise ConfigError(f"storage key {key!r} ({source}) is of type {storage_type} but names no bucket")
            resolved = f"{storage_type}://{bucket}/{path.lstrip('/')}"
        else:
            resolved = f"{storage_type}://{path}"
        log.info("applying storage key %r from %s: %s", key, source, redact(resolved))
        return Resolution(resolved, {"STORAGE_CONFIG": raw})

    def _storage_config_dir(self) -> str:
        return env_str(self.env, "MODEL_REGISTRY_STORAGE_CONFIG_DIR") or DEFAULT_STORAGE_CONFIG_DIR

    def _storage_config(self, key: str) -> tuple[str, str] | None:
        """The JSON text of storage key ``key`` and where it came from, or ``None``."""
        if "/" not in key and key not in (".", ".."):
            candidate = Path(self._storage_config_dir()) / key
            try:
                text = candidate.read_text()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise ConfigError(f"cannot read storage config {candidate}: {exc.strerror}") from None
            else:
                load_storage_spec({"STORAGE_CONFIG": text})  # validates the JSON, registers secrets
                return text, str(candidate)
        raw = env_str(self.env, "STORAGE_CONFIG")
        if raw is not None:
            log.info("using STORAGE_CONFIG for storage key %r", key)
            return raw, "STORAGE_CONFIG"
        return None


__all__ = ["ModelRegistryProvider", "RegistrySettings", "RegistryUri", "parse_uri", "settings_from_env"]
