"""The KServe manifests in deploy/: valid against the CRD, and in step with the providers.

* Every ClusterStorageContainer validates against the CRD's ``openAPIV3Schema``
  (tests/deploy/data, a copy of KServe's CRD) with unknown fields rejected.
* ``supportedUriFormats`` are exactly what the installed built-in providers declare
  (scripts/gen-manifests.py writes them; this fails when deploy/ is stale).
* Within each set (default, per-format) every URI is claimed by exactly one
  container, as KServe needs, matched as KServe matches (prefix: HasPrefix,
  regex: Go regexp.MatchString, i.e. an unanchored search).
"""

from __future__ import annotations

import copy
import importlib.util
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from storage_initializer.provider import ProviderContext, UriFormat
from storage_initializer.registry import Registry
from tests.deploy.k8s import CrdSchemas, load_docs, walk_yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CRD = Path(__file__).parent / "data" / "kserve-clusterstoragecontainer-crd.yaml"
CSC = ("serving.kserve.io/v1alpha1", "ClusterStorageContainer")
ISVC = ("serving.kserve.io/v1beta1", "InferenceService")

#: One URI per built-in format family, and the provider our registry must pick for it.
SAMPLE_URIS = {
    "s3://bucket/models/iris": "s3",
    "gs://bucket/models/iris": "gs",
    "https://account.blob.core.windows.net/container/models/iris": "azure-blob",
    "https://account.file.core.windows.net/share/models/iris": "azure-file",
    "https://example.com/models/iris/model.joblib": "http",
    "http://10.0.0.5:8080/model.onnx": "http",
    "https://github.com/org/model.git": "git",
    "https://user@gitlab.example.com/group/model.git@v1.0": "git",
    "hdfs://namenode:9000/models/iris": "hdfs",
    "webhdfs://namenode:9870/models/iris": "hdfs",
    "hf://meta-llama/Llama-3.1-8B:main": "hf",
    "modelscope://Qwen/Qwen2.5-0.5B-Instruct": "modelscope",
    "model-registry://iris/v1": "model-registry",
    "oci://registry.example.com/models/iris:v1": "oci",
    "oci+fetch://registry.example.com/models/iris:v1": "oci",
}


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_manifests", ROOT / "scripts" / "gen-manifests.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_manifests"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def crd() -> CrdSchemas:
    schemas = CrdSchemas(CRD)
    assert CSC in schemas.schemas
    schemas.add(*ISVC, inference_service_subset(schemas.raw[CSC]))
    return schemas


def inference_service_subset(csc_schema: Mapping[str, Any]) -> dict[str, Any]:
    """The InferenceService v1beta1 fields the sample uses, typed as KServe's Go types declare.

    KServe's full InferenceService CRD is about a megabyte, so it is not vendored here:
    ``predictor.model`` is a ModelSpec (``modelFormat``, ``runtime``, the
    PredictorExtensionSpec fields and an inline core/v1 Container, whose schema is the
    one in the ClusterStorageContainer CRD), every object strict.
    """
    container = copy.deepcopy(csc_schema["properties"]["spec"]["properties"]["container"])
    container.pop("required", None)  # the inline container's name is optional in a ModelSpec
    container["properties"].update(
        {
            "modelFormat": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
                "required": ["name"],
            },
            "runtime": {"type": "string"},
            "storageUri": {"type": "string"},
            "runtimeVersion": {"type": "string"},
            "protocolVersion": {"type": "string"},
            "storage": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "schemaPath": {"type": "string"},
                    "parameters": {"type": "object", "additionalProperties": {"type": "string"}},
                    "key": {"type": "string"},
                },
            },
        }
    )
    container["required"] = ["modelFormat"]
    return {
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": {
                "type": "object",
                "properties": {
                    "predictor": {
                        "type": "object",
                        "properties": {
                            "model": container,
                            "minReplicas": {"type": "integer"},
                            "maxReplicas": {"type": "integer"},
                            "serviceAccountName": {"type": "string"},
                        },
                    }
                },
                "required": ["predictor"],
            },
        },
    }


def manifests(kind: tuple[str, str] = CSC) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.relative_to(DEPLOY)}[{index}]", doc)
        for path, index, doc in walk_yaml(DEPLOY)
        if (doc.get("apiVersion"), doc.get("kind")) == kind
    ]


def csc_set(directory: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, _, doc in walk_yaml(DEPLOY / directory) if doc.get("kind") == CSC[1]}


def formats(doc: Mapping[str, Any]) -> list[UriFormat]:
    return [UriFormat(**entry) for entry in doc["spec"]["supportedUriFormats"]]


