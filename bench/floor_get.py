"""The least a Python program can do to fetch a dataset: the floor of ``tiny`` for any Python tool.

    python -S bench/floor_get.py s3://BUCKET/PREFIX DEST    (AWS_* / AWS_ENDPOINT_URL, plain http)
    python -S bench/floor_get.py http://HOST/PATH DEST

One connection, ListObjectsV2 pages (S3) and one GET per object in turn, SigV4 by hand (not
``storage_initializer_s3._sigv4``: importing the package is what this leaves out), each
file streamed beside its place and renamed. Nothing else: no TLS, no retries, no checks, no logging, no
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


def _get(sock: socket.socket, host: str, target: str, headers: str, into: str | None = None) -> bytes:
    """One GET on a kept-alive connection (``Content-Length`` framing only): the body, or
    streamed into the file ``into`` (written beside it, then renamed)."""
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if lines[0].split()[1] != "200":
        raise SystemExit(f"floor_get: {lines[0]} for {target}")
    size = next(int(v) for k, _, v in (x.partition(":") for x in lines[1:]) if k.lower() == "content-length")
    if into is None:
        while len(body) < size:
            body += sock.recv(max(65536, size - len(body)))
        return body
    os.makedirs(os.path.dirname(into), exist_ok=True)
    buf = memoryview(bytearray(256 * 1024))
    with open(into + ".part", "wb") as f:
        f.write(body)
        left = size - len(body)
        while left:
            n = sock.recv_into(buf, min(left, len(buf)))
            if not n:
                raise SystemExit(f"floor_get: connection closed in {target}")
            f.write(buf[:n])
            left -= n
    os.rename(into + ".part", into)
    return b""


def main() -> None:
    uri, dest = sys.argv[1], sys.argv[2]
    s3 = uri.startswith("s3://")
    origin = os.environ["AWS_ENDPOINT_URL"] if s3 else uri
    host = origin.split("://", 1)[1].split("/", 1)[0]
    name, _, port = host.partition(":")
    sock = socket.create_connection((name, int(port or 80)))
    if s3:
        bucket, _, prefix = uri[5:].partition("/")
        prefix = prefix.rstrip("/") + "/"
        token = ""
        while True:  # the bench's keys and tokens need no escaping beyond '/', '+' and '='
            query = f"list-type=2&prefix={prefix.replace('/', '%2F')}"
            if token:
                escaped = token.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
                query = f"continuation-token={escaped}&{query}"
            page = _get(sock, host, f"/{bucket}?{query}", _s3_headers(host, f"/{bucket}", query)).decode()
            for chunk in page.split("<Key>")[1:]:
                key = chunk.split("</Key>", 1)[0]
                path = f"/{bucket}/{key}"
                _get(sock, host, path, _s3_headers(host, path, ""), os.path.join(dest, key[len(prefix) :]))
            if "<NextContinuationToken>" not in page:
                break
            token = page.split("<NextContinuationToken>", 1)[1].split("<", 1)[0]
    else:
        path = uri.split("://", 1)[1].partition("/")[2]
        _get(sock, host, "/" + path, "", os.path.join(dest, path.rsplit("/", 1)[-1]))
    sock.close()


if __name__ == "__main__":
    main()
