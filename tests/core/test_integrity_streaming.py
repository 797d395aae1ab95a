"""Pins checked with the download, not after it: the sha256 is computed as the bytes arrive.

On stores that give no sha256 (plain HTTP, S3 without ``ChecksumSHA256``,
GCS), a pinned file is hashed while it streams: in one stream from the bytes
as they arrive, or, read as parallel ranged parts, in file order as the
parts land. What a user can check: the record says each file's sha256 was
``hashed while streaming`` (not ``after the download``), a body corrupted in
transit (a proxy inverting one byte) fails with the digest message and
publishes nothing, and a download killed with SIGKILL resumes and still
verifies (the kept prefix hashed from disk once, the record says so).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.cli import clean_env, run_cli
from tests.servers.fault_proxy import FaultProxy, ProxyFault
from tests.servers.gcs import FakeGcsServer
from tests.servers.http_server import Fault, HttpFileServer
from tests.servers.s3 import SeaweedFS

MiB = 1024 * 1024
STREAMING = "while streaming"
#: A whole object of 1 MiB or more from the event loop lands unhashed (splice) and is hashed from the page
#: cache by a worker right after: no read from the disk, no pass after the download.
LANDED = "while streaming, from the page cache as it landed"
IN_PARTS = "while streaming, in order as the parts landed"
#: Parallel 1 MiB parts, 4 at a time, for any file of 1 MiB or more.
PARTS = {
    "STORAGE_INITIALIZER_MULTIPART_THRESHOLD": "1M",
    "STORAGE_INITIALIZER_PART_SIZE": "1M",
    "STORAGE_INITIALIZER_FILE_CONCURRENCY": "4",
}
#: One stream whatever the size.
ONE_STREAM = {"STORAGE_INITIALIZER_MULTIPART_THRESHOLD": "1G"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def everything_in(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


def record_files(record: Path) -> dict[str, dict[str, Any]]:
    (pair,) = json.loads(record.read_text())["pairs"]
    return {f["path"]: f for f in pair["files"]}


def pinned_run(uri: str, dest: Path, digest: str, env: Mapping[str, str], record: Path) -> Any:
    return run_cli(["--record", str(record), "--expect-digest", f"sha256:{digest}", uri, str(dest)], env)


# -- HTTP: no checksum from the store -----------------------------------------------------------
def test_http_pin_is_hashed_while_streaming_in_one_stream_and_in_parts(
    http_server: HttpFileServer, tmp_path: Path
) -> None:
    data = os.urandom(6 * MiB + 12345)
    url = http_server.add("/m/model.bin", data)
    for name, env, how in (("one", ONE_STREAM, LANDED), ("parts", PARTS, IN_PARTS)):
        record = tmp_path / f"{name}.json"
        result = pinned_run(url, tmp_path / name, sha(data), env, record)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / name / "model.bin").read_bytes() == data
        assert f"digest pin verified: sha256:{sha(data)} (hashed {how})" in result.stderr
        entry = record_files(record)["model.bin"]
        assert entry["checksums"] == {}  # plain HTTP announces none
        assert entry["sha256"] == sha(data)
        assert entry["verified_by"] == {"sha256": {"against": ["--expect-digest"], "hashed": how}}


def test_http_body_corrupted_in_transit_fails_the_pin_and_publishes_nothing(
    http_server: HttpFileServer, fault_proxy_factory: Callable[..., FaultProxy], tmp_path: Path
) -> None:
    data = os.urandom(4 * MiB)
    http_server.add("/m/model.bin", data)
    proxy = fault_proxy_factory(http_server.port)
    for name, env in (("one", ONE_STREAM), ("parts", PARTS)):
        # One byte of one data answer inverted (the size probe spared): the store announces no
        # checksum, so only the pin can see it.
        proxy.add(ProxyFault("flip", after_bytes=300_000, unless="bytes=0-0"))
        record = tmp_path / f"{name}.json"
        result = pinned_run(f"{proxy.url}/m/model.bin", tmp_path / name, sha(data), env, record)
        assert result.returncode == 1, result.stderr
        assert proxy.injected and proxy.injected[-1].startswith("flip")
        errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
        assert len(errors) == 1
        assert "model.bin: sha256 is " in errors[0] and f"--expect-digest pins {sha(data)}" in errors[0]
        assert f"sha256 is {sha(data)}" not in errors[0]
        assert everything_in(tmp_path / name) == []  # nothing published, the stage removed
        (pair,) = json.loads(record.read_text())["pairs"]
        assert pair["status"] == "error" and "--expect-digest pins" in pair["error"]


def test_manifest_pin_hashes_the_listed_files_while_streaming(http_server: HttpFileServer, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    url = http_server.add("/w/weights.bin", data)
    manifest = tmp_path / "SHA256SUMS"
    manifest.write_text(f"{sha(data)}  weights.bin\n")
    record = tmp_path / "record.json"
    result = run_cli(["--record", str(record), "--expect-manifest", str(manifest), url, str(tmp_path / "out")], PARTS)
    assert result.returncode == 0, result.stderr
    assert f"manifest pin verified: 1 files (1 hashed {IN_PARTS})" in result.stderr
    entry = record_files(record)["weights.bin"]
    assert entry["verified_by"] == {"sha256": {"against": ["--expect-manifest"], "hashed": IN_PARTS}}


# -- S3 (SeaweedFS): an MD5 ETag or a CRC but no sha256 ---------------------------------------------
def test_s3_pin_is_hashed_with_the_store_checksum_in_the_same_pass(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    bucket = seaweedfs.new_bucket("stream")
    data = os.urandom(5 * MiB)
    seaweedfs.put(bucket, "m/model.bin", data)  # boto3's default CRC32 (and the ETag's MD5), no SHA-256
    for name, extra, how in (("one", ONE_STREAM, LANDED), ("parts", PARTS, IN_PARTS)):
        record = tmp_path / f"{name}.json"
        env = {**seaweedfs.env(), **extra}
        result = pinned_run(f"s3://{bucket}/m/model.bin", tmp_path / name, sha(data), env, record)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / name / "model.bin").read_bytes() == data
        entry = record_files(record)["model.bin"]
        (store_algorithm,) = entry["checksums"]  # the cheapest the store announced
        assert store_algorithm in ("crc32", "md5")
        assert entry["sha256"] == sha(data)
        assert entry["verified_by"] == {
            store_algorithm: {"against": ["store"], "hashed": how},
            "sha256": {"against": ["--expect-digest"], "hashed": how},
        }


# -- GCS (fake-gcs-server, media reads on the engine's event loop): crc32c/md5 but no sha256 -------
def test_gcs_pin_is_hashed_while_streaming(gcs_server: FakeGcsServer, tmp_path: Path) -> None:
    bucket = gcs_server.create_bucket()
    data = os.urandom(3 * MiB + 7)
    gcs_server.upload(bucket, "m/model.bin", data)
    for name, extra, how in (("one", ONE_STREAM, LANDED), ("parts", PARTS, IN_PARTS)):
        record = tmp_path / f"{name}.json"
        env = {
            "STORAGE_EMULATOR_HOST": gcs_server.url,
            "HOME": str(tmp_path / "home"),
            "NO_GCE_CHECK": "true",
            "GCE_METADATA_HOST": "127.0.0.1:9",
            "GCE_METADATA_IP": "127.0.0.1:9",
            **extra,
        }
        result = pinned_run(f"gs://{bucket}/m/model.bin", tmp_path / name, sha(data), env, record)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / name / "model.bin").read_bytes() == data
        entry = record_files(record)["model.bin"]
        (store_algorithm,) = entry["checksums"]  # crc32c (its C library) or md5
        assert entry["verified_by"] == {
            store_algorithm: {"against": ["store"], "hashed": how},
            "sha256": {"against": ["--expect-digest"], "hashed": how},
        }


# -- resume after SIGKILL -----------------------------------------------------------------------
def _kept(dest: Path) -> int:
    """The bytes a rerun keeps, as the resume state says: a stream's prefix, or the parts done.
    (A pinned download stages in DEST/.si-staging/ID/, with its own state directory.)"""
    kept = 0
    for path in dest.rglob(".storage-initializer/partial/*.json"):
        try:
            record = json.loads(path.read_text())
            if record["part_size"] == -1:
                kept += sum(t.stat().st_size for t in path.parents[2].glob("*.si-partial"))
            else:
                size, part = record["size"], record["part_size"]
                kept += sum(min(part, size - i * part) for i in record["done"])
        except (OSError, ValueError):
            continue  # being replaced, or published meanwhile
    return kept


def _kill_when(dest: Path, args: list[str], env: Mapping[str, str], kept: int) -> None:
    """Start the CLI, SIGKILL it once ``kept`` bytes are on disk for a rerun (the server holds
    the rest back). The bytes the server sent may still sit in socket buffers: what counts is
    what the resume state says landed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "storage_initializer", *args],
        env=clean_env(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while _kept(dest) < kept and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the download ended before it could be killed"
        assert _kept(dest) >= kept, "the download never got going"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(10)


def test_pinned_download_killed_and_resumed_still_verifies(http_server: HttpFileServer, tmp_path: Path) -> None:
    data = os.urandom(8 * MiB)
    url = http_server.add("/m/model.bin", data)
    cases = (
        # One stream: the server goes silent after 5 MiB.
        ("one", ONE_STREAM, Fault(stall_after=5 * MiB, stall_seconds=15, stall_times=1)),
        # Parts of 1 MiB, 2 at a time: those from 5 MiB on are held back, the first five complete.
        ("parts", {**PARTS, "STORAGE_INITIALIZER_FILE_CONCURRENCY": "2"}, Fault(hold_from=5 * MiB, hold_seconds=15)),
    )
    for name, env, fault in cases:
        dest, record = tmp_path / name, tmp_path / f"{name}.json"
        args = ["--record", str(record), "--expect-digest", f"sha256:{sha(data)}", url, str(dest)]
        http_server.faults["/m/model.bin"] = fault
        http_server.reset_counters()
        _kill_when(dest, args, env, kept=5 * MiB)
        assert not (dest / "model.bin").exists()  # still in the stage
        http_server.faults.clear()
        http_server.reset_counters()
        result = run_cli(args, env)
        assert result.returncode == 0, result.stderr
        assert "resuming model.bin" in result.stderr
        assert http_server.bytes_sent <= len(data) - 4 * MiB  # the kept bytes were not fetched again
        assert (dest / "model.bin").read_bytes() == data and everything_in(dest) == ["model.bin"]
        hashed = record_files(record)["model.bin"]["verified_by"]["sha256"]["hashed"]
        assert hashed.startswith(STREAMING if name == "one" else IN_PARTS), hashed
        assert "bytes, on disk from an interrupted download, read back once)" in hashed, hashed


# -- the in-order hasher itself -------------------------------------------------------------------
class _Landing:
    """Write ``data``'s parts from 4 threads in chunks, in shuffled order, as the engine's streams
    do: even threads report each chunk with its bytes, odd ones only its offset (as the event
    loop does when it splices; to a hasher that takes a part's bytes by ``feed``, odd threads
    report nothing and its ``part_done`` reads them back). ``direct`` counts the bytes reported
    with their data."""

    CHUNK = 64 * 1024

    def __init__(self, data: bytes, parts: list[tuple[int, int]], fd: int, seed: int) -> None:
        import random

        self.data, self.parts, self.fd = data, parts, fd
        self.direct = 0
        self._queue = list(range(len(parts)))
        random.Random(seed).shuffle(self._queue)

    def skip(self, index: int) -> None:
        self._queue.remove(index)

    def run(self, hasher: Any) -> None:
        import threading

        lock = threading.Lock()

        def worker(direct: bool) -> None:
            while True:
                with lock:
                    if not self._queue:
                        return
                    index = self._queue.pop()
                start, end = self.parts[index]
                feed = hasher.feed(index) if hasattr(hasher, "feed") else None
                for offset in range(start, end, self.CHUNK):
                    piece = memoryview(self.data)[offset : min(offset + self.CHUNK, end)]
                    os.pwrite(self.fd, piece, offset)
                    if feed is None:
                        hasher.landed(index, offset + len(piece), piece if direct else None)
                    elif direct:
                        feed.update(piece)
                    if direct:
                        with lock:
                            self.direct += len(piece)
                hasher.part_done(index)

        threads = [threading.Thread(target=worker, args=(i % 2 == 0,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def _thread_buffers(size: int) -> Callable[[], memoryview]:
    """The engine's per-thread read-back buffer."""
    import threading

    buffers = threading.local()

    def buffer() -> memoryview:
        if not hasattr(buffers, "view"):
            buffers.view = memoryview(bytearray(size))
        return buffers.view  # type: ignore[no-any-return]

    return buffer


def test_in_order_hasher_follows_parts_landing_out_of_order(tmp_path: Path) -> None:
    """Parts written concurrently in chunks, completing in shuffled order, some reporting the
    bytes they wrote and some only their offset (as the event loop does): the digest is the
    file's whatever the interleaving; landing in order with the bytes, nothing is read back."""
    from storage_initializer.engine.hashing import Digests
    from storage_initializer.engine.inorder import InOrderHasher

    data = os.urandom(5 * MiB + 999)
    part, chunk = 512 * 1024, _Landing.CHUNK
    parts = [(s, min(s + part, len(data))) for s in range(0, len(data), part)]
    path = tmp_path / "f"
    path.write_bytes(b"\0" * len(data))
    fd = os.open(path, os.O_RDWR)
    buffer = _thread_buffers(256 * 1024)
    try:
        hasher = InOrderHasher(Digests(None, sha256=True), fd, parts, buffer)
        hasher.resumed([])  # nothing on disk yet: a no-op
        _Landing(data, parts, fd, seed=7).run(hasher)
        assert hasher.finish().sha256() == sha(data)
        # The frontier's bytes, reported with the data, are hashed from it: nothing read back.
        in_order = InOrderHasher(Digests(None, sha256=True), fd, parts, buffer)
        for index, (start, end) in enumerate(parts):
            for offset in range(start, end, chunk):
                piece = memoryview(data)[offset : min(offset + chunk, end)]
                in_order.landed(index, offset + len(piece), piece)
            in_order.part_done(index)
        assert in_order.finish().sha256() == sha(data) and in_order.read_back == 0
    finally:
        os.close(fd)


def test_in_order_hasher_hashes_a_resumed_prefix_from_disk_once(tmp_path: Path) -> None:
    from storage_initializer.engine.hashing import Digests
    from storage_initializer.engine.inorder import InOrderHasher

    data = os.urandom(4 * MiB)
    parts = [(s, s + MiB) for s in range(0, len(data), MiB)]
    path = tmp_path / "f"
    path.write_bytes(data[: 2 * MiB] + b"\0" * MiB + data[3 * MiB :])  # parts 0, 1 and 3 kept
    fd = os.open(path, os.O_RDWR)
    try:
        hasher = InOrderHasher(Digests(None, sha256=True), fd, parts, lambda: memoryview(bytearray(MiB)))
        hasher.resumed([0, 1, 3])
        assert hasher.from_disk == 2 * MiB and hasher.read_back == 2 * MiB  # the contiguous prefix only
        os.pwrite(fd, data[2 * MiB : 3 * MiB], 2 * MiB)
        hasher.landed(2, 3 * MiB, memoryview(data)[2 * MiB : 3 * MiB])  # hashed from the bytes given
        hasher.part_done(2)  # part 3 follows, from disk
        assert hasher.finish().sha256() == sha(data)
        assert hasher.read_back == 3 * MiB
    finally:
        os.close(fd)


def _crc(name: str, data: bytes) -> str:
    import awscrt.checksums

    digits = 16 if name == "crc64nvme" else 8
    return f"{getattr(awscrt.checksums, name)(data):0{digits}x}"


@pytest.mark.parametrize("algorithm", ["crc64nvme", "crc32c", "crc32"])
def test_partwise_hasher_combines_parts_hashed_in_any_order(tmp_path: Path, algorithm: str) -> None:
    """Parts written concurrently in chunks, in shuffled order, some reporting the bytes they
    wrote and some only their offset (as the event loop does), one of them kept from an earlier
    run: the combined CRC is the whole file's, and bytes reported with the data are not read back."""
    from storage_initializer.engine.hashing import Checksum
    from storage_initializer.engine.partwise import PartwiseHasher

    data = os.urandom(5 * MiB + 999)
    part = 512 * 1024
    parts = [(s, min(s + part, len(data))) for s in range(0, len(data), part)]
    path = tmp_path / "f"
    kept = 3
    start, end = parts[kept]
    path.write_bytes(b"\0" * start + data[start:end] + b"\0" * (len(data) - end))
    fd = os.open(path, os.O_RDWR)
    buffer = _thread_buffers(200 * 1024)  # smaller than a landing: several reads
    try:
        hasher = PartwiseHasher(Checksum(algorithm, _crc(algorithm, data)), fd, parts, buffer)
        hasher.resumed([kept])
        assert hasher.from_disk == hasher.read_back == end - start
        landing = _Landing(data, parts, fd, seed=11)
        landing.skip(kept)
        landing.run(hasher)
        digests = hasher.finish()
        assert digests.hexdigest() == _crc(algorithm, data)
        assert digests.checksum is not None and digests.checksum.algorithm == algorithm
        assert hasher.read_back == len(data) - landing.direct
        # The same parts hashed from disk after a byte changed there: the digest is not the store's.
        os.pwrite(fd, b"\xff", 7)
        again = PartwiseHasher(Checksum(algorithm, _crc(algorithm, data)), fd, parts, buffer)
        again.resumed(list(range(len(parts))))
        assert again.finish().hexdigest() != _crc(algorithm, data)
    finally:
        os.close(fd)


def test_partwise_hasher_reads_back_only_what_was_not_fed(tmp_path: Path) -> None:
    """A part fed to its end is not read again by part_done; one fed halfway is read back from
    where the feed stopped."""
    from storage_initializer.engine.hashing import Checksum
    from storage_initializer.engine.partwise import PartwiseHasher

    data = os.urandom(2 * MiB)
    parts = [(0, MiB), (MiB, 2 * MiB)]
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        checksum = Checksum("crc64nvme", _crc("crc64nvme", data))
        hasher = PartwiseHasher(checksum, fd, parts, lambda: memoryview(bytearray(MiB // 8)))
        hasher.feed(1).update(memoryview(data)[MiB:])
        hasher.part_done(1)
        hasher.feed(0).update(memoryview(data)[: MiB // 2])
        hasher.part_done(0)
        assert hasher.read_back == MiB // 2
        assert hasher.finish().hexdigest() == _crc("crc64nvme", data)
    finally:
        os.close(fd)