def builtin_provider_names() -> list[str]:
    """Entry-point names from the core's and every providers/*/pyproject.toml."""
    names = []
    for pyproject in [ROOT / "pyproject.toml", *sorted(ROOT.glob("providers/*/pyproject.toml"))]:
        project = tomllib.loads(pyproject.read_text())["project"]
        names += list(project.get("entry-points", {}).get("storage_initializer.providers", {}))
    return sorted(names)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_entry_points()


@pytest.fixture(scope="module")
def declared(registry: Registry) -> dict[str, list[dict[str, str]]]:
    """Built-in provider name -> the formats its installed class declares."""
    out = {}
    for name in builtin_provider_names():
        entry = registry.entries.get(name)
        assert entry is not None, f"built-in provider {name} is not installed (pip install -e providers/...)"
        cls = entry.load()
        assert cls is not None, f"{name}: {entry.error}"
        out[name] = [f.as_crd() for f in cls.uri_formats]
    return out


# -- schema ------------------------------------------------------------------------------------


def test_deploy_holds_the_expected_objects() -> None:
    kinds = sorted({(doc.get("apiVersion"), doc.get("kind")) for _, _, doc in walk_yaml(DEPLOY)})
    local_model = [("serving.kserve.io/v1alpha1", kind) for kind in ("LocalModelCache", "LocalModelNodeGroup")]
    assert kinds == sorted([CSC, ISVC, ("kustomize.config.k8s.io/v1beta1", "Kustomization"), *local_model])
    assert set(csc_set("default")) == {"default"}
    assert len(csc_set("per-format")) >= 6


@pytest.mark.parametrize("where, doc", manifests(CSC) + manifests(ISVC), ids=lambda v: v if isinstance(v, str) else "")
def test_manifest_is_valid_against_the_crd(crd: CrdSchemas, where: str, doc: dict[str, Any]) -> None:
    assert crd.errors(doc) == [], where


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["spec"]["container"].update(imagePullPolicyy="Always"), "imagePullPolicyy"),
        (lambda d: d["spec"].update(supportedUriFormat=[]), "supportedUriFormat"),
        (lambda d: d["spec"]["supportedUriFormats"].append({"prefixx": "x://"}), "prefixx"),
        (lambda d: d["spec"]["container"]["securityContext"].update(readOnlyRootFilesystem="yes"), "not of type"),
        (lambda d: d["spec"]["container"].pop("name"), "'name' is a required property"),
        (lambda d: d["spec"].pop("supportedUriFormats"), "'supportedUriFormats' is a required property"),
        (lambda d: d.update(status={}), "status"),
        (lambda d: d["metadata"].update(name="Default_CSC"), "does not match"),
    ],
    ids=[
        "unknown-container-field",
        "unknown-spec-field",
        "unknown-format-key",
        "wrong-type",
        "no-name",
        "no-formats",
        "unknown-top-level",
        "bad-name",
    ],
)
def test_validation_rejects_broken_manifests(crd: CrdSchemas, mutate: Any, expected: str) -> None:
    doc = copy.deepcopy(csc_set("default")["default"])
    mutate(doc)
    errors = crd.errors(doc)
    assert errors and any(expected in e for e in errors), errors


def test_validation_rejects_unknown_fields_in_the_inference_service(crd: CrdSchemas) -> None:
    ((_, doc),) = manifests(ISVC)
    broken = copy.deepcopy(doc)
    broken["spec"]["predictor"]["model"]["storageURI"] = broken["spec"]["predictor"]["model"].pop("storageUri")
    assert any("storageURI" in e for e in crd.errors(broken))


# -- the container -----------------------------------------------------------------------------


@pytest.mark.parametrize("where, doc", manifests(CSC), ids=lambda v: v if isinstance(v, str) else "")
def test_container_contract(where: str, doc: dict[str, Any]) -> None:
    container = doc["spec"]["container"]
    assert container["name"] == "storage-initializer"  # KServe finds the init container by name
    assert container["image"].startswith("storage-initializer:")
    for section in ("requests", "limits"):
        assert set(container["resources"][section]) == {"cpu", "memory"}
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert doc["spec"]["supportsMultiModelDownload"] is True


def test_hf_token_comes_from_a_secret() -> None:
    (env,) = csc_set("per-format")["hf"]["spec"]["container"]["env"]
    assert env == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf-secret", "key": "HF_TOKEN", "optional": False}},
    }


def test_modelscope_token_comes_from_an_optional_secret() -> None:
    (env,) = csc_set("per-format")["modelscope"]["spec"]["container"]["env"]
    secret = {"name": "modelscope-secret", "key": "MODELSCOPE_API_TOKEN", "optional": True}
    assert env == {"name": "MODELSCOPE_API_TOKEN", "valueFrom": {"secretKeyRef": secret}}


