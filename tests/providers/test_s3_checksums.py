"""S3's additional checksums, announced in the GET answer, verified instead of the ETag's MD5.

Against the real SeaweedFS (it stores and validates ``x-amz-checksum-*`` on PUT and names them
in answers to ``x-amz-checksum-mode: ENABLED``), through the real command: the record says which
digest was verified and how, and a byte flipped on the wire (tests/servers/fault_proxy.py) is
caught by that digest and fetched again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

from awscrt.checksums import crc64nvme

from storage_initializer.engine.hashing import Checksum, Digests, choose_checksum
from storage_initializer.engine.state import DestState
from storage_initializer.provider import RemoteObject
from tests.cli import run_cli, tree
from tests.servers.fault_proxy import ProxyFault
from tests.servers.s3 import MiB, SeaweedFS

#: Whole objects, one stream each (no parts: S3 names checksums for whole-object answers only).
WHOLE = {"STORAGE_INITIALIZER_MULTIPART_THRESHOLD": "64M"}


def _b64(value: int, size: int) -> str:
    return base64.b64encode(value.to_bytes(size, "big")).decode()


def _verified_by(record: Path) -> dict[str, dict[str, Any]]:
    (pair,) = json.loads(record.read_text())["pairs"]
    return {f["path"]: f["verified_by"] for f in pair["files"]}


def _seed(seaweedfs: SeaweedFS, bucket: str) -> tuple[dict[str, bytes], bytes]:
    """Objects below ``m/`` (the files) and ``b/big.bin`` (returned): a download of its own, as
    a first object that large makes the run load awscrt, and CRC64NVME wins for every later one."""
    small, mid, big, legacy = os.urandom(100_000), os.urandom(3 * MiB), os.urandom(20 * MiB), os.urandom(50_000)
    seaweedfs.put(bucket, "m/small.bin", small, ChecksumCRC32=_b64(zlib.crc32(small), 4))
    seaweedfs.put(bucket, "m/mid.bin", mid, ChecksumCRC32=_b64(zlib.crc32(mid), 4))
    # CRC64NVME: what S3 gives every new object uploaded without a checksum.
    seaweedfs.put(bucket, "b/big.bin", big, ChecksumCRC64NVME=_b64(crc64nvme(big), 8))
    # An uploader that sends no checksum (rclone, older SDKs): the ETag's MD5 is all there is.
    seaweedfs.client(request_checksum_calculation="when_required").put_object(
        Bucket=bucket, Key="m/legacy.bin", Body=legacy
    )
    return {"small.bin": small, "mid.bin": mid, "legacy.bin": legacy}, big


def test_the_cheapest_digest_the_answer_names_is_verified_and_recorded(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    bucket = seaweedfs.new_bucket("ck")
    files, big = _seed(seaweedfs, bucket)
    record = tmp_path / "record.json"
    result = run_cli(["--record", str(record), f"s3://{bucket}/m", str(tmp_path / "out")], seaweedfs.env() | WHOLE)
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == files
    verified = _verified_by(record)
    # The listing offered only the ETags' MD5s; the answers named cheaper digests.
    assert set(verified["small.bin"]) == {"crc32"}  # hashed by the loop as it arrived
    assert set(verified["mid.bin"]) == {"crc32"}  # a CRC: hashed by the loop too, never read back
    assert verified["mid.bin"]["crc32"]["hashed"] == "while streaming"
    assert set(verified["legacy.bin"]) == {"md5"}
    # MD5 of a larger object: spliced, and hashed from the page cache on a worker.
    legacy = os.urandom(2 * MiB)
    seaweedfs.client(request_checksum_calculation="when_required").put_object(
        Bucket=bucket, Key="md5/legacy.bin", Body=legacy
    )
    result = run_cli(["--record", str(record), f"s3://{bucket}/md5", str(tmp_path / "md5")], seaweedfs.env() | WHOLE)
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "md5") == {"legacy.bin": legacy}
    verified = _verified_by(record)
    assert set(verified["legacy.bin"]) == {"md5"}
    assert "page cache" in verified["legacy.bin"]["md5"]["hashed"]
    result = run_cli(["--record", str(record), f"s3://{bucket}/b", str(tmp_path / "big")], seaweedfs.env() | WHOLE)
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "big") == {"big.bin": big}
    assert set(_verified_by(record)["big.bin"]) == {"crc64nvme"}  # large enough to load awscrt for


def test_an_object_read_as_parts_is_verified_by_the_digest_its_head_names(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    """Ranged answers name no checksum (on AWS neither): an object above the multipart threshold
    (32 MiB by default) gets one HeadObject, whose CRC64NVME is verified over the parts in order."""
    bucket = seaweedfs.new_bucket("ck")
    data = os.urandom(40 * MiB)
    seaweedfs.put(bucket, "p/w.bin", data, ChecksumCRC64NVME=_b64(crc64nvme(data), 8))
    seaweedfs.put(bucket, "p/a.bin", b"the listing's encryption probe goes here")
    record = tmp_path / "record.json"
    env = seaweedfs.env() | {"STORAGE_INITIALIZER_PART_SIZE": "8M"}
    result = run_cli(["--record", str(record), f"s3://{bucket}/p", str(tmp_path / "out")], env)
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out")["w.bin"] == data
    verified = _verified_by(record)["w.bin"]
    assert set(verified) == {"crc64nvme"}
    assert "parts" in verified["crc64nvme"]["hashed"]


def test_a_flipped_byte_fails_the_answers_digest_and_is_fetched_again(
    seaweedfs: SeaweedFS, fault_proxy_factory: Any, tmp_path: Path
) -> None:
    bucket = seaweedfs.new_bucket("ck")
    files, big = _seed(seaweedfs, bucket)
    proxy = fault_proxy_factory(int(seaweedfs.endpoint_url.rsplit(":", 1)[1]))
    for name in ("small.bin", "mid.bin", "big.bin"):
        proxy.add(ProxyFault("flip", after_bytes=20_000, match=name, unless="list-type"))
    env = seaweedfs.env() | WHOLE | {"AWS_ENDPOINT_URL": proxy.url, "STORAGE_INITIALIZER_RETRY_BACKOFF": "0.05"}
    result = run_cli([f"s3://{bucket}/m", str(tmp_path / "out")], env)
    assert result.returncode == 0, result.stderr
    assert "small.bin: crc32 is " in result.stderr and "mid.bin: crc32 is " in result.stderr
    assert tree(tmp_path / "out") == files
    result = run_cli([f"s3://{bucket}/b", str(tmp_path / "big")], env)
    assert result.returncode == 0, result.stderr
    assert "big.bin: crc64nvme is " in result.stderr
    assert tree(tmp_path / "big") == {"big.bin": big}
    assert len([i for i in proxy.injected if i.startswith("flip")]) == 3


def test_a_rerun_recognises_files_verified_by_the_answers_digest(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    """The manifest keeps the digests the answer added; the next listing names only the MD5: the
    object is the same (the digests both name agree), nothing is fetched again."""
    bucket = seaweedfs.new_bucket("ck")
    files, _ = _seed(seaweedfs, bucket)
    argv = [f"s3://{bucket}/m", str(tmp_path / "out")]
    assert run_cli(argv, seaweedfs.env() | WHOLE).returncode == 0
    again = run_cli(argv, seaweedfs.env() | WHOLE)
    assert again.returncode == 0, again.stderr
    assert "3 already complete" in again.stderr, again.stderr
    assert tree(tmp_path / "out") == files


def test_resume_records_match_on_the_digests_both_name(tmp_path: Path) -> None:
    """A resume record written after an answer added a digest (a restart after a failed check)
    still matches the next run's listing, which names fewer; a digest both name that differs, or
    none shared without a version, is another object."""
    state = DestState(str(tmp_path))
    os.makedirs(state.partial_dir)
    md5, crc = {"md5": "a" * 32}, {"crc32": "0badf00d"}
    state.save_stream("w.bin", "s3://b/m", RemoteObject("w.bin", 10, "etag", {**md5, **crc}))
    assert state.has_stream("w.bin", "s3://b/m", RemoteObject("w.bin", 10, "etag", md5))
    assert not state.has_stream("w.bin", "s3://b/m", RemoteObject("w.bin", 10, "etag", {"md5": "b" * 32}))
    assert not state.has_stream("w.bin", "s3://b/m", RemoteObject("w.bin", 10, "other", md5))
    state.save_stream("u.bin", "s3://b/m", RemoteObject("u.bin", 10, None, crc))
    assert not state.has_stream("u.bin", "s3://b/m", RemoteObject("u.bin", 10, None, md5))
    assert state.has_stream("u.bin", "s3://b/m", RemoteObject("u.bin", 10, None, {**md5, **crc}))


def test_crc64nvme_of_the_check_vector() -> None:
    """CRC-64/NVME's check value (the digest of ``123456789``), fed in pieces, as S3 spells it in hex."""
    hasher = Checksum("crc64nvme", "ae8b14860a799888").new()
    hasher.update(b"1234")
    hasher.update(memoryview(b"56789"))
    assert hasher.hexdigest() == "ae8b14860a799888"


