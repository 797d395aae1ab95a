"""Media types (OCI image spec, Docker schema 2, CNCF ModelPack, ORAS) and what each layer means."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))

IMAGE_CONFIGS = ("application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json")
MODELPACK_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MODELPACK_CONFIG = "application/vnd.cncf.model.config.v1+json"
MODELPACK_PREFIX = "application/vnd.cncf.model."

TITLE = "org.opencontainers.image.title"
FILEPATH = "org.cncf.model.filepath"
ORAS_UNPACK = "io.deis.oras.content.unpack"

# Image layers (image-spec layer.md; Docker's own and the non-distributable variants).
_IMAGE_LAYERS = {
    "application/vnd.oci.image.layer.v1.tar": "tar",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}
# ModelPack layer suffixes: .raw is the file itself, the others a tar of it.
_MODELPACK_SUFFIXES = {".raw": "raw", ".tar": "tar", ".tar+gzip": "gzip", ".tar+zstd": "zstd"}


@dataclass(frozen=True)
class Layer:
    """One blob to place in DEST.

    ``kind`` is ``raw`` (the blob is the file at ``path``) or the tar
    compression (``tar``, ``gzip``, ``zstd``). ``image`` layers are modelcar
    filesystem layers: whiteouts apply and only ``/models/`` is kept.
    """

    digest: str
    size: int
    media_type: str
    kind: str
    path: str | None = None
    image: bool = False


def layer_kind(media_type: str) -> str | None:
    """The compression of an image layer media type, or None when it is not a tar layer."""
    return _IMAGE_LAYERS.get(media_type)


def classify(manifest: dict[str, Any]) -> tuple[str, list[Layer]]:
    """Name the manifest's flavour (image, ModelPack, artifact) and turn its layers into :class:`Layer`s.

    Raises ValueError with the offending media type for a layer it cannot place.
    """
    config = manifest.get("config") or {}
    config_type = config.get("mediaType", "") if isinstance(config, dict) else ""
    artifact_type = manifest.get("artifactType", "")
    layers = manifest.get("layers") or []
    if artifact_type == MODELPACK_ARTIFACT or config_type == MODELPACK_CONFIG:
        return "ModelPack model", [_modelpack_layer(d) for d in layers]
    if config_type in IMAGE_CONFIGS and not artifact_type:
        return "image", [_image_layer(d) for d in layers]
    return "artifact", [_artifact_layer(d) for d in layers]


def _base(descriptor: dict[str, Any]) -> tuple[str, int, str, dict[str, str]]:
    digest = descriptor.get("digest")
    size = descriptor.get("size")
    media_type = descriptor.get("mediaType", "")
    if not isinstance(digest, str) or not isinstance(size, int) or size < 0:
        raise ValueError(f"layer descriptor without a digest or size: {descriptor!r:.200}")
    annotations = descriptor.get("annotations") or {}
    return digest, size, media_type, annotations if isinstance(annotations, dict) else {}


def _image_layer(descriptor: dict[str, Any]) -> Layer:
    digest, size, media_type, _ = _base(descriptor)
    kind = layer_kind(media_type)
    if kind is None:
        raise ValueError(f"unsupported image layer media type {media_type!r}")
    return Layer(digest, size, media_type, kind, image=True)


def _modelpack_layer(descriptor: dict[str, Any]) -> Layer:
    digest, size, media_type, annotations = _base(descriptor)
    path = annotations.get(FILEPATH) or annotations.get(TITLE)
    kind = next((k for suffix, k in _MODELPACK_SUFFIXES.items() if media_type.endswith(suffix)), None)
    if not media_type.startswith(MODELPACK_PREFIX) or kind is None:
        raise ValueError(f"unsupported ModelPack layer media type {media_type!r}")
    if kind == "raw" and not path:
        raise ValueError(f"ModelPack layer {digest} has no {FILEPATH} annotation")
    return Layer(digest, size, media_type, kind, path=path)


def _artifact_layer(descriptor: dict[str, Any]) -> Layer:
    digest, size, media_type, annotations = _base(descriptor)
    title = annotations.get(TITLE)
    if not title:
        raise ValueError(f"artifact layer {digest} ({media_type}) has no {TITLE} annotation naming its file")
    if str(annotations.get(ORAS_UNPACK, "")).lower() == "true":
        # ORAS pushes a directory as a gzipped tar of it, marked for unpacking.
        return Layer(digest, size, media_type, "gzip", path=title)
    return Layer(digest, size, media_type, "raw", path=title)


def platform_of(descriptor: dict[str, Any]) -> str:
    platform = descriptor.get("platform") or {}
    text = f"{platform.get('os', '?')}/{platform.get('architecture', '?')}"
    if platform.get("variant"):
        text += f"/{platform['variant']}"
    return text


def pick_platform(index: dict[str, Any], wanted: str) -> dict[str, Any] | None:
    """The index entry for ``os/arch[/variant]``; without a wanted variant, any variant matches."""
    os_name, _, rest = wanted.partition("/")
    arch, _, variant = rest.partition("/")
    for descriptor in index.get("manifests") or []:
        platform = descriptor.get("platform") or {}
        if platform.get("os") != os_name or platform.get("architecture") != arch:
            continue
        if variant and platform.get("variant") != variant:
            continue
        return dict(descriptor)
    return None
