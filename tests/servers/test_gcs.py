"""Proof that the fake-gcs-server fixture behaves as its module docstring says.

Everything goes through the real google-cloud-storage client or raw HTTP.
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote

import google_crc32c
import psutil
import pytest
import requests
from google.api_core.exceptions import NotFound
from google.cloud import storage

from tests.servers.gcs import FakeGcsServer, MiB, b64_to_hex, pattern_md5


def _media_url(server: FakeGcsServer, bucket: str, name: str) -> str:
    return f"{server.url}/download/storage/v1/b/{bucket}/o/{quote(name, safe='')}?alt=media"


def test_keys_markers_empty_and_unicode_roundtrip(gcs_server: FakeGcsServer, gcs_bucket: str) -> None:
    files = {
        "model/a.bin": b"a" * 10,
        "model/": b"",
        "model/empty": b"",
        "model/sub/ü ñ.txt": "ü".encode(),
        "model/../../x": b"traversal",
        "model-v2/x": b"v2",
        "model.bin": b"sibling",
    }
    gcs_server.upload_tree(gcs_bucket, files)
    client = gcs_server.client()

    everything = {b.name: b.size for b in client.list_blobs(gcs_bucket)}
    assert everything == {name: len(data) for name, data in files.items()}
    # A prefix is a plain string prefix: siblings match too.
    assert {b.name for b in client.list_blobs(gcs_bucket, prefix="model")} == set(files)
    under = sorted(b.name for b in client.list_blobs(gcs_bucket, prefix="model/"))
    assert under == ["model/", "model/../../x", "model/a.bin", "model/empty", "model/sub/ü ñ.txt"]

    it = client.list_blobs(gcs_bucket, prefix="model/", delimiter="/")
    direct = sorted(b.name for b in it)
    assert direct == ["model/", "model/a.bin", "model/empty"]
    assert it.prefixes == {"model/../", "model/sub/"}

    assert client.bucket(gcs_bucket).blob("model/sub/ü ñ.txt").download_as_bytes() == "ü".encode()
    assert client.bucket(gcs_bucket).blob("model/empty").download_as_bytes() == b""


def test_pagination_follows_page_tokens(gcs_server: FakeGcsServer, gcs_bucket: str) -> None:
    gcs_server.upload_tree(gcs_bucket, {f"p/{i:03d}": b"x" for i in range(25)})
    before = len(gcs_server.request_log())
    names = [b.name for b in gcs_server.client().list_blobs(gcs_bucket, prefix="p/", page_size=10)]
    assert names == [f"p/{i:03d}" for i in range(25)]
    pages = [r for r in gcs_server.request_log()[before:] if r.path.startswith(f"/storage/v1/b/{gcs_bucket}/o?")]
    assert len(pages) == 3
    assert "pageToken=" in pages[1].path

    # Without maxResults everything comes back in one page (GCS would stop at 1000).
    body = requests.get(f"{gcs_server.url}/storage/v1/b/{gcs_bucket}/o", timeout=10).json()
    assert len(body["items"]) == 25
    assert "nextPageToken" not in body


def test_checksums_in_metadata(gcs_server: FakeGcsServer, gcs_bucket: str) -> None:
    data = b"checksum me" * 1000
    gcs_server.upload(gcs_bucket, "c", data)
    meta = gcs_server.metadata(gcs_bucket, "c")
    assert meta["size"] == str(len(data))
    assert b64_to_hex(meta["md5Hash"]) == hashlib.md5(data).hexdigest()
    assert b64_to_hex(meta["crc32c"]) == google_crc32c.Checksum(data).digest().hex()


def test_range_requests(gcs_server: FakeGcsServer, gcs_bucket: str) -> None:
    data = bytes(range(100))
    blob = gcs_server.upload(gcs_bucket, "r", data)
    gcs_server.upload(gcs_bucket, "empty", b"")
    url = _media_url(gcs_server, gcs_bucket, "r")

    resp = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=10)
    assert resp.status_code == 206
    assert resp.headers["Content-Range"] == "bytes 10-19/100"
    assert resp.content == data[10:20]
    assert resp.headers["X-Goog-Generation"] == str(blob.generation)
    assert "crc32c=" in resp.headers["X-Goog-Hash"]

    assert requests.get(url, headers={"Range": "bytes=90-"}, timeout=10).content == data[90:]
    assert requests.get(url, headers={"Range": "bytes=-5"}, timeout=10).content == data[95:]
    clamped = requests.get(url, headers={"Range": "bytes=95-500"}, timeout=10)
    assert clamped.headers["Content-Range"] == "bytes 95-99/100"
    assert requests.get(url, headers={"Range": "bytes=100-"}, timeout=10).status_code == 416
    empty_url = _media_url(gcs_server, gcs_bucket, "empty")
    assert requests.get(empty_url, headers={"Range": "bytes=0-"}, timeout=10).status_code == 416
    assert requests.get(empty_url, timeout=10).status_code == 200

    # The real client's ranged download (end is inclusive there).
    client_blob = gcs_server.client().bucket(gcs_bucket).blob("r")
    assert client_blob.download_as_bytes(start=3, end=7) == data[3:8]


def test_generation_pinning(gcs_server: FakeGcsServer, gcs_bucket: str) -> None:
    old = gcs_server.upload(gcs_bucket, "g", b"old contents")
    new = gcs_server.upload(gcs_bucket, "g", b"new contents")
    assert new.generation != old.generation
    bucket = gcs_server.client().bucket(gcs_bucket)

    assert bucket.blob("g", generation=new.generation).download_as_bytes() == b"new contents"
    with pytest.raises(NotFound):
        bucket.blob("g", generation=old.generation).download_as_bytes()
    url = _media_url(gcs_server, gcs_bucket, "g")
    pinned = requests.get(f"{url}&generation={old.generation}", headers={"Range": "bytes=0-"}, timeout=10)
    assert pinned.status_code == 404

    # Quirk: preconditions are ignored on reads (GCS would answer 412).
    unchecked = requests.get(f"{url}&ifGenerationMatch={old.generation}", timeout=10)
    assert unchecked.status_code == 200
    assert unchecked.content == b"new contents"


def test_versioned_bucket_keeps_old_generations(gcs_server: FakeGcsServer) -> None:
    name = gcs_server.create_bucket(versioning=True)
    try:
        old = gcs_server.upload(name, "v", b"one")
        gcs_server.upload(name, "v", b"two")
        blob = gcs_server.client().bucket(name).blob("v", generation=old.generation)
        assert blob.download_as_bytes() == b"one"
    finally:
        gcs_server.delete_bucket(name)


def test_errors_and_no_authentication(gcs_server: FakeGcsServer, gcs_bucket: str) -> None:
    client = gcs_server.client()
    with pytest.raises(NotFound):
        list(client.list_blobs("no-such-bucket-here"))
    with pytest.raises(NotFound):
        client.bucket(gcs_bucket).blob("missing").download_as_bytes()
    body = requests.get(f"{gcs_server.url}/storage/v1/b/no-such-bucket-here/o", timeout=10).json()
    assert body["error"]["code"] == 404
    # No authentication at all: a garbage bearer token is accepted.
    resp = requests.get(
        f"{gcs_server.url}/storage/v1/b/{gcs_bucket}/o",
        headers={"Authorization": "Bearer garbage"},
        timeout=10,
    )
    assert resp.status_code == 200


def test_upload_large_is_streamed_and_exact(gcs_server: FakeGcsServer, gcs_bucket: str) -> None:
    size = 20 * MiB + 12345
    blob = gcs_server.upload_large(gcs_bucket, "big/weights.bin", size)
    assert blob.size == size
    assert b64_to_hex(blob.md5_hash) == pattern_md5(size)
    downloaded = blob.download_as_bytes(start=size - 10)
    assert len(downloaded) == 10


def test_environment_variable_route(gcs_env: dict[str, str], gcs_bucket: str) -> None:
    """The real client finds the server through STORAGE_EMULATOR_HOST alone."""
    client = storage.Client()
    client.bucket(gcs_bucket).blob("via-env").upload_from_string(b"hello")
    assert [b.name for b in client.list_blobs(gcs_bucket)] == ["via-env"]


def test_stop_kills_process_and_removes_tempdir() -> None:
    server = FakeGcsServer().start()
    pid, tmp = server.pid, server.log_path.parent
    assert pid is not None and psutil.pid_exists(pid)
    server.stop()
    assert not tmp.exists()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
