"""The resolver: registered model -> version -> model artifact -> the artifact's URI."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from storage_initializer import http as kit
from storage_initializer.config import env_str
from storage_initializer.errors import ConfigError, NotFoundError, StorageInitializerError
from storage_initializer.provider import ProviderContext, Resolution, Resolver, UriFormat
from storage_initializer.storage_spec import load_storage_spec

from .client import _ApiNotFound, _RegistryClient
from .settings import DEFAULT_STORAGE_CONFIG_DIR, RegistrySettings, settings_from_env
from .uri import _HOST_RE, _SCHEME_RE, PREFIX, RegistryUri, parse_uri

log = logging.getLogger("storage_initializer.model_registry")

#: Artifact states that say the bytes may be gone: such artifacts are never chosen.
GONE_ARTIFACT_STATES = frozenset({"MARKED_FOR_DELETION", "DELETED", "ABANDONED"})
#: KServe's storage-spec types and the ones whose URI starts with a bucket.
STORAGE_SPEC_TYPES = ("s3", "hdfs", "webhdfs")
STORAGE_BUCKET_TYPES = ("s3",)


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
            log.warning("ignoring query parameters %s of %s", ", ".join(parsed.ignored_params), uri)
        settings = self._settings()
        session = self._http(settings)
        target = self._locate(parsed, settings, session)
        client = _RegistryClient(target.base_url, settings, self.context, session)
        log.info(
            "model registry %s: registered model %r, version %s (read as %s)",
            target.base_url,
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
            resolution.uri,
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
        return f"in the model registry at {target.base_url}{note}"

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
                f"{what} has a uri without a scheme: {uri}", hint="expected e.g. s3://bucket/path"
            )
        if uri.lower().startswith(PREFIX) and self._settings().token:
            # Whoever can write the registry chooses this uri: following it would send the
            # registry token to whatever host it names. (Upstream never follows such a chain.)
            raise StorageInitializerError(
                f"{what} points to another model registry entry, {uri}: not followed while "
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
        log.info("applying storage key %r from %s: %s", key, source, resolved)
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
