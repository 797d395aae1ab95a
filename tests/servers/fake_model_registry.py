"""A faithful fake of the Kubeflow Model Registry REST API (v1alpha3), read side.

No real Model Registry can run here (it needs a database and the Go server), so
this module serves the read endpoints a storage initializer uses, exactly as
``/work/shared/specs/model-registry.openapi.yaml`` describes them and as the
real server (``kubeflow/model-registry``, embedmd back end) behaves:

* entities are JSON objects with the spec's field names; ids and timestamps are
  *strings* (``"7"``, ``"1700000001000"``); registered models and model
  versions share one id sequence (both are MLMD contexts), artifacts another;
* lists carry ``items``, ``size``, ``pageSize`` and ``nextPageToken`` (``""``
  on the last page); the token is the server's cursor, base64 of
  ``"<id>:<order-by value>"``; ordering defaults to ``ID`` ``ASC``;
* errors are the spec's ``Error`` object with ``code`` set to the HTTP status
  text and ``message`` the server's wording (``...: not found``); invalid
  enum/integer query parameters are ``400``; an unknown route is chi's
  ``404 page not found`` in text/plain.

Deliberate differences, all of them making a client's life *harder*:

* ``default_page_size`` (2 by default) applies when a list request sends no
  ``pageSize``; the real server then returns everything (page size 0). Set it to
  0 for the real behaviour. Small pages make every client follow
  ``nextPageToken``.
* ``require_token`` puts the registry behind bearer authentication (in Kubeflow
  a kube-rbac-proxy or Istio does this in front of the server); a missing or
  wrong token is ``401`` with the spec's ``Error`` body, or kube-rbac-proxy's
  ``Unauthorized`` text when ``auth_failure_style = "kube-rbac-proxy"``.
* :meth:`FakeModelRegistry.add_fault` injects status codes (``503`` from a
  gateway, ...) for the next N matching requests.
* Only reads are served: ``POST``/``PATCH`` answer ``405``. Seed data with the
  Python helpers instead.
* ``filterQuery`` supports ``field = 'value'`` / ``!=`` terms joined by ``AND``;
  anything else is ``400`` (the real server's answer to a query it cannot
  parse).

It also accepts absolute-form request targets (``GET http://host/... HTTP/1.1``),
i.e. it can be used as the HTTP proxy of a client: requests for hosts listed in
:attr:`FakeModelRegistry.served_hosts` are answered as the registry, any other
host gets ``502 Bad Gateway`` as from a proxy that cannot resolve it. Tests use
this to check which host a client addressed (``svc.ns.svc.cluster.local``)
without any DNS lookup leaving the machine.
"""

from __future__ import annotations

import base64
import glob
import json
import re
import ssl
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.servers.base import FakeHandler, FakeServer, Fault, Faults, Request, RequestLog, tls_context

API_PREFIX = "/api/model_registry/v1alpha3"
SPEC_PATH = Path("/work/shared/specs/model-registry.openapi.yaml")

JSON_CONTENT_TYPE = "application/json; charset=UTF-8"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"

ORDER_BY_VALUES = ("CREATE_TIME", "LAST_UPDATE_TIME", "ID")
SORT_ORDER_VALUES = ("ASC", "DESC")
ARTIFACT_TYPES = ("model-artifact", "doc-artifact", "dataset-artifact", "metric", "parameter")
VERSION_STATES = ("LIVE", "ARCHIVED")
ARTIFACT_STATES = ("UNKNOWN", "PENDING", "LIVE", "MARKED_FOR_DELETION", "DELETED", "ABANDONED", "REFERENCE")

