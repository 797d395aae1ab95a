"""Seed an S3 store the way AWS S3 holds objects today: rclone's shapes, plus S3's CRC64NVME.

Since 2025 AWS S3 gives every new object a full-object CRC64NVME checksum (it computes one
when the uploader sends none). SeaweedFS stores the checksum an uploader sends but computes
none itself, so this seeder sends it, and otherwise uploads exactly as ``rclone copy`` does
with its defaults, so that every peer sees the objects it saw before:

* under 200 MiB (rclone's ``upload_cutoff``): one PUT, so the ETag is the MD5;
* larger: a multipart upload of 5 MiB parts (rclone's ``chunk_size``) with rclone's
  ``x-amz-meta-md5chksum`` (the MD5 rclone checks large downloads against);
* both with ``x-amz-meta-mtime`` as rclone writes it, and ``x-amz-checksum-crc64nvme``
  (full object, as S3 names it on a whole-object GET with ``x-amz-checksum-mode: ENABLED``).

Measured here: 4000 x 64 KiB in ~12 s, 2 GiB multipart in ~10 s (MD5 is the cost).
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from awscrt.checksums import crc64nvme

UPLOAD_CUTOFF = 200 * 1024 * 1024
CHUNK = 5 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _crc(value: int) -> str:
    return _b64(value.to_bytes(8, "big"))


def _files(root: Path) -> Iterator[tuple[Path, str]]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path, path.relative_to(root).as_posix()


def _mtime(path: Path) -> str:
    return f"{path.stat().st_mtime:.9f}"


def _put(client: Any, bucket: str, key: str, path: Path) -> None:
    data = path.read_bytes()
    client.put_object(
        Bucket=bucket,
        Key=key,
        Body=data,
        ChecksumCRC64NVME=_crc(crc64nvme(data)),
        Metadata={"mtime": _mtime(path)},
    )


def _multipart(client: Any, bucket: str, key: str, path: Path, workers: int) -> None:
    md5, whole = hashlib.md5(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            md5.update(chunk)
            whole = crc64nvme(chunk, whole)
    upload = client.create_multipart_upload(
        Bucket=bucket,
        Key=key,
        ChecksumAlgorithm="CRC64NVME",
        ChecksumType="FULL_OBJECT",
        Metadata={"md5chksum": _b64(md5.digest()), "mtime": _mtime(path)},
    )
    size = path.stat().st_size

    def part(number: int) -> dict[str, Any]:
        with open(path, "rb") as handle:
            handle.seek((number - 1) * CHUNK)
            data = handle.read(CHUNK)
        checksum = _crc(crc64nvme(data))
        answer = client.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=data,
            ChecksumCRC64NVME=checksum,
        )
        return {"PartNumber": number, "ETag": answer["ETag"], "ChecksumCRC64NVME": checksum}

    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(part, range(1, -(-size // CHUNK) + 1)))
    client.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": parts},
        ChecksumCRC64NVME=_crc(whole),
        ChecksumType="FULL_OBJECT",
    )


def seed(client: Any, bucket: str, prefix: str, local: Path, workers: int = 8) -> int:
    """Upload every file below ``local`` to ``bucket``/``prefix``/...; return how many."""
    small, large = [], []
    for path, rel in _files(local):
        (large if path.stat().st_size >= UPLOAD_CUTOFF else small).append((path, f"{prefix}/{rel}"))
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda item: _put(client, bucket, item[1], item[0]), small))
    for path, key in large:
        _multipart(client, bucket, key, path, workers)
    return len(small) + len(large)


if __name__ == "__main__":  # a check by hand: python bench/seed_s3.py ENDPOINT BUCKET PREFIX DIR
    import sys

    import boto3

    endpoint, bucket, prefix, directory = sys.argv[1:5]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=os.environ.get("AWS_REGION", "us-east-1"))
    print(seed(s3, bucket, prefix, Path(directory)), "objects")
