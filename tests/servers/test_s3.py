"""Proof of the S3 test servers: every claim in ``tests/servers/s3.py``'s docstring, checked
with boto3 against SeaweedFS and moto, so the S3 provider can rely on it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from botocore.exceptions import ClientError

from tests.servers.s3 import MiB, S3Server, SeaweedFS, etag_kind, pattern_bytes

EMPTY_MD5 = hashlib.md5(b"").hexdigest()


def error_of(call: Callable[..., Any], **kwargs: Any) -> tuple[int, str]:
    """(HTTP status, S3 error code) of a call that must fail."""
    with pytest.raises(ClientError) as info:
        call(**kwargs)
    response = info.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def keys_of(listing: dict[str, Any]) -> list[str]:
    return [item["Key"] for item in listing.get("Contents", [])]


def test_binds_loopback_only(s3_server: S3Server) -> None:
    assert s3_server.pid is not None
    listening = [c.laddr for c in psutil.Process(s3_server.pid).net_connections() if c.status == "LISTEN"]
    assert listening
    assert {address.ip for address in listening} == {"127.0.0.1"}


def test_env_drives_a_fresh_boto3_process(s3_server: S3Server, tmp_path: Path) -> None:
    """env() alone (no config files) points a default boto3 client at the server, as for the CLI."""
    bucket = s3_server.new_bucket()
    s3_server.put(bucket, "dir/file.txt", b"payload")
    script = (
        "import boto3, json, sys; s3 = boto3.client('s3');"
        "body = s3.get_object(Bucket=sys.argv[1], Key='dir/file.txt')['Body'].read().decode();"
        "print(json.dumps([s3.meta.endpoint_url, s3.meta.region_name, body]))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    env |= s3_server.env()
    assert set(s3_server.env()) == {
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
    }
    out = subprocess.run(
        [sys.executable, "-c", script, bucket], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(out.stdout) == [s3_server.endpoint_url, "us-east-1", "payload"]
    legacy = s3_server.legacy_env()
    assert legacy["S3_ENDPOINT"] == s3_server.endpoint_url.removeprefix("http://")
    assert legacy["S3_USE_HTTPS"] == "0"


def test_range_reads(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    s3_server.put(bucket, "digits", b"0123456789")
    s3 = s3_server.client()
    for header, content_range, body in [
        ("bytes=2-5", "bytes 2-5/10", b"2345"),
        ("bytes=5-", "bytes 5-9/10", b"56789"),
        ("bytes=-3", "bytes 7-9/10", b"789"),
        ("bytes=8-100", "bytes 8-9/10", b"89"),
    ]:
        response = s3.get_object(Bucket=bucket, Key="digits", Range=header)
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert response["ContentRange"] == content_range
        assert response["ContentLength"] == len(body)
        assert response["Body"].read() == body
    assert error_of(s3.get_object, Bucket=bucket, Key="digits", Range="bytes=10-20") == (416, "InvalidRange")


def test_if_match_pins_the_version(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    s3 = s3_server.client()
    single = s3_server.put(bucket, "single", b"0123456789")
    multi = s3_server.put_large(bucket, "multi", 6 * MiB, part_size=5 * MiB).etag
    for key, etag in [("single", single), ("multi", multi)]:
        ok = s3.get_object(Bucket=bucket, Key=key, IfMatch=f'"{etag}"', Range="bytes=0-3")
        assert ok["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert ok["Body"].read() == (b"0123" if key == "single" else pattern_bytes(0, 0, 4))
        wrong = '"0123456789abcdef0123456789abcdef"'
        assert error_of(s3.get_object, Bucket=bucket, Key=key, IfMatch=wrong) == (412, "PreconditionFailed")
        assert error_of(s3.get_object, Bucket=bucket, Key=key, IfMatch=wrong, Range="bytes=0-3") == (
            412,
            "PreconditionFailed",
        )
        assert error_of(s3.head_object, Bucket=bucket, Key=key, IfMatch=wrong) == (412, "412")


def test_etags_and_large_object_helpers(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    s3 = s3_server.client()

    assert s3_server.put(bucket, "small", b"hello") == hashlib.md5(b"hello").hexdigest()
    assert s3_server.put(bucket, "empty", b"") == EMPTY_MD5
    assert etag_kind(s3_server.etag(bucket, "small")) == "md5"

    multi = s3_server.put_large(bucket, "multi", 11 * MiB, seed=7, part_size=5 * MiB)
    part_md5s = b"".join(
        hashlib.md5(pattern_bytes(7, offset, min(5 * MiB, multi.size - offset))).digest()
        for offset in range(0, multi.size, 5 * MiB)
    )
    assert multi.etag == f"{hashlib.md5(part_md5s).hexdigest()}-3" == s3_server.etag(bucket, "multi")
    assert etag_kind(multi.etag) == "multipart"
    body = s3.get_object(Bucket=bucket, Key="multi")["Body"].read()
    assert len(body) == multi.size
    assert hashlib.sha256(body).hexdigest() == multi.sha256()
    across = s3.get_object(Bucket=bucket, Key="multi", Range=f"bytes={5 * MiB - 3}-{5 * MiB + 2}")
    assert across["Body"].read() == multi.expected(5 * MiB - 3, 5 * MiB + 2) == body[5 * MiB - 3 : 5 * MiB + 3]

    single = s3_server.put_large(bucket, "single", 6 * MiB + 1, seed=8, multipart=False)
    assert single.etag == single.md5() == s3_server.etag(bucket, "single")
    assert etag_kind(single.etag) == "md5"
    tail = s3.get_object(Bucket=bucket, Key="single", Range="bytes=-5")["Body"].read()
    assert tail == single.expected(single.size - 5, single.size - 1)


def list_all(s3: Any, **kwargs: Any) -> list[tuple[list[str], list[str]]]:
    """Follow ContinuationTokens; one (keys, common prefixes) pair per page."""
    pages, token = [], None
    while True:
        page = s3.list_objects_v2(**kwargs, **({"ContinuationToken": token} if token else {}))
        pages.append((keys_of(page), [p["Prefix"] for p in page.get("CommonPrefixes", [])]))
        assert page["KeyCount"] == len(pages[-1][0]) + len(pages[-1][1])
        if not page["IsTruncated"]:
            assert "NextContinuationToken" not in page
            return pages
        token = page["NextContinuationToken"]


def test_list_objects_v2_paging(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    keys = [f"k{i:02d}" for i in range(25)]
    assert s3_server.put_many(bucket, {key: b"" for key in keys}) == 25
    s3 = s3_server.client()

    pages = list_all(s3, Bucket=bucket, MaxKeys=10)
    assert [page[0] for page in pages] == [keys[:10], keys[10:20], keys[20:]]
    assert keys_of(s3.list_objects_v2(Bucket=bucket, StartAfter="k21")) == ["k22", "k23", "k24"]
    assert list_all(s3, Bucket=bucket, StartAfter="k05", MaxKeys=10)[1][0] == keys[16:]
    assert keys_of(s3.list_objects_v2(Bucket=bucket, Prefix="k2")) == keys[20:]
    assert keys_of(s3.list_objects_v2(Bucket=bucket, Prefix="k1", StartAfter="k18")) == ["k19"]
    assert s3.list_objects_v2(Bucket=bucket, Prefix="nothing")["KeyCount"] == 0


def test_default_page_is_1000_keys(seaweedfs: SeaweedFS) -> None:
    """Only on SeaweedFS: seeding 1001 keys into moto (with auth) takes ~8 s."""
    bucket = seaweedfs.new_bucket()
    seaweedfs.put_many(bucket, {f"k{i:04d}": b"" for i in range(1001)})
    s3 = seaweedfs.client()
    first = s3.list_objects_v2(Bucket=bucket)
    assert (first["KeyCount"], first["MaxKeys"], first["IsTruncated"]) == (1000, 1000, True)
    rest = s3.list_objects_v2(Bucket=bucket, ContinuationToken=first["NextContinuationToken"])
    assert keys_of(rest) == ["k1000"] and rest["IsTruncated"] is False


def test_delimiter_markers_and_empty_objects(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    s3_server.put_many(bucket, {"dir/": b"", "dir/a": b"1", "dir/sub/b": b"22", "empty": b"", "top": b"3"})
    s3 = s3_server.client()

    listing = s3.list_objects_v2(Bucket=bucket)
    assert [(item["Key"], item["Size"]) for item in listing["Contents"]] == [
        ("dir/", 0),
        ("dir/a", 1),
        ("dir/sub/b", 2),
        ("empty", 0),
        ("top", 1),
    ]
    assert s3.get_object(Bucket=bucket, Key="empty")["Body"].read() == b""

    root = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert keys_of(root) == ["empty", "top"]
    assert root["CommonPrefixes"] == [{"Prefix": "dir/"}]
    assert root["KeyCount"] == 3
    inside = s3.list_objects_v2(Bucket=bucket, Delimiter="/", Prefix="dir/")
    assert keys_of(inside) == ["dir/", "dir/a"]
    assert inside["CommonPrefixes"] == [{"Prefix": "dir/sub/"}]

    assert list_all(s3, Bucket=bucket, Delimiter="/", MaxKeys=2) == [(["empty"], ["dir/"]), (["top"], [])]


def test_key_names(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    s3 = s3_server.client()
    plain = ["a b.txt", "ü/ñ.bin", "z+plus", "pct%20", "a..b", "x/..y", " lead", "trail "]
    s3_server.put_many(bucket, {key: key.encode() for key in plain})
    assert keys_of(s3.list_objects_v2(Bucket=bucket)) == sorted(plain, key=lambda k: k.encode())
    for key in plain:
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == key.encode()

    odd = ["x/../y", "../up", "x/./z", "/lead", "dir//double"]
    if s3_server.verbatim_keys:  # moto: as S3, stored verbatim
        s3_server.put_many(bucket, {key: b"v" for key in odd})
        assert set(odd) <= set(keys_of(s3.list_objects_v2(Bucket=bucket)))
        for key in odd:
            assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"v"
        s3_server.put(bucket, "n" * 1025, b"")  # S3 would say KeyTooLongError
    else:  # SeaweedFS: a file system underneath
        for key in odd[:3]:
            assert error_of(s3.put_object, Bucket=bucket, Key=key, Body=b"v") == (400, "InvalidRequest")
        s3_server.put(bucket, "/lead", b"v")
        s3_server.put(bucket, "dir//double", b"v")
        listed = keys_of(s3.list_objects_v2(Bucket=bucket))
        assert "lead" in listed and "dir/double" in listed
        assert "/lead" not in listed and "dir//double" not in listed
        s3_server.put(bucket, "d/" + "s" * 255, b"")
        assert error_of(s3.put_object, Bucket=bucket, Key="d/" + "s" * 256, Body=b"") == (400, "KeyTooLongError")

    # SeaweedFS: a "directory" object keeps no body, an emptied directory still lists as a prefix.
    s3_server.put(bucket, "m/", b"not empty")
    marker = s3.get_object(Bucket=bucket, Key="m/")["Body"].read()
    assert marker == (b"not empty" if s3_server.verbatim_keys else b"")
    s3_server.put(bucket, "gone/file", b"v")
    s3.delete_object(Bucket=bucket, Key="gone/file")
    prefixes = s3.list_objects_v2(Bucket=bucket, Delimiter="/").get("CommonPrefixes", [])
    assert ({"Prefix": "gone/"} in prefixes) is not s3_server.verbatim_keys


def test_presigned_get(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    s3_server.put(bucket, "dir/a b.bin", b"0123456789")
    url = s3_server.presigned_url(bucket, "dir/a b.bin")
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url and "X-Amz-Signature=" in url
    if not s3_server.presigned_urls:  # moto with IAM auth on: a crash, not an S3 answer
        assert requests.get(url, timeout=30).status_code == 500
        return
    response = requests.get(url, timeout=30)
    assert (response.status_code, response.content) == (200, b"0123456789")
    ranged = requests.get(url, headers={"Range": "bytes=1-2"}, timeout=30)
    assert (ranged.status_code, ranged.content, ranged.headers["Content-Range"]) == (206, b"12", "bytes 1-2/10")
    tampered = requests.get(url.replace("X-Amz-Signature=", "X-Amz-Signature=0"), timeout=30)
    assert tampered.status_code == 403
    assert b"<Code>SignatureDoesNotMatch</Code>" in tampered.content
    missing = requests.get(s3_server.presigned_url(bucket, "nope"), timeout=30)
    assert missing.status_code == 404 and b"<Code>NoSuchKey</Code>" in missing.content


def test_error_codes(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    s3_server.put(bucket, "obj", b"x")
    s3 = s3_server.client(retries={"max_attempts": 1})

    missing_bucket = f"{bucket}-missing"
    assert error_of(s3.get_object, Bucket=missing_bucket, Key="obj") == (404, "NoSuchBucket")
    assert error_of(s3.list_objects_v2, Bucket=missing_bucket) == (404, "NoSuchBucket")
    assert error_of(s3.head_bucket, Bucket=missing_bucket) == (404, "404")
    assert error_of(s3.get_object, Bucket=bucket, Key="nope") == (404, "NoSuchKey")
    assert error_of(s3.head_object, Bucket=bucket, Key="nope") == (404, "404")

    for access_key, secret_key, code in [
        ("AKIAUNKNOWNKEY000000", "whatever", "InvalidAccessKeyId"),
        (s3_server.access_key, "wrong-secret", "SignatureDoesNotMatch"),
        (s3_server.denied_access_key, s3_server.denied_secret_key, "AccessDenied"),
    ]:
        other = s3_server.client(access_key, secret_key, retries={"max_attempts": 1})
        assert error_of(other.get_object, Bucket=bucket, Key="obj") == (403, code)
        assert error_of(other.list_objects_v2, Bucket=bucket) == (403, code)
        assert error_of(other.head_object, Bucket=bucket, Key="obj") == (403, "403")

    unsigned = requests.get(f"{s3_server.endpoint_url}/{bucket}/obj", timeout=30)
    assert unsigned.status_code == 403
    if s3_server.name == "seaweedfs":
        assert b"<Code>AccessDenied</Code>" in unsigned.content
    else:
        assert unsigned.content == b""


def test_seaweedfs_stop_leaves_nothing_behind() -> None:
    with SeaweedFS() as server:
        pid, workdir, ports = server.pid, server.workdir, server.ports
        bucket = server.new_bucket()
        server.put(bucket, "k", b"v")
        assert pid is not None and psutil.pid_exists(pid)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not workdir.exists()
    assert not [p for port in ports for p in Path("/tmp").glob(f"seaweedfs-*-{port + 10000}.sock")]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SLOW_TESTS") != "1", reason="2 GiB upload: set SLOW_TESTS=1")
@pytest.mark.timeout(900)
def test_seaweedfs_holds_a_2_gib_object(seaweedfs: SeaweedFS) -> None:
    """The volume settings fit a 2 GiB object (chunked over several 256 MiB volumes)."""
    bucket = seaweedfs.new_bucket()
    size = 2048 * MiB
    big = seaweedfs.put_large(bucket, "big.bin", size, seed=3, part_size=64 * MiB)
    assert big.etag.endswith("-32") and etag_kind(big.etag) == "multipart"
    s3 = seaweedfs.client()
    assert s3.head_object(Bucket=bucket, Key="big.bin")["ContentLength"] == size
    for start in (0, 256 * MiB - 5, size - 7):
        got = s3.get_object(Bucket=bucket, Key="big.bin", Range=f"bytes={start}-{start + 9}")["Body"].read()
        assert got == big.expected(start, start + 9)
    digest = hashlib.sha256()
    for chunk in s3.get_object(Bucket=bucket, Key="big.bin")["Body"].iter_chunks(4 * MiB):
        digest.update(chunk)
    assert digest.hexdigest() == big.sha256()