#: Fields a caller may set on each entity (camelCase, as in the spec).
_COMMON_FIELDS = {"name", "description", "externalId", "customProperties"}
_MODEL_FIELDS = _COMMON_FIELDS | {
    "owner",
    "state",
    "readme",
    "maturity",
    "language",
    "tasks",
    "provider",
    "logo",
    "license",
    "licenseLink",
    "libraryName",
}
_VERSION_FIELDS = _COMMON_FIELDS | {"state", "author"}
_ARTIFACT_FIELDS = _COMMON_FIELDS | {
    "artifactType",
    "uri",
    "state",
    "modelFormatName",
    "modelFormatVersion",
    "storageKey",
    "storagePath",
    "serviceAccountName",
    "modelSourceKind",
    "modelSourceClass",
    "modelSourceGroup",
    "modelSourceId",
    "modelSourceName",
    "experimentId",
    "experimentRunId",
}
_TIME_ALIASES = {
    "create_time": "createTimeSinceEpoch",
    "createTimeSinceEpoch": "createTimeSinceEpoch",
    "update_time": "lastUpdateTimeSinceEpoch",
    "lastUpdateTimeSinceEpoch": "lastUpdateTimeSinceEpoch",
}
_ORDER_KEYS = {
    "ID": "id",
    "CREATE_TIME": "createTimeSinceEpoch",
    "LAST_UPDATE_TIME": "lastUpdateTimeSinceEpoch",
}


#: One request as the fake received it: the shared record (tag ``host``: the request
#: target's host, or the ``Host`` header).
RecordedRequest = Request


@dataclass(frozen=True)
class _FaultAnswer:
    body: bytes | None
    content_type: str
    headers: Mapping[str, str]


