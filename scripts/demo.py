"""A real end-to-end download on this machine, no cloud account needed.

Starts SeaweedFS (a real S3 server, from PyPI) and an HTTP server on
127.0.0.1, uploads a small "model", and downloads it with the installed
``storage-initializer`` command exactly as KServe's init container would run
it, then shows what landed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.servers.http_server import HttpFileServer
from tests.servers.s3 import SeaweedFS

MODEL = {
    "iris/model.joblib": os.urandom(40 * 1024 * 1024),  # big enough for parallel ranged parts
    "iris/config.json": b'{"framework": "sklearn"}\n',
    "iris/tokenizer/vocab.txt": b"setosa\nversicolor\nvirginica\n",
    "iris/empty.txt": b"",
}


def show(dest: Path) -> None:
    for path in sorted(dest.rglob("*")):
        rel = path.relative_to(dest)
        if path.is_file() and not str(rel).startswith(".storage-initializer"):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            print(f"    {rel}  {path.stat().st_size} bytes  sha256 {digest}…")


def run(args: list[str], env: dict[str, str]) -> None:
    print("\n$ storage-initializer " + " ".join(args), flush=True)
    result = subprocess.run(["storage-initializer", *args], env=env, check=False)
    if result.returncode != 0:
        sys.exit(f"storage-initializer exited with {result.returncode}")


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="storage-initializer-demo-"))
    print(f"working in {work}")
    with SeaweedFS() as s3:
        bucket = "models"
        s3.client().create_bucket(Bucket=bucket)
        for key, data in MODEL.items():
            s3.put(bucket, key, data)
        print(f"SeaweedFS S3 on {s3.endpoint_url}: uploaded s3://{bucket}/iris ({len(MODEL)} objects)")
        env = {**os.environ, **s3.env(), "STORAGE_INITIALIZER_HEARTBEAT": "1"}
        dest = work / "mnt-models"
        run([f"s3://{bucket}/iris", str(dest)], env)
        print(f"\n  files in {dest}:")
        show(dest)
        assert all((dest / k.removeprefix("iris/")).read_bytes() == v for k, v in MODEL.items())
        print("\n  a second run skips what is already complete:")
        run([f"s3://{bucket}/iris", str(dest)], env)

    http = HttpFileServer()
    try:
        url = http.add("/models/model.onnx", os.urandom(8 * 1024 * 1024))
        dest = work / "http-model"
        run([url, str(dest)], dict(os.environ))
        print(f"\n  files in {dest}:")
        show(dest)
    finally:
        http.stop()
    print(f"\nDemo complete. Files are under {work} (remove it with: rm -rf {work})")
    if os.environ.get("DEMO_CLEANUP") == "1":
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
