"""oci:// against a real registry (Debian's docker-registry, CNCF Distribution) on loopback.

Content is pushed with real clients: ``oras`` (oras-py) for ORAS artifacts and the
registry's own HTTP API (tests/servers/registry.py) for images, indexes and ModelPack
manifests. Every test drives the real command and checks the bytes in DEST, the exit
status and the error line.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
import zstandard
from storage_initializer_oci import OciProvider
from storage_initializer_oci.reference import Reference, parse

from storage_initializer.errors import TransientError, UsageError
from storage_initializer.provider import ProviderContext
from storage_initializer.testing import ConformanceStore, ProviderConformance
from tests.cli import clean_env, run_cli, tree
from tests.servers.fault_proxy import ProxyFault
from tests.servers.registry import IDENTITY_TOKEN, PASSWORD, USER, Pusher, Registry

MiB = 1024 * 1024
INSECURE = {"KSERVE_OCI_INSECURE_REGISTRY": "true", "STORAGE_INITIALIZER_RETRY_BACKOFF": "0.05"}
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
EMPTY = {
    "mediaType": "application/vnd.oci.empty.v1+json",
    "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest(),
    "size": 2,
}


def repo() -> str:
    return f"t{uuid.uuid4().hex[:10]}/model"


# -- building content -------------------------------------------------------------------
Entry = tuple[str, Any]  # (name, bytes | "dir" | ("symlink", target) | ("hardlink", target))


def tar_bytes(entries: Sequence[Entry]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if content == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
            elif isinstance(content, tuple):
                info.type = tarfile.SYMTYPE if content[0] == "symlink" else tarfile.LNKTYPE
                info.linkname = content[1]
                archive.addfile(info)
            else:
                info.size, info.mode = len(content), 0o644
                archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def compress(data: bytes, kind: str) -> tuple[bytes, str]:
    if kind == "gzip":
        return gzip.compress(data), LAYER + "+gzip"
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(data), LAYER + "+zstd"
    return data, LAYER


def push_image(
    pusher: Pusher, repository: str, tag: str, layers: Sequence[tuple[Sequence[Entry], str]], arch: str = "amd64"
) -> dict[str, Any]:
    """A modelcar-style image: an image config and tar layers; returns the manifest descriptor."""
    descriptors, diff_ids = [], []
    for entries, kind in layers:
        raw = tar_bytes(entries)
        blob, media_type = compress(raw, kind)
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        descriptors.append({"mediaType": media_type, **pusher.push_blob(repository, blob)})
    config = json.dumps(
        {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}, "config": {}}
    ).encode()
    config_descriptor = {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        **pusher.push_blob(repository, config),
    }
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_descriptor, "layers": descriptors}
    return pusher.push_manifest(repository, tag, manifest)


def push_files(pusher: Pusher, repository: str, tag: str, files: Mapping[str, bytes]) -> dict[str, Any]:
    """An ORAS-style artifact: one titled layer per file."""
    pusher.push_blob(repository, b"{}")
    layers = [
        {
            "mediaType": LAYER,
            **pusher.push_blob(repository, data),
            "annotations": {"org.opencontainers.image.title": name},
        }
        for name, data in files.items()
    ]
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.test", "config": EMPTY}
    return pusher.push_manifest(repository, tag, {**manifest, "layers": layers})


def cli(args: Sequence[str], env: Mapping[str, str] | None = None, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return run_cli(args, {**INSECURE, **(env or {})}, **kwargs)


def docker_config(tmp_path: Path, host: str, entry: Mapping[str, str]) -> Path:
    path = tmp_path / "docker" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"auths": {host: entry}}))
    return path


def basic_entry(user: str = USER, password: str = PASSWORD) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


# -- URIs ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("oci://localhost:5000/team/iris", Reference("localhost:5000", "team/iris", "latest", None)),
        ("oci+fetch://quay.io/a/b:v1.2", Reference("quay.io", "a/b", "v1.2", None)),
        (f"oci://r.example/m@sha256:{'a' * 64}", Reference("r.example", "m", None, f"sha256:{'a' * 64}")),
        (f"oci://r.example/m:v1@sha256:{'b' * 64}", Reference("r.example", "m", "v1", f"sha256:{'b' * 64}")),
        ("oci://user/model:1", Reference("registry-1.docker.io", "user/model", "1", None)),
        ("oci://ubuntu", Reference("registry-1.docker.io", "library/ubuntu", "latest", None)),
    ],
)
def test_uri_forms(uri: str, expected: Reference) -> None:
    assert parse(uri) == expected


@pytest.mark.parametrize(
    "uri",
    ["oci://r.example/UPPER", "oci://r.example/m:bad tag", "oci://r.example/m@sha256:abc", "oci://r.example", "oci://"],
)
def test_malformed_uris_are_usage_errors(uri: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        parse(uri)
    result = cli([uri, str(tmp_path / "out")])
    assert result.returncode == 2, result.stderr
    assert "expected oci://HOST[:PORT]/REPOSITORY[:TAG][@sha256:DIGEST]" in result.stderr
    assert not (tmp_path / "out").exists()


# -- images ------------------------------------------------------------------------------------
def test_modelcar_image_with_gzip_and_zstd_layers_and_whiteouts(tmp_path: Path, oci_registry: Registry) -> None:
    weights = os.urandom(3 * MiB)
    base = [
        ("bin", "dir"),
        ("bin/sh", b"#!busybox"),
        ("models", "dir"),
        ("models/config.json", b'{"v": 1}'),
        ("models/old.bin", b"deleted later"),
        ("models/cache", "dir"),
        ("models/cache/a", b"hidden by an opaque dir"),
        ("models/sub", "dir"),
        ("models/sub/keep.txt", b"kept"),
    ]
    update = [
        ("models", "dir"),
        ("models/.wh.old.bin", b""),
        ("models/cache", "dir"),
        ("models/cache/.wh..wh..opq", b""),
        ("models/cache/c", b"new in the opaque dir"),
        ("models/config.json", b'{"v": 2}'),
        ("models/current", ("symlink", "/models/config.json")),
    ]
    top = [("./models/weights.bin", weights), ("./models/weights.hardlink", ("hardlink", "./models/weights.bin"))]
    repository = repo()
    push_image(oci_registry.pusher(), repository, "v1", [(base, "gzip"), (update, "zstd"), (top, "tar")])
    dest = tmp_path / "out"
    result = cli([oci_registry.uri(repository, ":v1"), str(dest)])
    assert result.returncode == 0, result.stderr
    assert tree(dest) == {
        "cache/c": b"new in the opaque dir",
        "config.json": b'{"v": 2}',
        "current": b'{"v": 2}',
        "sub/keep.txt": b"kept",
        "weights.bin": weights,
        "weights.hardlink": weights,
    }
    assert os.readlink(dest / "current") == "config.json"
    # Nothing else: no merged tar left, no blob, no hidden directory of ours.
    assert sorted(set(os.listdir(dest)) - {".storage-initializer"}) == sorted(
        ["cache", "config.json", "current", "sub", "weights.bin", "weights.hardlink"]
    )
    assert "tag v1 is sha256:" in result.stderr
    again = cli([oci_registry.uri(repository, ":v1"), str(dest)])
    assert again.returncode == 0, again.stderr
    assert "already assembled" in again.stderr and tree(dest)["weights.bin"] == weights


def test_image_with_nothing_under_models_is_an_error(tmp_path: Path, oci_registry: Registry) -> None:
    repository = repo()
    push_image(oci_registry.pusher(), repository, "latest", [([("etc/passwd", b"root")], "gzip")])
    result = cli([oci_registry.uri(repository), str(tmp_path / "out")])
    assert result.returncode == 1
    assert "the image has no files under /models/" in result.stderr
    assert tree(tmp_path / "out", after_failure=True) == {}


@pytest.mark.parametrize(
    "hostile",
    [
        ("models/evil", ("symlink", "../../../etc/passwd")),
        ("models/../../evil", b"x"),
        ("models/evil", ("hardlink", "etc/passwd")),
    ],
)
def test_image_member_escaping_dest_is_refused(tmp_path: Path, oci_registry: Registry, hostile: Entry) -> None:
    repository = repo()
    layer = [("etc/passwd", b"root"), ("models/ok", b"x"), hostile]
    push_image(oci_registry.pusher(), repository, "latest", [(layer, "gzip")])
    result = cli([oci_registry.uri(repository), str(tmp_path / "out")])
    assert result.returncode == 1
    assert "evil" in result.stderr
    assert tree(tmp_path / "out", after_failure=True) == {}
    assert not (tmp_path / "evil").exists()


def test_image_layer_stream_continues_after_a_cut_connection(
    tmp_path: Path, oci_registry: Registry, fault_proxy_factory: Any
) -> None:
    repository = repo()
    weights = os.urandom(4 * MiB)
    descriptor = push_image(oci_registry.pusher(), repository, "v1", [([("models/w.bin", weights)], "gzip")])
    manifest = (
        oci_registry.pusher()
        .session.get(
            f"http://{oci_registry.host}/v2/{repository}/manifests/{descriptor['digest']}",
            headers={"Accept": OCI_MANIFEST},
        )
        .json()
    )
    layer = manifest["layers"][0]
    proxy = fault_proxy_factory(oci_registry.port)
    proxy.add(ProxyFault("reset", times=2, after_bytes=3 * MiB // 2, match=f"blobs/{layer['digest']}"))
    result = cli([f"oci://127.0.0.1:{proxy.port}/{repository}:v1", str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == {"w.bin": weights}
    assert result.stderr.count(f"retrying layer-1-sha256-{layer['digest'][7:]} of ") == 2
    # Continued where it broke, not started over: two restarts would relay the 2 x 1.5 MiB again.
    # The proxy counts only what reached the client (a reset drops the bytes its send queue held:
    # megabytes when a loaded client lags), all of which the stream keeps.
    assert proxy.bytes_down < layer["size"] + MiB


def test_docker_schema2_manifest_list(tmp_path: Path, oci_registry: Registry) -> None:
    pusher = oci_registry.pusher()
    repository = repo()
    layer = gzip.compress(tar_bytes([("models/model.pt", b"torch"), ("usr/bin/python", b"elf")]))
    descriptor = {
        "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
        **pusher.push_blob(repository, layer),
    }
    config = {
        "mediaType": "application/vnd.docker.container.image.v1+json",
        **pusher.push_blob(repository, b'{"os":"linux"}'),
    }
    manifest = pusher.push_manifest(
        repository,
        "docker-amd64",
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": config,
            "layers": [descriptor],
        },
    )
    listing = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [{**manifest, "platform": {"os": "linux", "architecture": "amd64"}}],
    }
    pusher.push_manifest(repository, "docker", listing)
    result = cli([oci_registry.uri(repository, ":docker"), str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == {"model.pt": b"torch"}


def _push_multiplatform(registry: Registry, repository: str) -> None:
    pusher = registry.pusher()
    entries = []
    for arch, variant in (("amd64", None), ("arm64", "v8")):
        layer = [("models/arch.txt", arch.encode())]
        descriptor = push_image(pusher, repository, f"only-{arch}", [(layer, "gzip")], arch=arch)
        platform = {"os": "linux", "architecture": arch, **({"variant": variant} if variant else {})}
        entries.append({**descriptor, "platform": platform})
    pusher.push_manifest(repository, "multi", {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})


def test_multi_platform_index(tmp_path: Path, oci_registry: Registry) -> None:
    repository = repo()
    _push_multiplatform(oci_registry, repository)
    uri = oci_registry.uri(repository, ":multi")
    default = cli([uri, str(tmp_path / "amd")])
    assert default.returncode == 0, default.stderr
    assert tree(tmp_path / "amd") == {"arch.txt": b"amd64"}
    arm = cli([uri, str(tmp_path / "arm")], {"STORAGE_INITIALIZER_OCI_PLATFORM": "linux/arm64/v8"})
    assert arm.returncode == 0, arm.stderr
    assert tree(tmp_path / "arm") == {"arch.txt": b"arm64"}
    missing = cli([uri, str(tmp_path / "none")], {"STORAGE_INITIALIZER_OCI_PLATFORM": "linux/s390x"})
    assert missing.returncode == 1
    assert "no manifest for platform linux/s390x (present: linux/amd64, linux/arm64/v8)" in missing.stderr
    assert "STORAGE_INITIALIZER_OCI_PLATFORM" in missing.stderr
    bad = cli([uri, str(tmp_path / "bad")], {"STORAGE_INITIALIZER_OCI_PLATFORM": "linux"})
    assert bad.returncode == 2 and "os/arch[/variant]" in bad.stderr


# -- artifacts -----------------------------------------------------------------------------------
def test_modelpack_artifact_raw_layers_are_ranged_files(tmp_path: Path, oci_registry: Registry) -> None:
    pusher = oci_registry.pusher()
    repository = repo()
    files = {
        ("application/vnd.cncf.model.weight.v1.raw", "weights/model.safetensors"): os.urandom(5 * MiB),
        ("application/vnd.cncf.model.weight.config.v1.raw", "config.json"): b'{"arch": "llama"}',
        ("application/vnd.cncf.model.doc.v1.raw", "README.md"): b"# model",
    }
    layers = [
        {
            "mediaType": media_type,
            **pusher.push_blob(repository, data),
            "annotations": {"org.cncf.model.filepath": path},
        }
        for (media_type, path), data in files.items()
    ]
    config = {
        "mediaType": "application/vnd.cncf.model.config.v1+json",
        **pusher.push_blob(repository, b'{"descriptor": {}}'),
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.cncf.model.manifest.v1+json",
        "config": config,
        "layers": layers,
    }
    pusher.push_manifest(repository, "v1", manifest)
    result = cli(
        [oci_registry.uri(repository, ":v1"), str(tmp_path / "out")],
        {"STORAGE_INITIALIZER_MULTIPART_THRESHOLD": "1MiB", "STORAGE_INITIALIZER_PART_SIZE": "1MiB"},
    )
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == {path: data for (_, path), data in files.items()}
    assert "ModelPack model sha256:" in result.stderr


def test_modelpack_tar_layers_are_merged_with_raw_files(tmp_path: Path, oci_registry: Registry) -> None:
    pusher = oci_registry.pusher()
    repository = repo()
    tokenizer = tar_bytes([("tokenizer", "dir"), ("tokenizer/vocab.txt", b"a b c"), ("tokenizer/merges.txt", b"ab")])
    blob = zstandard.ZstdCompressor().compress(tokenizer)
    layers = [
        {
            "mediaType": "application/vnd.cncf.model.weight.config.v1.tar+zstd",
            **pusher.push_blob(repository, blob),
            "annotations": {"org.cncf.model.filepath": "tokenizer"},
        },
        {
            "mediaType": "application/vnd.cncf.model.weight.v1.raw",
            **pusher.push_blob(repository, b"weights"),
            "annotations": {"org.cncf.model.filepath": "model.bin"},
        },
    ]
    config = {"mediaType": "application/vnd.cncf.model.config.v1+json", **pusher.push_blob(repository, b"{}")}
    pusher.push_manifest(
        repository, "v1", {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers}
    )
    result = cli([oci_registry.uri(repository, ":v1"), str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == {
        "tokenizer/vocab.txt": b"a b c",
        "tokenizer/merges.txt": b"ab",
        "model.bin": b"weights",
    }


def test_oras_artifact_pushed_with_oras(
    tmp_path: Path, oci_registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    import oras.client

    source = tmp_path / "src"
    source.mkdir()
    (source / "model.onnx").write_bytes(os.urandom(200_000))
    (source / "labels.txt").write_text("cat\ndog\n")
    monkeypatch.chdir(source)
    repository = repo()
    client = oras.client.OrasClient(hostname=oci_registry.host, insecure=True)
    response = client.push(files=["model.onnx", "labels.txt"], target=f"{oci_registry.host}/{repository}:v3")
    assert response.status_code == 201
    result = cli([f"oci+fetch://{oci_registry.host}/{repository}:v3", str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == tree(source)


def test_oras_directory_layer_is_unpacked(tmp_path: Path, oci_registry: Registry) -> None:
    # What the oras CLI pushes for a directory: a tar+gzip of it, titled, marked for unpacking
    # (oras-py drops the mark, so this layer is written here as the CLI writes it).
    pusher = oci_registry.pusher()
    repository = repo()
    tokenizer = gzip.compress(tar_bytes([("tokenizer", "dir"), ("tokenizer/vocab.txt", b"a b c")]))
    annotations = {"org.opencontainers.image.title": "tokenizer", "io.deis.oras.content.unpack": "true"}
    pusher.push_blob(repository, b"{}")
    layers = [
        {"mediaType": LAYER + "+gzip", **pusher.push_blob(repository, tokenizer), "annotations": annotations},
        {
            "mediaType": LAYER,
            **pusher.push_blob(repository, b"w"),
            "annotations": {"org.opencontainers.image.title": "w.bin"},
        },
    ]
    config = {**EMPTY, "mediaType": "application/vnd.unknown.config.v1+json"}
    pusher.push_manifest(
        repository, "v1", {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers}
    )
    result = cli([oci_registry.uri(repository, ":v1"), str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == {"tokenizer/vocab.txt": b"a b c", "w.bin": b"w"}


def test_unsupported_layer_media_type_is_named(tmp_path: Path, oci_registry: Registry) -> None:
    pusher = oci_registry.pusher()
    repository = repo()
    layer = {"mediaType": "application/x-unknown", **pusher.push_blob(repository, b"?")}
    config = {"mediaType": "application/vnd.oci.image.config.v1+json", **pusher.push_blob(repository, b"{}")}
    pusher.push_manifest(
        repository, "v1", {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]}
    )
    result = cli([oci_registry.uri(repository, ":v1"), str(tmp_path / "out")])
    assert result.returncode == 1
    assert "unsupported image layer media type 'application/x-unknown'" in result.stderr


# -- pinning, integrity -------------------------------------------------------------------------------
def test_digest_pinned_uri_ignores_a_moved_tag(tmp_path: Path, oci_registry: Registry) -> None:
    pusher = oci_registry.pusher()
    repository = repo()
    first = push_files(pusher, repository, "v1", {"model.bin": b"first"})
    second = push_files(pusher, repository, "v1", {"model.bin": b"second"})
    pinned = cli([oci_registry.uri(repository, f":v1@{first['digest']}"), str(tmp_path / "pinned")])
    assert pinned.returncode == 0, pinned.stderr
    assert tree(tmp_path / "pinned") == {"model.bin": b"first"}
    # The record names the manifest a tag resolved to.
    record = tmp_path / "record.json"
    tagged = cli(["--record", str(record), oci_registry.uri(repository, ":v1"), str(tmp_path / "tagged")])
    assert tagged.returncode == 0, tagged.stderr
    (pair,) = json.loads(record.read_text())["pairs"]
    assert pair["source_details"] == {"manifest": second["digest"], "tag": "v1"}
    unknown = cli([oci_registry.uri(repository, "@sha256:" + "0" * 64), str(tmp_path / "unknown")])
    assert unknown.returncode == 1
    assert "no manifest sha256:" + "0" * 64 in unknown.stderr


def test_tampered_raw_blob_fails_and_publishes_nothing(tmp_path: Path, oci_registry: Registry) -> None:
    repository = repo()
    data = os.urandom(2 * MiB)
    push_files(oci_registry.pusher(), repository, "v1", {"model.bin": data})
    path = oci_registry.blob_file("sha256:" + hashlib.sha256(data).hexdigest())
    path.write_bytes(data[:1000] + bytes([data[1000] ^ 1]) + data[1001:])
    result = cli([oci_registry.uri(repository, ":v1"), str(tmp_path / "out")], {"STORAGE_INITIALIZER_RETRIES": "1"})
    assert result.returncode == 1
    assert "sha256" in result.stderr and "model.bin" in result.stderr
    assert tree(tmp_path / "out") == {}
    assert [p for p in (tmp_path / "out").iterdir() if p.name != ".storage-initializer"] == []


def test_tampered_image_layer_fails_and_publishes_nothing(tmp_path: Path, oci_registry: Registry) -> None:
    repository = repo()
    push_image(oci_registry.pusher(), repository, "v1", [([("models/weights.bin", os.urandom(100_000))], "tar")])
    manifest = (
        oci_registry.pusher()
        .session.get(f"http://{oci_registry.host}/v2/{repository}/manifests/v1", headers={"Accept": OCI_MANIFEST})
        .json()
    )
    path = oci_registry.blob_file(manifest["layers"][0]["digest"])
    blob = bytearray(path.read_bytes())
    blob[5000] ^= 0xFF
    path.write_bytes(bytes(blob))
    result = cli([oci_registry.uri(repository, ":v1"), str(tmp_path / "out")], {"STORAGE_INITIALIZER_RETRIES": "1"})
    assert result.returncode == 1
    digest = manifest["layers"][0]["digest"]
    assert f"layer-1-sha256-{digest[7:]}: sha256 is " in result.stderr
    assert f"the store announced {digest[7:]}" in result.stderr
    assert tree(tmp_path / "out", after_failure=True) == {}


# -- errors -------------------------------------------------------------------------------------------
def test_unknown_repository_and_tag_are_clear(tmp_path: Path, oci_registry: Registry) -> None:
    repository = repo()
    push_files(oci_registry.pusher(), repository, "v1", {"a": b"a"})
    no_tag = cli([oci_registry.uri(repository, ":v2"), str(tmp_path / "a")])
    assert no_tag.returncode == 1
    assert f"{oci_registry.uri(repository, ':v2')}: no manifest v2 in the repository (HTTP 404)" in no_tag.stderr
    no_repo = cli([oci_registry.uri("nobody/here"), str(tmp_path / "b")])
    assert no_repo.returncode == 1
    assert "repository not found" in no_repo.stderr or "no manifest latest" in no_repo.stderr


# -- auth -----------------------------------------------------------------------------------------------
def test_basic_auth_from_kserve_docker_config(tmp_path: Path, oci_registry_basic: Registry) -> None:
    registry = oci_registry_basic
    repository = repo()
    push_files(registry.pusher(), repository, "v1", {"model.bin": b"private"})
    uri = registry.uri(repository, ":v1")
    config = docker_config(tmp_path, registry.host, basic_entry())
    ok = cli(
        [uri, str(tmp_path / "ok")], {"KSERVE_OCI_DOCKER_CONFIG": str(config), "STORAGE_INITIALIZER_LOG_LEVEL": "DEBUG"}
    )
    assert ok.returncode == 0, ok.stderr
    assert tree(tmp_path / "ok") == {"model.bin": b"private"}
    assert PASSWORD not in ok.stderr and basic_entry()["auth"] not in ok.stderr
    anonymous = cli([uri, str(tmp_path / "anon")], {"HOME": str(tmp_path / "nohome")})
    assert anonymous.returncode == 1
    assert "access denied" in anonymous.stderr and "HTTP 401" in anonymous.stderr
    assert "no docker config found" in anonymous.stderr
    wrong = docker_config(tmp_path / "wrong", registry.host, basic_entry(password="nope"))
    refused = cli([uri, str(tmp_path / "wrong-out")], {"KSERVE_OCI_DOCKER_CONFIG": str(wrong)})
    assert refused.returncode == 1
    assert f"check the credentials for {registry.host} in docker config {wrong}" in refused.stderr
    assert "nope" not in refused.stderr


def test_token_auth_with_docker_config_dir(tmp_path: Path, oci_registry_token: Registry) -> None:
    registry = oci_registry_token
    repository = repo()
    data = os.urandom(3 * MiB)
    push_files(registry.pusher(), repository, "v1", {"model.bin": data})
    uri = registry.uri(repository, ":v1")
    config = docker_config(tmp_path, f"http://{registry.host}", {"username": USER, "password": PASSWORD})
    env = {
        "DOCKER_CONFIG": str(config.parent),
        "STORAGE_INITIALIZER_MULTIPART_THRESHOLD": "1MiB",
        "STORAGE_INITIALIZER_PART_SIZE": "1MiB",
    }
    ok = cli([uri, str(tmp_path / "ok")], env)
    assert ok.returncode == 0, ok.stderr
    assert tree(tmp_path / "ok") == {"model.bin": data}
    assert registry.token_server is not None
    asked = [r for r in registry.token_server.requests if r["query"].get("scope") == [f"repository:{repository}:pull"]]
    assert asked and all(r["authorization"] for r in asked)
    assert len(asked) <= 4  # tokens are cached, not fetched per part
    other = docker_config(tmp_path / "other", "elsewhere.example", basic_entry())
    anonymous = cli([uri, str(tmp_path / "anon")], {"KSERVE_OCI_DOCKER_CONFIG": str(other.parent)})
    assert anonymous.returncode == 1
    assert f"docker config {other} has no auths entry for {registry.host}" in anonymous.stderr


def test_a_token_refused_on_the_event_loop_is_renewed_through_the_registry(
    tmp_path: Path, oci_registry_token: Registry
) -> None:
    """A blob read the engine's loop sends carries the cached token; a 401 there (the token
    expired or was revoked early) drops it, and the next read negotiates a new one."""
    registry = oci_registry_token
    assert registry.token_server is not None
    repository = repo()
    data = os.urandom(64 * 1024)
    push_files(registry.pusher(), repository, "v1", {"model.bin": data})
    config = docker_config(tmp_path, registry.host, basic_entry())
    env = {**INSECURE, "KSERVE_OCI_DOCKER_CONFIG": str(config)}
    provider = OciProvider(ProviderContext(env=env, concurrency=2))
    try:
        uri = registry.uri(repository, ":v1")
        (obj,) = provider.list(uri)
        request = provider.http_range(uri, obj, 0, obj.size)
        assert request is not None and request.headers["Authorization"].startswith("Bearer ")
        with pytest.raises(TransientError, match="refused its token"):
            request.check(401, {}, b"")
        assert provider.http_range(uri, obj, 0, obj.size) is None  # the token is gone: negotiate it
        tokens = len(registry.token_server.requests)
        with provider.open_range(uri, obj, 0, obj.size) as stream:
            assert stream.read() == data
        assert len(registry.token_server.requests) == tokens + 1
        renewed = provider.http_range(uri, obj, 10, 20)
        assert renewed is not None and renewed.headers["Authorization"] != request.headers["Authorization"]
        assert renewed.headers["Range"] == "bytes=10-19"
    finally:
        provider.close()


def test_identity_token_gets_an_oauth2_token(tmp_path: Path, oci_registry_token: Registry) -> None:
    registry = oci_registry_token
    repository = repo()
    push_files(registry.pusher(), repository, "v1", {"model.bin": b"via oauth2"})
    config = docker_config(tmp_path, registry.host, {"identitytoken": IDENTITY_TOKEN})
    result = cli(
        [registry.uri(repository, ":v1"), str(tmp_path / "out")],
        {"KSERVE_OCI_DOCKER_CONFIG": str(config), "STORAGE_INITIALIZER_LOG_LEVEL": "DEBUG"},
    )
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == {"model.bin": b"via oauth2"}
    assert IDENTITY_TOKEN not in result.stderr
    assert registry.token_server is not None
    assert any(r["query"].get("grant_type") == ["refresh_token"] for r in registry.token_server.requests)


def test_hostile_file_title_is_refused(tmp_path: Path, oci_registry: Registry) -> None:
    repository = repo()
    push_files(oci_registry.pusher(), repository, "v1", {"../escape.bin": b"x"})
    result = cli([oci_registry.uri(repository, ":v1"), str(tmp_path / "out")])
    assert result.returncode == 1
    assert "escape.bin" in result.stderr
    assert not (tmp_path / "escape.bin").exists()


def test_tls_with_a_custom_ca(tmp_path: Path, oci_registry: Registry, fault_proxy_factory: Any) -> None:
    ca = trustme.CA()
    proxy = fault_proxy_factory(oci_registry.port, tls=ca)
    repository = repo()
    push_files(oci_registry.pusher(), repository, "v1", {"model.bin": b"over tls"})
    uri = f"oci://127.0.0.1:{proxy.port}/{repository}:v1"
    untrusted = run_cli([uri, str(tmp_path / "no")])
    assert untrusted.returncode == 1 and "TLS verification failed" in untrusted.stderr
    with ca.cert_pem.tempfile() as bundle:
        trusted = run_cli([uri, str(tmp_path / "yes")], {"SSL_CERT_FILE": bundle})
    assert trusted.returncode == 0, trusted.stderr
    assert tree(tmp_path / "yes") == {"model.bin": b"over tls"}


class RedirectingFront:
    """A front for a registry that redirects blob GETs to a "storage" origin, as registries on
    object storage do: the registry leg is authenticated as usual (401s pass through), the
    storage origin (another host and port) serves the blob with ranges and records the headers
    it received."""

    def __init__(self, registry: Registry) -> None:
        import requests

        self.registry = registry
        self.storage_headers: list[dict[str, str]] = []
        front = self

        class Storage(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                front.storage_headers.append(dict(self.headers))
                data = registry.blob_file(self.path.strip("/").split("?")[0]).read_bytes()
                start, end = 0, len(data)
                status = 200
                if self.headers.get("Range"):
                    first, _, last = self.headers["Range"][len("bytes=") :].partition("-")
                    start, end, status = int(first), (int(last) + 1 if last else len(data)), 206
                self.send_response(status)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                self.send_header("Content-Length", str(end - start))
                self.end_headers()
                self.wfile.write(data[start:end])

        class Front(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream = requests.get(f"http://{registry.host}{self.path}", headers=headers, stream=True)
                if "/blobs/" in self.path and upstream.status_code in (200, 206):
                    upstream.close()
                    digest = self.path.rsplit("/", 1)[1]
                    self.send_response(307)
                    self.send_header("Location", f"http://localhost:{front.storage.server_address[1]}/{digest}?sig=x")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = upstream.content
                self.send_response(upstream.status_code)
                for name in ("Content-Type", "WWW-Authenticate", "Docker-Content-Digest"):
                    if name in upstream.headers:
                        self.send_header(name, upstream.headers[name])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.storage = ThreadingHTTPServer(("127.0.0.1", 0), Storage)
        self.front = ThreadingHTTPServer(("127.0.0.1", 0), Front)
        self.host = f"127.0.0.1:{self.front.server_address[1]}"
        for server in (self.storage, self.front):
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        for server in (self.storage, self.front):
            server.shutdown()
            server.server_close()


def test_blob_redirect_to_another_host_drops_the_authorization(tmp_path: Path, oci_registry_basic: Registry) -> None:
    repository = repo()
    data = os.urandom(3 * MiB)
    push_files(oci_registry_basic.pusher(), repository, "v1", {"model.bin": data, "small.txt": b"small"})
    front = RedirectingFront(oci_registry_basic)
    try:
        config = docker_config(tmp_path, front.host, basic_entry())
        env = {
            "KSERVE_OCI_DOCKER_CONFIG": str(config),
            "STORAGE_INITIALIZER_MULTIPART_THRESHOLD": "1MiB",
            "STORAGE_INITIALIZER_PART_SIZE": "1MiB",
        }
        result = cli([f"oci://{front.host}/{repository}:v1", str(tmp_path / "out")], env)
    finally:
        front.stop()
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == {"model.bin": data, "small.txt": b"small"}
    assert len(front.storage_headers) >= 4  # three ranged parts and the small file
    assert all("Authorization" not in headers for headers in front.storage_headers)


# -- the big one ----------------------------------------------------------------------------------------------
def _partial_parts(dest: Path) -> list[int]:
    for path in (dest / ".storage-initializer/partial").glob("*.json"):
        try:
            return [int(i) for i in json.loads(path.read_text())["done"]]
        except (ValueError, KeyError, OSError):
            continue
    return []


def _partial_done(dest: Path) -> int:
    return len(_partial_parts(dest))


@pytest.mark.slow
def test_300_mib_blob_is_ranged_and_resumes_after_sigkill(
    tmp_path: Path, oci_registry: Registry, fault_proxy_factory: Any
) -> None:
    source = tmp_path / "big.bin"
    hasher = hashlib.sha256()
    with open(source, "wb") as handle:
        for _ in range(300):
            chunk = os.urandom(MiB)
            hasher.update(chunk)
            handle.write(chunk)
    digest = "sha256:" + hasher.hexdigest()
    repository = repo()
    pusher = oci_registry.pusher()
    with open(source, "rb") as handle:
        pusher.push_blob(repository, handle, digest)
    pusher.push_blob(repository, b"{}")
    layer = {
        "mediaType": LAYER,
        "digest": digest,
        "size": 300 * MiB,
        "annotations": {"org.opencontainers.image.title": "big.bin"},
    }
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.test", "config": EMPTY}
    pusher.push_manifest(repository, "v1", {**manifest, "layers": [layer]})

    proxy = fault_proxy_factory(oci_registry.port)
    # One ranged read of the blob hangs; the others complete their parts.
    proxy.add(ProxyFault("stall", times=1, seconds=300, match=f"blobs/{digest}", unless="bytes=0-"))
    uri = f"oci://127.0.0.1:{proxy.port}/{repository}:v1"
    dest = tmp_path / "out"
    env = clean_env({**INSECURE, "STORAGE_INITIALIZER_PART_SIZE": "16MiB", "STORAGE_INITIALIZER_STALL_TIMEOUT": "300"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "storage_initializer", uri, str(dest)], env=env, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while _partial_done(dest) < 8 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    done_parts = _partial_parts(dest)  # what the killed run left on disk
    assert len(done_parts) >= 8, "the download never got going"
    assert not (dest / "big.bin").exists()
    proxy.clear()
    proxy.reset_counters()
    result = run_cli([uri, str(dest)], {**INSECURE, "STORAGE_INITIALIZER_PART_SIZE": "16MiB"})
    assert result.returncode == 0, result.stderr
    assert f"resuming big.bin: {_partial_done_from(result.stderr)}" in result.stderr
    # Only what was not on disk crossed the wire again; the last part is short (12 MiB).
    on_disk = sum(min(16 * MiB, 300 * MiB - i * 16 * MiB) for i in done_parts)
    assert proxy.bytes_down <= 300 * MiB - on_disk + MiB
    with open(dest / "big.bin", "rb") as handle:
        assert hashlib.file_digest(handle, "sha256").hexdigest() == hasher.hexdigest()


def _partial_done_from(stderr: str) -> str:
    line = next(line for line in stderr.splitlines() if "resuming big.bin:" in line)
    return line.split("resuming big.bin: ", 1)[1].split(" of ")[0]


# -- conformance ------------------------------------------------------------------------------------------------
class OciStore(ConformanceStore):
    """A URI names an artifact, which is a directory of titled files.

    Every key below the test's root is also published in the artifact of each of its
    parent "directories" (repository ``ROOT/PREFIX``, tag ``latest``), with its path
    relative to that prefix as its title; a key's own repository holds it alone, under
    its base name (a URI naming one file).
    """

    provider_class = OciProvider
    supports_markers = False  # an artifact lists files, not directory markers
    # Blobs are content-addressed: a read pinned to a digest can only ever serve those
    # bytes (a moved tag is seen at the next listing), so there is no change to detect.
    supports_versions = False
    # Each parent "directory" of a key is a repository, whose name is plain lowercase ASCII:
    # unusual names can be file titles only.
    unusual_keys = ("ünïcødé-模型.bin", "a%20b%2Fc.bin", "with space.txt")

    def __init__(self, registry: Registry) -> None:
        super().__init__()
        self.registry = registry
        self.pusher = registry.pusher()
        self.files: dict[str, bytes] = {}

    def env(self) -> Mapping[str, str]:
        return {"KSERVE_OCI_INSECURE_REGISTRY": "true"}

    def uri_for(self, key: str) -> str:
        return self.registry.uri(f"{self.root_name}/{key}" if key else self.root_name)

    def put(self, key: str, data: bytes) -> None:
        self.files[key] = data
        parts = key.split("/")
        for depth in range(len(parts)):
            prefix = "/".join(parts[:depth])
            below = {
                k[len(prefix) + 1 :] if prefix else k: v
                for k, v in self.files.items()
                if not prefix or k.startswith(prefix + "/")
            }
            push_files(self.pusher, f"{self.root_name}/{prefix}" if prefix else self.root_name, "latest", below)
        if re.fullmatch(r"[a-z0-9._/-]+", key):  # a repository name of its own: only where the grammar allows
            push_files(self.pusher, f"{self.root_name}/{key}", "latest", {parts[-1]: data})


class TestOciConformance(ProviderConformance):
    @pytest.fixture
    def store(self, oci_registry: Registry) -> ConformanceStore:
        return OciStore(oci_registry)