class ApiError(Exception):
    """An error answer: the spec's ``Error`` body with the server's wording."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _bad_request(message: str) -> ApiError:
    return ApiError(400, f"{message}: bad request")


def _not_found(message: str) -> ApiError:
    return ApiError(404, f"{message}: not found")


class FakeModelRegistry:
    """A threaded HTTP(S) server on 127.0.0.1 answering as a Model Registry.

    Seed it with :meth:`add_model` (and :meth:`add_version` /
    :meth:`add_artifact`); read :attr:`requests` to assert what a client sent.
    """

    def __init__(
        self,
        *,
        default_page_size: int = 2,
        require_token: str | None = None,
        tls: bool = False,
    ) -> None:
        self.default_page_size = default_page_size
        self.require_token = require_token
        self.auth_failure_style = "spec"
        self._log = RequestLog()
        self._lock = threading.RLock()
        self._contexts: dict[int, dict[str, Any]] = {}  # registered models and versions
        self._artifacts: dict[int, dict[str, Any]] = {}
        self._artifact_parent: dict[int, int] = {}
        self._next_context_id = 1
        self._next_artifact_id = 1
        self._clock_ms = 1_700_000_000_000
        self._faults = Faults()
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self.ca_file: str | None = None

        self._server = FakeServer(_Handler, self, tls=self._setup_tls() if tls else None, log=self._log)
        self.port = self._server.port
        self.scheme = "https" if tls else "http"
        #: Hosts answered as the registry when the request target is absolute.
        self.served_hosts: set[str] = {self.host, f"localhost:{self.port}"}

    @property
    def requests(self) -> list[Request]:
        """Every request received, in order (``r.host``, ``r.param(name)``, ``r.authorization``)."""
        return self._log.all()

    def _setup_tls(self) -> ssl.SSLContext:
        import trustme

        ca = trustme.CA()
        self._tmpdir = tempfile.TemporaryDirectory(prefix="fake-mr-tls-")
        ca_path = Path(self._tmpdir.name) / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_path))
        self.ca_file = str(ca_path)
        return tls_context(ca)

    # -- addresses ---------------------------------------------------------

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the form ``MODEL_REGISTRY_BASE_URL`` takes."""
        return f"127.0.0.1:{self.port}"

    endpoint = host

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def api_url(self) -> str:
        return f"{self.url}{API_PREFIX}"

    def env(self) -> dict[str, str]:
        """Environment pointing the model-registry provider at this server."""
        env = {"MODEL_REGISTRY_BASE_URL": self.host, "MODEL_REGISTRY_SCHEME": self.scheme}
        if self.ca_file:
            env["MODEL_REGISTRY_CA_BUNDLE"] = self.ca_file
        if self.require_token:
            env["MODEL_REGISTRY_TOKEN"] = self.require_token
        return env

    # -- lifecycle ---------------------------------------------------------

    def stop(self) -> None:
        self._server.stop()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> FakeModelRegistry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- seeding -----------------------------------------------------------

    def tick(self, ms: int = 1000) -> int:
        """Advance the registry clock and return the new time (epoch millis)."""
        with self._lock:
            self._clock_ms += ms
            return self._clock_ms

    def add_model(
        self,
        name: str,
        versions: Iterable[Mapping[str, Any]] = (),
        **fields: Any,
    ) -> dict[str, Any]:
        """Register a model and, optionally, its versions and their artifacts.

        ``fields`` are RegisteredModel fields in the spec's camelCase
        (``state``, ``owner``, ``description``...) plus ``create_time`` /
        ``update_time`` in epoch millis. Each entry of ``versions`` is a mapping
        with ``name`` and optional version fields and an ``artifacts`` list of
        artifact mappings (see :meth:`add_artifact`). Returns the model as the
        API would return it.
        """
        with self._lock:
            if any(c["_kind"] == "model" and c["name"] == name for c in self._contexts.values()):
                raise ValueError(f"registered model {name!r} already exists")
            model = self._new_entity(self._take_context_id(), {"state": "LIVE"}, fields, _MODEL_FIELDS)
            model["name"] = name
            model["_kind"] = "model"
            self._contexts[int(model["id"])] = model
            for spec in versions:
                spec = dict(spec)
                version_name = spec.pop("name")
                self.add_version(name, version_name, **spec)
            return _public(model)

    def add_version(
        self,
        model: str | int,
        name: str,
        artifacts: Iterable[Mapping[str, Any]] = (),
        **fields: Any,
    ) -> dict[str, Any]:
        """Add a version to the registered model ``model`` (its name or id)."""
        with self._lock:
            parent = self._find_model(model)
            parent_id = parent["id"]
            if any(
                c["_kind"] == "version" and c["registeredModelId"] == parent_id and c["name"] == name
                for c in self._contexts.values()
            ):
                raise ValueError(f"model version {name!r} of {parent['name']!r} already exists")
            version = self._new_entity(self._take_context_id(), {"state": "LIVE"}, fields, _VERSION_FIELDS)
            version["name"] = name
            version["registeredModelId"] = parent_id
            version["_kind"] = "version"
            self._contexts[int(version["id"])] = version
            for spec in artifacts:
                self.add_artifact(version["id"], **spec)
            return _public(version)

    def add_artifact(self, version_id: str | int, **fields: Any) -> dict[str, Any]:
        """Attach an artifact to a model version.

        ``fields`` are artifact fields in camelCase: ``artifactType``
        (``model-artifact`` by default, or ``doc-artifact``...), ``uri``,
        ``storageKey``, ``storagePath``, ``state``, ``name`` (a UUID when
        omitted, as the real server generates), plus ``create_time`` /
        ``update_time``.
        """
        with self._lock:
            vid = int(version_id)
            if self._contexts.get(vid, {}).get("_kind") != "version":
                raise ValueError(f"no model version with id {version_id}")
            fields = dict(fields)
            fields.setdefault("artifactType", "model-artifact")
            if fields["artifactType"] not in ARTIFACT_TYPES:
                raise ValueError(f"unknown artifactType {fields['artifactType']!r}")
            fields.setdefault("name", str(uuid.uuid4()))
            defaults: dict[str, Any] = {"state": "UNKNOWN"}
            artifact = self._new_entity(self._next_artifact_id, defaults, fields, _ARTIFACT_FIELDS)
            if artifact["state"] not in ARTIFACT_STATES:
                raise ValueError(f"unknown artifact state {artifact['state']!r}")
            self._next_artifact_id += 1
            self._artifacts[int(artifact["id"])] = artifact
            self._artifact_parent[int(artifact["id"])] = vid
            return _public(artifact)

    def update(self, entity_id: str | int, *, artifact: bool = False, **fields: Any) -> dict[str, Any]:
        """Change fields of an entity (e.g. ``state="ARCHIVED"``), bumping its update time."""
        with self._lock:
            store = self._artifacts if artifact else self._contexts
            entity = store[int(entity_id)]
            times = {_TIME_ALIASES[k]: str(int(fields.pop(k))) for k in list(fields) if k in _TIME_ALIASES}
            entity.update(fields)
            entity["lastUpdateTimeSinceEpoch"] = times.get("lastUpdateTimeSinceEpoch", str(self.tick()))
            if "createTimeSinceEpoch" in times:
                entity["createTimeSinceEpoch"] = times["createTimeSinceEpoch"]
            return _public(entity)

    def clear(self) -> None:
        """Forget all entities, faults and recorded requests."""
        with self._lock:
            self._contexts.clear()
            self._artifacts.clear()
            self._artifact_parent.clear()
            self._faults.clear()
            self._log.clear()

    def add_fault(
        self,
        status: int,
        *,
        path_contains: str = "",
        times: int = 1,
        body: bytes | str | None = None,
        content_type: str = JSON_CONTENT_TYPE,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next ``times`` requests whose path contains ``path_contains`` with ``status``.

        The default body is the spec's ``Error`` object; pass ``body`` for
        anything else (an HTML page from a gateway, an empty body...).
        """
        raw = body.encode() if isinstance(body, str) else body
        answer = _FaultAnswer(raw, content_type, dict(headers or {}))
        self._faults.add(Fault("status", f"*{glob.escape(path_contains)}*", status=status, times=times, error=answer))

    def requests_to(self, path_suffix: str) -> list[Request]:
        """The recorded requests whose path ends with ``path_suffix``."""
        return [r for r in self.requests if r.path.endswith(path_suffix)]

    # -- internals: seeding ------------------------------------------------

    def _take_context_id(self) -> int:
        cid = self._next_context_id
        self._next_context_id += 1
        return cid

    def _new_entity(
        self,
        entity_id: int,
        defaults: Mapping[str, Any],
        fields: Mapping[str, Any],
        allowed: set[str],
    ) -> dict[str, Any]:
        entity: dict[str, Any] = {"id": str(entity_id), **defaults, "customProperties": {}}
        times: dict[str, str] = {}
        for key, value in fields.items():
            if key in _TIME_ALIASES:
                times[_TIME_ALIASES[key]] = str(int(value))
            elif key in allowed:
                if value is not None:
                    entity[key] = value
            else:
                raise ValueError(f"unknown field {key!r}; use the spec's camelCase names")
        created = times.get("createTimeSinceEpoch") or str(self.tick())
        entity["createTimeSinceEpoch"] = created
        entity["lastUpdateTimeSinceEpoch"] = times.get("lastUpdateTimeSinceEpoch", created)
        return entity

    def _find_model(self, model: str | int) -> dict[str, Any]:
        for ctx in self._contexts.values():
            if ctx["_kind"] == "model" and (ctx["name"] == model or ctx["id"] == str(model)):
                return ctx
        raise ValueError(f"no registered model {model!r}")

    # -- internals: serving ------------------------------------------------

    def _route(self, path: str, query: Mapping[str, list[str]]) -> Any:
        """Answer one GET under the API prefix; raise :class:`ApiError` for errors."""
        rest = path[len(API_PREFIX) :]
        parts = rest.strip("/").split("/") if rest.strip("/") else []
        with self._lock:
            models = [c for c in self._contexts.values() if c["_kind"] == "model"]
            versions = [c for c in self._contexts.values() if c["_kind"] == "version"]
            artifacts = list(self._artifacts.values())
            if parts == ["registered_models"]:
                return self._list(models, query)
            if parts == ["registered_model"]:
                return self._find_registered_model(models, query)
            if len(parts) == 2 and parts[0] == "registered_models":
                _parse_id(parts[1])
                return self._get(parts[1], models, "no registered model found for id %s")
            if len(parts) == 3 and parts[0] == "registered_models" and parts[2] == "versions":
                _parse_id(parts[1])
                children = [v for v in versions if v["registeredModelId"] == parts[1]]
                return self._list(children, query, name_filter=True)
            if parts == ["model_versions"]:
                return self._list(versions, query)
            if parts == ["model_version"]:
                return self._find_model_version(versions, query)
            if len(parts) == 2 and parts[0] == "model_versions":
                _parse_id(parts[1])
                return self._get(parts[1], versions, "no model version found for id %s")
            if len(parts) == 3 and parts[0] == "model_versions" and parts[2] == "artifacts":
                _parse_id(parts[1])
                children = [a for a in artifacts if self._artifact_parent[int(a["id"])] == int(parts[1])]
                return self._list(children, query, name_filter=True, artifact_type=True)
            if parts == ["artifacts"]:
                return self._list(artifacts, query, artifact_type=True)
            if parts == ["model_artifacts"]:
                return self._list([a for a in artifacts if a["artifactType"] == "model-artifact"], query)
            if len(parts) == 2 and parts[0] == "artifacts":
                _parse_id(parts[1])
                return self._get(parts[1], artifacts, "no artifact found for id %s")
            if len(parts) == 2 and parts[0] == "model_artifacts":
                _parse_id(parts[1])
                found = self._get(parts[1], artifacts, "no artifact found for id %s")
                if found["artifactType"] != "model-artifact":
                    raise _not_found(f"artifact with id {parts[1]} is not a model artifact")
                return found
            if parts in (["artifact"], ["model_artifact"]):
                return self._find_artifact(artifacts, query, model_only=parts == ["model_artifact"])
        raise LookupError(path)

    @staticmethod
    def _get(entity_id: str, entities: list[dict[str, Any]], message: str) -> dict[str, Any]:
        for entity in entities:
            if entity["id"] == entity_id:
                return _public(entity)
        raise _not_found(message % entity_id)

    def _find_registered_model(self, models: list[dict[str, Any]], query: Mapping[str, list[str]]) -> dict[str, Any]:
        name, external_id = _first(query, "name"), _first(query, "externalId")
        if name is None and external_id is None:
            raise _bad_request("invalid parameters call, supply either name or externalId")
        found = [
            m
            for m in models
            if (name is None or m["name"] == name) and (external_id is None or m.get("externalId") == external_id)
        ]
        if not found:
            raise _not_found(f"no registered models found for name={name or ''}, externalId={external_id or ''}")
        return _public(found[0])

    def _find_model_version(self, versions: list[dict[str, Any]], query: Mapping[str, list[str]]) -> dict[str, Any]:
        name, external_id = _first(query, "name"), _first(query, "externalId")
        parent = _first(query, "parentResourceId")
        if not ((name is not None and parent is not None) or external_id is not None):
            raise _bad_request(
                "invalid parameters call, supply either (versionName and registeredModelId), or externalId"
            )
        found = [
            v
            for v in versions
            if (name is None or parent is None or (v["name"] == name and v["registeredModelId"] == parent))
            and (external_id is None or v.get("externalId") == external_id)
        ]
        if not found:
            raise _not_found(
                f"no model versions found for versionName={name or ''}, "
                f"registeredModelId={parent or ''}, externalId={external_id or ''}"
            )
        return _public(found[0])

    def _find_artifact(
        self, artifacts: list[dict[str, Any]], query: Mapping[str, list[str]], *, model_only: bool
    ) -> dict[str, Any]:
        name, external_id = _first(query, "name"), _first(query, "externalId")
        parent = _first(query, "parentResourceId")
        if (name is None or parent is None) and external_id is None:
            raise _bad_request(
                "invalid parameters call, supply either (artifactName and parentResourceId), or externalId"
            )
        found = [
            a
            for a in artifacts
            if (name is None or (a["name"] == name and str(self._artifact_parent[int(a["id"])]) == parent))
            and (external_id is None or a.get("externalId") == external_id)
        ]
        kind = "model " if model_only else ""
        if not found:
            raise _not_found(
                f"no {kind}artifacts found for name={name or ''}, parentResourceId={parent or ''}, "
                f"externalId={external_id or ''}"
            )
        if model_only and found[0]["artifactType"] != "model-artifact":
            raise _not_found(
                f"artifact with name={name or ''}, parentResourceId={parent or ''}, "
                f"externalId={external_id or ''} is not a model artifact"
            )
        return _public(found[0])

    def _list(
        self,
        entities: list[dict[str, Any]],
        query: Mapping[str, list[str]],
        *,
        name_filter: bool = False,
        artifact_type: bool = False,
    ) -> dict[str, Any]:
        order_by = _enum_param(query, "orderBy", "OrderByField", ORDER_BY_VALUES) or "ID"
        sort_order = _enum_param(query, "sortOrder", "SortOrder", SORT_ORDER_VALUES) or "ASC"
        wanted_type = (
            _enum_param(query, "artifactType", "ArtifactTypeQueryParam", ARTIFACT_TYPES) if artifact_type else None
        )
        page_size = self.default_page_size
        raw_size = _first(query, "pageSize")
        if raw_size is not None and raw_size != "":
            try:
                page_size = int(raw_size)
            except ValueError:
                raise _bad_request(f'strconv.ParseInt: parsing "{raw_size}": invalid syntax') from None
            if not -(2**31) <= page_size < 2**31:
                raise _bad_request(f'strconv.ParseInt: parsing "{raw_size}": value out of range')
        items = [e for e in entities if wanted_type is None or e["artifactType"] == wanted_type]
        if name_filter:
            name, external_id = _first(query, "name"), _first(query, "externalId")
            if name:
                items = [e for e in items if e["name"] == name]
            elif external_id:
                items = [e for e in items if e.get("externalId") == external_id]
        filter_query = _first(query, "filterQuery")
        if filter_query:
            items = [e for e in items if _matches_filter(e, filter_query)]

        key = _ORDER_KEYS[order_by]
        descending = sort_order == "DESC"

        def sort_key(entity: Mapping[str, Any]) -> tuple[int, int]:
            return int(entity[key]), int(entity["id"])

        items.sort(key=sort_key, reverse=descending)
        token = _first(query, "nextPageToken")
        if token:
            cursor = _decode_cursor(token)
            if cursor is not None:  # the real server ignores a token it cannot decode
                after = (int(cursor[1]) if order_by != "ID" else cursor[0], cursor[0])
                items = [e for e in items if (sort_key(e) < after if descending else sort_key(e) > after)]
        next_token = ""
        if page_size > 0 and len(items) > page_size:
            items = items[:page_size]
            last = items[-1]
            next_token = base64.b64encode(f"{last['id']}:{last[key]}".encode()).decode()
        return {
            "items": [_public(e) for e in items],
            "nextPageToken": next_token,
            "pageSize": page_size if page_size > 0 else 0,
            "size": len(items),
        }

    def _check_auth(self, headers: Mapping[str, str]) -> ApiError | None:
        if self.require_token is None:
            return None
        value = headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token.strip() == self.require_token:
            return None
        return ApiError(401, "missing or invalid bearer token" if value else "authorization header is required")


# -- module helpers ----------------------------------------------------------


def _public(entity: Mapping[str, Any]) -> dict[str, Any]:
    """The entity as JSON: internal ``_`` keys dropped, containers copied."""
    return json.loads(json.dumps({k: v for k, v in entity.items() if not k.startswith("_")}))  # type: ignore[no-any-return]


def _first(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _enum_param(query: Mapping[str, list[str]], name: str, type_name: str, allowed: tuple[str, ...]) -> str | None:
    value = _first(query, name)
    if value is None:
        return None
    if value not in allowed:
        # The generated router's wording for an enum query parameter it cannot parse.
        raise ApiError(400, f"invalid value '{value}' for {type_name}: valid values are [{' '.join(allowed)}]")
    return value


def _parse_id(value: str) -> int:
    try:
        parsed = int(value, 10)
    except ValueError:
        raise _bad_request(f'strconv.ParseInt: parsing "{value}": invalid syntax') from None
    if not -(2**31) <= parsed < 2**31:
        raise _bad_request(f'strconv.ParseInt: parsing "{value}": value out of range')
    return parsed


def _decode_cursor(token: str) -> tuple[int, str] | None:
    try:
        decoded = base64.b64decode(token, validate=True).decode()
        raw_id, value = decoded.split(":")
        return int(raw_id), value
    except (ValueError, UnicodeDecodeError):
        return None


_FILTER_TERM = re.compile(r"""^\s*(\w+)\s*(=|!=|<>)\s*(?:'([^']*)'|"([^"]*)"|(\d+))\s*$""")


