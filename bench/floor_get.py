"""The least a Python program can do to fetch a dataset: the floor of ``tiny`` for any Python tool.

    python -S bench/floor_get.py s3://BUCKET/PREFIX DEST    (AWS_* / AWS_ENDPOINT_URL, plain http)
    python -S bench/floor_get.py http://HOST/PATH DEST

One connection, one ListObjectsV2 page (S3) and one GET per object, SigV4 by hand, each file
written beside its place and renamed. Nothing else: no TLS, no retries, no checks, no logging, no
configuration, and only ``os``, ``socket``, ``hmac``, ``hashlib`` and ``time`` imported (run with
``-S``: no ``site`` either). Not a downloader, a measurement: what the interpreter costs before
and around the first byte, to set beside a Go binary's whole run (the ``python-floor`` bench tool).
"""

import hashlib
import hmac
import os
import socket
import sys
import time


def _sign(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _s3_headers(host: str, path: str, query: str) -> str:
    """SigV4 headers for a GET of ``path?query`` (query already canonical: sorted, encoded)."""
    env = os.environ
    now = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    day, region = now[:8], env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    empty = hashlib.sha256(b"").hexdigest()
    canonical = f"GET\n{path}\n{query}\nhost:{host}\nx-amz-content-sha256:{empty}\nx-amz-date:{now}\n\n"
    canonical += f"host;x-amz-content-sha256;x-amz-date\n{empty}"
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{now}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = _sign(("AWS4" + env["AWS_SECRET_ACCESS_KEY"]).encode(), day)
    for part in (region, "s3", "aws4_request"):
        key = _sign(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    auth = (
        f"AWS4-HMAC-SHA256 Credential={env['AWS_ACCESS_KEY_ID']}/{scope}, "
        f"SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={signature}"
    )
    return f"x-amz-content-sha256: {empty}\r\nx-amz-date: {now}\r\nAuthorization: {auth}\r\n"


def _get(sock: socket.socket, host: str, target: str, headers: str) -> bytes:
    """One GET on a kept-alive connection; the body (Content-Length framing only)."""
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if lines[0].split()[1] != "200":
        raise SystemExit(f"floor_get: {lines[0]} for {target}")
    size = next(int(v) for k, _, v in (x.partition(":") for x in lines[1:]) if k.lower() == "content-length")
    while len(body) < size:
        body += sock.recv(max(65536, size - len(body)))
    return body


def _write(dest: str, rel: str, body: bytes) -> None:
    path = os.path.join(dest, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".part", "wb") as f:
        f.write(body)
    os.rename(path + ".part", path)


def main() -> None:
    uri, dest = sys.argv[1], sys.argv[2]
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[5:].partition("/")
        host = os.environ["AWS_ENDPOINT_URL"].split("://", 1)[1].rstrip("/")
        name, _, port = host.partition(":")
        sock = socket.create_connection((name, int(port or 80)))
        query = f"list-type=2&prefix={prefix.rstrip('/')}%2F"
        listing = _get(sock, host, f"/{bucket}?{query}", _s3_headers(host, f"/{bucket}", query)).decode()
        keys = [chunk.split("</Key>", 1)[0] for chunk in listing.split("<Key>")[1:]]
        for key in keys:
            path = f"/{bucket}/{key}"  # the bench's keys need no escaping
            _write(dest, key[len(prefix.rstrip("/")) + 1 :], _get(sock, host, path, _s3_headers(host, path, "")))
    else:
        host, _, path = uri.split("://", 1)[1].partition("/")
        name, _, port = host.partition(":")
        sock = socket.create_connection((name, int(port or 80)))
        _write(dest, path.rsplit("/", 1)[-1], _get(sock, host, "/" + path, ""))
    sock.close()


if __name__ == "__main__":
    main()
