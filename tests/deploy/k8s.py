"""Offline validation of Kubernetes manifests against CRD schemas (no cluster needed).

A CRD's ``openAPIV3Schema`` becomes a JSON Schema that is strict like
``kubectl apply --validate=strict``: an object schema that lists ``properties``
rejects any other field unless it says ``x-kubernetes-preserve-unknown-fields``.
``metadata`` gets the parts of ObjectMeta the API server checks first (name as a
DNS-1123 subdomain). Not checked, as only an API server would: CEL rules,
defaulting, admission webhooks, list-map key uniqueness.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import yaml

DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
OBJECT_META: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": DNS1123_SUBDOMAIN},
        "namespace": {"type": "string", "maxLength": 63},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["name"],
    "additionalProperties": False,
}


def strict_json_schema(node: Any) -> Any:
    """OpenAPI v3 (a structural CRD schema) -> JSON Schema, unknown fields forbidden."""
    if isinstance(node, list):
        return [strict_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: strict_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = strict_json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [strict_json_schema(sub) for sub in value]
        elif key == "nullable" or key.startswith("x-kubernetes-"):
            continue
        else:
            out[key] = value
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def load_docs(path: Path) -> list[Any]:
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


class CrdSchemas:
    """The served versions of the CRDs in some files, as JSON Schemas keyed by (apiVersion, kind)."""

    def __init__(self, *crd_files: Path) -> None:
        self.schemas: dict[tuple[str, str], dict[str, Any]] = {}
        self.raw: dict[tuple[str, str], dict[str, Any]] = {}
        for path in crd_files:
            for doc in load_docs(path):
                if doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                for version in spec["versions"]:
                    if not version.get("served", True):
                        continue
                    api_version = f"{spec['group']}/{version['name']}"
                    raw = version["schema"]["openAPIV3Schema"]
                    self.add(api_version, spec["names"]["kind"], raw)

    def add(self, api_version: str, kind: str, open_api_schema: Mapping[str, Any]) -> None:
        schema = strict_json_schema(copy.deepcopy(dict(open_api_schema)))
        schema.setdefault("properties", {})
        schema["properties"]["apiVersion"] = {"const": api_version}
        schema["properties"]["kind"] = {"const": kind}
        schema["properties"]["metadata"] = OBJECT_META
        schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
        schema["$schema"] = "http://json-schema.org/draft-07/schema#"
        self.schemas[(api_version, kind)] = schema
        self.raw[(api_version, kind)] = dict(open_api_schema)

    def errors(self, doc: Mapping[str, Any]) -> list[str]:
        """Validation errors of one object ('path: message'); unknown kinds are an error too."""
        key = (doc.get("apiVersion"), doc.get("kind"))
        schema = self.schemas.get(key)  # type: ignore[arg-type]
        if schema is None:
            return [f"<root>: no schema for apiVersion/kind {key}"]
        validator = jsonschema.Draft7Validator(schema)
        return [
            f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
        ]


def walk_yaml(root: Path) -> Iterator[tuple[Path, int, Any]]:
    for path in sorted(root.rglob("*.yaml")):
        for index, doc in enumerate(load_docs(path)):
            yield path, index, doc
