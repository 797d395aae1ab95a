"""``oci://`` and ``oci+fetch://``: models stored in OCI registries.

:meth:`OciProvider.list` reads the manifest once (a tag is resolved to its
digest, logged, and every later read is pinned to it; an index is narrowed to
one platform) and decides what lands in DEST:

* raw files (ORAS artifacts, ModelPack ``.raw`` layers): each layer is one
  object, read by the engine as parallel ranged ``GET``s of its blob and
  verified against its digest like any other checksum;
* tar layers (modelcar images, ModelPack tar layers): each blob is an
  *intermediate* object, downloaded by the engine like a raw blob (ranged,
  verified against its digest while streaming, resumable, retried) into
  DEST's state directory; :meth:`OciProvider.assemble` then applies them in
  order (whiteouts, opaque directories, only ``/models/`` of an image) into
  one plain tar stream, which the engine extracts as it arrives with its safe
  archive rules and the allow/ignore patterns.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import IO, Any

from storage_initializer import http as kit
from storage_initializer.errors import (
    IntegrityError,
    NotFoundError,
    ObjectChangedError,
    StorageInitializerError,
    TransientError,
    UsageError,
)
from storage_initializer.httpbody import HttpBody
from storage_initializer.provider import (
    ByteStream,
    HttpRange,
    Provider,
    ProviderContext,
    RemoteObject,
    StagedObject,
    UriFormat,
)
from storage_initializer.settings import settings_from_env
from storage_initializer_oci import auth, layers, media
from storage_initializer_oci.client import RegistryClient, status_error
from storage_initializer_oci.reference import Reference, parse

log = logging.getLogger("storage_initializer.oci")

DEFAULT_PLATFORM = "linux/amd64"
_MAX_MANIFEST = 4 * 1024 * 1024


def _clean_path(path: str) -> str:
    """``./config.json`` and ``/config.json`` name ``config.json``; anything unsafe is left for the engine to refuse."""
    while path.startswith("./"):
        path = path[2:]
    return path.strip("/")


class OciProvider(Provider):
    """Modelcar images, CNCF ModelPack and ORAS artifacts from an OCI registry."""

    uri_formats = (UriFormat(prefix="oci://"), UriFormat(prefix="oci+fetch://"))
    requires = ("requests", "zstandard")
    description = "OCI registries: modelcar images, ModelPack and ORAS artifacts; every blob verified by digest"

    def __init__(self, context: ProviderContext) -> None:
        super().__init__(context)
        self._clients: dict[tuple[str, str], RegistryClient] = {}
        self._lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------
    def validate(self, uri: str) -> None:
        parse(uri)
        platform = self._platform()
        if platform.count("/") not in (1, 2) or not all(platform.split("/")):
            raise UsageError(
                f"STORAGE_INITIALIZER_OCI_PLATFORM={platform!r} is not os/arch[/variant]", hint="e.g. linux/arm64/v8"
            )

    def _platform(self) -> str:
        return self.env.get("STORAGE_INITIALIZER_OCI_PLATFORM", "").strip() or DEFAULT_PLATFORM

    def client(self, ref: Reference) -> RegistryClient:
        key = (ref.registry, ref.repository)
        with self._lock:
            found = self._clients.get(key)
            if found is None:
                found = RegistryClient(
                    ref.registry,
                    ref.repository,
                    self.env,
                    auth.lookup(self.env, ref.registry),
                    (self.context.connect_timeout, self.context.stall_timeout),
                    self.context.concurrency,
                )
                self._clients[key] = found
            return found

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    # -- manifests --------------------------------------------------------------------
    def _manifest(self, uri: str, client: RegistryClient, reference: str) -> tuple[dict[str, Any], str, str]:
        """GET a manifest; return (document, media type, digest), the digest checked when pinned."""
        what = f"{uri}: manifest {reference}"
        response = client.get(f"manifests/{reference}", {"Accept": media.ACCEPT}, what)
        with response:
            if response.status_code != 200:
                raise self._manifest_error(uri, response, reference)
            body = response.raw.read(_MAX_MANIFEST + 1, decode_content=True)
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if len(body) > _MAX_MANIFEST:
            raise StorageInitializerError(f"{what} is larger than {_MAX_MANIFEST} bytes; refusing it")
        algorithm = reference.split(":", 1)[0] if ":" in reference else "sha256"
        digest = f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"
        if ":" in reference and digest != reference:
            raise IntegrityError(f"{what}: the registry served a manifest whose digest is {digest}")
        try:
            document = json.loads(body)
        except ValueError:
            raise StorageInitializerError(f"{what} is not JSON") from None
        if not isinstance(document, dict):
            raise StorageInitializerError(f"{what} is not a JSON object")
        media_type = document.get("mediaType") or content_type
        return document, str(media_type), digest

    @staticmethod
    def _manifest_error(uri: str, response: Any, reference: str) -> StorageInitializerError:
        codes: list[str] = []
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            codes = [str(e.get("code")) for e in json.loads(response.raw.read(65536)).get("errors", [])]
        if response.status_code == 404:
            if "NAME_UNKNOWN" in codes:
                return NotFoundError(f"{uri}: repository not found", hint="check the registry and repository")
            return NotFoundError(
                f"{uri}: no manifest {reference} in the repository (HTTP 404)",
                hint="check the tag or digest, and the repository name",
            )
        return status_error(response.status_code, f"{uri}: manifest {reference}", "", response.reason or "")

    def _resolve_manifest(self, uri: str, ref: Reference) -> tuple[dict[str, Any], str]:
        client = self.client(ref)
        document, media_type, digest = self._manifest(uri, client, ref.reference)
        if ref.tag and not ref.digest:
            log.info("%s: tag %s is %s", uri, ref.tag, digest)
        if media_type in media.INDEXES or "manifests" in document:
            wanted = self._platform()
            chosen = media.pick_platform(document, wanted)
            if chosen is None:
                present = ", ".join(media.platform_of(d) for d in document.get("manifests") or []) or "none"
                raise NotFoundError(
                    f"{uri}: the index has no manifest for platform {wanted} (present: {present})",
                    hint="set STORAGE_INITIALIZER_OCI_PLATFORM=os/arch[/variant] to one of them",
                )
            log.info("%s: platform %s is %s", uri, wanted, chosen.get("digest"))
            document, media_type, digest = self._manifest(uri, client, str(chosen.get("digest")))
        if media_type not in media.MANIFESTS and "layers" not in document:
            raise StorageInitializerError(
                f"{uri}: unsupported manifest media type {media_type!r}",
                hint="expected an OCI image manifest or index, or a Docker schema 2 manifest or list",
            )
        return document, digest

    # -- the provider contract -----------------------------------------------------------
    def list(self, uri: str) -> Iterator[RemoteObject]:
        ref = parse(uri)
        document, digest = self._resolve_manifest(uri, ref)
        self._source_details = {"manifest": digest, **({"tag": ref.tag} if ref.tag else {})}
        try:
            flavour, found = media.classify(document)
        except ValueError as exc:
            raise StorageInitializerError(
                f"{uri}: {exc}",
                hint="supported: image layers (tar, tar+gzip, tar+zstd), ModelPack layers, titled artifact layers",
            ) from None
        if not found:
            raise NotFoundError(f"{uri}: the {flavour} {digest} has no layers")
        log.info("%s: %s %s with %d layers", uri, flavour, digest, len(found))
        # Raw files land as they are; with any tar layer every layer is an input to the merge
        # (a tar layer may replace or delete a file of the layers below).
        merged = any(layer.kind != "raw" for layer in found)
        for number, layer in enumerate(found, 1):
            algorithm, _, hexdigest = layer.digest.partition(":")
            if merged:
                key = f"layer-{number}-{algorithm}-{hexdigest}"
            else:
                assert layer.path is not None
                key = _clean_path(layer.path)
            yield RemoteObject(
                key=key,
                size=layer.size,
                version=layer.digest,
                checksums={algorithm: hexdigest},
                extra=layer,
                intermediate=merged,
            )

    def http_range(self, uri: str, obj: RemoteObject, start: int, end: int | None) -> HttpRange | None:
        """A blob read as the engine's event loop sends it (a redirect to object storage makes
        the engine read it through :meth:`open_range`, which follows it without credentials)."""
        layer = obj.extra
        if not isinstance(layer, media.Layer):
            return None
        client = self.client(parse(uri))
        credentials = client.loop_headers()
        if credentials is None:
            return None
        headers, ranged = kit.read_headers(start, end, obj.size)
        headers.update(credentials)
        what = f"{uri}: blob {layer.digest}"

        def check(status: int, answer: Mapping[str, str], body: bytes) -> None:
            if status == 401:
                client.refused_on_loop()
                raise TransientError(f"{what}: the registry refused its token (HTTP 401); asking for a new one")
            if status == 403:
                raise auth.refused(client.registry, what, client.config, 403)
            self._check_blob(what, status, answer, start, ranged)

        url = f"{client.base}/v2/{client.repository}/blobs/{layer.digest}"
        return HttpRange(url, headers, check, client.tls_context() if url.startswith("https:") else None)

    def _check_blob(self, what: str, status: int, headers: Mapping[str, str], start: int, ranged: bool) -> None:
        """Is a blob answer the bytes asked for? Raise the matching error if not."""
        if status == 404:
            raise ObjectChangedError(
                f"{what} is no longer in the registry (HTTP 404)",
                hint="the manifest was deleted or replaced; run again",
            )
        if status not in (200, 206):
            raise status_error(status, what, "")
        if ranged:
            kit.check_partial(status, headers, start, what)

    def open_range(
        self, uri: str, obj: RemoteObject, start: int, end: int | None
    ) -> AbstractContextManager[ByteStream]:
        layer = obj.extra
        assert isinstance(layer, media.Layer), "objects come from this provider's list()"
        headers, ranged = kit.read_headers(start, end, obj.size)
        client = self.client(parse(uri))
        what = f"{uri}: blob {layer.digest}"
        response = client.get(f"blobs/{layer.digest}", {"Accept-Encoding": "identity", **headers}, what)
        try:
            self._check_blob(what, response.status_code, response.headers, start, ranged)
        except BaseException:
            response.close()
            raise
        return HttpBody(response.raw, self.context.stall_timeout)

    def assemble(self, uri: str, staged: Sequence[StagedObject], out: IO[bytes]) -> None:
        """Merge the staged layers (manifest order, bottom first) into the plain tar stream ``out``."""
        settings = settings_from_env(self.env)
        found: list[media.Layer] = []
        blobs: dict[media.Layer, str] = {}  # a layer listed twice is one blob: either copy serves
        for item in staged:
            layer = item.obj.extra
            assert isinstance(layer, media.Layer), "objects come from this provider's list()"
            found.append(layer)
            blobs[layer] = item.path

        def open_blob(layer: media.Layer) -> AbstractContextManager[IO[bytes]]:
            return open(blobs[layer], "rb")

        # The engine verified every digest while downloading (or was told not to): sizes only here.
        root = os.path.dirname(staged[0].path)
        files = layers.merge(out, found, open_blob, settings.max_extract_ratio, root, verify=False)
        if files == 0 and any(layer.image for layer in found):
            raise NotFoundError(
                f"{uri}: the image has no files under /models/",
                hint="a modelcar image keeps the model in /models/",
            )