def test_choice_weighs_the_cost_of_loading_awscrt() -> None:
    """Loading awscrt costs what MD5 spends on ~20 MB: the first objects of a small download take
    another digest; once CRC64NVME_MIN bytes went that way, CRC64NVME (alone: at once). Choosing
    it does not load the library (that would delay the download's first request): the first
    byte hashed does."""
    script = (
        "import sys\n"
        "from storage_initializer.engine.hashing import CRC64NVME_MIN, choose_checksum\n"
        "announced = {'md5': '0' * 32, 'crc64nvme': '1' * 16, 'crc32': '2' * 8}\n"
        "chosen = [choose_checksum(announced, CRC64NVME_MIN // 4) for _ in range(6)]\n"
        "print([c.algorithm for c in chosen])\n"
        "print('awscrt.checksums' in sys.modules)\n"
        "hasher = chosen[-1].new()\n"
        "print('awscrt.checksums' in sys.modules)\n"
        "hasher.update(b'123456789')\n"
        "print('awscrt.checksums' in sys.modules, hasher.hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    # Chosen without loading the library: it is loaded at the first byte hashed.
    assert out.split("\n")[:4] == [
        str(["crc32"] * 3 + ["crc64nvme"] * 3),
        "False",
        "False",
        "True ae8b14860a799888",
    ], out
    alone = "from storage_initializer.engine.hashing import choose_checksum\n" + (
        "print(choose_checksum({'crc64nvme': '1' * 16}, 10).algorithm)"  # a multipart upload's only digest
    )
    assert subprocess.run([sys.executable, "-c", alone], capture_output=True, text=True).stdout.strip() == "crc64nvme"


def test_deferred_digests_choose_when_the_first_byte_is_hashed() -> None:
    announced: dict[str, str] = {"md5": hashlib.md5(b"data").hexdigest()}
    digests = Digests.deferred(lambda: choose_checksum(announced, 4), sha256=True)
    announced["crc32"] = f"{zlib.crc32(b'data'):08x}"  # the answer named it before the body
    digests.update(b"data")
    assert digests.checksum is not None and digests.checksum.algorithm == "crc32"
    assert digests.hexdigest() == announced["crc32"]
    assert digests.sha256() == hashlib.sha256(b"data").hexdigest()
    nothing = Digests.deferred(lambda: None, sha256=False)
    assert nothing.idle and nothing.hexdigest() == ""