def _matches_filter(entity: Mapping[str, Any], filter_query: str) -> bool:
    for term in re.split(r"\s+AND\s+", filter_query.strip(), flags=re.IGNORECASE):
        match = _FILTER_TERM.match(term)
        if match is None:
            raise _bad_request(f"invalid filter query: unsupported expression {term.strip()!r}")
        field_name, op, *values = match.groups()
        value = next(v for v in values if v is not None)
        actual = entity.get(field_name)
        equal = actual is not None and str(actual) == value
        if equal != (op == "="):
            return False
    return True


class _Handler(FakeHandler):
    server_version = "fake-model-registry"
    disable_nagle_algorithm = False
    _host: str

    @property
    def registry(self) -> FakeModelRegistry:
        return self.owner  # type: ignore[no-any-return]

    def _send(self, status: int, body: bytes, content_type: str, extra: Mapping[str, str] | None = None) -> None:
        self.record(status, host=self._host)  # before answering, so a client that got the answer sees it
        self.send(status, {"Content-Type": content_type, "Content-Length": str(len(body)), **(extra or {})}, body)

    def _send_json(self, status: int, payload: Any, extra: Mapping[str, str] | None = None) -> None:
        # Go's json.Encoder ends the document with a newline.
        self._send(status, (json.dumps(payload) + "\n").encode(), JSON_CONTENT_TYPE, extra)

    def _send_error(self, error: ApiError, extra: Mapping[str, str] | None = None) -> None:
        self._send_json(error.status, {"code": HTTPStatus(error.status).phrase, "message": error.message}, extra)

    def _handle(self) -> None:
        target = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        self._host = target.netloc or headers.get("host", "")
        query = parse_qs(target.query, keep_blank_values=True)
        self._answer(target.scheme, self._host, target.path, query, headers)

    def _answer(
        self,
        absolute_scheme: str,
        host: str,
        path: str,
        query: Mapping[str, list[str]],
        headers: Mapping[str, str],
    ) -> int:
        registry = self.registry
        if absolute_scheme and host not in registry.served_hosts:
            body = f"proxy: cannot resolve host {host}\n".encode()
            self._send(502, body, TEXT_CONTENT_TYPE)
            return 502
        fault = registry._faults.take(path, ("status",))
        if fault is not None:
            answer: _FaultAnswer = fault.error
            error = {"code": HTTPStatus(fault.status).phrase, "message": "injected fault"}
            payload = answer.body if answer.body is not None else (json.dumps(error) + "\n").encode()
            self._send(fault.status, payload, answer.content_type, answer.headers)
            return fault.status
        auth_error = registry._check_auth(headers)
        if auth_error is not None:
            challenge = {"WWW-Authenticate": 'Bearer realm="model-registry"'}
            if registry.auth_failure_style == "kube-rbac-proxy":
                self._send(401, b"Unauthorized\n", TEXT_CONTENT_TYPE, challenge)
            else:
                self._send_error(auth_error, challenge)
            return 401
        if path != API_PREFIX and not path.startswith(API_PREFIX + "/"):
            self._send(404, b"404 page not found\n", TEXT_CONTENT_TYPE)
            return 404
        if self.command not in ("GET", "HEAD"):
            self._send(405, b"", TEXT_CONTENT_TYPE, {"Allow": "GET"})
            return 405
        try:
            payload = registry._route(path, query)
        except ApiError as error:
            self._send_error(error)
            return error.status
        except LookupError:
            self._send(404, b"404 page not found\n", TEXT_CONTENT_TYPE)
            return 404
        self._send_json(200, payload)
        return 200

    do_GET = _handle
    do_HEAD = _handle
    do_POST = _handle
    do_PATCH = _handle
    do_PUT = _handle
    do_DELETE = _handle


# -- pytest fixtures ---------------------------------------------------------


@pytest.fixture
def fake_model_registry() -> Iterator[FakeModelRegistry]:
    """A fresh plain-HTTP fake registry per test (starting one takes a millisecond)."""
    with FakeModelRegistry() as registry:
        yield registry


@pytest.fixture
def fake_model_registry_tls() -> Iterator[FakeModelRegistry]:
    """A fresh HTTPS fake registry with a private CA (``.ca_file``)."""
    with FakeModelRegistry(tls=True) as registry:
        yield registry


__all__ = [
    "API_PREFIX",
    "SPEC_PATH",
    "ApiError",
    "FakeModelRegistry",
    "RecordedRequest",
    "Request",
    "fake_model_registry",
    "fake_model_registry_tls",
]