def test_model_registry_container_is_configured() -> None:
    container = csc_set("per-format")["model-registry"]["spec"]["container"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert set(env) == {"MODEL_REGISTRY_BASE_URL", "MODEL_REGISTRY_SCHEME"}
    assert ":" in env["MODEL_REGISTRY_BASE_URL"] and env["MODEL_REGISTRY_SCHEME"] == "http"
    assert container["image"] == csc_set("default")["default"]["spec"]["container"]["image"]  # every provider


# -- formats agree with the code ---------------------------------------------------------------


def test_default_manifest_formats_are_what_the_providers_declare(declared: dict[str, list[dict[str, str]]]) -> None:
    default = csc_set("default")["default"]
    expected = [fmt for name in sorted(declared) for fmt in declared[name]]
    assert default["spec"]["supportedUriFormats"] == expected


def test_generated_manifests_are_up_to_date() -> None:
    generator = load_generator()
    stale = [
        str(path.relative_to(ROOT))
        for path, text in generator.render_all().items()
        if not path.exists() or path.read_text() != text
    ]
    assert stale == [], f"run: python scripts/gen-manifests.py ({stale})"


def test_per_format_set_covers_every_format_once(declared: dict[str, list[dict[str, str]]]) -> None:
    claimed = [fmt.as_crd() for doc in csc_set("per-format").values() for fmt in formats(doc)]
    expected = [fmt for name, fmts in declared.items() if name != "local" for fmt in fmts]
    assert sorted(map(str, claimed)) == sorted(map(str, expected))


def test_a_third_party_plugin_never_enters_the_default_manifest(declared: dict[str, list[dict[str, str]]]) -> None:
    default = csc_set("default")["default"]
    assert all(any(fmt in fmts for fmts in declared.values()) for fmt in default["spec"]["supportedUriFormats"])


@pytest.mark.parametrize("directory", ["default", "per-format"])
@pytest.mark.parametrize("uri, provider", sorted(SAMPLE_URIS.items()))
def test_each_uri_is_claimed_by_exactly_one_container(
    registry: Registry, declared: dict[str, list[dict[str, str]]], directory: str, uri: str, provider: str
) -> None:
    """What KServe needs: two matching ClusterStorageContainers make the choice arbitrary."""
    matching = [name for name, doc in csc_set(directory).items() if any(f.matches(uri) for f in formats(doc))]
    assert len(matching) == 1, (uri, matching)
    chosen = registry.find(uri)
    assert chosen.name == provider
    # ...and the container's own provider list includes the one our registry picks.
    doc = csc_set(directory)[matching[0]]
    assert all(fmt in doc["spec"]["supportedUriFormats"] for fmt in declared[provider])


def test_sample_uris_cover_every_builtin_provider(declared: dict[str, list[dict[str, str]]]) -> None:
    assert set(SAMPLE_URIS.values()) == set(declared) - {"local"}


# Go's regexp (RE2), which KServe matches with, has no lookaround, backreferences or atomic groups.
_NOT_RE2 = re.compile(r"\(\?[=!]|\(\?<[=!]|\(\?P=|\(\?>|\\[1-9]|[*+?}][+]|\\Z")


@pytest.mark.parametrize("where, doc", manifests(CSC), ids=lambda v: v if isinstance(v, str) else "")
def test_regexes_are_valid_for_kserve(where: str, doc: dict[str, Any]) -> None:
    for fmt in formats(doc):
        if fmt.regex is not None:
            assert not _NOT_RE2.search(fmt.regex), f"{fmt.regex} uses syntax Go's regexp lacks"


# -- kustomize and the sample --------------------------------------------------------------------


@pytest.mark.parametrize("directory", ["default", "per-format"])
def test_kustomization_lists_every_manifest(directory: str) -> None:
    (kustomization,) = load_docs(DEPLOY / directory / "kustomization.yaml")
    listed = sorted(kustomization["resources"])
    present = sorted(p.name for p in (DEPLOY / directory).glob("*.yaml") if p.name != "kustomization.yaml")
    assert listed == present
    assert kustomization["images"][0]["name"] == "storage-initializer"


def test_sample_inference_service_uses_model_registry(registry: Registry) -> None:
    ((_, doc),) = manifests(ISVC)
    uri = doc["spec"]["predictor"]["model"]["storageUri"]
    assert uri == "model-registry://iris/v1"
    entry = registry.find(uri)
    assert entry.name == "model-registry"
    assert entry.cls is not None
    entry.cls(ProviderContext(env={})).validate(uri)  # a well-formed URI for the provider (no network)
    assert any(f.matches(uri) for f in formats(csc_set("per-format")["model-registry"]))
