"""Image (modelcar) layers go through the engine: ranged, parallel, verified, resumable, retried.

Against the real registry (Debian's docker-registry) behind tests/servers/fault_proxy.py, which
counts the bytes it relays and keeps each request's head (its ``Range``). The layers are
staged in DEST's state directory, merged (whiteouts, opaque directories) and extracted with the
allow/ignore patterns applied to the files; DEST then holds exactly the model.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.cli import clean_env, tree
from tests.providers.test_oci import INSECURE, LAYER, Entry, MiB, cli, push_image, repo, tar_bytes
from tests.servers.fault_proxy import ProxyFault
from tests.servers.registry import Pusher, Registry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def push_gzip_image(pusher: Pusher, repository: str, tag: str, layers: Sequence[Sequence[Entry]]) -> list[str]:
    """An image of gzip layers compressed fast (level 1: the data is random); returns the layer digests."""
    descriptors, diff_ids = [], []
    for entries in layers:
        raw = tar_bytes(entries)
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        descriptors.append({"mediaType": LAYER + "+gzip", **pusher.push_blob(repository, gzip.compress(raw, 1))})
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}})
    config_descriptor = {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        **pusher.push_blob(repository, config.encode()),
    }
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_descriptor, "layers": descriptors}
    pusher.push_manifest(repository, tag, manifest)
    return [d["digest"] for d in descriptors]


def blob_heads(proxy: Any, digest: str) -> list[str]:
    return [head for head in proxy.heads if f"/blobs/{digest}" in head.split("\r\n", 1)[0]]


def _done_parts(dest: Path) -> list[int]:
    # The layers' transfer keeps its resume state beside them, in DEST's state directory.
    for path in (dest / ".storage-initializer/staged").glob("*/.storage-initializer/partial/*.json"):
        try:
            return [int(i) for i in json.loads(path.read_text())["done"]]
        except (ValueError, KeyError, OSError):
            continue
    return []


def _parts_done(dest: Path) -> int:
    return len(_done_parts(dest))


def test_big_layer_is_ranged_parallel_resumes_after_sigkill_and_a_rerun_downloads_nothing(
    tmp_path: Path, oci_registry: Registry, fault_proxy_factory: Any
) -> None:
    weights = os.urandom(64 * MiB)
    repository = repo()
    base = [("bin/sh", b"#!busybox"), ("models/config.json", b"{}"), ("models/old.bin", b"gone")]
    top = [("models/weights.bin", weights), ("models/.wh.old.bin", b"")]
    small, big = push_gzip_image(oci_registry.pusher(), repository, "v1", [base, top])
    size = oci_registry.blob_file(big).stat().st_size
    proxy = fault_proxy_factory(oci_registry.port)
    # One ranged read of the big layer hangs; the other parts complete meanwhile (parallel streams).
    proxy.add(ProxyFault("stall", times=1, seconds=300, match=f"blobs/{big}", unless="bytes=0-"))
    uri = f"oci://127.0.0.1:{proxy.port}/{repository}:v1"
    dest = tmp_path / "out"
    settings = {"STORAGE_INITIALIZER_PART_SIZE": "8MiB"}
    env = clean_env({**INSECURE, **settings, "STORAGE_INITIALIZER_STALL_TIMEOUT": "300"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "storage_initializer", uri, str(dest)], env=env, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while _parts_done(dest) < 4 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    done_parts = _done_parts(dest)  # what the killed run left on disk
    done = len(done_parts)
    assert done >= 4, "the download never got going"
    assert not (dest / "weights.bin").exists() and not (dest / "config.json").exists()
    # Ranged reads of the one layer, at distinct offsets: its parts.
    ranges = {m.group(1) for h in blob_heads(proxy, big) if (m := re.search(r"(?im)^range: bytes=(\d+)-", h))}
    assert len(ranges) >= 5, ranges

    proxy.clear()
    proxy.reset_counters()
    result = cli([uri, str(dest)], settings)
    assert result.returncode == 0, result.stderr
    parts = -(-size // (8 * MiB))
    assert re.search(rf"resuming layer-2-sha256-{big[7:]}: {done} of {parts} parts", result.stderr), result.stderr
    # Only what was not on disk crossed the wire again (plus manifests and the small layer). The
    # last part is short, so the bytes on disk are counted part by part.
    on_disk = sum(min(8 * MiB, size - i * 8 * MiB) for i in done_parts)
    assert proxy.bytes_down <= size - on_disk + MiB
    # DEST holds exactly the model: no layer blob, no state, no temporary file.
    assert tree(dest) == {"config.json": b"{}", "weights.bin": weights}

    proxy.reset_counters()
    proxy.heads.clear()
    again = cli([uri, str(dest)], settings)
    assert again.returncode == 0, again.stderr
    assert "already assembled" in again.stderr
    assert blob_heads(proxy, big) == [] and blob_heads(proxy, small) == []
    assert proxy.bytes_down < 64 * 1024
    assert tree(dest) == {"config.json": b"{}", "weights.bin": weights}


def test_retries_flag_reaches_layer_reads(tmp_path: Path, oci_registry: Registry, fault_proxy_factory: Any) -> None:
    weights = os.urandom(2 * MiB)
    repository = repo()
    (digest,) = push_gzip_image(oci_registry.pusher(), repository, "v1", [[("models/w.bin", weights)]])
    proxy = fault_proxy_factory(oci_registry.port)
    uri = f"oci://127.0.0.1:{proxy.port}/{repository}:v1"

    proxy.add(ProxyFault("reset", times=-1, after_bytes=1000, match=f"blobs/{digest}"))
    failed = cli(["--retries", "1", uri, str(tmp_path / "failed")])
    assert failed.returncode == 1, failed.stderr
    assert "gave up after 1 retries" in failed.stderr
    assert len(blob_heads(proxy, digest)) == 2  # the read and its one retry

    proxy.clear()
    proxy.heads.clear()
    proxy.add(ProxyFault("reset", times=3, after_bytes=1000, match=f"blobs/{digest}"))
    result = cli(["--retries", "3", uri, str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr
    assert len(re.findall(rf"retrying layer-1-sha256-{digest[7:]} of ", result.stderr)) == 3
    assert len(blob_heads(proxy, digest)) == 4
    assert tree(tmp_path / "out") == {"w.bin": weights}


def test_patterns_apply_to_the_extracted_files(tmp_path: Path, oci_registry: Registry) -> None:
    repository = repo()
    base = [("models/config.json", b"{}"), ("models/sub/a.bin", b"a"), ("models/sub/skip.bin", b"s")]
    top = [("models/tokenizer.json", b"t"), ("models/big.safetensors", b"w"), ("models/sub/.wh.a.bin", b"")]
    push_image(oci_registry.pusher(), repository, "v1", [(base, "gzip"), (top, "zstd")])
    uri = oci_registry.uri(repository, ":v1")
    dest = tmp_path / "out"
    env = {"STORAGE_ALLOW_PATTERNS": '["*.json", "sub/"]', "STORAGE_IGNORE_PATTERNS": "sub/skip*"}
    result = cli([uri, str(dest)], env)
    assert result.returncode == 0, result.stderr
    assert tree(dest) == {"config.json": b"{}", "tokenizer.json": b"t"}  # sub/a.bin is whited out

    # Other patterns are another result: assembled again, not skipped.
    wider = cli(["--allow-pattern", "*.safetensors", uri, str(dest)])
    assert wider.returncode == 0, wider.stderr
    assert "already assembled" not in wider.stderr
    assert tree(dest)["big.safetensors"] == b"w"

    nothing = cli(["--allow-pattern", "*.onnx", uri, str(tmp_path / "none")])
    assert nothing.returncode == 1
    assert "no file matches the allow/ignore patterns (4 file(s) filtered out)" in nothing.stderr
    assert tree(tmp_path / "none", after_failure=True) == {}


def test_tampered_layer_among_good_ones_publishes_nothing_and_the_rerun_keeps_the_good_one(
    tmp_path: Path, oci_registry: Registry, fault_proxy_factory: Any
) -> None:
    repository = repo()
    a, b = os.urandom(MiB), os.urandom(MiB)
    digests = push_gzip_image(oci_registry.pusher(), repository, "v1", [[("models/a.bin", a)], [("models/b.bin", b)]])
    path = oci_registry.blob_file(digests[1])
    good = path.read_bytes()
    blob = bytearray(good)
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    proxy = fault_proxy_factory(oci_registry.port)
    uri = f"oci://127.0.0.1:{proxy.port}/{repository}:v1"
    dest = tmp_path / "out"
    result = cli([uri, str(dest)], {"STORAGE_INITIALIZER_RETRIES": "1"})
    assert result.returncode == 1
    assert f"layer-2-sha256-{digests[1][7:]}: sha256 is " in result.stderr
    assert f"the store announced {digests[1][7:]}" in result.stderr
    assert tree(dest, after_failure=True) == {}
    # The registry heals; the rerun fetches only the layer that failed.
    path.write_bytes(good)
    proxy.heads.clear()
    again = cli([uri, str(dest)])
    assert again.returncode == 0, again.stderr
    assert blob_heads(proxy, digests[0]) == [] and len(blob_heads(proxy, digests[1])) == 1
    assert tree(dest) == {"a.bin": a, "b.bin": b}


def test_layers_are_shared_through_the_node_cache(
    tmp_path: Path, oci_registry: Registry, fault_proxy_factory: Any
) -> None:
    weights = os.urandom(3 * MiB)
    repository = repo()
    (digest,) = push_gzip_image(oci_registry.pusher(), repository, "v1", [[("models/w.bin", weights)]])
    proxy = fault_proxy_factory(oci_registry.port)
    uri = f"oci://127.0.0.1:{proxy.port}/{repository}:v1"
    cache = {"STORAGE_INITIALIZER_CACHE_DIR": str(tmp_path / "cache")}
    first = cli([uri, str(tmp_path / "one")], cache)
    assert first.returncode == 0, first.stderr
    proxy.heads.clear()
    second = cli([uri, str(tmp_path / "two")], cache)
    assert second.returncode == 0, second.stderr
    assert blob_heads(proxy, digest) == []  # the layer came from the node's cache
    assert "node cache: 1 hits" in second.stderr
    assert tree(tmp_path / "one") == tree(tmp_path / "two") == {"w.bin": weights}


def test_image_with_a_manifest_pin_a_record_and_atomic_publish(tmp_path: Path, oci_registry: Registry) -> None:
    weights = os.urandom(2 * MiB)
    repository = repo()
    digests = push_gzip_image(
        oci_registry.pusher(), repository, "v1", [[("models/w.bin", weights)], [("models/c.json", b"{}")]]
    )
    pin = tmp_path / "SHA256SUMS"
    pin.write_text(f"{hashlib.sha256(weights).hexdigest()}  w.bin\n{hashlib.sha256(b'{}').hexdigest()}  c.json\n")
    record = tmp_path / "record.json"
    dest = tmp_path / "out"
    args = ["--expect-manifest", str(pin), "--strict-manifest", "--record", str(record)]
    result = cli([*args, oci_registry.uri(repository, ":v1"), str(dest)], {"STORAGE_INITIALIZER_PUBLISH": "atomic-dir"})
    assert result.returncode == 0, result.stderr
    assert tree(dest) == {"w.bin": weights, "c.json": b"{}"}
    (pair,) = json.loads(record.read_text())["pairs"]
    assert pair["extracted_files"] == 2
    assert sorted(f["checksums"]["sha256"] for f in pair["files"]) == sorted(d[7:] for d in digests)  # layers

    pin.write_text(f"{hashlib.sha256(b'other').hexdigest()}  w.bin\n")
    bad = cli(["--expect-manifest", str(pin), oci_registry.uri(repository, ":v1"), str(tmp_path / "bad")])
    assert bad.returncode == 1
    assert "w.bin" in bad.stderr
    assert tree(tmp_path / "bad", after_failure=True) == {}


def test_digest_pin_of_a_one_file_image_checks_the_assembled_file(tmp_path: Path, oci_registry: Registry) -> None:
    weights = os.urandom(MiB)
    repository = repo()
    push_gzip_image(oci_registry.pusher(), repository, "v1", [[("models/model.onnx", weights)]])
    uri = oci_registry.uri(repository, ":v1")
    pinned = cli(["--expect-digest", f"sha256:{hashlib.sha256(weights).hexdigest()}", uri, str(tmp_path / "ok")])
    assert pinned.returncode == 0, pinned.stderr
    assert tree(tmp_path / "ok") == {"model.onnx": weights}
    other = hashlib.sha256(b"other").hexdigest()
    wrong = cli(["--expect-digest", f"sha256:{other}", uri, str(tmp_path / "bad")])
    assert wrong.returncode == 1
    assert f"model.onnx: sha256 is {hashlib.sha256(weights).hexdigest()}, --expect-digest pins {other}" in wrong.stderr
    assert tree(tmp_path / "bad", after_failure=True) == {}
