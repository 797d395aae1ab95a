"""Compare the provider's request path with plain botocore, against a local SeaweedFS.

    python bench/s3_read_paths.py [--small 2000] [--big-mib 300] [--repeats 2]

Both variants run through the same engine (16 workers) and the same listing
logic; only the requests differ:

* ``wire``: what ships: SigV4 headers signed here, the http.client pool, ``readinto``
  from the socket, ListObjectsV2 parsed with ElementTree;
* ``botocore``: ``list_objects_v2`` / ``head_object`` / ``get_object`` of a
  botocore client (``StreamingBody.read``).

Prints wall time, MB/s and the CPU seconds of this process (the server's CPU
is not counted), with checksum verification on and off. Run it from the
repository root (it uses the test fixture that starts SeaweedFS).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import Any

from storage_initializer_s3 import ObjectRef, S3Provider
from storage_initializer_s3._wire import Listed, Page, S3Wire

from storage_initializer.provider import RemoteObject
from storage_initializer.registry import Registry
from storage_initializer.runner import download
from storage_initializer.settings import Settings

MiB = 1024 * 1024


class BotoWire(S3Wire):
    """Listing and HEAD through a botocore client."""

    client: Any = None

    def list_page(self, uri: str, bucket: str, prefix: str, token: str | None, start_after: str | None) -> Page:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": 1000}
        if token:
            kwargs["ContinuationToken"] = token
        elif start_after:
            kwargs["StartAfter"] = start_after
        page = self.client.list_objects_v2(**kwargs)
        entries = [Listed(o["Key"], o["Size"], o["ETag"]) for o in page.get("Contents", [])]
        return Page(entries, bool(page.get("IsTruncated")), page.get("NextContinuationToken"))

    def head(self, uri: str, bucket: str, key: str) -> Mapping[str, str]:
        from urllib3 import HTTPHeaderDict

        response = self.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        return HTTPHeaderDict(response["ResponseMetadata"]["HTTPHeaders"])


class BotoProvider(S3Provider):
    """Reads through ``get_object``; listing through :class:`BotoWire`."""

    @property
    def botocore_client(self) -> Any:
        client = self.__dict__.get("_botocore_client")
        if client is None:
            from botocore.config import Config

            settings = self.settings
            client = self.session.create_client(
                "s3",
                region_name=settings.region,
                endpoint_url=settings.endpoint_url,
                config=Config(
                    signature_version="s3v4",
                    max_pool_connections=self.context.concurrency,
                    connect_timeout=self.connect_timeout,
                    read_timeout=self.read_timeout,
                    retries={"max_attempts": settings.max_attempts, "mode": "standard"},
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                ),
            )
            self.__dict__["_botocore_client"] = client
        return client

    @property
    def wire(self) -> S3Wire:
        wire = self.__dict__.get("_boto_wire")
        if wire is None:
            wire = S3Provider.wire.func(self)  # the provider's own wire, built as it builds it...
            wire.__class__ = BotoWire  # ...listing and HEAD through botocore
            wire.client = self.botocore_client
            self.__dict__["_boto_wire"] = wire
        return wire

    def open_range(self, uri: str, obj: RemoteObject, start: int, end: int | None) -> Any:
        ref = obj.extra
        assert isinstance(ref, ObjectRef)
        if obj.size == 0:
            return io.BytesIO(b"")
        kwargs = {"Bucket": ref.bucket, "Key": ref.key, "IfMatch": ref.etag}
        if start or (end is not None and end != obj.size):
            kwargs["Range"] = f"bytes={start}-" + ("" if end is None else str(end - 1))
        return contextlib.closing(self.botocore_client.get_object(**kwargs)["Body"])


def run(cls: type[S3Provider], uri: str, env: Mapping[str, str], verify: bool) -> tuple[float, float, int, int]:
    dest = tempfile.mkdtemp(prefix="s3-bench-")
    settings = Settings(env=dict(env), concurrency=16, heartbeat_seconds=600, verify_checksums=verify)
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    (result,) = download([(uri, dest)], settings=settings, registry=Registry.from_classes({"s3": cls}))
    seconds, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    shutil.rmtree(dest)
    if result.error is not None:
        raise result.error
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, result.bytes, result.files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=2000, help="number of 64 KiB objects")
    parser.add_argument("--big-mib", type=int, default=300, help="size of the single-part large object")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, os.getcwd())  # the tests package (SeaweedFS fixture)
    from tests.servers.s3 import SeaweedFS

    with SeaweedFS() as server:
        bucket = server.new_bucket("bench")
        payload = os.urandom(64 * 1024)
        server.put_many(bucket, {f"small/f{i:05d}.bin": payload for i in range(args.small)}, workers=16)
        server.put_large(bucket, "big/model.bin", args.big_mib * MiB, multipart=False)
        env = server.env()
        for name in ("small", "big"):
            for _ in range(args.repeats):
                for cls in (S3Provider, BotoProvider):
                    for verify in (False, True):
                        seconds, cpu, size, files = run(cls, f"s3://{bucket}/{name}", env, verify)
                        label = "wire" if cls is S3Provider else "botocore"
                        print(
                            f"{name:5} {label:8} verify={verify!s:5} {files:5} files {size / MiB:6.0f} MiB "
                            f"{seconds:6.2f} s {size / MiB / seconds:6.0f} MB/s  cpu {cpu:6.2f} s "
                            f"({cpu / files * 1e3:.2f} ms/file)",
                            flush=True,
                        )


if __name__ == "__main__":
    main()
