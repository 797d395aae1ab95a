"""The LocalModelCache download-job role: its ClusterStorageContainer and the sample, against KServe's CRDs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from storage_initializer.provider import UriFormat
from storage_initializer.settings import settings_from_env
from tests.deploy.k8s import CrdSchemas, load_docs, walk_yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DATA = Path(__file__).parent / "data"
SAMPLE = DEPLOY / "samples" / "localmodelcache.yaml"


@pytest.fixture(scope="module")
def crd() -> CrdSchemas:
    return CrdSchemas(
        DATA / "kserve-clusterstoragecontainer-crd.yaml",
        DATA / "kserve-localmodelcaches-crd.yaml",
        DATA / "kserve-localmodelnodegroups-crd.yaml",
    )


def job_container() -> dict[str, Any]:
    docs: list[dict[str, Any]] = [
        d for _, _, d in walk_yaml(DEPLOY / "local-model-cache") if d.get("kind") == "ClusterStorageContainer"
    ]
    (doc,) = docs
    return doc


def test_sample_is_valid_against_kserves_crds(crd: CrdSchemas) -> None:
    docs = load_docs(SAMPLE)
    assert sorted(d["kind"] for d in docs) == ["LocalModelCache", "LocalModelNodeGroup"]
    for doc in docs:
        assert crd.errors(doc) == [], doc["kind"]
    groups = {d["metadata"]["name"] for d in docs if d["kind"] == "LocalModelNodeGroup"}
    (cache,) = [d for d in docs if d["kind"] == "LocalModelCache"]
    assert set(cache["spec"]["nodeGroups"]) <= groups


def test_the_validation_catches_a_wrong_sample(crd: CrdSchemas) -> None:
    cache = next(d for d in load_docs(SAMPLE) if d["kind"] == "LocalModelCache")
    cache["spec"]["sourceModelURI"] = cache["spec"].pop("sourceModelUri")
    assert any("sourceModelUri" in e for e in crd.errors(cache))


def test_download_job_container_is_the_job_role(crd: CrdSchemas) -> None:
    doc = job_container()
    assert crd.errors(doc) == []
    assert doc["spec"]["workloadType"] == "localModelDownloadJob"
    env = {e["name"]: e["value"] for e in doc["spec"]["container"]["env"]}
    assert settings_from_env(env).publish == "atomic-dir"


def test_download_job_serves_the_sample_and_every_default_format() -> None:
    formats = [UriFormat(**f) for f in job_container()["spec"]["supportedUriFormats"]]
    (default,) = [d for _, _, d in walk_yaml(DEPLOY / "default") if d.get("kind") == "ClusterStorageContainer"]
    assert job_container()["spec"]["supportedUriFormats"] == default["spec"]["supportedUriFormats"]
    cache = next(d for d in load_docs(SAMPLE) if d["kind"] == "LocalModelCache")
    assert any(f.matches(cache["spec"]["sourceModelUri"]) for f in formats)
