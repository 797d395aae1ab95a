"""S3 version ids (SeaweedFS, versioned buckets): recorded per file, and reads pinned to them.

ListObjectsV2 carries no version id: an object that gets a ``HeadObject`` (a
URI naming one object, large objects) takes it from there and every read is
pinned with ``versionId=``; the others learn it from their GET answer. The
record (``--record``) names each file's ``version_id``; an unversioned bucket
records none, and an object written before versioning was enabled records
``null``, because that is what S3 answers for it (and ``versionId=null``
reads it).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.cli import clean_env, run_cli
from tests.servers.fault_proxy import FaultProxy, ProxyFault
from tests.servers.s3 import SeaweedFS

MiB = 1024 * 1024
PARTS = {
    "STORAGE_INITIALIZER_MULTIPART_THRESHOLD": "1M",
    "STORAGE_INITIALIZER_PART_SIZE": "1M",
    "STORAGE_INITIALIZER_FILE_CONCURRENCY": "2",
}


def record_files(record: Path) -> dict[str, dict[str, Any]]:
    (pair,) = json.loads(record.read_text())["pairs"]
    return {f["path"]: f for f in pair["files"]}


def versioned_bucket(seaweedfs: SeaweedFS) -> tuple[str, Any]:
    bucket = seaweedfs.new_bucket("ver")
    client = seaweedfs.client()
    return bucket, client


def test_versioned_bucket_records_each_files_version_id(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    bucket, client = versioned_bucket(seaweedfs)
    old = client.put_object(Bucket=bucket, Key="m/tokenizer.txt", Body=b"written before versioning")
    assert "VersionId" not in old
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    client.put_object(Bucket=bucket, Key="m/config.json", Body=b'{"v": 1}')
    config = client.put_object(Bucket=bucket, Key="m/config.json", Body=b'{"v": 2}')["VersionId"]
    weights_data = os.urandom(3 * MiB)
    weights = client.put_object(Bucket=bucket, Key="m/weights.bin", Body=weights_data)["VersionId"]
    record = tmp_path / "record.json"
    env = {**seaweedfs.env(), **PARTS}
    result = run_cli(["--record", str(record), f"s3://{bucket}/m", str(tmp_path / "dir")], env)
    assert result.returncode == 0, result.stderr
    files = record_files(record)
    assert files["config.json"]["version_id"] == config  # the current version, learned from its GET
    assert files["weights.bin"]["version_id"] == weights
    assert files["tokenizer.txt"]["version_id"] == "null"  # S3's own word for a pre-versioning object
    assert (tmp_path / "dir" / "config.json").read_bytes() == b'{"v": 2}'
    assert (tmp_path / "dir" / "weights.bin").read_bytes() == weights_data
    assert (tmp_path / "dir" / "tokenizer.txt").read_bytes() == b"written before versioning"
    # One object (a HeadObject gives its id first), read as pinned parts, and the null version.
    for key, version, data in (("m/weights.bin", weights, weights_data), ("m/tokenizer.txt", "null", None)):
        result = run_cli(["--record", str(record), f"s3://{bucket}/{key}", str(tmp_path / "one")], env)
        assert result.returncode == 0, result.stderr
        (entry,) = record_files(record).values()
        assert entry["version_id"] == version
        if data is not None:
            assert (tmp_path / "one" / "weights.bin").read_bytes() == data


def test_unversioned_bucket_records_no_version_id(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    bucket = seaweedfs.new_bucket("nover")
    seaweedfs.put(bucket, "m/a.bin", b"a" * 1000)
    seaweedfs.put(bucket, "m/b.bin", os.urandom(2 * MiB))
    record = tmp_path / "record.json"
    for uri in (f"s3://{bucket}/m", f"s3://{bucket}/m/b.bin"):
        result = run_cli(["--record", str(record), uri, str(tmp_path / "out")], {**seaweedfs.env(), **PARTS})
        assert result.returncode == 0, result.stderr
        for entry in record_files(record).values():
            assert "version_id" not in entry  # S3 sent no x-amz-version-id: nothing made up


def test_reads_stay_on_the_listed_version_while_the_object_is_replaced(
    seaweedfs: SeaweedFS, fault_proxy_factory: Callable[..., FaultProxy], tmp_path: Path
) -> None:
    bucket, client = versioned_bucket(seaweedfs)
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    first = os.urandom(6 * MiB)
    version = client.put_object(Bucket=bucket, Key="w.bin", Body=first)["VersionId"]
    proxy = fault_proxy_factory(int(seaweedfs.endpoint_url.rsplit(":", 1)[1]))
    # The first read goes silent: it is dropped after the stall timeout and sent again, after the
    # object was replaced. Unpinned, If-Match would refuse it (412: changed during the download).
    proxy.add(ProxyFault("stall", after_bytes=200_000, seconds=30, match="w.bin?versionId="))
    record = tmp_path / "record.json"
    pin = hashlib.sha256(first).hexdigest()
    env = {**seaweedfs.env(), "AWS_ENDPOINT_URL": proxy.url, "STORAGE_INITIALIZER_STALL_TIMEOUT": "2", **PARTS}
    args = ["--record", str(record), "--expect-digest", f"sha256:{pin}", f"s3://{bucket}/w.bin", str(tmp_path / "out")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "storage_initializer", *args],
        env=clean_env(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not proxy.injected and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proxy.injected and proc.poll() is None
    client.put_object(Bucket=bucket, Key="w.bin", Body=b"a newer model")  # mid-download
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "stalled connection" in stderr  # the read was sent again, after the replacement
    assert (tmp_path / "out" / "w.bin").read_bytes() == first  # not spliced, not failed: the pinned version
    reads = [line for _, line in proxy.requests if line.startswith(f"GET /{bucket}/w.bin")]
    assert len(reads) > 6 and all(f"?versionId={version} " in line for line in reads)  # every read pinned
    (entry,) = record_files(record).values()
    assert entry["version_id"] == version
