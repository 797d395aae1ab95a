"""Smoke test: the ``azurite`` fixture serves the real Azure Blob API to the real SDK."""

from __future__ import annotations

import base64
import hashlib

import pytest
from azure.core.exceptions import HttpResponseError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient

from tests.servers.azurite import ACCOUNT_NAME, Azurite


def test_upload_list_and_ranged_read(azurite: Azurite) -> None:
    container = azurite.create_container()
    azurite.upload_tree(container, {"model/a.bin": b"0123456789", "model/sub/ü b.txt": b"", "other": b"x"})

    client = BlobServiceClient.from_connection_string(azurite.connection_string)
    cc = client.get_container_client(container)
    assert sorted(b.name for b in cc.list_blobs(name_starts_with="model/")) == [
        "model/a.bin",
        "model/sub/ü b.txt",
    ]

    props = cc.get_blob_client("model/a.bin").get_blob_properties()
    assert props.size == 10
    assert props.content_settings.content_md5 == bytearray(hashlib.md5(b"0123456789").digest())
    assert cc.download_blob("model/a.bin", offset=2, length=3).readall() == b"234"
    assert cc.get_blob_client("model/sub/ü b.txt").get_blob_properties().size == 0


def test_etag_pins_reads(azurite: Azurite) -> None:
    container = azurite.create_container()
    etag = azurite.upload(container, "f", b"old")
    blob = azurite.service().get_blob_client(container, "f")
    assert blob.download_blob(etag=etag, match_condition=_if_match()).readall() == b"old"
    azurite.upload(container, "f", b"new")
    with pytest.raises(ResourceModifiedError):
        blob.download_blob(offset=0, length=2, etag=etag, match_condition=_if_match()).readall()


def test_upload_repeated_builds_large_blob_cheaply(azurite: Azurite) -> None:
    container = azurite.create_container()
    chunk = bytes(range(256)) * 16
    digest = azurite.upload_repeated(container, "big", chunk, 5)
    data = azurite.service().get_blob_client(container, "big").download_blob().readall()
    assert data == chunk * 5
    assert hashlib.sha256(data).hexdigest() == digest
    props = azurite.service().get_blob_client(container, "big").get_blob_properties()
    assert bytes(props.content_settings.content_md5) == hashlib.md5(data).digest()


def test_wrong_key_and_missing_container(azurite: Azurite) -> None:
    bad = azurite.connection_string.replace(azurite.account_key, base64.b64encode(b"k" * 64).decode())
    # Azurite answers a bad signature with 403 AuthorizationFailure where Azure says
    # AuthenticationFailed, so the SDK raises a plain HttpResponseError: match the status.
    with pytest.raises(HttpResponseError) as info:
        next(iter(BlobServiceClient.from_connection_string(bad).list_containers()))
    assert info.value.status_code == 403
    with pytest.raises(ResourceNotFoundError):
        next(iter(azurite.service().get_container_client("nosuchcontainer").list_blobs()))


def test_anonymous_read_of_public_container(azurite: Azurite) -> None:
    container = azurite.create_container(public=True)
    azurite.upload(container, "p.txt", b"public")
    anon = ContainerClient(f"{azurite.endpoint}", container)
    assert [b.name for b in anon.list_blobs()] == ["p.txt"]
    assert anon.download_blob("p.txt").readall() == b"public"
    assert azurite.endpoint.endswith(f"/{ACCOUNT_NAME}")


def _if_match():  # type: ignore[no-untyped-def]
    from azure.core import MatchConditions

    return MatchConditions.IfNotModified


def test_https_with_oauth(azurite_https: Azurite) -> None:
    container = azurite_https.create_container()
    azurite_https.upload(container, "f", b"over tls")
    assert azurite_https.endpoint.startswith("https://") and azurite_https.ca_path
    assert azurite_https.service().get_blob_client(container, "f").download_blob().readall() == b"over tls"
